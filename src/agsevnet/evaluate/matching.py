"""Pair predictions with ground truths by case id.

Ground truths: a dataset folder or case folder in any layout :func:`agsevnet.data.layouts.discover` reads
(BraTS 2018-2021 and 2023+ with the ``_seg`` / ``-seg`` file next to the images, MSD Task01 and nnU-Net
``labelsTr``) gives each case's id, label file and label convention; so does the ``labelsTr`` / ``labelsTs``
folder of an MSD or nnU-Net dataset passed on its own (or a file in it: the dataset around it is read). A
folder that is no dataset (label files only) or a single label file is read by file name like the predictions,
with no convention (:mod:`agsevnet.evaluate.runner` then asks for ``--labels`` where the values cannot tell).

Predictions (and label-only ground-truth folders): a label file's case id comes from its name,
``<case>.nii.gz``, ``<case>_seg.nii.gz`` or ``<case>-seg.nii.gz`` (``.nii`` too), searched recursively so flat
folders and one-folder-per-case layouts both work. Not label files: names ending like a modality
(``_flair``, ``_t1``, ``_t1ce``, ``_t2``, ``-t1n``, ``-t1c``, ``-t2w``, ``-t2f``), the probability maps
``agsevnet predict`` writes next to its predictions (``<case>_prob.nii.gz``) and its uncertainty maps
(``<case>_uncertainty.nii.gz``; its ``<case>.json`` sidecars and ``predict-summary*.json`` are no NIfTI files, so
never label files), hidden files (``._x.nii.gz``
from macOS archives) and the image folders of MSD / nnU-Net (``imagesTr``, ``imagesTs``). Two files with the
same case id in one tree are an error naming both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agsevnet.data.layouts import discover
from agsevnet.data.nifti import is_nifti_name, strip_nifti_suffix
from agsevnet.errors import DataError

LABEL_SUFFIXES: tuple[str, ...] = ("_seg", "-seg")
NOT_LABEL_SUFFIXES: tuple[str, ...] = ("_flair", "_t1", "_t1ce", "_t2", "-t1n", "-t1c", "-t2w", "-t2f", "_prob",
                                        "_uncertainty")
IMAGE_FOLDERS: frozenset[str] = frozenset({"imagesTr", "imagesTs", "imagesVal"})
MISSING_MODES: tuple[str, ...] = ("error", "empty", "skip")
NAMING_HINT = "expected <case>.nii.gz, <case>_seg.nii.gz or <case>-seg.nii.gz"


@dataclass(frozen=True)
class Pair:
    """One case to evaluate: its prediction (None: missing, scored as empty) and ground-truth files."""

    case_id: str
    pred: Path | None
    gt: Path
    gt_convention: str | None = None  # from the ground truth's dataset layout, where recognised


def label_case_id(path: Path) -> str | None:
    """The case id of a label file named by the rules above; None when the name is not a label file's."""
    if not is_nifti_name(path.name) or path.name.startswith("."):
        return None
    stem = strip_nifti_suffix(path.name)
    lower = stem.lower()
    for suffix in LABEL_SUFFIXES:
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    if any(lower.endswith(suffix) for suffix in NOT_LABEL_SUFFIXES):
        return None
    return stem


def find_label_files(root: Path) -> dict[str, Path]:
    """Case id -> label file, for a label file or a folder searched recursively (sorted by case id)."""
    root = Path(root)
    if root.is_file():
        case_id = label_case_id(root)
        if case_id is None:
            raise DataError(f"not a label file ({NAMING_HINT})", root)
        return {case_id: root}
    if not root.is_dir():
        raise DataError("no such file or folder", root)
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in IMAGE_FOLDERS)
        for name in sorted(files):
            path = Path(folder) / name
            case_id = label_case_id(path)
            if case_id is None:
                continue
            if case_id in found:
                raise DataError(f"two label files for case {case_id}: {found[case_id]} and {path}", root)
            found[case_id] = path
    return dict(sorted(found.items()))


def _labelled_specs(folder: Path) -> list:
    """The labelled cases of the dataset layout of ``folder``, or of the MSD / nnU-Net dataset whose
    ``labels*`` folder it is (those with their label in ``folder``); [] when no layout is recognised."""
    try:
        return [spec for spec in discover(folder) if spec.label is not None]
    except DataError:  # not a dataset layout (e.g. a folder of label files only)
        pass
    if folder.name.lower().startswith("labels") and (folder.parent / f"images{folder.name[6:]}").is_dir():
        try:
            here = folder.resolve()
            return [spec for spec in discover(folder.parent)
                    if spec.label is not None and Path(spec.label).parent.resolve() == here]
        except DataError:
            pass
    return []


def ground_truth_files(root: Path) -> dict[str, tuple[Path, str | None]]:
    """Case id -> (label file, label convention of its dataset layout or None), sorted by case id."""
    root = Path(root)
    folder = root.parent if root.is_file() else root
    specs = _labelled_specs(folder)
    if root.is_file():
        for spec in specs:
            if Path(spec.label).resolve() == root.resolve():
                return {spec.case_id: (root, spec.label_convention)}
    elif specs:
        return {spec.case_id: (Path(spec.label), spec.label_convention) for spec in specs}
    return {case_id: (path, None) for case_id, path in find_label_files(root).items()}


def match_cases(pred_root: Path, gt_root: Path, missing: str = "error") -> tuple[list[Pair], list[str]]:
    """The pairs to evaluate (one per ground-truth case) and the case ids of predictions without ground truth.

    ``missing``: what to do with a ground-truth case that has no prediction: ``"error"`` (raise
    :class:`DataError` naming the cases), ``"empty"`` (score it as an empty prediction) or ``"skip"``
    (evaluate only the cases that have a prediction). A single prediction file is matched to a single
    ground-truth file whatever their names; against a folder it must match a case id.
    """
    if missing not in MISSING_MODES:
        raise ValueError(f"missing must be one of {MISSING_MODES}, got {missing!r}")
    pred_root, gt_root = Path(pred_root), Path(gt_root)
    if not gt_root.exists():
        raise DataError("no such file or folder", gt_root)
    preds = find_label_files(pred_root)
    gts = ground_truth_files(gt_root)
    if not gts:
        raise DataError(f"no ground-truth label files found ({NAMING_HINT}, or a dataset folder with labels)", gt_root)
    if not preds:
        raise DataError(f"no prediction files found ({NAMING_HINT})", pred_root)
    if pred_root.is_file() and gt_root.is_file():
        preds = {next(iter(gts)): next(iter(preds.values()))}
    elif pred_root.is_file():
        case_id = next(iter(preds))
        if case_id not in gts:
            raise DataError(f"no ground truth for case {case_id} in {gt_root}", pred_root)
        gts = {case_id: gts[case_id]}

    absent = [case_id for case_id in gts if case_id not in preds]
    if absent and missing == "error":
        shown = ", ".join(absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
        raise DataError(
            f"no prediction for {len(absent)} case(s): {shown} (--missing empty scores them as empty, "
            "--missing skip evaluates only the predicted cases)",
            pred_root,
        )
    pairs = [
        Pair(case_id, preds.get(case_id), gt, convention)
        for case_id, (gt, convention) in gts.items()
        if case_id in preds or missing == "empty"
    ]
    extra = [case_id for case_id in preds if case_id not in gts] if gt_root.is_dir() else []
    return pairs, extra
