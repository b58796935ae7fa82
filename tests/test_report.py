"""Figures (agsevnet.report.figures) and the self-contained HTML report (``agsevnet report``)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from agsevnet.data.labels import from_internal
from agsevnet.report import figures
from helpers import run_cli
from test_evaluate_cli import AFFINE, brats_dataset, predictions, save, tumour

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NOTES = "phantom-trained model: for demonstration, not for patients"


def assert_png_file(path: Path) -> Image.Image:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes every pixel: fails on a truncated or corrupt file
    return image


# --------------------------------------------------------------------------------------------- figures


def test_display_orientation_is_radiological_and_upright():
    """On the LPS BraTS grid, axial slices show anterior at the top and the patient's right on the viewer's
    left; coronal and sagittal slices show superior at the top, sagittal anterior on the left."""
    shape = (30, 40, 20)
    lps = np.array([[-1.0, 0, 0, 29], [0, -1.0, 0, 39], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    world = lambda ijk: (lps @ [*ijk, 1])[:3]  # noqa: E731  RAS+ millimetres (nibabel's convention)
    i_right = max(range(shape[0]), key=lambda i: world((i, 0, 0))[0])
    j_front = max(range(shape[1]), key=lambda j: world((0, j, 0))[1])
    k_top = shape[2] - 1
    vol = np.zeros(shape, np.uint8)
    vol[i_right, :, :] = 1
    vol[:, j_front, :] = 2
    vol[:, :, k_top] = 3
    ras, spacing = figures.to_ras(vol, lps)
    assert spacing == (1.0, 1.0, 1.0)
    axial = figures.display_slice(ras, "axial", 5)
    assert (axial[0, 1:-1] == 2).all()  # anterior row at the top
    assert (axial[1:-1, 0] == 1).all()  # patient's right column on the left
    coronal = figures.display_slice(ras, "coronal", 5)
    assert (coronal[0, 1:] == 3).all() and (coronal[1:, 0] == 1).all()  # superior up, right on the left
    sagittal = figures.display_slice(ras, "sagittal", 5)
    assert (sagittal[0, 1:] == 3).all() and (sagittal[1:, 0] == 2).all()  # superior up, anterior on the left


def test_figures_write_valid_pngs(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{c: float(v) for c, v in zip(
        [f"{m}_{r}" for m in ("Dice", "Sensitivity", "Specificity", "Hausdorff95") for r in ("ET", "WT", "TC")],
        np.concatenate([rng.uniform(0.5, 1, 9), rng.uniform(1, 20, 3)]), strict=True)} for _ in range(7)]
    figures.plot_metric_distributions(rows, tmp_path / "box.png", title="phantoms")
    assert assert_png_file(tmp_path / "box.png").size[0] > 800

    gt = tumour(1)
    pred = np.roll(gt, 2, axis=0)
    image = rng.uniform(0, 100, gt.shape).astype(np.float32)
    figures.plot_case_overlay(image, gt, pred, AFFINE, tmp_path / "overlay.png", case_id="X",
                              dice={"ET": 0.5, "WT": 0.8, "TC": 0.7})
    assert_png_file(tmp_path / "overlay.png")
    figures.plot_case_overlay(None, None, pred, AFFINE, tmp_path / "pred_only.png", case_id="X")
    assert_png_file(tmp_path / "pred_only.png")
    with pytest.raises(ValueError):
        figures.plot_case_overlay(image, None, None, AFFINE, tmp_path / "nothing.png", case_id="X")

    figures.plot_surfaces_3d({"ground truth": gt, "prediction": pred}, AFFINE, tmp_path / "3d.png", title="X")
    assert_png_file(tmp_path / "3d.png")
    figures.plot_surfaces_3d({"empty": np.zeros_like(gt)}, AFFINE, tmp_path / "3d_empty.png")
    assert_png_file(tmp_path / "3d_empty.png")

    curves = [{"step": str(s), "loss": str(1 / s), "lr": "0.001", "val_dice_WT": "0.5" if s % 2 == 0 else ""}
              for s in range(1, 9)]
    figures.plot_training_curves(curves, tmp_path / "curves.png")
    assert_png_file(tmp_path / "curves.png")


def test_surface_mesh_respects_spacing():
    mask = np.zeros((20, 20, 20), bool)
    mask[5:15, 5:15, 5:15] = True  # a 10-voxel cube
    tri = figures._surface_mesh(mask, (1.0, 2.0, 3.0), max_faces=100_000)
    extent = tri.reshape(-1, 3).max(axis=0) - tri.reshape(-1, 3).min(axis=0)
    assert extent == pytest.approx(np.array([10.0, 20.0, 30.0]), rel=0.15)


# --------------------------------------------------------------------------------------------- the report


def data_uris(html: str) -> list[bytes]:
    tags = re.findall(r"<img\b[^>]*>", html)
    sources = [re.search(r'src="([^"]*)"', tag).group(1) for tag in tags]
    assert all(src.startswith("data:image/png;base64,") for src in sources), sources
    return [base64.b64decode(src.split(",", 1)[1], validate=True) for src in sources]


BASE64_DATA_URI = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,[A-Za-z0-9+/=]*")
"""A base64 ``data:`` URI with its payload, where any letters may occur ("http" in about one in ten 100 KB PNGs)."""


def assert_self_contained(html: str) -> list[bytes]:
    """No reference to anything outside the file: the viewer's data blocks and the images' base64 payloads
    (where any letters may occur) are set aside, its inline script is allowed, a script with a ``src`` is not."""
    code = re.sub(r'<script type="application/json"[^>]*>.*?</script>', "", html, flags=re.S)
    code = BASE64_DATA_URI.sub("data:", code)
    assert "http" not in code.lower()
    assert 'src="file' not in code and "<link" not in code and "url(" not in code
    assert re.findall(r"<script\b[^>]*>", code) in ([], ["<script>"])  # at most the viewer's one inline script
    assert "import(" not in code and "fetch(" not in code and "XMLHttpRequest" not in code
    pngs = data_uris(html)
    for png in pngs:
        assert png[:8] == PNG_SIGNATURE
        Image.open(io.BytesIO(png)).load()
    return pngs


def test_self_contained_check_ignores_base64_payloads_only():
    """"http" inside an image's base64 payload is data, not a link (the check failed on it by chance, about one
    report in ten); a real external source still fails it."""
    from PIL import PngImagePlugin

    letters = base64.b64decode("http").decode("latin-1")  # bytes that base64 writes as "http" when aligned
    for pad in range(3):  # a valid PNG whose text chunk puts them where base64 spells "http"
        info = PngImagePlugin.PngInfo()
        info.add_text("note", "x" * pad + letters)
        png = io.BytesIO()
        Image.new("L", (4, 4)).save(png, format="PNG", pnginfo=info)
        payload = base64.b64encode(png.getvalue()).decode()
        if "http" in payload:
            break
    assert "http" in payload
    page = f'<html><body><figure><img src="data:image/png;base64,{payload}" alt="x"></figure></body></html>'
    assert len(assert_self_contained(page)) == 1
    for external in (page.replace("</body>", '<img src="http://example.org/a.png"></body>'),
                     page.replace("</body>", '<script src="https://example.org/a.js"></script></body>'),
                     page.replace('alt="x"', 'alt="x" title="data: see http://example.org"')):
        with pytest.raises(AssertionError):
            assert_self_contained(external)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A demo-like folder: a training run, a dataset with images, predictions and their evaluation JSON."""
    root = tmp_path / "demo"
    cases = {f"BraTS20_Training_00{i}": tumour(i) for i in range(1, 4)}
    brats_dataset(root / "data", cases)
    predictions(root / "pred", cases, skip=("BraTS20_Training_003",))
    assert run_cli(["evaluate", str(root / "pred"), str(root / "data"), "--missing", "empty",
                "--out", str(root / "eval" / "metrics.csv"), "--json", str(root / "eval" / "metrics.json")]) == 0
    train = root / "run"
    train.mkdir()
    (train / "config.yaml").write_text("model:\n  name: agsevnet\ntrain:\n  steps: 6\n")
    (train / "metrics.csv").write_text(
        "step,loss,lr,steps_per_s,elapsed_s,val_dice_ET,val_dice_WT,val_dice_TC,val_dice_mean\n"
        + "".join(f"{s},{1.5 / s:.3f},0.001,2.0,{s},"
                  + (f"0.{s},0.{s + 2},0.{s + 1},0.{s + 1}\n" if s % 3 == 0 else ",,,\n") for s in range(1, 7)))
    (train / "summary.json").write_text(json.dumps({"steps": 6, "best": {"dice_mean": 0.7, "step": 6}}))
    return root


