"""Back to the scanner's grid: a label map on the atlas (BraTS) grid -> the grid of an input file (the T1ce), through
the inverse of the composed transforms in ``prepare.json``; and ``predict --prepare`` (:func:`predict_native`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agsevnet.prepare.atlas import BRATS_AFFINE
from agsevnet.prepare.geometry import from_list, from_sitk, grid_image, resample, to_sitk

METHODS = ("nearest", "probabilities")


def native_grid(record: Mapping[str, Any], modality: str = "t1ce") -> tuple[tuple[int, int, int], np.ndarray]:
    """The shape and nibabel affine of the input file of ``modality``."""
    info = record["inputs"][modality]
    return tuple(int(v) for v in info["shape"]), np.asarray(info["affine"], float)


def to_native(volume: np.ndarray, record: Mapping[str, Any], *, modality: str = "t1ce",
              interpolation: str = "linear") -> np.ndarray:
    """A volume on the BraTS grid resampled onto the grid of the input file of ``modality`` (float32): each native
    voxel reads the atlas point ``native_to_atlas`` sends it to (0 outside the atlas grid)."""
    shape, affine = native_grid(record, modality)
    matrix = from_list(record["transforms"]["native_to_atlas"][modality])
    out = resample(to_sitk(volume, BRATS_AFFINE), grid_image(shape, affine), matrix, interpolation=interpolation,
                   smooth=False)
    return from_sitk(out)


def labels_to_native(labels: np.ndarray, record: Mapping[str, Any], *, probabilities: np.ndarray | None = None,
                     method: str = "nearest", modality: str = "t1ce") -> np.ndarray:
    """Internal labels on the BraTS grid -> labels on the grid of the input ``modality`` file (uint8).

    ``nearest``: each native voxel takes the label at its atlas point. ``probabilities``: the class probabilities
    ``(C, X, Y, Z)`` resampled linearly, then the most probable class (needs ``probabilities``)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "nearest" or probabilities is None:
        return np.rint(to_native(labels.astype(np.float32), record, modality=modality,
                                 interpolation="nearest")).astype(np.uint8)
    native = np.stack([to_native(p, record, modality=modality) for p in probabilities])
    # outside the atlas grid every class reads 0: background
    native[0][native.sum(axis=0) < 0.5] = 1.0
    return np.argmax(native, axis=0).astype(np.uint8)


