"""Loading a case: its four modalities as one ``float32 (4, X, Y, Z)`` array in
:data:`agsevnet.MODALITIES` order, its labels mapped to the internal set, and the geometry of its FLAIR.

:func:`read_case` is the one reader: it reads every file of a case and records *every* problem it finds
(unreadable file, wrong dimensionality or channel count, shapes or affines that differ between files, NaN/Inf
voxels, an all-zero modality, unexpected label values, a label on another grid) instead of stopping.
:func:`load_case` raises the first of them as a :class:`~agsevnet.errors.DataError`;
:mod:`agsevnet.data.checks` reports all of them.

Cost: decompressing the ``.nii.gz`` files is most of it. Each file is decompressed once, straight into an
array of its stored type (a 4D MSD file serves its four channels from one read), which is cast once into
the output stack: no intermediate float copy per modality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agsevnet import MODALITIES
from agsevnet.data import labels as labelmod
from agsevnet.data.case import Case, CaseSpec, Geometry, ImageSource
from agsevnet.data.nifti import NiftiImage, geometry_of, read_nifti
from agsevnet.errors import DataError

AFFINE_ATOL = 1e-3
"""Two files are on the same grid when their shapes are equal and their affines agree within this (mm)."""


@dataclass
class CaseData:
    """Everything :func:`read_case` could read of a case, and every problem it found on the way."""

    spec: CaseSpec
    images: np.ndarray | None  # float32 (4, X, Y, Z); None if a modality could not be read
    label: np.ndarray | None  # uint8 internal labels; None without (valid) label
    geometry: Geometry | None  # of the reference (FLAIR, else the first readable) image
    label_values: list[float] | None  # values in the label file as stored (None: no label or unreadable)
    problems: list[DataError] = field(default_factory=list)


@dataclass
class _Volume:
    path: Path
    img: NiftiImage
    data: np.ndarray  # 3D


def _grid_difference(img: NiftiImage, ref: _Volume, what: str = "") -> str | None:
    """None if ``img`` lies on the grid of the reference volume, else a message saying what differs."""
    if tuple(img.shape[:3]) != tuple(ref.img.shape[:3]):
        return f"{what}shape {tuple(img.shape[:3])} differs from {ref.path.name}'s {tuple(ref.img.shape[:3])}"
    diff = float(np.max(np.abs(img.affine - ref.img.affine)))  # -0.0 == 0.0
    if diff > AFFINE_ATOL:
        return f"{what}affine differs from {ref.path.name}'s by up to {diff:.4g} mm (tolerance {AFFINE_ATOL:g})"
    return None


def _read_images(spec: CaseSpec, problems: list[DataError], stack: bool
                 ) -> tuple[dict[str, _Volume], np.ndarray | None]:
    """Read every modality (each file once); cast into one ``(4, X, Y, Z)`` array if ``stack`` and all agree."""
    by_path: dict[Path, list[tuple[str, ImageSource]]] = {}
    for modality in MODALITIES:
        if modality in spec.images:
            src = spec.images[modality]
            by_path.setdefault(Path(src.path), []).append((modality, src))

    volumes: dict[str, _Volume] = {}
    for path, sources in by_path.items():
        try:
            img, data = read_nifti(path)
            channels = [src.channel for _, src in sources]
            if channels[0] is None:
                if data.ndim != 3:
                    raise DataError(f"is {data.ndim}D (shape {tuple(img.shape)}), expected a 3D volume", path)
            else:
                if data.ndim != 4:
                    raise DataError(f"is {data.ndim}D (shape {tuple(img.shape)}), expected a 4D file with "
                                    f"{len(channels)} channels ({', '.join(m for m, _ in sources)})", path)
                if data.shape[3] != len(channels) or max(channels) >= data.shape[3]:
                    raise DataError(f"has {data.shape[3]} channels, expected {len(channels)} "
                                    f"({', '.join(m for m, _ in sources)})", path)
        except DataError as exc:
            problems.append(exc)
            continue
        for modality, src in sources:
            volumes[modality] = _Volume(path, img, data if src.channel is None else data[..., src.channel])

    for modality, vol in volumes.items():
        channel = spec.images[modality].channel
        where = "" if channel is None else f"channel {channel} ({modality}) "
        if vol.data.dtype.kind == "f" and not np.isfinite(vol.data).all():
            n = int(vol.data.size - np.count_nonzero(np.isfinite(vol.data)))
            problems.append(DataError(f"{where}has {n} NaN/Inf voxels", vol.path))
        if not vol.data.any():
            problems.append(DataError(f"{where}is all zero", vol.path))
    if not volumes:
        return volumes, None
    ref = volumes[next(m for m in MODALITIES if m in volumes)]
    consistent = len(volumes) == len(MODALITIES)
    for vol in volumes.values():
        if vol.path != ref.path and (difference := _grid_difference(vol.img, ref)) is not None:
            problems.append(DataError(difference, vol.path))
            consistent = False
    if not (consistent and stack):
        return volumes, None
    images = np.empty((len(MODALITIES), *ref.data.shape), dtype=np.float32)
    for i, modality in enumerate(MODALITIES):
        images[i] = volumes[modality].data  # one cast, no intermediate copy
    return volumes, images


def _read_label(spec: CaseSpec, ref: _Volume | None, problems: list[DataError], to_internal: bool
                ) -> tuple[np.ndarray | None, list[float] | None]:
    """The case's labels mapped to internal values (if ``to_internal``), and the values as stored."""
    path = Path(spec.label)
    try:
        img, raw = read_nifti(path)
        if raw.ndim != 3:
            raise DataError(f"is {raw.ndim}D (shape {tuple(img.shape)}), expected a 3D label map", path)
    except DataError as exc:
        problems.append(exc)
        return None, None
    values = np.unique(raw)
    stored = [v.item() for v in values]
    ok = True
    if ref is not None and (difference := _grid_difference(img, ref, "label ")) is not None:
        problems.append(DataError(difference, path))
        ok = False
    bad = labelmod.unexpected_values(values, spec.label_convention)
    if bad:
        problems.append(DataError(f"unexpected label values {bad} for the {spec.label_convention} convention "
                                  f"(allowed {list(labelmod.allowed_values(spec.label_convention))})", path))
        ok = False
    return (labelmod.to_internal(raw, spec.label_convention) if ok and to_internal else None), stored


