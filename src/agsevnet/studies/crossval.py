"""Patient-level cross-validation: every fold trained, its held-out patients predicted and evaluated, one table.

``cross_validate(DATA, OUT, config=...)`` (``agsevnet cross-validate``) runs, for each fold ``k`` of the config's
``validation.folds``:

1. ``agsevnet train DATA --fold k`` into ``OUT/fold<k>`` (preprocessing cache shared in ``OUT/cache`` or
   ``cache_dir``; a fold that finished is kept, an interrupted one resumes from its ``last.pt``). Folds may be run
   by separate processes (``--fold``), e.g. two single-threaded ones side by side on a 2-core CPU; a last call
   over every fold then only predicts and evaluates, and writes the whole table;
2. ``agsevnet predict`` of the fold's held-out cases with the fold's ``best.pt`` into ``OUT/fold<k>/preds``: the
   very path users get (the checkpoint's preprocessing, resolution, strategy and postprocessing), from the
   original NIfTI files to label maps on their grid;
3. the evaluation users get (:func:`agsevnet.evaluate.runner.evaluate_pair`: Dice, sensitivity, specificity,
   HD95 for ET/WT/TC) of each prediction against its ground-truth file.

Patients, not files: cases whose images are identical (the BraTS 2021 and 2023 copies of one patient) count once
and never straddle folds (:func:`agsevnet.train.trainer.unique_patients`). Results: ``OUT/crossval.csv`` (one row
per held-out case, with its fold), ``OUT/crossval.json`` (rows, per-fold and overall means, training time per
fold, the config) and the printed table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agsevnet import REGIONS
from agsevnet.errors import ConfigError, DataError
from agsevnet.fsutil import write_json_atomic, write_text_atomic

TABLE_METRICS: tuple[str, ...] = ("Dice", "Hausdorff95", "Sensitivity", "Specificity")


def _fold_done(run_dir: Path, steps: int) -> bool:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return int(summary.get("steps", 0)) >= steps and (run_dir / "best.pt").is_file()


def _metric_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [k for k in rows[0] if k not in ("case", "fold")] if rows else []


def _means(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in _metric_keys(rows)}


def _stds(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Population standard deviation over patients, per metric."""
    return {k: float(np.std([r[k] for r in rows])) for k in _metric_keys(rows)}


