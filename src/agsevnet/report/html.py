"""``agsevnet report``: one self-contained HTML file of what a folder holds (a training run, an evaluation, a
demo), opening offline: images are embedded as base64 PNG data URIs, the CSS and the viewer's script and
volumes are inline, nothing is fetched.

The folder is searched recursively (hidden folders, TensorBoard's ``tb/`` and Python environments skipped)
and files are classified by their content, not their place:

- ``config.yaml``: a run's configuration, shown as text;
- a CSV with ``step`` and ``loss`` or ``val_dice_*`` columns: a training ``metrics.csv`` -> training curves
  (its run's ``summary.json``, next to it, is shown as a table);
- a JSON with ``"format": "agsevnet-evaluation"`` (written by ``agsevnet evaluate --json``): summary and
  per-case tables, scatter + box plots of the metrics, tumour-centre slices of up to ``max_overlays`` cases
  (the ground truth and the prediction from the paths the JSON records, the FLAIR image, or T1ce, found with
  :func:`agsevnet.data.layouts.discover` on the ground truth's dataset or case folder), an interactive viewer of
  the same cases (every modality in three orientations, the prediction, the ground truth and the uncertainty
  map next to the prediction as overlays: :mod:`agsevnet.report.viewer`) and a 3D rendering of the case with
  the median mean Dice;
- a CSV with the columns ``case`` and the 12 BraTS metrics that no evaluation JSON covers: its tables and
  plots (no overlays: the files are unknown); ``<name>_summary.csv`` next to ``<name>.csv`` is skipped (the
  summary is recomputed);
- a JSON with ``"format": "agsevnet-prepare"`` (``prepare.json``, written by ``agsevnet prepare`` and
  ``predict --prepare``): a table of the quality checks of every prepared case (brain volume, overlap with the
  atlas brain, registration metric, how far each sequence moved, coverage, warnings, time) and its picture
  (``prepare.png``: three slices of each prepared sequence with the brain outline);
- a prediction's sidecar JSON (``<case>.json`` written by ``agsevnet predict`` next to ``<case>.nii.gz``) whose
  labels no evaluation covers: predictions without a ground truth. A table (confidence, the reasons to check the
  case, tumour volumes in ml from the label file) and tumour-centre slices of the prediction over the case's image
  (its FLAIR found from the sidecar's input, or, after ``predict --prepare``, the input T1ce on whose grid the
  labels are); the atlas-space copy of a ``--prepare`` prediction is not shown twice;
- any other small CSV (e.g. the robustness experiment's table) and PNG figure: shown under "Other results".

``notes`` (e.g. "phantom-trained model: for demonstration, not for patients") is shown at the top.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agsevnet import REGIONS, __version__
from agsevnet.errors import AgsevnetError, DataError, OutputExistsError
from agsevnet.evaluate.metrics import COLUMNS
from agsevnet.evaluate.summary import STATISTICS, is_evaluation_record, region_mean, summarize
from agsevnet.fsutil import write_text_atomic

SKIP_FOLDERS: frozenset[str] = frozenset({"tb", "__pycache__", "node_modules", "site-packages"})
MAX_TABLE_ROWS = 60
MAX_OTHER_FIGURES = 24
MAX_FIGURE_BYTES = 3_000_000
OVERLAY_MODALITIES: tuple[str, ...] = ("flair", "t1ce", "t2", "t1")  # the first the case has is shown

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d232a;
background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:1.2rem 1.5rem 3rem}
header{background:#1f3347;color:#fff;padding:1.2rem 1.5rem}header h1{margin:0 0 .3rem;font-size:1.6rem}
header p{margin:0;opacity:.85;font-size:.9rem}
h2{border-bottom:2px solid #d5dbe1;padding-bottom:.25rem;margin-top:2.2rem}h3{margin-top:1.5rem}
nav{background:#fff;border:1px solid #d5dbe1;border-radius:6px;padding:.6rem 1rem;margin-top:1rem}
nav a{margin-right:1.1rem;color:#1f5f99;text-decoration:none}
.notes{background:#fff4d6;border:1px solid #e0b84a;border-left:6px solid #d49a00;border-radius:6px;
padding:.8rem 1rem;margin-top:1rem;white-space:pre-wrap}
table{border-collapse:collapse;background:#fff;font-size:.82rem;margin:.5rem 0}
th,td{border:1px solid #d5dbe1;padding:.22rem .5rem;text-align:right}th{background:#eef1f4}
td:first-child,th:first-child{text-align:left}
tr.missing td{background:#fde8e8}
.scroll{overflow-x:auto}
figure{margin:.8rem 0;background:#fff;border:1px solid #d5dbe1;border-radius:6px;padding:.5rem;display:inline-block;
max-width:100%;box-sizing:border-box}
figure img{max-width:100%;height:auto;display:block}figcaption{font-size:.85rem;color:#4a5561;margin-top:.3rem}
.grid{display:flex;flex-wrap:wrap;gap:.8rem}.grid figure{flex:1 1 460px;max-width:580px}
pre{background:#fff;border:1px solid #d5dbe1;border-radius:6px;padding:.6rem;overflow-x:auto;font-size:.8rem}
.muted{color:#5b6670;font-size:.88rem}details summary{cursor:pointer;margin:.4rem 0}
footer{color:#5b6670;font-size:.8rem;margin-top:3rem}
"""


