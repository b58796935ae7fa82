"""``agsevnet cross-validate``: train every fold, predict and evaluate its held-out patients, print the table;
``agsevnet cross-validate-summary``: studies of one recipe over seeds, with their spread
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
    seed: int | None = typer.Option(None, "--seed", help="Training seed (the config's seed; one study per seed, "
                                    "then cross-validate-summary).", show_default=False),
    retrain: bool = typer.Option(False, "--retrain", help="Train again the folds of OUT that were trained with "
                                 "another configuration (default: refuse them)."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available).",
                                      show_default=False),
    hd95: str = typer.Option("pooled", "--hd95", help="Hausdorff95 rule: pooled (medpy, BraTS 2020) or max."),
    cache: Path | None = typer.Option(None, "--cache", help="Preprocessing cache folder (default: OUT/cache).",
                                      show_default=False),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Patient-level cross-validation with the same training, prediction and evaluation users get; resumable
    (run the same command again: finished folds are kept, an interrupted one resumes). Each fold is scored with
    its final weights, never with a checkpoint chosen on its held-out patients; beside the means, the worst
    patient and the failures (WT Dice < 0.5).

    Example: agsevnet cross-validate BraTS2021 --out cv --config brats-cpu --seed 0
    """
    tune_cpu_runtime(passive_wait=True, all_threads=False)
    from agsevnet.studies.crossval import cross_validate, format_table

    sets = (list(overrides) + ([f"train.steps={steps}"] if steps is not None else [])
            + ([f"seed={seed}"] if seed is not None else []))
    record = cross_validate(data_dir, out, config=config, overrides=sets, folds=folds or None, device=device,
                            hd95=hd95, progress=not quiet, say=lambda m: typer.echo(m, err=True), cache_dir=cache,
                            retrain=retrain)
    typer.echo(format_table(record))


@app.command("cross-validate-summary")
def crossval_summary_command(
    studies: list[Path] = typer.Argument(..., help="Study folders (or their crossval.json) of one recipe trained "
                                         "with different --seed."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the summary as JSON here.",
                                         show_default=False),
) -> None:
    """Several cross-validation studies of one recipe, one per training seed: each study's mean Dice and HD95
    (ET/WT/TC), worst patient and failures, then their mean, sd and min-max over seeds.

    Example: agsevnet cross-validate-summary cv-seed0 cv-seed1
    """
    from agsevnet.fsutil import write_json_atomic
    from agsevnet.studies.crossval import combine_studies, format_combined

    combined = combine_studies(studies)
    if json_out is not None:
        write_json_atomic(json_out, combined)
    typer.echo(format_combined(combined))
