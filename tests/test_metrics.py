"""BraTS metrics (agsevnet.evaluate.metrics) against an independent implementation, medpy, plus the BraTS
empty-mask conventions and cases with known answers.

medpy runs on the whole volume, except for the Hausdorff95 of the real 240x240x155 label maps, where it gets
the union bounding box of both masks grown by 20 voxels (a margin of background, so its erosions and distance
transform see the same surfaces: about 10x faster, and a different crop from agsevnet's one-voxel margin).
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from agsevnet.data.labels import REGION_LABELS, to_internal
from agsevnet.evaluate.metrics import COLUMNS, HD95_EMPTY, binary_metrics, case_metrics, dice_scores

medpy_binary = pytest.importorskip("medpy.metric.binary")

RATIO_TOL = 1e-6
HD_TOL = 1e-3  # mm


def _hd95_medpy(p: np.ndarray, g: np.ndarray, spacing, margin: int | None) -> float:
    if margin is not None:
        idx = np.nonzero(p | g)
        box = tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + 1 + margin) for i in idx)
        p, g = p[box], g[box]
    return medpy_binary.hd95(p, g, voxelspacing=spacing, connectivity=1)


def reference_metrics(pred: np.ndarray, gt: np.ndarray, spacing, hd_margin: int | None = None) -> dict[str, float]:
    """The 12 metrics with medpy; the BraTS rules only where medpy has no answer (an empty mask, for which its
    hd95 raises). ``hd_margin``: crop for the Hausdorff95 (see the module docstring); None: the whole volume."""
    out = {}
    for region, values in REGION_LABELS.items():
        p, g = np.isin(pred, values), np.isin(gt, values)
        if not p.any() and not g.any():
            dice, sens, spec, hd = 1.0, 1.0, 1.0, 0.0
        else:
            dice = medpy_binary.dc(p, g)
            sens = medpy_binary.sensitivity(p, g) if g.any() else 0.0
            spec = medpy_binary.specificity(p, g)
            hd = _hd95_medpy(p, g, spacing, hd_margin) if p.any() and g.any() else HD95_EMPTY
        out.update({f"Dice_{region}": dice, f"Sensitivity_{region}": sens, f"Specificity_{region}": spec,
                    f"Hausdorff95_{region}": hd})
    return out


def assert_matches_medpy(pred, gt, spacing, hd_margin: int | None = None) -> dict[str, float]:
    ours = case_metrics(pred, gt, spacing)
    assert list(ours) == list(COLUMNS)
    ref = reference_metrics(pred, gt, spacing, hd_margin)
    for column in COLUMNS:
        tol = HD_TOL if column.startswith("Hausdorff") else RATIO_TOL
        assert ours[column] == pytest.approx(ref[column], abs=tol), column
    return ours


def ball(shape, centre, radius_mm, spacing) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    d2 = sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3))
    return d2 <= radius_mm**2


def nested_tumour(shape, centre, spacing, scale=1.0) -> np.ndarray:
    """Internal labels: edema ball around a core ball around an enhancing ball (off-centre)."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[ball(shape, centre, 9 * scale, spacing)] = 2
    labels[ball(shape, centre, 6 * scale, spacing)] = 1
    labels[ball(shape, np.add(centre, (1, 1, 0)), 3.5 * scale, spacing)] = 3
    return labels


# ------------------------------------------------------------------------------------------- known answers


def test_identical_masks_are_perfect():
    spacing = (1.0, 1.0, 1.0)
    gt = nested_tumour((40, 40, 30), (20, 20, 15), spacing)
    ours = assert_matches_medpy(gt.copy(), gt, spacing)
    for region in ("ET", "WT", "TC"):
        assert ours[f"Dice_{region}"] == 1.0
        assert ours[f"Sensitivity_{region}"] == 1.0
        assert ours[f"Specificity_{region}"] == 1.0
        assert ours[f"Hausdorff95_{region}"] == 0.0


