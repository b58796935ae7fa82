"""The report's interactive slice viewer: per case, every modality in axial, coronal and sagittal slices with
the prediction, the ground truth and (where ``agsevnet predict --save-uncertainty`` wrote one) the uncertainty
map as toggleable overlays, in one self-contained HTML fragment (no network, no Node, no viewer to install).

Why a viewer of our own: NiiVue (npm) would have to be vendored (a ~1 MB minified bundle in the repository and in
every report) or fetched by Node at build time; a few hundred lines of plain JavaScript on a ``<canvas>`` do what
the report needs (:file:`viewer.js`, package data, inlined into the report once).

How the volumes travel: each volume is reordered to RAS with the affine (no resampling, the same frame as
:func:`agsevnet.report.figures.to_ras`), cropped to the box holding the brain (non-zero image voxels) and every
labelled voxel plus :data:`MARGIN` voxels, quantised to :data:`LEVELS` grey levels (6 bits: intensities windowed
to the brain's 0.5-99.5 percentiles, 0 kept for the background; uncertainty values in [0, 1] likewise), and
zlib-compressed, then base64-encoded into a ``<script type="application/json">`` block. The browser inflates
them with the standard ``DecompressionStream("deflate")`` (Chrome/Edge 80+, Firefox 113+, Safari 16.4+). Where
a case's encoded volumes exceed its byte budget, every volume is resampled to a coarser grid (images and the
uncertainty map smoothed and trilinearly interpolated, labels by nearest neighbour), with the factor refined
until the case fits; the viewer states the resulting voxel size. A BraTS case (four modalities, 240x240x155)
fits a 1 MB budget at about 1.8 mm voxels.

Display: the same convention as the static figures (radiological: the patient's right on the viewer's left in
axial and coronal views, anterior on the left in sagittal views, superior up), stated on screen with the
anatomical letters at each canvas edge; pixels keep the voxels' physical aspect. The prediction is drawn as
translucent fills and the ground truth as solid outlines, both in the BraTS colours (WT green, TC red, ET yellow,
nested), so both can be shown at once; the uncertainty map as a cyan-to-magenta overlay whose opacity grows
with the value.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from agsevnet.boxes import bounding_slices
from agsevnet.errors import DataError

LEVELS = 64  # grey levels stored per voxel (6 bits): half the bytes of 8 bits after compression, no visible loss
MARGIN = 2  # voxels kept around the brain's box
CASE_BYTES = 1_000_000  # encoded bytes at most per case (a BraTS case fits at ~1.8 mm voxels)
TOTAL_BYTES = 9_000_000  # encoded bytes at most for all the viewer's cases of one report
MIN_CASE_BYTES = 150_000  # never squeeze a case below this (it would be too coarse to read)
VIEWER_MODALITIES: tuple[str, ...] = ("flair", "t1ce", "t2", "t1")  # menu order; FLAIR shown first
MODALITY_NAMES: dict[str, str] = {"flair": "FLAIR", "t1ce": "T1ce", "t2": "T2", "t1": "T1"}
UNCERTAINTY_SUFFIX = "_uncertainty"


@dataclass
class CaseVolumes:
    """One case's volumes on one voxel grid (``affine``): images by modality (float), internal labels 0-3 of the
    ground truth and the prediction (either may be None), the uncertainty map in [0, 1] (or None)."""

    case_id: str
    affine: np.ndarray
    images: dict[str, np.ndarray] = field(default_factory=dict)
    gt: np.ndarray | None = None
    pred: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    dice: Mapping[str, float] | None = None
    notes: list[str] = field(default_factory=list)


def uncertainty_path(prediction: str | Path) -> Path:
    """``<case>_uncertainty.nii.gz`` next to the prediction ``<case>.nii.gz`` (what ``agsevnet predict
    --save-uncertainty`` writes; ``.nii`` likewise)."""
    prediction = Path(prediction)
    for suffix in (".nii.gz", ".nii"):
        if prediction.name.endswith(suffix):
            return prediction.with_name(prediction.name[: -len(suffix)] + UNCERTAINTY_SUFFIX + suffix)
    return prediction.with_name(prediction.name + UNCERTAINTY_SUFFIX)


def load_uncertainty(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The uncertainty map at ``path`` (float32, clipped to [0, 1]); DataError naming the file if it is not on the
    labels' grid or holds no finite values."""
    from agsevnet.data.nifti import load_volume

    data, _ = load_volume(path, dtype=np.float32)
    if data.shape != tuple(shape):
        raise DataError(f"uncertainty map of shape {data.shape}, the case's grid is {tuple(shape)}", path)
    if not np.isfinite(data).any():
        raise DataError("uncertainty map holds no finite value", path)
    return np.clip(np.nan_to_num(data, nan=0.0), 0.0, 1.0)


