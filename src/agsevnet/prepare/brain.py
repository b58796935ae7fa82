"""Brain extraction on the atlas grid: ``deepbet`` (MIT; its two networks ship inside its wheel, nothing is
downloaded), or, for inputs that are skull-stripped already, the support of the T1ce.

deepbet (Fisch et al. 2024, https://github.com/wwu-mmll/deepbet): a bounding-box network at 128^3 and a
segmentation network at 256^3, CPU, a few seconds per image; run here on the T1ce once it is on the atlas grid
(1 mm isotropic, the resolution it was trained on).
"""

from __future__ import annotations

import numpy as np

from agsevnet.prepare.atlas import BRATS_AFFINE

SKULL_STRIPPED_MAX_ML = 2200.0  # non-zero voxels of a skull-stripped input: a brain (1.0-1.8 l), not a head (>3 l)


def nonzero_volume_ml(data: np.ndarray, zooms) -> float:
    return float(np.count_nonzero(data)) * float(np.prod(zooms)) / 1000.0


def is_skull_stripped(data: np.ndarray, zooms) -> bool:
    """A volume whose non-zero voxels add up to no more than a brain (skull-stripped, background exactly 0); a
    head with its skull and background noise is several litres."""
    return nonzero_volume_ml(data, zooms) <= SKULL_STRIPPED_MAX_ML


def deepbet_mask(data: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """The brain mask (bool) of a head image on the BraTS grid, by deepbet."""
    import nibabel as nib

    from agsevnet.prepare import require

    require("deepbet")
    from deepbet.bet import BrainExtraction  # noqa: PLC0415 - optional, heavy

    bet = BrainExtraction(no_gpu=True)
    img = nib.Nifti1Image(np.asarray(data, np.float32), BRATS_AFFINE)
    _, mask, _ = bet.run(img, threshold=threshold)
    return np.asarray(mask.dataobj) > 0


PARTIAL_VOLUME = 0.5  # of a sequence's median brain intensity: where a thick-slice voxel is mostly brain


def support_mask(*volumes: np.ndarray) -> np.ndarray:
    """The brain of an input that was skull-stripped already, on the atlas grid: the voxels above
    ``PARTIAL_VOLUME`` x the median non-zero intensity in any of ``volumes`` (T1ce and T2: dark CSF on one is
    bright on the other), the holes filled, the largest connected part kept. Not simply the non-zero voxels:
    through-plane partial volume of thick slices spreads the brain's edge by half a slice and more (measured on
    a phantom seen as 5 mm slices: 1846 ml of non-zero voxels for a 1523 ml brain, Dice 0.90; 0.98 with this)."""
    from scipy import ndimage

    mask = np.zeros(np.shape(volumes[0]), bool)
    for v in volumes:
        v = np.asarray(v)
        inside = v[v > 0]
        if inside.size:
            mask |= v > PARTIAL_VOLUME * float(np.median(inside))
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)
