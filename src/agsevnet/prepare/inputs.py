"""INPUT -> four images: a folder of NIfTI files (sequences found from their names, :mod:`.sequences`), explicit
``--flair --t1 --t1ce --t2`` files, or DICOM series (read by :mod:`.dicom` where present)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agsevnet import MODALITIES
from agsevnet.errors import DataError
from agsevnet.prepare.sequences import assign, is_nifti


@dataclass
class SourceImage:
    """One sequence as it came: its nibabel image (any orientation and voxel size) and where it came from."""

    modality: str
    image: Any  # nibabel.Nifti1Image
    source: dict[str, Any] = field(default_factory=dict)  # {"path": ...} or DICOM series attributes

    @property
    def data(self) -> np.ndarray:
        arr = np.asarray(self.image.dataobj, dtype=np.float32)
        while arr.ndim > 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 3:
            raise DataError(f"expected a 3D image, got shape {arr.shape}", self.source.get("path"))
        return np.nan_to_num(arr)

    def describe(self) -> dict[str, Any]:
        import nibabel as nib

        return {**self.source, "shape": [int(v) for v in self.image.shape[:3]],
                "zooms": [round(float(v), 4) for v in self.image.header.get_zooms()[:3]],
                "affine": [[round(float(v), 6) for v in row] for row in self.image.affine],
                "orientation": "".join(nib.aff2axcodes(self.image.affine))}


def case_name(path: Path) -> str:
    """A case id from a folder or file name: letters, digits, '-', '_' and '.'."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "case"


def _load_nifti(modality: str, path: Path) -> SourceImage:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        img.header.get_zooms()
    except Exception as exc:  # noqa: BLE001 - any reader failure is a file the user must look at
        raise DataError(f"cannot read as NIfTI: {exc}", path) from None
    return SourceImage(modality, img, {"path": str(path.resolve()), "format": "nifti"})


def _has_dicom(folder: Path) -> bool:
    for p in folder.rglob("*"):
        if p.is_file() and (p.suffix.lower() == ".dcm" or _dicom_magic(p)):
            return True
    return False


def _dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_inputs(input_path: str | Path | None, files: Mapping[str, str | Path | None] | None = None,
                case_id: str | None = None) -> tuple[str, dict[str, SourceImage]]:
    """``(case id, {modality: SourceImage})`` of one patient: ``input_path`` a folder (NIfTI files, or DICOM
    series) and/or ``files`` (modality -> file) that settle or replace what the names say."""
    files = {m: Path(v) for m, v in (files or {}).items() if v is not None}
    for m, p in files.items():
        if m not in MODALITIES:
            raise DataError(f"unknown sequence {m!r} (one of {', '.join(MODALITIES)})")
        if not p.is_file():
            raise DataError("no such file", p)
    chosen: dict[str, SourceImage] = {m: _load_nifti(m, p) for m, p in files.items()}
    folder = Path(input_path) if input_path is not None else None
    if len(chosen) < len(MODALITIES):
        if folder is None:
            missing = [m for m in MODALITIES if m not in chosen]
            raise DataError(f"give INPUT (a folder) or all four of --flair --t1 --t1ce --t2 (missing: "
                            f"{', '.join('--' + m for m in missing)})")
        if not folder.exists():
            raise DataError("no such file or folder", folder)
        if folder.is_file():
            raise DataError("INPUT is one file: give the patient's folder, or the four files with --flair --t1 "
                            "--t1ce --t2", folder)
        niftis = sorted(p for p in folder.iterdir() if is_nifti(p))
        if niftis:
            names = assign([p.name for p in niftis], chosen, folder)
            by_name = {p.name: p for p in niftis}
            for m, name in names.items():
                chosen[m] = _load_nifti(m, by_name[name])
        elif _has_dicom(folder):
            chosen.update(_read_dicom(folder, chosen))
        else:
            nested = sorted(d.name for d in folder.iterdir() if d.is_dir() and _niftis(d))
            if nested:  # e.g. a converter's folder per series
                raise DataError(f"no NIfTI files in the folder itself, only in its sub-folders "
                                f"({', '.join(nested[:6])}{', ...' if len(nested) > 6 else ''}), none of which holds "
                                "all four sequences: put the patient's four files in one folder, or give them with "
                                "--flair --t1 --t1ce --t2", folder)
            raise DataError("no NIfTI files (.nii, .nii.gz) or DICOM series found", folder)
    name = case_id or case_name(folder if folder is not None else Path(files["t1ce"]))
    return name, {m: chosen[m] for m in MODALITIES}


