"""Phantoms as they come from the scanner: a head round the brain (``agsevnet.synth.head``) and the clinical
acquisition of each sequence on its own tilted, thick-sliced grid (``agsevnet.synth.acquisition``), through
``make_phantom(head=True)``, ``write_phantom_dataset(head=, clinical=)`` and ``agsevnet phantom --head
--clinical``. Small grids (the brain scales with the grid; layer thicknesses and slices do not)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from agsevnet import MODALITIES
from agsevnet.data.labels import to_internal
from agsevnet.errors import ConfigError
from agsevnet.synth.acquisition import (
    AXIAL_DIRECTIONS,
    IDENTITY,
    acquire,
    acquire_case,
    acquisition_grid,
    resample,
    resample_labels,
)
from agsevnet.synth.phantom import (
    BRATS_AFFINE,
    TISSUES,
    brain_mask,
    case_seed,
    make_phantom,
    make_phantom_with_tissues,
    write_phantom_dataset,
)
from helpers import run_cli

SHAPE = (96, 96, 64)
FLAIR, T1, T1CE, T2 = range(4)
HEAD_LAYERS = ("subarachnoid_csf", "bone", "marrow", "fat", "skin")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def heads() -> list[tuple]:
    """(plain images, plain labels, head images, head labels, head tissues) for two seeds."""
    out = []
    for seed in (0, 1):
        plain, labels = make_phantom(seed, SHAPE)
        images, head_labels, tissues = make_phantom_with_tissues(seed, SHAPE, head=True)
        out.append((plain, labels, images, head_labels, tissues))
    return out


# ----------------------------------------------------------------------------------------------------------
# The head


def test_head_leaves_brain_and_labels_as_they_were(heads):
    for plain, labels, images, head_labels, tissues in heads:
        assert np.array_equal(head_labels, labels)
        brain = brain_mask(tissues)
        assert np.array_equal(brain, plain[T1] > 0)  # the brain mask is the skull-stripped phantom's support
        assert np.array_equal(np.where(brain, images, 0), plain)  # brain voxels untouched, outside was all zero
        assert images.dtype == np.float32 and np.array_equal(images, np.rint(images)) and images.min() >= 0


def test_signal_everywhere_outside_the_brain(heads):
    for plain, _, images, _, tissues in heads:
        outside = ~brain_mask(tissues)
        assert not plain[:, outside].any()
        for m in range(4):
            assert (images[m][outside] > 0).mean() > 0.9  # skull, scalp and noisy air: no longer zero


def test_layers_run_from_the_brain_outwards(heads):
    """CSF, inner table, diploe, outer table, fat, skin: each further from the brain than the one before."""
    for _, _, _, _, tissues in heads:
        distance = ndimage.distance_transform_edt(~brain_mask(tissues))
        present = {name: tissues == TISSUES[name] for name in HEAD_LAYERS}
        assert all(mask.sum() > 500 for mask in present.values())
        depth = {name: float(np.median(distance[mask])) for name, mask in present.items()}
        assert depth["subarachnoid_csf"] < depth["marrow"] < depth["fat"] < depth["skin"]
        assert depth["subarachnoid_csf"] < float(np.median(distance[present["bone"]])) < depth["fat"]
        # Air is outside the head, not between its layers: every air voxel is further out than the skin's median.
        air = tissues == 0
        assert np.percentile(distance[air], 1) >= depth["skin"] - 1


def test_head_contrasts_follow_the_sequences(heads):
    """Fat and marrow bright on T1 (brighter than CSF and WM), CSF bright on T2 and dark on FLAIR, bone dark."""
    for _, _, images, _, tissues in heads:
        med = {name: np.median(images[:, tissues == TISSUES[name]], axis=1) for name in
               (*HEAD_LAYERS, "csf", "white_matter")}
        assert med["marrow"][T1] > 2 * med["csf"][T1] and med["fat"][T1] > 2 * med["csf"][T1]
        assert med["fat"][T1] > med["white_matter"][T1]
        assert med["subarachnoid_csf"][T2] > med["fat"][T2] and med["csf"][T2] > 2 * med["white_matter"][T2]
        assert med["subarachnoid_csf"][FLAIR] < 0.5 * med["white_matter"][FLAIR]
        for m in range(4):
            assert med["bone"][m] < 0.8 * med["fat"][m] and med["bone"][m] < 0.8 * med["marrow"][m]


def test_air_is_magnitude_noise(heads):
    """Air holds the magnitude of complex Gaussian noise (Rayleigh: mean / std = 1.91), not a constant."""
    for _, _, images, _, tissues in heads:
        air = (tissues == 0) & (ndimage.distance_transform_edt(tissues == 0) > 3)
        for m in range(4):
            values = images[m][air]
            assert values.std() > 2
            assert 1.7 < values.mean() / values.std() < 2.15


def test_head_is_deterministic(heads):
    images, labels = make_phantom(0, SHAPE, head=True)
    assert np.array_equal(images, heads[0][2]) and np.array_equal(labels, heads[0][3])
    assert not np.array_equal(images, heads[1][2])


# ----------------------------------------------------------------------------------------------------------
# Acquisition geometry


def test_identity_acquisition_on_the_source_grid_is_the_source():
    rng = np.random.default_rng(0)
    volume = rng.random((20, 18, 12)).astype(np.float32)
    shape, affine = acquisition_grid(volume.shape, BRATS_AFFINE, IDENTITY, voxel_size=(1, 1, 1), matrix=volume.shape)
    # The BraTS affine is the axial DICOM layout at 1 mm; the grid is centred on the source's centre.
    assert shape == volume.shape and np.allclose(affine[:3, :3], AXIAL_DIRECTIONS)
    assert np.allclose(affine @ [0, 0, 0, 1], BRATS_AFFINE @ [0, 0, 0, 1])
    assert np.allclose(acquire(volume, BRATS_AFFINE, shape, affine), volume, atol=1e-5)


def test_thick_slices_average_what_they_cover():
    """A 1 mm bright sheet seen by 5 mm slices: a fifth of its intensity in the one slice that holds it (partial
    volume, as a scanner's slice profile gives), not all of it or nothing (point sampling)."""
    volume = np.zeros((16, 16, 40), np.float32)
    volume[:, :, 22] = 100.0
    shape, affine = acquisition_grid(volume.shape, BRATS_AFFINE, voxel_size=(1, 1, 5), matrix=(16, 16, 8))
    acquired = acquire(volume, BRATS_AFFINE, shape, affine)
    profile = acquired[8, 8]
    assert profile.max() == pytest.approx(20.0, abs=1e-3) and np.count_nonzero(profile > 1e-3) == 1
    assert acquired.sum() * 5 == pytest.approx(volume.sum(), rel=1e-5)


def test_grid_pose_and_slices_are_in_the_affine():
    rng = np.random.default_rng(3)
    source_shape = (100, 110, 60)
    for _ in range(5):
        sequence = acquire_case(np.zeros((1, *source_shape), np.float32), BRATS_AFFINE, rng, max_rotation_deg=12,
                                max_shift_mm=15, voxel_size=(0.9, 0.8, 5.0))[0]
        pose, affine = sequence.pose, sequence.affine
        assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), (0.9, 0.8, 5.0))
        rotation = affine[:3, :3] / np.array([0.9, 0.8, 5.0]) @ np.linalg.inv(AXIAL_DIRECTIONS)
        angle = np.rad2deg(Rotation.from_matrix(rotation).magnitude())
        assert angle == pytest.approx(pose.rotation_deg, abs=1e-6) and angle <= 12
        assert np.linalg.norm(pose.shift_mm) <= 15
        # The grid's centre is the source's centre moved by the shift.
        centre = (BRATS_AFFINE @ [*(np.array(source_shape) - 1) / 2, 1])[:3]
        grid_centre = (affine @ [*(np.array(sequence.data.shape) - 1) / 2, 1])[:3]
        assert np.allclose(grid_centre, centre + np.array(pose.shift_mm), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Clinical datasets


@pytest.fixture(scope="module")
def clinical(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clinical")
    write_phantom_dataset(out, 2, seed=5, shape=SHAPE, head=True, clinical=True, max_rotation_deg=12,
                          max_shift_mm=15, voxel_size=(0.9, 0.9, 5.0))
    return out


def test_clinical_layout_and_truth(clinical):
    for index in (1, 2):
        cid = f"Phantom_{index:03d}"
        raw = sorted(p.name for p in (clinical / "raw" / cid).iterdir())
        assert raw == sorted(f"{cid}_{m}.nii.gz" for m in MODALITIES)  # images only: nothing else to mistake
        truth = clinical / "truth" / cid
        plain, labels = make_phantom(case_seed(5, index), SHAPE)
        for c, m in enumerate(MODALITIES):
            img = nib.load(truth / f"{cid}_{m}.nii.gz")
            assert np.allclose(img.affine, BRATS_AFFINE) and np.array_equal(np.asarray(img.dataobj), plain[c])
        seg = np.asarray(nib.load(truth / f"{cid}_seg.nii.gz").dataobj)
        assert np.array_equal(to_internal(seg, "brats2020"), labels)
        mask = np.asarray(nib.load(truth / f"{cid}_brainmask.nii.gz").dataobj)
        assert np.array_equal(mask > 0, plain[T1] > 0)


def test_each_sequence_has_its_own_grid_with_thick_slices(clinical):
    cid = "Phantom_001"
    record = json.loads((clinical / "truth" / cid / "acquisition.json").read_text())
    affines, shapes = [], []
    for m in MODALITIES:
        info = record["sequences"][m]
        img = nib.load(clinical / info["file"])
        assert img.header.get_sform(coded=True)[1] == 1 and img.header.get_qform(coded=True)[1] == 1
        assert np.allclose(img.affine, info["affine"], atol=1e-4)
        assert np.allclose(img.header.get_zooms(), (0.9, 0.9, 5.0))
        assert np.allclose(np.linalg.norm(img.affine[:3, :3], axis=0), (0.9, 0.9, 5.0), atol=1e-4)
        assert list(img.shape) == info["shape"] and img.get_data_dtype() == np.int16
        assert info["pose"]["rotation_deg"] <= 12 and np.linalg.norm(info["pose"]["shift_mm"]) <= 15
        affines.append(img.affine)
        shapes.append(img.shape)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.allclose(affines[i], affines[j], atol=0.5)
    assert len(set(shapes)) > 1  # own matrices
    assert max(s[2] for s in shapes) * 5.0 < SHAPE[2] * 1.05  # thick slices: few of them


def test_moving_a_sequence_back_puts_the_tumour_back(clinical):
    """Labels acquired on the T1ce's thick-sliced grid, moved back with the files' affines: WT Dice >= 0.8."""
    for index in (1, 2):
        cid = f"Phantom_{index:03d}"
        truth = clinical / "truth" / cid
        seg = nib.load(truth / f"{cid}_seg.nii.gz")
        native = nib.load(truth / f"{cid}_seg_on_t1ce_grid.nii.gz")
        t1ce = nib.load(clinical / "raw" / cid / f"{cid}_t1ce.nii.gz")
        assert native.shape == t1ce.shape and np.allclose(native.affine, t1ce.affine)
        back = resample_labels(np.asarray(native.dataobj), native.affine, seg.shape, seg.affine)
        gt = np.asarray(seg.dataobj)
        assert dice(back > 0, gt > 0) >= 0.8
        # Without the pose (the grid as if untilted and unshifted) the tumour lands elsewhere.
        record = json.loads((truth / "acquisition.json").read_text())
        pose = record["sequences"]["t1ce"]["pose"]
        if pose["rotation_deg"] > 4 or np.linalg.norm(pose["shift_mm"]) > 6:
            _, unposed = acquisition_grid(SHAPE, BRATS_AFFINE, voxel_size=(0.9, 0.9, 5.0), matrix=native.shape)
            wrong = resample_labels(np.asarray(native.dataobj), unposed, seg.shape, seg.affine)
            assert dice(wrong > 0, gt > 0) < dice(back > 0, gt > 0) - 0.1


def test_acquired_images_lie_where_their_affines_say():
    """Each sequence's voxels, resampled back onto the BraTS grid with its affine, match the phantom (thin slices,
    so the comparison is not blurred); with the pose left out they do not."""
    images, _ = make_phantom(2, SHAPE, head=True)
    truth, _ = make_phantom(2, SHAPE)
    brain = truth[T1] > 0
    sequences = acquire_case(images, BRATS_AFFINE, np.random.default_rng(7), max_rotation_deg=12, max_shift_mm=15,
                             voxel_size=(0.9, 0.9, 1.5))
    for c, sequence in enumerate(sequences):
        back = resample(sequence.data, sequence.affine, SHAPE, BRATS_AFFINE)
        assert np.corrcoef(back[brain], truth[c][brain])[0, 1] > 0.8
        if sequence.pose.rotation_deg > 4:
            _, unposed = acquisition_grid(SHAPE, BRATS_AFFINE, voxel_size=(0.9, 0.9, 1.5), matrix=sequence.data.shape)
            wrong = resample(sequence.data, unposed, SHAPE, BRATS_AFFINE)
            assert np.corrcoef(wrong[brain], truth[c][brain])[0, 1] < 0.6


def test_clinical_phantoms_need_a_brats_layout(tmp_path):
    with pytest.raises(ConfigError, match="BraTS layouts"):
        write_phantom_dataset(tmp_path / "msd", 1, 0, shape=(32, 32, 24), naming="msd", head=True)
    with pytest.raises(ConfigError, match="voxel size"):
        write_phantom_dataset(tmp_path / "v", 1, 0, shape=(32, 32, 24), clinical=True, voxel_size=(1, 0, 5))


def test_cli_head_and_clinical(tmp_path):
    out = tmp_path / "scans"
    code = run_cli(["phantom", str(out), "-n", "1", "--shape", "48", "48", "32", "--naming", "brats2023", "--head",
                    "--clinical", "--max-rotation", "8", "--max-shift", "5", "--voxel-size", "1", "1", "4", "-j", "1"])
    assert code == 0
    cid = "Phantom-00001-000"
    assert sorted(p.name for p in (out / "raw" / cid).iterdir()) == sorted(
        f"{cid}-{t}.nii.gz" for t in ("t2f", "t1n", "t1c", "t2w"))
    record = json.loads((out / "truth" / cid / "acquisition.json").read_text())
    for info in record["sequences"].values():
        assert info["voxel_size"] == [1.0, 1.0, 4.0]
        assert info["pose"]["rotation_deg"] <= 8 and np.linalg.norm(info["pose"]["shift_mm"]) <= 5
    img = nib.load(out / "raw" / cid / f"{cid}-t1n.nii.gz")
    assert np.allclose(img.header.get_zooms(), (1, 1, 4))
    assert (out / "truth" / cid / f"{cid}-seg.nii.gz").exists()
    # --head alone: the BraTS grid, with a head.
    code = run_cli(["phantom", str(tmp_path / "heads"), "-n", "1", "--shape", "48", "48", "32", "--head", "-j", "1"])
    assert code == 0
    t1 = nib.load(tmp_path / "heads" / "raw" / "Phantom_001" / "Phantom_001_t1.nii.gz")
    assert t1.shape == (48, 48, 32) and np.allclose(t1.affine, BRATS_AFFINE)
    stripped = np.asarray(nib.load(tmp_path / "heads" / "truth" / "Phantom_001" / "Phantom_001_t1.nii.gz").dataobj)
    assert (np.asarray(t1.dataobj)[stripped == 0] > 0).mean() > 0.9
    assert not (tmp_path / "heads" / "truth" / "Phantom_001" / "acquisition.json").exists()
