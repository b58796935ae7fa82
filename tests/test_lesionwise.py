"""Lesion-wise metrics (:mod:`agsevnet.evaluate.lesionwise`).

- Phantoms with known lesions: the counts, means and penalties worked out by hand.
- Against ``brats-evaluation`` itself (the test extra; skipped where it is not installed): its
  ``evaluate_single_exam`` with the ``gli`` config on NIfTI files, then its ``parse_seg_results``, the official
  CSV, compared column by column with ours on random phantoms (isotropic and anisotropic spacing) and on crops of
  the real label maps, eroded, dilated, shifted, split and with false-positive blobs. Tolerance: counts exact,
  every other value within 1e-9 (absolute) or both NaN or both +inf; measured: every value bit-identical.
- The BraTS 2023 ranking rule against :func:`transcribed_ranking`, a literal per-lesion transcription of
  ``brats_metrics.py`` (full-volume masks, one dilation per lesion, cc3d labelling where installed, medpy's Dice
  and surface distances), within 1e-9; measured: identical.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from agsevnet.data.labels import REGION_LABELS, from_internal, to_internal
from agsevnet.evaluate.lesionwise import (
    LESION_REGIONS,
    LESIONWISE_COLUMNS,
    PANOPTICA_COLUMNS,
    RANKING_COLUMNS,
    lesionwise_metrics,
    ranking_region,
)

TOLERANCE = 1e-9
REAL_CASES = [("BraTS20_Training_001", "brats2020"), ("BraTS-GLI-00000-000", "brats2023")]
PERTURBATIONS = ("eroded", "dilated", "shifted", "split", "false_positives")


def cube(shape, corner, size, value=3, into=None):
    out = np.zeros(shape, np.uint8) if into is None else into
    x, y, z = corner
    out[x : x + size, y : y + size, z : z + size] = value
    return out


def close(a: float, b: float) -> bool:
    if np.isnan(a) or np.isnan(b):
        return bool(np.isnan(a) and np.isnan(b))
    if np.isinf(a) or np.isinf(b):
        return a == b
    return abs(a - b) <= TOLERANCE


# --- phantoms with known answers -------------------------------------------------------------------------------


def test_known_lesions_panoptica_and_ranking_columns():
    shape = (40, 40, 40)
    gt = cube(shape, (5, 5, 5), 6)  # 216 voxels
    cube(shape, (30, 30, 30), 3, into=gt)  # 27 voxels: left out by the 2023 rule
    pred = cube(shape, (6, 5, 5), 6)  # the big lesion shifted by one voxel along x
    cube(shape, (20, 30, 5), 2, into=pred)  # a false-positive blob far from every lesion
    m = lesionwise_metrics(pred, gt)
    assert (m["all_instance_tp_et"], m["all_instance_fp_et"], m["all_instance_fn_et"]) == (1, 1, 1)
    assert m["all_instance_prec_et"] == 0.5 and m["all_instance_rec_et"] == 0.5 and m["all_instance_f1_et"] == 0.5
    dice_big = 2 * 180 / (216 + 216)
    assert m["lesionwise_dsc_mean_et"] == pytest.approx(dice_big) and m["lesionwise_dsc_std_et"] == 0.0
    assert m["lesionwise_hd95_mean_et"] == pytest.approx(1.0)  # 95 % of the surface distances are 0 or 1
    assert m["global_dsc_et"] == pytest.approx(2 * 180 / (216 + 27 + 216 + 8))
    # 2023 rule: the small lesion is left out (no FN), the blob is a FP counted as Dice 0 / HD95 374.
    assert (m["brats2023_tp_et"], m["brats2023_fp_et"], m["brats2023_fn_et"]) == (1, 1, 0)
    assert m["brats2023_lesionwise_dice_et"] == pytest.approx(dice_big / 2)
    assert m["brats2023_lesionwise_hd95_et"] == pytest.approx((1.0 + 374) / 2)
    # Every region holds only ET here, so TC and WT match it.
    assert all(m[c.replace("_et", "_wt")] == m[c] or np.isnan(m[c]) for c in LESIONWISE_COLUMNS if c.endswith("_et"))


def test_missed_lesion_counts_zero_and_374():
    shape = (40, 40, 40)
    gt = cube(shape, (5, 5, 5), 6)
    cube(shape, (25, 25, 25), 5, into=gt)  # 125 voxels, missed
    pred = gt.copy()
    pred[25:30, 25:30, 25:30] = 0
    m = lesionwise_metrics(pred, gt)
    assert (m["brats2023_tp_et"], m["brats2023_fp_et"], m["brats2023_fn_et"]) == (1, 0, 1)
    assert m["brats2023_lesionwise_dice_et"] == pytest.approx(0.5)
    assert m["brats2023_lesionwise_hd95_et"] == pytest.approx(374 / 2)
    # brats-evaluation's lesion-wise mean covers matched lesions only: the miss shows in the recall.
    assert m["lesionwise_dsc_mean_et"] == 1.0 and m["all_instance_rec_et"] == 0.5 and m["all_instance_fn_et"] == 1


def test_dilation_merges_nearby_lesions_only_for_the_ranking_rule():
    shape = (30, 30, 30)
    gt = cube(shape, (5, 5, 5), 5)
    cube(shape, (5, 5, 12), 5, into=gt)  # 2 background voxels between them: one lesion after a 3-fold dilation
    pred = cube(shape, (5, 5, 5), 5)  # only the first part predicted
    m = lesionwise_metrics(pred, gt)
    assert m["all_instance_tp_et"] == 1 and m["all_instance_fn_et"] == 1  # two instances for panoptica
    assert (m["brats2023_tp_et"], m["brats2023_fn_et"]) == (1, 0)  # one merged lesion for the 2023 rule
    assert m["brats2023_lesionwise_dice_et"] == pytest.approx(2 * 125 / (250 + 125))  # against the whole lesion


def test_one_to_one_matching_and_empty_cases():
    shape = (30, 30, 30)
    gt = cube(shape, (5, 5, 5), 8)
    pred = cube(shape, (5, 5, 5), 8)
    pred[:, :, 9] = 0  # split the prediction in two components: one matched, one FP for panoptica
    m = lesionwise_metrics(pred, gt)
    assert (m["all_instance_tp_et"], m["all_instance_fp_et"], m["all_instance_fn_et"]) == (1, 1, 0)
    assert m["brats2023_fp_et"] == 0  # both parts touch the lesion: one prediction of it

    empty = np.zeros(shape, np.uint8)
    both_empty = lesionwise_metrics(empty, empty)
    assert np.isnan(both_empty["lesionwise_dsc_mean_et"]) and np.isnan(both_empty["global_dsc_et"])
    assert np.isnan(both_empty["all_instance_f1_et"]) and np.isnan(both_empty["all_instance_prec_et"])
    assert both_empty["brats2023_lesionwise_dice_et"] == 1.0 and both_empty["brats2023_lesionwise_hd95_et"] == 0.0

    missed = lesionwise_metrics(empty, gt)
    assert missed["lesionwise_dsc_mean_et"] == 0.0 and missed["lesionwise_hd95_mean_et"] == np.inf
    assert missed["global_hd95_et"] == 373.0 and np.isnan(missed["all_instance_prec_et"])
    assert missed["brats2023_lesionwise_dice_et"] == 0.0 and missed["brats2023_lesionwise_hd95_et"] == 374.0

    only_fp = lesionwise_metrics(gt, empty)
    assert only_fp["all_instance_fp_et"] == 1 and only_fp["all_instance_prec_et"] == 0.0
    assert only_fp["brats2023_fp_et"] == 1 and only_fp["brats2023_lesionwise_hd95_et"] == 374.0


def test_columns_are_named_as_brats_evaluation_names_them():
    assert len(PANOPTICA_COLUMNS) == 45 and len(RANKING_COLUMNS) == 15
    assert {"lesionwise_dsc_mean_et", "all_instance_tp_wt", "global_hd95_tc", "lesionwise_nsd_std_wt"} <= set(
        PANOPTICA_COLUMNS)
    assert set(lesionwise_metrics(np.zeros((5, 5, 5)), np.zeros((5, 5, 5)))) == set(LESIONWISE_COLUMNS)


# --- against brats-evaluation ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brats_evaluation():
    """brats-evaluation's evaluator with its bundled glioma config, quiet."""
    pytest.importorskip("brats_evaluation", reason="brats-evaluation (the test extra) is not installed")
    from brats_evaluation import config_path
    from panoptica import Panoptica_Evaluator

    logging.getLogger("panoptica").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Panoptica_Evaluator.load_from_config(str(config_path("gli")))