def test_report_is_self_contained_with_metrics_curves_overlays_and_3d(run_dir, capsys):
    out = run_dir / "report.html"
    assert run_cli(["report", str(run_dir), "-o", str(out), "--title", "Demo run", "--notes", NOTES]) == 0
    html = out.read_text()
    pngs = assert_self_contained(html)
    assert NOTES in html and "<title>Demo run</title>" in html
    assert "model:" in html and "name: agsevnet" in html  # the configuration
    assert 'alt="training curves"' in html and "best validation" in html
    record = json.loads((run_dir / "eval" / "metrics.json").read_text())
    for case in record["cases"]:
        assert case["case"] in html
    assert "Dice WT" in html and "75quantile" in html
    assert f"{record['summary']['Dice_WT']['Mean']:.4f}" in html  # the summary table's numbers
    assert 'alt="metric distributions"' in html
    assert len(re.findall(r'alt="slices of ', html)) == 3 and "no prediction: scored as empty" in html
    assert "FLAIR, ground truth, prediction" in html  # the image was found next to the ground truth
    assert 'alt="3D rendering of ' in html
    assert len(pngs) == 1 + 1 + 3 + 1  # curves, box plots, overlays, 3D
    assert "metrics_summary.csv" not in html  # the evaluation's own CSVs are not repeated as "other" tables

    assert run_cli(["report", str(run_dir), "-o", str(out)]) == 1  # exists: not overwritten
    assert "exists" in capsys.readouterr().err


