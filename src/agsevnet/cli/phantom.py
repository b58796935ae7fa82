"""``agsevnet phantom OUT_DIR``: write synthetic BraTS-like cases (see :mod:`agsevnet.synth.phantom`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from agsevnet.cli import app


class Naming(str, Enum):
    brats2020 = "brats2020"
    brats2023 = "brats2023"
    msd = "msd"
    nnunet = "nnunet"


@app.command("phantom")
def phantom_command(
    out_dir: Path = typer.Argument(
        ..., help="Folder to write the cases into (created; must be empty unless --overwrite)."
    ),
    cases: int = typer.Option(4, "--cases", "-n", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes identical files."),
    shape: tuple[int, int, int] = typer.Option(
        (240, 240, 155), "--shape", help="Grid size X Y Z in voxels (the brain scales with it; at least 24 each)."
    ),
    naming: Naming = typer.Option(
        Naming.brats2020,
        "--naming",
        help="Layout: BraTS 2018-2021 (labels 1/2/4), BraTS 2023+ (1/2/3), MSD Task01 (4D images, "
        "1 edema / 2 non-enhancing / 3 enhancing) or nnU-Net raw (MSD labels).",
    ),
    no_labels: bool = typer.Option(False, "--no-labels", help="Write images only (inference-only data)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder, replacing files."),
    workers: int | None = typer.Option(
        None, "--workers", "-j", min=1, help="Worker processes (default: one per CPU, at most one per case).",
        show_default=False,
    ),
) -> None:
    """Write synthetic BraTS-like cases: a brain with one or two gliomas in FLAIR, T1, T1ce and T2, with labels."""
    from agsevnet.synth.phantom import write_phantom_dataset
    from agsevnet.parallel import worker_count

    files = write_phantom_dataset(
        out_dir,
        cases,
        seed,
        shape=shape,
        naming=naming.value,
        with_labels=not no_labels,
        overwrite=overwrite,
        workers=workers or worker_count(cases),
        progress=True,
    )
    labels = "without labels" if no_labels else "with labels"
    typer.echo(
        f"wrote {cases} phantom case(s) {labels} ({naming.value} layout, {'x'.join(map(str, shape))}, "
        f"seed {seed}): {len(files)} files in {out_dir}"
    )