# ------------------------------------------------------------------------------------------------ scanning


@dataclass
class Found:
    """What :func:`scan` found under a folder, classified by content."""

    configs: list[Path] = field(default_factory=list)
    training: list[Path] = field(default_factory=list)  # training metrics.csv files
    evaluations: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)  # (path, JSON record)
    evaluation_csvs: list[Path] = field(default_factory=list)  # per-case CSVs no JSON covers
    tables: list[Path] = field(default_factory=list)  # other CSVs
    figures: list[Path] = field(default_factory=list)  # PNGs
    prepared: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)  # (prepare.json, its record)
    predictions: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)  # (sidecar, its record)

    def empty(self) -> bool:
        return not (self.configs or self.training or self.evaluations or self.evaluation_csvs or self.tables
                    or self.figures or self.prepared or self.predictions)


def _csv_header(path: Path) -> list[str] | None:
    try:
        with path.open(newline="") as f:
            return next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read CSV: {exc}", path) from None


def is_training_header(header: Sequence[str]) -> bool:
    return "step" in header and ("loss" in header or any(h.startswith("val_dice_") for h in header))


def is_evaluation_header(header: Sequence[str]) -> bool:
    return bool(header) and header[0] == "case" and set(COLUMNS) <= set(header)


def _walk(directory: Path) -> Iterable[Path]:
    for folder, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_FOLDERS
                         and not (Path(folder) / d / "pyvenv.cfg").exists())
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


def scan(directory: str | Path) -> Found:
    """Classify the files under ``directory`` (see the module docstring)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError("not a folder", directory)
    found = Found()
    csvs: list[tuple[Path, list[str]]] = []
    for path in _walk(directory):
        suffix = path.suffix.lower()
        if path.name == "config.yaml":
            found.configs.append(path)
        elif suffix == ".csv":
            header = _csv_header(path)
            if header:
                csvs.append((path, header))
        elif suffix == ".json":
            try:
                record = json.loads(path.read_text()) if path.stat().st_size < 50_000_000 else None
            except (OSError, ValueError, UnicodeDecodeError):
                record = None
            if is_evaluation_record(record):
                found.evaluations.append((path, record))
            elif is_prepare_record(record):
                found.prepared.append((path, record))
            elif is_prediction_sidecar(record) and (path.parent / record["prediction"]).is_file():
                found.predictions.append((path, record))
        elif suffix == ".png" and path.stat().st_size <= MAX_FIGURE_BYTES:
            found.figures.append(path)
    covered = {frozenset(case["case"] for case in record["cases"]) for _, record in found.evaluations}
    per_case = {path for path, header in csvs if is_evaluation_header(header)}
    for path, header in csvs:
        if is_training_header(header):
            found.training.append(path)
        elif path in per_case:
            cases = frozenset(row["case"] for row in _read_csv(path))
            if cases not in covered:
                found.evaluation_csvs.append(path)
        elif header[0] == "statistic" and path.stem.endswith("_summary") and \
                path.with_name(path.name.removesuffix("_summary.csv") + ".csv") in per_case:
            continue  # the summary of a per-case CSV: recomputed from it
        else:
            found.tables.append(path)
    evaluated = {Path(case["pred"]).resolve() for _, record in found.evaluations for case in record["cases"]
                 if case.get("pred")}
    atlas_copies = {(path.parent / record["native"]["atlas_labels"]).resolve() for path, record in found.predictions
                    if isinstance(record.get("native"), dict) and record["native"].get("atlas_labels")}
    found.predictions = [(path, record) for path, record in found.predictions
                         if (path.parent / record["prediction"]).resolve() not in evaluated | atlas_copies]
    pictures = {path.parent / record["picture"] for path, record in found.prepared if record.get("picture")}
    found.figures = [p for p in found.figures if p not in pictures][:MAX_OTHER_FIGURES]
    return found


def is_prediction_sidecar(record: Any) -> bool:
    """The per-case JSON ``agsevnet predict`` writes next to a label map (recognised by its keys)."""
    return (isinstance(record, dict) and isinstance(record.get("prediction"), str) and "confidence_definition" in record
            and isinstance(record.get("labels"), str))


def is_prepare_record(record: Any) -> bool:
    """A ``prepare.json`` written by :func:`agsevnet.prepare.pipeline.prepare` (format name checked only: the
    report shows what it finds and leaves missing keys blank)."""
    return isinstance(record, dict) and record.get("format") == "agsevnet-prepare" and isinstance(record.get("qc"), dict)


# ------------------------------------------------------------------------------------------------ HTML bits


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _png(draw: Callable[[io.BytesIO], None]) -> bytes:
    """The PNG ``draw`` writes, reduced to a 256-colour palette (half the bytes; no visible change on these
    figures) to keep the report small. Pillow is matplotlib's own dependency."""
    from PIL import Image

    buffer = io.BytesIO()
    draw(buffer)
    buffer.seek(0)
    out = io.BytesIO()
    Image.open(buffer).convert("RGB").quantize(256).save(out, format="PNG", optimize=True)
    return out.getvalue()


