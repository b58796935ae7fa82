"""A "clinical acquisition" of a volume: its own pose, matrix and thick slices, as a scanner would acquire it.

BraTS volumes are co-registered on one 1 mm grid; a scanner's series are not. Each sequence of a clinical
exam is an axial stack of thick slices (e.g. 0.9 x 0.9 mm in plane, 5 mm apart), with its own field of view
and matrix, tilted and shifted against the others as the technologist planned it. This module acquires a
volume that way:

- :func:`random_pose`: a rigid pose (rotation of at most N degrees about a random axis, shift of at most M mm);
- :func:`acquisition_grid`: the grid of an axial stack of the given voxel size in that pose, around the
  source's centre, covering about the source's field of view (each sequence its own matrix when an ``rng``
  draws it);
- :func:`acquire`: the source sampled on that grid, each slice the average over its thickness (the slice
  profile, so thick slices carry partial volume rather than aliasing), in world coordinates: the returned
  affine is exactly where each voxel lies, so resampling with the affines (:func:`resample`,
  :func:`resample_labels`) brings it back;
- :func:`acquire_labels`: a label map on such a grid (per-label fraction over each voxel, then the largest).

Everything is in nibabel's world (RAS mm); the slice stacks are laid out as DICOM axial series are
(voxel axes towards the patient's left, posterior, superior), so written files look like converted scanner
series, not like BraTS files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

AXIAL_DIRECTIONS: np.ndarray = np.diag([-1.0, -1.0, 1.0])
"""Voxel axes of an axial DICOM stack in RAS: along a row to the patient's left, down a column to posterior,
through the slices to superior."""

CLINICAL_VOXEL_SIZE: tuple[float, float, float] = (0.9, 0.9, 5.0)
"""A typical clinical 2D sequence: 0.9 x 0.9 mm in plane, 5 mm slices."""


@dataclass(frozen=True)
class Pose:
    """A rigid pose about a centre: ``x -> R (x - centre) + centre + shift`` (world mm)."""

    rotation_vector_deg: tuple[float, float, float]  # axis times angle (degrees), RAS
    shift_mm: tuple[float, float, float]

    @property
    def rotation_deg(self) -> float:
        """The rotation angle (degrees)."""
        return float(np.linalg.norm(self.rotation_vector_deg))

    def rotation(self) -> np.ndarray:
        return Rotation.from_rotvec(np.deg2rad(self.rotation_vector_deg)).as_matrix()

    def matrix(self, centre: np.ndarray) -> np.ndarray:
        """The 4x4 world transform of the pose about ``centre`` (mm)."""
        r = self.rotation()
        out = np.eye(4)
        out[:3, :3] = r
        out[:3, 3] = np.asarray(centre) - r @ np.asarray(centre) + np.asarray(self.shift_mm)
        return out

    def to_json(self) -> dict:
        return {"rotation_vector_deg": [float(v) for v in self.rotation_vector_deg],
                "rotation_deg": self.rotation_deg, "shift_mm": [float(v) for v in self.shift_mm]}


IDENTITY = Pose((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))


def random_pose(rng: np.random.Generator, max_rotation_deg: float, max_shift_mm: float) -> Pose:
    """A pose with a rotation of uniform angle in [0, ``max_rotation_deg``] about a uniformly random axis and a
    shift uniform in the ball of radius ``max_shift_mm``."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(0, max_rotation_deg)
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    shift = direction * max_shift_mm * rng.uniform(0, 1) ** (1 / 3)
    return Pose(tuple(float(v) for v in axis * angle), tuple(float(v) for v in shift))


