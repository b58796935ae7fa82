"""``agsevnet predict``: segment cases with a trained checkpoint (see :mod:`agsevnet.infer.predictor`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from agsevnet.cli import app, debug_enabled
from agsevnet.cli.runtime import tune_cpu_runtime


class Strategy(str, Enum):
    auto = "auto"
    sliding = "sliding"
    whole = "whole"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Convention(str, Enum):
    brats2020 = "brats2020"
    brats2023 = "brats2023"
    msd = "msd"


@app.command("predict")
def predict_command(
    input_path: Path | None = typer.Argument(None, metavar="INPUT", help="A case folder or a dataset folder (any "
                                             "layout); omit it when giving --flair --t1 --t1ce --t2."),
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint (.pt) written by 'agsevnet train'."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: <case>.nii.gz per case."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    tta: bool = typer.Option(False, "--tta", help="Mirroring test-time augmentation (8 flips; ~8x slower)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo cases whose outputs exist (default: skip them)."),
    labels: Convention | None = typer.Option(None, "--labels", help="Output label convention (default: that of "
                                             "each case's layout: 1/2/4 for BraTS 2018-2021, 1/2/3 for 2023)."),
    save_probabilities: bool = typer.Option(False, "--save-probabilities", help="Also write <case>_prob.nii.gz: "
                                            "4D float32, last axis = background, NCR/NET, edema, enhancing."),
    strategy: Strategy = typer.Option(Strategy.auto, "--strategy", help="sliding window, one whole pass over "
                                      "the brain crop, or auto (whole when it fits in memory)."),
    roi: tuple[int, int, int] | None = typer.Option(None, "--roi", help="Sliding-window size X Y Z (default: "
                                                    "the checkpoint's patch size)."),
    overlap: float = typer.Option(0.5, "--overlap", help="Sliding-window overlap in [0, 1)."),
    et_threshold: int = typer.Option(0, "--et-threshold", help="Relabel enhancing tumour as necrosis when a "
                                     "case has fewer ET voxels than this (0: off; BraTS 2020 winners used 500)."),
    flair: Path | None = typer.Option(None, "--flair", help="FLAIR file (explicit four-file input)."),
    t1: Path | None = typer.Option(None, "--t1", help="T1 file."),
    t1ce: Path | None = typer.Option(None, "--t1ce", help="T1ce (T1 contrast-enhanced) file."),
    t2: Path | None = typer.Option(None, "--t2", help="T2 file."),
    case_id: str | None = typer.Option(None, "--case-id", help="Output name for the four-file input."),
    precision: Precision = typer.Option(Precision.auto, "--precision", help="auto: bf16 on CPUs with native "
                                        "bf16 and on GPUs, else fp32."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Segment cases into BraTS-ready NIfTI label maps on exactly the input grid.

    Example: agsevnet predict /data/BraTS2021_Validation --model run/best.pt --out preds
    """
    if device == "cpu":
        tune_cpu_runtime()
    from agsevnet.infer.predictor import predict

    summary = predict(
        input_path, model, out,
        files={"flair": flair, "t1": t1, "t1ce": t1ce, "t2": t2}, case_id=case_id,
        labels=labels.value if labels else None, overwrite=overwrite, save_probabilities=save_probabilities,
        progress=not quiet, raise_errors=debug_enabled(),
        device=device, tta=tta, strategy=strategy.value, roi_size=roi, overlap=overlap,
        et_threshold=et_threshold, precision=precision.value,
    )
    typer.echo(summary.format(), err=not summary.ok)
    if not summary.ok:
        raise typer.Exit(1)
