"""Summaries and files of an evaluation: per-case CSV, summary CSV, JSON, and the printed table.

Summary statistics per column, as in the paper's Table 1 and the BraTS online evaluation's statistics rows:
``Mean``, ``StdDev`` (population standard deviation, numpy's default ``ddof=0``), ``Median``,
``25quantile`` and ``75quantile`` (numpy's linear interpolation).

Files (every one written atomically):

- ``<out>.csv``: one row per case, columns ``case``, :data:`agsevnet.evaluate.metrics.COLUMNS` and
  ``hd95_rule`` (the Hausdorff95 rule that produced the ``Hausdorff95_*`` figures: ``pooled`` or ``max``);
- ``<out>_summary.csv``: one row per statistic, columns ``statistic``, the same 12 columns and ``hd95_rule``;
- with ``--lesion-wise``, both CSVs go on with :data:`agsevnet.evaluate.lesionwise.LESIONWISE_COLUMNS` after
  ``hd95_rule`` (summary statistics skip NaN), and the JSON gets per case ``lesionwise`` and at the top
  ``lesionwise_columns``, ``lesionwise_conventions`` and ``lesionwise_summary``;
- the JSON (``format: agsevnet-evaluation``): the per-case rows with the prediction and ground-truth paths,
  the label conventions used, the Hausdorff95 rule and any geometry warning, the summary, and the conventions
  of the metrics (``hd95_rule`` at the top level, with its sentence under ``conventions``).
  :func:`load_evaluation` reads it back (the report uses it to find the files of each case).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agsevnet import REGIONS, __version__
from agsevnet.errors import DataError, OutputExistsError
from agsevnet.evaluate.lesionwise import CONVENTIONS as LESIONWISE_CONVENTIONS
from agsevnet.evaluate.lesionwise import LESIONWISE_COLUMNS, summarize_lesionwise
from agsevnet.evaluate.metrics import COLUMNS, HD95_EMPTY, HD95_RULES, hd95_empty
from agsevnet.fsutil import write_json_atomic, write_text_atomic

FORMAT = "agsevnet-evaluation"
FORMAT_VERSION = 1
STATISTICS: tuple[str, ...] = ("Mean", "StdDev", "Median", "25quantile", "75quantile")

CONVENTIONS_TEXT: dict[str, Any] = {
    "regions": {"ET": "enhancing tumour", "TC": "necrotic/non-enhancing core + enhancing", "WT": "all tumour labels"},
    "hausdorff95": HD95_RULES["pooled"],
    "both_empty": {"Dice": 1.0, "Sensitivity": 1.0, "Specificity": 1.0, "Hausdorff95": 0.0},
    "one_empty": {"Dice": 0.0, "Hausdorff95": HD95_EMPTY},
    "source": "BraTS 2020 online evaluation, as reimplemented by nnU-Net (Task082_BraTS_2020.py) and medpy",
}
"""The metric conventions under the ``pooled`` Hausdorff95 rule (the default); :func:`conventions_text`
gives those of either rule."""


def conventions_text(hd95: str = "pooled") -> dict[str, Any]:
    """The metric conventions recorded in the JSON for the Hausdorff95 rule ``hd95``."""
    text = {**CONVENTIONS_TEXT, "hausdorff95": HD95_RULES[hd95],
            "one_empty": {"Dice": 0.0, "Hausdorff95": hd95_empty(hd95)}}
    if hd95 == "max":
        text["source"] = ("BraTS 2020 online evaluation (Dice, sensitivity, specificity, empty masks); Hausdorff95 "
                          "as in the paper's eq. 19 and the BraTS 2023 ranking code")
    return text


def summarize(rows: Iterable[Mapping[str, float]], columns: Iterable[str] = COLUMNS) -> dict[str, dict[str, float]]:
    """Column -> statistic -> value over ``rows`` (dicts holding ``columns``); also ``n`` per column."""
    rows = list(rows)
    out: dict[str, dict[str, float]] = {}
    for column in columns:
        values = np.asarray([float(row[column]) for row in rows], dtype=np.float64)
        if values.size == 0:
            raise ValueError("cannot summarise zero cases")
        out[column] = statistics(values)
    return out


def statistics(values: np.ndarray) -> dict[str, float]:
    """:data:`STATISTICS` of one column's values (and their count ``n``); the values must not be empty."""
    return {
        "Mean": float(values.mean()),
        "StdDev": float(values.std()),
        "Median": float(np.median(values)),
        "25quantile": float(np.percentile(values, 25)),
        "75quantile": float(np.percentile(values, 75)),
        "n": int(values.size),
    }


def region_mean(values: Mapping[str, Any], prefix: str = "") -> Any:
    """The mean of the three regions' figures ``values[prefix + r]`` for r in ET, WT, TC (the "mean Dice" of
    BraTS tables and of training's ``val_dice_mean``): a float for numbers, element-wise for arrays of equal shape
    (e.g. one value per case). ``region_mean(case["metrics"], "Dice_")``, ``region_mean({"ET": .., ...})``."""
    mean = np.mean([np.asarray(values[f"{prefix}{r}"], dtype=np.float64) for r in REGIONS], axis=0)
    return float(mean) if np.ndim(mean) == 0 else mean


def summary_path(csv_path: str | Path) -> Path:
    """``metrics.csv`` -> ``metrics_summary.csv`` (next to it)."""
    csv_path = Path(csv_path)
    return csv_path.with_name(f"{csv_path.stem}_summary{csv_path.suffix or '.csv'}")


