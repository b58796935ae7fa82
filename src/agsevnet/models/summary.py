"""A model summary in pure PyTorch: layer table (module, output shape, parameters, GFLOPs), parameter count and
forward FLOPs, from one forward pass under :class:`torch.utils.flop_counter.FlopCounterMode`.

FLOPs are PyTorch's count: convolutions, transposed convolutions and matrix products, one multiply-add = 2 FLOPs.
Element-wise operations, normalisation, pooling, interpolation and the guided filter's cumulative sums are not
counted (they are a few percent of the arithmetic of these networks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class LayerRow:
    """One module of the table: its dotted name, class, output shape(s), parameters and forward GFLOPs."""

    name: str
    kind: str
    output_shape: list[Any] | None
    params: int
    gflops: float


@dataclass(frozen=True)
class ModelSummary:
    rows: list[LayerRow]
    params: int
    trainable_params: int
    gflops: float
    input_shape: list[int]
    output_shape: list[int]
    seconds: float


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _shapes(value: Any) -> list[Any] | None:
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (tuple, list)):
        return [_shapes(v) for v in value]
    return None


def summarize(
    model: nn.Module,
    input_shape: tuple[int, ...] | list[int],
    *,
    max_depth: int = 3,
    device: str | torch.device = "cpu",
) -> ModelSummary:
    """Run one no-grad forward pass of a random input of ``input_shape`` (N, C, X, Y, Z) in eval mode and
    summarise it: the modules nested at most ``max_depth`` levels deep that ran (containers that are never
    called, such as ``ModuleList``, and identities are left out), and the totals."""
    rows_for = [
        (name, module)
        for name, module in model.named_modules()
        if name and name.count(".") < max_depth and not isinstance(module, nn.Identity)
    ]
    shapes: dict[str, list[Any] | None] = {}

    def recorder(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            shapes[name] = _shapes(output)

        return hook

    handles = [module.register_forward_hook(recorder(name)) for name, module in rows_for]
    was_training = model.training
    model.eval()
    x = torch.randn(*input_shape, device=device)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            start = time.perf_counter()
            out = model(x)
            seconds = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__

    def gflops(key: str) -> float:
        return sum(counts.get(key, {}).values()) / 1e9

    rows = [
        LayerRow(name, type(module).__name__, shapes.get(name), count_parameters(module), gflops(f"{root}.{name}"))
        for name, module in rows_for
        if name in shapes
    ]
    return ModelSummary(
        rows=rows,
        params=count_parameters(model),
        trainable_params=count_parameters(model, trainable_only=True),
        gflops=counter.get_total_flops() / 1e9,
        input_shape=list(x.shape),
        output_shape=list(out.shape),
        seconds=seconds,
    )
