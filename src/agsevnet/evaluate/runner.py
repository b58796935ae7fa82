"""Evaluate prediction files against ground-truth files: read, convert labels, check geometry, score.

Label conventions (``labels="auto"``, the default), decided per file:

1. The ground truth's dataset layout. ``msd`` when it says its labels are MSD's (1 edema, 2 non-enhancing,
   3 enhancing; :func:`agsevnet.data.layouts.discover` recognises MSD Task01 and nnU-Net conversions of it,
   also when the ``labelsTr`` folder itself is passed); a BraTS layout (``_seg`` / ``-seg`` files) puts the
   file in the brats family, where the values decide: a file holding 4 is ``brats2020`` (4 = enhancing), a
   file holding 3 is ``brats2023`` (3 = enhancing), a file holding neither reads the same in both (1 = core,
   2 = edema); a file holding both 3 and 4 is an error.
2. Without a recognised layout (a folder of ``<case>.nii.gz`` label files, a single file), only the value 4
   can tell: a file holding 4 is ``brats2020``; a file holding tumour labels but no 4 (1/2/3: BraTS 2023 or
   MSD, whose 1 and 2 mean the opposite) is an error naming its folder and asking for ``--labels``, because
   guessing wrong swaps necrosis and edema silently.
3. A prediction belongs to its ground truth's family: ``msd`` when the ground truth is ``msd``, else the
   values decide as in 1. So a prediction that agsevnet wrote back into the user's convention evaluates
   correctly against it.

``labels="brats2020" | "brats2023" | "msd"`` reads the ground truth (and the predictions, unless
``pred_labels`` is given) in that convention instead; ``pred_labels`` does the same for the predictions only
(``"auto"``: rule 3), so predictions of another tool may use another convention than the ground truth. A value
a convention does not define is an error naming the file. The conventions used are recorded for every case.

Geometry: a prediction must have the ground truth's voxel grid shape, or it is an error naming both files.
When the shapes agree but the affines differ (beyond 1e-3: many tools write an identity affine), the arrays
are compared voxel by voxel as they are and the case carries one warning saying what differs (origin, voxel
size, axis directions); ``strict_geometry=True`` makes that an error naming both files. The ground truth's
header spacing is used for the Hausdorff distance.

Hausdorff95 rule: ``hd95="pooled"`` (default, medpy's hd95) or ``"max"``; see
:mod:`agsevnet.evaluate.metrics`.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agsevnet.data.labels import CONVENTIONS, to_internal
from agsevnet.data.nifti import load_volume
from agsevnet.errors import AgsevnetError, DataError
from agsevnet.evaluate.matching import Pair, match_cases
from agsevnet.evaluate.metrics import HD95_RULES, case_metrics, check_hd95_rule
from agsevnet.parallel import worker_count

LABEL_MODES: tuple[str, ...] = ("auto", *CONVENTIONS)
AFFINE_TOLERANCE = 1e-3


@dataclass
class CaseScores:
    """The metrics of one evaluated case and what they were computed from (not to be confused with
    :class:`agsevnet.infer.predictor.CaseResult`, what happened to one case in a prediction run)."""

    case_id: str
    pred: Path | None  # None: no prediction, scored as empty
    gt: Path
    pred_labels: str | None
    gt_labels: str
    spacing: tuple[float, float, float]
    metrics: dict[str, float]
    hd95: str = "pooled"
    warnings: list[str] = field(default_factory=list)
    lesionwise: dict[str, float] | None = None  # --lesion-wise: agsevnet.evaluate.lesionwise.LESIONWISE_COLUMNS

    @property
    def missing_prediction(self) -> bool:
        return self.pred is None

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case_id,
            "pred": None if self.pred is None else str(self.pred),
            "gt": str(self.gt),
            "missing_prediction": self.missing_prediction,
            "pred_labels": self.pred_labels,
            "gt_labels": self.gt_labels,
            "spacing": list(self.spacing),
            "hd95_rule": self.hd95,
            "warnings": list(self.warnings),
            "metrics": dict(self.metrics),
            **({} if self.lesionwise is None else {"lesionwise": dict(self.lesionwise)}),
        }


@dataclass
class Evaluation:
    """Every evaluated case, in ground-truth case order, and where the files came from."""

    cases: list[CaseScores]
    pred_root: Path
    gt_root: Path
    labels: str = "auto"
    missing: str = "error"
    unmatched_predictions: list[str] = field(default_factory=list)
    pred_labels: str | None = None  # None: as ``labels``
    hd95: str = "pooled"
    strict_geometry: bool = False
    lesion_wise: bool = False

    @property
    def warnings(self) -> list[str]:
        """Every case's warnings, in case order."""
        return [w for case in self.cases for w in case.warnings]


