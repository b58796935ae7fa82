"""``agsevnet prepare``: scans as they come from the scanner -> a BraTS-conformant case (see
:mod:`agsevnet.prepare`)."""

from __future__ import annotations

from pathlib import Path

import typer

from agsevnet.cli import app


@app.command("prepare")
def prepare_command(
    input_path: Path | None = typer.Argument(None, metavar="INPUT", help="One patient's folder with its four "
                                             "sequences (NIfTI in any orientation and voxel size, or DICOM series; "
                                             "the sequence of each is found from its name), or a folder of such "
                                             "patient folders (each prepared in turn)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: OUT/<case>/<case>_{flair,t1,t1ce,t2}.nii.gz "
                             "on the BraTS grid, prepare.json, prepare.png."),
    flair: Path | None = typer.Option(None, "--flair", help="The FLAIR file (where the names do not tell)."),
    t1: Path | None = typer.Option(None, "--t1", help="The T1 (pre-contrast) file."),
    t1ce: Path | None = typer.Option(None, "--t1ce", help="The T1 post-contrast file (the reference sequence)."),
    t2: Path | None = typer.Option(None, "--t2", help="The T2 file."),
    case_id: str | None = typer.Option(None, "--case-id", help="The case's name (default: INPUT's folder name)."),
    bias_correction: bool = typer.Option(False, "--bias-correction", help="N4 bias-field correction of each "
                                         "sequence first (off by default: see the README's measurements)."),
    atlas_transform: str = typer.Option("rigid", "--atlas-transform", help="T1ce to the SRI24 atlas: rigid (the "
                                        "brain keeps its size, as in the BraTS releases) or affine (rigid, then "
                                        "affine)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo a case already prepared."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the summary line."),
) -> None:
    """Co-register, bring onto the SRI24/BraTS grid (240x240x155, 1 mm), skull-strip: the input of every other
    command, from the scanner's files.

    Example: agsevnet prepare PatientFolder/ --out prepared; then agsevnet predict prepared --out preds
    (or in one step: agsevnet predict PatientFolder/ --prepare --out preds). A folder of patient folders is
    prepared patient by patient; one that fails is listed at the end (exit 1), the others go on, and running the
    command again resumes (patients prepared already are kept).
    """
    import os

    from agsevnet.cli.runtime import tune_cpu_runtime
    from agsevnet.prepare.inputs import patient_folders
    from agsevnet.prepare.pipeline import prepare

    tune_cpu_runtime(all_threads="OMP_NUM_THREADS" not in os.environ)  # an explicit thread count wins
    files = {"flair": flair, "t1": t1, "t1ce": t1ce, "t2": t2}
    patients = patient_folders(input_path) if input_path is not None else [None]
    if len(patients) > 1:
        from agsevnet.prepare.cohort import check_cohort_options, describe_cohort, for_each_patient

        check_cohort_options(input_path, patients, files, case_id)

        def one(folder: Path) -> tuple[str, bool]:
            done = prepare(folder, out, overwrite=overwrite, bias_correction=bias_correction,
                           atlas_transform=atlas_transform)
            return done.line, done.skipped

        typer.echo(describe_cohort(input_path, patients), err=True)
        result = for_each_patient(patients, one, desc="prepare", progress=not quiet, echo=typer.echo)
        typer.echo(result.format("prepared") + f"; written under {out}", err=not result.ok)
        if not result.ok:
            raise typer.Exit(1)
        return
    log = None if quiet else (lambda msg: typer.echo(f"  {msg}", err=True))
    result = prepare(patients[0], out, files=files, case_id=case_id, overwrite=overwrite,
                     bias_correction=bias_correction, atlas_transform=atlas_transform, log=log)
    typer.echo(result.line)
    typer.echo(f"written: {result.case_dir} (prepare.json: transforms and checks; prepare.png: a picture to look at)")
