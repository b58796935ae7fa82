"""Lesion-wise metrics of one case: what the official BraTS metrics package computes, and the BraTS 2023 ranking rule.

Both work per region (ET, TC, WT, from the internal labels of :mod:`agsevnet.data.labels`) on boolean masks,
with the voxel spacing of the header; lesions are the 26-connected components of a mask (scipy's
``ndimage.label`` with a 3 x 3 x 3 structuring element). Surfaces and distances are those of
:mod:`agsevnet.evaluate.metrics`: a surface voxel is one the 6-neighbour erosion removes, distances come from
scipy's Euclidean distance transform with the spacing, HD95 is numpy's 95th percentile of the pooled distances
of both surfaces to each other.

1. ``brats-evaluation`` columns (:data:`PANOPTICA_COLUMNS`), the figures the current BraTS segmentation
   challenges publish (package ``brats-evaluation`` 0.0.10 on PyPI, its ``gli`` config, built on
   ``panoptica`` 2.1; its ``brats-parse-metrics seg`` names the columns). Per region ``r`` (``et``, ``tc``,
   ``wt``):

   - instances: the components of the prediction and of the ground truth. Each pair that overlaps gets its
     Dice; pairs with Dice >= 1e-6 are candidates, and a maximum-weight one-to-one matching (Hungarian,
     scipy's ``linear_sum_assignment`` on the cost 1 - Dice) picks the matches. ``all_instance_tp_r`` = matched
     pairs, ``all_instance_fp_r`` = unmatched predicted components, ``all_instance_fn_r`` = unmatched
     ground-truth components; ``all_instance_prec_r`` = TP / (TP + FP), ``all_instance_rec_r`` = TP / (TP + FN)
     (NaN where the denominator is 0), ``all_instance_f1_r`` = TP / (TP + FP/2 + FN/2) (0 when TP = 0 and
     anything exists, NaN when there are no components at all);
   - ``lesionwise_{dsc,nsd,hd95}_{mean,std}_r``: mean and standard deviation (ddof 0) over the **matched**
     pairs only of the Dice, the normalized surface Dice (GaNDLF's, tolerance = the smallest voxel spacing)
     and HD95 (mm) of each matched pair's two components. With no match: mean 0 (Dice, NSD) and +inf (HD95)
     when there is any component, NaN when neither mask has one; the std is then NaN. Unmatched components
     do not lower these means: the F1 above carries them;
   - ``global_{dsc,nsd,hd95}_r``: the same three metrics on the whole region masks, computed as panoptica
     2.1 computes them: it does not pass the spacing to its global metrics, so ``global_hd95`` is in voxel
     units (mm only on a 1 mm isotropic grid, as BraTS's) and ``global_nsd`` has the tolerance 0.5 voxel (the
     fraction of each surface lying on the other). The legacy ``Dice_*``/``Hausdorff95_*`` columns are the
     spacing-aware figures. When the masks do not overlap: Dice 0, NSD 0, HD95 373 (the package's stand-in
     for +inf), or NaN for all three when both are empty.

2. BraTS 2023 ranking rule (:data:`RANKING_COLUMNS`), the lesion-wise Dice and HD95 that ranked BraTS 2023
   (``rachitsaluja/BraTS-2023-Metrics``, ``brats_2023_metrics/surface_distance/brats_metrics.py``, glioma
   parameters: dilation 3, volume threshold 50):

   - the ground truth is dilated 3 times with the 18-neighbour structuring element, only to merge nearby
     lesions: ground-truth voxels that fall in one component of the dilated mask form one lesion; the lesion's
     voxels are not changed, its dilation is its search region;
   - a lesion's prediction is the union of the predicted components that touch its search region; its Dice
     and HD95 are those of that union against the lesion (a lesion no component touches: Dice 0, HD95 374);
   - a predicted component that touches no lesion's search region is a false positive, counted as Dice 0 and
     HD95 374;
   - lesions of 50 mm^3 or less (50 voxels on the 1 mm BraTS grid) are left out, neither scored nor counted as
     missed; a component that touches only such a lesion is not a false positive either;
   - ``brats2023_lesionwise_dice_r`` = (sum of the kept lesions' Dice) / (kept lesions + false positives),
     ``brats2023_lesionwise_hd95_r`` = (sum of their HD95 + 374 x false positives) / (same); 1 and 0 when the
     denominator is 0. ``brats2023_tp_r`` / ``brats2023_fn_r``: kept lesions with / without a prediction,
     ``brats2023_fp_r``: false-positive components.

   A lesion's HD95 is, as in that code, the larger of the two directed 95th percentiles (lesion surface ->
   prediction surface and back; ``agsevnet evaluate --hd95 max``). One difference remains: that code takes
   the percentiles with DeepMind's ``surface-distance`` (each surface element weighted by its area), here
   every surface voxel counts once, so a lesion's HD95 can differ by a fraction of a voxel. The Dice, the
   counts and the 374 penalties are the 2023 rule's.

``tests/test_lesionwise.py`` checks the first family against ``brats-evaluation`` itself (phantoms with known
lesions, real label maps perturbed) and the second against a literal per-lesion transcription of the rule.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from agsevnet.boxes import bounding_slices
from agsevnet.data.labels import REGION_LABELS

LESION_REGIONS: tuple[str, ...] = ("ET", "TC", "WT")
"""Regions in the order of brats-evaluation's ``gli`` config (column suffixes ``_et``, ``_tc``, ``_wt``)."""