def test_report_limits_overlays_and_works_without_training(run_dir):
    for name in ("config.yaml", "metrics.csv", "summary.json"):
        (run_dir / "run" / name).unlink()
    (run_dir / "eval" / "metrics.json").unlink()  # only the per-case CSV: tables and plots, no overlays
    robustness = run_dir / "robustness.csv"
    robustness.write_text("snr,Dice_ET,Dice_WT,Dice_TC\n30,0.8,0.9,0.85\n10,0.5,0.7,0.6\n")
    out = run_dir / "r.html"
    assert run_cli(["report", str(run_dir), "-o", str(out), "--max-overlays", "1"]) == 0
    html = out.read_text()
    assert_self_contained(html)
    assert "training curves" not in html and "slices of" not in html
    assert "Dice WT" in html and "BraTS20_Training_002" in html
    assert "robustness.csv" in html and "0.8500" in html  # another table found under the folder


def test_report_max_overlays(run_dir):
    out = run_dir / "r.html"
    assert run_cli(["report", str(run_dir), "-o", str(out), "--max-overlays", "1"]) == 0
    assert len(re.findall(r'alt="slices of ', out.read_text())) == 1


def test_report_on_an_empty_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli(["report", str(tmp_path / "empty")]) == 1
    assert "nothing to report" in capsys.readouterr().err