def resolve_convention(data: np.ndarray, layout: str | None, path: Path) -> str:
    """The auto-detected convention of the label array ``data`` read from ``path`` (rules 1-3 above).

    ``layout``: the convention the dataset layout gives (``msd``: that one; ``brats2020``/``brats2023``: the
    brats family, the values decide), or None when no layout was recognised.
    """
    if layout == "msd":
        return "msd"
    has_3, has_4 = bool((data == 3).any()), bool((data == 4).any())
    if has_3 and has_4:
        raise DataError("holds both label 3 and label 4: its convention is ambiguous (pass --labels)", path)
    if layout is None and not has_4 and bool((data > 0).any()):
        folder = path.parent
        raise DataError(
            f"holds label values {sorted(int(v) for v in np.unique(data) if v > 0)} and {folder} is no "
            "recognised dataset layout, so the label convention is unknown: BraTS 2023 (1 necrosis, 2 edema, "
            "3 enhancing) or MSD (1 edema, 2 non-enhancing, 3 enhancing) swap necrosis and edema; pass --labels "
            "brats2023, --labels msd or --labels brats2020", folder / path.name)
    return "brats2023" if has_3 else "brats2020"


def _to_internal(data: np.ndarray, convention: str, path: Path) -> np.ndarray:
    try:
        return to_internal(data, convention)
    except ValueError as exc:
        raise DataError(f"{exc} (choose the convention with --labels)", path) from None


def _affine_difference(pred_affine: np.ndarray, gt_affine: np.ndarray) -> str:
    """What differs between two affines, in words: origin, voxel size, axis directions."""
    import nibabel as nib

    parts = []
    pred_zooms = np.sqrt((pred_affine[:3, :3] ** 2).sum(axis=0))
    gt_zooms = np.sqrt((gt_affine[:3, :3] ** 2).sum(axis=0))
    if not np.allclose(pred_zooms, gt_zooms, atol=AFFINE_TOLERANCE):
        parts.append(f"voxel size {np.round(pred_zooms, 4).tolist()} vs {np.round(gt_zooms, 4).tolist()} mm")
    pred_axes, gt_axes = "".join(nib.aff2axcodes(pred_affine)), "".join(nib.aff2axcodes(gt_affine))
    if pred_axes != gt_axes:
        parts.append(f"axis directions {pred_axes} vs {gt_axes}")
    elif not np.allclose(pred_affine[:3, :3] / pred_zooms, gt_affine[:3, :3] / gt_zooms, atol=AFFINE_TOLERANCE):
        parts.append("axis directions (rotation)")
    if not np.allclose(pred_affine[:3, 3], gt_affine[:3, 3], atol=AFFINE_TOLERANCE):
        parts.append(f"origin {np.round(pred_affine[:3, 3], 3).tolist()} vs {np.round(gt_affine[:3, 3], 3).tolist()} mm")
    return ", ".join(parts) or "affine"


def _check_geometry(pred: np.ndarray, pred_affine: np.ndarray, gt: np.ndarray, gt_affine: np.ndarray,
                    pred_path: Path, gt_path: Path, strict: bool = False) -> list[str]:
    """Raise :class:`DataError` naming both files when the shapes differ (or, with ``strict``, the affines);
    return the one warning of an affine that differs on a grid of the same shape (else nothing)."""
    if pred.shape != gt.shape:
        raise DataError(f"shape {pred.shape} differs from the ground truth's {gt.shape} ({gt_path})", pred_path)
    if np.allclose(pred_affine, gt_affine, atol=AFFINE_TOLERANCE):
        return []
    what = _affine_difference(pred_affine, gt_affine)
    if strict:
        raise DataError(f"affine differs from the ground truth's ({gt_path}): {what} (--strict-geometry)", pred_path)
    return [f"{pred_path}: affine differs from the ground truth's ({gt_path}): {what}; same grid shape, so the "
            "voxel arrays were compared as they are (--strict-geometry makes this an error)"]


def evaluate_pair(pair: Pair, labels: str = "auto", *, pred_labels: str | None = None, hd95: str = "pooled",
                  strict_geometry: bool = False, lesion_wise: bool = False) -> CaseScores:
    """Read one pair of files and compute its metrics (the prediction is empty when ``pair.pred`` is None).

    ``labels``: the ground truth's convention (and the prediction's when ``pred_labels`` is None);
    ``pred_labels``: the prediction's; ``hd95``: the Hausdorff95 rule; ``strict_geometry``: an affine that
    differs is an error rather than a warning.
    """
    for name, value in (("labels", labels), ("pred_labels", labels if pred_labels is None else pred_labels)):
        if value not in LABEL_MODES:
            raise ValueError(f"{name} must be one of {LABEL_MODES}, got {value!r}")
    check_hd95_rule(hd95)
    pred_mode = labels if pred_labels is None else pred_labels
    gt_data, gt_img = load_volume(pair.gt)
    gt_conv = labels if labels != "auto" else resolve_convention(gt_data, pair.gt_convention, pair.gt)
    gt = _to_internal(gt_data, gt_conv, pair.gt)
    spacing = tuple(float(z) for z in gt_img.header.get_zooms()[:3])
    warnings: list[str] = []
    if pair.pred is None:
        pred = np.zeros_like(gt)
        pred_conv = None
    else:
        pred_data, pred_img = load_volume(pair.pred)
        warnings = _check_geometry(pred_data, pred_img.affine, gt_data, gt_img.affine, pair.pred, pair.gt,
                                   strict=strict_geometry)
        # rule 3: the prediction belongs to the ground truth's family (the resolved convention is never None)
        pred_conv = pred_mode if pred_mode != "auto" else resolve_convention(pred_data, gt_conv, pair.pred)
        pred = _to_internal(pred_data, pred_conv, pair.pred)
    lesionwise = None
    if lesion_wise:  # the BraTS 2023+ lesion-wise columns (agsevnet.evaluate.lesionwise)
        from agsevnet.evaluate.lesionwise import lesionwise_metrics

        lesionwise = lesionwise_metrics(pred, gt, spacing)
    return CaseScores(pair.case_id, pair.pred, pair.gt, pred_conv, gt_conv, spacing,
                      case_metrics(pred, gt, spacing, hd95=hd95), hd95=hd95, warnings=warnings,
                      lesionwise=lesionwise)