def test_two_single_voxels_hd95_is_their_distance_in_mm():
    spacing = (0.9, 1.3, 2.5)
    shape = (20, 20, 20)
    pred, gt = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    pred[5, 5, 5] = 2
    gt[8, 5, 9] = 2
    ours = assert_matches_medpy(pred, gt, spacing)
    assert ours["Hausdorff95_WT"] == pytest.approx(math.hypot(3 * 0.9, 4 * 2.5), abs=1e-9)
    assert ours["Dice_WT"] == 0.0 and ours["Sensitivity_WT"] == 0.0
    assert ours["Specificity_WT"] == pytest.approx((pred.size - 2) / (pred.size - 1))
    assert ours["Hausdorff95_ET"] == 0.0 and ours["Dice_ET"] == 1.0  # no ET anywhere: both empty


@pytest.mark.parametrize("shift", [(2, 0, 0), (0, -3, 1), (1, 2, -2)])
def test_shifted_spheres_with_anisotropic_spacing(shift):
    spacing = (0.8, 1.25, 2.0)
    shape = (48, 36, 24)
    gt = nested_tumour(shape, (24, 18, 12), spacing)
    pred = nested_tumour(shape, np.add((24, 18, 12), shift), spacing)
    ours = assert_matches_medpy(pred, gt, spacing)
    # A pure shift moves every surface point by at most the shift's length.
    assert 0 < ours["Hausdorff95_WT"] <= np.linalg.norm(np.multiply(shift, spacing)) + 1e-9


def test_masks_touching_the_volume_border():
    spacing = (1.0, 1.5, 1.0)
    shape = (30, 30, 20)
    gt = np.zeros(shape, np.uint8)
    gt[:12, 5:25, :] = 2  # touches three faces of the volume
    gt[:6, 10:20, :8] = 1
    gt[:3, 12:16, :4] = 3
    pred = np.roll(gt, 2, axis=1)
    pred[-4:, -6:, -5:] = 3  # a false positive in the opposite corner, touching three other faces
    assert_matches_medpy(pred, gt, spacing)
    assert_matches_medpy(gt, pred, spacing)


@pytest.mark.parametrize(
    "pred_region, gt_region, expected",
    [
        (False, False, {"Dice": 1.0, "Sensitivity": 1.0, "Specificity": 1.0, "Hausdorff95": 0.0}),
        (False, True, {"Dice": 0.0, "Sensitivity": 0.0, "Specificity": 1.0, "Hausdorff95": HD95_EMPTY}),
        (True, False, {"Dice": 0.0, "Sensitivity": 0.0, "Hausdorff95": HD95_EMPTY}),
    ],
)
def test_empty_mask_conventions(pred_region, gt_region, expected):
    shape = (16, 16, 16)
    blob = np.zeros(shape, dtype=bool)
    blob[4:9, 5:10, 6:12] = True
    pred = np.zeros(shape, np.uint8)
    gt = np.zeros(shape, np.uint8)
    # ET present or absent; WT always present in the ground truth so only the ET region is (partly) empty.
    gt[2:14, 2:14, 2:14] = 2
    if pred_region:
        pred[blob] = 3
    if gt_region:
        gt[blob] = 3
    ours = case_metrics(pred, gt, (1.0, 1.0, 1.0))
    for metric, value in expected.items():
        assert ours[f"{metric}_ET"] == value, metric
    if pred_region and not gt_region:  # specificity still follows its formula: TN / (TN + FP)
        assert ours["Specificity_ET"] == pytest.approx((pred.size - blob.sum()) / pred.size)
    assert ours == pytest.approx(reference_metrics(pred, gt, (1.0, 1.0, 1.0)), abs=HD_TOL)