def test_overlay_of_a_case_without_image_still_draws(tmp_path):
    labels = tumour(4)
    save(tmp_path / "gt" / "case.nii.gz", from_internal(labels, "brats2020"))
    save(tmp_path / "pred" / "case.nii.gz", from_internal(labels, "brats2020"))
    assert run_cli(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json", str(tmp_path / "e.json")]) == 0
    assert run_cli(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert_self_contained(html)
    assert "image not found" in html and len(re.findall(r'alt="slices of ', html)) == 1


def _prepared_case(root: Path, case_id: str, brain_ml: float, picture: bool) -> None:
    """A prepared case's record (as ``agsevnet prepare`` writes it) and its picture, without running prepare."""
    from agsevnet.prepare import qc as qc_mod

    case_dir = root / case_id
    case_dir.mkdir(parents=True)
    qc = {"brain_volume_ml": brain_ml, "atlas_dice": 0.9312, "atlas_metric": -0.45, "skull_stripped_input": False,
          "motion": {"flair": {"translation_mm": 4.2, "rotation_deg": 1.5}, "t1": {"translation_mm": 41.0,
                                                                                   "rotation_deg": 2.0}},
          "coverage": {"flair": 1.0, "t1": 0.97, "t1ce": 1.0, "t2": 0.993}}
    qc["warnings"] = qc_mod.warnings_for(qc)
    record = {"format": "agsevnet-prepare", "format_version": 1, "case_id": case_id, "qc": qc,
              "seconds": {"total": 21.5}}
    if picture:
        mask = np.zeros((24, 24, 16), bool)
        mask[6:18, 5:19, 4:12] = True
        images = {m: np.random.default_rng(0).random(mask.shape).astype(np.float32) * mask for m in ("t1ce", "flair")}
        qc_mod.save_picture(case_dir / "prepare.png", images, mask, case_id)
        record["picture"] = "prepare.png"
    (case_dir / "prepare.json").write_text(json.dumps(record))


def test_report_shows_the_quality_checks_and_picture_of_prepared_cases(tmp_path):
    """``agsevnet report`` on a ``prepare`` output: a "Prepared cases" table (brain volume, motion, coverage,
    warnings, the row of a case with a warning marked) and each case's prepare.png, embedded once (not repeated
    under "Other results")."""
    out = tmp_path / "prep"
    _prepared_case(out, "patient_a", 1412.3, picture=True)
    _prepared_case(out, "patient_b", 650.0, picture=False)
    assert run_cli(["report", str(out), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    pngs = assert_self_contained(html)
    assert "Prepared cases" in html and "Other results" not in html
    assert "patient_a" in html and "1412.3" in html and "650.0" in html and "0.931" in html
    assert "t1 41.0 / 2.0" in html and "t1 97%" in html  # the largest motion and the least covered sequence
    assert "moved 41 mm" in html and "brain volume 650 ml is outside" in html  # the warnings
    assert html.count('<tr class="missing">') == 2  # both rows have a warning (t1 moved 41 mm; b's volume)
    assert len(pngs) == 1 and 'alt="prepare.png"' in html
    Image.open(io.BytesIO(pngs[0])).load()


def test_report_shows_predictions_without_a_ground_truth_once(tmp_path):
    """``agsevnet predict`` output alone (no evaluation): a "Predictions" section with a row per case (confidence,
    volumes counted in the label file) and the prediction drawn over the case's FLAIR, found from the sidecar's
    input. Once an evaluation covers the same files, the predictions are shown there only, not twice."""
    from agsevnet.data.labels import region_masks, to_internal
    from test_predict import NARROW, _random_checkpoint

    cases = {f"BraTS20_Training_00{i}": tumour(i) for i in range(1, 3)}
    data = brats_dataset(tmp_path / "data", cases)
    ckpt = _random_checkpoint(tmp_path / "random.pt", NARROW)  # random weights: labels all over the field of view
    preds = tmp_path / "preds"
    assert run_cli(["predict", str(data), "--model", str(ckpt), "--out", str(preds), "-q"]) == 0
    assert run_cli(["report", str(preds), "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    pngs = assert_self_contained(html)
    assert "<h2>Predictions</h2>" in html
    section = html[html.index("<h2>Predictions</h2>"):]
    for case_id in cases:
        labels = to_internal(np.asarray(nib.load(preds / f"{case_id}.nii.gz").dataobj).astype(np.uint8),
                             "brats2020")
        wt_ml = np.count_nonzero(region_masks(labels)["WT"]) * abs(np.linalg.det(AFFINE[:3, :3])) / 1000
        assert f"<td>{case_id}</td>" in section and f"<td>{wt_ml:.1f}</td>" in section
    assert len(re.findall(r'alt="prediction of ', html)) == 2 and "prediction over FLAIR" in html
    assert len(pngs) == 2

    assert run_cli(["evaluate", str(preds), str(data), "--json", str(preds / "eval.json")]) == 0
    assert run_cli(["report", str(preds), "-o", str(tmp_path / "r2.html")]) == 0
    html = (tmp_path / "r2.html").read_text()
    assert "<h2>Predictions</h2>" not in html and len(re.findall(r'alt="slices of ', html)) == 2