PANOPTICA_METRICS: tuple[str, ...] = (
    "all_instance_tp", "all_instance_fp", "all_instance_fn", "all_instance_prec", "all_instance_rec",
    "all_instance_f1", "global_dsc", "global_nsd", "global_hd95", "lesionwise_dsc_mean", "lesionwise_dsc_std",
    "lesionwise_nsd_mean", "lesionwise_nsd_std", "lesionwise_hd95_mean", "lesionwise_hd95_std",
)
"""The per-region figures of ``brats-parse-metrics seg``, in its order."""

RANKING_METRICS: tuple[str, ...] = (
    "brats2023_lesionwise_dice", "brats2023_lesionwise_hd95", "brats2023_tp", "brats2023_fp", "brats2023_fn",
)

PANOPTICA_COLUMNS: tuple[str, ...] = tuple(f"{m}_{r.lower()}" for r in LESION_REGIONS for m in PANOPTICA_METRICS)
RANKING_COLUMNS: tuple[str, ...] = tuple(f"{m}_{r.lower()}" for r in LESION_REGIONS for m in RANKING_METRICS)
LESIONWISE_COLUMNS: tuple[str, ...] = PANOPTICA_COLUMNS + RANKING_COLUMNS
"""Every lesion-wise column of a case: 45 brats-evaluation columns, then 15 ranking-rule columns."""

COUNT_METRICS = frozenset({"all_instance_tp", "all_instance_fp", "all_instance_fn", "brats2023_tp", "brats2023_fp",
                           "brats2023_fn"})

MATCHING_THRESHOLD = 1e-6  # brats-evaluation: MaxBipartiteMatching(matching_metric=DSC, matching_threshold=1e-6)
GLOBAL_NSD_TOLERANCE = 0.5  # panoptica's NSD tolerance when it gets no spacing, as for its global metrics
GLOBAL_HD95_EMPTY = 373.0  # brats-parse-metrics writes 373 for an infinite global HD95
RANKING_HD95_PENALTY = 374.0  # BraTS 2023: HD95 of a missed lesion or a false positive
RANKING_DILATION = 3  # BraTS 2023 glioma: binary_dilation iterations (18-neighbour structure)
RANKING_VOLUME_THRESHOLD = 50.0  # BraTS 2023 glioma: lesions of <= 50 mm^3 are left out

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity for the components
_FACE = ndimage.generate_binary_structure(3, 1)  # surfaces
_DILATION = ndimage.generate_binary_structure(3, 2)  # the 2023 rule's dilation


def _union_box(boxes: Sequence[tuple[slice, ...]], shape: tuple[int, ...], margin: int = 1) -> tuple[slice, ...]:
    return tuple(slice(max(min(b[a].start for b in boxes) - margin, 0), min(max(b[a].stop for b in boxes) + margin, n))
                 for a, n in enumerate(shape))


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 26-connected components of a boolean mask, numbered 1..n in raster order, and n."""
    labels, n = ndimage.label(mask, structure=_FULL)
    return labels, int(n)


def surface_distance_pair(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances of every surface voxel of ``a`` to the surface of ``b``, and of ``b``'s to ``a``'s (non-empty masks).

    Computed on the crop of the union bounding box plus one voxel, which leaves every distance unchanged.
    """
    box = bounding_slices(a | b, 1)
    a, b = a[box], b[box]
    sampling = np.asarray(spacing, dtype=np.float64)
    a_surface = a & ~ndimage.binary_erosion(a, structure=_FACE)
    b_surface = b & ~ndimage.binary_erosion(b, structure=_FACE)
    a_to_b = ndimage.distance_transform_edt(~b_surface, sampling=sampling)[a_surface]
    b_to_a = ndimage.distance_transform_edt(~a_surface, sampling=sampling)[b_surface]
    return a_to_b, b_to_a


