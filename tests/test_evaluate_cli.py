"""``agsevnet evaluate`` end to end on small synthetic NIfTI files: matching rules, label conventions, missing
predictions, geometry checks, and the CSV / summary CSV / JSON outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from agsevnet import MODALITIES
from agsevnet.data.labels import from_internal
from agsevnet.evaluate.metrics import COLUMNS, HD95_EMPTY, case_metrics
from agsevnet.evaluate.summary import STATISTICS
from helpers import run_cli

SHAPE = (20, 22, 14)
SPACING = (1.0, 1.2, 2.0)
AFFINE = np.array([[-1.0, 0, 0, 19], [0, -1.2, 0, 25], [0, 0, 2.0, -3], [0, 0, 0, 1]])  # LPS, like BraTS


def tumour(seed: int) -> np.ndarray:
    """Internal labels: a random box of edema around a core around an enhancing part."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.uint8)
    x, y, z = rng.integers(3, 6, size=3)
    labels[x : x + 12, y : y + 12, z : z + 8] = 2
    labels[x + 2 : x + 9, y + 3 : y + 9, z + 2 : z + 6] = 1
    labels[x + 3 : x + 6, y + 4 : y + 7, z + 3 : z + 5] = 3
    return labels


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def brats_dataset(root: Path, cases: dict[str, np.ndarray]) -> Path:
    """BraTS 2018-2021 layout: <case>/<case>_<modality>.nii.gz and <case>_seg.nii.gz (labels 1/2/4)."""
    rng = np.random.default_rng(0)
    for case_id, labels in cases.items():
        for modality in MODALITIES:
            save(root / case_id / f"{case_id}_{modality}.nii.gz", rng.integers(1, 500, SHAPE).astype(np.int16))
        save(root / case_id / f"{case_id}_seg.nii.gz", from_internal(labels, "brats2020"))
    return root


@pytest.fixture
def cases() -> dict[str, np.ndarray]:
    return {"BraTS20_Training_001": tumour(1), "BraTS20_Training_002": tumour(2), "BraTS20_Training_003": tumour(3)}


@pytest.fixture
def gt_dir(tmp_path, cases) -> Path:
    return brats_dataset(tmp_path / "gt", cases)


