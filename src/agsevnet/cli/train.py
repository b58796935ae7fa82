"""``agsevnet train``: train a network on a labelled BraTS folder (see :mod:`agsevnet.train.trainer`).

Several GPUs (or CPU processes): ``torchrun --nproc_per_node N -m agsevnet train DATA --out RUN ...``.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from agsevnet.cli import app
from agsevnet.cli.runtime import tune_cpu_runtime
from agsevnet.errors import ConfigError


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


def _fold(text: str | None) -> int | str | None:
    if text is None or text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--fold must be an integer (0-based) or 'all', got {text!r}") from None


@app.command("train")
def train_command(
    data_dir: Path = typer.Argument(..., help="Labelled dataset folder (BraTS 2018-2023, MSD Task01 or nnU-Net layout)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: config.yaml, metrics.csv, tb/, last.pt, best.pt."),
    config: str | None = typer.Option(
        None, "--config", "-c", show_default=False,
        help="Preset (paper, default, cpu-small) or a YAML file based on one (default: default; with --resume: the "
             "run's own config).",
    ),
    overrides: list[str] = typer.Option(
        [], "--set", "-s", help="Override a config value: dotted.key=value (YAML value), e.g. optim.lr=3e-4. Repeatable.",
        show_default=False,
    ),
    fold: str | None = typer.Option(None, "--fold", help="Cross-validation fold 0-4, or 'all' (train on every case).",
                                    show_default=False),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again in a run folder that holds a run."),
    device: Device | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available).",
                                         show_default=False),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Total training steps (overrides train.steps).",
                                     show_default=False),
    cache: Path | None = typer.Option(None, "--cache", help="Preprocessing cache folder (default: RUN/cache).",
                                      show_default=False),
    workers: int | None = typer.Option(None, "--workers", min=0,
                                       help="Patch-loading processes (overrides data.workers; 0: in the main process).",
                                       show_default=False),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (overrides seed).", show_default=False),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train on random patches with validation, checkpoints and logs; resumable (--resume) and exact on the CPU.

    Examples: agsevnet train BraTS2021 --out runs/f0 --config default --fold 0;
    agsevnet train phantoms --out /tmp/run --config cpu-small --steps 200.
    """
    tune_cpu_runtime(passive_wait=True, all_threads=False)  # harmless on a GPU; torchrun sets the threads
    from agsevnet.train.trainer import format_summary, train

    sets = list(overrides)
    for key, value in (("validation.fold", _fold(fold)), ("train.steps", steps), ("data.workers", workers),
                       ("seed", seed)):
        if value is not None:
            sets.append(f"{key}={value}")
    summary = train(data_dir, out, config=config, overrides=sets, resume=resume, overwrite=overwrite,
                    device=device.value if device else None, cache_dir=cache, progress=not quiet)
    from agsevnet.train.distributed import env_info

    if env_info().is_main:
        typer.echo(format_summary(summary))
