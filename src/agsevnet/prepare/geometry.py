"""Images between nibabel and SimpleITK, transforms as 4x4 matrices, and the one resampling of ``prepare``.

Transforms are 4x4 matrices in LPS millimetres (SimpleITK's world), in SimpleITK's direction: a transform maps a
point of the *output* (fixed) space to the point of the *input* (moving) image it is read from. So the composed
transform of a sequence onto the atlas grid is ``to_t1ce(seq) @ ... `` read right to left: atlas point ->
T1ce point -> sequence point (:func:`compose`), and its inverse maps a sequence point to the atlas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # nibabel's RAS world <-> SimpleITK's LPS world (its own inverse)


def sitk():
    """SimpleITK (an optional dependency); its threads follow ``OMP_NUM_THREADS`` where that is set."""
    import os

    from agsevnet.prepare import require

    s = require("SimpleITK")
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS" not in os.environ:
        s.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    return s


def split_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(direction 3x3 orthonormal, spacing, origin) in LPS of a nibabel affine; the last item says whether the
    affine had a shear that had to be removed (the nearest rotation is kept)."""
    a = LPS @ np.asarray(affine, float)
    lin = a[:3, :3]
    spacing = np.sqrt((lin**2).sum(axis=0))
    direction = lin / spacing
    u, _, vt = np.linalg.svd(direction)
    ortho = u @ vt
    return ortho, spacing, a[:3, 3].copy(), bool(not np.allclose(ortho, direction, atol=1e-4))


def to_sitk(data: np.ndarray, affine: np.ndarray):
    """A float32 SimpleITK image of a nibabel-ordered array ``(X, Y, Z)`` with a nibabel (RAS) affine."""
    s = sitk()
    img = s.GetImageFromArray(np.ascontiguousarray(np.asarray(data, np.float32).transpose(2, 1, 0)))
    direction, spacing, origin, _ = split_affine(affine)
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection([float(v) for v in direction.ravel()])
    return img


def from_sitk(img) -> np.ndarray:
    """The array of a SimpleITK image in nibabel's voxel order ``(X, Y, Z)``."""
    return sitk().GetArrayFromImage(img).transpose(2, 1, 0)


def nib_affine(img) -> np.ndarray:
    """The nibabel (RAS) affine of a SimpleITK image."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    a[:3, 3] = img.GetOrigin()
    return LPS @ a


def matrix_of(transform) -> np.ndarray:
    """The 4x4 matrix of a SimpleITK linear transform (Euler, Affine, Similarity; composite of those)."""
    m = np.eye(4)
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    for axis in range(3):
        e = np.zeros(3)
        e[axis] = 1.0
        m[:3, axis] = np.asarray(transform.TransformPoint(tuple(e))) - origin
    m[:3, 3] = origin
    return m


def transform_of(matrix: np.ndarray):
    """A SimpleITK AffineTransform of a 4x4 matrix."""
    s = sitk()
    t = s.AffineTransform(3)
    t.SetMatrix([float(v) for v in np.asarray(matrix)[:3, :3].ravel()])
    t.SetTranslation([float(v) for v in np.asarray(matrix)[:3, 3]])
    return t


def compose(*matrices: np.ndarray) -> np.ndarray:
    """``compose(A, B)``: first A, then B (an output point goes through A, then through B)."""
    out = np.eye(4)
    for m in matrices:
        out = np.asarray(m) @ out
    return out


def motion(matrix: np.ndarray, centre: Sequence[float]) -> dict[str, float]:
    """How far a rigid(ish) transform moves: the rotation angle (deg, of the nearest rotation) and the
    displacement of ``centre`` (mm)."""
    lin = np.asarray(matrix)[:3, :3]
    u, _, vt = np.linalg.svd(lin)
    rot = u @ vt
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1))))
    c = np.asarray(centre, float)
    shift = float(np.linalg.norm(lin @ c + np.asarray(matrix)[:3, 3] - c))
    scale = [float(v) for v in np.linalg.svd(lin, compute_uv=False)]
    return {"rotation_deg": round(angle, 2), "translation_mm": round(shift, 2), "scales": [round(v, 4) for v in scale]}


def grid_image(shape: Sequence[int], affine: np.ndarray):
    """An empty SimpleITK image that defines a grid (the reference of a resampling)."""
    s = sitk()
    img = s.Image([int(v) for v in shape], s.sitkUInt8)
    direction, spacing, origin, _ = split_affine(affine)
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection([float(v) for v in direction.ravel()])
    return img


def antialias(img, out_spacing: float | Sequence[float], along: np.ndarray | None = None):
    """``img`` smoothed along each of its axes whose voxels are finer than the output's (a Gaussian of
    sigma = sqrt(out^2 - in^2) / 2.355 mm: the output voxel's extent as a full width at half maximum), so that a
    resampling onto coarser voxels averages instead of sampling single voxels (no aliasing). ``out_spacing``: the
    output voxel size (isotropic, or per output axis with ``along``, the output axes as world unit vectors)."""
    s = sitk()
    in_spacing = np.asarray(img.GetSpacing(), float)
    if along is None:
        target = np.full(3, float(np.max(np.atleast_1d(out_spacing))))
    else:
        # the output voxel's extent seen along each input axis (its support projected onto that axis)
        axes = np.asarray(img.GetDirection()).reshape(3, 3)
        out = np.asarray(out_spacing, float)
        target = np.abs(axes.T @ np.asarray(along).T) @ out
    sigma = np.sqrt(np.maximum(target**2 - in_spacing**2, 0.0)) / 2.355
    if np.all(sigma < 0.25 * in_spacing):  # less than a quarter voxel: nothing to remove
        return img
    # a discrete Gaussian per axis (the recursive one refuses a zero sigma on the axes that need none)
    return s.DiscreteGaussian(img, [float(v) ** 2 for v in sigma], 32, 0.01, True)


def resample(img, reference, matrix: np.ndarray, *, interpolation: str = "linear", default: float = 0.0,
             smooth: bool = True):
    """``img`` read through ``matrix`` (reference point -> image point) onto the grid of ``reference``, once;
    anti-aliased first (:func:`antialias`) where the reference's voxels are coarser. ``interpolation``:
    linear, nearest or bspline."""
    s = sitk()
    modes = {"linear": s.sitkLinear, "nearest": s.sitkNearestNeighbor, "bspline": s.sitkBSpline}
    if smooth and interpolation != "nearest":
        ref_axes = np.asarray(reference.GetDirection()).reshape(3, 3).T  # rows: the reference's axes (world)
        lin = np.asarray(matrix)[:3, :3]
        along = (lin @ ref_axes.T).T  # the reference's axes as seen in the image's world
        along = along / np.linalg.norm(along, axis=1, keepdims=True)
        img = antialias(img, reference.GetSpacing(), along=along)
    return s.Resample(img, reference, transform_of(matrix), modes[interpolation], float(default), s.sitkFloat32)


def world_centre(img) -> np.ndarray:
    """The LPS point at the centre of an image's grid."""
    size = np.asarray(img.GetSize(), float)
    return np.asarray(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in (size - 1) / 2]))


def as_list(matrix: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 6) for v in row] for row in np.asarray(matrix)]


def from_list(rows: Any) -> np.ndarray:
    return np.asarray(rows, float).reshape(4, 4)
