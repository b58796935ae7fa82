"""Voxel-wise uncertainty and a per-case confidence figure, from the class probabilities of a prediction.

**The map** (``agsevnet predict --save-uncertainty`` writes it as ``<case>_uncertainty.nii.gz``, float32 on the
input grid, values in [0, 1]) is the *normalised entropy* of the class probabilities (background, NCR/NET,
edema, enhancing): ``H(p) / log(4)``, 0 where the model puts all its mass on one class, 1 where it spreads it
evenly over the four. With ``--tta`` the probabilities are the average over the mirrored passes before the
entropy is taken (:func:`agsevnet.infer.engine.predict_probabilities` averages them), so the map is the entropy
of the averaged prediction, the "total" predictive uncertainty: it is high where each pass is unsure *and* where
the passes disagree. For a region-based model (three sigmoid outputs WT, TC, ET) the class probabilities are
those :func:`agsevnet.infer.postprocess.regions_to_classes` derives from the nested regions (background 1 - WT,
edema WT - TC, NCR/NET TC - ET, enhancing ET), which sum to one: the same definition, so figures from both
kinds of model mean the same thing. (The mean binary entropy of the three sigmoids would be the other choice; it
counts a voxel unsure of ET-vs-NCR inside a certain tumour as much as one unsure of tumour-vs-brain, while the
class entropy weighs them by the mass involved.) Outside the brain crop the model saw nothing and the map is 0
(certain background), as the probabilities there are.

**The confidence figure** of a case is ``1 - mean normalised entropy`` over the voxels that decide its
segmentation: the predicted tumour, together with every voxel the model gives a tumour probability
``1 - p(background)`` of at least :data:`TUMOUR_PROBABILITY` (tumour it considered), dilated by
:data:`RIM_VOXELS` voxels (the boundary, where the errors of a segmentation are). The mean is taken over this
region rather than over the brain, because the brain is mostly certain background and would wash out any signal
(a case's figure would then measure its tumour's size, not the model's doubt); and the rim is included because a
region made only of predicted tumour voxels leaves out exactly the voxels the model was unsure enough to
leave out. A case with no such voxel (nothing predicted, nothing considered) has confidence
``1 - mean entropy over the brain crop``. The figure is in [0, 1]; higher is more confident. On phantoms, over six
training seeds of ``tests/test_uncertainty.py``'s model, only heavy blurring lowered it every time; heavy noise raised
it in three of six and a missing FLAIR or T2 moved it either way (an earlier claim that these lower it came from one
lucky training run). It hardly moves when T1ce is missing (the model is then confidently wrong: entropy cannot see
that), and on real cross-validated cases it ranked the badly segmented ones weakly or not at all (Spearman against
Dice -0.03 for an early recipe, +0.39 for ``brats-cpu``; see the README's uncertainty section). So ``agsevnet
predict`` also lists the cases with a warning sign of :mod:`agsevnet.infer.signals` as ones to check.
"""

from __future__ import annotations

import numpy as np

RIM_VOXELS = 3
"""Dilation (voxels, 6-connected steps) of the predicted / considered tumour that the confidence figure averages over."""

TUMOUR_PROBABILITY = 0.1
"""Tumour probability (1 - p(background)) from which a voxel counts as tumour the model considered."""

DEFAULT_CONFIDENCE_THRESHOLD = 0.7
"""Cases whose confidence is below this are listed as "check these" (``--confidence-threshold``). Measured
2026-12-01: the ten real held-out cases of the 5-fold cpu-small cross-validation (``e1_classes``, mean Dice
0.23-0.67, none well segmented) scored 0.574-0.706, nine of ten below 0.7; well-segmented phantoms (Dice
0.84-0.87) of a phantom-trained cpu-small scored 0.886-0.893. A model-specific figure: set it per model."""

CONFIDENCE_DEFINITION = (
    "1 - mean normalised class entropy (H/log 4 of the class probabilities, averaged over the flips with --tta) "
    "over the predicted tumour "
    f"and every voxel with tumour probability >= {TUMOUR_PROBABILITY}, dilated by {RIM_VOXELS} voxels"
)
"""One line saying what the confidence figure is (written into every sidecar and summary)."""


def normalised_entropy(classes: np.ndarray) -> np.ndarray:
    """Normalised entropy ``-sum_c p_c log p_c / log C`` (float32, in [0, 1]) of class probabilities
    ``(C, ...)`` whose first axis sums to 1 (renormalised here, so rounding and bf16 do not push it outside)."""
    p = np.asarray(classes, dtype=np.float32)
    if p.ndim < 2 or p.shape[0] < 2:
        raise ValueError(f"class probabilities must be (C >= 2, ...), got shape {p.shape}")
    p = np.clip(p, 0.0, None)
    total = p.sum(axis=0, keepdims=True)
    p = p / np.where(total > 0, total, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    entropy = -terms.sum(axis=0) / np.log(p.shape[0])
    return np.clip(entropy, 0.0, 1.0).astype(np.float32)


def confidence_region(labels: np.ndarray, classes: np.ndarray, rim: int = RIM_VOXELS) -> np.ndarray:
    """The voxels the confidence figure averages over (see the module docstring): predicted tumour
    (``labels > 0``) or tumour probability >= :data:`TUMOUR_PROBABILITY`, dilated by ``rim`` voxels."""
    from scipy import ndimage

    region = (np.asarray(labels) > 0) | (1.0 - np.asarray(classes[0], dtype=np.float32) >= TUMOUR_PROBABILITY)
    if rim > 0 and region.any():
        region = ndimage.binary_dilation(region, iterations=rim)
    return region


def case_confidence(labels: np.ndarray, classes: np.ndarray, entropy: np.ndarray | None = None,
                    rim: int = RIM_VOXELS) -> dict[str, float | int]:
    """The confidence figure of one case (see the module docstring) from its internal labels and class
    probabilities on the same grid (the brain crop), with the entropy map when already computed.

    Returns ``{"confidence", "mean_entropy", "region_voxels", "uncertain_fraction"}``: the figure, the mean
    normalised entropy it is one minus, the size of the region, and the share of the region's voxels whose
    entropy is above 0.5 (a second, coarser reading of the same map)."""
    if entropy is None:
        entropy = normalised_entropy(classes)
    region = confidence_region(labels, classes, rim)
    values = entropy[region] if region.any() else entropy.ravel()
    mean = float(values.mean()) if values.size else 0.0
    return {
        "confidence": round(1.0 - mean, 6),
        "mean_entropy": round(mean, 6),
        "region_voxels": int(np.count_nonzero(region)),
        "uncertain_fraction": round(float(np.mean(values > 0.5)) if values.size else 0.0, 6),
    }
