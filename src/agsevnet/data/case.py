"""The data contracts every stage shares: where a case's files are, what a loaded case holds, and the
geometry needed to write outputs back onto the input grid.

Internal conventions (see :mod:`agsevnet.data.labels`): images are ``float32`` arrays of shape
``(4, X, Y, Z)`` in the channel order :data:`agsevnet.MODALITIES` = (FLAIR, T1, T1ce, T2), in nibabel's
voxel order (no reorientation: outputs are written on exactly the input grid); labels are ``uint8`` in the
internal set {0, 1, 2, 3}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMES: tuple[str, ...] = ("brats2020", "brats2023", "msd", "nnunet", "files")
"""Dataset layouts: BraTS 2018-2021, BraTS 2023+, MSD Task01, nnU-Net raw, and explicit file lists."""


@dataclass(frozen=True)
class ImageSource:
    """One modality's voxels: a 3D file, or one channel (``channel``) of a 4D file (MSD)."""

    path: Path
    channel: int | None = None


@dataclass
class CaseSpec:
    """Where one case's files are (found by :func:`agsevnet.data.layouts.discover`); nothing is read yet.

    ``problems`` holds what discovery already knows is wrong (a missing or duplicated modality), each a
    message that names the file or folder; :mod:`agsevnet.data.checks` adds what reading the files reveals.
    ``notes`` holds what the user should know but is not wrong (an assumed channel order, an ignored file).
    """

    case_id: str
    scheme: str
    images: dict[str, ImageSource]  # keys from agsevnet.MODALITIES; a missing modality is absent
    label: Path | None
    label_convention: str  # "brats2020" | "brats2023" | "msd" (see agsevnet.data.labels)
    folder: Path | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def has_label(self) -> bool:
        return self.label is not None


@dataclass
class Geometry:
    """The voxel grid of a case's images and the header fields needed to write outputs that overlay exactly
    (same shape, affine, qform/sform and their codes) in ITK-SNAP and 3D Slicer. JSON-serialisable."""

    shape: tuple[int, int, int]
    affine: np.ndarray  # 4x4, float64 (nibabel's img.affine)
    qform: np.ndarray  # 4x4
    qform_code: int
    sform: np.ndarray  # 4x4
    sform_code: int
    zooms: tuple[float, float, float]
    xyzt_units: int = 10  # mm + s

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.zooms

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": list(map(int, self.shape)),
            "affine": np.asarray(self.affine, dtype=float).tolist(),
            "qform": np.asarray(self.qform, dtype=float).tolist(),
            "qform_code": int(self.qform_code),
            "sform": np.asarray(self.sform, dtype=float).tolist(),
            "sform_code": int(self.sform_code),
            "zooms": [float(z) for z in self.zooms],
            "xyzt_units": int(self.xyzt_units),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Geometry:
        return cls(
            shape=tuple(int(s) for s in d["shape"]),
            affine=np.asarray(d["affine"], dtype=np.float64),
            qform=np.asarray(d["qform"], dtype=np.float64),
            qform_code=int(d["qform_code"]),
            sform=np.asarray(d["sform"], dtype=np.float64),
            sform_code=int(d["sform_code"]),
            zooms=tuple(float(z) for z in d["zooms"]),
            xyzt_units=int(d.get("xyzt_units", 10)),
        )


@dataclass
class Case:
    """A loaded case: raw intensities (not normalised) and internal labels, on the input grid."""

    spec: CaseSpec
    images: np.ndarray  # float32 (4, X, Y, Z), MODALITIES order
    label: np.ndarray | None  # uint8 (X, Y, Z), internal labels, or None for inference-only cases
    geometry: Geometry

    @property
    def case_id(self) -> str:
        return self.spec.case_id