def test_both_volumes_empty_is_perfect_everywhere():
    empty = np.zeros((10, 12, 8), np.uint8)
    ours = case_metrics(empty, empty, (1.0, 1.0, 3.0))
    for r in ("ET", "WT", "TC"):
        assert ours[f"Dice_{r}"] == ours[f"Sensitivity_{r}"] == ours[f"Specificity_{r}"] == 1.0
    assert all(ours[f"Hausdorff95_{r}"] == 0.0 for r in ("ET", "WT", "TC"))
    assert HD95_EMPTY == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=1e-6)


def test_binary_metrics_on_a_crop_counts_the_whole_volume_negatives():
    pred = np.zeros((4, 4, 4), bool)
    gt = np.zeros((4, 4, 4), bool)
    pred[1, 1, 1] = pred[1, 1, 2] = True
    gt[1, 1, 1] = True
    full = binary_metrics(pred, gt, (1, 1, 1), n_voxels=1000)
    assert full["Specificity"] == pytest.approx((1000 - 1 - 1) / (1000 - 1))
    assert full["Dice"] == pytest.approx(2 / 3) and full["Sensitivity"] == 1.0


def test_dice_scores_agree_with_case_metrics():
    spacing = (1.0, 1.0, 1.0)
    gt = nested_tumour((40, 40, 30), (20, 20, 15), spacing)
    pred = nested_tumour((40, 40, 30), (21, 19, 15), spacing, scale=1.1)
    full = case_metrics(pred, gt, spacing)
    assert dice_scores(pred, gt) == pytest.approx({r: full[f"Dice_{r}"] for r in ("ET", "WT", "TC")}, abs=1e-12)
    assert dice_scores(np.zeros_like(gt), np.zeros_like(gt)) == {"ET": 1.0, "WT": 1.0, "TC": 1.0}


def test_bad_inputs_are_refused():
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        case_metrics(a, np.zeros((4, 4, 5), np.uint8), (1, 1, 1))
    b = a.copy()
    b[1, 1, 1] = 4  # a BraTS 2020 label that was not converted to internal labels
    with pytest.raises(ValueError, match="outside the internal labels"):
        case_metrics(b, a, (1, 1, 1))


# ------------------------------------------------------------------------------------------- real label maps


def _perturb(labels: np.ndarray, how: str) -> np.ndarray:
    if how == "eroded":  # every label shrinks by one voxel where it meets another label or background
        out = labels.copy()
        for value in (1, 2, 3):
            mask = labels == value
            out[mask & ~ndimage.binary_erosion(mask)] = 0
        return out
    if how == "dilated":  # each label grows into its neighbours (the highest label wins)
        return ndimage.grey_dilation(labels, size=(3, 3, 3))
    if how == "shifted":
        return np.roll(labels, (3, -2, 1), axis=(0, 1, 2))
    raise AssertionError(how)


@pytest.mark.realdata
@pytest.mark.parametrize(
    "case, convention, how, spacing",
    [
        ("BraTS20_Training_001", "brats2020", "eroded", None),
        ("BraTS20_Training_001", "brats2020", "dilated", None),
        ("BraTS20_Training_001", "brats2020", "shifted", None),
        ("BraTS-GLI-00000-000", "brats2023", "shifted", (1.0, 1.0, 1.0)),
        ("Brats18_2013_2_1", "brats2020", "dilated", (0.9, 1.1, 2.0)),  # anisotropic spacing on a real shape
    ],
)
def test_real_label_maps_against_perturbed_copies(real_data, case, convention, how, spacing):
    folder = real_data / case
    seg = next(p for p in folder.iterdir() if p.name.endswith(("_seg.nii.gz", "-seg.nii.gz")))
    img = nib.load(seg)
    gt = to_internal(np.asanyarray(img.dataobj), convention)
    spacing = spacing or tuple(float(z) for z in img.header.get_zooms()[:3])
    ours = assert_matches_medpy(_perturb(gt, how), gt, spacing, hd_margin=20)
    assert 0.3 < ours["Dice_WT"] < 1.0 and ours["Hausdorff95_WT"] > 0


