"""``agsevnet demo``: the whole pipeline on phantoms, see :mod:`agsevnet.demo`."""

from __future__ import annotations

from pathlib import Path

import typer

from agsevnet.cli import app
from agsevnet.cli.runtime import tune_cpu_runtime


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("agsevnet-demo"), "--out", "-o", help="Folder for everything the demo writes."),
    minutes: float = typer.Option(5.0, "--minutes", min=0.1, help="Training time budget in minutes (the other "
                                  "stages add about a minute on a 2-core CPU)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the phantoms and the training."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier demo in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Generate phantoms, train cpu-small for a few minutes, segment held-out phantoms, evaluate, write an HTML
    report. A demonstration on synthetic data: the model is not for patients.

    Example: agsevnet demo --out agsevnet-demo --minutes 5
    """
    tune_cpu_runtime(passive_wait=True)
    from agsevnet.demo import DISCLAIMER, format_summary, run_demo

    typer.echo(DISCLAIMER + "\n", err=True)
    record = run_demo(out, minutes=minutes, seed=seed, overwrite=overwrite, progress=not quiet)
    typer.echo(format_summary(record))
