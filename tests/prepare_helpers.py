"""Clinical acquisitions simulated from volumes on the BraTS grid, for the ``prepare`` tests: each sequence in its
own rigid pose (the patient moved; the header does not know) on its own thick-slice axial grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agsevnet.prepare.atlas import BRATS_AFFINE
from agsevnet.prepare.geometry import LPS, from_sitk, grid_image, resample, to_sitk


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def random_pose(rng: np.random.Generator, max_deg: float, max_mm: float, centre: np.ndarray) -> np.ndarray:
    """A rigid 4x4 (LPS) turning by up to ``max_deg`` about ``centre`` and shifting by up to ``max_mm``."""
    rot = rotation(rng.standard_normal(3), rng.uniform(0.5, 1.0) * max_deg)
    shift = rng.standard_normal(3)
    shift *= rng.uniform(0.5, 1.0) * max_mm / np.linalg.norm(shift)
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = centre - rot @ centre + shift
    return m


@dataclass
class Acquisition:
    data: np.ndarray  # on the native grid
    affine: np.ndarray  # nibabel affine of the native grid (what the header says)
    pose: np.ndarray  # native-header LPS point -> LPS point of the original (BraTS-grid) volume it shows


def brain_centre_lps(mask: np.ndarray) -> np.ndarray:
    return (LPS @ BRATS_AFFINE @ np.r_[np.argwhere(mask).mean(axis=0), 1.0])[:3]


def acquire(volume: np.ndarray, pose: np.ndarray, centre: np.ndarray, *, spacing=(0.9, 0.9, 5.0),
            size=(256, 256, 34), interpolation: str = "linear") -> Acquisition:
    """``volume`` (BraTS grid) as a scanner would record it with the patient in ``pose``: axial slices of
    ``spacing`` mm (through-plane anti-aliased) on a ``size`` grid centred on ``centre`` (LPS), header in RAS."""
    spacing = np.asarray(spacing, float)
    size = np.asarray(size)
    ras_centre = (LPS @ np.r_[centre, 1.0])[:3]
    affine = np.diag([-spacing[0], spacing[1], spacing[2], 1.0])  # LAS voxel order, like many scanners' NIfTI
    affine[:3, 3] = ras_centre - affine[:3, :3] @ ((size - 1) / 2)
    out = resample(to_sitk(volume, BRATS_AFFINE), grid_image(size, affine), pose, interpolation=interpolation)
    return Acquisition(from_sitk(out).astype(np.float32), affine, pose)


def back_on_atlas(volume: np.ndarray, matrix: np.ndarray, interpolation: str = "nearest") -> np.ndarray:
    """``volume`` (BraTS grid) read through ``matrix`` (atlas point -> point of ``volume``) onto the BraTS grid."""
    from agsevnet.prepare.atlas import BRATS_SHAPE

    out = resample(to_sitk(volume, BRATS_AFFINE), grid_image(BRATS_SHAPE, BRATS_AFFINE), matrix,
                   interpolation=interpolation, smooth=False)
    return from_sitk(out)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))
