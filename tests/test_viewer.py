"""The report's interactive viewer (agsevnet.report.viewer, viewer.js): what it embeds (RAS crop, quantisation,
byte budget, the uncertainty map picked up next to the prediction) and, in headless Chromium, that it draws the
slices the static figures draw, that the slice sliders and every overlay control change the picture, and that
no script error occurs. The browser tests skip, saying so, where Chromium is absent."""

from __future__ import annotations

import base64
import html as htmllib
import importlib.util
import json
import re
import shutil
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from agsevnet.data.labels import from_internal
from agsevnet.report import figures, viewer
from helpers import run_cli
from test_evaluate_cli import AFFINE, SHAPE, brats_dataset, predictions, save, tumour

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("screenshot_report", REPO / "scripts" / "screenshot_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _chromium() -> str:
    browser = _script().find_chromium()
    if browser is None:
        pytest.skip("Chromium not installed (Debian: apt-get install chromium); CI installs it where it can")
    return browser


def decode(b64: str, shape) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(b64)), np.uint8).reshape(shape)


def payloads(document: str) -> list[dict]:
    blocks = re.findall(r'<script type="application/json" id="agv-data-\d+">(.*?)</script>', document, re.S)
    return [case for block in blocks for case in json.loads(block)["cases"]]


def uncertainty_map(labels: np.ndarray) -> np.ndarray:
    """A stand-in for ``predict --save-uncertainty``'s map: 1 on the tumour's border, fading away from it."""
    from scipy import ndimage

    inside = labels > 0
    distance = ndimage.distance_transform_edt(~inside) + ndimage.distance_transform_edt(inside)
    return np.exp(-((distance - 1) / 2.0) ** 2).astype(np.float32)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    """Three small cases, predictions, an uncertainty map for the first only, their evaluation and report."""
    root = tmp_path_factory.mktemp("viewer")
    cases = {f"BraTS20_Training_00{i}": tumour(i) for i in range(1, 4)}
    brats_dataset(root / "data", cases)
    preds = predictions(root / "pred", cases)
    first = next(iter(cases))
    save(root / "pred" / f"{first}_uncertainty.nii.gz", uncertainty_map(preds[first]))
    assert run_cli(["evaluate", str(root / "pred"), str(root / "data"), "--json", str(root / "eval.json")]) == 0
    out = root / "report.html"
    assert run_cli(["report", str(root), "-o", str(out)]) == 0
    return root, out.read_text()


# ------------------------------------------------------------------------------------------------ embedding


def test_uncertainty_path():
    assert viewer.uncertainty_path("/p/BraTS_001.nii.gz") == Path("/p/BraTS_001_uncertainty.nii.gz")
    assert viewer.uncertainty_path("p/x.nii") == Path("p/x_uncertainty.nii")


def test_report_embeds_every_case_in_ras_with_the_uncertainty_of_the_first(report):
    root, document = report
    shown = payloads(document)
    assert [p["id"] for p in shown] == [f"BraTS20_Training_00{i}" for i in range(1, 4)]
    assert document.count('class="agv"') == 1 and "Radiological convention" in document
    flair = nib.load(root / "data" / shown[0]["id"] / f"{shown[0]['id']}_flair.nii.gz")
    expected_ras, spacing = figures.to_ras(np.asarray(flair.dataobj), flair.affine)
    for payload in shown:
        # No crop (the test images are non-zero everywhere), no resampling (small).
        assert payload["shape"] == list(expected_ras.shape) and payload["spacing"] == pytest.approx(spacing)
        assert [i["key"] for i in payload["images"]] == ["flair", "t1ce", "t2", "t1"]
        gt = nib.load(root / "data" / payload["id"] / f"{payload['id']}_seg.nii.gz")
        gt_ras, _ = figures.to_ras(np.asarray(gt.dataobj), gt.affine)
        assert np.array_equal(decode(payload["gt"], payload["shape"]), np.array([0, 1, 2, 0, 3])[gt_ras])
    first = shown[0]
    image = decode(first["images"][0]["data"], first["shape"])
    assert np.array_equal(image, viewer.quantise_image(expected_ras.astype(np.float32)))
    assert 1 <= image.min() and image.max() == viewer.LEVELS - 1
    unc = decode(first["uncertainty"], first["shape"])
    expected_unc = figures.to_ras(uncertainty_map(tumour(1)), AFFINE)[0]  # the first prediction is the truth
    assert np.abs(unc / (viewer.LEVELS - 1) - expected_unc).max() <= 0.5 / (viewer.LEVELS - 1) + 1e-6
    assert shown[1]["uncertainty"] is None and shown[2]["uncertainty"] is None
    centre = figures.tumour_centre(decode(first["gt"], first["shape"]), None)
    assert first["start"] == list(centre)