def img_tag(png: bytes, alt: str, caption: str | None = None) -> str:
    """A ``<figure>`` with the PNG embedded as a data URI."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">{cap}</figure>'


def _fmt(value: Any, column: str = "") -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _e(value)
    if column.startswith("Hausdorff"):
        return f"{number:.2f}"
    if number.is_integer() and abs(number) < 1e15 and "." not in str(value):
        return str(int(number))
    return f"{number:.4g}" if abs(number) >= 1000 or (number != 0 and abs(number) < 1e-3) else f"{number:.4f}"


def table_html(header: Sequence[str], rows: Iterable[Sequence[Any]], row_classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def summary_html(summary: Mapping[str, Mapping[str, float]]) -> str:
    """The summary as the paper's Table 1: one row per statistic, metric/region columns."""
    header = ["", *(c.replace("_", " ") for c in COLUMNS)]
    rows = [[_e(stat), *(_fmt(summary[c][stat], c) for c in COLUMNS)] for stat in STATISTICS]
    return table_html(header, rows)


def per_case_html(cases: Sequence[Mapping[str, Any]]) -> str:
    header = ["case", *(c.replace("_", " ") for c in COLUMNS)]
    rows = [[_e(case["case"]), *(_fmt(case["metrics"][c], c) for c in COLUMNS)] for case in cases]
    classes = ["missing" if case.get("missing_prediction") else "" for case in cases]
    return table_html(header, rows, classes)


def lesionwise_html(cases: Sequence[Mapping[str, Any]]) -> str:
    """The lesion-wise figures (``agsevnet evaluate --lesion-wise``): per figure and region the mean and standard
    deviation over cases (NaN skipped, n shown), then every case's columns folded."""
    from agsevnet.evaluate.lesionwise import (
        LESION_REGIONS, LESIONWISE_COLUMNS, PANOPTICA_METRICS, RANKING_METRICS, summarize_lesionwise)

    summary = summarize_lesionwise([case["lesionwise"] for case in cases])
    header = ["figure", *(f"{r} mean ± std (n)" for r in LESION_REGIONS)]

    def cell(column: str) -> str:
        stats = summary[column]
        return f"{_fmt(stats['Mean'])} ± {_fmt(stats['StdDev'])} ({stats['n']})"

    rows = [[_e(m), *(cell(f"{m}_{r.lower()}") for r in LESION_REGIONS)] for m in (*PANOPTICA_METRICS, *RANKING_METRICS)]
    per_case = table_html(["case", *LESIONWISE_COLUMNS],
                          [[_e(case["case"]), *(_fmt(case["lesionwise"][c]) for c in LESIONWISE_COLUMNS)] for case in cases])
    return ("<h4>Lesion-wise metrics (BraTS 2023+)</h4><p class=\"muted\">all_instance_*, global_*, lesionwise_*: as "
            "brats-evaluation (panoptica) computes them, lesion-wise means over matched lesions only; brats2023_*: "
            "the BraTS 2023 ranking rule (each missed lesion and each false-positive component counts Dice 0 and "
            "HD95 374; lesions of 50 mm³ or less left out). HD95 in mm (global_hd95 in voxels).</p>"
            + table_html(header, rows)
            + f"<details><summary>per-case lesion-wise figures ({len(cases)} cases)</summary>{per_case}</details>")


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items += _flatten(value, f"{name}.")
        elif isinstance(value, list) and len(value) > 8:
            items.append((name, f"{len(value)} items"))
        else:
            items.append((name, value))
    return items


