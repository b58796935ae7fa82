"""Evaluate prediction files against ground-truth files: read, convert labels, check geometry, score.

Label conventions (``labels="auto"``, the default), decided per file:

1. The family: ``msd`` when the ground truth's dataset layout says its labels are MSD's (1 edema,
   2 non-enhancing, 3 enhancing; :func:`agsevnet.data.layouts.discover` recognises MSD Task01 and nnU-Net
   conversions of it), otherwise ``brats``. A prediction belongs to its ground truth's family, so a prediction
   that agsevnet wrote back into the user's convention evaluates correctly against it.
2. Within the brats family, the values decide: a file holding 4 is ``brats2020`` (4 = enhancing), a file
   holding 3 is ``brats2023`` (3 = enhancing), a file holding neither reads the same in both (1 = core,
   2 = edema); a file holding both 3 and 4 is an error.

``labels="brats2020" | "brats2023" | "msd"`` reads both files in that convention instead (a value it does not
define is an error naming the file). The conventions used are recorded for every case.

Geometry: the prediction must have the ground truth's shape and affine (to 1e-3), or it is an error naming
both files; the ground truth's header spacing is used for the Hausdorff distance.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agsevnet.data.labels import CONVENTIONS, to_internal
from agsevnet.data.nifti import load_volume
from agsevnet.errors import AgsevnetError, DataError
from agsevnet.evaluate.matching import Pair, match_cases
from agsevnet.evaluate.metrics import case_metrics

LABEL_MODES: tuple[str, ...] = ("auto", *CONVENTIONS)
AFFINE_TOLERANCE = 1e-3


@dataclass
class CaseResult:
    """The metrics of one case and what they were computed from."""

    case_id: str
    pred: Path | None  # None: no prediction, scored as empty
    gt: Path
    pred_labels: str | None
    gt_labels: str
    spacing: tuple[float, float, float]
    metrics: dict[str, float]

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
            "metrics": dict(self.metrics),
        }


@dataclass
class Evaluation:
    """Every evaluated case, in ground-truth case order, and where the files came from."""

    cases: list[CaseResult]
    pred_root: Path
    gt_root: Path
    labels: str = "auto"
    missing: str = "error"
    unmatched_predictions: list[str] = field(default_factory=list)


def resolve_convention(data: np.ndarray, family: str, path: Path) -> str:
    """The auto-detected convention of the label array ``data`` read from ``path`` (rule 2 above)."""
    if family == "msd":
        return "msd"
    has_3, has_4 = bool((data == 3).any()), bool((data == 4).any())
    if has_3 and has_4:
        raise DataError("holds both label 3 and label 4: its convention is ambiguous (pass --labels)", path)
    return "brats2023" if has_3 else "brats2020"


def _to_internal(data: np.ndarray, convention: str, path: Path) -> np.ndarray:
    try:
        return to_internal(data, convention)
    except ValueError as exc:
        raise DataError(f"{exc} (choose the convention with --labels)", path) from None


def _check_geometry(pred: np.ndarray, pred_affine: np.ndarray, gt: np.ndarray, gt_affine: np.ndarray,
                    pred_path: Path, gt_path: Path) -> None:
    if pred.shape != gt.shape:
        raise DataError(f"shape {pred.shape} differs from the ground truth's {gt.shape} ({gt_path})", pred_path)
    if not np.allclose(pred_affine, gt_affine, atol=AFFINE_TOLERANCE):
        raise DataError(f"affine differs from the ground truth's ({gt_path}): "
                        f"{np.round(pred_affine, 4).tolist()} vs {np.round(gt_affine, 4).tolist()}", pred_path)


def evaluate_pair(pair: Pair, labels: str = "auto") -> CaseResult:
    """Read one pair of files and compute its metrics (the prediction is empty when ``pair.pred`` is None)."""
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    gt_data, gt_img = load_volume(pair.gt)
    family = "msd" if pair.gt_convention == "msd" else "brats"
    gt_conv = labels if labels != "auto" else resolve_convention(gt_data, family, pair.gt)
    gt = _to_internal(gt_data, gt_conv, pair.gt)
    spacing = tuple(float(z) for z in gt_img.header.get_zooms()[:3])
    if pair.pred is None:
        pred = np.zeros_like(gt)
        pred_conv = None
    else:
        pred_data, pred_img = load_volume(pair.pred)
        _check_geometry(pred_data, pred_img.affine, gt_data, gt_img.affine, pair.pred, pair.gt)
        pred_conv = labels if labels != "auto" else resolve_convention(pred_data, family, pair.pred)
        pred = _to_internal(pred_data, pred_conv, pair.pred)
    return CaseResult(pair.case_id, pair.pred, pair.gt, pred_conv, gt_conv, spacing, case_metrics(pred, gt, spacing))


def _evaluate_pair_portable(pair: Pair, labels: str) -> CaseResult | tuple[str, str | None]:
    """:func:`evaluate_pair` for a worker process: an agsevnet error comes back as (message, path)."""
    try:
        return evaluate_pair(pair, labels)
    except AgsevnetError as exc:
        return exc.message, None if exc.path is None else str(exc.path)


def default_workers(n_cases: int) -> int:
    """Up to 4 processes, one per CPU core, and at least 4 cases per process (starting one costs ~1 s)."""
    return max(1, min(4, os.cpu_count() or 1, n_cases // 4))


def evaluate(
    pred: str | Path,
    gt: str | Path,
    *,
    labels: str = "auto",
    missing: str = "error",
    workers: int | None = None,
    progress: bool = True,
) -> Evaluation:
    """Evaluate every ground-truth case under ``gt`` against its prediction under ``pred`` (files or folders).

    ``workers`` processes read and score cases in parallel (None: :func:`default_workers`); a progress bar
    shows cases done and the ETA. Raises :class:`DataError` naming the file on bad input.
    """
    from tqdm import tqdm

    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    pred_root, gt_root = Path(pred).absolute(), Path(gt).absolute()  # the JSON's paths work from any folder
    pairs, extra = match_cases(pred_root, gt_root, missing=missing)
    workers = default_workers(len(pairs)) if workers is None else max(1, int(workers))
    results: dict[str, CaseResult] = {}
    bar = tqdm(total=len(pairs), desc="evaluate", unit="case", disable=not progress, dynamic_ncols=True)
    try:
        if workers == 1 or len(pairs) == 1:
            for pair in pairs:
                results[pair.case_id] = evaluate_pair(pair, labels)
                bar.update(1)
        else:
            # spawn, not fork: the caller may have torch (OpenMP) threads running, e.g. the demo after training.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(pairs)), mp_context=context) as pool:
                futures = {pool.submit(_evaluate_pair_portable, pair, labels): pair for pair in pairs}
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
    )
