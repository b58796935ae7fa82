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
    model: str | None = typer.Option(None, "--model", "-m", help="A bundled model's name (see 'agsevnet models') or "
                                     "a checkpoint (.pt) written by 'agsevnet train' (default: the bundled model).",
                                     show_default=False),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder: <case>.nii.gz and <case>.json "
                                    "(settings, seconds, confidence) per case.", show_default=False),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    tta: bool = typer.Option(False, "--tta", help="Mirroring test-time augmentation (8 flips; ~8x slower)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo cases whose outputs exist (default: skip them)."),
    labels: Convention | None = typer.Option(None, "--labels", help="Output label convention (default: that of "
                                             "each case's layout: 1/2/4 for BraTS 2018-2021, 1/2/3 for 2023; the "
                                             "four files' BraTS names; needed where those names do not tell)."),
    save_probabilities: bool = typer.Option(False, "--save-probabilities", help="Also write <case>_prob.nii.gz: "
                                            "4D float32, last axis = background, NCR/NET, edema, enhancing."),
    strategy: Strategy | None = typer.Option(None, "--strategy", help="sliding window, one whole pass over the "
                                             "brain crop, or auto (whole when it fits in memory); default: what the "
                                             "checkpoint was validated with.", show_default=False),
    roi: tuple[int, int, int] | None = typer.Option(None, "--roi", help="Sliding-window size X Y Z (default: "
                                                    "the checkpoint's patch size)."),
    overlap: float | None = typer.Option(None, "--overlap", help="Sliding-window overlap in [0, 1) (default: the "
                                         "checkpoint's).", show_default=False),
    et_threshold: int | None = typer.Option(None, "--et-threshold", help="Relabel enhancing tumour as necrosis "
                                            "when a case has fewer ET voxels than this (0: off; BraTS 2020 winners "
                                            "used 500; default: the checkpoint's).", show_default=False),
    keep_fraction: float | None = typer.Option(None, "--keep-fraction", help="Drop tumour components smaller "
                                               "than this share of the largest (0: off; default: the checkpoint's).",
                                               show_default=False),
    component_rule: str | None = typer.Option(None, "--component-rule", help="Rank tumour components for "
                                              "--keep-fraction by size, mass (summed tumour probability) or core "
                                              "(summed core probability); default: the checkpoint's.",
                                              show_default=False),
    flair: Path | None = typer.Option(None, "--flair", help="FLAIR file (explicit four-file input)."),
    t1: Path | None = typer.Option(None, "--t1", help="T1 file."),
    t1ce: Path | None = typer.Option(None, "--t1ce", help="T1ce (T1 contrast-enhanced) file."),
    t2: Path | None = typer.Option(None, "--t2", help="T2 file."),
    case_id: str | None = typer.Option(None, "--case-id", help="Output name for the four-file input (default: the "
                                       "FLAIR file's case prefix, or its folder's name for a name like Flair.nii.gz)."),
    precision: Precision = typer.Option(Precision.auto, "--precision", help="auto: bf16 on CPUs with native "
                                        "bf16 and on GPUs, else fp32."),
    backend: str = typer.Option("torch", "--backend", help="Runtime of the network: torch, onnxruntime or "
                                "openvino (CPU; optional extras: pip install 'agsevnet[onnx]' / "
                                "'agsevnet[openvino]'; the ONNX export is made once and cached)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    save_uncertainty: bool = typer.Option(False, "--save-uncertainty", help="Also write <case>_uncertainty.nii.gz: "
                                          "float32 in [0, 1], the normalised entropy of the class probabilities "
                                          "(averaged over the flips with --tta)."),
    confidence_threshold: float | None = typer.Option(None, "--confidence-threshold", help="List cases whose "
                                                      "confidence figure is below this as 'check these' (default: "
                                                      "agsevnet.infer.uncertainty.DEFAULT_CONFIDENCE_THRESHOLD); "
                                                      "cases with a warning sign are listed whatever their "
                                                      "confidence.",
                                                      show_default=False),
    shard: str | None = typer.Option(None, "--shard", help="I/N (1-based): only the cases whose id hashes to shard "
                                     "I of N, for job arrays and one process per GPU; writes "
                                     "OUT/predict-summary-shard-I-of-N.json.", show_default=False),
    prepare: bool = typer.Option(False, "--prepare", help="INPUT is one patient as the scanner wrote it (any "
                                 "orientation and voxel size, skull on; or a folder of such patient folders, done "
                                 "one by one): 'agsevnet prepare' it into OUT/prepared, "
                                 "segment it there (atlas-space outputs in OUT/atlas) and write OUT/<case>.nii.gz on "
                                 "the grid of the input T1ce. Needs the extra: pip install 'agsevnet[prepare]'."),
    summary_dir: Path | None = typer.Option(None, "--summary", help="Merge the predict-summary*.json files of this "
                                            "output folder (the shards of a job array): counts, failures, missing "
                                            "shards, cases to check; exit 1 if any failed or is missing. Predicts "
                                            "nothing.", show_default=False),
) -> None:
    """Segment cases into BraTS-ready NIfTI label maps on exactly the input grid.

    Examples: agsevnet predict MyCase/ --out preds (the bundled model);
    agsevnet predict /data/BraTS2021_Validation --model run/best.pt --out preds;
    a job array: agsevnet predict /data/archive --out preds --shard $SLURM_ARRAY_TASK_ID/16, then
    agsevnet predict --summary preds
    """
    from agsevnet.errors import ConfigError

    if summary_dir is not None:
        if input_path is not None or out is not None or shard is not None:
            raise ConfigError("--summary OUT merges the summaries of a finished run; give it alone (no INPUT, "
                              "--out or --shard)")
        from agsevnet.infer.shard import merge_summaries

        merged = merge_summaries(summary_dir, confidence_threshold)
        typer.echo(merged.format(), err=not merged.ok)
        if not merged.ok:
            raise typer.Exit(1)
        return
    if out is None:
        raise ConfigError("--out is required: the folder to write the predictions into")
    parsed_shard = None
    if shard is not None:
        from agsevnet.infer.shard import parse_shard

        parsed_shard = parse_shard(shard)
    if device == "cpu":
        import os

        tune_cpu_runtime(all_threads="OMP_NUM_THREADS" not in os.environ)  # an explicit thread count wins
    from agsevnet.infer.bundled import resolve_model
    from agsevnet.infer.predictor import predict

    if prepare:
        if parsed_shard is not None:
            raise ConfigError("--prepare segments the patients one after the other; --shard does not apply")
        from agsevnet.infer.shard import check_reasons
        from agsevnet.prepare.inputs import patient_folders
        from agsevnet.prepare.native import predict_native

        files = {"flair": flair, "t1": t1, "t1ce": t1ce, "t2": t2}
        patients = patient_folders(input_path) if input_path is not None else [None]
        cohort = len(patients) > 1
        if cohort:
            from agsevnet.prepare.cohort import check_cohort_options

            check_cohort_options(input_path, patients, files, case_id)
        checkpoint = resolve_model(model)
        to_check: list[str] = []

        def one(folder: Path | None) -> tuple[str, bool]:
            done = predict_native(
                folder, out, checkpoint, files=None if cohort else files, case_id=None if cohort else case_id,
                overwrite=overwrite, labels=labels.value if labels else None,
                save_uncertainty=save_uncertainty, save_probabilities=save_probabilities,
                progress=not quiet and not cohort,
                log=None if quiet or cohort else (lambda msg: typer.echo(f"  {msg}", err=True)),
                device=device, tta=tta or None, strategy=strategy.value if strategy else None, roi_size=roi,
                overlap=overlap, et_threshold=et_threshold, min_component_fraction=keep_fraction,
                component_rule=component_rule,
                precision=precision.value, backend=backend, confidence_threshold=confidence_threshold,
            )
            confidence, record = done["confidence"], done["record"]
            reasons = check_reasons(confidence, record.get("flags") or [], record.get("confidence_threshold"))
            check = f" (check this case: {'; '.join(reasons)})" if done["check"] else ""
            if done["check"]:
                to_check.append(f"{done['case_id']} ({'; '.join(reasons)})")
            kept = " (kept from an earlier run; --overwrite redoes it)" if done.get("kept") else ""
            return (f"{done['prepare_line']}\n{done['case_id']}: labels on the T1ce's grid: {done['labels']}; atlas "
                    f"space: {Path(out) / 'atlas'}; confidence "
                    f"{confidence if confidence is None else round(confidence, 3)}{check}; {done['seconds']:.0f} s"
                    f"{kept}"), bool(done.get("kept"))

        if not cohort:
            typer.echo(one(patients[0])[0])
            return
        from agsevnet.prepare.cohort import describe_cohort, for_each_patient

        typer.echo(describe_cohort(input_path, patients), err=True)
        result = for_each_patient(patients, one, desc="predict --prepare", progress=not quiet, echo=typer.echo)
        checks = f"\ncheck these ({len(to_check)}): " + ", ".join(to_check) if to_check else ""
        typer.echo(result.format("segmented") + f"; labels on each input T1ce's grid in {out}{checks}",
                   err=not result.ok)
        if not result.ok:
            raise typer.Exit(1)
        return

    summary = predict(
        input_path, resolve_model(model), out,
        files={"flair": flair, "t1": t1, "t1ce": t1ce, "t2": t2}, case_id=case_id,
        labels=labels.value if labels else None, overwrite=overwrite, save_probabilities=save_probabilities,
        progress=not quiet, raise_errors=debug_enabled(),
        device=device, tta=tta or None, strategy=strategy.value if strategy else None, roi_size=roi,
        overlap=overlap, et_threshold=et_threshold, min_component_fraction=keep_fraction, precision=precision.value,
        component_rule=component_rule,
        backend=backend,
        save_uncertainty=save_uncertainty, confidence_threshold=confidence_threshold, shard=parsed_shard,
    )
    typer.echo(summary.format(), err=not summary.ok)
    if not summary.ok:
        raise typer.Exit(1)