# ------------------------------------------------------------------------------------------------ sections


def _training_section(path: Path, directory: Path) -> str:
    from agsevnet.report.figures import plot_training_curves

    rows = _read_csv(path)
    rel = path.relative_to(directory)
    parts = [f"<h3>{_e(rel)}</h3>"]
    if rows:
        try:
            png = _png(lambda out: plot_training_curves(rows, out, title=f"training ({rel})"))
            caption = f"Loss, validation Dice and learning rate per step ({len(rows)} logged rows)."
            parts.append(img_tag(png, "training curves", caption))
        except ValueError as exc:
            parts.append(f'<p class="muted">no curves: {_e(exc)}</p>')
        validated = [r for r in rows if r.get("val_dice_mean")]
        if validated:
            last = validated[-1]
            best = max(validated, key=lambda r: float(r["val_dice_mean"]))
            cols = [c for c in ("val_dice_ET", "val_dice_WT", "val_dice_TC", "val_dice_mean") if c in last]
            parts.append(table_html(["", "step", *cols], [
                ["last validation", _fmt(last["step"]), *(_fmt(last[c]) for c in cols)],
                ["best validation", _fmt(best["step"]), *(_fmt(best[c]) for c in cols)],
            ]))
    summary = path.with_name("summary.json")
    if summary.is_file():
        try:
            data = json.loads(summary.read_text())
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict):
            items = [[_e(key), _fmt(value) if isinstance(value, float) else _e(value)] for key, value in _flatten(data)]
            parts.append(f"<details><summary>run summary ({_e(summary.relative_to(directory))})</summary>"
                         f"{table_html(['key', 'value'], items)}</details>")
    return "\n".join(parts)


def _short(path: str, directory: Path) -> str:
    """``path`` relative to the reported folder where it lies inside it."""
    inside = Path(path).absolute().is_relative_to(directory.absolute())
    return os.path.relpath(path, directory) if inside else path


def _mean_dice(case: Mapping[str, Any]) -> float:
    return region_mean(case["metrics"], "Dice_")


def _pick_cases(cases: Sequence[Mapping[str, Any]], limit: int) -> list[Mapping[str, Any]]:
    """Up to ``limit`` cases spread over the ranking by mean Dice (worst and best included)."""
    if limit <= 0:
        return []
    if len(cases) <= limit:
        return list(cases)
    ranked = sorted(cases, key=_mean_dice)
    picks = sorted({int(round(i)) for i in np.linspace(0, len(ranked) - 1, limit)})
    return [ranked[i] for i in picks]


class _ImageFinder:
    """Finds a case's image with :func:`agsevnet.data.layouts.discover` (results cached per folder)."""

    def __init__(self) -> None:
        self._specs: dict[Path, list[Any]] = {}

    def _discover(self, folder: Path) -> list[Any]:
        from agsevnet.data.layouts import discover

        if folder not in self._specs:
            try:
                self._specs[folder] = discover(folder)
            except AgsevnetError:
                self._specs[folder] = []
        return self._specs[folder]

    def images(self, case_id: str, gt: Path | None, gt_root: Path | None) -> dict[str, Any]:
        """The case's images (modality -> ImageSource) where its dataset is found, else ``{}``."""
        folders = [gt_root] if gt_root is not None and gt_root.is_dir() else []
        if gt is not None:  # a case folder, or the dataset above MSD / nnU-Net labelsTr
            folders += [gt.parent, *([gt.parent.parent] if gt.parent.name.startswith("labels") else [])]
        for folder in folders:
            for spec in self._discover(folder):
                same_label = gt is not None and spec.label is not None and Path(spec.label).resolve() == gt.resolve()
                if (same_label or spec.case_id == case_id) and spec.images:
                    return dict(spec.images)
        return {}

    def find(self, case_id: str, gt: Path | None, gt_root: Path | None) -> tuple[Any, str] | None:
        """(ImageSource, modality) of the case's first available modality in :data:`OVERLAY_MODALITIES`."""
        images = self.images(case_id, gt, gt_root)
        for modality in OVERLAY_MODALITIES:
            if modality in images:
                return images[modality], modality
        return None


