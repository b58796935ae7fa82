"""An ensemble of networks of one architecture, run as one network (pure PyTorch).

``Ensemble(members, activation)`` returns, for an input batch, the logits whose softmax (or sigmoid) is the mean
of the members' softmax (sigmoid) probabilities: ``log(mean_k softmax(z_k))`` for classes (softmax of it is that
mean exactly, up to the clamp at 1e-12), ``logit(mean_k sigmoid(z_k))`` for regions. Averaging probabilities, not
logits, is what nnU-Net does with its five fold models. Every inference path (sliding window, whole pass, TTA,
export) then treats the ensemble as one network that applies its usual activation to the output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

EPS = 1e-12


class Ensemble(nn.Module):
    """Mean of the members' probabilities, returned as logits (see the module docstring)."""

    def __init__(self, members: Sequence[nn.Module], activation: str = "softmax"):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be softmax or sigmoid, got {activation!r}")
        self.members = nn.ModuleList(members)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            z = member(x).float()
            p = torch.softmax(z, dim=1) if self.activation == "softmax" else torch.sigmoid(z)
            total = p if total is None else total + p
        mean = total / len(self.members)
        if self.activation == "softmax":
            return torch.log(mean.clamp_min(EPS))
        mean = mean.clamp(EPS, 1 - 1e-7)
        return torch.log(mean) - torch.log1p(-mean)