def test_payload_crops_to_the_brain_and_keeps_labels():
    shape = (40, 44, 30)
    image = np.zeros(shape, np.float32)
    image[8:30, 5:40, 3:25] = np.random.default_rng(0).uniform(100, 900, (22, 35, 22))
    labels = np.zeros(shape, np.uint8)
    labels[12:20, 10:20, 8:16] = 2
    labels[14:18, 12:18, 10:14] = 3
    affine = np.diag([1.0, 1.0, 1.0, 1.0])  # RAS already: no reordering
    payload = viewer.case_payload(viewer.CaseVolumes("c", affine, images={"t2": image}, gt=labels, pred=labels))
    m = viewer.MARGIN
    assert payload["shape"] == [22 + 2 * m, 35 + 2 * m, 22 + 2 * m] and payload["notes"] == []
    box = (slice(8 - m, 30 + m), slice(5 - m, 40 + m), slice(3 - m, 25 + m))
    assert np.array_equal(decode(payload["pred"], payload["shape"]), labels[box])
    assert payload["gt"] == payload["pred"] and payload["uncertainty"] is None
    assert [i["name"] for i in payload["images"]] == ["T2"]
    assert sum(len(payload[k]) for k in ("gt", "pred")) + len(payload["images"][0]["data"]) == payload["bytes"]


def test_payload_fits_its_budget_by_resampling():
    rng = np.random.default_rng(1)
    shape = (96, 100, 64)  # noise: the worst case for compression
    images = {m: rng.uniform(1, 1000, shape).astype(np.float32) for m in viewer.VIEWER_MODALITIES}
    labels = np.zeros(shape, np.uint8)
    labels[30:60, 30:70, 20:40] = 2
    labels[40:50, 40:60, 25:35] = 1
    labels[43:47, 45:55, 28:32] = 3
    spacing_in = (1.0, 1.0, 1.5)
    affine = np.diag([*spacing_in, 1.0])
    budget = 150_000
    payload = viewer.case_payload(viewer.CaseVolumes("c", affine, images=images, gt=labels, pred=None,
                                                     uncertainty=rng.uniform(0, 1, shape)), budget)
    assert payload["bytes"] <= budget
    assert payload["bytes"] > budget * 0.6  # not far coarser than it needs to be
    assert all(new < old for new, old in zip(payload["shape"], shape, strict=True))
    assert payload["spacing"] == pytest.approx([o * s / n for o, s, n in zip(shape, spacing_in, payload["shape"],
                                                                                strict=True)], abs=1e-4)
    assert "resampled to" in payload["notes"][0]
    gt = decode(payload["gt"], payload["shape"])
    assert set(np.unique(gt)) == {0, 1, 2, 3}  # nearest neighbour: no label invented, none lost
    assert (gt == 3).sum() * np.prod(payload["spacing"]) == pytest.approx((labels == 3).sum() * 1.5, rel=0.5)
    for item in payload["images"]:
        assert decode(item["data"], payload["shape"]).max() < viewer.LEVELS


def test_case_budget_keeps_ten_cases_under_the_total():
    assert viewer.case_budget(1) == viewer.CASE_BYTES
    assert 10 * viewer.case_budget(10) <= viewer.TOTAL_BYTES <= 9_000_000
    assert viewer.case_budget(1000) == viewer.MIN_CASE_BYTES


