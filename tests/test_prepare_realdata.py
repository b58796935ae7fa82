"""A real BraTS case re-recorded as a clinical acquisition (each sequence its own rigid pose of up to 12 deg and
15 mm, 0.9 x 0.9 x 5 mm axial slices), then ``prepare`` and ``predict --prepare`` (issue 16): against the original
on the BraTS grid, against the original prepared unmoved, and the bundled model's Dice on the native grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from agsevnet import MODALITIES

pytest.importorskip("SimpleITK")

from prepare_helpers import acquire, back_on_atlas, brain_centre_lps, dice, random_pose  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


# Where rigid registration to the SRI24 brain puts the unmoved cases of ../shared (2026-12-05): the brain's centre
# within 1.9 mm (turned 0.8-5.3 deg) of its BraTS position for the BraTS 2018-2020 cases (BraTS20_Training_001:
# 0.6 mm, 3.6 deg), 5.9-11.0 mm for the BraTS 2021 ones.
ATLAS_CONFORMANT = ("BraTS20_Training_001",)


@pytest.mark.parametrize("CASE", ["BraTS20_Training_001", "BraTS2021_00000"])
def test_real_case_as_a_clinical_acquisition_round_trip(real_data, tmp_path, CASE) -> None:
    from agsevnet.data.labels import region_masks, to_internal
    from agsevnet.infer.bundled import resolve_model
    from agsevnet.infer.predictor import predict
    from agsevnet.prepare.atlas import BRATS_AFFINE
    from agsevnet.prepare.geometry import from_list, from_sitk, grid_image, resample, to_sitk
    from agsevnet.prepare.native import labels_to_native, predict_native

    src = real_data / CASE
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    images = np.stack([np.asarray(nib.load(src / f"{CASE}_{m}.nii.gz").dataobj, np.float32) for m in MODALITIES])
    gt = to_internal(np.asarray(nib.load(src / f"{CASE}_seg.nii.gz").dataobj).astype(np.uint8), "brats2020")
    mask = images.max(axis=0) > 0
    rng = np.random.default_rng(16)
    centre = brain_centre_lps(mask)
    folder = tmp_path / "patient"
    folder.mkdir()
    poses = {}
    for c, m in enumerate(MODALITIES):
        poses[m] = random_pose(rng, 12.0, 15.0, centre)
        acq = acquire(images[c], poses[m], centre + rng.uniform(-10, 10, 3), spacing=(0.9, 0.9, 5.0),
                      size=(256, 256, 36))
        nib.save(nib.Nifti1Image(acq.data, acq.affine), folder / f"clinical_{m}.nii.gz")

    # predict --prepare (prepares into OUT/prepared first)
    out = tmp_path / "p"
    done = predict_native(folder, out, resolve_model(None), method="probabilities", progress=False)
    record = done["record"]
    prepared = json.loads((out / "prepared" / "patient" / "prepare.json").read_text())
    got_mask = np.stack([np.asarray(nib.load(out / "prepared" / "patient" / f"patient_{m}.nii.gz").dataobj) > 0
                         for m in MODALITIES]).any(axis=0)
    mask_dice = dice(got_mask, mask)
    # the original brain seen through the transform prepare found (atlas point -> T1ce file -> original point)
    found = poses["t1ce"] @ from_list(prepared["transforms"]["atlas_to_native"]["t1ce"])
    moved_mask = back_on_atlas(mask.astype(np.float32), found) > 0.5
    consistent_dice = dice(got_mask, moved_mask)

    # the ground truth as the scanner would hold it: on the T1ce's grid, through the T1ce's pose
    ref = nib.load(folder / "clinical_t1ce.nii.gz")
    gt_native = np.rint(from_sitk(resample(to_sitk(gt.astype(np.float32), BRATS_AFFINE),
                                           grid_image(ref.shape, ref.affine), poses["t1ce"],
                                           interpolation="nearest"))).astype(np.uint8)
    by_prob = to_internal(np.asarray(nib.load(out / "patient.nii.gz").dataobj).astype(np.uint8), "brats2020")
    atlas_labels = to_internal(np.asarray(nib.load(out / "atlas" / "patient.nii.gz").dataobj).astype(np.uint8),
                               "brats2020")
    by_nearest = labels_to_native(atlas_labels, prepared, method="nearest")

    # the same model on the original case
    predict(src, resolve_model(None), tmp_path / "orig", progress=False, raise_errors=True)
    orig = to_internal(np.asarray(nib.load(tmp_path / "orig" / f"{CASE}.nii.gz").dataobj).astype(np.uint8),
                       "brats2020")

    # the original itself prepared (unmoved, 1 mm): where prepare puts this brain, whatever its BraTS position
    from agsevnet.prepare.pipeline import prepare

    direct = prepare(src, tmp_path / "direct", files={m: src / f"{CASE}_{m}.nii.gz" for m in MODALITIES},
                     case_id="direct", picture=False)
    direct_mask = np.asarray(nib.load(direct.case_dir / "direct_t1ce.nii.gz").dataobj) > 0
    from agsevnet.prepare.geometry import motion

    direct_motion = motion(from_list(direct.record["transforms"]["atlas_to_native"]["t1ce"]), centre)

    def scores(pred, truth):
        p, t = region_masks(pred), region_masks(truth)
        return {r: round(dice(p[r], t[r]), 4) for r in ("WT", "TC", "ET")}

    figures = {"case": CASE, "mask_dice": round(mask_dice, 4),
               "mask_dice_vs_prepared_original": round(dice(got_mask, direct_mask), 4),
               "original_to_atlas": direct_motion, "mask_dice_found_transform": round(consistent_dice, 4), "original": scores(orig, gt),
               "native_probabilities": scores(by_prob, gt_native), "native_nearest": scores(by_nearest, gt_native),
               "atlas_space": scores(atlas_labels, np.rint(back_on_atlas(gt.astype(np.float32), found)).astype(np.uint8)),
               "qc": record["prepare_qc"], "seconds": prepared["seconds"]}
    print(json.dumps(figures))
    assert prepared["qc"]["skull_stripped_input"]
    # The round trip itself: the moved thick-slice acquisition lands where prepare puts the unmoved original
    # (measured 2026-12-05: 0.987 and 0.986), and the prepared brain matches the original seen through the transform
    # that was found.
    assert figures["mask_dice_vs_prepared_original"] >= 0.95
    assert consistent_dice >= 0.95
    # issue 16's target on the labels, for both cases (bundled brats-robust, measured 2026-12-05: WT on the native
    # grid 0.899 nearest / 0.896 probabilities against 0.901 on the original BraTS20_Training_001; 0.874 / 0.835
    # against 0.895 on BraTS2021_00000; brats-cpu gave 0.66 there, false edema along the 5 mm brain surface).
    for key in ("native_probabilities", "native_nearest"):
        assert figures[key]["WT"] >= figures["original"]["WT"] - 0.1, key
    if CASE in ATLAS_CONFORMANT:
        # issue 16's target on the brain mask, on a case whose BraTS position is where the SRI24 atlas puts it
        # (measured: 0.972)
        assert mask_dice >= 0.95
    else:
        # BraTS2021_00000 sits 7.2 mm / 5.2 deg from where rigid registration to the SRI24 brain puts it (every
        # BraTS 2021 case here: 6-11 mm; on the BraTS grid itself the centres of their brains lie 4-7.5 mm anterior
        # of the atlas brain's, those of the 2018-2020 cases within 2.1 mm). Registration variants leave the same
        # residual (see the README), so no atlas registration gives its BraTS position back: mask Dice 0.926
        # against the original (the target, 0.95, is missed for this reason), 0.986 against the original
        # prepared unmoved.
        assert mask_dice >= 0.9


def test_prepare_does_not_depend_on_the_slice_order_of_the_files(real_data, tmp_path) -> None:
    """The scanner's TCGA-FG-6692 stored with every series' slices in the opposite order (as one DICOM reader or
    converter does and another does not) is the same images in the same world, and must be prepared the same.
    Before the inputs were put in one voxel order (``pipeline.canonical``), the registration grids and their
    random samples followed the file's order: transforms 4.4-4.8 mm apart (95th percentile over the brain), brain
    Dice 0.973 between the two; with the affine stage 8.8-9.4 mm and 1618 against 1712 ml. Measured with it
    (2026-12-05): 0.52 mm, Dice 0.998, 1601.1 against 1600.3 ml (the header's float32 origin rounds differently
    once reversed, and the registration's end point moves within its own precision)."""
    from agsevnet.prepare.atlas import BRATS_AFFINE
    from agsevnet.prepare.geometry import LPS, from_list
    from agsevnet.prepare.pipeline import prepare

    src = real_data.parent / "clinical-raw" / "TCGA-FG-6692"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    reversed_dir = tmp_path / "reversed" / src.name
    reversed_dir.mkdir(parents=True)
    for path in sorted(src.glob("*.nii.gz")):
        img = nib.load(path)
        n = img.shape[2]
        flip = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, n - 1], [0, 0, 0, 1]], float)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, ::-1].copy(), img.affine @ flip), reversed_dir / path.name)
    done = [prepare(folder, tmp_path / f"out{i}", picture=False) for i, folder in enumerate((src, reversed_dir))]
    masks = [np.asarray(nib.load(d.case_dir / f"{d.case_id}_t1ce.nii.gz").dataobj) > 0 for d in done]
    pts = LPS @ BRATS_AFFINE @ np.c_[np.argwhere(masks[0])[::500], np.ones(len(np.argwhere(masks[0])[::500]))].T
    for m in MODALITIES:
        a, b = (from_list(d.record["transforms"]["atlas_to_native"][m]) @ pts for d in done)
        assert np.percentile(np.linalg.norm((a - b)[:3], axis=0), 95) < 1.5, m
    assert dice(*masks) >= 0.99
    volumes = [d.record["qc"]["brain_volume_ml"] for d in done]
    assert abs(volumes[1] / volumes[0] - 1) < 0.005, volumes
