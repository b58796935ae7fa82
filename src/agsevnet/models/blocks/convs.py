"""Convolution building blocks: conv -> norm -> ReLU -> dropout, and the transposed-convolution up-sampling.

Normalisation (:func:`make_norm`): ``"group"`` (default, GroupNorm as in the TensorFlow VNet the paper builds
on, which used 20 groups), ``"instance"`` (InstanceNorm3d, affine) or ``"batch"`` (BatchNorm3d). GroupNorm
needs the number of groups to divide the channels; we use the **largest divisor of C that is <= the requested
number of groups**, so 20 groups on 20, 40, ..., 320 channels are used as asked, and a narrow network (e.g.
``base_width=8``) gets 8 groups of one channel instead of an error.
"""

from __future__ import annotations

from torch import nn

NORMS = ("group", "instance", "batch")


def group_count(channels: int, requested: int) -> int:
    """The largest divisor of ``channels`` that is <= ``requested`` (at least 1)."""
    for groups in range(min(channels, max(requested, 1)), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def make_norm(kind: str, channels: int, groups: int = 20) -> nn.Module:
    """A 3D normalisation layer: ``"group"`` (see :func:`group_count`), ``"instance"`` or ``"batch"``."""
    if kind == "group":
        return nn.GroupNorm(group_count(channels, groups), channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"unknown normalisation {kind!r}; expected one of {', '.join(NORMS)}")


class ConvNormAct(nn.Sequential):
    """Conv3d (3x3x3, 'same' padding, optional stride 2) -> norm -> ReLU -> dropout.

    Dropout is element-wise (``nn.Dropout``, as ``tf.nn.dropout`` in the reference) and left out entirely when
    ``dropout == 0``; in eval mode it is the identity, so inference pays nothing for it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        norm: str = "group",
        norm_groups: int = 20,
        dropout: float = 0.0,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
            make_norm(norm, out_channels, norm_groups),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class UpConv(nn.Sequential):
    """2x up-sampling: ConvTranspose3d (3x3x3, stride 2, output exactly twice the input size) -> ReLU.

    As in the reference's ``deconv_relu`` (no normalisation, no dropout).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ConvTranspose3d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, output_padding=1),
            nn.ReLU(inplace=True),
        )
