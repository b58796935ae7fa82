r"""The Categorical Dice loss of the paper (section 3.7, eq. 12-14), optionally with cross-entropy.

For logits z (N, C, X, Y, Z), P = softmax(z) over the classes and one-hot labels G:

* eq. 12, soft Dice per sample n and class c, with a smoothing term s (``smooth``):
      D_nc = (2 sum_v P_ncv G_ncv + s) / (sum_v P_ncv + sum_v G_ncv + s)
  or, with ``squared=True``, the V-Net form whose gradient eq. 13 prints:
      D_nc = (2 sum_v P_ncv G_ncv + s) / (sum_v P_ncv^2 + sum_v G_ncv^2 + s);
* eq. 14, weighted over classes (weights w = [0.1, 1, 1, 1] by default: background down-weighted):
      loss = - sum_c w_c mean_n D_nc / sum_c w_c.

**Value range.** Each D_nc lies in [0, 1], so the Dice loss lies in **[-1, 0]**: -1 is a perfect prediction,
0 no overlap at all. The loss is negative, as in the paper (eq. 14); ``1 + loss`` is the familiar
"1 - Dice" and has the same gradients. (The TensorFlow VNet code the paper builds on divides by the number of
classes instead of sum(w), a constant factor of 0.775 for the default weights: same optimum, gradients scaled;
and it smooths as 2 (sum PG + s) / (sum P + sum G + s), which lets an absent class predicted absent score 2.)

With ``ce_weight > 0`` the cross-entropy of the logits (nnU-Net style Dice + CE) is added:
``loss = dice_loss + ce_weight * CE``, range [-1, inf). Cross-entropy gives a useful gradient on patches where
a class is absent, where soft Dice with a small ``smooth`` has almost none.

The smoothing default ``s = 1e-5`` is the reference's; a class absent from both a sample's prediction and its
labels then scores D = 1.

The soft Dice itself is MONAI's :class:`~monai.losses.DiceLoss` (softmax, per sample and class, class weights),
rescaled to eq. 14. Everything is computed in float32 (float64 inputs stay float64), inside an autocast-disabled
region, so fp16 or bf16 logits from ``torch.autocast`` neither overflow nor lose the sums' precision.

Targets may be integer label maps (N, X, Y, Z) or (N, 1, X, Y, Z) with values 0..C-1, or one-hot /
probability maps (N, C, X, Y, Z).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from agsevnet.errors import ConfigError

LOSS_NAMES = ("categorical_dice", "region_dice")

REGION_CHANNELS: tuple[str, ...] = ("WT", "TC", "ET")
"""Output channels of a region-based model (``region_dice``): nested whole tumour, tumour core, enhancing."""


def region_targets(labels: torch.Tensor) -> torch.Tensor:
    """Internal labels (N, X, Y, Z) -> float region maps (N, 3, X, Y, Z): WT = 1|2|3, TC = 1|3, ET = 3."""
    labels = labels.long()
    wt = labels > 0
    et = labels == 3
    tc = (labels == 1) | et
    return torch.stack([wt, tc, et], dim=1).float()


def _one_hot_target(target: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(one-hot float target (N, C, ...), integer labels (N, ...) or None when the target was one-hot)."""
    n, c = logits.shape[:2]
    spatial = tuple(logits.shape[2:])
    if target.dim() == logits.dim() and target.shape[1] == c and c > 1:
        if tuple(target.shape) != tuple(logits.shape):
            raise ValueError(f"one-hot target shape {list(target.shape)} does not match logits {list(logits.shape)}")
        return target.to(logits.dtype), None
    labels = target[:, 0] if target.dim() == logits.dim() and target.shape[1] == 1 else target
    if tuple(labels.shape) != (n, *spatial):
        raise ValueError(
            f"target shape {list(target.shape)} fits neither labels (N, X, Y, Z) / (N, 1, X, Y, Z) nor one-hot "
            f"(N, {c}, X, Y, Z) for logits {list(logits.shape)}"
        )
    if labels.is_floating_point():
        raise ValueError("a label-map target must have an integer dtype (one-hot targets have C channels)")
    labels = labels.long()
    if labels.numel():
        low, high = (int(v) for v in torch.aminmax(labels))
        if low < 0 or high >= c:
            raise ValueError(f"label values must be in 0..{c - 1}, got {low}..{high}")
    one_hot = torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), 1.0)
    return one_hot, labels


