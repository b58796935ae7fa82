"""``agsevnet export``: a checkpoint's network as ONNX or TorchScript, with its preprocessing contract
(see :mod:`agsevnet.infer.export`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from agsevnet.cli import app


class Format(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


@app.command("export")
def export_command(
    checkpoint: str = typer.Argument(..., metavar="CKPT", help="A checkpoint (.pt) or a bundled model's name."),
    fmt: Format = typer.Option(..., "--format", "-f", help="onnx (opset 18) or torchscript."),
    out: Path = typer.Option(..., "--out", "-o", help="The model file to write; FILE.json (the preprocessing "
                             "contract) is written beside it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace FILE and FILE.json if they exist."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare the exported file with eager PyTorch on "
                               "random and phantom inputs at two sizes (onnxruntime needed for ONNX)."),
) -> None:
    """Export the network with dynamic batch and spatial sizes (multiples of the model's divisor).

    Example: agsevnet export run/best.pt --format onnx --out agsevnet.onnx
    """
    from agsevnet.infer.export import describe, export_model

    result = export_model(checkpoint, fmt.value, out, overwrite=overwrite, check=check)
    typer.echo(describe(result))