def load_case(case: Mapping[str, Any], images: Mapping[str, Any]) -> CaseVolumes:
    """The volumes of one case of an evaluation record (``case["gt"]``, ``case["pred"]`` and their label
    conventions, as ``agsevnet evaluate --json`` writes them), the images ``images`` (modality ->
    :class:`agsevnet.data.case.ImageSource`) and the uncertainty map next to the prediction where there is one.
    Images or maps on another grid than the labels are left out with a note; DataError when neither label map
    can be read."""
    from agsevnet.data.nifti import load_volume

    from agsevnet.report.html import load_labels

    gt = load_labels(case.get("gt"), case.get("gt_labels"), missing_ok=True)
    pred = load_labels(case.get("pred"), case.get("pred_labels"), missing_ok=True)
    reference = gt or pred
    if reference is None:
        raise DataError(f"case {case['case']}: neither the ground truth nor the prediction can be read")
    shape = reference[0].shape
    volumes = CaseVolumes(case_id=str(case["case"]), affine=np.asarray(reference[1].affine, dtype=np.float64),
                          gt=gt[0] if gt else None, pred=pred[0] if pred else None,
                          dice={r: case["metrics"][f"Dice_{r}"] for r in ("ET", "WT", "TC")
                                if f"Dice_{r}" in case.get("metrics", {})})
    if pred is None:
        volumes.notes.append("no prediction" + (" (scored as empty)" if case.get("missing_prediction") else ""))
    if gt is None:
        volumes.notes.append("no ground truth")
    for modality in VIEWER_MODALITIES:
        source = images.get(modality)
        if source is None:
            continue
        data, _ = load_volume(source.path, source.channel, dtype=np.float32)
        if data.shape == shape:
            volumes.images[modality] = data
        else:
            volumes.notes.append(f"{MODALITY_NAMES[modality]} left out: shape {data.shape}, labels {shape}")
    if case.get("pred"):
        path = uncertainty_path(case["pred"])
        if path.is_file():
            try:
                volumes.uncertainty = load_uncertainty(path, shape)
            except DataError as exc:
                volumes.notes.append(f"uncertainty map left out: {exc}")
    return volumes


# ------------------------------------------------------------------------------------------------ encoding