def _save_native(path: Path, data: np.ndarray, record: Mapping[str, Any], dtype: Any,
                 modality: str = "t1ce") -> None:
    """On the exact grid of the input file (its shape, affine, and, where it was a NIfTI file, its qform/sform)."""
    import nibabel as nib

    from agsevnet.fsutil import atomic_path

    shape, affine = native_grid(record, modality)
    src = record["inputs"][modality].get("path")
    header = None
    if record["inputs"][modality].get("format") == "nifti" and src and Path(src).is_file():
        ref = nib.load(src)
        header = ref.header.copy()
        img = nib.Nifti1Image(np.asarray(data, dtype), ref.affine, header)
        for get, put in ((ref.get_qform, img.set_qform), (ref.get_sform, img.set_sform)):
            matrix, code = get(coded=True)
            if matrix is not None:
                put(matrix, code=int(code))
    else:
        img = nib.Nifti1Image(np.asarray(data, dtype), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    img.set_data_dtype(dtype)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def predict_native(input_path: str | Path | None, out_dir: str | Path, checkpoint: Any, *,
                   files: Mapping[str, Any] | None = None, case_id: str | None = None, overwrite: bool = False,
                   labels: str | None = None, method: str = "nearest", save_uncertainty: bool = False,
                   save_probabilities: bool = False, bias_correction: bool = False, progress: bool = True,
                   log: Any = None, **options: Any) -> dict[str, Any]:
    """``predict --prepare``: prepare one patient into ``OUT/prepared/<case>/``, segment it there with
    :func:`agsevnet.infer.predictor.predict` (atlas-space outputs and the per-case JSON in ``OUT/atlas/``), and
    write ``OUT/<case>.nii.gz``: the labels on the grid of the input T1ce (``method``: see
    :func:`labels_to_native`), ``OUT/<case>.json`` (the atlas-space sidecar plus the native files and the QC) and,
    with ``save_uncertainty``, ``OUT/<case>_uncertainty.nii.gz`` on that grid too."""
    import json
    import time

    from agsevnet.data.labels import from_internal, to_internal
    from agsevnet.data.nifti import load_volume
    from agsevnet.fsutil import write_json_atomic
    from agsevnet.infer.predictor import output_paths, predict, sidecar_path, uncertainty_output
    from agsevnet.prepare.pipeline import prepare

    out_dir = Path(out_dir)
    started = time.perf_counter()
    prepared = prepare(input_path, out_dir / "prepared", files=files, case_id=case_id, overwrite=overwrite,
                       bias_correction=bias_correction, log=log)
    cid, record = prepared.case_id, prepared.record
    atlas_dir = out_dir / "atlas"
    seg_native = out_dir / f"{cid}.nii.gz"
    if prepared.skipped and not overwrite and seg_native.exists() and sidecar_path(out_dir, cid).exists():
        # done by an earlier run from the same inputs: kept (the labels are written last, so they mark it done)
        kept = json.loads(sidecar_path(out_dir, cid).read_text())
        return {"case_id": cid, "labels": seg_native, "prepare_line": prepared.line,
                "seconds": time.perf_counter() - started, "confidence": kept.get("confidence"),
                "check": kept.get("check"), "record": kept, "kept": True}
    need_prob = save_probabilities or method == "probabilities"
    summary = predict(prepared.case_dir, checkpoint, atlas_dir, labels=labels, overwrite=overwrite,
                      save_probabilities=need_prob, save_uncertainty=save_uncertainty, progress=progress,
                      raise_errors=True, write_summary=False, **options)
    result = summary.results[0]
    sidecar = json.loads(sidecar_path(atlas_dir, cid).read_text())
    convention = sidecar["labels"]
    seg_atlas, prob_atlas = output_paths(atlas_dir, cid)
    atlas_labels = to_internal(load_volume(seg_atlas)[0].astype(np.uint8), convention)
    probabilities = None
    if method == "probabilities":
        import nibabel as nib

        probabilities = np.moveaxis(np.asarray(nib.load(str(prob_atlas)).dataobj, np.float32), -1, 0)
    native = labels_to_native(atlas_labels, record, probabilities=probabilities, method=method)
    files_written = {"labels": seg_native.name, "atlas_labels": str(seg_atlas.relative_to(out_dir))}
    if save_uncertainty:
        unc = to_native(load_volume(uncertainty_output(atlas_dir, cid))[0].astype(np.float32), record)
        _save_native(uncertainty_output(out_dir, cid), np.clip(unc, 0, 1), record, np.float32)
        files_written["uncertainty"] = uncertainty_output(out_dir, cid).name
    t1ce_source = record["inputs"]["t1ce"]
    if t1ce_source.get("format") == "dicom":  # DICOM in: a DICOM Segmentation out, over the T1ce series
        from agsevnet.prepare import dicom

        reference = next((x for x in dicom.find_series(t1ce_source["path"])
                          if x.uid == t1ce_source.get("series_instance_uid")), t1ce_source["path"])
        if np.any(native):
            seg_dcm = dicom.write_seg(from_internal(native, convention), reference, out_dir / f"{cid}_seg.dcm",
                                      convention=convention, overwrite=True)
            files_written["dicom_seg"] = seg_dcm.name
        else:
            files_written["dicom_seg"] = None  # no tumour: a SEG needs at least one segment
    seconds = time.perf_counter() - started
    native_record = {**sidecar, "prediction": seg_native.name, "grid": "the input T1ce's (shape and affine)",
                     "native": {"reference": record["inputs"]["t1ce"].get("path"),
                                "shape": record["inputs"]["t1ce"]["shape"], "method": method, **files_written},
                     "prepared": str(prepared.case_dir), "prepare_qc": record["qc"],
                     "seconds_total": round(seconds, 2), "status": result.status}
    write_json_atomic(sidecar_path(out_dir, cid), native_record)
    _save_native(seg_native, from_internal(native, convention), record, np.uint8)  # last: marks the case done
    return {"case_id": cid, "labels": seg_native, "prepare_line": prepared.line, "seconds": seconds,
            "confidence": sidecar.get("confidence"), "check": sidecar.get("check"), "record": native_record}
