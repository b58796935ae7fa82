"""``agsevnet check DATA_DIR``: one line per case, then every problem found, then a one-line summary.

Exit status 0 only when no case has a problem (like nnU-Net's ``--verify_dataset_integrity``). Plain text
on stdout (one case per line, ``problem:`` / ``note:`` prefixes) so that it can be grepped; the progress bar
goes to stderr.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from agsevnet.cli import app


def _fmt_values(values: list[float]) -> str:
    return ",".join(str(int(v)) if float(v).is_integer() else f"{v:g}" for v in values)


def _rows(reports) -> list[tuple[str, ...]]:
    rows = [("case", "scheme", "modalities", "shape", "spacing", "labels")]
    for r in reports:
        if not r.has_label:
            labels = "none"
        elif r.label_values is None:
            labels = f"unreadable ({r.label_convention})"
        else:
            labels = f"{_fmt_values(r.label_values)} ({r.label_convention})"
        rows.append((
            r.case_id,
            r.scheme,
            ",".join(r.modalities) or "-",
            "x".join(map(str, r.shape)) if r.shape else "?",
            "x".join(f"{s:g}" for s in r.spacing) if r.spacing else "?",
            labels,
        ))
    return rows


@app.command("check")
def check(
    data_dir: Path = typer.Argument(..., help="Dataset folder (BraTS 2018-2021 or 2023+, MSD Task01, nnU-Net raw) "
                                              "or one case folder."),
    workers: int | None = typer.Option(None, "--workers", "-j", min=1,
                                help="Worker processes (default: one per CPU, at most one per case)."),
) -> None:
    """Check a dataset: list its cases and report every problem (exit 1 if there is any)."""
    from agsevnet.data.checks import check_dataset

    start = time.perf_counter()
    reports = check_dataset(data_dir, workers=workers)
    elapsed = time.perf_counter() - start

    rows = _rows(reports)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])

    notes = list(dict.fromkeys(n for r in reports for n in r.notes))
    for note in notes:
        typer.echo(f"note: {note}")
    # A problem shared by many cases (a bad dataset.json) is printed once, with the number of cases.
    cases_of: dict[str, list[str]] = {}
    for r in reports:
        for problem in r.problems:
            cases_of.setdefault(problem, []).append(r.case_id)
    if cases_of:
        typer.echo("")
        for problem, case_ids in cases_of.items():
            where = case_ids[0] if len(case_ids) == 1 else f"{len(case_ids)} cases"
            typer.echo(f"problem: {where}: {problem}")
    bad = sum(1 for r in reports if not r.ok)
    summary = (f"{len(reports)} case(s) checked in {elapsed:.1f} s: "
               + (f"{len(cases_of)} problem(s) in {bad} case(s)" if cases_of else "no problem found"))
    typer.echo(summary)
    if cases_of:
        raise typer.Exit(1)