# ------------------------------------------------------------------------------------ Hausdorff95 rules


def _brute_force_hd95_max(pred: np.ndarray, gt: np.ndarray, spacing) -> float:
    """The ``max`` rule from first principles: surface voxels found by comparing each voxel with its six
    neighbours (outside the volume is background), every pairwise distance in mm, the 95th percentile of each
    direction's nearest distances, the larger of the two."""

    def surface_points(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        inner = padded[1:-1, 1:-1, 1:-1]
        interior = inner.copy()
        for axis in range(3):
            for step in (-1, 1):
                interior &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(inner & ~interior) * np.asarray(spacing, dtype=np.float64)

    from scipy.spatial.distance import cdist

    d = cdist(surface_points(pred), surface_points(gt))
    return max(float(np.percentile(d.min(axis=1), 95)), float(np.percentile(d.min(axis=0), 95)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_max_rule_matches_a_brute_force_computation(seed):
    rng = np.random.default_rng(seed)
    spacing = tuple(rng.uniform(0.7, 2.2, 3))
    shape = (18, 16, 12)
    gt = ndimage.binary_dilation(rng.random(shape) > 0.985, iterations=2)
    pred = ndimage.binary_dilation(rng.random(shape) > 0.99, iterations=1)
    pred[0, :4, :] = True  # touches the volume border
    expected = _brute_force_hd95_max(pred, gt, spacing)
    ours = binary_metrics(pred, gt, spacing, hd95="max")["Hausdorff95"]
    assert ours == pytest.approx(expected, abs=1e-9)
    pooled = binary_metrics(pred, gt, spacing)["Hausdorff95"]
    assert pooled == pytest.approx(medpy_binary.hd95(pred, gt, voxelspacing=spacing, connectivity=1), abs=HD_TOL)
    assert ours >= pooled - 1e-9  # the pooled percentile lies between the two directed ones


def test_hd95_max_differs_from_pooled_where_the_directions_disagree():
    """The ground truth and a prediction with the same ball plus a small false positive away from it: every
    ground-truth surface voxel lies on the prediction's surface (distance 0), and the false positive holds about
    8% of the prediction's surface voxels, so its directed 95th percentile is the false positive's distance while
    the pooled one (about 4% of all distances) stays 0."""
    spacing = (1.0, 1.0, 1.0)
    shape = (36, 30, 30)
    gt = np.zeros(shape, np.uint8)
    gt[ball(shape, (12, 15, 15), 8, spacing)] = 2
    pred = gt.copy()
    pred[ball(shape, (29, 15, 15), 2.5, spacing)] = 2
    pooled = case_metrics(pred, gt, spacing)["Hausdorff95_WT"]
    strict = case_metrics(pred, gt, spacing, hd95="max")["Hausdorff95_WT"]
    assert strict == pytest.approx(_brute_force_hd95_max(pred > 0, gt > 0, spacing), abs=1e-9)
    assert pooled == 0.0 and strict > 8.0


def test_hd95_rules_for_empty_masks():
    from agsevnet.evaluate.metrics import HD95_EMPTY_MAX, HD95_RULES

    shape = (10, 10, 10)
    some = np.zeros(shape, np.uint8)
    some[3:6, 3:6, 3:6] = 3
    empty = np.zeros(shape, np.uint8)
    assert set(HD95_RULES) == {"pooled", "max"} and HD95_EMPTY_MAX == 374.0
    for a, b in ((some, empty), (empty, some)):
        assert case_metrics(a, b, hd95="max")["Hausdorff95_ET"] == 374.0
        assert case_metrics(a, b)["Hausdorff95_ET"] == HD95_EMPTY  # the default stays the pooled rule
    assert all(v == 0.0 for k, v in case_metrics(empty, empty, hd95="max").items() if k.startswith("Hausdorff"))
    with pytest.raises(ValueError, match="Hausdorff95 rule"):
        case_metrics(some, some, hd95="mean")