def _centre(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    return (affine @ np.append((np.asarray(shape[:3], dtype=float) - 1) / 2, 1.0))[:3]


def acquisition_grid(
    source_shape: tuple[int, int, int],
    source_affine: np.ndarray,
    pose: Pose = IDENTITY,
    *,
    voxel_size: tuple[float, float, float] = CLINICAL_VOXEL_SIZE,
    matrix: tuple[int, int, int] | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape, affine)`` of an axial stack of ``voxel_size`` (mm) centred on the source's centre, in ``pose``.

    ``matrix``: the number of voxels per axis; by default the source's extent along each axis, covered in plane
    with a field of view of 90-105% (drawn per axis from ``rng``; 100% without one) and through the slices 85-100%
    (a scan covers the head, not always all of the grid it is later put on)."""
    zooms = np.sqrt((np.asarray(source_affine)[:3, :3] ** 2).sum(axis=0))
    extent = np.asarray(source_shape[:3], dtype=float) * zooms
    voxel = np.asarray(voxel_size, dtype=float)
    if voxel.shape != (3,) or np.any(voxel <= 0):
        raise ValueError(f"voxel_size must be three positive sizes in mm, got {voxel_size}")
    if matrix is None:
        cover = np.ones(3) if rng is None else np.array([rng.uniform(0.9, 1.05), rng.uniform(0.9, 1.05),
                                                         rng.uniform(0.85, 1.0)])
        matrix = tuple(int(max(1, round(e * c / v))) for e, c, v in zip(extent, cover, voxel, strict=True))
    shape = tuple(int(n) for n in matrix)
    grid = np.eye(4)
    grid[:3, :3] = AXIAL_DIRECTIONS * voxel
    centre = _centre(source_shape, source_affine)
    grid[:3, 3] = centre - grid[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2)
    return shape, pose.matrix(centre) @ grid


def _profile_offsets(source_affine: np.ndarray, target_affine: np.ndarray) -> np.ndarray:
    """Positions (in target slice units, centred on 0) at which to sample across a slice's thickness: about one
    per source voxel along the slice direction, so thick slices average what they cover."""
    step = np.linalg.norm(target_affine[:3, 2])
    source_voxel = float(np.sqrt((source_affine[:3, :3] ** 2).sum(axis=0)).min())
    n = max(1, int(np.ceil(step / source_voxel - 1e-6)))
    return (np.arange(n) + 0.5) / n - 0.5


def _sample(volume: np.ndarray, source_affine: np.ndarray, target_shape: tuple[int, ...], target_affine: np.ndarray,
            *, order: int, offsets: np.ndarray) -> np.ndarray:
    """The mean over ``offsets`` (fractions of a target voxel along its third axis) of ``volume`` sampled at the
    target voxels' world positions (0 outside the source)."""
    vox = np.linalg.inv(source_affine) @ target_affine  # target voxel -> source voxel
    out = np.zeros(target_shape, dtype=np.float32)
    for d in offsets:
        offset = vox[:3, 3] + vox[:3, 2] * d
        out += ndimage.affine_transform(np.asarray(volume, dtype=np.float32), vox[:3, :3], offset,
                                        output_shape=tuple(target_shape), order=order, mode="constant", cval=0.0)
    return out / len(offsets)


def acquire(volume: np.ndarray, source_affine: np.ndarray, target_shape: tuple[int, int, int],
            target_affine: np.ndarray) -> np.ndarray:
    """``volume`` (on ``source_affine``) acquired on the grid ``(target_shape, target_affine)``: trilinear samples
    averaged over each voxel's extent along the slice axis (float32; 0 where the grid leaves the source)."""
    return _sample(volume, source_affine, target_shape, target_affine, order=1,
                   offsets=_profile_offsets(source_affine, target_affine))


def resample(volume: np.ndarray, source_affine: np.ndarray, target_shape: tuple[int, int, int],
             target_affine: np.ndarray, *, order: int = 1) -> np.ndarray:
    """``volume`` sampled at the centres of the target grid's voxels (spline ``order``; 0 outside the source)."""
    return _sample(volume, source_affine, target_shape, target_affine, order=order, offsets=np.zeros(1))


def _labels_by_fraction(labels: np.ndarray, sample) -> np.ndarray:
    """Each voxel's label: the one whose indicator, passed through ``sample``, is largest (background on ties
    and where no label reaches)."""
    out = best = None
    for value in np.unique(labels):
        fraction = sample((labels == value).astype(np.float32))
        if out is None:
            out, best = np.zeros(fraction.shape, dtype=labels.dtype), np.zeros(fraction.shape, dtype=np.float32)
        take = fraction > best
        out[take], best[take] = value, fraction[take]
    return out


def acquire_labels(labels: np.ndarray, source_affine: np.ndarray, target_shape: tuple[int, int, int],
                   target_affine: np.ndarray) -> np.ndarray:
    """A label map acquired as :func:`acquire` acquires images: each target voxel gets the label covering most
    of it (fractions interpolated and averaged over the slice thickness)."""
    offsets = _profile_offsets(source_affine, target_affine)
    return _labels_by_fraction(np.asarray(labels), lambda f: _sample(
        f, source_affine, target_shape, target_affine, order=1, offsets=offsets))


def resample_labels(labels: np.ndarray, source_affine: np.ndarray, target_shape: tuple[int, int, int],
                    target_affine: np.ndarray) -> np.ndarray:
    """A label map moved onto another grid: each label's indicator interpolated linearly, the largest wins
    (smoother than nearest neighbour when the source voxels are thick)."""
    return _labels_by_fraction(np.asarray(labels), lambda f: _sample(
        f, source_affine, target_shape, target_affine, order=1, offsets=np.zeros(1)))


@dataclass(frozen=True)
class AcquiredSequence:
    """One sequence as a scanner acquired it: its voxels, where they lie (RAS affine) and how it was posed."""

    data: np.ndarray  # float32, on its own grid
    affine: np.ndarray  # voxel -> world (the source's world, mm)
    pose: Pose
    voxel_size: tuple[float, float, float]


def acquire_case(
    images: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    *,
    max_rotation_deg: float = 12.0,
    max_shift_mm: float = 15.0,
    voxel_size: tuple[float, float, float] = CLINICAL_VOXEL_SIZE,
) -> list[AcquiredSequence]:
    """Each channel of ``images`` (C, X, Y, Z) on ``affine`` acquired as its own clinical sequence: its own
    :func:`random_pose`, matrix (:func:`acquisition_grid` with ``rng``) and ``voxel_size``. Works for phantoms
    and for real BraTS cases alike."""
    if not (max_rotation_deg >= 0 and max_shift_mm >= 0):
        raise ValueError(f"rotation and shift limits must be >= 0, got {max_rotation_deg} deg, {max_shift_mm} mm")
    out = []
    for channel in images:
        pose = random_pose(rng, max_rotation_deg, max_shift_mm)
        shape, grid = acquisition_grid(channel.shape, affine, pose, voxel_size=voxel_size, rng=rng)
        out.append(AcquiredSequence(data=acquire(channel, affine, shape, grid), affine=grid, pose=pose,
                                    voxel_size=tuple(float(v) for v in voxel_size)))
    return out