def load_labels(path: str | None, convention: str | None, *, missing_ok: bool = False) -> tuple[np.ndarray, Any] | None:
    """Internal labels and image of a label file an evaluation record names (None without a path or convention, or,
    with ``missing_ok``, when the file is gone); DataError naming it when its values no longer fit the convention."""
    from agsevnet.data.labels import to_internal
    from agsevnet.data.nifti import load_volume

    if not path or not convention or (missing_ok and not Path(path).is_file()):
        return None
    data, img = load_volume(path)
    try:
        return to_internal(data, convention), img
    except ValueError as exc:  # the file changed since it was evaluated
        raise DataError(str(exc), path) from None


def _overlay_png(case: Mapping[str, Any], finder: _ImageFinder, gt_root: Path | None) -> tuple[bytes, str]:
    from agsevnet.data.nifti import load_volume
    from agsevnet.report.figures import plot_case_overlay

    gt = load_labels(case.get("gt"), case.get("gt_labels"))
    pred = load_labels(case.get("pred"), case.get("pred_labels"))
    reference = gt or pred
    if reference is None:
        raise DataError(f"case {case['case']}: neither the ground truth nor the prediction can be read")
    affine = reference[1].affine
    shape = reference[0].shape
    pred_labels = pred[0] if pred else np.zeros(shape, dtype=np.uint8)  # a missing prediction is empty
    found = finder.find(case["case"], Path(case["gt"]) if case.get("gt") else None, gt_root)
    image, image_name = None, "no image"
    if found is not None:
        source, modality = found
        data, _ = load_volume(source.path, source.channel, dtype=np.float32)
        if data.shape == shape:
            image, image_name = data, {"flair": "FLAIR", "t1ce": "T1ce", "t1": "T1", "t2": "T2"}[modality]
    dice = {r: case["metrics"][f"Dice_{r}"] for r in REGIONS}
    png = _png(lambda out: plot_case_overlay(image, gt[0] if gt else None, pred_labels, affine, out,
                                             case_id=case["case"], dice=dice, image_name=image_name, dpi=72))
    caption = f"{case['case']}: {image_name if image is not None else 'image not found'}, ground truth, prediction"
    if case.get("missing_prediction"):
        caption += " (no prediction: scored as empty)"
    return png, caption


def _surface_png(case: Mapping[str, Any]) -> bytes:
    from agsevnet.report.figures import plot_surfaces_3d

    gt = load_labels(case.get("gt"), case.get("gt_labels"))
    pred = load_labels(case.get("pred"), case.get("pred_labels"))
    maps = {name: loaded[0] for name, loaded in (("ground truth", gt), ("prediction", pred)) if loaded is not None}
    affine = (gt or pred)[1].affine
    return _png(lambda out: plot_surfaces_3d(maps, affine, out, title=f"case {case['case']}"))


def _viewer_html(cases: Sequence[Mapping[str, Any]], finder: _ImageFinder, gt_root: Path | None, index: int,
                 progress: bool) -> str:
    """The interactive viewer (:mod:`agsevnet.report.viewer`) of ``cases``, each within its share of the byte
    budget; cases that cannot be read are listed under it."""
    from tqdm import tqdm

    from agsevnet.report import viewer

    budget = viewer.case_budget(len(cases))
    payloads, skipped = [], []
    for case in tqdm(cases, desc="report: viewer", unit="case", disable=not progress, dynamic_ncols=True):
        try:
            gt = Path(case["gt"]) if case.get("gt") else None
            volumes = viewer.load_case(case, finder.images(case["case"], gt, gt_root))
            payloads.append(viewer.case_payload(volumes, budget))
        except (AgsevnetError, ValueError) as exc:
            skipped.append(f"{case['case']}: {exc}")
    if not payloads:
        return "".join(f'<p class="muted">viewer: {_e(s)}</p>' for s in skipped)
    notes = "".join(f'<p class="muted">not in the viewer: {_e(s)}</p>' for s in skipped)
    return viewer.viewer_html(payloads, index) + notes


