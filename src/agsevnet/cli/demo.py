"""``agsevnet demo``: the whole pipeline on phantoms, see :mod:`agsevnet.demo`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from agsevnet.cli import app


def cpu_runtime() -> None:
    """Prediction's CPU settings (:func:`agsevnet.cli.predict.tune_cpu_runtime`), and OpenMP threads that sleep
    instead of spinning while they wait (``OMP_WAIT_POLICY=PASSIVE``, read when torch loads OpenMP, so only set
    before torch is imported; a user's own setting wins). When other programs share the cores, spinning threads
    wait on each other for whole scheduler slices: cpu-small training steps ran 2-13x faster with it on this
    project's shared 2-core machine, and the demo's training 7-17x (3.7 vs 0.2-0.5 steps/s at the same load)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from agsevnet.cli.predict import tune_cpu_runtime

    tune_cpu_runtime()


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
    cpu_runtime()
    from agsevnet.demo import DISCLAIMER, format_summary, run_demo

    typer.echo(DISCLAIMER + "\n", err=True)
    record = run_demo(out, minutes=minutes, seed=seed, overwrite=overwrite, progress=not quiet)
    typer.echo(format_summary(record))