def test_an_uncertainty_map_on_another_grid_is_left_out_with_a_note(tmp_path):
    labels = tumour(2)
    gt = save(tmp_path / "gt" / "c.nii.gz", from_internal(labels, "brats2020"))
    pred = save(tmp_path / "pred" / "c.nii.gz", from_internal(labels, "brats2020"))
    save(tmp_path / "pred" / "c_uncertainty.nii.gz", np.zeros((4, 4, 4), np.float32))
    case = {"case": "c", "gt": str(gt), "pred": str(pred), "gt_labels": "brats2020", "pred_labels": "brats2020",
            "metrics": {"Dice_ET": 1.0, "Dice_WT": 1.0, "Dice_TC": 1.0}}
    volumes = viewer.load_case(case, {})
    assert volumes.uncertainty is None and "uncertainty map left out" in volumes.notes[0]
    assert "c_uncertainty.nii.gz" in volumes.notes[0]
    save(tmp_path / "pred" / "c_uncertainty.nii.gz", np.full(SHAPE, 1.7, np.float32))  # clipped into [0, 1]
    assert viewer.load_case(case, {}).uncertainty.max() == 1.0


def test_no_viewer_without_an_evaluation_json_or_when_turned_off(report, tmp_path):
    from agsevnet.report.html import build_report

    root, _ = report
    out = build_report(root, tmp_path / "plain.html", viewer=False, progress=False)
    document = out.read_text()
    assert 'class="agv"' not in document and "<script" not in document and "slices of" in document


# ------------------------------------------------------------------------------------------------ in a browser


def test_viewer_in_headless_chromium_slider_overlays_no_errors(report, tmp_path):
    browser = _chromium()
    _, document = report
    result = _script().check_viewer(browser, document, tmp_path)
    assert result["errors"] == [] and result["ready"] is True and result["viewers"] == 1
    assert result["changed"] == {"agv-pred": True, "agv-gt": True, "agv-unc": True, "agv-opacity": True,
                                 "agv-modality": True, "slider": True, "agv-case": True}
    assert result["slices"][0] != result["slices"][1]
    assert result["uncertainty"] == "enabled" and result["uncertaintySecond"] == "disabled"
    assert result["clickMoved"] is True
    assert re.fullmatch(r"voxel \d+, \d+, \d+ .*; ground truth: [a-z /-]+; prediction: [a-z /-]+; "
                        r"uncertainty [01]\.\d\d", result["probe"]), result["probe"]
    assert _script().viewer_problems(result) == []
    # A broken viewer is reported: data that does not inflate.
    first = payloads(document)[0]["images"][0]["data"]
    broken = document.replace(first, base64.b64encode(b"not zlib").decode(), 1)
    (tmp_path / "broken").mkdir()
    problems = _script().viewer_problems(_script().check_viewer(browser, broken, tmp_path / "broken"))
    assert problems and any("error" in p for p in problems)


DUMP_SCRIPT = """<script>
window.addEventListener("load", function () {
  var root = document.querySelector(".agv");
  (function wait(tries) {
    if (root.getAttribute("data-ready") !== "true" && tries > 0) {
      return setTimeout(function () { wait(tries - 1); }, 50);
    }
    ["agv-pred", "agv-gt"].forEach(function (c) {
      var box = root.querySelector("." + c); box.checked = false; box.dispatchEvent(new Event("change")); });
    var out = {};
    root.querySelectorAll(".agv-view").forEach(function (view) {
      var canvas = view.querySelector("canvas");
      var data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      var red = "";
      for (var i = 0; i < data.length; i += 4) red += String.fromCharCode(data[i]);
      out[view.getAttribute("data-view")] = {w: canvas.width, h: canvas.height,
                                             slice: +canvas.getAttribute("data-slice"), red: btoa(red)};
    });
    var pre = document.createElement("pre"); pre.id = "dump"; pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  })(200);
});
</script>"""