def predictions(folder: Path, cases: dict[str, np.ndarray], skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Predictions in the BraTS 2020 convention, flat <case>.nii.gz: the first identical, the others shifted."""
    preds = {}
    for i, (case_id, labels) in enumerate(cases.items()):
        preds[case_id] = labels if i == 0 else np.roll(labels, (i, -1, 1), axis=(0, 1, 2))
        if case_id not in skip:
            save(folder / f"{case_id}.nii.gz", from_internal(preds[case_id], "brats2020"))
    return preds


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_missing_prediction_is_an_error_naming_the_case(tmp_path, gt_dir, cases, capsys):
    predictions(tmp_path / "pred", cases, skip=("BraTS20_Training_003",))
    assert run_cli(["evaluate", str(tmp_path / "pred"), str(gt_dir), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "BraTS20_Training_003" in err and "no prediction" in err
    assert "BraTS20_Training_001" not in err


def test_missing_empty_writes_csv_summary_and_json(tmp_path, gt_dir, cases, capsys):
    preds = predictions(tmp_path / "pred", cases, skip=("BraTS20_Training_003",))
    out, js = tmp_path / "res" / "metrics.csv", tmp_path / "res" / "metrics.json"
    argv = ["evaluate", str(tmp_path / "pred"), str(gt_dir), "--missing", "empty", "--out", str(out), "--json", str(js),
            "--workers", "2"]
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "Mean" in printed and "HD95" in printed and f"wrote {out}" in printed

    with out.open(newline="") as f:
        assert next(csv.reader(f)) == ["case", *COLUMNS, "hd95_rule"]
    rows = {row["case"]: row for row in read_csv(out)}
    assert {row["hd95_rule"] for row in rows.values()} == {"pooled"}  # the default rule, named in every row
    assert list(rows) == list(cases)
    first, second, missing = rows.values()
    assert all(float(first[f"Dice_{r}"]) == 1.0 and float(first[f"Hausdorff95_{r}"]) == 0.0 for r in ("ET", "WT", "TC"))
    assert float(missing["Dice_WT"]) == 0.0 and float(missing["Hausdorff95_WT"]) == HD95_EMPTY
    # The file round trip (reading, label conversion, header spacing) gives what the arrays give.
    expected = case_metrics(preds["BraTS20_Training_002"], cases["BraTS20_Training_002"], SPACING)
    assert {c: float(second[c]) for c in COLUMNS} == pytest.approx(expected, abs=1e-6)  # zooms are float32
    assert 0 < expected["Dice_WT"] < 1

    summary = {row["statistic"]: row for row in read_csv(out.with_name("metrics_summary.csv"))}
    assert list(summary) == list(STATISTICS) and {r["hd95_rule"] for r in summary.values()} == {"pooled"}
    dice_wt = np.array([float(r["Dice_WT"]) for r in rows.values()])
    assert float(summary["Mean"]["Dice_WT"]) == pytest.approx(dice_wt.mean())
    assert float(summary["Median"]["Dice_WT"]) == pytest.approx(np.median(dice_wt))
    assert float(summary["75quantile"]["Dice_WT"]) == pytest.approx(np.percentile(dice_wt, 75))

    record = json.loads(js.read_text())
    assert record["format"] == "agsevnet-evaluation" and record["columns"] == list(COLUMNS)
    by_case = {c["case"]: c for c in record["cases"]}
    absent, shifted = by_case["BraTS20_Training_003"], by_case["BraTS20_Training_002"]
    assert absent["missing_prediction"] is True and absent["pred"] is None
    assert Path(shifted["pred"]) == tmp_path / "pred" / "BraTS20_Training_002.nii.gz"
    assert Path(shifted["gt"]) == gt_dir / "BraTS20_Training_002" / "BraTS20_Training_002_seg.nii.gz"
    assert shifted["spacing"] == pytest.approx(SPACING) and shifted["gt_labels"] == "brats2020"
    assert record["summary"]["Dice_WT"]["Mean"] == pytest.approx(dice_wt.mean())
    assert record["conventions"]["one_empty"]["Hausdorff95"] == HD95_EMPTY
    assert record["hd95_rule"] == "pooled" and "pooled" in record["conventions"]["hausdorff95"]
    assert {c["hd95_rule"] for c in record["cases"]} == {"pooled"}

    assert run_cli(argv) == 1  # outputs exist: not overwritten without --overwrite
    assert "exists" in capsys.readouterr().err
    assert run_cli([*argv, "--overwrite"]) == 0


def test_missing_skip_evaluates_only_the_predicted_cases(tmp_path, gt_dir, cases):
    predictions(tmp_path / "pred", cases, skip=("BraTS20_Training_003",))
    js = tmp_path / "m.json"
    assert run_cli(["evaluate", str(tmp_path / "pred"), str(gt_dir), "--missing", "skip", "--json", str(js)]) == 0
    assert [c["case"] for c in json.loads(js.read_text())["cases"]] == ["BraTS20_Training_001", "BraTS20_Training_002"]


@pytest.mark.parametrize("naming", ["flat_seg", "case_folders", "dash_nii"])
def test_prediction_naming_rules(tmp_path, gt_dir, cases, naming):
    pred = tmp_path / "pred"
    for case_id, labels in cases.items():
        data = from_internal(labels, "brats2020")
        name = {"flat_seg": f"{case_id}_seg.nii.gz", "case_folders": f"{case_id}/{case_id}.nii.gz",
                "dash_nii": f"{case_id}-seg.nii"}[naming]
        save(pred / name, data)
        save(pred / f"{case_id}_prob.nii.gz", np.zeros((*SHAPE, 4), np.float32))  # predict's probabilities: ignored
    js = tmp_path / "m.json"
    assert run_cli(["evaluate", str(pred), str(gt_dir), "--json", str(js), "--workers", "1"]) == 0
    record = json.loads(js.read_text())
    assert [c["case"] for c in record["cases"]] == list(cases)
    assert all(c["metrics"]["Dice_ET"] == 1.0 for c in record["cases"])
    assert record["unmatched_predictions"] == []


def test_label_only_ground_truth_folder_and_single_files(tmp_path, cases):
    gt = tmp_path / "labels"
    for case_id, labels in cases.items():
        save(gt / f"{case_id}.nii.gz", from_internal(labels, "brats2020"))
    shifted = np.roll(cases["BraTS20_Training_002"], 1, 0)
    pred_file = save(tmp_path / "one" / "prediction.nii.gz", from_internal(shifted, "brats2020"))
    js = tmp_path / "m.json"
    # A single file against a single file: paired whatever the names.
    assert run_cli(["evaluate", str(pred_file), str(gt / "BraTS20_Training_002.nii.gz"), "--json", str(js)]) == 0
    (case,) = json.loads(js.read_text())["cases"]
    assert case["case"] == "BraTS20_Training_002" and 0 < case["metrics"]["Dice_WT"] < 1
    # A folder of label files only (no images) as ground truth.
    pred = tmp_path / "pred"
    predictions(pred, cases)
    assert run_cli(["evaluate", str(pred), str(gt), "--json", str(js), "--overwrite"]) == 0
    assert len(json.loads(js.read_text())["cases"]) == 3


def test_label_conventions_auto_and_override(tmp_path, gt_dir, cases, capsys):
    pred = tmp_path / "pred"
    for case_id, labels in cases.items():  # written in the BraTS 2023 convention (3 = enhancing)
        save(pred / f"{case_id}.nii.gz", from_internal(labels, "brats2023"))
    js = tmp_path / "m.json"
    assert run_cli(["evaluate", str(pred), str(gt_dir), "--json", str(js)]) == 0
    record = json.loads(js.read_text())
    assert all(c["metrics"]["Dice_ET"] == 1.0 and c["metrics"]["Dice_TC"] == 1.0 for c in record["cases"])
    assert {c["pred_labels"] for c in record["cases"]} == {"brats2023"}
    assert {c["gt_labels"] for c in record["cases"]} == {"brats2020"}
    # Forcing BraTS 2020 on a file holding 3 is an error naming that file.
    assert run_cli(["evaluate", str(pred), str(gt_dir), "--labels", "brats2020"]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and str(pred) in err and "unexpected label values" in err


def test_msd_ground_truth_convention_is_followed(tmp_path):
    """MSD labels (1 edema, 2 non-enhancing, 3 enhancing): the dataset layout says so, and a prediction written
    in the same convention is read the same way."""
    root = tmp_path / "Task01_BrainTumour"
    labels = tumour(5)
    rng = np.random.default_rng(1)
    save(root / "imagesTr" / "BRATS_001.nii.gz", rng.integers(1, 500, (*SHAPE, 4)).astype(np.int16))
    save(root / "labelsTr" / "BRATS_001.nii.gz", from_internal(labels, "msd"))
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
    }))
    pred_labels = labels.copy()
    pred_labels[pred_labels == 1] = 2  # the prediction misses the non-enhancing core (calls it edema)
    save(tmp_path / "pred" / "BRATS_001.nii.gz", from_internal(pred_labels, "msd"))
    js = tmp_path / "m.json"
    assert run_cli(["evaluate", str(tmp_path / "pred"), str(root), "--json", str(js)]) == 0
    (case,) = json.loads(js.read_text())["cases"]
    assert case["gt_labels"] == case["pred_labels"] == "msd"
    assert case["metrics"] == pytest.approx(case_metrics(pred_labels, labels, SPACING), abs=1e-6)
    assert case["metrics"]["Dice_WT"] == 1.0 and case["metrics"]["Dice_TC"] < 1.0


def test_shape_mismatch_names_both_files(tmp_path, gt_dir, cases, capsys):
    pred = tmp_path / "pred"
    predictions(pred, cases)
    case_id = "BraTS20_Training_002"
    save(pred / f"{case_id}.nii.gz", np.zeros((20, 22, 13), np.uint8))
    assert run_cli(["evaluate", str(pred), str(gt_dir), "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert str(pred / f"{case_id}.nii.gz") in err and str(gt_dir / case_id / f"{case_id}_seg.nii.gz") in err
    assert "shape" in err


def test_an_affine_that_differs_warns_once_per_file_and_strict_geometry_stops(tmp_path, gt_dir, cases, capsys):
    """Other tools often write an identity affine: on a grid of the same shape the arrays are compared as they
    are, with one warning per such file saying what differs; --strict-geometry makes it an error."""
    pred = tmp_path / "pred"
    preds = predictions(pred, cases)
    identity, shifted = "BraTS20_Training_002", "BraTS20_Training_003"
    save(pred / f"{identity}.nii.gz", from_internal(preds[identity], "brats2020"), np.eye(4))
    moved = AFFINE.copy()
    moved[0, 3] += 2.0
    save(pred / f"{shifted}.nii.gz", from_internal(preds[shifted], "brats2020"), moved)
    js = tmp_path / "m.json"
    assert run_cli(["evaluate", str(pred), str(gt_dir), "--workers", "2", "--json", str(js)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2
    by_file = {case_id: next(w for w in warnings if str(pred / f"{case_id}.nii.gz") in w) for case_id in (identity, shifted)}
    assert "voxel size" in by_file[identity] and "axis directions RAS vs LPS" in by_file[identity]
    assert "origin [21.0, 25.0, -3.0] vs [19.0, 25.0, -3.0]" in by_file[shifted] and "voxel size" not in by_file[shifted]
    assert str(gt_dir / shifted / f"{shifted}_seg.nii.gz") in by_file[shifted]
    record = json.loads(js.read_text())
    by_case = {c["case"]: c for c in record["cases"]}
    assert by_case["BraTS20_Training_001"]["warnings"] == [] and len(by_case[identity]["warnings"]) == 1
    for case_id in (identity, shifted):  # scored on the arrays, with the ground truth's spacing
        assert by_case[case_id]["metrics"] == pytest.approx(case_metrics(preds[case_id], cases[case_id], SPACING), abs=1e-6)

    assert run_cli(["evaluate", str(pred), str(gt_dir), "--workers", "1", "--strict-geometry"]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and str(pred / f"{identity}.nii.gz") in err and "affine differs" in err
    assert str(gt_dir / identity / f"{identity}_seg.nii.gz") in err


def _msd_labels_only(folder: Path, cases: dict[str, np.ndarray]) -> Path:
    for i, labels in enumerate(cases.values(), start=1):
        save(folder / f"BRATS_{i:03d}.nii.gz", from_internal(labels, "msd"))
    return folder


def test_label_values_without_a_layout_need_labels(tmp_path, cases, capsys):
    """MSD labels 1/2/3 in a folder of label files only: auto cannot tell BraTS 2023 from MSD (necrosis and
    edema swap), so it stops naming the folder; --labels msd evaluates them; --pred-labels lets the
    predictions use another convention."""
    gt = _msd_labels_only(tmp_path / "labelsTr", cases)
    pred = tmp_path / "pred"
    for i, labels in enumerate(cases.values(), start=1):
        save(pred / f"BRATS_{i:03d}.nii.gz", from_internal(labels, "brats2023"))
    assert run_cli(["evaluate", str(pred), str(gt), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and f"{gt} is no recognised dataset layout" in err and "--labels" in err
    js = tmp_path / "m.json"
    # --labels msd alone reads the BraTS 2023 predictions as MSD too: necrosis and edema swapped, TC wrong.
    assert run_cli(["evaluate", str(pred), str(gt), "--labels", "msd", "--json", str(js)]) == 0
    record = json.loads(js.read_text())
    assert all(c["metrics"]["Dice_TC"] < 0.9 and c["metrics"]["Dice_WT"] == 1.0 for c in record["cases"])
    assert run_cli(["evaluate", str(pred), str(gt), "--labels", "msd", "--pred-labels", "brats2023", "--json", str(js),
                    "--overwrite"]) == 0
    record = json.loads(js.read_text())
    assert all(c["metrics"]["Dice_TC"] == 1.0 and c["metrics"]["Dice_ET"] == 1.0 for c in record["cases"])
    assert {(c["gt_labels"], c["pred_labels"]) for c in record["cases"]} == {("msd", "brats2023")}
    assert record["labels"] == "msd" and record["pred_labels"] == "brats2023"
    # A file holding 4 can only be BraTS 2018-2021: auto reads it without a layout.
    gt20 = tmp_path / "gt20"
    for i, labels in enumerate(cases.values(), start=1):
        save(gt20 / f"BRATS_{i:03d}.nii.gz", from_internal(labels, "brats2020"))
    assert run_cli(["evaluate", str(pred), str(gt20), "--json", str(js), "--overwrite"]) == 0
    assert {c["gt_labels"] for c in json.loads(js.read_text())["cases"]} == {"brats2020"}


def test_the_labels_folder_of_an_msd_dataset_takes_the_dataset_convention(tmp_path, cases):
    root = tmp_path / "Task01_BrainTumour"
    _msd_labels_only(root / "labelsTr", cases)
    rng = np.random.default_rng(2)
    for i in range(1, len(cases) + 1):
        save(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", rng.integers(1, 500, (*SHAPE, 4)).astype(np.int16))
    pred = tmp_path / "pred"
    for i, labels in enumerate(cases.values(), start=1):
        save(pred / f"BRATS_{i:03d}.nii.gz", from_internal(labels, "msd"))
    js = tmp_path / "m.json"
    assert run_cli(["evaluate", str(pred), str(root / "labelsTr"), "--json", str(js)]) == 0
    record = json.loads(js.read_text())
    assert {(c["gt_labels"], c["pred_labels"]) for c in record["cases"]} == {("msd", "msd")}
    assert all(c["metrics"]["Dice_TC"] == 1.0 for c in record["cases"])


def test_hd95_max_rule_is_named_in_every_output(tmp_path, gt_dir, cases, capsys):
    from agsevnet.evaluate.metrics import HD95_EMPTY_MAX

    preds = predictions(tmp_path / "pred", cases, skip=("BraTS20_Training_003",))
    out, js = tmp_path / "res" / "metrics.csv", tmp_path / "res" / "metrics.json"
    assert run_cli(["evaluate", str(tmp_path / "pred"), str(gt_dir), "--missing", "empty", "--hd95", "max",
                    "--out", str(out), "--json", str(js), "--workers", "1"]) == 0
    assert "HD95 rule: max" in capsys.readouterr().out
    rows = {row["case"]: row for row in read_csv(out)}
    assert {row["hd95_rule"] for row in rows.values()} == {"max"}
    assert float(rows["BraTS20_Training_003"]["Hausdorff95_WT"]) == HD95_EMPTY_MAX == 374.0
    expected = case_metrics(preds["BraTS20_Training_002"], cases["BraTS20_Training_002"], SPACING, hd95="max")
    assert float(rows["BraTS20_Training_002"]["Hausdorff95_WT"]) == pytest.approx(expected["Hausdorff95_WT"], abs=1e-6)
    assert {row["hd95_rule"] for row in read_csv(out.with_name("metrics_summary.csv"))} == {"max"}
    record = json.loads(js.read_text())
    assert record["hd95_rule"] == "max" and "larger of the two directed" in record["conventions"]["hausdorff95"]
    assert record["conventions"]["one_empty"]["Hausdorff95"] == 374.0
    assert {c["hd95_rule"] for c in record["cases"]} == {"max"}
