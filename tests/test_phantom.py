"""The phantom generator (``agsevnet.synth.phantom``) and ``agsevnet phantom``: determinism, geometry and
headers of the written files, label conventions of every layout, the nested tumour structure, per-modality
contrasts, refusal to overwrite, and the command line. Small grids only (48x48x32)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from agsevnet.data.labels import allowed_values, to_internal
from agsevnet.data.layouts import discover
from agsevnet.synth.phantom import (
    BRATS_AFFINE,
    NAMINGS,
    TISSUES,
    _smooth_field,
    case_seed,
    make_phantom,
    make_phantom_with_tissues,
    write_phantom_dataset,
)
from agsevnet.errors import ConfigError, OutputExistsError
from helpers import run_cli

SHAPE = (48, 48, 32)
SEEDS = (0, 1, 2, 3)
FLAIR, T1, T1CE, T2 = range(4)
T = TISSUES

# Files of case 1 (and the dataset files) each naming writes, relative to the output folder.
LAYOUT = {
    "brats2020": ["Phantom_001/Phantom_001_flair.nii.gz", "Phantom_001/Phantom_001_t1.nii.gz",
                  "Phantom_001/Phantom_001_t1ce.nii.gz", "Phantom_001/Phantom_001_t2.nii.gz",
                  "Phantom_001/Phantom_001_seg.nii.gz"],
    "brats2023": ["Phantom-00001-000/Phantom-00001-000-t2f.nii.gz", "Phantom-00001-000/Phantom-00001-000-t1n.nii.gz",
                  "Phantom-00001-000/Phantom-00001-000-t1c.nii.gz", "Phantom-00001-000/Phantom-00001-000-t2w.nii.gz",
                  "Phantom-00001-000/Phantom-00001-000-seg.nii.gz"],
    "msd": ["imagesTr/BRATS_001.nii.gz", "labelsTr/BRATS_001.nii.gz", "dataset.json"],
    "nnunet": ["imagesTr/Phantom_001_0000.nii.gz", "imagesTr/Phantom_001_0001.nii.gz",
               "imagesTr/Phantom_001_0002.nii.gz", "imagesTr/Phantom_001_0003.nii.gz",
               "labelsTr/Phantom_001.nii.gz", "dataset.json"],
}
CONVENTION = {"brats2020": "brats2020", "brats2023": "brats2023", "msd": "msd", "nnunet": "msd"}
CASE_IDS = {"brats2020": ["Phantom_001", "Phantom_002"], "brats2023": ["Phantom-00001-000", "Phantom-00002-000"],
            "msd": ["BRATS_001", "BRATS_002"], "nnunet": ["Phantom_001", "Phantom_002"]}


@pytest.fixture(scope="module")
def phantoms() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [make_phantom_with_tissues(seed, SHAPE) for seed in SEEDS]


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------------------
# make_phantom


def test_same_seed_same_phantom_other_seed_other_phantom(phantoms):
    images, labels = make_phantom(SEEDS[0], SHAPE)
    assert np.array_equal(images, phantoms[0][0]) and np.array_equal(labels, phantoms[0][1])
    other_images, other_labels, _ = phantoms[1]
    assert not np.array_equal(images, other_images) and not np.array_equal(labels, other_labels)


def test_arrays_types_and_intensity_scale(phantoms):
    for images, labels, _ in phantoms:
        assert images.shape == (4, *SHAPE) and images.dtype == np.float32
        assert labels.shape == SHAPE and labels.dtype == np.uint8
        assert set(np.unique(labels)) == {0, 1, 2, 3}  # every label, every time
        assert np.array_equal(images, np.rint(images)) and images.min() >= 0 and images.max() < 2**15
        brain = images[FLAIR] > 0
        for m in range(4):  # raw-like scale of the real files: about a hundred to a few thousand
            assert 50 < np.median(images[m][brain]) < 5000, m


def test_brain_is_skull_stripped_and_centred(phantoms):
    for images, labels, tissues in phantoms:
        brain = tissues != T["background"]
        for m in range(4):
            assert np.all(images[m][brain] > 0) and np.all(images[m][~brain] == 0), m
        assert not labels[~brain].any()  # labels only inside the brain
        assert 0.12 < brain.mean() < 0.24  # BraTS: 0.15-0.18 of the volume
        centre = np.argwhere(brain).mean(axis=0) / np.array(SHAPE)
        assert np.all(np.abs(centre - [0.5, 0.53, 0.5]) < 0.08), centre
        assert not brain[0].any() and not brain[-1].any() and not brain[:, 0].any() and not brain[:, -1].any()


def test_tumour_sub_regions_are_nested(phantoms):
    for _, labels, tissues in phantoms:
        core = np.isin(labels, (1, 3))
        around_core = ndimage.binary_dilation(core) & ~core
        assert np.mean(labels[around_core] == 2) > 0.5  # edema round the core (not where it meets CSF)
        necrosis = tissues == T["necrosis"]
        around_necrosis = ndimage.binary_dilation(necrosis) & ~necrosis
        assert np.mean(np.isin(tissues[around_necrosis], (T["enhancing"], T["non_enhancing"]))) > 0.5
        # The tumour lies inside the edema's extent: no enhancing or necrotic voxel far from the tumour mass.
        whole = ndimage.binary_fill_holes(labels > 0)
        assert np.all(whole[np.isin(labels, (1, 3))])


def mean_of(images: np.ndarray, tissues: np.ndarray, modality: int, tissue: str) -> float:
    mask = tissues == T[tissue]
    assert mask.sum() > 10, tissue
    return float(images[modality][mask].mean())


def test_contrasts_per_modality(phantoms):
    for images, _, tissues in phantoms:
        def m(modality: int, tissue: str) -> float:
            return mean_of(images, tissues, modality, tissue)

        assert m(FLAIR, "edema") > 1.2 * m(FLAIR, "white_matter")
        assert m(T2, "edema") > 1.2 * m(T2, "white_matter")
        assert m(T1CE, "enhancing") > 1.2 * m(T1CE, "white_matter")
        assert m(T1CE, "enhancing") > 1.3 * m(T1CE, "necrosis")
        assert m(T1, "necrosis") < 0.9 * m(T1, "white_matter")
        assert m(FLAIR, "csf") < 0.75 * m(FLAIR, "white_matter")  # 0.2-0.3 on a full-size grid
        assert m(T2, "csf") > 2.0 * m(T2, "white_matter")
        assert m(T1, "white_matter") > 1.1 * m(T1, "grey_matter")


def test_noise_is_rician_and_texture_smooth(phantoms):
    images, _, tissues = phantoms[0]
    wm = ndimage.binary_erosion(tissues == T["white_matter"], iterations=1)
    for m in range(4):
        values = images[m][wm]
        spread = values.std() / values.mean()
        assert 0.02 < spread < 0.15, m  # noise, texture and bias present, but far from swamping the contrast
        # Neighbouring voxels differ (noise), less than distant ones differ (smooth bias and texture).
        shifted = np.roll(images[m], 1, axis=0)[wm]
        assert np.abs(values - shifted).mean() > 0.005 * values.mean()


def test_smooth_field_has_unit_variance_and_the_asked_correlation_length():
    rng = np.random.default_rng(0)
    for sigma in (1.5, 3.0, 6.0):  # the FFT path, and (6 voxels: few frequencies) the separable one
        field = _smooth_field(rng, (96, 90, 84), np.full(3, sigma))
        assert field.dtype == np.float32 and abs(field.mean()) < 1e-3 and abs(field.std() - 1) < 1e-3
        lag = int(round(sigma))
        for axis in range(3):
            n = field.shape[axis]
            a, b = np.take(field, range(n - lag), axis), np.take(field, range(lag, n), axis)
            correlation = np.corrcoef(a.ravel(), b.ravel())[0, 1]
            assert abs(correlation - np.exp(-(lag**2) / (4 * sigma**2))) < 0.06, (sigma, axis)


def test_shape_scales_the_brain_and_too_small_is_refused():
    small = make_phantom(5, (32, 32, 24))[0][FLAIR] > 0
    larger = make_phantom(5, (64, 64, 48))[0][FLAIR] > 0
    assert abs(small.mean() - larger.mean()) < 0.04  # same proportions on either grid
    with pytest.raises(ConfigError, match="at least 24"):
        make_phantom(0, (20, 48, 32))


# ----------------------------------------------------------------------------------------------------------
# write_phantom_dataset


@pytest.mark.parametrize("naming", NAMINGS)
def test_each_naming_writes_its_layout_headers_and_label_values(tmp_path, naming):
    out = tmp_path / naming
    written = write_phantom_dataset(out, cases=2, seed=7, shape=SHAPE, naming=naming)
    assert sorted(p.relative_to(out).as_posix() for p in written) == files_under(out)
    first, second = CASE_IDS[naming]
    assert files_under(out) == sorted(set(LAYOUT[naming]) | {f.replace(first, second) for f in LAYOUT[naming]})

    images, labels = make_phantom(case_seed(7, 1), SHAPE)
    label_file = next(out / f for f in LAYOUT[naming] if f.startswith("labels") or "seg" in f)
    image_files = [out / f for f in LAYOUT[naming] if out / f != label_file and f != "dataset.json"]
    for path in [*image_files, label_file]:
        img = nib.load(path)
        assert np.array_equal(img.affine, BRATS_AFFINE), path
        assert img.header["qform_code"] == 1 and img.header["sform_code"] == 1, path
        assert img.header.get_xyzt_units()[0] == "mm" and img.header.get_zooms()[:3] == (1, 1, 1), path
    stored = np.stack([np.asarray(nib.load(p).dataobj) for p in image_files], axis=0)
    if naming == "msd":
        assert stored.shape == (1, *SHAPE, 4)
        stored = np.moveaxis(stored[0], -1, 0)
    assert stored.dtype == np.int16 and np.array_equal(stored, images)  # channels FLAIR, T1, T1ce, T2

    seg = np.asarray(nib.load(label_file).dataobj)
    assert seg.dtype == np.uint8 and seg.shape == SHAPE
    assert set(np.unique(seg)) == set(allowed_values(CONVENTION[naming]))
    assert np.array_equal(to_internal(seg, CONVENTION[naming]), labels)

    specs = discover(out)
    assert [s.case_id for s in specs] == CASE_IDS[naming]
    assert all(s.scheme == naming and s.label_convention == CONVENTION[naming] and not s.problems for s in specs)


def test_dataset_json_of_msd_and_nnunet(tmp_path):
    write_phantom_dataset(tmp_path / "msd", cases=2, seed=1, shape=SHAPE, naming="msd")
    msd = json.loads((tmp_path / "msd" / "dataset.json").read_text())
    assert msd["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"} and msd["numTraining"] == 2
    assert msd["labels"]["1"] == "edema" and msd["labels"]["3"] == "enhancing tumour"
    assert msd["training"][1] == {"image": "./imagesTr/BRATS_002.nii.gz", "label": "./labelsTr/BRATS_002.nii.gz"}

    write_phantom_dataset(tmp_path / "nnunet", cases=3, seed=1, shape=SHAPE, naming="nnunet")
    nnunet = json.loads((tmp_path / "nnunet" / "dataset.json").read_text())
    assert nnunet["channel_names"] == {"0": "FLAIR", "1": "T1", "2": "T1ce", "3": "T2"}
    assert nnunet["labels"] == {"background": 0, "edema": 1, "non_enhancing": 2, "enhancing": 3}
    assert nnunet["numTraining"] == 3 and nnunet["file_ending"] == ".nii.gz"


def test_same_arguments_write_identical_files_and_cases_are_independent(tmp_path):
    a = write_phantom_dataset(tmp_path / "a", cases=2, seed=11, shape=SHAPE)
    b = write_phantom_dataset(tmp_path / "b", cases=2, seed=11, shape=SHAPE, workers=2)  # in worker processes
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert all(pa.read_bytes() == pb.read_bytes() for pa, pb in zip(a, b, strict=True))
    c = write_phantom_dataset(tmp_path / "c", cases=1, seed=12, shape=SHAPE)
    assert a[0].read_bytes() != c[0].read_bytes()
    flair_1, flair_2 = (np.asarray(nib.load(p).dataobj) for p in (a[0], a[5]))
    assert not np.array_equal(flair_1, flair_2)  # case 2 is not a copy of case 1
    assert case_seed(11, 1) != case_seed(11, 2) and case_seed(11, 1) != case_seed(12, 1)


def test_without_labels(tmp_path):
    brats = write_phantom_dataset(tmp_path / "brats", cases=1, seed=0, shape=SHAPE, with_labels=False)
    assert [p.name for p in brats] == ["Phantom_001_flair.nii.gz", "Phantom_001_t1.nii.gz",
                                       "Phantom_001_t1ce.nii.gz", "Phantom_001_t2.nii.gz"]
    write_phantom_dataset(tmp_path / "nnunet", cases=1, seed=0, shape=SHAPE, naming="nnunet", with_labels=False)
    assert files_under(tmp_path / "nnunet") == ["dataset.json"] + [f"imagesTs/Phantom_001_{c:04d}.nii.gz"
                                                                   for c in range(4)]
    assert json.loads((tmp_path / "nnunet" / "dataset.json").read_text())["numTraining"] == 0
    write_phantom_dataset(tmp_path / "msd", cases=1, seed=0, shape=SHAPE, naming="msd", with_labels=False)
    msd = json.loads((tmp_path / "msd" / "dataset.json").read_text())
    assert msd["test"] == ["./imagesTs/BRATS_001.nii.gz"] and msd["training"] == []
    assert all(not s.has_label for s in discover(tmp_path / "msd") + discover(tmp_path / "nnunet"))


def test_refuses_to_overwrite_unless_asked(tmp_path):
    out = tmp_path / "out"
    first = write_phantom_dataset(out, cases=1, seed=0, shape=SHAPE)
    before = first[0].read_bytes()
    with pytest.raises(OutputExistsError, match="not empty"):
        write_phantom_dataset(out, cases=1, seed=1, shape=SHAPE)
    assert first[0].read_bytes() == before  # untouched
    write_phantom_dataset(out, cases=1, seed=1, shape=SHAPE, overwrite=True)
    assert first[0].read_bytes() != before
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError):
        write_phantom_dataset(tmp_path / "file", cases=1, seed=0, shape=SHAPE)
    with pytest.raises(ConfigError, match="naming"):
        write_phantom_dataset(tmp_path / "new", cases=1, seed=0, shape=SHAPE, naming="brats2019")
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------------------------------------
# agsevnet phantom


def test_cli_writes_cases_and_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["phantom", str(out), "--cases", "2", "--seed", "4", "--shape", "48", "48", "32", "--naming", "brats2023"]
    assert run_cli(argv + ["--workers", "1"]) == 0
    assert f"in {out}" in capsys.readouterr().out
    assert [s.case_id for s in discover(out)] == ["Phantom-00001-000", "Phantom-00002-000"]
    images, labels = make_phantom(case_seed(4, 2), SHAPE)
    seg = np.asarray(nib.load(out / "Phantom-00002-000" / "Phantom-00002-000-seg.nii.gz").dataobj)
    assert np.array_equal(to_internal(seg, "brats2023"), labels)

    assert run_cli(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: ") and "--overwrite" in err
    assert run_cli(argv + ["--overwrite", "--no-labels", "--workers", "1"]) == 0
    assert run_cli(["phantom", str(tmp_path / "bad"), "--shape", "8", "8", "8"]) == 1
    assert run_cli(["phantom", str(tmp_path / "bad"), "--naming", "brats2019"]) == 2  # usage error
