"""Squeeze-and-Excitation (paper section 3.2, eq. 1-4), MONAI's :class:`~monai.networks.blocks.ChannelSELayer`.

For a feature map U (N, C, X, Y, Z):

* eq. 2, squeeze:  z_c = mean over all voxels of U_c  (global average pooling);
* eq. 3, excite:   s = sigmoid(W2 ReLU(W1 z)), W1: C -> C/m, W2: C/m -> C (fully connected, with bias), m = 4;
* eq. 4, scale:    x~_c = s_c * U_c.

(Eq. 1 is the convolution that produced U.) The hidden width is ``C // m``; C must be >= m.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import ChannelSELayer


class SqueezeExcitation(ChannelSELayer):
    """SE block on 3D maps with reduction ``m`` (the paper's m = 4); ``forward(x) == x * gates(x)``."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        if reduction < 1 or channels < reduction:
            raise ValueError(
                f"squeeze-and-excitation needs channels >= reduction >= 1, got {channels} channels and "
                f"reduction m={reduction} (increase base_width or lower se_reduction)"
            )
        super().__init__(spatial_dims=3, in_channels=channels, r=reduction)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """The excitation s (N, C) of eq. 3, each in (0, 1)."""
        return self.fc(self.avg_pool(x).flatten(1))
