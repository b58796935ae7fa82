"""The demo end to end on a shortened run (tiny phantoms, a tiny network, a few steps): every stage's outputs exist
and are valid (phantoms, a resumed training run, predictions on the input grid, metrics, a self-contained report
with the disclaimer), the output folder rules, and the report in a real headless browser (Chromium) with the
screenshot script. Whether the demo's model learns is the training tests' business (tests/test_train.py)."""

from __future__ import annotations

import csv
import html
import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from agsevnet import REGIONS
from agsevnet.checkpoint import load_checkpoint
from agsevnet.cli import main
from agsevnet.demo import DISCLAIMER, MARKER, STAGES, format_summary, plan_steps, prepare_out_dir, run_demo
from agsevnet.errors import OutputExistsError
from agsevnet.evaluate.metrics import COLUMNS

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.base_width=4", "data.patch_size=[16,16,16]", "data.batch_size=2", "data.workers=0",
        "optim.warmup_steps=2", "train.log_every=1", "train.checkpoint_every=2"]


def _screenshot_script():
    spec = importlib.util.spec_from_file_location("screenshot_report", REPO / "scripts" / "screenshot_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict, list[str]]:
    """A shortened demo (~10 s): 2 + 2 phantoms of 32^3, a 4-wide network on 16^3 patches, 6 steps."""
    import torch

    out = tmp_path_factory.mktemp("demo") / "agsevnet-demo"
    messages: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see conftest.one_thread: on a shared machine two threads made this run 15x slower
    try:
        record = run_demo(out, minutes=5, seed=3, train_cases=2, test_cases=2, shape=(32, 32, 32), max_steps=6,
                          overrides=TINY, progress=False, echo=messages.append)
    finally:
        torch.set_num_threads(threads)
    return out, record, messages


def test_demo_record_and_summary(demo):
    out, record, messages = demo
    saved = json.loads((out / MARKER).read_text())
    assert saved == json.loads(json.dumps(record)) and saved["status"] == "complete"
    assert list(saved["stages"]) == list(STAGES) and all(t >= 0 for t in saved["stages"].values())
    assert set(saved["dice"]) == {*REGIONS, "mean"} and all(0 <= v <= 1 for v in saved["dice"].values())
    assert sorted(saved["cases"]) == ["Phantom_001", "Phantom_002"]
    text = format_summary(record)
    assert DISCLAIMER in text and f"Report: {(out / 'report.html').resolve()}" in text
    assert all(f"  {stage}" in text for stage in STAGES)
    assert [m.split(":")[0] for m in messages if m.startswith("[")] == [f"[{i}/6] {s}" for i, s in enumerate(STAGES, 1)]
    assert list(saved["robustness"]) == ["clean", "40", "30", "20", "15", "10", "5"]


def test_demo_phantoms_and_training(demo):
    out, record, messages = demo
    for split, n in (("train", 2), ("test", 2)):
        cases = sorted(p.name for p in (out / "data" / split).iterdir())
        assert cases == [f"Phantom_{i:03d}" for i in range(1, n + 1)]
        assert (out / "data" / split / "Phantom_001" / "Phantom_001_seg.nii.gz").is_file()
    train_flair = nib.load(out / "data" / "train" / "Phantom_001" / "Phantom_001_flair.nii.gz").get_fdata()
    test_flair = nib.load(out / "data" / "test" / "Phantom_001" / "Phantom_001_flair.nii.gz").get_fdata()
    assert train_flair.shape == (32, 32, 32) and not np.array_equal(train_flair, test_flair)  # held out: other seed
    # The warm-up's 2 steps measure the speed, then the run is resumed to the planned 6 (max_steps caps it).
    assert record["training"]["calibration_steps"] == 2 and record["training"]["steps"] == 6
    assert any("steps/s: training to step 6" in m for m in messages)
    last = load_checkpoint(out / "run" / "last.pt")
    assert last["step"] == 6 and last["config"]["preset"] == "cpu-small" and last["config"]["train"]["steps"] == 6
    with (out / "run" / "metrics.csv").open(newline="") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_demo_predictions_on_the_input_grid(demo):
    out, _, _ = demo
    for case in ("Phantom_001", "Phantom_002"):
        source = nib.load(out / "data" / "test" / case / f"{case}_flair.nii.gz")
        pred = nib.load(out / "predictions" / f"{case}.nii.gz")
        assert pred.shape == source.shape
        np.testing.assert_allclose(pred.affine, source.affine)
        assert pred.get_data_dtype() == np.uint8
        assert set(np.unique(np.asanyarray(pred.dataobj))) <= {0, 1, 2, 4}  # BraTS 2020 labels, like the input


def test_demo_metrics(demo):
    out, record, _ = demo
    with (out / "evaluation" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    # Every metrics CSV names the Hausdorff95 rule that produced it (issue 11 fix 5); the demo uses the default.
    assert list(rows[0]) == ["case", *COLUMNS, "hd95_rule"] and [r["case"] for r in rows] == ["Phantom_001", "Phantom_002"]
    assert {r["hd95_rule"] for r in rows} == {"pooled"}
    for row in rows:
        assert all(0 <= float(row[f"Dice_{r}"]) <= 1 for r in REGIONS)
        assert record["cases"][row["case"]]["WT"] == pytest.approx(float(row["Dice_WT"]), abs=1e-6)
    assert (out / "evaluation" / "metrics_summary.csv").is_file()
    record_json = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert record_json["format"] == "agsevnet-evaluation" and record_json["hd95_rule"] == "pooled"


def test_demo_report_is_self_contained(demo):
    out, _, _ = demo
    document = (out / "report.html").read_text()
    assert html.escape(DISCLAIMER) in document
    assert "Training" in document and "Evaluation" in document and "robustness.png" in document
    assert "<h2>Predictions</h2>" not in document  # the evaluated predictions are drawn under Evaluation only
    total, problems = _screenshot_script().check_embedded_images(document)
    assert problems == [] and total >= 4  # training curves, metric plots, overlays, 3D rendering
    assert "http://" not in document and "https://" not in document and 'src="file:' not in document


def test_report_in_a_headless_browser(demo, tmp_path):
    script = _screenshot_script()
    if script.find_chromium() is None:
        pytest.skip("Chromium not installed (Debian: apt-get install chromium); CI installs it where it can")
    out, _, _ = demo
    shot = tmp_path / "shot.png"
    assert script.main([str(out / "report.html"), "-o", str(shot), "--width", "1000", "--height", "900"]) == 0
    with Image.open(shot) as img:
        assert img.size == (1000, 900)
        assert len(img.convert("RGB").getcolors(1 << 20) or []) > 50  # a rendered page, not a blank one
    # A report with a broken image fails the check.
    broken = tmp_path / "broken.html"
    document = (out / "report.html").read_text()
    broken.write_text(document.replace("<main>", '<main><img src="data:image/png;base64,AAAA" alt="bad">', 1))
    assert script.main([str(broken), "-o", str(tmp_path / "b.png")]) == 1


# ------------------------------------------------------------------------------------------------- folder rules


def test_output_folder_rules(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not empty"):
        prepare_out_dir(user, overwrite=False)
    with pytest.raises(OutputExistsError, match="not a demo folder"):
        prepare_out_dir(user, overwrite=True)
    assert (user / "thesis.tex").read_text() == "keep me"
    # A demo folder: --overwrite removes the demo's entries only.
    demo_dir = tmp_path / "demo"
    for name in ("data/train", "run", "predictions", "evaluation"):
        (demo_dir / name).mkdir(parents=True)
    (demo_dir / MARKER).write_text("{}")
    (demo_dir / "report.html").write_text("old")
    (demo_dir / "my_notes.txt").write_text("keep me")
    prepare_out_dir(demo_dir, overwrite=True)
    assert sorted(p.name for p in demo_dir.iterdir()) == ["my_notes.txt"]
    with pytest.raises(OutputExistsError, match="not a folder"):
        prepare_out_dir(user / "thesis.tex", overwrite=True)


def test_cli_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path), "--minutes", "1"])
    assert exit_info.value.code == 1
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_plan_steps():
    # 2 steps/s, 300 s left: 0.9 * 300 - 15 = 255 s usable -> 510 more steps.
    assert plan_steps(2.0, 300, 20) == 530
    assert plan_steps(2.0, 300, 20, max_steps=400) == 400
    assert plan_steps(2.0, 5, 20) == 20  # no time left: stop after the calibration
    assert plan_steps(0.0, 300, 20) == 20
