"""Per-case segmentation metrics for the BraTS regions, computed as the BraTS 2020 online evaluation does.

Regions (on internal labels, :mod:`agsevnet.data.labels`): ET = {3}, TC = {1, 3}, WT = {1, 2, 3}.
Metrics per region, named as on the BraTS leaderboard (``Dice_ET``, ``Sensitivity_WT``,
``Specificity_TC``, ``Hausdorff95_ET``, ...; see :data:`COLUMNS`):

- Dice = 2 TP / (2 TP + FP + FN); sensitivity = TP / (TP + FN); specificity = TN / (TN + FP), counted over
  every voxel of the volume (background included), as in the paper's eqs. 16-18.
- Hausdorff95 (mm), by one of two rules (:data:`HD95_RULES`, ``agsevnet evaluate --hd95``):

  - ``pooled`` (the default): the 95th percentile (numpy's linear interpolation) of the pooled distances from
    each surface voxel of the prediction to the nearest surface voxel of the ground truth and from each
    surface voxel of the ground truth to the nearest one of the prediction. This is what the BraTS 2020
    pipeline ran (CaPTk called medpy) and what the current ``brats-evaluation`` package's global HD95 gives.
  - ``max``: the larger of the two directed 95th percentiles (prediction -> ground truth and ground truth ->
    prediction, each over its own surface voxels, same surfaces and interpolation), as in the paper's eq. 19
    and the BraTS 2023 ranking code. The BraTS 2023 code weights the distances by surfel areas (DeepMind's
    ``surface-distance``); this rule does not, so on curved surfaces the two differ slightly.

  A surface voxel is a voxel of the mask
  that the mask's erosion with the connectivity-1 (6-neighbour) structuring element removes; voxels outside
  the volume count as background, so a mask touching the volume border has surface there. Distances use the
  voxel spacing from the header (anisotropic spacing is respected). ``pooled`` is exactly medpy's
  ``medpy.metric.binary.hd95(pred, gt, voxelspacing, connectivity=1)``, the implementation nnU-Net's BraTS
  2020 evaluation (``nnunet/dataset_conversion/Task082_BraTS_2020.py``) uses to reproduce the online
  evaluation; ``tests/test_metrics.py`` checks the agreement to 1e-3 mm, and checks ``max`` against a
  brute-force computation of every pairwise surface distance.

Empty masks (the BraTS conventions; the same constants as nnU-Net's reimplementation above and the BraTS
2023 evaluation code ``rachitsaluja/BraTS-2023-Metrics``, whose sensitivity/specificity come from GaNDLF):

- both prediction and ground truth empty: Dice 1, sensitivity 1, specificity 1, Hausdorff95 0;
- exactly one empty: Dice 0 and Hausdorff95 :data:`HD95_EMPTY` = 373.128664 mm under ``pooled``, the
  diagonal of the 240 x 240 x 155 mm BraTS volume, sqrt(240^2 + 240^2 + 155^2) (a constant, whatever the
  volume's size, so that means stay comparable with the leaderboard), and :data:`HD95_EMPTY_MAX` = 374 mm under
  ``max`` (the BraTS 2023 code's constant); sensitivity follows its formula: 0 when the ground truth
  is non-empty and the prediction empty, and 0 when the ground truth is empty and the prediction is not
  (nothing was to be found and something was: as in the BraTS 2023 code); specificity follows its formula.
- a ground truth covering the whole volume (no negatives, so TN + FP = 0): specificity 1.

Speed: the surface distances are computed on the crop of the union bounding box of the two masks plus a
one-voxel margin, never over the whole volume; every surface voxel lies in that box, so the erosions and the
Euclidean distance transform give exactly the full-volume values. On the eleven real 240 x 240 x 155 cases
against shifted copies, :func:`case_metrics` takes a median 0.23 s per case on one CPU core, medpy on the
whole volume 5-9 s (measured on a shared, loaded 2-core machine).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from agsevnet import REGIONS
from agsevnet.boxes import bounding_slices
from agsevnet.data.labels import REGION_LABELS

HD95_EMPTY: float = 373.128664
"""Hausdorff95 (mm) when exactly one of prediction and ground truth is empty, rule ``pooled`` (BraTS 2020)."""

HD95_EMPTY_MAX: float = 374.0
"""Hausdorff95 (mm) when exactly one of prediction and ground truth is empty, rule ``max`` (BraTS 2023 code)."""

HD95_RULES: dict[str, str] = {
    "pooled": "95th percentile of the pooled surface-to-surface distances of both directions in mm (medpy hd95, "
              f"connectivity 1; BraTS 2020); {HD95_EMPTY} where exactly one mask is empty",
    "max": "larger of the two directed 95th percentiles of the surface-to-surface distances in mm (paper eq. 19, "
           f"BraTS 2023 ranking; no surfel-area weighting); {HD95_EMPTY_MAX:g} where exactly one mask is empty",
}
"""The Hausdorff95 rules, each with the sentence that the evaluation's files record for it."""

