"""The BraTS grid and the SRI24 atlas shipped with the package (built by ``scripts/make_atlas.py``).

The BraTS releases are on the SRI24 atlas grid: 240x240x155 voxels of 1 mm with the affine below (as nibabel
reads the BraTS files: LPS, qform and sform code 1). The atlas files in ``atlas/`` are in that voxel order.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
BRATS_AFFINE: np.ndarray = np.array(
    [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
"""The affine of the real BraTS files (``../shared/data/brats-real``), qform and sform code 1."""

HEAD_FILE = "sri24_t1_head_2mm.nii.gz"
BRAIN_MASK_FILE = "sri24_brain_mask.nii.gz"


def _load(name: str):
    import nibabel as nib

    path = resources.files("agsevnet.prepare") / "atlas" / name
    with resources.as_file(path) as p:
        img = nib.load(str(p))
        return np.asarray(img.dataobj), img.affine.copy()


@lru_cache(maxsize=1)
def atlas_head() -> tuple[np.ndarray, np.ndarray]:
    """The SRI24 T1 head template at 2 mm (uint8 array, its nibabel affine)."""
    return _load(HEAD_FILE)


@lru_cache(maxsize=1)
def atlas_brain_mask() -> np.ndarray:
    """The SRI24 brain mask on the BraTS grid (bool, 240x240x155)."""
    return _load(BRAIN_MASK_FILE)[0] > 0