def _read_dicom(folder: Path, chosen: Mapping[str, SourceImage]) -> dict[str, SourceImage]:
    """The DICOM series of ``folder`` (:mod:`agsevnet.prepare.dicom`: one folder per series, or series mixed in one
    folder told apart by SeriesInstanceUID), their sequences found from SeriesDescription like file names."""
    from agsevnet.prepare import require

    require("pydicom")
    from agsevnet.prepare import dicom

    series = [x for x in dicom.find_series(folder) if x.modality not in ("SEG", "RTSTRUCT", "SR", "PR")]
    labels = [f"{x.description or '(no description)'} [series {x.number}, {x.n_files} files, {x.uid}]"
              for x in series]
    names = assign(labels, chosen, folder)
    out = {}
    for m, label in names.items():
        x = series[labels.index(label)]
        out[m] = SourceImage(m, dicom.read_series(x), {"path": str(x.folder.resolve()), "format": "dicom",
                                                     "series_instance_uid": x.uid,
                                                     "series_description": x.description,
                                                     "series_number": x.number})
    return out


def _niftis(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if is_nifti(p))


def _names_four(names: list[str]) -> bool:
    try:
        assign(names)
    except DataError:
        return False
    return True


def patient_folders(input_path: str | Path) -> list[Path]:
    """The patients INPUT holds: ``[INPUT]`` when it is one patient, else its sub-folders that are patients (a
    cohort, e.g. one hospital export with a folder per patient), sorted by name.

    INPUT is one patient when it holds NIfTI files itself, or DICOM series of one patient (one PatientID, or
    none: one folder per series is a single patient's layout). It is a cohort when its sub-folders hold NIfTI
    files and at least one of them names all four sequences (a folder per series of one patient, each with one
    file, is not), or when its DICOM series belong to several PatientIDs and each sub-folder holds one patient's.
    Every sub-folder with images is then a patient, also one whose files do not name four sequences: its
    preparation fails with that error instead of being left out silently. A DataError when INPUT is neither."""
    folder = Path(input_path)
    if not folder.is_dir() or _niftis(folder):
        return [folder]  # one patient (read_inputs says what is wrong with a file or a missing folder)
    subs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    with_nifti = {d: _niftis(d) for d in subs}
    with_nifti = {d: names for d, names in with_nifti.items() if names}
    if any(_names_four(names) for names in with_nifti.values()):
        return [d for d in subs if d in with_nifti or _has_dicom(d)]
    if not _has_dicom(folder):
        return [folder]  # read_inputs: "no NIfTI files or DICOM series found", or one patient's series folders
    from agsevnet.prepare import require

    require("pydicom")
    from agsevnet.prepare import dicom

    series = dicom.find_series(folder)
    if len({x.patient for x in series}) <= 1:
        return [folder]
    patients: list[Path] = []
    for x in series:
        try:
            sub = folder / x.folder.relative_to(folder).parts[0]
        except (ValueError, IndexError):
            sub = folder
        if sub == folder:
            raise DataError(f"holds DICOM series of {len({y.patient for y in series})} patients (PatientID "
                            f"{', '.join(sorted({y.patient or '(none)' for y in series}))}) with series directly "
                            "in it: give one patient's folder, or put each patient in a sub-folder", folder)
        if sub not in patients:
            patients.append(sub)
    for sub in patients:
        ids = sorted({x.patient or "(none)" for x in series if x.folder == sub or sub in x.folder.parents})
        if len(ids) > 1:
            raise DataError(f"holds DICOM series of several patients (PatientID {', '.join(ids)}): one sub-folder "
                            "per patient, please", sub)
    return sorted(patients)
