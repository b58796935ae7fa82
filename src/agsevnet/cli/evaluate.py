"""``agsevnet evaluate`` (BraTS metrics of predictions against ground truths) and ``agsevnet report`` (one
self-contained HTML file of a run: configuration, training curves, metrics, figures)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from agsevnet.cli import app


class Missing(str, Enum):
    error = "error"
    empty = "empty"
    skip = "skip"


class Labels(str, Enum):
    auto = "auto"
    brats2020 = "brats2020"
    brats2023 = "brats2023"
    msd = "msd"


class Hd95(str, Enum):
    pooled = "pooled"
    max = "max"


@app.command("evaluate")
def evaluate_command(
    pred: Path = typer.Argument(..., help="Prediction file, or folder of them (flat or one folder per case)."),
    gt: Path = typer.Argument(
        ..., help="Ground-truth file, folder of label files, or dataset folder (BraTS, MSD, nnU-Net)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Per-case CSV; the summary goes to <out>_summary.csv."),
    json_path: Path | None = typer.Option(
        None, "--json", help="JSON with per-case rows, file paths, summary and conventions."
    ),
    missing: Missing = typer.Option(
        Missing.error, "--missing",
        help="A ground-truth case without prediction: error, score it as an empty prediction, or skip it.",
    ),
    labels: Labels = typer.Option(
        Labels.auto, "--labels",
        help="Label convention of the ground truth (and of the predictions unless --pred-labels). auto: the "
        "dataset layout's (MSD: msd; BraTS: a file holding 4 is brats2020, one holding 3 brats2023); label "
        "files without a recognised layout: 4 means brats2020, other tumour values stop with an error.",
    ),
    pred_labels: Labels | None = typer.Option(
        None, "--pred-labels",
        help="Label convention of the predictions, when it differs from the ground truth's (default: as "
        "--labels; auto: the ground truth's family, the values decide).", show_default=False,
    ),
    hd95: Hd95 = typer.Option(
        Hd95.pooled, "--hd95",
        help="Hausdorff95 rule. pooled: 95th percentile of both directions' distances pooled (medpy hd95, "
        "BraTS 2020; 373.13 where one mask is empty). max: the larger of the two directed 95th percentiles "
        "(paper eq. 19, BraTS 2023 ranking; 374 where one mask is empty).",
    ),
    strict_geometry: bool = typer.Option(
        False, "--strict-geometry",
        help="A prediction whose affine differs from the ground truth's is an error (default: a warning, "
        "and the voxel arrays are compared when the grid shapes agree).",
    ),
    lesion_wise: bool = typer.Option(
        False, "--lesion-wise",
        help="Also the BraTS 2023+ lesion-wise figures per case and region: brats-evaluation's columns "
        "(all_instance_tp_et, lesionwise_dsc_mean_et, global_nsd_wt, ...) and the BraTS 2023 ranking rule's "
        "(brats2023_lesionwise_dice_et, ...), appended to the CSVs and JSON (~1 s more per case).",
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Parallel processes (default: up to 4, one per 4 cases).", show_default=False
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Dice, sensitivity, specificity and Hausdorff95 (mm) of ET, WT and TC per case, as the BraTS 2020 online
    evaluation computes them (--hd95 max: the Hausdorff95 of the paper's eq. 19 and BraTS 2023), and their
    summary (mean, std, median, quartiles) as in the paper's Table 1."""
    from rich.console import Console

    from agsevnet.evaluate.runner import evaluate
    from agsevnet.evaluate.summary import check_outputs, evaluation_record, summary_path, summary_table, write_outputs

    check_outputs([out, None if out is None else summary_path(out), json_path], overwrite)
    evaluation = evaluate(pred, gt, labels=labels.value, missing=missing.value, workers=workers,
                          pred_labels=None if pred_labels is None else pred_labels.value, hd95=hd95.value,
                          strict_geometry=strict_geometry, lesion_wise=lesion_wise)
    record = evaluation_record(evaluation)
    for warning in evaluation.warnings:  # one per prediction whose affine differs from its ground truth's
        typer.echo(f"warning: {warning}", err=True)
    Console().print(summary_table(record["summary"], title=f"BraTS metrics of {len(record['cases'])} case(s) "
                                  f"(HD95 rule: {hd95.value})"))
    if lesion_wise:
        from agsevnet.evaluate.lesionwise import lesionwise_table

        Console().print(lesionwise_table(record["lesionwise_summary"], title="Lesion-wise (BraTS 2023+)"))
    n_missing = sum(case["missing_prediction"] for case in record["cases"])
    if n_missing:
        typer.echo(f"{n_missing} case(s) had no prediction and were scored as empty")
    if evaluation.unmatched_predictions:
        typer.echo(f"warning: {len(evaluation.unmatched_predictions)} prediction(s) without ground truth were ignored: "
                   + ", ".join(evaluation.unmatched_predictions[:10]), err=True)
    for path in write_outputs(record, out, json_path):
        typer.echo(f"wrote {path}")


@app.command("report")
def report_command(
    directory: Path = typer.Argument(..., help="Folder to report on: a training run, an evaluation, a demo output."),
    out: Path | None = typer.Option(None, "--out", "-o", help="HTML file to write (default: DIR/report.html).",
                                    show_default=False),
    title: str = typer.Option("agsevnet report", "--title", help="Title of the report."),
    notes: str | None = typer.Option(None, "--notes", help="Text shown at the top (e.g. a disclaimer)."),
    max_overlays: int = typer.Option(12, "--max-overlays", min=0, help="At most this many per-case slice figures."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report."),
) -> None:
    """One self-contained HTML file (images embedded, opens offline) with what DIR holds: configuration,
    training curves, evaluation metrics (tables, scatter + box plots), tumour-centre slices and a 3D rendering."""
    from agsevnet.report.html import build_report

    path = build_report(directory, out if out is not None else directory / "report.html", title=title, notes=notes,
                        max_overlays=max_overlays, overwrite=overwrite)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
