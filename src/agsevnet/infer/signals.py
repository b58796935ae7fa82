"""Per-case signals that a segmentation may be wrong, computed from the prediction alone (no ground truth).

The failures seen on real patients the model never saw were large false "tumour" regions in normal anatomy that
is bright on FLAIR, at the bottom of the brain (cerebellum, brainstem) or its front (orbitofrontal cortex), often
as a second component as large as the real tumour, far from it. :func:`case_signals` measures, on the brain crop:

- ``components``: tumour components of at least :data:`MIN_COMPONENT_ML` ml; ``second_ratio``: the size of the
  second largest over the largest (0 with one component); ``separation_mm``: the distance between their centres;
- ``inferior_fraction``: the share of predicted tumour voxels in the lowest :data:`INFERIOR_SHARE` of the brain's
  extent along the scanner's inferior-superior axis (the posterior fossa lies there);
- ``edge_fraction``: the share of predicted tumour voxels within :data:`EDGE_MM` mm of the brain's surface;
- ``tumour_ml``: the predicted whole-tumour volume;
- ``member_dice``: with an ensemble's member probabilities, the mean pairwise Dice of the members' whole-tumour
  masks (low: the members disagree).

Which of them flag failures, and at which thresholds, was measured on cross-validated predictions
(docs/experiments.md); :func:`flag_reasons` applies those thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_COMPONENT_ML = 1.0
INFERIOR_SHARE = 0.25
EDGE_MM = 5.0


def _superior_axis(affine: np.ndarray) -> tuple[int, float]:
    """The voxel axis closest to world superior (RAS z) and its sign (+1: index grows upwards)."""
    col = np.asarray(affine, dtype=np.float64)[2, :3]
    axis = int(np.argmax(np.abs(col)))
    return axis, float(np.sign(col[axis]) or 1.0)


TWO_REGIONS_RATIO = 0.3
TWO_REGIONS_MM = 40.0
INFERIOR_FLAG = 0.2
MEMBER_DICE_FLAG = 0.8


def flag_reasons(signals: dict[str, Any]) -> list[str]:
    """The reasons to check a case, from its :func:`case_signals` (computed on the labels before the component
    filter, which would hide the evidence). Thresholds measured on cross-validated predictions
    (docs/experiments.md, "Saying when a result looks wrong"): the failures there were a second region as large
    as the tumour far from it, and false tumour at the bottom of the brain."""
    reasons = []
    if signals.get("second_ratio", 0.0) >= TWO_REGIONS_RATIO and signals.get("separation_mm", 0.0) >= TWO_REGIONS_MM:
        reasons.append(f"two far-apart tumour regions of similar size (second {signals['second_ratio']:.0%} of the "
                       f"largest, {signals['separation_mm']:.0f} mm apart): one may be normal anatomy")
    if signals.get("inferior_fraction", 0.0) >= INFERIOR_FLAG:
        reasons.append(f"{signals['inferior_fraction']:.0%} of the tumour in the lowest quarter of the brain "
                       "(cerebellum, brainstem: often bright on FLAIR and mistaken for tumour)")
    if signals.get("member_dice", 1.0) < MEMBER_DICE_FLAG:
        reasons.append(f"the ensemble's members disagree (whole-tumour Dice between them {signals['member_dice']:.2f})")
    return reasons


def case_signals(labels: np.ndarray, probabilities: np.ndarray | None, brain: np.ndarray | None, affine: np.ndarray,
                 spacing: Sequence[float], members: Sequence[np.ndarray] | None = None) -> dict[str, Any]:
    """The signals of the module docstring for internal ``labels`` (X, Y, Z) on a crop with its ``brain`` mask,
    the input's ``affine`` (for the superior direction) and voxel ``spacing`` (mm); ``members``: the member
    class probabilities ``(4, X, Y, Z)`` of an ensemble (optional). Without ``brain`` (prediction, where the
    crop is the brain's bounding box) the crop's extent stands for the brain's and ``edge_fraction`` is not
    computed (the distance transform costs about half a second on a BraTS crop)."""
    from scipy import ndimage

    spacing = tuple(float(s) for s in spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    tumour = labels > 0
    out: dict[str, Any] = {"tumour_ml": float(tumour.sum() * voxel_ml), "components": 0, "second_ratio": 0.0,
                           "separation_mm": 0.0, "inferior_fraction": 0.0, "edge_fraction": 0.0}
    if tumour.any():
        # Everything below works on the tumour voxels only (their indices and component numbers, in the same
        # order), not on whole-crop arrays: on a BraTS crop this keeps the function to one labelling plus a few
        # milliseconds, where ndimage.center_of_mass alone took 0.27 s with many specks.
        comp, n = ndimage.label(tumour, structure=np.ones((3, 3, 3), dtype=bool))
        where = np.nonzero(tumour)
        numbers = comp[where]
        del comp
        sizes = np.bincount(numbers, minlength=n + 1)[1:]
        big = np.flatnonzero(sizes * voxel_ml >= MIN_COMPONENT_ML)
        out["components"] = int(big.size)
        order = np.argsort(sizes)[::-1]
        if n >= 2:
            out["second_ratio"] = float(sizes[order[1]] / sizes[order[0]])
            centres = [np.array([c[numbers == order[k] + 1].mean() for c in where]) for k in (0, 1)]
            out["separation_mm"] = float(np.linalg.norm((centres[0] - centres[1]) * np.asarray(spacing)))
        axis, sign = _superior_axis(affine)
        extent_mask = brain if brain is not None else np.ones(tumour.shape, dtype=bool)
        brain_idx = np.flatnonzero(extent_mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if brain_idx.size:
            lo, hi = int(brain_idx[0]), int(brain_idx[-1])
            extent = hi - lo + 1
            coords = where[axis]
            height = (coords - lo) if sign > 0 else (hi - coords)
            out["inferior_fraction"] = float(np.mean(height < INFERIOR_SHARE * extent))
        if brain is not None:
            depth = ndimage.distance_transform_edt(brain, sampling=spacing)
            out["edge_fraction"] = float(np.mean(depth[tumour] <= EDGE_MM))
        else:
            out.pop("edge_fraction")
    if probabilities is not None:
        p = np.asarray(probabilities)
        out["confidence"] = float(p[:, tumour].max(axis=0).mean()) if tumour.any() else 1.0
    if members is not None and len(members) > 1:
        out["member_dice"] = member_agreement(members)
    return out


def member_agreement(members: Sequence[Any]) -> float:
    """The mean pairwise Dice of the whole-tumour masks (argmax over the classes > 0) of an ensemble's members,
    from their class probabilities ``(4, ...)`` (NumPy arrays or torch tensors, on any one grid)."""
    from agsevnet.infer.postprocess import argmax_classes

    masks = [np.asarray(argmax_classes(m)) > 0 for m in members]
    dices = []
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            a, b = masks[i], masks[j]
            total = int(a.sum()) + int(b.sum())
            dices.append(1.0 if total == 0 else 2.0 * int((a & b).sum()) / total)
    return float(np.mean(dices))