def test_viewer_draws_the_static_figures_slices_radiologically(report, tmp_path):
    """The canvases show exactly :func:`figures.display_slice` of the RAS volume (the convention the static
    figures are tested for: the patient's right on the viewer's left, anterior / superior up)."""
    browser = _chromium()
    _, document = report
    page = tmp_path / "dump.html"
    page.write_text(document.replace("</body>", DUMP_SCRIPT + "</body>", 1))
    done = _script()._chromium(browser, tmp_path / "profile", "--virtual-time-budget=30000", "--dump-dom",
                               page.as_uri(), timeout=90)
    dump = json.loads(htmllib.unescape(re.search(r'<pre id="dump">(.*?)</pre>', done.stdout, re.S).group(1)))
    first = payloads(document)[0]
    volume = decode(first["images"][0]["data"], first["shape"])
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}
    for view, got in dump.items():
        assert got["slice"] == first["start"][axis[view]]
        plane = figures.display_slice(volume, view, got["slice"]).astype(np.float64)
        expected = np.rint(plane * 255 / (first["levels"] - 1))
        pixels = np.frombuffer(base64.b64decode(got["red"]), np.uint8).reshape(got["h"], got["w"])
        assert np.array_equal(pixels, expected), view


def test_screenshot_script_shoots_the_viewer(report, tmp_path):
    _chromium()
    from PIL import Image

    root, _ = report
    shot = tmp_path / "viewer.png"
    assert _script().main([str(root / "report.html"), "-o", str(shot), "--viewer", "--width", "900",
                           "--height", "600"]) == 0
    with Image.open(shot) as img:
        assert img.size == (900, 600) and len(img.convert("RGB").getcolors(1 << 20) or []) > 50


# ------------------------------------------------------------------------------------------------ ten cases


@pytest.mark.slow
def test_ten_brats_sized_cases_make_a_report_under_15_mb(tmp_path):
    """Ten cases on the BraTS grid (240x240x155, four modalities; one phantom under ten names, each with its own
    shifted prediction, half with an uncertainty map): the whole report, viewer included, stays under 15 MB and
    every case is in the viewer."""
    assert run_cli(["phantom", str(tmp_path / "one"), "--cases", "1", "--seed", "4", "-j", "1"]) == 0
    source = tmp_path / "one" / "Phantom_001"
    seg = nib.load(source / "Phantom_001_seg.nii.gz")
    labels = np.asarray(seg.dataobj).astype(np.uint8)
    (tmp_path / "pred").mkdir()
    for i in range(1, 11):
        case = f"Case_{i:03d}"
        folder = tmp_path / "data" / case
        folder.mkdir(parents=True)
        for file in source.iterdir():
            shutil.copy(file, folder / file.name.replace("Phantom_001", case))
        pred = np.roll(labels, (i % 3, -(i % 4), i % 2), axis=(0, 1, 2))
        nib.save(nib.Nifti1Image(pred, seg.affine), tmp_path / "pred" / f"{case}.nii.gz")
        if i % 2:
            nib.save(nib.Nifti1Image(uncertainty_map(pred), seg.affine),
                     tmp_path / "pred" / f"{case}_uncertainty.nii.gz")
    shutil.rmtree(tmp_path / "one")
    assert run_cli(["evaluate", str(tmp_path / "pred"), str(tmp_path / "data"), "--json",
                    str(tmp_path / "eval.json")]) == 0
    out = tmp_path / "report.html"
    assert run_cli(["report", str(tmp_path), "-o", str(out)]) == 0
    size = out.stat().st_size
    assert size < 15_000_000, f"{size / 1e6:.1f} MB"
    shown = payloads(out.read_text())
    assert len(shown) == 10 and sum(p["uncertainty"] is not None for p in shown) == 5
    assert all(p["bytes"] <= viewer.case_budget(10) for p in shown)
    assert all(len(p["images"]) == 4 for p in shown)