def hd95(a_to_b: np.ndarray, b_to_a: np.ndarray) -> float:
    """The pooled HD95 (medpy's, panoptica's)."""
    return float(np.percentile(np.concatenate([a_to_b, b_to_a]), 95))


def hd95_max(a_to_b: np.ndarray, b_to_a: np.ndarray) -> float:
    """The larger of the two directed 95th percentiles (the BraTS 2023 code's robust Hausdorff, unweighted)."""
    return float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95)))


def nsd(a_to_b: np.ndarray, b_to_a: np.ndarray, tolerance: float) -> float:
    """GaNDLF's normalized surface Dice (panoptica's NSD): the mean over both surfaces of the fraction within
    ``tolerance``, written as that code writes it so the floating-point result is the same."""
    tp_a = np.sum(a_to_b <= tolerance) / a_to_b.size
    tp_b = np.sum(b_to_a <= tolerance) / b_to_a.size
    fp = np.sum(a_to_b > tolerance) / a_to_b.size
    fn = np.sum(b_to_a > tolerance) / b_to_a.size
    return float((tp_a + tp_b) / (tp_a + tp_b + fp + fn + sys.float_info.min))


def _dice(n_overlap: int, n_a: int, n_b: int) -> float:
    return 2.0 * n_overlap / (n_a + n_b)


