"""DICOM in and out: scanner series to NIfTI, NIfTI to DICOM series, label maps to DICOM Segmentations and back.

Scans often leave the scanner (or the PACS) as DICOM: one file per slice, grouped into series by
``SeriesInstanceUID``. This module is what ``agsevnet prepare`` and ``predict --prepare`` use at both ends:

- :func:`find_series` lists the series under a folder (one folder per series, or several series mixed in one
  folder, told apart by ``SeriesInstanceUID``), each with its ``SeriesDescription``, modality and file count.
- :func:`read_series` turns one classic single-frame image series into a ``nibabel.Nifti1Image``: slices
  ordered by ``ImagePositionPatient`` projected on the slice normal, the slice step taken from those positions
  (``SliceThickness`` is the excitation thickness, not the spacing, and says nothing of gaps or overlaps), the
  stored values rescaled (``RescaleSlope``/``RescaleIntercept``), and the affine converted from DICOM's LPS
  patient coordinates to NIfTI's RAS. Broken or inconsistent series raise a one-line
  :class:`~agsevnet.errors.DataError` naming the folder.
- :func:`write_series` writes a NIfTI volume as an MR Image Storage series (pydicom): for tests (series built
  from synthetic volumes, no patient data) and for users whose viewer wants DICOM.
- :func:`write_seg` writes a label map as a DICOM Segmentation (highdicom) on the grid of a reference series
  (the T1ce), one segment per tumour label present, with BraTS names and colours, referencing the source
  images, so it opens over them in a PACS viewer, 3D Slicer or OHIF; :func:`read_seg` reads one back onto
  that grid.

Voxel order follows nibabel's convention for DICOM (as dcm2niix and ``nibabel.nicom`` do): array axis 0 runs
along a row (DICOM column index), axis 1 down the columns (row index), axis 2 through the slices in the order
of their position along the normal. Label maps handed to :func:`write_seg` are on exactly the grid
:func:`read_series` returns for the reference series.

pydicom and highdicom are optional dependencies (``pip install 'agsevnet[prepare]'``); importing this module
without them raises an :class:`ImportError` that says so.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from agsevnet import __version__
from agsevnet.data.labels import from_internal, to_internal
from agsevnet.errors import ConfigError, DataError, OutputExistsError
from agsevnet.fsutil import atomic_path

try:
    import highdicom as hd
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.errors import InvalidDicomError
    from pydicom.sr.codedict import codes
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
    from pydicom.valuerep import format_number_as_ds
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"DICOM input and output need pydicom and highdicom ({error}); install them with "
        "pip install 'agsevnet[prepare]'"
    ) from error

LPS_TO_RAS: np.ndarray = np.diag([-1.0, -1.0, 1.0, 1.0])
"""DICOM patient coordinates (x to the patient's left, y posterior, z head) to NIfTI's RAS+, and back."""

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: an index, not an image

# The tumour labels a SEG carries: BraTS 2018-2021 value (the files' 1/2/4), segment label (LO: at most 64
# characters), SNOMED CT property type, display colour (RGB; the paper's: edema green, core red, enhancing
# yellow, as in agsevnet.report.figures).
BRATS_SEGMENTS: tuple[tuple[int, str, str, tuple[int, int, int]], ...] = (
    (1, "Necrotic and non-enhancing tumor core", "Necrosis", (227, 36, 43)),
    (2, "Peritumoral edema", "Edema", (44, 160, 44)),
    (4, "GD-enhancing tumor", "Neoplasm", (255, 212, 0)),
)
"""(BraTS label value, segment label, SNOMED CT property type keyword, RGB colour) of each tumour segment."""

_SLICE_TOLERANCE_MM = 0.01  # absolute part of the tolerance on slice positions (relative part: 1% of the step)


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found on disk: its files (sorted by name) and what identifies it to a user."""

    uid: str  # SeriesInstanceUID
    description: str  # SeriesDescription ("" when absent)
    modality: str  # Modality (MR, CT, SEG, ...)
    number: int | None  # SeriesNumber
    folder: Path  # the folder holding its files (their common parent)
    files: tuple[Path, ...]
    sop_class_uid: str
    patient: str = ""  # PatientID ("" when absent): tells the patients of a cohort folder apart

    @property
    def n_files(self) -> int:
        return len(self.files)

    def __str__(self) -> str:
        return f"{self.folder} [{self.modality} {self.description or '(no description)'}, {self.n_files} files]"


# ----------------------------------------------------------------------------------------------------------
# Finding series


def _candidate_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def find_series(folder: str | Path) -> list[DicomSeries]:
    """Every DICOM series in the files under ``folder`` (searched recursively), sorted by folder, series number
    and description. Files that are not DICOM (no ``DICM`` preamble) and DICOMDIR indexes are skipped, so a
    folder may also hold NIfTI files, READMEs and the like. Returns an empty list when there is no series;
    raises :class:`DataError` when ``folder`` is not a folder or holds a damaged DICOM file (one that cannot
    be told to belong to a series: skipping it would silently drop a slice)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder (expected a folder of DICOM files)", folder)
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    tags = ["SeriesInstanceUID", "SeriesDescription", "Modality", "SeriesNumber", "SOPClassUID", "PatientID"]
    for path in _candidate_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
        except InvalidDicomError:
            continue  # no DICM preamble: not a DICOM file
        except Exception as error:  # a DICOM file pydicom cannot parse
            raise DataError(f"damaged DICOM file {path.relative_to(folder)}: {error}", folder) from None
        meta_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
        if meta_class == DICOMDIR_CLASS:
            continue
        if "SeriesInstanceUID" not in ds:  # type 1 in every image, SEG and SR: a truncated file
            raise DataError(f"damaged DICOM file {path.relative_to(folder)}: no SeriesInstanceUID (truncated?)",
                            folder)
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    series = []
    for uid, members in groups.items():
        first = members[0][1]
        files = tuple(sorted(p for p, _ in members))
        parents = {p.parent for p in files}
        common = Path(os.path.commonpath([str(p) for p in parents]))
        number = first.get("SeriesNumber")
        series.append(
            DicomSeries(
                uid=uid,
                description=str(first.get("SeriesDescription", "") or "").strip(),
                modality=str(first.get("Modality", "") or ""),
                number=int(number) if number not in (None, "") else None,
                folder=common,
                files=files,
                sop_class_uid=str(first.get("SOPClassUID", "")),
                patient=str(first.get("PatientID", "") or "").strip(),
            )
        )
    series.sort(key=lambda s: (str(s.folder), s.number if s.number is not None else -1, s.description, s.uid))
    return series


def _one_series(source: DicomSeries | str | Path) -> DicomSeries:
    """``source`` itself, or the one image series under a folder (a DataError listing them if there are several)."""
    if isinstance(source, DicomSeries):
        return source
    folder = Path(source)
    found = [s for s in find_series(folder) if s.modality != "SEG"]
    if not found:
        raise DataError("no DICOM image series found", folder)
    if len(found) > 1:
        raise DataError(f"{len(found)} DICOM series found, expected one: {'; '.join(map(str, found))}", folder)
    return found[0]


# ----------------------------------------------------------------------------------------------------------
# Reading a series


@dataclass(frozen=True)
class _Grid:
    """The slices of a series in voxel order and the voxel-to-LPS affine they define."""

    datasets: list  # pydicom Datasets, sorted along the slice normal
    affine_lps: np.ndarray
    rows: int
    columns: int


def _floats(ds: pydicom.Dataset, keyword: str, n: int, folder: Path) -> np.ndarray:
    """``n`` finite numbers from ``ds.<keyword>``, or a DataError naming the file and the attribute."""
    value = ds.get(keyword)
    try:
        arr = np.array([float(v) for v in (value if n > 1 else [value])], dtype=float)
    except (TypeError, ValueError):
        arr = np.array([])
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise DataError(f"{keyword} missing or invalid in {Path(ds.filename).name} ({value!r})", folder)
    return arr


def _grid(series: DicomSeries, *, with_pixels: bool) -> _Grid:
    """Read the series' files and order them; every inconsistency is a one-line DataError naming the folder."""
    folder = series.folder
    datasets = []
    for path in series.files:
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=not with_pixels))
        except Exception as error:  # pydicom raises many kinds for truncated or corrupt files
            raise DataError(f"cannot read DICOM file {path.name}: {error}", folder) from None
    first = datasets[0]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise DataError(
            f"series {series.description or series.uid} is a multi-frame (enhanced) object; only classic "
            "single-frame series (one file per slice) are read", folder)
    if with_pixels and not all("PixelData" in ds for ds in datasets):
        raise DataError(f"series {series.description or series.uid} ({series.modality}) has files without "
                        "pixel data: not an image series", folder)
    orientation = _floats(first, "ImageOrientationPatient", 6, folder)
    spacing = _floats(first, "PixelSpacing", 2, folder)
    rows, columns = int(_floats(first, "Rows", 1, folder)[0]), int(_floats(first, "Columns", 1, folder)[0])
    for ds in datasets[1:]:
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, folder), orientation, atol=1e-4):
            raise DataError("slices with different orientations (ImageOrientationPatient) in one series "
                            f"({Path(ds.filename).name} differs from {Path(first.filename).name})", folder)
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns) or not np.allclose(
                _floats(ds, "PixelSpacing", 2, folder), spacing, rtol=1e-4):
            raise DataError(f"slices of different sizes or pixel spacings in one series ({Path(ds.filename).name}"
                            f" differs from {Path(first.filename).name})", folder)
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise DataError(f"{Path(ds.filename).name} is a colour image; expected greyscale MR", folder)
    row_dir, col_dir = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3 or abs(
            row_dir @ col_dir) > 1e-3:
        raise DataError(f"ImageOrientationPatient {orientation.tolist()} is not two orthogonal unit vectors", folder)
    normal = np.cross(row_dir, col_dir)
    positions = np.array([_floats(ds, "ImagePositionPatient", 3, folder) for ds in datasets])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    datasets = [datasets[i] for i in order]
    positions, along = positions[order], along[order]
    gaps = np.diff(along)
    if gaps.size and gaps.min() < _SLICE_TOLERANCE_MM:
        k = int(np.argmin(gaps))
        raise DataError(
            f"two slices at the same position ({Path(datasets[k].filename).name}, "
            f"{Path(datasets[k + 1].filename).name}): several echoes, time points or acquisitions in one series",
            folder)
    if len(datasets) > 1:
        step = (positions[-1] - positions[0]) / (len(datasets) - 1)
        tolerance = max(_SLICE_TOLERANCE_MM, 0.01 * float(np.linalg.norm(step)))
        off = np.linalg.norm(positions - (positions[0] + np.outer(np.arange(len(datasets)), step)), axis=1)
        if off.max() > tolerance:
            raise DataError(
                f"slices are not evenly spaced along the normal (steps from {gaps.min():.3f} to {gaps.max():.3f} mm;"
                " missing slices or a mixed series)", folder)
    else:  # one slice: only the header can tell the thickness
        thickness = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        step = normal * thickness
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]  # along a row: the column index (array axis 0); PixelSpacing[1]
    affine[:3, 1] = col_dir * spacing[0]  # down a column: the row index (array axis 1); PixelSpacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    return _Grid(datasets=datasets, affine_lps=affine, rows=rows, columns=columns)


