"""Networks: the AGSE-VNet family (one class, four variants)."""

from agsevnet.models.nets.agsevnet import AGSEVNet

__all__ = ["AGSEVNet"]
