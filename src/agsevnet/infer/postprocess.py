"""Postprocessing of predicted internal label maps, and the decoding of region-based outputs into labels."""

from __future__ import annotations

from typing import Any

import numpy as np

ENHANCING, NECROTIC = 3, 1


def argmax_classes(probabilities: Any) -> Any:
    """The index of the largest class per voxel, uint8, of class probabilities ``(C, X, Y, Z)`` (a torch tensor
    gives a tensor, a NumPy array an array); ties go to the lower class, as ``argmax``. Written out as C - 1
    comparisons because ``torch.argmax`` over the channel axis of a (4, 140, 175, 150) float32 crop took 0.68 s
    on this project's CPU and this takes 0.04 s (measured 2026-12-05; NumPy's argmax: 0.09 s)."""
    import torch

    is_numpy = isinstance(probabilities, np.ndarray)
    p = torch.from_numpy(probabilities) if is_numpy else probabilities
    best = p[0].clone()
    index = torch.zeros(p.shape[1:], dtype=torch.uint8)
    for c in range(1, p.shape[0]):
        index.masked_fill_(p[c] > best, c)
        torch.maximum(best, p[c], out=best)
    return index.numpy() if is_numpy else index


def relabel_small_enhancing(labels: np.ndarray, threshold: int) -> np.ndarray:
    """Internal labels with all enhancing tumour relabelled as necrosis when the predicted enhancing volume is
    below ``threshold`` voxels (the BraTS 2020 winners' trick, Isensee et al. 2020: a few false-positive ET
    voxels in a case without ET cost a Dice of 0, while the case's TC stays the same). ``threshold <= 0`` turns
    it off. Returns ``labels`` itself when nothing changes, else a relabelled copy."""
    if threshold <= 0:
        return labels
    enhancing = labels == ENHANCING
    count = int(np.count_nonzero(enhancing))
    if count == 0 or count >= threshold:
        return labels
    out = labels.copy()
    out[enhancing] = NECROTIC
    return out


def regions_to_labels(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Internal labels from region probabilities ``(3, X, Y, Z)`` in WT, TC, ET order (a region-based model's
    sigmoid outputs): edema where WT > threshold, NCR/NET where also TC > threshold, enhancing where also
    ET > threshold. The regions are nested by construction (TC only inside WT, ET only inside TC), as BraTS
    defines them and as nnU-Net's region-based BraTS models decode them."""
    p = np.asarray(probabilities)
    if p.ndim != 4 or p.shape[0] != 3:
        raise ValueError(f"region probabilities must be (3, X, Y, Z), got {p.shape}")
    wt = p[0] > threshold
    tc = wt & (p[1] > threshold)
    et = tc & (p[2] > threshold)
    out = np.zeros(p.shape[1:], dtype=np.uint8)
    out[wt] = 2
    out[tc] = NECROTIC
    out[et] = ENHANCING
    return out


def regions_to_classes(probabilities: np.ndarray) -> np.ndarray:
    """Class probabilities ``(4, ...)`` (background, NCR/NET, edema, enhancing) from region probabilities
    ``(3, ...)`` (WT, TC, ET), with the regions made nested first (TC <= WT, ET <= TC): background 1 - WT, edema
    WT - TC, NCR/NET TC - ET, enhancing ET. They sum to 1; used where a file of class probabilities is asked for
    (``--save-probabilities``). Labels are decided by :func:`regions_to_labels`, not by the argmax of these."""
    p = np.asarray(probabilities, dtype=np.float32)
    wt = p[0]
    tc = np.minimum(p[1], wt)
    et = np.minimum(p[2], tc)
    return np.stack([1.0 - wt, tc - et, wt - tc, et])


COMPONENT_RULES: tuple[str, ...] = ("size", "mass", "core")
"""How :func:`keep_main_components` ranks tumour components: ``size`` (voxels), ``mass`` (summed tumour
probability, 1 - p(background)) or ``core`` (summed tumour-core probability, p(NCR/NET) + p(enhancing))."""


def component_weights(probabilities: np.ndarray, rule: str) -> np.ndarray | None:
    """Per-voxel weights whose sum over a component is its score under ``rule`` (None for ``size``), from class
    probabilities ``(4, X, Y, Z)`` (background, NCR/NET, edema, enhancing)."""
    if rule not in COMPONENT_RULES:
        raise ValueError(f"component rule must be one of {', '.join(COMPONENT_RULES)}, got {rule!r}")
    if rule == "size":
        return None
    p = np.asarray(probabilities)
    if rule == "mass":
        return 1.0 - p[0]
    return p[1] + p[3]


def keep_main_components(labels: np.ndarray, min_fraction: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Internal labels with every tumour component (connected, 26-neighbourhood, over all tumour labels)
    scoring less than ``min_fraction`` of the best-scoring one set to background. A component's score is its
    size in voxels, or with ``weights`` (:func:`component_weights`) the sum of the weights over its voxels.
    Scattered false positives far from the tumour cost little Dice but dominate HD95; a glioma is almost always
    one lesion, or a few of comparable size. Ranking by size alone can delete the real tumour when the model
    also calls a larger region of normal anatomy tumour (seen on unseen patients: a 61,565-voxel false region in
    the posterior fossa kept, the 20,369-voxel tumour deleted); the ``core`` weights rank by how much tumour
    core (necrosis, enhancing rim) a component holds instead. ``min_fraction <= 0`` turns it off. Returns
    ``labels`` itself when nothing changes, else a copy."""
    if min_fraction <= 0:
        return labels
    from scipy import ndimage

    tumour = labels > 0
    if not tumour.any():
        return labels
    components, n = ndimage.label(tumour, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return labels
    if weights is None:
        scores = np.bincount(components.ravel())[1:].astype(np.float64)
    else:
        scores = np.bincount(components.ravel(), weights=np.asarray(weights, dtype=np.float64).ravel(),
                             minlength=n + 1)[1:]
    keep = scores >= min_fraction * scores.max()
    if keep.all():
        return labels
    lut = np.concatenate([[False], keep])
    out = labels.copy()
    out[~lut[components] & tumour] = 0
    return out
