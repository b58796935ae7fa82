"""``agsevnet model-summary``: layer table, parameter count and forward GFLOPs of a network for a patch size."""

from __future__ import annotations

from typing import Optional

import typer

from agsevnet.cli import app

_AGSEVNET_FAMILY = ("agsevnet", "vnet")


def _shape(shape: object) -> str:
    if shape is None:
        return "-"
    if shape and isinstance(shape, list) and isinstance(shape[0], list):
        return ", ".join(_shape(s) for s in shape)
    return "(" + ", ".join(str(v) for v in shape) + ")"  # type: ignore[union-attr]


@app.command("model-summary")
def model_summary(
    model: str = typer.Option(
        "agsevnet", "--model", "-m", help="agsevnet | vnet | segresnet | unet | monai-vnet."
    ),
    patch: tuple[int, int, int] = typer.Option((128, 128, 64), "--patch", help="Patch size X Y Z."),
    se: Optional[bool] = typer.Option(
        None, "--se/--no-se", help="Squeeze-and-Excitation in the encoder (agsevnet/vnet; default: the model's)."
    ),
    skip: Optional[str] = typer.Option(None, "--skip", help="ag | concat (agsevnet/vnet; default: the model's)."),
    base_width: Optional[int] = typer.Option(None, "--base-width", help="Width of the first level (default 20)."),
    depth: Optional[int] = typer.Option(None, "--depth", help="Number of resolution levels (default 5)."),
) -> None:
    """Print the layer table, parameter count and forward GFLOPs for one patch, and run one forward pass."""
    from rich.console import Console
    from rich.table import Table

    from agsevnet.errors import ConfigError
    from agsevnet.models import MODEL_NAMES, build_model, required_divisor, summarize

    if model not in MODEL_NAMES:
        raise ConfigError(f"--model {model!r} is not one of {', '.join(MODEL_NAMES)}")
    options = {"se": se, "skip": skip, "base_width": base_width, "depth": depth}
    cfg: dict = {"name": model, **{k: v for k, v in options.items() if v is not None}}
    if model not in _AGSEVNET_FAMILY and len(cfg) > 1:
        raise ConfigError("--se/--no-se, --skip, --base-width and --depth apply only to agsevnet and vnet")
    divisor = required_divisor(cfg)
    if any(size < 1 or size % divisor for size in patch):
        raise ConfigError(f"--patch {' '.join(map(str, patch))}: every size must be a positive multiple of "
                          f"{divisor} for this model")
    net = build_model(cfg)
    summary = summarize(net, (1, 4, *patch))

    table = Table(title=f"{model} {cfg}", show_lines=False)
    for column, justify in (("module", "left"), ("type", "left"), ("output shape", "left"),
                            ("params", "right"), ("GFLOPs", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in summary.rows:
        table.add_row(row.name, row.kind, _shape(row.output_shape), f"{row.params:,}", f"{row.gflops:.2f}")
    console = Console()
    if not console.is_terminal:  # piped or redirected: do not wrap the table at 80 columns
        console = Console(width=120)
    console.print(table)
    console.print(f"parameters: {summary.params:,} ({summary.params / 1e6:.2f} M; trainable "
                  f"{summary.trainable_params:,})")
    console.print(f"forward GFLOPs for a {'x'.join(map(str, patch))} patch: {summary.gflops:.1f}")
    console.print("  (PyTorch FlopCounterMode: convolutions and matrix products, 1 multiply-add = 2 FLOPs)")
    console.print(f"forward pass: input {_shape(summary.input_shape)} -> output {_shape(summary.output_shape)} "
                  f"(logits) in {summary.seconds:.1f} s on cpu (first pass: includes one-time kernel setup)")
