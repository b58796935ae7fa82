"""``prepare``: one patient's four sequences as they came -> a BraTS-conformant case folder with ``prepare.json``.

Steps (each sequence is resampled once, with its composed transform):
1. (optional) N4 bias-field correction of each sequence on its own grid;
2. FLAIR, T1 and T2 rigidly to the T1ce (Mattes MI, 3 levels, 2 mm isotropic registration grids, started from
   the scanner's coordinates);
3. the T1ce to the SRI24 T1 head template (rigid from the centres of mass; optionally then affine); inputs
   that are skull-stripped already go to the atlas brain instead. Rigid by default: the BraTS releases keep
   each brain's size and shape (an affine stage scaled unmoved BraTS brains by 0.93-1.04 per axis, and made the
   brain volume a figure of the registration rather than of the patient);
4. the T1ce onto the BraTS grid, brain extraction there (deepbet; the T1ce's support for skull-stripped inputs);
5. FLAIR, T1, T2 onto the BraTS grid through (2) then (3); everything outside the brain set to 0;
6. quality checks (:mod:`.qc`), ``prepare.json`` and ``prepare.png``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agsevnet import MODALITIES
from agsevnet.errors import OutputExistsError
from agsevnet.prepare import brain as brain_mod
from agsevnet.prepare import qc as qc_mod
from agsevnet.prepare.atlas import BRATS_AFFINE, BRATS_SHAPE, atlas_brain_mask, atlas_head
from agsevnet.prepare.geometry import (as_list, compose, from_sitk, grid_image, motion, resample, sitk, to_sitk)
from agsevnet.prepare.inputs import SourceImage, read_inputs

FORMAT = "agsevnet-prepare"
FORMAT_VERSION = 1
RECORD_FILE = "prepare.json"
PICTURE_FILE = "prepare.png"
TRANSFORM_CONVENTION = (
    "4x4 matrices in LPS mm (SimpleITK/ITK world); each maps a point of the output space to the point of the "
    "input it is read from: t1ce_to_atlas maps an atlas (BraTS grid) point to a T1ce point, to_t1ce[m] a T1ce "
    "point to a point of sequence m, atlas_to_native[m] = to_t1ce[m] after t1ce_to_atlas (an atlas point to a "
    "point of the file of m; the prepared file of m is that file resampled through it), native_to_atlas[m] its "
    "inverse (a point of the file of m to the atlas: how a label map on the BraTS grid goes back). nibabel's RAS "
    "world = diag(-1, -1, 1) LPS."
)


def output_files(case_dir: Path, case_id: str) -> dict[str, Path]:
    """``{modality: OUT/<case>/<case>_<modality>.nii.gz}`` (BraTS 2021 names)."""
    return {m: case_dir / f"{case_id}_{m}.nii.gz" for m in MODALITIES}


@dataclass
class Prepared:
    case_id: str
    case_dir: Path
    record: dict[str, Any]
    skipped: bool = False

    @property
    def line(self) -> str:
        line = qc_mod.summary_line(self.case_id, self.record["qc"], self.record["seconds"]["total"])
        return f"{line} (done before; --overwrite redoes it)" if self.skipped else line


def _bias_correct(img):
    """N4 on a 4x shrunk copy (its field applied to the full image), inside an Otsu head mask."""
    s = sitk()
    shrink = [4, 4, 1] if img.GetSpacing()[2] > 2.5 * img.GetSpacing()[0] else [4, 4, 4]
    small = s.Shrink(img, shrink)
    mask = s.OtsuThreshold(small, 0, 1, 200)
    n4 = s.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([25, 25, 25])
    n4.Execute(s.Cast(small, s.sitkFloat32), mask)
    log_field = n4.GetLogBiasFieldAsImage(img)
    return s.Cast(img / s.Exp(log_field), s.sitkFloat32)


def _atlas_images(skull_stripped: bool):
    """The registration target: the 2 mm head template, or the atlas brain for skull-stripped inputs."""
    head, affine = atlas_head()
    head = head.astype(np.float32)
    if skull_stripped:
        mask = np.zeros((240, 240, 156), np.float32)
        mask[..., :155] = atlas_brain_mask()
        coarse = mask.reshape(120, 2, 120, 2, 78, 2).mean((1, 3, 5)) > 0.5
        head = head * coarse
    return to_sitk(head, affine)


def _coverage(mask: np.ndarray, src: SourceImage, matrix: np.ndarray) -> float:
    """The share of the brain (on the BraTS grid) that lies inside the field of view of ``src``."""
    from agsevnet.prepare.geometry import LPS, split_affine

    idx = np.argwhere(mask)[::7].astype(np.float64)  # every 7th brain voxel is plenty for a share
    if not len(idx):
        return 0.0
    world = (LPS @ BRATS_AFFINE @ np.c_[idx, np.ones(len(idx))].T)  # LPS points of the atlas grid
    pts = matrix @ world
    direction, spacing, origin, _ = split_affine(src.image.affine)
    vox = (direction.T @ (pts[:3] - origin[:, None])) / spacing[:, None]
    shape = np.asarray(src.image.shape[:3])[:, None]
    inside = np.all((vox >= -0.5) & (vox <= shape - 0.5), axis=0)
    return float(inside.mean())


ATLAS_TRANSFORMS = ("rigid", "affine")


def canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``data`` with its axes permuted and flipped into the order closest to RAS, and the affine of that order:
    the same image in the same world, so that what follows (registration grids, their random samples) does not
    depend on how the file stores its voxels (slices head-to-feet or feet-to-head, DICOM or NIfTI)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(data, ornt)
    return np.ascontiguousarray(out), affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)


def prepare_images(sources: Mapping[str, SourceImage], *, bias_correction: bool = False,
                   atlas_transform: str = "rigid",
                   log: Callable[[str], None] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """The four prepared volumes on the BraTS grid (float32, 0 outside the brain), the brain mask and the record
    (transforms, registration figures, QC, seconds) of four source images. ``atlas_transform``: ``rigid`` (the
    default: the brain keeps its size and shape, as in the BraTS releases) or ``affine`` (rigid, then affine)."""
    from agsevnet.errors import ConfigError
    from agsevnet.prepare import register

    if atlas_transform not in ATLAS_TRANSFORMS:
        raise ConfigError(f"atlas transform must be one of {', '.join(ATLAS_TRANSFORMS)}, got {atlas_transform!r}")

    s = sitk()
    say = log or (lambda _msg: None)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    data, affines = {}, {}
    for m in MODALITIES:
        data[m], affines[m] = canonical(sources[m].data, sources[m].image.affine)
    native = {m: to_sitk(data[m], affines[m]) for m in MODALITIES}
    zooms = sources["t1ce"].image.header.get_zooms()[:3]
    stripped = brain_mod.is_skull_stripped(data["t1ce"], zooms)
    if bias_correction:
        native = {m: _bias_correct(img) for m, img in native.items()}
        seconds["bias_correction"] = time.perf_counter() - t0
    t = time.perf_counter()
    reg_images = {m: register.isotropic(img) for m, img in native.items()}
    atlas = _atlas_images(stripped)
    say("registering the T1ce to the SRI24 atlas")
    rigid = register.rigid(atlas, reg_images["t1ce"], init="moments")
    aff = register.affine(atlas, reg_images["t1ce"], rigid.matrix) if atlas_transform == "affine" else rigid
    atlas_regs = [rigid.to_json()] + ([aff.to_json()] if aff is not rigid else [])
    seconds["atlas_registration"] = time.perf_counter() - t
    t = time.perf_counter()
    to_t1ce: dict[str, np.ndarray] = {"t1ce": np.eye(4)}
    seq_regs = {}
    for m in MODALITIES:
        if m != "t1ce":
            say(f"registering the {m} to the T1ce")
            seq_regs[m] = register.rigid(reg_images["t1ce"], reg_images[m], init="identity")
            to_t1ce[m] = seq_regs[m].matrix
    seconds["sequence_registration"] = time.perf_counter() - t
    del reg_images

    t = time.perf_counter()
    reference = grid_image(BRATS_SHAPE, BRATS_AFFINE)
    composed = {m: compose(aff.matrix, to_t1ce[m]) for m in MODALITIES}
    out = {m: from_sitk(resample(native[m], reference, composed[m])).astype(np.float32) for m in MODALITIES}
    seconds["resampling"] = time.perf_counter() - t
    t = time.perf_counter()
    say("extracting the brain" + (" (input is skull-stripped: its support)" if stripped else " (deepbet)"))
    mask = brain_mod.support_mask(out["t1ce"], out["t2"]) if stripped else brain_mod.deepbet_mask(out["t1ce"])
    seconds["brain_extraction"] = time.perf_counter() - t
    t = time.perf_counter()
    for m in MODALITIES:
        np.maximum(out[m], 0, out=out[m])
        out[m][~mask] = 0
    seconds["resampling"] += time.perf_counter() - t

    # quality checks
    from agsevnet.prepare.geometry import LPS

    atlas_mask = atlas_brain_mask()
    inter = np.count_nonzero(mask & atlas_mask)
    atlas_dice = 2 * inter / max(1, np.count_nonzero(mask) + np.count_nonzero(atlas_mask))
    centre_vox = np.argwhere(atlas_mask).mean(axis=0)
    centre_atlas = (LPS @ BRATS_AFFINE @ np.r_[centre_vox, 1.0])  # the atlas brain's centre, LPS
    centre_t1ce = (aff.matrix @ centre_atlas)[:3]
    qc = {
        "brain_volume_ml": round(float(np.count_nonzero(mask)) / 1000.0, 1),
        "atlas_dice": round(float(atlas_dice), 4),
        "atlas_metric": round(aff.metric, 5),
        "registration_metric": {"t1ce_to_atlas": round(aff.metric, 5),
                                **{m: round(r.metric, 5) for m, r in seq_regs.items()}},
        "motion": {m: motion(to_t1ce[m], centre_t1ce) for m in MODALITIES if m != "t1ce"},
        "atlas_motion": motion(aff.matrix, centre_atlas[:3]),
        "coverage": {m: round(_coverage(mask, sources[m], composed[m]), 4) for m in MODALITIES},
        "skull_stripped_input": bool(stripped),
    }
    qc["warnings"] = qc_mod.warnings_for(qc)
    seconds["total"] = time.perf_counter() - t0
    record = {
        "transforms": {
            "convention": TRANSFORM_CONVENTION,
            "t1ce_to_atlas": as_list(aff.matrix),
            "t1ce_to_atlas_rigid": as_list(rigid.matrix),
            "to_t1ce": {m: as_list(to_t1ce[m]) for m in MODALITIES},
            "atlas_to_native": {m: as_list(composed[m]) for m in MODALITIES},
            "native_to_atlas": {m: as_list(np.linalg.inv(composed[m])) for m in MODALITIES},
            "interpolation": "linear, after a Gaussian anti-aliasing filter along the input axes finer than 1 mm",
        },
        "registration": {"t1ce_to_atlas": atlas_regs,
                         **{m: r.to_json() for m, r in seq_regs.items()},
                         "atlas_transform": atlas_transform,
                         "metric": "Mattes mutual information (32 bins, 5% random samples), 2 mm grids",
                         "atlas": "SRI24 T1 " + ("brain (input skull-stripped)" if stripped else "head")},
        "bias_correction": "N4 (SimpleITK)" if bias_correction else None,
        "brain_extraction": ("support of the skull-stripped T1ce and T2 (above 0.5 x their median)" if stripped
                             else "deepbet on the T1ce (atlas grid)"),
        "qc": qc,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    return out, mask, record


def _save(path: Path, data: np.ndarray) -> None:
    import nibabel as nib

    from agsevnet.fsutil import atomic_path

    img = nib.Nifti1Image(np.asarray(data, np.float32), BRATS_AFFINE)
    img.set_qform(BRATS_AFFINE, code=1)
    img.set_sform(BRATS_AFFINE, code=1)
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def read_record(case_dir: str | Path) -> dict[str, Any]:
    import json

    from agsevnet.errors import DataError

    path = Path(case_dir) / RECORD_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the prepare record: {exc}", path) from None
    if record.get("format") != FORMAT:
        raise DataError(f"not a {FORMAT} record", path)
    return record


def prepare(input_path: str | Path | None, out_dir: str | Path, *, files: Mapping[str, Any] | None = None,
            case_id: str | None = None, overwrite: bool = False, bias_correction: bool = False,
            atlas_transform: str = "rigid", picture: bool = True, log: Callable[[str], None] | None = None) -> Prepared:
    """Prepare one patient (``input_path`` a folder, and/or ``files``: modality -> file) into
    ``out_dir/<case>/``: the four BraTS-named files on the BraTS grid, ``prepare.json`` and ``prepare.png``. A case
    already prepared from the same inputs is kept unless ``overwrite``."""
    import json

    from agsevnet import __version__
    from agsevnet.fsutil import write_json_atomic

    case_id, sources = read_inputs(input_path, files, case_id)
    case_dir = Path(out_dir) / case_id
    targets = output_files(case_dir, case_id)
    inputs = {m: sources[m].describe() for m in MODALITIES}
    record_path = case_dir / RECORD_FILE
    if record_path.exists() and not overwrite:
        try:
            old = json.loads(record_path.read_text())
        except (OSError, ValueError):
            old = None
        same = old and old.get("inputs") == inputs and (
            old.get("registration", {}).get("atlas_transform", "affine") == atlas_transform)
        if same and all(p.exists() for p in targets.values()):
            return Prepared(case_id, case_dir, old, skipped=True)
        raise OutputExistsError("a prepared case from other inputs or settings is there; --overwrite replaces it",
                                case_dir)
    if case_dir.exists() and any(case_dir.iterdir()) and not overwrite and not record_path.exists():
        raise OutputExistsError("folder exists and is not empty; --overwrite replaces it", case_dir)
    images, mask, record = prepare_images(sources, bias_correction=bias_correction, atlas_transform=atlas_transform,
                                          log=log)
    case_dir.mkdir(parents=True, exist_ok=True)
    for m in MODALITIES:
        _save(targets[m], images[m])
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "agsevnet_version": __version__,
              "case_id": case_id, "inputs": inputs,
              "outputs": {m: targets[m].name for m in MODALITIES},
              "grid": {"shape": list(BRATS_SHAPE), "affine": as_list(BRATS_AFFINE), "space": "SRI24 (BraTS)"},
              **record}
    if picture:
        t = time.perf_counter()
        qc_mod.save_picture(case_dir / PICTURE_FILE, images, mask,
                            f"{case_id}: brain {record['qc']['brain_volume_ml']:.0f} ml")
        record["picture"] = PICTURE_FILE
        record["seconds"]["picture"] = round(time.perf_counter() - t, 2)
    write_json_atomic(record_path, record)  # last: marks the case done
    return Prepared(case_id, case_dir, record)
