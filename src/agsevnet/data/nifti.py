"""NIfTI reading and writing (nibabel), with one clear :class:`~agsevnet.errors.DataError` per bad file.

Reading never trusts a file: a missing, empty, truncated, corrupt or non-NIfTI file, or one with an
unsupported voxel type, raises ``DataError(what is wrong, path)`` instead of a nibabel/zlib/EOF traceback.

Writing puts outputs back onto exactly the input grid: :func:`save_nifti` copies the shape, affine,
qform/sform and their codes, voxel sizes and units from a :class:`~agsevnet.data.case.Geometry` (taken from
the input with :func:`geometry_of`) so a prediction overlays its image in ITK-SNAP and 3D Slicer. Nothing
else of the input header is carried over (no scaling, no display range, no intent), and files are written
atomically.
"""

from __future__ import annotations

import contextlib
import gzip
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.imageglobals import logger as nibabel_logger
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

from agsevnet import __version__
from agsevnet.data.case import Geometry
from agsevnet.errors import DataError
from agsevnet.fsutil import atomic_path

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
"""File names the layouts recognise as NIfTI."""

NiftiImage = nib.Nifti1Image | nib.Nifti2Image


def is_nifti_name(name: str) -> bool:
    """Whether a file name ends in ``.nii`` or ``.nii.gz`` (any capitalisation)."""
    return name.lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """``"a_t1.nii.gz"`` -> ``"a_t1"`` (the name unchanged if it is not a NIfTI name)."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's log of each header field it rejects (the error we raise says enough).
    ``nibabel.imageglobals.LoggingOutputSuppressor`` leaves Python's last-resort handler printing."""
    disabled = nibabel_logger.disabled
    nibabel_logger.disabled = True
    try:
        yield
    finally:
        nibabel_logger.disabled = disabled


def _image_from_stream(f: IO[bytes]) -> NiftiImage:
    """A NIfTI-1 or NIfTI-2 image whose header is read from the open (decompressed) stream ``f``."""
    errors = []
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        f.seek(0)
        try:
            with _quiet_nibabel():
                return klass.from_file_map(klass.make_file_map({"image": f, "header": f}), mmap=False)
        except WrapStructError as exc:  # fewer bytes than a header
            raise DataError("is truncated (shorter than a NIfTI header)") from exc
        except (HeaderDataError, ImageFileError, ValueError) as exc:
            errors.append(exc)
    raise ImageFileError(f"no valid NIfTI header: {errors[0]}")


def _voxels(img: NiftiImage) -> np.ndarray:
    dtype = img.get_data_dtype()
    if dtype.kind not in "biuf":
        raise DataError(f"has unsupported voxel type {dtype} (expected integers or floats)")
    return np.asanyarray(img.dataobj)


def _read_gz(path: Path) -> tuple[NiftiImage, np.ndarray]:
    with open(path, "rb") as raw:
        if raw.read(2) != b"\x1f\x8b":
            raise DataError("is not a gzip file although its name ends in .gz (not a NIfTI file)", path)
        raw.seek(0)
        with gzip.GzipFile(fileobj=raw, mode="rb") as f:
            img = _image_from_stream(f)
            data = _voxels(img)  # read straight from the decompressor into the array
            while f.read(1 << 20):  # to the end of the stream, where gzip verifies its checksum
                pass
    return _in_memory(img, data), data


def _read_nii(path: Path) -> tuple[NiftiImage, np.ndarray]:
    with open(path, "rb") as f:
        img = _image_from_stream(f)
        data = _voxels(img)
    return _in_memory(img, data), data


def _in_memory(img: NiftiImage, data: np.ndarray) -> NiftiImage:
    """The same image holding ``data`` (no copy), so it no longer refers to the closed file."""
    return type(img)(data, img.affine, img.header)


