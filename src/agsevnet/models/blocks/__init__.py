"""Building blocks of the AGSE-VNet family: convolutions, Squeeze-and-Excitation, Attention Guided Filter."""

from agsevnet.models.blocks.convs import ConvNormAct, UpConv, group_count, make_norm
from agsevnet.models.blocks.guided_filter import (
    AttentionBlock,
    AttentionGuidedFilter,
    box_mean,
    box_sum,
    guided_filter_coefficients,
    window_counts,
)
from agsevnet.models.blocks.se import SqueezeExcitation

__all__ = [
    "AttentionBlock",
    "AttentionGuidedFilter",
    "ConvNormAct",
    "SqueezeExcitation",
    "UpConv",
    "box_mean",
    "box_sum",
    "group_count",
    "guided_filter_coefficients",
    "make_norm",
    "window_counts",
]
