"""Patient-level cross-validation: every fold trained, its held-out patients predicted and evaluated, one table.

``cross_validate(DATA, OUT, config=...)`` (``agsevnet cross-validate``) runs, for each fold ``k`` of the config's
``validation.folds``:

1. ``agsevnet train DATA --fold k`` into ``OUT/fold<k>`` (preprocessing cache shared in ``OUT/cache`` or
   ``cache_dir``; a fold that finished is kept, an interrupted one resumes from its ``last.pt``). Folds may be run
   by separate processes (``--fold``), e.g. two single-threaded ones side by side on a 2-core CPU; a last call
   over every fold then only predicts and evaluates, and writes the whole table;
2. ``agsevnet predict`` of the fold's held-out cases with the fold's **final** weights (``last.pt`` at
   ``train.steps``, nnU-Net's convention) into ``OUT/fold<k>/preds``: the very path users get (the checkpoint's
   preprocessing, resolution, strategy and postprocessing), from the original NIfTI files to label maps on their
   grid;
3. the evaluation users get (:func:`agsevnet.evaluate.runner.evaluate_pair`: Dice, sensitivity, specificity,
   HD95 for ET/WT/TC) of each prediction against its ground-truth file.

Never a checkpoint chosen on the held-out patients. A preset that validates during training
(``validation.every > 0``) validates on the fold's held-out cases and keeps the best of those steps as
``best.pt``; scoring that checkpoint on the same cases would report the luck of the choice (on phantoms: held-out
Dice 0.546, 0.678, 0.583 by step, 0.678 reported). The study therefore always scores the final weights, whatever
the preset's validation does (its figures stay in ``metrics.csv``, for curves only), and ``crossval.json`` says so
(``"checkpoint": "final"`` with each fold's ``checkpoint_step``).

A finished fold is reused only when it was trained with the study's configuration: its ``config.yaml`` (written by
the trainer) is compared with the study's, except for :data:`NOT_TRAINING_KEYS`, settings that cannot change the
final weights. Any other difference is a :class:`~agsevnet.errors.ConfigError` naming the fold's folder and each
key as ``old -> new``; with ``retrain`` that fold is trained again from scratch, and the study says so.

Patients, not files: cases whose images are identical (the BraTS 2021 and 2023 copies of one patient) count once
and never straddle folds (:func:`agsevnet.data.patients.unique_patients`). Results: ``OUT/crossval.csv`` (one row
per held-out case, with its fold) and ``OUT/crossval_summary.csv`` (the evaluation's CSVs,
:mod:`agsevnet.evaluate.summary`), ``OUT/crossval.json`` (rows, per-fold and overall statistics, the worst
patient and the failures, i.e. patients with WT Dice below :data:`FAILURE_DICE_WT`, training time per fold, the
config) and the printed table.

Ten patients are few, and one training run is mostly noise: :func:`combine_studies` (``agsevnet
cross-validate-summary``) puts studies of one recipe trained with different seeds (``--seed``) side by side, with
the mean and the spread over seeds.
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

FORMAT = "agsevnet-crossval"
TABLE_METRICS: tuple[str, ...] = ("Dice", "Hausdorff95", "Sensitivity", "Specificity")

FAILURE_DICE_WT = 0.5
"""A held-out patient whose WT Dice is below this is a failure (counted beside the means)."""

CHECKPOINT = "final"
"""Which weights score each fold: the final ones (``last.pt`` at ``train.steps``), never ``best.pt``."""

NOT_TRAINING_KEYS: tuple[str, ...] = (
    "validation.fold",        # the fold is the folder; the study sets it
    "validation.every",       # in-training validation only logs: the study never takes its best.pt
    "validation.max_cases",
    "inference",              # applied by the study at prediction time (and by in-training validation only)
    "data.workers",           # batches are a pure function of (seed, rank, step): any number of loaders
    "train.log_every",        # how often the loss is logged
    "train.checkpoint_every",  # how often last.pt is written (resume is exact)
)
"""Config keys (and sections) a finished fold may differ in from the study: none of them changes its final
weights. Every other key (seed, model, loss, preprocessing, sampling, augmentation, optimiser, steps, folds...)
does, and a fold trained otherwise is refused or retrained."""

SEED_METRICS: tuple[str, ...] = (*(f"Dice_{r}" for r in REGIONS), *(f"Hausdorff95_{r}" for r in REGIONS),
                                 "worst_Dice_WT", "failures")
"""The figures :func:`combine_studies` gives per study and summarises over seeds."""


# ----------------------------------------------------------------------------------------------- folds
def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NOT_TRAINING_KEYS)


def _lookup(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return "(absent)"
        node = node[part]
    return node


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], ignore=_ignored) -> list[str]:
    """``"key: old -> new"`` for every dotted key whose value differs between two configs, except ``ignore``d
    ones (default: :data:`NOT_TRAINING_KEYS`)."""
    from agsevnet.config import diff_configs

    return [f"{key}: {_lookup(old, key)!r} -> {_lookup(new, key)!r}" for key in diff_configs(old, new)
            if not ignore(key)]


def fold_changes(run_dir: Path, cfg: Mapping[str, Any]) -> list[str] | None:
    """How the fold in ``run_dir`` was trained differently from ``cfg`` (:func:`config_changes` of its
    ``config.yaml``); None when nothing was trained there yet."""
    from agsevnet.config import load_config

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return None
    try:
        old = load_config(saved)
    except ConfigError as exc:
        return [f"its config.yaml is not a valid config any more ({exc})"]
    return config_changes(old, cfg)


def _fold_done(run_dir: Path, steps: int) -> bool:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return int(summary.get("steps", 0)) >= steps and (run_dir / "last.pt").is_file()


def _final_checkpoint(run_dir: Path, steps: int) -> Path:
    """The fold's final weights (``last.pt``), after checking that they are those of its last step."""
    from agsevnet.checkpoint import load_checkpoint

    path = run_dir / "last.pt"
    step = int(load_checkpoint(path)["step"])
    if step != steps:
        raise DataError(f"holds the weights of step {step}, but the fold trained to step {steps}", path)
    return path