def read_nifti(path: str | Path) -> tuple[NiftiImage, np.ndarray]:
    """Read a whole NIfTI file: ``(image, voxels)``, the voxels in the stored type (scaled if the header
    says so; no float copy) with trailing singleton dimensions beyond the third dropped.

    Raises ``DataError`` naming the file if it is missing, empty, not NIfTI, truncated or corrupt. A
    ``.nii.gz`` file is decompressed once, straight into the array, and read to its end so that gzip
    verifies its checksum (nibabel alone stops after the voxels, so damage that still inflates would pass).
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path)
    if path.is_dir():
        raise DataError("is a folder, expected a NIfTI file", path)
    if path.stat().st_size == 0:
        raise DataError("is empty (0 bytes)", path)
    try:
        img, data = _read_gz(path) if path.name.lower().endswith(".gz") else _read_nii(path)
    except DataError as exc:
        raise DataError(exc.message, path) from exc
    except EOFError as exc:
        raise DataError("is truncated (the compressed data ends early)", path) from exc
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"is corrupt ({exc})", path) from exc
    except ImageFileError as exc:
        raise DataError(f"is not a NIfTI file ({exc})", path) from exc
    except (OSError, ValueError) as exc:
        short = re.match(r"Expected (\d+) bytes, got (\d+) bytes", str(exc))  # nibabel, for a cut .nii
        what = (f"is truncated ({short[2]} of {short[1]} bytes of voxel data)" if short
                else f"cannot be read ({' '.join(str(exc).split())})")
        raise DataError(what, path) from exc
    return img, _drop_trailing_singletons(data)


def _drop_trailing_singletons(data: np.ndarray) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def load_volume(path: str | Path, channel: int | None = None, dtype: np.dtype | None = None
                ) -> tuple[np.ndarray, NiftiImage]:
    """Read one 3D volume: a 3D file, or channel ``channel`` of a 4D file (MSD).

    Returns ``(array, image)``: the voxels in the stored type (or ``dtype``) and the nibabel image (for its
    header and :func:`geometry_of`). Raises ``DataError`` naming the file if it cannot be read, is not 3D
    (``channel=None``), or has no such channel.
    """
    path = Path(path)
    img, data = read_nifti(path)
    if channel is None:
        if data.ndim != 3:
            raise DataError(f"is {data.ndim}D (shape {tuple(img.shape)}), expected a 3D volume", path)
    else:
        if data.ndim != 4:
            raise DataError(f"is {data.ndim}D (shape {tuple(img.shape)}), expected a 4D file with channels", path)
        if not 0 <= channel < data.shape[3]:
            raise DataError(f"has {data.shape[3]} channels, channel {channel} does not exist", path)
        data = data[..., channel]
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return data, img


def geometry_of(img: NiftiImage) -> Geometry:
    """The voxel grid of ``img`` (spatial part only: a 4D file gives its 3D geometry)."""
    hdr = img.header
    return Geometry(
        shape=tuple(int(s) for s in img.shape[:3]),
        affine=np.asarray(img.affine, dtype=np.float64),
        qform=np.asarray(hdr.get_qform(), dtype=np.float64),
        qform_code=int(hdr["qform_code"]),
        sform=np.asarray(hdr.get_sform(), dtype=np.float64),
        sform_code=int(hdr["sform_code"]),
        zooms=tuple(float(z) for z in hdr.get_zooms()[:3]),
        xyzt_units=int(hdr["xyzt_units"]),
    )


def _as_dtype(data: np.ndarray, dtype: np.dtype, path: Path) -> np.ndarray:
    """Cast to ``dtype``; integer outputs must hold the values exactly (no silent rounding or wrapping,
    which is also what keeps nibabel from adding a scale factor)."""
    dtype = np.dtype(dtype)
    if data.dtype == dtype:
        return data
    if dtype.kind in "iu" and data.size:
        info = np.iinfo(dtype)
        lo, hi = data.min(), data.max()
        if lo < info.min or hi > info.max:
            raise ValueError(f"{path}: values {lo}..{hi} do not fit in {dtype}")
        if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
            raise ValueError(f"{path}: non-integer values cannot be written as {dtype}")
    return data.astype(dtype)


def save_nifti(path: str | Path, data: np.ndarray, geometry: Geometry, dtype: np.dtype | type = np.float32) -> Path:
    """Write ``data`` (``(X, Y, Z)``, or ``(X, Y, Z, C)`` with classes/channels on the 4th axis) on the grid
    ``geometry`` describes, atomically.

    The header gets exactly the input's qform and sform (matrices and codes), voxel sizes and units, the
    voxel type ``dtype``, no scaling (``scl_slope``/``scl_inter`` unset) and the display range
    ``cal_min``/``cal_max`` of the data written. Returns ``path``.
    """
    path = Path(path)
    data = np.asarray(data)
    if data.ndim not in (3, 4) or tuple(data.shape[:3]) != tuple(geometry.shape):
        raise ValueError(f"{path}: data of shape {data.shape} does not fit the grid {tuple(geometry.shape)}")
    data = _as_dtype(data, dtype, path)

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(data.dtype)
    hdr.set_data_shape(data.shape)
    hdr.set_qform(np.asarray(geometry.qform, dtype=np.float64), code=int(geometry.qform_code))
    hdr.set_sform(np.asarray(geometry.sform, dtype=np.float64), code=int(geometry.sform_code))
    hdr["xyzt_units"] = int(geometry.xyzt_units)
    hdr.set_slope_inter(None, None)  # stored values are the values
    if data.size:
        hdr["cal_min"], hdr["cal_max"] = float(data.min()), float(data.max())
    hdr["descrip"] = f"agsevnet {__version__}".encode()
    # affine=None: nibabel must not rewrite the q/sform we just set from the input.
    img = nib.Nifti1Image(data, None, hdr)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


def save_labels(path: str | Path, labels: np.ndarray, geometry: Geometry) -> Path:
    """Write a label map (already in the user's convention, see :func:`agsevnet.data.labels.from_internal`)
    as ``uint8`` on the input grid, atomically. Returns ``path``."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"{path}: a label map must be 3D, got shape {labels.shape}")
    return save_nifti(path, labels, geometry, dtype=np.uint8)