def official_columns(evaluator, pred: np.ndarray, gt: np.ndarray, spacing, folder: Path) -> dict[str, float]:
    """What brats-evaluation writes for one case: NIfTI files -> evaluate_single_exam -> parse_seg_results CSV.

    With anisotropic spacing the arrays go to the evaluator with ``voxelspacing`` instead of as files:
    panoptica 2.1.7 reads a NIfTI file with SimpleITK, whose array is (z, y, x) but whose spacing is given
    (x, y, z), so from files it pairs the spacing with the wrong axes (harmless on BraTS's 1 mm grid).
    """
    from brats_evaluation import evaluate_single_exam, parse_seg_results

    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    paths = {}
    for name, data in (("pred", pred), ("ref", gt)):
        paths[name] = folder / f"{name}-00001.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(data, np.uint8), affine), paths[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(set(spacing)) == 1:
            result = evaluate_single_exam(str(paths["pred"]), str(paths["ref"]), "case-00001", evaluator)
        else:  # evaluate_single_exam's own steps, on arrays
            groups = evaluator.evaluate(np.asarray(pred, np.uint8), np.asarray(gt, np.uint8),
                                        voxelspacing=tuple(float(z) for z in nib.load(paths["ref"]).header.get_zooms()))
            result = {k: r.to_dict(True) for k, r in groups.items()} | {"subject_name": "case-00001"}
        assert "error" not in result, result
        # As brats-evaluate's json.dump, plus numpy scalars (panoptica 2.1.7 returns some as np.int64).
        summary = json.dumps({"metrics": [result], "missings": []}, default=lambda o: o.tolist())
        (folder / "summary.json").write_text(summary)
        parse_seg_results(str(folder / "summary.json"), str(folder / "parsed.csv"))
    with open(folder / "parsed.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["subject_id"] == "case-00001")
    return {column: float(row[column]) if row[column] != "" else float("nan") for column in PANOPTICA_COLUMNS}


def assert_agrees(ours: dict[str, float], official: dict[str, float]) -> None:
    bad = {c: (ours[c], official[c]) for c in PANOPTICA_COLUMNS if not close(ours[c], official[c])}
    assert not bad, bad


def random_phantom(seed: int, shape=(28, 26, 22)) -> tuple[np.ndarray, np.ndarray]:
    """Up to five random boxes of random labels as ground truth; the prediction shifted, with extra blobs, cut."""
    rng = np.random.default_rng(seed)

    def boxes(n):
        out = np.zeros(shape, np.uint8)
        for _ in range(n):
            c = rng.integers(3, np.array(shape) - 3)
            r = rng.integers(1, 5, 3)
            out[tuple(slice(max(ci - ri, 0), ci + ri) for ci, ri in zip(c, r))] = rng.integers(1, 4)
        return out

    gt = boxes(rng.integers(1, 6))
    pred = np.roll(gt, int(rng.integers(-2, 3)), axis=int(rng.integers(3)))
    pred = np.maximum(pred, boxes(rng.integers(0, 3)))
    if seed % 3 == 0:
        pred[:, :, shape[2] // 2] = 0
    return pred, gt


@pytest.mark.parametrize("seed, spacing", [(s, (1.0, 1.0, 1.0)) for s in range(4)]
                         + [(s, (0.9, 1.1, 2.0)) for s in range(4, 8)])
def test_phantoms_agree_with_brats_evaluation(brats_evaluation, tmp_path, seed, spacing):
    pred, gt = random_phantom(seed)
    spacing = tuple(float(np.float32(z)) for z in spacing)  # as a NIfTI header stores them, for both sides
    assert_agrees(lesionwise_metrics(pred, gt, spacing), official_columns(brats_evaluation, pred, gt, spacing, tmp_path))


def test_empty_and_missed_cases_agree_with_brats_evaluation(brats_evaluation, tmp_path):
    shape = (16, 16, 16)
    lesion = cube(shape, (4, 4, 4), 5, value=1)
    cube(shape, (6, 6, 6), 2, value=3, into=lesion)
    empty = np.zeros(shape, np.uint8)
    for i, (pred, gt) in enumerate([(empty, lesion), (lesion, empty), (np.roll(lesion, 8, axis=0), lesion)]):
        assert_agrees(lesionwise_metrics(pred, gt), official_columns(brats_evaluation, pred, gt, (1, 1, 1),
                                                                     tmp_path / str(i)))


def real_crop(real_data: Path, case: str, convention: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A real label map (internal labels) cropped to the 64^3 voxels around its tumour's centre: small and fast;
    the ground truth and the prediction made from it are cut by the same window."""
    seg = next(p for p in (real_data / case).iterdir() if p.name.endswith(("_seg.nii.gz", "-seg.nii.gz")))
    img = nib.load(seg)
    gt = to_internal(np.asanyarray(img.dataobj), convention)
    centre = np.array(ndimage.center_of_mass(gt > 0)).astype(int)
    box = tuple(slice(max(min(c - 32, n - 64), 0), max(min(c - 32, n - 64), 0) + 64) for c, n in zip(centre, gt.shape))
    return np.ascontiguousarray(gt[box]), tuple(float(z) for z in img.header.get_zooms()[:3])


def perturbed(gt: np.ndarray, how: str) -> np.ndarray:
    """A prediction made from the ground truth: each way changes lesions differently."""
    pred = gt.copy()
    if how == "eroded":  # every label's region eroded twice: small ET parts vanish, others shrink or split
        for label in (1, 2, 3):
            mask = gt == label
            pred[mask & ~ndimage.binary_erosion(mask, iterations=2)] = 0
    elif how == "dilated":  # the tumour grown by two voxels as edema, ET grown by one into it
        pred[ndimage.binary_dilation(gt > 0, iterations=2) & (gt == 0)] = 2
        pred[ndimage.binary_dilation(gt == 3) & (pred > 0)] = 3
    elif how == "shifted":
        pred = np.roll(gt, (3, -2, 1), axis=(0, 1, 2))
    elif how == "split":  # two slabs removed: lesions cut into several components
        centre = np.array(ndimage.center_of_mass(gt > 0)).astype(int)
        pred[centre[0] - 1 : centre[0] + 1] = 0
        pred[:, :, centre[2] : centre[2] + 2] = 0
    elif how == "false_positives":  # blobs of every label away from and next to the tumour
        rng = np.random.default_rng(7)
        for label in (1, 2, 3, 3):
            c = rng.integers(3, np.array(gt.shape) - 3)
            pred[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 1 : c[2] + 2] = label
        pred[:3, :3, :3] = 3
    else:
        raise AssertionError(how)
    return pred


@pytest.mark.realdata
@pytest.mark.parametrize("case, convention", REAL_CASES)
@pytest.mark.parametrize("how", PERTURBATIONS)
def test_real_label_maps_agree_with_brats_evaluation(real_data, brats_evaluation, tmp_path, case, convention, how):
    gt, spacing = real_crop(real_data, case, convention)
    pred = perturbed(gt, how)
    ours = lesionwise_metrics(pred, gt, spacing)
    assert_agrees(ours, official_columns(brats_evaluation, pred, gt, spacing, tmp_path))
    assert_ranking_agrees(pred, gt, spacing, ours)


# --- the BraTS 2023 ranking rule against a literal transcription -----------------------------------------------


def _components(mask: np.ndarray) -> np.ndarray:
    try:
        import cc3d

        return cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    except ImportError:
        return ndimage.label(mask, structure=np.ones((3, 3, 3)))[0]


def transcribed_ranking(pred: np.ndarray, gt: np.ndarray, spacing, dilation=3, threshold=50) -> dict[str, float]:
    """brats_metrics.py's get_lesion_wise_score + get_lesion_wise_results, step by step on full-volume masks;
    a lesion's HD95 is the larger directed 95th percentile of medpy's surface distances (not area-weighted, see
    :mod:`agsevnet.evaluate.lesionwise`)."""
    from medpy.metric import binary
    from medpy.metric.binary import dc

    def hd95(a, b, voxelspacing, connectivity):
        directed = getattr(binary, "__surface_distances")  # medpy's, under its module-level private name
        return max(np.percentile(directed(a, b, voxelspacing, connectivity), 95),
                   np.percentile(directed(b, a, voxelspacing, connectivity), 95))

    struct = ndimage.generate_binary_structure(3, 2)
    gt_cc = _components(gt)
    pred_cc = _components(pred)
    dilated_cc = _components(ndimage.binary_dilation(gt, structure=struct, iterations=dilation))
    combined = np.zeros_like(dilated_cc)
    for comp in range(1, int(dilated_cc.max()) + 1):
        part = (dilated_cc == comp) * gt_cc
        combined[part > 0] = comp
    tp_components, fn, gt_tp, pairs = [], [], [], []
    voxel = float(np.prod(spacing))
    for comp in range(1, int(combined.max()) + 1):
        lesion = combined == comp
        roi = ndimage.binary_dilation(lesion, structure=struct, iterations=dilation)
        hits = np.unique(pred_cc[roi])
        hits = hits[hits != 0]
        tp_components += list(hits)
        prediction = np.isin(pred_cc, hits)
        dice = dc(prediction, lesion)
        hd = hd95(prediction, lesion, voxelspacing=spacing, connectivity=1) if prediction.any() else np.inf
        pairs.append((len(hits), lesion.sum() * voxel, dice, hd))
        (gt_tp if len(hits) else fn).append(comp)
    fp = np.unique(pred_cc[np.isin(pred_cc, tp_components + [0], invert=True)])
    kept = [p for p in pairs if p[1] > threshold]
    small_fn = sum(1 for p in pairs if p[0] == 0 and p[1] <= threshold)
    small_tp = sum(1 for p in pairs if p[0] != 0 and p[1] <= threshold)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.float64(sum(p[2] for p in kept)) / (len(kept) + len(fp))
        hd = np.float64(sum(374.0 if np.isinf(p[3]) else p[3] for p in kept) + 374.0 * len(fp)) / (len(kept) + len(fp))
    return {"brats2023_lesionwise_dice": 1.0 if np.isnan(dice) else float(dice),
            "brats2023_lesionwise_hd95": 0.0 if np.isnan(hd) else float(hd),
            "brats2023_tp": float(len(gt_tp) - small_tp), "brats2023_fp": float(len(fp)),
            "brats2023_fn": float(len(fn) - small_fn)}


def assert_ranking_agrees(pred, gt, spacing, ours) -> None:
    for region in LESION_REGIONS:
        p, g = np.isin(pred, REGION_LABELS[region]), np.isin(gt, REGION_LABELS[region])
        expected = transcribed_ranking(p, g, spacing)
        got = {k: ours[f"{k}_{region.lower()}"] for k in expected}
        assert all(close(got[k], expected[k]) for k in expected), (region, got, expected)


@pytest.mark.parametrize("seed", range(6))
def test_ranking_rule_matches_the_transcription(seed):
    pred, gt = random_phantom(seed, shape=(30, 30, 26))
    spacing = (1.0, 1.0, 1.0) if seed % 2 else (0.9, 1.1, 2.0)
    assert_ranking_agrees(pred, gt, spacing, lesionwise_metrics(pred, gt, spacing))


def test_ranking_rule_parameters():
    shape = (30, 30, 30)
    gt = cube(shape, (5, 5, 5), 5, value=1)
    cube(shape, (5, 5, 13), 5, value=1, into=gt)  # 3 voxels apart: merged by a 3-fold dilation, not by 1
    pred = cube(shape, (5, 5, 5), 5, value=1)
    assert ranking_region(pred > 0, gt > 0, (1, 1, 1))["brats2023_fn"] == 0
    assert ranking_region(pred > 0, gt > 0, (1, 1, 1), dilation=1)["brats2023_fn"] == 1
    assert ranking_region(pred > 0, gt > 0, (1, 1, 1), dilation=1, volume_threshold=125)["brats2023_fn"] == 0


def test_labels_round_trip_into_brats_files():
    # The brats-evaluation config reads BraTS 2023 values (3 = ET), which are the internal labels.
    labels = np.array([0, 1, 2, 3])
    assert (from_internal(labels, "brats2023") == labels).all()


# --- agsevnet evaluate --lesion-wise and the report ------------------------------------------------------------


def test_cli_lesion_wise_columns_in_csv_json_and_report(tmp_path):
    from helpers import run_cli

    from agsevnet.evaluate.metrics import COLUMNS
    from agsevnet.report.html import build_report

    shape = (24, 24, 20)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    truths = {"case1": cube(shape, (4, 4, 4), 6, value=3), "case2": cube(shape, (10, 10, 8), 5, value=1)}
    cube(shape, (3, 3, 3), 8, value=2, into=truths["case1"])[5:9, 5:9, 5:9] = 3
    for case_id, labels in truths.items():
        pred = np.roll(labels, 1, axis=0)
        pred[20:23, 20:23, 2:5] = 3  # a false positive
        for folder, data in (("gt", labels), ("pred", pred)):
            (tmp_path / folder).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(from_internal(data, "brats2023"), affine), tmp_path / folder / f"{case_id}.nii.gz")
    out = tmp_path / "eval" / "metrics.csv"
    json_path = tmp_path / "eval" / "metrics.json"
    assert run_cli(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--lesion-wise", "--labels", "brats2023",
                    "--out", str(out), "--json", str(json_path), "--workers", "1"]) == 0

    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["case", *COLUMNS, "hd95_rule", *LESIONWISE_COLUMNS]
    record = json.loads(json_path.read_text())
    assert record["lesionwise_columns"] == list(LESIONWISE_COLUMNS)
    for row, case in zip(rows, record["cases"]):
        gt = truths[case["case"]]
        pred = np.roll(gt, 1, axis=0)
        pred[20:23, 20:23, 2:5] = 3
        expected = lesionwise_metrics(pred, gt, (1.0, 1.0, 1.0))
        assert all(close(float(row[c]), expected[c]) and close(case["lesionwise"][c], expected[c])
                   for c in LESIONWISE_COLUMNS)
        assert case["lesionwise"]["brats2023_fp_et"] == 1.0
    with open(out.with_name("metrics_summary.csv")) as handle:
        mean = next(r for r in csv.DictReader(handle) if r["statistic"] == "Mean")
    dice = [case["lesionwise"]["brats2023_lesionwise_dice_wt"] for case in record["cases"]]
    assert float(mean["brats2023_lesionwise_dice_wt"]) == pytest.approx(np.mean(dice))

    html = build_report(tmp_path / "eval", tmp_path / "report.html", max_overlays=0, progress=False,
                        viewer=False).read_text()
    assert "Lesion-wise metrics (BraTS 2023+)" in html and "brats2023_lesionwise_dice" in html
    assert "all_instance_f1" in html and "Dice ET" in html  # the legacy table is still there


def test_cli_without_lesion_wise_adds_nothing(tmp_path):
    from helpers import run_cli

    labels = cube((12, 12, 12), (3, 3, 3), 4, value=3)
    for folder in ("gt", "pred"):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / folder / "c.nii.gz")
    assert run_cli(["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--labels", "brats2023",
                    "--json", str(tmp_path / "m.json")]) == 0
    record = json.loads((tmp_path / "m.json").read_text())
    assert "lesionwise_summary" not in record and "lesionwise" not in record["cases"][0]