def _nifti(data: np.ndarray, affine_ras: np.ndarray, description: str = "") -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, affine_ras)
    image.header.set_qform(affine_ras, code=1)  # scanner coordinates
    image.header.set_sform(affine_ras, code=1)
    image.header.set_xyzt_units("mm")
    if description:
        image.header["descrip"] = description.encode("ascii", "replace")[:79]
    return image


def read_series(source: DicomSeries | str | Path) -> nib.Nifti1Image:
    """One DICOM image series as a NIfTI image (RAS affine, qform and sform code 1, units mm).

    ``source``: a :class:`DicomSeries` from :func:`find_series`, or a folder holding exactly one image series.
    Values are the stored pixels after the modality rescale (``RescaleSlope``/``RescaleIntercept``): integer
    arrays stay of their stored type when no slice is rescaled, ``float32`` otherwise. Raises
    :class:`DataError` naming the folder for unreadable files, mixed orientations or sizes, several slices at
    one position, uneven or missing slices, multi-frame objects and undecodable pixel data.
    """
    series = _one_series(source)
    grid = _grid(series, with_pixels=True)
    slices, rescaled = [], False
    for ds in grid.datasets:
        try:
            stored = ds.pixel_array
        except Exception as error:  # compressed without a decoder, truncated pixel data, ...
            syntax = ds.file_meta.TransferSyntaxUID.name
            raise DataError(f"cannot decode the pixels of {Path(ds.filename).name} (transfer syntax {syntax}): "
                            f"{error}", series.folder) from None
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        rescaled |= (slope, intercept) != (1.0, 0.0)
        slices.append((stored, slope, intercept))
    if rescaled:
        data = np.stack([(s.astype(np.float64) * m + b).astype(np.float32).T for s, m, b in slices], axis=-1)
    else:
        data = np.stack([s.T for s, _, _ in slices], axis=-1)
    return _nifti(np.ascontiguousarray(data), LPS_TO_RAS @ grid.affine_lps, series.description)