def read_case(spec: CaseSpec, with_label: bool = True, arrays: bool = True) -> CaseData:
    """Read a case, collecting every problem (see the module docstring); never raises for bad data.

    ``arrays=False`` skips building the outputs (the image stack and internal labels): checking a case needs
    only its problems, geometry and label values (and skips a 140 MB float32 copy per BraTS case).
    """
    problems: list[DataError] = []
    volumes, images = _read_images(spec, problems, stack=arrays)
    ref = next((volumes[m] for m in MODALITIES if m in volumes), None)
    geometry = geometry_of(ref.img) if ref is not None else None
    label = values = None
    if with_label and spec.label is not None:
        label, values = _read_label(spec, ref, problems, to_internal=arrays)
    return CaseData(spec, images, label, geometry, values, problems)


def load_case(spec: CaseSpec, with_label: bool = True) -> Case:
    """Load a case: images ``float32 (4, X, Y, Z)`` (MODALITIES order, raw intensities), internal ``uint8``
    labels (None without a label file or with ``with_label=False``), and the FLAIR's geometry.

    Raises ``DataError`` naming the file for anything wrong with the case (``agsevnet check`` lists all).
    """
    if spec.problems:
        more = f" (and {len(spec.problems) - 1} more problem(s))" if len(spec.problems) > 1 else ""
        raise DataError(f"case {spec.case_id}: {spec.problems[0]}{more}")
    data = read_case(spec, with_label=with_label)
    if data.problems:
        first = data.problems[0]
        if len(data.problems) > 1:
            raise DataError(f"{first.message} (and {len(data.problems) - 1} more problem(s) in case "
                            f"{spec.case_id}; run `agsevnet check` to list them)", first.path)
        raise first
    assert data.images is not None and data.geometry is not None  # no problem => everything was read
    return Case(spec=spec, images=data.images, label=data.label, geometry=data.geometry)