def _evaluation_section(title: str, cases: list[dict[str, Any]], *, gt_root: Path | None, overlays: int,
                        with_files: bool, progress: bool, viewer_index: int | None = None) -> tuple[str, int]:
    """The HTML of one evaluation and the number of overlays drawn; with ``viewer_index``, the interactive
    viewer of the same cases (element ids numbered by it)."""
    from tqdm import tqdm

    from agsevnet.report.figures import plot_metric_distributions

    summary = summarize(case["metrics"] for case in cases)
    rows = [case["metrics"] for case in cases]
    parts = [f"<h3>{_e(title)}</h3>", f'<p class="muted">{len(cases)} case(s). Mean, population standard deviation, '
             "median and quartiles per metric, as in the paper's Table 1.</p>", summary_html(summary)]
    png = _png(lambda out: plot_metric_distributions(rows, out, title=title))
    parts.append(img_tag(png, "metric distributions", "Each point is a case; boxes span the quartiles with the "
                         "median line, whiskers reach 1.5 times the interquartile range."))
    parts.append(f"<details><summary>per-case metrics ({len(cases)} cases)</summary>{per_case_html(cases)}</details>")
    if cases and all("lesionwise" in case for case in cases):  # evaluated with --lesion-wise
        parts.append(lesionwise_html(cases))
    drawn = 0
    if with_files:
        finder = _ImageFinder()
        chosen = _pick_cases(cases, overlays)
        figures = []
        for case in tqdm(chosen, desc="report: overlays", unit="case", disable=not progress, dynamic_ncols=True):
            try:
                png, caption = _overlay_png(case, finder, gt_root)
            except AgsevnetError as exc:
                figures.append(f'<p class="muted">{_e(case["case"])}: not drawn ({_e(exc)})</p>')
                continue
            figures.append(img_tag(png, f"slices of {case['case']}", caption))
            drawn += 1
        if chosen:
            note = "" if len(chosen) == len(cases) else \
                f" ({len(chosen)} of {len(cases)} cases, spread from the worst to the best mean Dice)"
            parts.append(f"<h4>Tumour-centre slices{_e(note)}</h4>")
            parts.append('<p class="muted">Radiological convention: the patient\'s right on the left. '
                         "Whole tumour green, tumour core red, enhancing tumour yellow.</p>")
            parts.append(f'<div class="grid">{"".join(figures)}</div>')
            if viewer_index is not None:
                parts.append("<h4>Interactive viewer</h4>")
                parts.append(_viewer_html(chosen, finder, gt_root, viewer_index, progress))
            median = float(np.median([_mean_dice(case) for case in cases]))
            typical = min(cases, key=lambda case: abs(_mean_dice(case) - median))
            try:
                parts.append("<h4>3D rendering</h4>")
                parts.append(img_tag(_surface_png(typical), f"3D rendering of {typical['case']}",
                                     f"Case {typical['case']} (median mean Dice): marching-cubes surfaces, "
                                     "WT translucent green, non-enhancing core red, enhancing tumour yellow."))
            except AgsevnetError as exc:
                parts.append(f'<p class="muted">3D rendering not drawn ({_e(exc)})</p>')
    return "\n".join(parts), drawn


def _table_section(path: Path, directory: Path) -> str:
    rows = _read_csv(path)
    if not rows:
        return ""
    header = list(rows[0])
    shown = rows[:MAX_TABLE_ROWS]
    more = f'<p class="muted">{len(rows) - len(shown)} more rows in the file.</p>' if len(rows) > len(shown) else ""
    return (f"<h3>{_e(path.relative_to(directory))}</h3>"
            + table_html(header, [[_fmt(row.get(h, ""), h) for h in header] for row in shown]) + more)


def _number(value: Any, spec: str) -> str:
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return ""


def _prepared_section(prepared: Sequence[tuple[Path, Mapping[str, Any]]], directory: Path) -> str:
    """The quality checks of the prepared cases as one table (a row per case, warnings in red), then each case's
    picture (``prepare.png``) where it is there."""
    header = ["case", "brain (ml)", "atlas Dice", "T1ce->atlas MI", "moved to T1ce (mm / deg)", "least coverage",
              "seconds", "warnings"]
    rows, classes, pictures = [], [], []
    for path, record in prepared:
        qc = record["qc"]
        moved = "; ".join(f"{m} {v.get('translation_mm', float('nan')):.1f} / {v.get('rotation_deg', float('nan')):.1f}"
                          for m, v in (qc.get("motion") or {}).items())
        coverage = qc.get("coverage") or {}
        least = min(coverage.items(), key=lambda kv: kv[1]) if coverage else None
        warnings = qc.get("warnings") or []
        rows.append([record.get("case_id", path.parent.name), _number(qc.get("brain_volume_ml"), ".1f"),
                     _number(qc.get("atlas_dice"), ".3f"), _number(qc.get("atlas_metric"), ".3f"), moved,
                     f"{least[0]} {100 * least[1]:.0f}%" if least else "",
                     _number((record.get("seconds") or {}).get("total"), ".0f"), "; ".join(warnings) or "none"])
        classes.append("missing" if warnings else "")
        picture = path.parent / record["picture"] if record.get("picture") else None
        if picture is not None and picture.is_file() and picture.stat().st_size <= MAX_FIGURE_BYTES:
            data = picture.read_bytes()
            if data[:8] == b"\x89PNG\r\n\x1a\n":
                pictures.append(img_tag(data, picture.name, f"{record.get('case_id', '')}: "
                                        f"{picture.relative_to(directory)} (brain outline in red)"))
    intro = ('<p class="muted">Quality checks of <code>agsevnet prepare</code>: rows in red have a check out of its '
             "usual range (brain 800-2000 ml, a sequence moved more than 30 mm or 20 deg, less than 90% of the brain "
             "covered, the brain overlapping the atlas brain with Dice below 0.8). Look at the pictures before using "
             "the labels: uncovered wedges, scalp left in a sequence, misaligned sequences.</p>")
    cells = [[_e(v) for v in row] for row in rows]
    return intro + table_html(header, cells, classes) + '<div class="grid">' + "".join(pictures) + "</div>"