METRICS: tuple[str, ...] = ("Dice", "Sensitivity", "Specificity", "Hausdorff95")
"""Metric names, in the BraTS leaderboard's order."""

COLUMNS: tuple[str, ...] = tuple(f"{metric}_{region}" for metric in METRICS for region in REGIONS)
"""The 12 per-case columns: ``Dice_ET, Dice_WT, Dice_TC, Sensitivity_ET, ..., Hausdorff95_TC``."""

_SURFACE_STRUCTURE = ndimage.generate_binary_structure(3, 1)


def _surface(mask: np.ndarray) -> np.ndarray:
    # border_value=0: outside the array is background, so voxels on the array's border are surface voxels.
    return mask & ~ndimage.binary_erosion(mask, structure=_SURFACE_STRUCTURE, iterations=1)


def check_hd95_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`HD95_RULES`, else ValueError."""
    if rule not in HD95_RULES:
        raise ValueError(f"unknown Hausdorff95 rule {rule!r}; expected one of {', '.join(HD95_RULES)}")
    return rule


def hd95_empty(rule: str = "pooled") -> float:
    """The Hausdorff95 given when exactly one mask is empty under ``rule``."""
    return HD95_EMPTY_MAX if check_hd95_rule(rule) == "max" else HD95_EMPTY


def directed_surface_distances(pred: np.ndarray, gt: np.ndarray,
                               spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (units of ``spacing``) from each surface voxel of ``pred`` to the nearest surface voxel of
    ``gt``, and from each surface voxel of ``gt`` to the nearest one of ``pred``; two non-empty boolean masks.

    Works on the crop of the masks' union bounding box (+1 voxel), see the module docstring.
    """
    box = bounding_slices(pred | gt, margin=1)
    if box is None or not pred.any() or not gt.any():
        raise ValueError("Hausdorff95 needs two non-empty masks")
    p_surface = _surface(pred[box])
    g_surface = _surface(gt[box])
    sampling = np.asarray(spacing, dtype=np.float64)
    # Distance of every voxel to the nearest surface voxel of the other mask (zeros of the EDT's input).
    to_gt = ndimage.distance_transform_edt(~g_surface, sampling=sampling)[p_surface]
    to_pred = ndimage.distance_transform_edt(~p_surface, sampling=sampling)[g_surface]
    return to_gt, to_pred


def hausdorff95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], rule: str = "pooled") -> float:
    """Hausdorff95 between two non-empty boolean masks under ``rule`` (``pooled``: medpy's ``hd95``; ``max``:
    the larger directed 95th percentile; see the module docstring)."""
    check_hd95_rule(rule)
    to_gt, to_pred = directed_surface_distances(pred, gt, spacing)
    if rule == "max":
        return float(max(np.percentile(to_gt, 95), np.percentile(to_pred, 95)))
    return float(np.percentile(np.concatenate([to_gt, to_pred]), 95))


def surface_distances_95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """Hausdorff95 of two non-empty boolean masks by the ``pooled`` rule (medpy's ``hd95``)."""
    return hausdorff95(pred, gt, spacing, "pooled")