def series_affine(source: DicomSeries | str | Path) -> np.ndarray:
    """The RAS affine :func:`read_series` gives ``source``, from the headers alone (no pixel data read)."""
    series = _one_series(source)
    return LPS_TO_RAS @ _grid(series, with_pixels=False).affine_lps


# ----------------------------------------------------------------------------------------------------------
# Writing a series


def _ds(value: float) -> str:
    """A number as a DICOM decimal string (at most 16 characters)."""
    return format_number_as_ds(float(value))


def _stored_values(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(stored int16/uint16 array, slope, intercept)``: int16 as is for integer data in its range, otherwise
    the range mapped linearly onto uint16 (the rescale restores it within half a step)."""
    finite = np.isfinite(data)
    if not finite.all():
        raise ConfigError("the volume holds NaN or infinite values; DICOM stores finite numbers only")
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if np.array_equal(data, np.rint(data)) and lo >= -32768 and hi <= 32767:
        return data.astype(np.int16), 1.0, 0.0
    slope = (hi - lo) / 65535 if hi > lo else 1.0
    return np.rint((data - lo) / slope).astype(np.uint16), slope, lo


def write_series(
    image: nib.Nifti1Image,
    out_dir: str | Path,
    *,
    series_description: str = "",
    series_number: int = 1,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "Phantom^Synthetic",
    patient_id: str = "PHANTOM",
    overwrite: bool = False,
) -> DicomSeries:
    """Write a 3D NIfTI volume as a DICOM MR Image Storage series, one file per slice, into ``out_dir``.

    Files are named ``<series_number>-<slice>.dcm`` so that several series can share a folder. Each slice
    carries ``ImagePositionPatient``, ``ImageOrientationPatient`` and ``PixelSpacing`` from the image's affine
    (RAS converted to LPS), so :func:`read_series` gives back the same array and affine; ``SliceThickness`` and
    ``SpacingBetweenSlices`` are the slice step. Integer volumes in the int16 range are stored as they are,
    others as uint16 with ``RescaleSlope``/``RescaleIntercept``. Series belonging together (one session's
    sequences) should share ``study_uid`` and ``frame_of_reference_uid``; UIDs not given are new ones.
    ``ImageType`` is DERIVED\\SECONDARY: the pixels did not come from a scanner. Raises
    :class:`OutputExistsError` if one of its file names exists (unless ``overwrite``) and :class:`ConfigError`
    for a volume DICOM cannot hold (not 3D, in-plane axes not orthogonal, non-finite values).
    """
    out_dir = Path(out_dir)
    data = np.asarray(image.dataobj)
    if data.ndim != 3:
        raise ConfigError(f"only 3D volumes can be written as a DICOM series, got shape {data.shape}")
    lps = LPS_TO_RAS @ image.affine
    axes = lps[:3, :3]
    sizes = np.linalg.norm(axes, axis=0)
    if np.any(sizes == 0) or abs(axes[:, 0] @ axes[:, 1]) > 1e-4 * sizes[0] * sizes[1]:
        raise ConfigError("the image's first two voxel axes are not orthogonal; DICOM slices need a rectangular "
                          "pixel grid")
    row_dir, col_dir = axes[:, 0] / sizes[0], axes[:, 1] / sizes[1]
    normal = np.cross(row_dir, col_dir)
    step = float(axes[:, 2] @ normal)
    names = [out_dir / f"{series_number:04d}-{k + 1:04d}.dcm" for k in range(data.shape[2])]
    if not overwrite and any(p.exists() for p in names):
        raise OutputExistsError("DICOM files of this series number exist (use overwrite)", out_dir)
    stored, slope, intercept = _stored_values(np.asarray(data, dtype=np.float64))
    now = _dt.datetime.now()
    study_uid = study_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    lo, hi = np.percentile(data, [1, 99]) if data.size else (0, 1)
    for k, path in enumerate(names):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        # Patient and study (type 2 attributes present, empty where unknown).
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", ""
        ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = study_uid, "1", "", ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        # Series, equipment, frame of reference.
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series_uid, int(series_number)
        ds.SeriesDescription = series_description
        ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = "agsevnet", "write_series", __version__
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference_uid, ""
        # MR image: what is known of the acquisition.
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
        ds.MRAcquisitionType = "2D" if abs(step) > 2 * max(sizes[0], sizes[1]) else "3D"
        ds.RepetitionTime = ds.EchoTime = ds.EchoTrainLength = None
        # Image plane.
        position = lps @ np.array([0.0, 0.0, k, 1.0])
        ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [_ds(sizes[1]), _ds(sizes[0])]  # row spacing (down a column), column spacing
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(abs(step))
        ds.SliceLocation = _ds(position[:3] @ normal)
        ds.InstanceNumber = k + 1
        # Pixels.
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
        ds.WindowCenter, ds.WindowWidth = _ds((lo + hi) / 2), _ds(max(hi - lo, 1e-3))
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    return _one_series_of(out_dir, series_uid)


def _one_series_of(folder: Path, uid: str) -> DicomSeries:
    return next(s for s in find_series(folder) if s.uid == uid)


# ----------------------------------------------------------------------------------------------------------
# DICOM Segmentation


def _label_grid(labels: np.ndarray | nib.Nifti1Image, grid: _Grid, folder: Path) -> np.ndarray:
    """The label array, checked against the reference grid (shape and, for an image, its affine)."""
    if isinstance(labels, nib.spatialimages.SpatialImage):
        affine = LPS_TO_RAS @ grid.affine_lps
        if not np.allclose(labels.affine, affine, atol=1e-3):
            raise DataError("the label image is not on the grid of the reference series (affines differ: "
                            f"{np.round(labels.affine, 3).tolist()} vs {np.round(affine, 3).tolist()})", folder)
        labels = np.asarray(labels.dataobj)
    labels = np.asarray(labels)
    expected = (grid.columns, grid.rows, len(grid.datasets))
    if labels.shape != expected:
        raise DataError(f"the label map's shape {labels.shape} is not the reference series' grid {expected} "
                        "(columns, rows, slices)", folder)
    return labels


def write_seg(
    labels: np.ndarray | nib.Nifti1Image,
    reference: DicomSeries | str | Path,
    out_path: str | Path,
    *,
    convention: str = "brats2020",
    series_description: str = "Tumour segmentation (agsevnet)",
    series_number: int = 900,
    algorithm_version: str = __version__,
    overwrite: bool = False,
) -> Path:
    """Write ``labels`` as a DICOM Segmentation (binary, highdicom) of the ``reference`` series and return the path.

    ``labels``: a label map on the grid :func:`read_series` gives the reference (array, or NIfTI image whose
    affine is then checked), with values in ``convention`` (BraTS 2018-2021 by default: 1 necrotic/non-enhancing
    core, 2 edema, 4 enhancing). One segment per tumour label present, numbered from 1 in the order core,
    edema, enhancing, each with its BraTS name, a SNOMED CT type (necrosis, edema, neoplasm), the paper's
    colour and ``TrackingID`` ``BraTS label <value>``; frames without tumour are left out. The SEG copies the
    patient and study of the reference and references its images, so viewers place it over them. A label map
    without tumour has nothing to segment: :class:`DataError` (a SEG needs at least one segment).
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise OutputExistsError("exists (use overwrite)", out_path)
    series = _one_series(reference)
    grid = _grid(series, with_pixels=False)
    values = _label_grid(labels, grid, series.folder)
    try:
        internal = to_internal(values, convention)
    except ValueError as error:
        raise DataError(f"label map: {error}", out_path) from None
    internal_of = dict(zip((1, 2, 4), (1, 2, 3), strict=True))  # BraTS 2020 value -> internal
    present = [seg for seg in BRATS_SEGMENTS if np.any(internal == internal_of[seg[0]])]
    if not present:
        raise DataError("the label map holds no tumour label; a DICOM Segmentation needs at least one segment",
                        out_path)
    segment_of = np.zeros(4, dtype=np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="agsevnet", family=codes.cid7162.ArtificialIntelligence, version=algorithm_version)
    descriptions = []
    for number, (value, name, property_type, rgb) in enumerate(present, start=1):
        segment_of[internal_of[value]] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=getattr(codes.SCT, property_type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=generate_uid(),
            tracking_id=f"BraTS label {value}",
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
        ))
    frames = np.ascontiguousarray(np.moveaxis(segment_of[internal], 2, 0).transpose(0, 2, 1))  # (slice, row, col)
    seg = hd.seg.Segmentation(
        source_images=grid.datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=int(series_number),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="agsevnet",
        manufacturer_model_name="AGSE-VNet",
        software_versions=algorithm_version,
        device_serial_number="none",
        series_description=series_description,
    )
    with atomic_path(out_path) as tmp:
        seg.save_as(tmp)
    return out_path


