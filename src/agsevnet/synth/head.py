"""A head around a phantom brain: extra-axial CSF, skull, scalp and background noise.

BraTS images are skull-stripped; scans from a scanner are not. :func:`add_head` wraps a phantom's brain in
the layers a T1/T2/FLAIR head scan shows, from the inside out:

- subarachnoid CSF between the brain and the skull (the brain's outline smoothed over sulci and fissures,
  plus 1-4 mm): dark on T1 and FLAIR, bright on T2, as the CSF inside the brain;
- the skull: inner and outer tables of cortical bone (no signal in any sequence) around the diploe, fatty
  marrow that is bright on T1 (the bright ring in the middle of the skull on a T1 scan);
- the scalp: subcutaneous fat (the brightest tissue on T1, bright on T2 and FLAIR) under skin and muscle
  (intermediate on T1, dark on T2);
- air: no signal, only noise (the magnitude of complex Gaussian noise: Rayleigh distributed).

Layer thicknesses vary smoothly over the head; intensities carry the case's scanner gain (the WM level of the
brain), texture, a bias field, partial volume and Rician noise. The brain's voxels, and so the labels, are
left exactly as they were: the skull-stripped phantom is the ground truth of brain extraction.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from agsevnet.boxes import bounding_slices
from agsevnet.synth.phantom import _CSF, _NOISE, _WM, TISSUES, _smooth_field

# Intensity of each head tissue relative to white matter, per sequence (FLAIR, T1, T1ce, T2); jittered per case.
_HEAD_CONTRAST: dict[str, tuple[float, float, float, float]] = {
    "subarachnoid_csf": (0.22, 0.35, 0.38, 3.60),  # as the CSF of the brain (phantom._CONTRAST)
    "bone": (0.06, 0.05, 0.05, 0.05),  # cortical bone: no MR signal
    "marrow": (1.05, 1.30, 1.28, 1.10),  # fatty diploe
    "fat": (1.30, 1.55, 1.50, 1.35),  # subcutaneous fat: brighter than WM on T1
    "skin": (0.80, 0.70, 0.85, 0.55),  # skin and temporal muscle
}
HEAD_TISSUES: tuple[str, ...] = tuple(_HEAD_CONTRAST)
"""Tissue names (keys of :data:`agsevnet.synth.phantom.TISSUES`) that :func:`add_head` adds."""

# Mean thickness (mm) of each layer from the inside out, and how much it varies over the head (std, mm).
_LAYERS: tuple[tuple[str, float, float], ...] = (
    ("subarachnoid_csf", 2.5, 0.8),
    ("bone", 1.6, 0.3),  # inner table
    ("marrow", 3.0, 1.0),
    ("bone", 1.6, 0.3),  # outer table
    ("fat", 4.0, 1.2),
    ("skin", 2.5, 0.6),
)


def head_layers(brain: np.ndarray, voxels_per_mm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The tissue map (values of :data:`TISSUES`, 0 air) of the head around ``brain`` (bool), brain voxels 0.

    Layers are distances (mm) from the brain's hull: the brain mask smoothed (Gaussian of 4 mm, threshold 0.25),
    which fills sulci and fissures as the arachnoid does; each layer's thickness varies as a smooth random field
    (one for the skull, one for the scalp: they follow each other)."""
    s = np.asarray(voxels_per_mm, dtype=float)
    hull = ndimage.gaussian_filter(brain.astype(np.float32), sigma=4.0 * s, truncate=3.0) > 0.25
    hull |= brain
    distance = ndimage.distance_transform_edt(~hull, sampling=1.0 / s).astype(np.float32)
    tissues = np.zeros(brain.shape, dtype=np.uint8)
    tissues[hull] = TISSUES["subarachnoid_csf"]
    fields = [_smooth_field(rng, brain.shape, 20.0 * s) for _ in range(2)]
    outer = np.zeros(brain.shape, dtype=np.float32)
    for k, (name, mean, spread) in enumerate(_LAYERS):
        thickness = np.maximum(mean + spread * fields[k // 4], 0.5 * mean)
        layer = (distance >= outer) & (distance < outer + thickness) & ~hull
        tissues[layer] = TISSUES[name]
        outer += thickness
    tissues[brain] = 0
    return tissues


def _reach_mm() -> float:
    """How far (mm) beyond the brain the head may reach: hull margin plus every layer at its thickest."""
    return 6.0 + sum(mean + 3 * spread for _, mean, spread in _LAYERS)


def add_head(
    images: np.ndarray, tissues: np.ndarray, voxels_per_mm: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, tissues)`` of a phantom with a head around its brain (see the module docstring).

    ``images``: float32 (4, X, Y, Z), FLAIR, T1, T1ce, T2, zero outside the brain; ``tissues``: its tissue map
    (0 outside the brain); ``voxels_per_mm``: the phantom's scale per axis. Brain voxels are returned
    unchanged; every other voxel gets head tissue or air, with the case's WM level per sequence (measured on
    the brain), texture, bias field, partial volume and Rician noise; intensities are integers >= 0 as in the
    brain. The new tissue map holds the head tissues outside the brain. The head is built in the box that can
    hold it (air beyond that box is noise alone).
    """
    s = np.asarray(voxels_per_mm, dtype=float)
    brain = tissues != 0
    box = bounding_slices(brain)
    pad = np.ceil(_reach_mm() * s).astype(int)
    box = tuple(slice(max(b.start - p, 0), min(b.stop + p, n)) for b, p, n in zip(box, pad, brain.shape, strict=True))
    brain_box = brain[box]
    head = head_layers(brain_box, s, rng)
    contrast = np.zeros((max(TISSUES.values()) + 1, 4), dtype=np.float32)
    for name, ratios in _HEAD_CONTRAST.items():
        contrast[TISSUES[name]] = np.asarray(ratios) * np.exp(rng.normal(0, 0.05, 4))
    texture = 1.0 + 0.04 * _smooth_field(rng, head.shape, 1.5 * s)  # one tissue texture, seen by every sequence
    wm, csf = tissues == _WM, tissues == _CSF
    outside = ~brain
    outside_box = ~brain_box
    out = images.copy()
    for m in range(4):
        # The case's WM level (scanner gain): the median WM intensity of the brain (bias field included).
        level = float(np.median(images[m][wm])) if wm.any() else float(np.median(images[m][brain]))
        if csf.any():  # the subarachnoid CSF matches the brain's CSF of this case
            contrast[TISSUES["subarachnoid_csf"], m] = float(np.median(images[m][csf])) / level
        img = contrast[head, m] * np.float32(level) * texture
        img = ndimage.gaussian_filter(img, 0.6, truncate=2.0)  # partial volume, as in the brain
        img *= np.exp(0.12 * _smooth_field(rng, head.shape, 55.0 * s))  # bias field
        # Rician noise (Rayleigh in the air): the magnitude of the signal plus complex Gaussian noise.
        sigma = np.float32(_NOISE[m] * level)
        full = np.zeros(brain.shape, dtype=np.float32)
        full[box][outside_box] = img[outside_box]
        signal = full[outside]
        real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        out[m][outside] = np.rint(np.hypot(real, imag))
    new_tissues = tissues.copy()
    new_tissues[box][outside_box] = head[outside_box]
    return out, new_tissues