def binary_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], n_voxels: int | None = None, hd95: str = "pooled"
) -> dict[str, float]:
    """Dice, Sensitivity, Specificity and Hausdorff95 of two boolean masks, with the BraTS empty-mask rules.

    ``n_voxels`` is the size of the whole volume when ``pred``/``gt`` are crops of it that hold every
    foreground voxel (true negatives outside the crop then still count for the specificity). ``hd95``: the
    Hausdorff95 rule (:data:`HD95_RULES`).
    """
    check_hd95_rule(hd95)
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth shapes differ: {pred.shape} vs {gt.shape}")
    total = pred.size if n_voxels is None else int(n_voxels)
    n_pred = int(np.count_nonzero(pred))
    n_gt = int(np.count_nonzero(gt))
    tp = int(np.count_nonzero(pred & gt))
    fp = n_pred - tp
    negatives = total - n_gt  # TN + FP
    tn = negatives - fp
    if n_pred == 0 and n_gt == 0:
        return {"Dice": 1.0, "Sensitivity": 1.0, "Specificity": 1.0, "Hausdorff95": 0.0}
    dice = 2.0 * tp / (n_pred + n_gt)
    sensitivity = tp / n_gt if n_gt else 0.0
    specificity = tn / negatives if negatives else 1.0
    hd = hausdorff95(pred, gt, spacing, hd95) if n_pred and n_gt else hd95_empty(hd95)
    return {"Dice": dice, "Sensitivity": sensitivity, "Specificity": specificity, "Hausdorff95": hd}


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth shapes differ: {pred.shape} vs {gt.shape}")
    if pred.ndim != 3:
        raise ValueError(f"expected 3D label arrays, got {pred.ndim}D")


def _crop_to_foreground(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both label arrays to the union bounding box of their foreground plus a one-voxel margin.

    Every region lies inside WT, so this one crop serves all three regions; the margin is background (or
    the volume border, which the erosion treats as background too), so surfaces are unchanged.
    """
    box = bounding_slices((pred > 0) | (gt > 0), margin=1)
    if box is None:
        box = (slice(0, 0),) * 3
    pred, gt = pred[box], gt[box]
    for arr, name in ((pred, "prediction"), (gt, "ground truth")):
        if arr.size and (arr.min() < 0 or arr.max() > 3):
            raise ValueError(f"{name} holds values outside the internal labels 0..3: {np.unique(arr).tolist()}")
    return pred, gt


def case_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 hd95: str = "pooled") -> dict[str, float]:
    """The 12 BraTS metrics of one case (keys :data:`COLUMNS`), from internal label arrays (0-3).

    ``spacing`` is the voxel size in mm along the array's three axes (the header's zooms); ``hd95`` the
    Hausdorff95 rule (:data:`HD95_RULES`).
    """
    check_hd95_rule(hd95)
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    _check_pair(pred, gt)
    if len(spacing) != 3:
        raise ValueError(f"spacing must have 3 values, got {list(spacing)}")
    pred_crop, gt_crop = _crop_to_foreground(pred, gt)
    out: dict[str, float] = {}
    for region in REGIONS:
        values = REGION_LABELS[region]
        scores = binary_metrics(np.isin(pred_crop, values), np.isin(gt_crop, values), spacing, n_voxels=pred.size,
                                hd95=hd95)
        for metric in METRICS:
            out[f"{metric}_{region}"] = scores[metric]
    return {column: out[column] for column in COLUMNS}


def dice_scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Dice of ET, WT and TC from internal label arrays (cheap: for validation during training).

    Both masks empty gives 1, as in :func:`case_metrics`.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    _check_pair(pred, gt)
    pred, gt = _crop_to_foreground(pred, gt)
    out: dict[str, float] = {}
    for region in REGIONS:
        p = np.isin(pred, REGION_LABELS[region])
        g = np.isin(gt, REGION_LABELS[region])
        size = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
        out[region] = 1.0 if size == 0 else 2.0 * int(np.count_nonzero(p & g)) / size
    return out
