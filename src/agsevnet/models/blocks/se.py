"""Squeeze-and-Excitation (paper section 3.2, eq. 1-4), the same layers as MONAI's
:class:`~monai.networks.blocks.ChannelSELayer` (``avg_pool``, ``fc`` = Linear, ReLU, Linear, Sigmoid; the same
state-dict keys).

For a feature map U (N, C, X, Y, Z):

* eq. 2, squeeze:  z_c = mean over all voxels of U_c  (global average pooling);
* eq. 3, excite:   s = sigmoid(W2 ReLU(W1 z)), W1: C -> C/m, W2: C/m -> C (fully connected, with bias), m = 4;
* eq. 4, scale:    x~_c = s_c * U_c.

(Eq. 1 is the convolution that produced U.) The hidden width is ``C // m``; C must be >= m.

Written out here instead of subclassing MONAI's layer because ``import monai`` costs about 1.5 s per process
(measured on the 2-core CPU), which prediction with the whole-volume strategy otherwise never pays; the block is
five standard layers.
"""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcitation(nn.Module):
    """SE block on 3D maps with reduction ``m`` (the paper's m = 4); ``forward(x) == x * gates(x)``."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        if reduction < 1 or channels < reduction:
            raise ValueError(
                f"squeeze-and-excitation needs channels >= reduction >= 1, got {channels} channels and "
                f"reduction m={reduction} (increase base_width or lower se_reduction)"
            )
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool3d(1)
        hidden = channels // reduction
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gates(x)
        return x * g.view(g.shape[0], g.shape[1], 1, 1, 1).to(x.dtype)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """The excitation s (N, C) of eq. 3, each in (0, 1)."""
        return self.fc(self.avg_pool(x).flatten(1))
