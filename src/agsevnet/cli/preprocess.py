"""``agsevnet preprocess``: build or update the preprocessing cache of a dataset (see :mod:`agsevnet.preprocess`)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer

from agsevnet.cli import app
from agsevnet.preprocess import DEFAULT_MARGIN, update_cache


class Normalization(str, Enum):
    brain = "brain"
    image = "image"
    brain_clip = "brain-clip"


class StorageDtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@app.command("preprocess")
def preprocess_command(
    data_dir: Path = typer.Argument(..., help="Dataset folder (any supported layout) or a single case folder."),
    cache_dir: Path = typer.Argument(..., help="Cache folder: one sub-folder per case (image.npy, label.npy, meta.json)."),
    normalization: Normalization = typer.Option(
        Normalization.brain,
        "--normalization",
        help="z-score over brain voxels (background set to 0), or over the whole image (the paper's eq. 15).",
    ),
    dtype: StorageDtype = typer.Option(StorageDtype.float16, "--dtype", help="Storage type of the images."),
    margin: int = typer.Option(DEFAULT_MARGIN, "--margin", min=0, help="Voxels kept around the brain's bounding box."),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Parallel worker processes (default: one per case, up to the CPU count).",
        show_default=False,
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild every case, even those cached and valid."),
) -> None:
    """Crop each case to the brain, normalise each modality and cache it as memory-mappable .npy files.

    Cases cached with the same settings from unchanged source files are skipped.

    A case that fails is reported, the others are still cached, and the exit code is 1.
    """
    report = update_cache(
        data_dir,
        cache_dir,
        normalization=normalization.value,
        margin=margin,
        dtype=dtype.value,
        workers=workers,
        overwrite=overwrite,
        progress=True,
    )
    n_ok = len(report.case_ids)
    typer.echo(
        f"{cache_dir}: {n_ok} case(s) cached ({len(report.built)} built, {len(report.skipped)} already valid), "
        f"{len(report.failed)} failed, in {report.seconds:.1f} s"
    )
    if n_ok:
        sizes = report.sizes.values()
        typer.echo(
            f"size on disk: {_size(report.total_bytes)} ({_size(report.total_bytes / n_ok)} per case, "
            f"{_size(min(sizes))} to {_size(max(sizes))}; {dtype.value}, {normalization.value} normalisation)"
        )
    for failure in report.failed:
        print(f"error: {failure}", file=sys.stderr)
    if report.failed:
        raise typer.Exit(1)