# ------------------------------------------------------------------------------------------- statistics
def _cases(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows as the evaluation's case entries (``{"case", "fold", "metrics"}``) for its CSV writer."""
    from agsevnet.evaluate.metrics import COLUMNS

    return [{"case": r["case"], "fold": r["fold"], "metrics": {c: r[c] for c in COLUMNS}} for r in rows]


def _statistics(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The evaluation's summary of the rows (:func:`agsevnet.evaluate.summary.summarize`), its means and standard
    deviations (population, over patients) by column, the worst patient (lowest WT Dice) and the failures."""
    from agsevnet.evaluate.summary import summarize

    summary = summarize(rows)
    worst = min(rows, key=lambda r: r["Dice_WT"])
    failures = [{"case": r["case"], "fold": r["fold"], "Dice_WT": r["Dice_WT"]} for r in rows
                if r["Dice_WT"] < FAILURE_DICE_WT]
    return {
        "summary": summary, "mean": {c: s["Mean"] for c, s in summary.items()},
        "std": {c: s["StdDev"] for c, s in summary.items()},
        "worst": {"case": worst["case"], "fold": worst["fold"], "Dice_WT": worst["Dice_WT"]},
        "failures": {"threshold_Dice_WT": FAILURE_DICE_WT, "count": len(failures), "cases": failures},
    }


# ------------------------------------------------------------------------------------------------ study
def cross_validate(data_dir: str | Path, out_dir: str | Path, *, config: str | Path = "default",
                   overrides: Sequence[str] = (), folds: Sequence[int] | None = None, device: str | None = None,
                   hd95: str = "pooled", progress: bool = True, say=print,
                   cache_dir: str | Path | None = None, retrain: bool = False) -> dict[str, Any]:
    """Run (or resume) the cross-validation described in the module docstring; returns the JSON record.

    ``retrain``: a finished or interrupted fold trained with another configuration is trained again (otherwise:
    :class:`ConfigError` naming the fold and the keys).
    """
    from agsevnet.config import load_config
    from agsevnet.data.layouts import discover
    from agsevnet.evaluate.matching import Pair
    from agsevnet.evaluate.runner import evaluate_pair
    from agsevnet.evaluate.summary import case_csv_text, summary_csv_text, summary_path
    from agsevnet.infer.predictor import INFERENCE_KEYS, output_paths, predict
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
    inference = {k: cfg["inference"][k] for k in INFERENCE_KEYS}
    steps = int(cfg["train"]["steps"])
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    rows: list[dict[str, Any]] = []
    per_fold: dict[str, Any] = {}
    for k in todo:
        run = out_dir / f"fold{k}"
        start = time.perf_counter()
        fold_sets = [*sets, f"validation.fold={k}"]
        changes = fold_changes(run, load_config(config, fold_sets))
        if changes and not retrain:
            raise ConfigError(f"trained with another configuration than this study's ({'; '.join(changes)}); "
                              "pass --retrain to train this fold again, or use another --out", run)
        if changes:
            say(f"fold {k}: retraining into {run}: it was trained with another configuration ({'; '.join(changes)})")
        if not changes and _fold_done(run, steps):
            say(f"fold {k}: trained already ({run}), kept")
        else:
            resume = not changes and (run / "last.pt").is_file()
            say(f"fold {k}: training{' (resuming)' if resume else ''} into {run}")
            if resume:  # its own config (equal to the study's in every key that matters), the study's loaders
                train(data_dir, run, config=None, overrides=[f"data.workers={json.dumps(cfg['data']['workers'])}"],
                      resume=True, device=device, cache_dir=cache, progress=progress)
            else:
                train(data_dir, run, config=config, overrides=fold_sets, overwrite=run.exists(), device=device,
                      cache_dir=cache, progress=progress)
        summary = json.loads((run / "summary.json").read_text())
        val_ids = list(summary["val_cases"])
        if summary.get("validated_on_training_cases"):
            raise DataError(f"fold {k} has no held-out case (too few patients for {n_folds} folds)", run)
        missing = [c for c in val_ids if c not in specs]
        if missing:
            raise DataError(f"held-out case(s) {missing} of fold {k} are not in the dataset any more", data_dir)
        checkpoint = _final_checkpoint(run, int(summary["steps"]))
        preds = run / "preds"
        # The study's inference settings (normally those the fold's checkpoint carries; a study may re-evaluate
        # finished folds under other postprocessing with --set inference.<key>=..., and says so in its record).
        result = predict(None, checkpoint, preds, cases=[specs[c] for c in val_ids], progress=progress,
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
        stats = _statistics(fold_rows)
        per_fold[str(k)] = {
            "cases": val_ids, "checkpoint": CHECKPOINT, "checkpoint_file": str(checkpoint),
            "checkpoint_step": int(summary["steps"]), "means": stats["mean"], "worst": stats["worst"],
            "failures": stats["failures"], "train_seconds": summary.get("total_seconds"), "steps": summary.get("steps"),
            "wall_seconds_this_call": round(time.perf_counter() - start, 1),
        }
        say(format_fold(k, per_fold[str(k)]))
    record = {
        "format": FORMAT, "data": str(data_dir), "config": cfg, "folds": per_fold, "hd95_rule": hd95,
        "inference": inference, "checkpoint": CHECKPOINT,
        "checkpoint_rule": "each fold is scored with its final weights (last.pt at train.steps); in-training "
                           "validation on the held-out cases never chooses them",
        "rows": rows, **(_statistics(rows) if rows else {}),
        "train_seconds_total": float(sum(f["train_seconds"] or 0 for f in per_fold.values())),
    }
    write_json_atomic(out_dir / "crossval.json", record)
    if rows:
        write_text_atomic(out_dir / "crossval.csv", case_csv_text(_cases(rows), hd95, fields=("fold",)))
        write_text_atomic(summary_path(out_dir / "crossval.csv"), summary_csv_text(record["summary"], hd95))
    return record


# ------------------------------------------------------------------------------------------------ tables
def format_fold(k: int | str, fold: Mapping[str, Any]) -> str:
    m = fold["means"]
    return (f"fold {k}: Dice ET {m['Dice_ET']:.3f} WT {m['Dice_WT']:.3f} TC {m['Dice_TC']:.3f}, HD95 ET "
            f"{m['Hausdorff95_ET']:.1f} WT {m['Hausdorff95_WT']:.1f} TC {m['Hausdorff95_TC']:.1f} mm; worst WT "
            f"{fold['worst']['Dice_WT']:.3f} ({fold['worst']['case']}), {fold['failures']['count']} failure(s) "
            f"({len(fold['cases'])} case(s), trained {fold['train_seconds'] or 0:.0f} s, scored at its final step "
            f"{fold['checkpoint_step']})")


def format_table(record: Mapping[str, Any]) -> str:
    """The per-fold and overall table (mean over held-out patients; +- population std over patients), the worst
    patient (lowest WT Dice) and the failures (WT Dice below :data:`FAILURE_DICE_WT`) per fold and overall."""
    cols = [f"{m}_{r}" for m in TABLE_METRICS for r in REGIONS]
    short = {"Dice": "Dice", "Hausdorff95": "HD95", "Sensitivity": "Sens", "Specificity": "Spec"}
    head = (["fold", "n"] + [f"{short[c.split('_')[0]]} {c.split('_')[1]}" for c in cols]
            + ["worst WT", "failures", "train s"])
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for k, fold in record["folds"].items():
        m = fold["means"]
        lines.append(" | ".join([k, str(len(fold["cases"]))] + [_fmt(c, m[c]) for c in cols]
                                + [f"{fold['worst']['Dice_WT']:.3f}", str(fold["failures"]["count"]),
                                   f"{fold['train_seconds'] or 0:.0f}"]))
    if record["rows"]:
        m, sd = record["mean"], record["std"]
        lines.append(" | ".join(["mean", str(len(record["rows"]))] + [f"{_fmt(c, m[c])} +- {_fmt(c, sd[c])}" for c in cols]
                                + [f"{record['worst']['Dice_WT']:.3f}", str(record["failures"]["count"]),
                                   f"{record['train_seconds_total']:.0f}"]))
        worst, failures = record["worst"], record["failures"]
        lines.append(f"worst patient: {worst['case']} (fold {worst['fold']}), Dice WT {worst['Dice_WT']:.3f}; "
                     f"failures (Dice WT < {failures['threshold_Dice_WT']}): {failures['count']} of {len(record['rows'])}"
                     + (f" ({', '.join(c['case'] for c in failures['cases'])})" if failures["cases"] else ""))
        lines.append("weights: each fold's final checkpoint (last.pt at train.steps), never one chosen on its "
                     "held-out patients")
    return "\n".join(lines)


def _fmt(column: str, value: float) -> str:
    return f"{value:.1f}" if column.startswith("Hausdorff") else f"{value:.3f}"


# ------------------------------------------------------------------------------------------------- seeds
def load_study(path: str | Path) -> dict[str, Any]:
    """A study's ``crossval.json`` (``path`` is the file or the study folder); :class:`DataError` naming the file
    when it cannot be read or is not one. Records written before the worst patient and the failures were recorded
    get them from their rows."""
    path = Path(path)
    if path.is_dir():
        path = path / "crossval.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the cross-validation record: {exc}", path) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not record.get("rows"):
        raise DataError(f"not a cross-validation record with results (no \"format\": \"{FORMAT}\" and rows)", path)
    if "worst" not in record or "failures" not in record:
        record.update({k: v for k, v in _statistics(record["rows"]).items() if k in ("worst", "failures")})
    record["path"] = str(path)
    return record


def combine_studies(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Studies of one recipe trained with different seeds, side by side, and their mean and spread over seeds.

    Per study: seed, patients, mean Dice and HD95 of ET/WT/TC, the worst patient and the number of failures; over
    the studies, for each of :data:`SEED_METRICS`: ``mean``, ``sd`` (sample standard deviation, n - 1: the
    seed-to-seed spread) and ``min``/``max``. Raises :class:`ConfigError` unless there are two or more studies of
    one recipe (configs equal except for the seed and :data:`NOT_TRAINING_KEYS`, same inference settings,
    Hausdorff95 rule and patients) with different seeds: anything else would not measure the spread over seeds.
    """
    if len(paths) < 2:
        raise ConfigError("give two or more cross-validation studies (one recipe, different seeds)")
    records = [load_study(p) for p in paths]
    first = records[0]
    for other in records[1:]:
        where = Path(other["path"])
        changes = config_changes(first["config"], other["config"], ignore=lambda k: k == "seed" or _ignored(k))
        changes += [f"{key}: {first.get(key)!r} -> {other.get(key)!r}" for key in ("inference", "hd95_rule")
                    if first.get(key) != other.get(key)]
        if sorted(r["case"] for r in first["rows"]) != sorted(r["case"] for r in other["rows"]):
            changes.append("the held-out patients")
        if changes:
            raise ConfigError(f"not the recipe of {first['path']}: {'; '.join(changes)}", where)
    seeds = [r["config"].get("seed") for r in records]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
    if repeated:
        raise ConfigError(f"studies share seed(s) {repeated}: the spread over seeds needs one study per seed "
                          f"({', '.join(r['path'] for r in records if r['config'].get('seed') in repeated)})")
    studies = []
    for r in records:
        figures = {c: float(r["mean"][c]) for c in SEED_METRICS if c in r["mean"]}
        figures.update(worst_Dice_WT=float(r["worst"]["Dice_WT"]), failures=int(r["failures"]["count"]))
        studies.append({"path": r["path"], "seed": r["config"].get("seed"), "patients": len(r["rows"]),
                        "checkpoint": r.get("checkpoint", "best.pt"), "worst": r["worst"], **figures})
    over = {}
    for c in SEED_METRICS:
        values = np.asarray([s[c] for s in studies], dtype=np.float64)
        over[c] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)), "min": float(values.min()),
                   "max": float(values.max())}
    return {"format": "agsevnet-crossval-seeds", "recipe": first["config"].get("preset"), "seeds": seeds,
            "patients": len(first["rows"]), "studies": studies, "over_seeds": over}