def read_seg(
    seg_path: str | Path, reference: DicomSeries | str | Path, *, convention: str = "brats2020"
) -> np.ndarray:
    """A DICOM Segmentation written by :func:`write_seg` (or any binary SEG whose segments carry its BraTS
    segment labels) back as a ``uint8`` label map in ``convention`` on the grid :func:`read_series` gives
    ``reference``. Raises :class:`DataError` naming the file when it is not a SEG, does not reference that
    series, or holds a segment this table does not know."""
    seg_path = Path(seg_path)
    series = _one_series(reference)
    grid = _grid(series, with_pixels=False)
    try:
        seg = hd.seg.segread(seg_path)
    except Exception as error:
        raise DataError(f"not a readable DICOM Segmentation: {error}", seg_path) from None
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    if series.uid not in referenced:
        raise DataError(f"does not reference the series {series.description or series.uid} "
                        f"(it references {', '.join(sorted(referenced)) or 'none'})", seg_path)
    by_name = {name: value for value, name, _, _ in BRATS_SEGMENTS}
    value_of = np.zeros(len(seg.segment_numbers) + 1, dtype=np.uint8)
    for number in seg.segment_numbers:
        name = seg.get_segment_description(number).segment_label
        if name not in by_name:
            raise DataError(f"segment {number} ({name!r}) is not a BraTS tumour label "
                            f"({', '.join(by_name)})", seg_path)
        value_of[number] = by_name[name]
    uids = [str(ds.SOPInstanceUID) for ds in grid.datasets]
    numbers = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=False, dtype=np.uint8)
    labels = value_of[numbers].transpose(2, 1, 0)  # (slice, row, col) -> (col, row, slice)
    internal = to_internal(labels, "brats2020")
    return np.ascontiguousarray(from_internal(internal, convention))

