"""``agsevnet cross-validate``: train every fold, predict and evaluate its held-out patients, print the table
(see :mod:`agsevnet.studies.crossval`)."""

from __future__ import annotations

from pathlib import Path

import typer

from agsevnet.cli import app
from agsevnet.cli.runtime import tune_cpu_runtime


@app.command("cross-validate")
def crossval_command(
    data_dir: Path = typer.Argument(..., help="Labelled dataset folder (any layout agsevnet reads)."),
    out: Path = typer.Option(..., "--out", "-o", help="Study folder: fold<k>/ runs, cache/, crossval.csv/.json."),
    config: str = typer.Option("default", "--config", "-c", help="Preset or YAML file (as for train)."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Config override dotted.key=value (repeatable).",
                                        show_default=False),
    folds: list[int] = typer.Option([], "--fold", help="Only these folds (repeatable; default: all).",
                                    show_default=False),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Training steps per fold (train.steps).",
                                     show_default=False),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available).",
                                      show_default=False),
    hd95: str = typer.Option("pooled", "--hd95", help="Hausdorff95 rule: pooled (medpy, BraTS 2020) or max."),
    cache: Path | None = typer.Option(None, "--cache", help="Preprocessing cache folder (default: OUT/cache).",
                                      show_default=False),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Patient-level cross-validation with the same training, prediction and evaluation users get; resumable
    (run the same command again: finished folds are kept, an interrupted one resumes).

    Example: agsevnet cross-validate BraTS2021 --out cv --config cpu-brats
    """
    tune_cpu_runtime(passive_wait=True, all_threads=False)
    from agsevnet.studies.crossval import cross_validate, format_table

    sets = list(overrides) + ([f"train.steps={steps}"] if steps is not None else [])
    record = cross_validate(data_dir, out, config=config, overrides=sets, folds=folds or None, device=device,
                            hd95=hd95, progress=not quiet, say=lambda m: typer.echo(m, err=True), cache_dir=cache)
    typer.echo(format_table(record))