def _prediction_image(record: Mapping[str, Any], shape: tuple[int, ...], finder: _ImageFinder
                      ) -> tuple[np.ndarray | None, str]:
    """The image to draw a prediction over: the input T1ce of a ``--prepare`` prediction (the labels are on its
    grid), else the first of FLAIR, T1ce, T2, T1 of the sidecar's input case; None when none fits the labels."""
    from agsevnet.data.nifti import load_volume

    candidates: list[tuple[str, int | None, str]] = []
    native = record.get("native")
    if isinstance(native, dict) and native.get("reference"):
        candidates.append((str(native["reference"]), None, "T1ce"))
    elif record.get("input"):
        found = finder.find(str(record.get("case_id", "")), None, Path(str(record["input"])))
        if found is not None:
            source, modality = found
            candidates.append((str(source.path), source.channel, {"flair": "FLAIR", "t1ce": "T1ce", "t1": "T1",
                                                                  "t2": "T2"}[modality]))
    for path, channel, name in candidates:
        try:
            data, _ = load_volume(path, channel, dtype=np.float32)
        except AgsevnetError:
            continue
        if data.shape == shape:
            return data, name
    return None, "no image"


def _predictions_section(predictions: Sequence[tuple[Path, Mapping[str, Any]]], directory: Path, overlays: int,
                         progress: bool) -> tuple[str, int]:
    """Predictions without a ground truth: a table (confidence, reasons to check, volumes) and up to ``overlays``
    slice figures of the prediction over its image. Returns the HTML and the number of figures drawn."""
    from tqdm import tqdm

    from agsevnet.data.labels import region_masks
    from agsevnet.infer.shard import check_reasons
    from agsevnet.report.figures import plot_case_overlay

    finder = _ImageFinder()
    header = ["case", "confidence", "check", "WT (ml)", "TC (ml)", "ET (ml)", "labels"]
    rows, classes, figures_html, drawn = [], [], [], 0
    for path, record in tqdm(predictions, desc="report: predictions", unit="case", disable=not progress):
        case_id = str(record.get("case_id", path.stem))
        label_path = path.parent / record["prediction"]
        try:
            labels, img = load_labels(str(label_path), record["labels"])
        except (AgsevnetError, ValueError) as exc:
            rows.append([case_id, "", "", "", "", "", f"cannot be read: {exc}"])
            classes.append("missing")
            continue
        ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        volumes = {r: float(np.count_nonzero(m)) * ml for r, m in region_masks(labels).items()}
        confidence = record.get("confidence")
        reasons = check_reasons(confidence, record.get("flags") or [], record.get("confidence_threshold"))
        rows.append([case_id, _number(confidence, ".3f"), "; ".join(reasons) or "no",
                     *(f"{volumes[r]:.1f}" for r in ("WT", "TC", "ET")), str(label_path.relative_to(directory))])
        classes.append("missing" if record.get("check") else "")
        if drawn < overlays and np.any(labels):
            image, image_name = _prediction_image(record, labels.shape, finder)
            png = _png(lambda out, image=image, image_name=image_name, labels=labels, img=img, case_id=case_id:
                       plot_case_overlay(image, None, labels, img.affine, out, case_id=case_id,
                                         image_name=image_name, dpi=72))
            figures_html.append(img_tag(png, f"prediction of {case_id}",
                                        f"{case_id}: prediction over {image_name}"))
            drawn += 1
    intro = ('<p class="muted">Predictions without a ground truth (no evaluation covers them): rows in red are '
             "listed under \"check these\" (low confidence or a warning sign); volumes are counted in the label "
             "files.</p>")
    cells = [[_e(v) for v in row] for row in rows]
    return intro + table_html(header, cells, classes) + '<div class="grid">' + "".join(figures_html) + "</div>", drawn