def _evaluate_pair_portable(pair: Pair, labels: str, options: dict[str, Any]) -> CaseScores | tuple[str, str | None]:
    """:func:`evaluate_pair` for a worker process: an agsevnet error comes back as (message, path)."""
    try:
        return evaluate_pair(pair, labels, **options)
    except AgsevnetError as exc:
        return exc.message, None if exc.path is None else str(exc.path)


def default_workers(n_cases: int) -> int:
    """Up to 4 processes, one per CPU core, and at least 4 cases per process (starting one costs ~1 s); see
    :mod:`agsevnet.parallel`."""
    return worker_count(n_cases, cap=4, items_per_worker=4)


def evaluate(
    pred: str | Path,
    gt: str | Path,
    *,
    labels: str = "auto",
    missing: str = "error",
    workers: int | None = None,
    progress: bool = True,
    pred_labels: str | None = None,
    hd95: str = "pooled",
    strict_geometry: bool = False,
    lesion_wise: bool = False,
) -> Evaluation:
    """Evaluate every ground-truth case under ``gt`` against its prediction under ``pred`` (files or folders).

    ``labels`` / ``pred_labels``: the label conventions (module docstring); ``hd95``: the Hausdorff95 rule
    (:data:`agsevnet.evaluate.metrics.HD95_RULES`); ``strict_geometry``: an affine that differs from the ground
    truth's is an error instead of a warning; ``lesion_wise``: also the lesion-wise columns of
    :mod:`agsevnet.evaluate.lesionwise` per case. ``workers`` processes read and score cases in parallel (None:
    :func:`default_workers`); a progress bar shows cases done and the ETA. Raises :class:`DataError` naming the
    file on bad input.
    """
    from tqdm import tqdm

    for name, value in (("labels", labels), ("pred_labels", labels if pred_labels is None else pred_labels)):
        if value not in LABEL_MODES:
            raise ValueError(f"{name} must be one of {LABEL_MODES}, got {value!r}")
    if hd95 not in HD95_RULES:
        raise ValueError(f"hd95 must be one of {tuple(HD95_RULES)}, got {hd95!r}")
    options: dict[str, Any] = {"pred_labels": pred_labels, "hd95": hd95, "strict_geometry": strict_geometry,
                               "lesion_wise": lesion_wise}
    pred_root, gt_root = Path(pred).absolute(), Path(gt).absolute()  # the JSON's paths work from any folder
    pairs, extra = match_cases(pred_root, gt_root, missing=missing)
    workers = default_workers(len(pairs)) if workers is None else max(1, int(workers))
    results: dict[str, CaseScores] = {}
    bar = tqdm(total=len(pairs), desc="evaluate", unit="case", disable=not progress, dynamic_ncols=True)
    try:
        if workers == 1 or len(pairs) == 1:
            for pair in pairs:
                results[pair.case_id] = evaluate_pair(pair, labels, **options)
                bar.update(1)
        else:
            # spawn, not fork: the caller may have torch (OpenMP) threads running, e.g. the demo after training.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(pairs)), mp_context=context) as pool:
                futures = {pool.submit(_evaluate_pair_portable, pair, labels, options): pair for pair in pairs}
                for future in as_completed(futures):
                    outcome = future.result()
                    if isinstance(outcome, tuple):
                        for other in futures:
                            other.cancel()
                        raise DataError(*outcome)
                    results[outcome.case_id] = outcome
                    bar.update(1)
    finally:
        bar.close()
    return Evaluation(
        cases=[results[pair.case_id] for pair in pairs],
        pred_root=pred_root,
        gt_root=gt_root,
        labels=labels,
        missing=missing,
        unmatched_predictions=extra,
        pred_labels=pred_labels,
        hd95=hd95,
        strict_geometry=strict_geometry,
        lesion_wise=lesion_wise,
    )
