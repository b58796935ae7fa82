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
    head: bool = typer.Option(
        False, "--head", help="A head round the brain (CSF, skull, scalp, noisy air), as before brain extraction. "
        "Written to OUT_DIR/raw/<case>/, the skull-stripped truth, labels and brain mask to OUT_DIR/truth/<case>/."),
    clinical: bool = typer.Option(
        False, "--clinical", help="Each sequence acquired as a scanner would: its own rigid pose (see --max-rotation,"
        " --max-shift), matrix and thick axial slices (--voxel-size); correct affines. Written as with --head "
        "(OUT_DIR/raw, OUT_DIR/truth with the labels on the T1ce grid and acquisition.json). Usually with --head."),
    max_rotation: float = typer.Option(12.0, "--max-rotation", min=0, help="--clinical: largest rotation (degrees)."),
    max_shift: float = typer.Option(15.0, "--max-shift", min=0, help="--clinical: largest shift (mm)."),
    voxel_size: tuple[float, float, float] = typer.Option(
        (0.9, 0.9, 5.0), "--voxel-size", help="--clinical: voxel size X Y Z in mm (Z: slice spacing)."),
) -> None:
    """Write synthetic BraTS-like cases: a brain with one or two gliomas in FLAIR, T1, T1ce and T2, with labels
    (or, with --head / --clinical, scans as they come from the scanner, with their ground truth)."""
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
        head=head,
        clinical=clinical,
        max_rotation_deg=max_rotation,
        max_shift_mm=max_shift,
        voxel_size=voxel_size,
    )
    labels = "without labels" if no_labels else "with labels"
    kind = " with a head" if head else ""
    kind += (f", each sequence acquired at {'x'.join(f'{v:g}' for v in voxel_size)} mm (up to {max_rotation:g} deg, "
             f"{max_shift:g} mm)") if clinical else ""
    where = f"{out_dir / 'raw'} (truth in {out_dir / 'truth'})" if head or clinical else str(out_dir)
    typer.echo(
        f"wrote {cases} phantom case(s){kind} {labels} ({naming.value} layout, {'x'.join(map(str, shape))}, "
        f"seed {seed}): {len(files)} files in {where}"
    )
