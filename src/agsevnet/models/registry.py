"""Build a network from a plain configuration dict: ``build_model({"name": ..., **kwargs})``.

Names (every model maps (N, 4, X, Y, Z) to logits (N, 4, X, Y, Z)):

* ``"agsevnet"``: :class:`agsevnet.models.nets.AGSEVNet` (defaults: AGSE-VNet). Its ablations are the same
  class: ``{"name": "agsevnet", "se": False}`` (AG-VNet), ``{"skip": "concat"}`` (SE-VNet),
  ``{"se": False, "skip": "concat"}`` (VNet).
* ``"vnet"``: our plain VNet, i.e. ``AGSEVNet`` with ``se=False, skip="concat"`` unless the config says
  otherwise. It is the TensorFlow VNet for BraTS the paper builds on (3x3x3 convs, widths 20..320, five levels,
  GroupNorm, ReLU, element-wise dropout, 3x3x3 stride-2 down- and transposed up-convolutions), *not* MONAI's
  VNet, which follows Milletari et al. (5x5x5 convs, 16..256 channels, BatchNorm, ELU/PReLU, 2x2x2 stride-2
  down/up-convolutions, input replicated to 16 channels, channel-wise dropout).
* ``"monai-vnet"``: MONAI's :class:`monai.networks.nets.VNet` (in 4 / out 4, its defaults otherwise).
* ``"segresnet"``: MONAI's :class:`monai.networks.nets.SegResNet` with the MONAI BraTS tutorial settings
  (blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=16, dropout_prob=0.2), in 4 / out 4 (the
  tutorial's 3 sigmoid outputs become our 4 softmax classes).
* ``"unet"``: MONAI's :class:`monai.networks.nets.UNet` with channels (16, 32, 64, 128, 256), strides
  (2, 2, 2, 2), two residual units per block and instance normalisation (MONAI's residual U-Net as in its 3D
  segmentation tutorials, with nnU-Net's choice of InstanceNorm for BraTS), in 4 / out 4.

Every other key of the config is a keyword argument of that model's constructor and overrides the default;
unknown names or keys raise :class:`agsevnet.errors.ConfigError`. :func:`required_divisor` gives the factor
every spatial input size must be a multiple of.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from agsevnet.errors import ConfigError


def _agsevnet() -> type[nn.Module]:
    from agsevnet.models.nets import AGSEVNet

    return AGSEVNet


def _monai(name: str) -> Callable[[], type[nn.Module]]:
    def get() -> type[nn.Module]:
        from monai.networks import nets

        return getattr(nets, name)

    return get


# name -> (class getter, default keyword arguments)
_MODELS: dict[str, tuple[Callable[[], type[nn.Module]], dict[str, Any]]] = {
    "agsevnet": (_agsevnet, {}),
    "vnet": (_agsevnet, {"se": False, "skip": "concat"}),
    "monai-vnet": (_monai("VNet"), {"spatial_dims": 3, "in_channels": 4, "out_channels": 4}),
    "segresnet": (
        _monai("SegResNet"),
        {
            "spatial_dims": 3,
            "in_channels": 4,
            "out_channels": 4,
            "blocks_down": [1, 2, 2, 4],
            "blocks_up": [1, 1, 1],
            "init_filters": 16,
            "dropout_prob": 0.2,
        },
    ),
    "unet": (
        _monai("UNet"),
        {
            "spatial_dims": 3,
            "in_channels": 4,
            "out_channels": 4,
            "channels": [16, 32, 64, 128, 256],
            "strides": [2, 2, 2, 2],
            "num_res_units": 2,
            "norm": "instance",
        },
    ),
}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


def _resolve(cfg: Mapping[str, Any]) -> tuple[str, type[nn.Module], dict[str, Any]]:
    """(name, class, keyword arguments) of a config, validated against the constructor's signature."""
    name = cfg.get("name")
    if name not in _MODELS:
        raise ConfigError(f"unknown model name {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    getter, defaults = _MODELS[name]
    cls = getter()
    kwargs = {**defaults, **{k: v for k, v in cfg.items() if k != "name"}}
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        valid = ", ".join(p for p in accepted if p != "self")
        raise ConfigError(f"model {name!r} has no option(s) {', '.join(unknown)}; valid options: {valid}")
    return name, cls, kwargs


def build_model(cfg: Mapping[str, Any]) -> nn.Module:
    """The network described by ``cfg = {"name": ..., **kwargs}`` (see the module docstring), with its
    :func:`required_divisor` as the attribute ``required_divisor``."""
    name, cls, kwargs = _resolve(cfg)
    try:
        model = cls(**kwargs)
    except (ValueError, TypeError, AssertionError) as exc:
        raise ConfigError(f"cannot build model {name!r}: {exc}") from exc
    model.required_divisor = required_divisor(cfg)
    return model


def required_divisor(cfg: Mapping[str, Any]) -> int:
    """The factor every spatial input size must be a multiple of (16 for the default AGSE-VNet)."""
    name, _, kwargs = _resolve(cfg)
    if name in ("agsevnet", "vnet"):
        return 2 ** (int(kwargs.get("depth", 5)) - 1)
    if name == "segresnet":
        return 2 ** (len(kwargs["blocks_down"]) - 1)
    if name == "unet":
        return math.prod(int(s) for s in kwargs["strides"])
    return 16  # monai-vnet: four 2x2x2 stride-2 down-convolutions


def check_input_size(cfg: Mapping[str, Any], size: tuple[int, ...] | list[int]) -> None:
    """Raise ``ValueError`` naming the size and the divisor unless every spatial size is a multiple of it."""
    divisor = required_divisor(cfg)
    if any(int(s) % divisor for s in size):
        raise ValueError(
            f"input spatial size {list(size)} is not a multiple of {divisor} in every axis, which model "
            f"{cfg.get('name')!r} needs (pad or crop the input)"
        )