# ------------------------------------------------------------------------------------------------ the report


def build_report(
    directory: str | Path,
    out: str | Path,
    *,
    title: str = "agsevnet report",
    notes: str | None = None,
    max_overlays: int = 12,
    overwrite: bool = False,
    progress: bool = True,
    viewer: bool = True,
) -> Path:
    """Write one self-contained HTML report of what ``directory`` holds to ``out`` (atomically); returns ``out``.

    ``max_overlays``: at most this many per-case slice figures in all (the HTML grows by ~150 kB each).
    ``viewer``: add the interactive slice viewer of the same cases (:mod:`agsevnet.report.viewer`; at most
    ~1 MB per case, 9 MB per evaluation).
    Raises :class:`DataError` when nothing reportable is found, :class:`OutputExistsError` when ``out`` exists
    and ``overwrite`` is false.
    """
    directory, out = Path(directory), Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError("exists (pass --overwrite to replace it)", out)
    found = scan(directory)
    if found.empty():
        raise DataError("nothing to report: no config.yaml, training metrics.csv, evaluation JSON/CSV, "
                        "prediction, prepare.json, table or figure found", directory)

    # Results first (evaluation, then training curves), then the configuration (folded: it is long), then the rest.
    sections: list[tuple[str, str, str]] = []  # (anchor, heading, html)
    budget = max_overlays
    for path, record in found.evaluations:
        pred_root, gt_root = record.get("pred", "?"), record.get("gt")
        body, drawn = _evaluation_section(
            f"predictions: {_short(pred_root, directory)}, ground truth: {_short(gt_root or '?', directory)}",
            record["cases"], gt_root=Path(gt_root) if gt_root else None, overlays=budget, with_files=True,
            progress=progress, viewer_index=len(sections) if viewer else None)
        budget -= drawn
        sections.append((f"evaluation-{len(sections)}", f"Evaluation ({path.relative_to(directory)})", body))
    for path in found.evaluation_csvs:
        cases = [{"case": row["case"], "metrics": {c: float(row[c]) for c in COLUMNS}} for row in _read_csv(path)]
        body, _ = _evaluation_section(str(path.relative_to(directory)), cases, gt_root=None, overlays=0,
                                      with_files=False, progress=progress)
        sections.append((f"evaluation-{len(sections)}", f"Evaluation ({path.relative_to(directory)})", body))
    if found.predictions:
        body, drawn = _predictions_section(found.predictions, directory, budget, progress)
        budget -= drawn
        sections.append(("predictions", "Predictions", body))
    if found.prepared:
        sections.append(("prepared", "Prepared cases", _prepared_section(found.prepared, directory)))
    if found.training:
        sections.append(("training", "Training", "\n".join(_training_section(p, directory) for p in found.training)))
    for path in found.configs:
        text = path.read_text(errors="replace")
        lines = text.count("\n") + 1
        sections.append((f"config-{len(sections)}", f"Configuration: {path.relative_to(directory)}",
                         f"<details><summary>{lines} lines (click to show)</summary><pre>{_e(text)}</pre></details>"))
    others = [_table_section(p, directory) for p in found.tables]
    others += [img_tag(p.read_bytes(), p.name, str(p.relative_to(directory))) for p in found.figures
               if p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"]
    if any(others):
        sections.append(("other", "Other results", "\n".join(o for o in others if o)))

    generated = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    nav = "".join(f'<a href="#{anchor}">{_e(heading)}</a>' for anchor, heading, _ in sections)
    notes_html = f'<section id="notes" class="notes">{_e(notes)}</section>' if notes else ""
    body = "\n".join(f'<section id="{anchor}"><h2>{_e(heading)}</h2>\n{content}</section>'
                     for anchor, heading, content in sections)
    if 'class="agv"' in body:  # the viewer's style and script, once, inline
        from agsevnet.report.viewer import assets

        body += "\n" + assets()
    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header><h1>{_e(title)}</h1>
<p>{_e(directory.resolve())} &middot; generated {_e(generated)} by agsevnet {_e(__version__)}</p></header>
<main>
{notes_html}
<nav>{nav}</nav>
{body}
<footer>Metrics as the BraTS 2020 online evaluation computes them (Dice, sensitivity, specificity, Hausdorff95 in mm;
both masks empty: Dice 1, Hausdorff95 0; one empty: Dice 0, Hausdorff95 373.13 mm). Report written by agsevnet
{_e(__version__)}; it embeds every image and needs no network.</footer>
</main>
</body>
</html>
"""
    write_text_atomic(out, document)
    return out