def _overlap_counts(labels_a: np.ndarray, labels_b: np.ndarray) -> dict[tuple[int, int], int]:
    """(label in a, label in b) -> voxels they share, for every overlapping pair of non-zero labels."""
    both = (labels_a > 0) & (labels_b > 0)
    stride = int(labels_b.max(initial=0)) + 1
    codes, counts = np.unique(labels_a[both].astype(np.int64) * stride + labels_b[both], return_counts=True)
    return {(int(code // stride), int(code % stride)): int(c) for code, c in zip(codes, counts)}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def panoptica_region(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """The brats-evaluation figures of one region (keys :data:`PANOPTICA_METRICS`) from two boolean masks."""
    tolerance = float(min(spacing))
    nan, inf = float("nan"), float("inf")
    out: dict[str, float] = {}

    # Global metrics on the whole masks.
    n_overlap = int(np.count_nonzero(pred & gt))
    if n_overlap == 0:
        empty_both = not pred.any() and not gt.any()
        out["global_dsc"] = nan if empty_both else 0.0
        out["global_nsd"] = nan if empty_both else 0.0
        out["global_hd95"] = nan if empty_both else GLOBAL_HD95_EMPTY
    else:
        out["global_dsc"] = _dice(n_overlap, int(np.count_nonzero(pred)), int(np.count_nonzero(gt)))
        # As panoptica 2.1 computes them: without the spacing (voxel units, NSD tolerance 0.5 voxel).
        distances = surface_distance_pair(gt, pred, (1.0, 1.0, 1.0))
        out["global_nsd"] = nsd(*distances, GLOBAL_NSD_TOLERANCE)
        out["global_hd95"] = hd95(*distances)

    # Instances and their matching.
    box = bounding_slices(pred | gt, 1)
    if box is not None:
        pred, gt = pred[box], gt[box]
    pred_cc, n_pred = label_components(pred)
    gt_cc, n_ref = label_components(gt)
    matches: list[tuple[int, int]] = []
    if n_pred and n_ref:
        pred_sizes = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)
        gt_sizes = np.bincount(gt_cc.ravel(), minlength=n_ref + 1)
        cost = np.full((n_ref, n_pred), 1.0 + 1e-6)
        for (g, p), shared in _overlap_counts(gt_cc, pred_cc).items():
            score = _dice(shared, int(gt_sizes[g]), int(pred_sizes[p]))
            if score >= MATCHING_THRESHOLD:
                cost[g - 1, p - 1] = 1.0 - score
        rows, cols = linear_sum_assignment(cost)
        matches = [(int(r) + 1, int(c) + 1) for r, c in zip(rows, cols) if cost[r, c] < 1.0]

    tp = len(matches)
    fp, fn = n_pred - tp, n_ref - tp
    out["all_instance_tp"], out["all_instance_fp"], out["all_instance_fn"] = float(tp), float(fp), float(fn)
    out["all_instance_prec"] = tp / n_pred if n_pred else nan
    out["all_instance_rec"] = tp / n_ref if n_ref else nan
    if tp:
        out["all_instance_f1"] = tp / (tp + 0.5 * fp + 0.5 * fn)
    else:
        out["all_instance_f1"] = 0.0 if n_pred + n_ref > 0 else nan

    if tp == 0:
        anything = n_pred + n_ref > 0
        for metric, value in (("dsc", 0.0), ("nsd", 0.0), ("hd95", inf)):
            out[f"lesionwise_{metric}_mean"] = value if anything else nan
            out[f"lesionwise_{metric}_std"] = nan
    else:
        gt_boxes = ndimage.find_objects(gt_cc)
        pred_boxes = ndimage.find_objects(pred_cc)
        scores: dict[str, list[float]] = {"dsc": [], "nsd": [], "hd95": []}
        for g, p in matches:
            crop = _union_box([gt_boxes[g - 1], pred_boxes[p - 1]], gt.shape)
            g_mask, p_mask = gt_cc[crop] == g, pred_cc[crop] == p
            scores["dsc"].append(_dice(int(np.count_nonzero(g_mask & p_mask)), int(np.count_nonzero(g_mask)),
                                       int(np.count_nonzero(p_mask))))
            distances = surface_distance_pair(g_mask, p_mask, spacing)
            scores["nsd"].append(nsd(*distances, tolerance))
            scores["hd95"].append(hd95(*distances))
        for metric, values in scores.items():
            out[f"lesionwise_{metric}_mean"], out[f"lesionwise_{metric}_std"] = _mean_std(values)
    return {metric: out[metric] for metric in PANOPTICA_METRICS}


def ranking_region(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    dilation: int = RANKING_DILATION,
    volume_threshold: float = RANKING_VOLUME_THRESHOLD,
) -> dict[str, float]:
    """The BraTS 2023 ranking rule of one region (keys :data:`RANKING_METRICS`) from two boolean masks."""
    box = bounding_slices(pred | gt, dilation + 1)  # the dilation stays inside the crop, or meets the volume's border as before
    if box is not None:
        pred, gt = pred[box], gt[box]
    pred_cc, n_pred = label_components(pred)
    gt_cc, n_gt = label_components(gt)
    # Lesions: the components of the dilated ground truth. Component k of the dilation is exactly the dilation
    # of the ground-truth voxels it holds, i.e. lesion k's search region.
    region_cc, n_lesions = label_components(ndimage.binary_dilation(gt, structure=_DILATION, iterations=dilation))
    lesion_cc = np.where(gt, region_cc, 0)
    voxel_volume = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    lesion_sizes = np.bincount(lesion_cc.ravel(), minlength=n_lesions + 1)

    touching: dict[int, list[int]] = {k: [] for k in range(1, n_lesions + 1)}
    for k, p in _overlap_counts(region_cc, pred_cc):
        touching[k].append(p)
    matched = {p for components in touching.values() for p in components}
    n_fp = n_pred - len(matched)

    pred_boxes = ndimage.find_objects(pred_cc)
    lesion_boxes = ndimage.find_objects(lesion_cc)
    dice_sum = hd_sum = 0.0
    n_kept = n_tp = 0
    for k in range(1, n_lesions + 1):
        size = int(lesion_sizes[k])
        if size * voxel_volume <= volume_threshold:
            continue
        n_kept += 1
        components = touching[k]
        if not components:
            hd_sum += RANKING_HD95_PENALTY
            continue
        n_tp += 1
        crop = _union_box([lesion_boxes[k - 1], *(pred_boxes[p - 1] for p in components)], gt.shape)
        lesion = lesion_cc[crop] == k
        prediction = np.isin(pred_cc[crop], components)
        dice_sum += _dice(int(np.count_nonzero(lesion & prediction)), size, int(np.count_nonzero(prediction)))
        hd_sum += hd95_max(*surface_distance_pair(lesion, prediction, spacing))
    denominator = n_kept + n_fp
    if denominator == 0:
        dice, hd = 1.0, 0.0
    else:
        dice = dice_sum / denominator
        hd = (hd_sum + RANKING_HD95_PENALTY * n_fp) / denominator
    return {"brats2023_lesionwise_dice": dice, "brats2023_lesionwise_hd95": hd, "brats2023_tp": float(n_tp),
            "brats2023_fp": float(n_fp), "brats2023_fn": float(n_kept - n_tp)}


def lesionwise_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """Every lesion-wise column (:data:`LESIONWISE_COLUMNS`) of one case, from internal label arrays (0-3).

    ``spacing`` is the voxel size in mm along the array's axes (the header's zooms). Counts are floats so that
    every value of a row has one type; undefined values are NaN, and ``lesionwise_hd95_mean_*`` is +inf where
    brats-evaluation writes inf (no matched lesion).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction and ground truth shapes differ: {pred.shape} vs {gt.shape}")
    if pred.ndim != 3 or len(spacing) != 3:
        raise ValueError(f"expected 3D label arrays and 3 spacings, got {pred.ndim}D and {list(spacing)}")
    # Every region lies inside WT: one crop of the union's bounding box (with room for the 2023 rule's
    # dilation) serves all of them and changes no figure.
    box = bounding_slices((pred > 0) | (gt > 0), RANKING_DILATION + 1)
    if box is not None:
        pred, gt = pred[box], gt[box]
    out: dict[str, float] = {}
    for region in LESION_REGIONS:
        p = np.isin(pred, REGION_LABELS[region])
        g = np.isin(gt, REGION_LABELS[region])
        suffix = region.lower()
        for metric, value in panoptica_region(p, g, spacing).items():
            out[f"{metric}_{suffix}"] = value
        for metric, value in ranking_region(p, g, spacing).items():
            out[f"{metric}_{suffix}"] = value
    return {column: out[column] for column in LESIONWISE_COLUMNS}


CONVENTIONS: dict[str, str] = {
    "brats_evaluation": "columns all_instance_*, global_*, lesionwise_*: as brats-evaluation 0.0.10 (gli config, "
    "panoptica 2.1) computes them: 26-connected components, one-to-one maximum-Dice matching of overlapping "
    "components (Dice >= 1e-6), lesion-wise means/stds over matched pairs only (no match: 0 / inf, NaN when "
    "nothing exists), NSD tolerance = smallest spacing; global_* without the spacing (voxel units, NSD tolerance "
    "0.5 voxel), global_hd95 373 when the masks do not overlap",
    "brats2023_ranking": "columns brats2023_*: the BraTS 2023 ranking rule (rachitsaluja/BraTS-2023-Metrics): "
    "ground truth dilated 3x (18-neighbour) only to merge nearby lesions and find the components touching each; "
    "lesions <= 50 mm^3 left out; each missed lesion and each unmatched predicted component counts Dice 0 and "
    "HD95 374; 1 / 0 when there is nothing to score; a lesion's HD95 = the larger directed 95th percentile of the surface "
    "distances (every surface voxel counted once, not weighted by area as the 2023 code's surface-distance)",
    "non_finite": "NaN where a figure is undefined; inf where brats-evaluation writes inf (lesionwise_hd95_mean "
    "with no match); summaries skip NaN",
}


def summarize_lesionwise(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Column -> statistic -> value of the lesion-wise columns over cases, skipping NaN (``n`` counts the rest).

    The statistics are the legacy summary's (Mean, StdDev with ddof 0, Median, quartiles); an inf stays in
    (a mean over a case with no matched lesion is inf, as a pandas mean of brats-evaluation's CSV would be).
    """
    out: dict[str, dict[str, float]] = {}
    for column in LESIONWISE_COLUMNS:
        values = np.asarray([float(row[column]) for row in rows], dtype=np.float64)
        values = values[~np.isnan(values)]
        if values.size == 0:
            nan = float("nan")
            out[column] = {"Mean": nan, "StdDev": nan, "Median": nan, "25quantile": nan, "75quantile": nan, "n": 0}
            continue
        from agsevnet.evaluate.summary import statistics

        with np.errstate(invalid="ignore"):  # inf - inf in the std of a column holding inf
            out[column] = statistics(values)
    return out


def lesionwise_table(summary: dict[str, dict[str, float]], title: str | None = None):
    """A rich Table of the lesion-wise summary: one row per figure, one column per region (mean over cases)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("figure (mean over cases)")
    for region in LESION_REGIONS:
        table.add_column(region, justify="right")
    for metric in (*PANOPTICA_METRICS, *RANKING_METRICS):
        digits = 1 if metric in COUNT_METRICS else 2 if "hd95" in metric else 4
        table.add_row(metric, *(f"{summary[f'{metric}_{r.lower()}']['Mean']:.{digits}f}" for r in LESION_REGIONS),
                      end_section=metric in ("all_instance_f1", "global_hd95", "lesionwise_hd95_std"))
    return table