def format_combined(combined: Mapping[str, Any]) -> str:
    """The table of :func:`combine_studies`: one row per study, then the mean, sd and min-max over seeds."""
    head = ["study", "seed", "Dice ET", "Dice WT", "Dice TC", "HD95 ET", "HD95 WT", "HD95 TC", "worst WT", "failures"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]

    def cells(get) -> list[str]:
        return [_fmt(c, get(c)) if c != "failures" else f"{get(c):.3g}" for c in SEED_METRICS]

    for s in combined["studies"]:
        row = cells(lambda c: s[c])
        row[-2] += f" ({s['worst']['case']})"
        lines.append(" | ".join([s["path"], str(s["seed"])] + row))
    over = combined["over_seeds"]
    lines.append(" | ".join(["mean", ""] + cells(lambda c: over[c]["mean"])))
    lines.append(" | ".join(["sd", ""] + cells(lambda c: over[c]["sd"])))
    lines.append(" | ".join(["min-max", ""] + [f"{a}-{b}" for a, b in zip(cells(lambda c: over[c]["min"]),
                                                                          cells(lambda c: over[c]["max"]))]))
    lines.append(f"{len(combined['studies'])} seeds ({', '.join(map(str, combined['seeds']))}) of recipe "
                 f"{combined['recipe']}, {combined['patients']} held-out patients each; sd over seeds (n - 1); "
                 f"failures: patients with Dice WT < {FAILURE_DICE_WT}")
    optimistic = [s["path"] for s in combined["studies"] if s["checkpoint"] != CHECKPOINT]
    if optimistic:
        lines.append(f"note: {', '.join(optimistic)} scored best.pt, chosen on the held-out patients (optimistic)")
    return "\n".join(lines)
