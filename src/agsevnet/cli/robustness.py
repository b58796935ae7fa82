"""``agsevnet robustness``: the k-space noise experiment of the paper's Fig. 12 (see
:mod:`agsevnet.report.robustness`)."""

from __future__ import annotations

from pathlib import Path

import typer

from agsevnet.cli import app
from agsevnet.cli.runtime import tune_cpu_runtime
from agsevnet.errors import ConfigError


def parse_snrs(values: list[str]) -> list[float] | None:
    """``["40,30", "20"]`` -> ``[40.0, 30.0, 20.0]``; None when no value was given (the default levels)."""
    snrs = []
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            try:
                snrs.append(float(item))
            except ValueError:
                raise ConfigError(f"--snr takes numbers (e.g. --snr 40,30,20), got {item.strip()!r}") from None
    return snrs or None


@app.command("robustness")
def robustness_command(
    data: Path = typer.Argument(..., help="Labelled dataset folder (any layout agsevnet reads)."),
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint (.pt) written by 'agsevnet train'."),
    out: Path = typer.Option(..., "--out", "-o",
                             help="Output folder: robustness.csv, robustness.json, robustness.png."),
    snr: list[str] = typer.Option(
        [], "--snr", help="Noise levels as image SNR (mean brain intensity / noise std), comma-separated or repeated: "
        "--snr 40,30,20,15,10,5 (the default).", show_default=False),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise: the same seed gives the same results."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    noisy_background: bool = typer.Option(
        False, "--noisy-background", help="Keep the noise outside the brain (default: restore the zero background "
        "of skull-stripped data, so that the crop and normalisation match the clean case's)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing results (a stopped run with the same "
                                   "settings resumes without it)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Segment every case with k-space noise at each SNR and report mean Dice per region per level (paper Fig. 12).

    Example: agsevnet robustness agsevnet-demo/data/test --model agsevnet-demo/run/last.pt --out robustness
    """
    if device == "cpu":
        tune_cpu_runtime(passive_wait=True)
    from rich.console import Console

    from agsevnet.report.robustness import CSV_NAME, DEFAULT_SNRS, JSON_NAME, PLOT_NAME, run_robustness, table

    snrs = parse_snrs(snr) or list(DEFAULT_SNRS)
    record = run_robustness(data, model, out, snrs=snrs, seed=seed, restore_background=not noisy_background,
                            overwrite=overwrite, progress=not quiet, device=device)
    cases = record["levels"][0]["cases"]
    Console().print(table(record["levels"], title=f"Mean Dice under k-space noise ({cases} case(s))"))
    for name in (CSV_NAME, JSON_NAME, PLOT_NAME):
        typer.echo(f"wrote {out / name}")