class CategoricalDiceLoss(nn.Module):
    """Weighted soft Dice of eq. 12-14 (negative: range [-1, 0]), optionally plus ``ce_weight`` * cross-entropy.

    Args:
        weights: one weight per class (default [0.1, 1, 1, 1]).
        smooth: smoothing term s of the Dice fraction.
        squared: use sum(P^2) + sum(G^2) in the denominator (V-Net, eq. 13).
        ce_weight: weight of an added cross-entropy term (0: none).
    """

    def __init__(
        self,
        weights: Sequence[float] = (0.1, 1.0, 1.0, 1.0),
        smooth: float = 1e-5,
        squared: bool = False,
        ce_weight: float = 0.0,
    ) -> None:
        super().__init__()
        weights = [float(w) for w in weights]
        if not weights or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"class weights must be >= 0 with a positive sum, got {weights}")
        if smooth < 0 or ce_weight < 0:
            raise ValueError(f"smooth and ce_weight must be >= 0, got smooth={smooth}, ce_weight={ce_weight}")
        self.weights = tuple(weights)
        self.smooth = float(smooth)
        self.squared = bool(squared)
        self.ce_weight = float(ce_weight)
        from monai.losses import DiceLoss  # lazily: importing MONAI costs ~1.5 s, prediction never needs it

        self._dice = DiceLoss(
            include_background=True,
            softmax=True,
            squared_pred=self.squared,
            smooth_nr=self.smooth,
            smooth_dr=self.smooth,
            weight=list(weights),
            reduction="mean",
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != len(self.weights):
            raise ValueError(f"{len(self.weights)} class weights for logits with {logits.shape[1]} classes")
        logits = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        with torch.autocast(device_type=logits.device.type, enabled=False):
            one_hot, labels = _one_hot_target(target, logits)
            # MONAI's DiceLoss returns mean_{n,c} w_c (1 - D_nc) = (1/C) sum_c w_c (1 - mean_n D_nc); rescaled by
            # C / sum(w) and shifted by -1 it is eq. 14's  -sum_c w_c mean_n D_nc / sum_c w_c.
            loss = self._dice(logits, one_hot) * (len(self.weights) / sum(self.weights)) - 1
            if self.ce_weight > 0:
                ce = F.cross_entropy(logits, labels if labels is not None else one_hot)
                loss = loss + self.ce_weight * ce
        return loss

    def extra_repr(self) -> str:
        return (
            f"weights={list(self.weights)}, smooth={self.smooth}, squared={self.squared}, "
            f"ce_weight={self.ce_weight}"
        )


class RegionDiceLoss(nn.Module):
    """Region-based loss of the BraTS-winning nnU-Net variants (Isensee et al. 2020): three sigmoid outputs for the
    nested regions WT, TC, ET (:data:`REGION_CHANNELS`), soft Dice per region (MONAI's ``DiceLoss(sigmoid=True)``)
    plus ``bce_weight`` x binary cross-entropy. The network optimises the evaluated regions directly instead of the
    four disjoint classes, so a necrosis/enhancing confusion inside the core no longer costs TC.

    ``batch=True`` pools the Dice sums over the batch (nnU-Net's batch Dice): a patch without enhancing tumour then
    does not turn a few false-positive voxels into a Dice of 0. Targets: internal label maps (N, X, Y, Z) or
    (N, 1, X, Y, Z), values 0..3. Range: [-1, inf) (``-Dice + BCE``).
    """

    def __init__(self, smooth: float = 1e-5, bce_weight: float = 1.0, batch: bool = True,
                 weights: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        weights = [float(w) for w in weights]
        if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"region weights must be three values >= 0 with a positive sum, got {weights}")
        if smooth < 0 or bce_weight < 0:
            raise ValueError(f"smooth and bce_weight must be >= 0, got smooth={smooth}, bce_weight={bce_weight}")
        self.smooth, self.bce_weight, self.batch, self.weights = float(smooth), float(bce_weight), bool(batch), tuple(weights)
        from monai.losses import DiceLoss

        self._dice = DiceLoss(include_background=True, sigmoid=True, smooth_nr=self.smooth, smooth_dr=self.smooth,
                              batch=self.batch, weight=weights, reduction="mean")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 3:
            raise ValueError(f"region_dice needs a model with 3 outputs (WT, TC, ET), got {logits.shape[1]}")
        logits = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        with torch.autocast(device_type=logits.device.type, enabled=False):
            labels = target[:, 0] if target.dim() == logits.dim() else target
            regions = region_targets(labels).to(logits.dtype)
            loss = self._dice(logits, regions) * (3 / sum(self.weights)) - 1
            if self.bce_weight > 0:
                loss = loss + self.bce_weight * F.binary_cross_entropy_with_logits(logits, regions)
        return loss

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, bce_weight={self.bce_weight}, batch={self.batch}, weights={list(self.weights)}"


def loss_output(cfg: Mapping[str, Any] | None) -> str:
    """What a model trained with this loss outputs: ``"regions"`` (3 sigmoid channels WT/TC/ET) or ``"classes"``
    (softmax over background, NCR/NET, edema, enhancing)."""
    return "regions" if (cfg or {}).get("name") == "region_dice" else "classes"


def build_loss(cfg: Mapping[str, Any] | None = None) -> nn.Module:
    """The loss described by ``cfg = {"name": "categorical_dice", "weights": [...], "smooth": ...,
    "squared": ..., "ce_weight": ...}`` (every key optional; ``None`` gives the paper's loss)."""
    cfg = dict(cfg or {})
    name = cfg.pop("name", "categorical_dice")
    if name not in LOSS_NAMES:
        raise ConfigError(f"unknown loss {name!r}; expected one of {', '.join(LOSS_NAMES)}")
    cls, allowed = {
        "region_dice": (RegionDiceLoss, {"weights", "smooth", "bce_weight", "batch"}),
        "categorical_dice": (CategoricalDiceLoss, {"weights", "smooth", "squared", "ce_weight"}),
    }[name]
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(f"loss {name!r} has no option(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}")
    try:
        return cls(**cfg)
    except ValueError as exc:
        raise ConfigError(f"invalid loss configuration: {exc}") from exc