def _encode(volume: np.ndarray) -> str:
    """base64 of the zlib-compressed uint8 bytes of ``volume`` in C order (index ``(x * Y + y) * Z + z``)."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(volume, dtype=np.uint8).tobytes(), 9)).decode("ascii")


def quantise_image(image: np.ndarray) -> np.ndarray:
    """uint8 levels: 0 where ``image`` is 0 (outside the brain), else 1..LEVELS-1 over the 0.5-99.5 percentiles
    of the non-zero voxels (the static figures' window)."""
    inside = image != 0
    values = image[inside]
    if values.size == 0:
        return np.zeros(image.shape, np.uint8)
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    hi = hi if hi > lo else lo + 1.0
    scaled = 1.0 + (LEVELS - 2) * np.clip((image - lo) / (hi - lo), 0.0, 1.0)
    return np.where(inside, np.rint(scaled), 0).astype(np.uint8)


def quantise_uncertainty(uncertainty: np.ndarray) -> np.ndarray:
    """uint8 levels 0..LEVELS-1 of a map in [0, 1]."""
    return np.rint(np.clip(uncertainty, 0.0, 1.0) * (LEVELS - 1)).astype(np.uint8)


def _content_box(volumes: Sequence[np.ndarray], shape: tuple[int, ...]) -> tuple[slice, ...]:
    content = np.zeros(shape, dtype=bool)
    for volume in volumes:
        content |= volume != 0
    return bounding_slices(content, MARGIN) or tuple(slice(0, n) for n in shape)


def _resample(volume: np.ndarray, shape: tuple[int, int, int], *, labels: bool) -> np.ndarray:
    """``volume`` (uint8 levels or labels) on a coarser ``shape`` grid spanning the same extent."""
    from scipy import ndimage

    factors = [new / old for new, old in zip(shape, volume.shape, strict=True)]
    if labels:
        return ndimage.zoom(volume, factors, order=0, mode="nearest", grid_mode=True)
    smoothed = ndimage.gaussian_filter(volume.astype(np.float32), [0.4 / f for f in factors], truncate=2.0)
    out = ndimage.zoom(smoothed, factors, order=1, mode="nearest", grid_mode=True)
    return np.clip(np.rint(out), 0, LEVELS - 1).astype(np.uint8)


def case_payload(volumes: CaseVolumes, budget: int = CASE_BYTES) -> dict[str, Any]:
    """The JSON-able record the viewer reads for one case: shape and spacing (RAS, after cropping and any
    resampling), the starting slices (the tumour centre), each volume encoded (see the module docstring), and
    notes (downsampling, missing files). Raises ValueError when the case has neither labels nor images."""
    from agsevnet.report.figures import to_ras, tumour_centre

    named: dict[str, np.ndarray] = {f"image:{m}": volumes.images[m] for m in VIEWER_MODALITIES
                                    if m in volumes.images}
    for key in ("gt", "pred", "uncertainty"):
        if getattr(volumes, key) is not None:
            named[key] = getattr(volumes, key)
    if not named:
        raise ValueError(f"case {volumes.case_id}: nothing to show")
    shapes = {np.shape(v) for v in named.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"case {volumes.case_id}: volumes on different or non-3D grids {sorted(shapes)}")

    # RAS, cropped to the brain and the labels, then quantised (on the crop: a third of the voxels).
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ras = {}
    for key, array in named.items():
        ras[key], spacing = to_ras(np.asarray(array), volumes.affine)
    shape = next(iter(ras.values())).shape
    box = _content_box([v for k, v in ras.items() if k != "uncertainty"], shape)
    for key, array in ras.items():
        array = array[box]
        if key.startswith("image:"):
            array = quantise_image(array)
        elif key == "uncertainty":
            array = quantise_uncertainty(array)
        ras[key] = np.ascontiguousarray(array, dtype=np.uint8)
    cropped = next(iter(ras.values())).shape
    has_labels = "gt" in ras or "pred" in ras
    centre = tumour_centre(ras.get("gt"), ras.get("pred")) if has_labels else tuple(n // 2 for n in cropped)

    # Coarser until the case fits its budget; the encoded size goes with the voxel count. The first guess comes
    # from a fast compression (zlib level 1, ~10% larger than level 9) of the full-resolution crop.
    estimate = sum(len(zlib.compress(v.tobytes(), 1)) for v in ras.values()) * 4 / 3 / 1.1
    scale = max(1.0, (estimate / budget) ** (1 / 3) * 1.05)
    grid, size, encoded = cropped, 0, {}
    for _ in range(8):
        grid = tuple(max(int(round(n / scale)), 2) for n in cropped) if scale > 1 else cropped
        encoded = {k: _encode(v if grid == cropped else _resample(v, grid, labels=k in ("gt", "pred")))
                   for k, v in ras.items()}
        size = sum(map(len, encoded.values()))
        if size <= budget:
            break
        scale = max(scale, 1.0) * (size / budget) ** (1 / 3) * 1.03
    voxel = [float(s) * old / new for s, old, new in zip(spacing, cropped, grid, strict=True)]
    start = [min(int(c * new / old), new - 1) for c, old, new in zip(centre, cropped, grid, strict=True)]
    notes = list(volumes.notes)
    if grid != cropped:
        notes.append("resampled to " + " x ".join(f"{v:.2f}" for v in voxel)
                     + " mm voxels to keep the report small")
    images = [{"key": m, "name": MODALITY_NAMES[m], "data": encoded[f"image:{m}"]}
              for m in VIEWER_MODALITIES if f"image:{m}" in encoded]
    return {
        "id": volumes.case_id,
        "shape": [int(n) for n in grid],
        "spacing": [round(v, 4) for v in voxel],
        "start": start,
        "levels": LEVELS,
        "images": images,
        "gt": encoded.get("gt"),
        "pred": encoded.get("pred"),
        "uncertainty": encoded.get("uncertainty"),
        "dice": {k: round(float(v), 4) for k, v in (volumes.dice or {}).items()},
        "notes": notes,
        "bytes": size,
    }


def case_budget(n_cases: int) -> int:
    """Encoded bytes allowed per case when a report shows ``n_cases`` cases."""
    return max(min(CASE_BYTES, TOTAL_BYTES // max(n_cases, 1)), MIN_CASE_BYTES)


# ------------------------------------------------------------------------------------------------ HTML


def _e(text: Any) -> str:
    import html

    return html.escape(str(text), quote=True)


_VIEWS = (  # (name, top, left, right, bottom) as displayed
    ("axial", "A", "R", "L", "P"),
    ("coronal", "S", "R", "L", "I"),
    ("sagittal", "S", "A", "P", "I"),
)
_REGION_SWATCHES = (("WT", "#2ca02c", "whole tumour (WT)"), ("TC", "#e3242b", "tumour core (TC)"),
                    ("ET", "#ffd400", "enhancing tumour (ET)"))

VIEWER_CSS = """
.agv{background:#fff;border:1px solid #d5dbe1;border-radius:6px;padding:.7rem .9rem;margin:.8rem 0}
.agv-controls{display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;align-items:center;font-size:.88rem}
.agv-controls label{white-space:nowrap}.agv-controls input[type=checkbox]:disabled+span{color:#9aa3ab}
.agv-orientation{font-size:.85rem;color:#1f3347;margin:.5rem 0;font-weight:600}
.agv-views{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
.agv-view{display:flex;flex-direction:column;align-items:center;font-size:.82rem}
.agv-frame{display:grid;grid-template-columns:auto auto auto;align-items:center;justify-items:center;
background:#000;color:#fff;padding:2px 4px;border-radius:4px;font-weight:700;font-size:.8rem}
.agv-frame canvas{image-rendering:pixelated;display:block;cursor:crosshair}
.agv-view input[type=range]{width:100%;margin:.3rem 0 0}.agv-readout{color:#4a5561}
.agv-legend{display:flex;flex-wrap:wrap;gap:.3rem 1rem;font-size:.82rem;margin-top:.5rem;align-items:center}
.agv-swatch{display:inline-block;width:.9rem;height:.9rem;border-radius:2px;vertical-align:middle;margin-right:.3rem}
.agv-ubar{display:inline-block;width:5rem;height:.7rem;vertical-align:middle;margin:0 .3rem;
background:linear-gradient(90deg,rgba(0,255,255,.15),rgb(255,0,255))}
.agv-probe{font-size:.82rem;color:#1d232a;min-height:1.2em;margin-top:.3rem}
.agv-status{font-size:.85rem;color:#5b6670;margin:.4rem 0 0}.agv-status.agv-error{color:#b00020}
"""


def viewer_html(payloads: Sequence[Mapping[str, Any]], index: int = 0) -> str:
    """The viewer's HTML for ``payloads`` (:func:`case_payload`), its data embedded; :func:`assets` adds the
    script and style once per report. ``index`` makes the element ids unique in the page."""
    data = json.dumps({"cases": list(payloads)}, separators=(",", ":")).replace("</", "<\\/")
    options = "".join(f'<option value="{i}">{_e(p["id"])}</option>' for i, p in enumerate(payloads))
    views = []
    for name, top, left, right, bottom in _VIEWS:
        views.append(
            f'<div class="agv-view" data-view="{name}"><div><b>{name}</b></div>'
            f'<div class="agv-frame"><span></span><span title="{_e(_DIRECTION_NAMES[top])}">{top}</span><span></span>'
            f'<span title="{_e(_DIRECTION_NAMES[left])}">{left}</span><canvas class="agv-canvas" width="1" height="1" '
            f'aria-label="{name} slice"></canvas><span title="{_e(_DIRECTION_NAMES[right])}">{right}</span>'
            f'<span></span><span title="{_e(_DIRECTION_NAMES[bottom])}">{bottom}</span><span></span></div>'
            f'<input type="range" class="agv-slice" min="0" max="0" value="0" aria-label="{name} slice">'
            f'<span class="agv-readout"></span></div>')
    swatches = "".join(f'<span><span class="agv-swatch" style="background:{colour}"></span>{_e(label)}</span>'
                       for _, colour, label in _REGION_SWATCHES)
    return f"""<div class="agv" id="agv-{index}" data-source="agv-data-{index}">
<div class="agv-controls">
<label>case <select class="agv-case">{options}</select></label>
<label>image <select class="agv-modality"></select></label>
<label><input type="checkbox" class="agv-pred" checked> <span>prediction (filled)</span></label>
<label><input type="checkbox" class="agv-gt" checked> <span>ground truth (outlined)</span></label>
<label><input type="checkbox" class="agv-unc"> <span>uncertainty</span></label>
<label>opacity <input type="range" class="agv-opacity" min="0" max="100" value="50"
 aria-label="overlay opacity"></label>
</div>
<p class="agv-orientation">Radiological convention: the patient's right is on the viewer's left (axial and coronal);
sagittal views show anterior on the left; superior is up. Scroll a view (mouse wheel or its slider) to move
through slices; click a point to centre the other two views on it; point at a voxel to read its values.</p>
<div class="agv-views">{"".join(views)}</div>
<div class="agv-probe" aria-live="polite"></div>
<div class="agv-legend">{swatches}<span>uncertainty: low<span class="agv-ubar"></span>high</span></div>
<p class="agv-status">Interactive viewer: needs JavaScript and a browser that decompresses data
(DecompressionStream: Chrome/Edge 80+, Firefox 113+, Safari 16.4+).</p>
<script type="application/json" id="agv-data-{index}">{data}</script>
</div>"""


_DIRECTION_NAMES = {"A": "anterior", "P": "posterior", "S": "superior", "I": "inferior",
                    "R": "patient's right", "L": "patient's left"}


def script() -> str:
    """The viewer's JavaScript (package data ``viewer.js``)."""
    return resources.files("agsevnet.report").joinpath("viewer.js").read_text(encoding="utf-8")


def assets() -> str:
    """The viewer's ``<style>`` and ``<script>``: once per report, after the last viewer."""
    return f"<style>{VIEWER_CSS}</style>\n<script>\n{script()}\n</script>"