def _csv_text(header: list[str], rows: Iterable[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _fmt(value: float) -> str:
    return repr(float(value))  # shortest round-tripping form: the CSV loses no precision


def case_csv_text(cases: Iterable[Mapping[str, Any]], hd95: str = "pooled", fields: Sequence[str] = ()) -> str:
    """CSV text of per-case rows (``{"case": id, "metrics": {...}}``, the JSON's case entries); the last
    column, ``hd95_rule``, names the Hausdorff95 rule (a case's own ``hd95_rule``, else ``hd95``). ``fields``:
    other keys of each case written as they are right after ``case`` (the cross-validation's ``fold``)."""
    cases = list(cases)
    extra = LESIONWISE_COLUMNS if cases and all("lesionwise" in case for case in cases) else ()  # --lesion-wise
    rows = ([case["case"], *(case[f] for f in fields), *(_fmt(case["metrics"][c]) for c in COLUMNS),
             case.get("hd95_rule", hd95), *(_fmt(case["lesionwise"][c]) for c in extra)] for case in cases)
    return _csv_text(["case", *fields, *COLUMNS, "hd95_rule", *extra], rows)


def summary_csv_text(summary: Mapping[str, Mapping[str, float]], hd95: str = "pooled",
                     lesionwise: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """CSV text of the summary: one row per statistic, the 12 columns and ``hd95_rule`` (then the lesion-wise
    columns' statistics when ``lesionwise``, NaN skipped)."""
    extra = LESIONWISE_COLUMNS if lesionwise else ()
    rows = ([stat, *(_fmt(summary[c][stat]) for c in COLUMNS), hd95, *(_fmt(lesionwise[c][stat]) for c in extra)]
            for stat in STATISTICS)
    return _csv_text(["statistic", *COLUMNS, "hd95_rule", *extra], rows)


def evaluation_record(evaluation) -> dict[str, Any]:
    """The JSON document of an :class:`agsevnet.evaluate.runner.Evaluation`."""
    cases = [case.to_json() for case in evaluation.cases]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "agsevnet_version": __version__,
        "pred": str(evaluation.pred_root),
        "gt": str(evaluation.gt_root),
        "labels": evaluation.labels,
        "pred_labels": evaluation.labels if evaluation.pred_labels is None else evaluation.pred_labels,
        "missing": evaluation.missing,
        "hd95_rule": evaluation.hd95,
        "strict_geometry": evaluation.strict_geometry,
        "columns": list(COLUMNS),
        "conventions": conventions_text(evaluation.hd95),
        "unmatched_predictions": list(evaluation.unmatched_predictions),
        "cases": cases,
        "summary": summarize(case["metrics"] for case in cases),
        **(_lesionwise_record(cases) if getattr(evaluation, "lesion_wise", False) else {}),
    }


def _lesionwise_record(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON keys of ``--lesion-wise``: its columns, conventions and summary (each case holds ``lesionwise``)."""
    return {"lesionwise_columns": list(LESIONWISE_COLUMNS), "lesionwise_conventions": LESIONWISE_CONVENTIONS,
            "lesionwise_summary": summarize_lesionwise([case["lesionwise"] for case in cases])}


def check_outputs(paths: Iterable[Path | None], overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` for the first existing output unless ``overwrite``."""
    for path in paths:
        if path is not None and Path(path).exists() and not overwrite:
            raise OutputExistsError("exists (pass --overwrite to replace it)", path)


def write_outputs(record: Mapping[str, Any], csv_path: Path | None = None, json_path: Path | None = None) -> list[Path]:
    """Write the per-case CSV and its ``_summary.csv`` (when ``csv_path``) and the JSON; the paths written."""
    written: list[Path] = []
    if csv_path is not None:
        hd95 = record.get("hd95_rule", "pooled")  # records written before the rule was an option were pooled
        write_text_atomic(csv_path, case_csv_text(record["cases"], hd95))
        write_text_atomic(summary_path(csv_path), summary_csv_text(record["summary"], hd95,
                                                                   record.get("lesionwise_summary")))
        written += [Path(csv_path), summary_path(csv_path)]
    if json_path is not None:
        write_json_atomic(json_path, record)
        written.append(Path(json_path))
    return written


def is_evaluation_record(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT and isinstance(obj.get("cases"), list)


def load_evaluation(path: str | Path) -> dict[str, Any]:
    """Read an evaluation JSON written by :func:`write_outputs`; :class:`DataError` naming the file otherwise."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the evaluation JSON: {exc}", path) from None
    if not is_evaluation_record(record):
        raise DataError(f"not an agsevnet evaluation JSON (no \"format\": \"{FORMAT}\")", path)
    return record


def summary_table(summary: Mapping[str, Mapping[str, float]], title: str | None = None):
    """A rich Table of the summary: one row per column (metric and region), one column per statistic."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("region")
    for stat in STATISTICS:
        table.add_column(stat, justify="right")
    for column in COLUMNS:
        metric, region = column.split("_")
        label = "HD95 (mm)" if metric == "Hausdorff95" else metric
        digits = 2 if metric == "Hausdorff95" else 4
        table.add_row(label, region, *(f"{summary[column][stat]:.{digits}f}" for stat in STATISTICS),
                      end_section=region == "TC")
    return table