def cross_validate(data_dir: str | Path, out_dir: str | Path, *, config: str | Path = "default",
                   overrides: Sequence[str] = (), folds: Sequence[int] | None = None, device: str | None = None,
                   hd95: str = "pooled", progress: bool = True, say=print,
                   cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) the cross-validation described in the module docstring; returns the JSON record."""
    from agsevnet.config import load_config
    from agsevnet.data.layouts import discover
    from agsevnet.evaluate.matching import Pair
    from agsevnet.evaluate.runner import evaluate_pair
    from agsevnet.infer.predictor import output_paths, predict
    from agsevnet.train.trainer import train

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    sets = [*overrides, "validation.max_cases=null"]
    cfg = load_config(config, sets)
    n_folds = int(cfg["validation"]["folds"])
    todo = list(range(n_folds)) if folds is None else [int(k) for k in folds]
    bad = [k for k in todo if not 0 <= k < n_folds]
    if bad:
        raise ConfigError(f"folds {bad} are outside 0..{n_folds - 1}")
    specs = {s.case_id: s for s in discover(data_dir)}
    inference = {k: cfg["inference"][k] for k in ("strategy", "overlap", "tta", "min_component_fraction",
                                                   "et_threshold")}
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    rows: list[dict[str, Any]] = []
    per_fold: dict[str, Any] = {}
    for k in todo:
        run = out_dir / f"fold{k}"
        steps = int(cfg["train"]["steps"])
        start = time.perf_counter()
        if _fold_done(run, steps):
            say(f"fold {k}: trained already ({run}), kept")
        else:
            resume = (run / "last.pt").is_file()
            say(f"fold {k}: training{' (resuming)' if resume else ''} into {run}")
            train(data_dir, run, config=config if not resume else None, overrides=[*sets, f"validation.fold={k}"],
                  resume=resume, overwrite=not resume and run.exists(), device=device, cache_dir=cache,
                  progress=progress)
        summary = json.loads((run / "summary.json").read_text())
        val_ids = list(summary["val_cases"])
        if summary.get("validated_on_training_cases"):
            raise DataError(f"fold {k} has no held-out case (too few patients for {n_folds} folds)", run)
        missing = [c for c in val_ids if c not in specs]
        if missing:
            raise DataError(f"held-out case(s) {missing} of fold {k} are not in the dataset any more", data_dir)
        preds = run / "preds"
        # The study's inference settings (normally those the fold's checkpoint carries; a study may re-evaluate
        # finished folds under other postprocessing with --set inference.<key>=..., and says so in its record).
        result = predict(None, run / "best.pt", preds, cases=[specs[c] for c in val_ids], progress=progress,
                         device=device or "cpu", overwrite=True, **inference)
        if not result.ok:
            raise DataError(f"fold {k}: prediction failed: {result.format()}", preds)
        fold_rows = []
        for case_id in val_ids:
            spec = specs[case_id]
            if spec.label is None:
                raise DataError(f"held-out case {case_id} has no label file", spec.folder or data_dir)
            scores = evaluate_pair(Pair(case_id, output_paths(preds, case_id)[0], Path(spec.label),
                                        spec.label_convention), hd95=hd95)
            fold_rows.append({"case": case_id, "fold": k, **scores.metrics})
        rows += fold_rows
        per_fold[str(k)] = {
            "cases": val_ids, "means": _means(fold_rows), "train_seconds": summary.get("total_seconds"),
            "steps": summary.get("steps"), "best_step": (summary.get("best") or {}).get("step"),
            "wall_seconds_this_call": round(time.perf_counter() - start, 1),
        }
        say(format_fold(k, per_fold[str(k)]))
    record = {
        "format": "agsevnet-crossval", "data": str(data_dir), "config": cfg, "folds": per_fold, "hd95_rule": hd95,
        "inference": inference,
        "rows": rows, "mean": _means(rows), "std": _stds(rows),
        "train_seconds_total": float(sum(f["train_seconds"] or 0 for f in per_fold.values())),
    }
    write_json_atomic(out_dir / "crossval.json", record)
    if rows:
        header = list(rows[0])
        lines = [",".join(header)] + [",".join(str(r[h]) if not isinstance(r[h], float) else f"{r[h]:.6g}"
                                                for h in header) for r in rows]
        write_text_atomic(out_dir / "crossval.csv", "\n".join(lines) + "\n")
    return record


def format_fold(k: int | str, fold: Mapping[str, Any]) -> str:
    m = fold["means"]
    return (f"fold {k}: Dice ET {m['Dice_ET']:.3f} WT {m['Dice_WT']:.3f} TC {m['Dice_TC']:.3f}, HD95 ET "
            f"{m['Hausdorff95_ET']:.1f} WT {m['Hausdorff95_WT']:.1f} TC {m['Hausdorff95_TC']:.1f} mm "
            f"({len(fold['cases'])} case(s), trained {fold['train_seconds'] or 0:.0f} s)")


def format_table(record: Mapping[str, Any]) -> str:
    """The per-fold and overall table (mean over held-out patients; +- population std over patients)."""
    cols = [f"{m}_{r}" for m in TABLE_METRICS for r in REGIONS]
    short = {"Dice": "Dice", "Hausdorff95": "HD95", "Sensitivity": "Sens", "Specificity": "Spec"}
    head = ["fold", "n"] + [f"{short[c.split('_')[0]]} {c.split('_')[1]}" for c in cols] + ["train s"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for k, fold in record["folds"].items():
        m = fold["means"]
        lines.append(" | ".join([k, str(len(fold["cases"]))] + [_fmt(c, m[c]) for c in cols]
                                + [f"{fold['train_seconds'] or 0:.0f}"]))
    if record["rows"]:
        m, sd = record["mean"], record["std"]
        lines.append(" | ".join(["mean", str(len(record["rows"]))] + [f"{_fmt(c, m[c])} +- {_fmt(c, sd[c])}" for c in cols]
                                + [f"{record['train_seconds_total']:.0f}"]))
    return "\n".join(lines)


def _fmt(column: str, value: float) -> str:
    return f"{value:.1f}" if column.startswith("Hausdorff") else f"{value:.3f}"
