"""NIfTI I/O: outputs overlay the input exactly (shape, affine, qform/sform and codes), bad files give a
DataError naming the file."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from agsevnet.data.labels import from_internal
from agsevnet.data.nifti import geometry_of, load_volume, save_labels, save_nifti
from agsevnet.errors import DataError

# The affine of the real BraTS 2018 files as stored: -0.0 entries, LPS.
BRATS18_AFFINE = np.array([[-1.0, -0.0, -0.0, -0.0], [-0.0, -1.0, -0.0, 239.0], [0.0, 0.0, 1.0, 0.0],
                           [0.0, 0.0, 0.0, 1.0]])
SHAPE = (8, 9, 7)


def write_nifti(path, data, affine=BRATS18_AFFINE, qform_code=1, sform_code=1, xyzt_units=2):
    """A NIfTI file with the header fields set like the real BraTS files."""
    img = nib.Nifti1Image(np.asarray(data), None)
    hdr = img.header
    hdr.set_data_dtype(np.asarray(data).dtype)
    hdr.set_qform(affine, code=qform_code)
    hdr.set_sform(affine if sform_code else np.zeros((4, 4)), code=sform_code)
    hdr["xyzt_units"] = xyzt_units
    nib.save(img, path)
    return path


def labels_volume(dtype=np.float32):
    lab = np.zeros(SHAPE, dtype=dtype)
    lab[2:5, 2:6, 2:5] = 2
    lab[3:4, 3:5, 3:4] = 1
    lab[3, 4, 3] = 4
    return lab


def assert_same_grid(out: nib.Nifti1Image, src: nib.Nifti1Image) -> None:
    ho, hs = out.header, src.header
    assert out.shape[:3] == src.shape[:3]
    assert np.array_equal(out.affine, src.affine)
    assert np.array_equal(ho.get_qform(), hs.get_qform())
    assert np.array_equal(ho.get_sform(), hs.get_sform())
    assert int(ho["qform_code"]) == int(hs["qform_code"])
    assert int(ho["sform_code"]) == int(hs["sform_code"])
    assert ho.get_zooms()[:3] == hs.get_zooms()[:3]
    assert int(ho["xyzt_units"]) == int(hs["xyzt_units"])
    for key in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z",
                "srow_x", "srow_y", "srow_z"):
        assert np.array_equal(ho[key], hs[key]), key


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("qform_code,sform_code", [(1, 1), (2, 1), (1, 0)])
def test_label_round_trip_keeps_the_input_grid(tmp_path, suffix, qform_code, sform_code):
    src_path = write_nifti(tmp_path / f"seg{suffix}", labels_volume(np.float32), qform_code=qform_code,
                           sform_code=sform_code)
    data, img = load_volume(src_path)
    assert data.dtype == np.float32
    geometry = geometry_of(img)
    assert geometry.shape == SHAPE and geometry.zooms == (1.0, 1.0, 1.0)

    out_path = save_labels(tmp_path / f"out{suffix}", data, geometry)
    out = nib.load(out_path)
    assert_same_grid(out, nib.load(src_path))
    assert out.get_data_dtype() == np.uint8
    assert np.isnan(out.header["scl_slope"]) and np.isnan(out.header["scl_inter"])
    assert (out.header["cal_min"], out.header["cal_max"]) == (0.0, 4.0)
    stored = np.asanyarray(out.dataobj)
    assert stored.dtype == np.uint8 and np.array_equal(stored, data)
    # Geometry survives JSON (the preprocessing cache stores it that way).
    again = save_labels(tmp_path / f"json{suffix}", data, type(geometry).from_json(geometry.to_json()))
    assert_same_grid(nib.load(again), nib.load(src_path))


def test_oblique_affine_with_negative_determinant_round_trips(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[-0.9 * c, -1.1 * s, 0, 10.5], [0.9 * s, -1.1 * c, 0, -20.25],
                       [0, 0, -2.5, 33.0], [0, 0, 0, 1]])
    assert np.linalg.det(affine[:3, :3]) < 0
    src_path = write_nifti(tmp_path / "img.nii.gz", np.ones(SHAPE, np.int16), affine=affine)
    _, img = load_volume(src_path)
    out = nib.load(save_nifti(tmp_path / "out.nii.gz", np.ones(SHAPE, np.float32), geometry_of(img)))
    assert_same_grid(out, nib.load(src_path))
    assert out.header["pixdim"][0] == img.header["pixdim"][0] == -1


def test_probability_map_is_4d_on_the_input_grid(tmp_path):
    src = write_nifti(tmp_path / "flair.nii.gz", np.ones(SHAPE, np.int16))
    probs = np.random.default_rng(0).random((*SHAPE, 4), dtype=np.float32)
    out = nib.load(save_nifti(tmp_path / "probs.nii.gz", probs, geometry_of(load_volume(src)[1]), dtype=np.float32))
    assert out.shape == (*SHAPE, 4)
    assert_same_grid(out, nib.load(src))
    assert np.array_equal(np.asanyarray(out.dataobj), probs)
    assert out.header["cal_min"] == pytest.approx(probs.min()) and out.header["cal_max"] == pytest.approx(probs.max())


def test_msd_style_4d_input_gives_3d_label_output(tmp_path):
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    src = write_nifti(tmp_path / "BRATS_001.nii.gz", np.ones((*SHAPE, 4), np.float32), affine=affine,
                      xyzt_units=10)
    flair, img = load_volume(src, channel=0)
    assert flair.shape == SHAPE
    geometry = geometry_of(img)
    assert geometry.shape == SHAPE and len(geometry.zooms) == 3
    out = nib.load(save_labels(tmp_path / "pred.nii.gz", from_internal(np.ones(SHAPE, np.uint8), "msd"), geometry))
    assert out.shape == SHAPE and out.header["dim"][0] == 3
    assert_same_grid(out, nib.load(src))
    assert np.asanyarray(out.dataobj).max() == 2  # internal 1 (core) is MSD 2


def test_save_is_atomic_and_checks_its_input(tmp_path):
    _, img = load_volume(write_nifti(tmp_path / "a.nii.gz", np.ones(SHAPE, np.int16)))
    geometry = geometry_of(img)
    with pytest.raises(ValueError, match="does not fit the grid"):
        save_labels(tmp_path / "bad.nii.gz", np.zeros((4, 4, 4), np.uint8), geometry)
    with pytest.raises(ValueError, match="do not fit in uint8"):
        save_labels(tmp_path / "bad.nii.gz", np.full(SHAPE, 300, np.int16), geometry)
    with pytest.raises(ValueError, match="non-integer"):
        save_labels(tmp_path / "bad.nii.gz", np.full(SHAPE, 0.5, np.float32), geometry)
    save_labels(tmp_path / "ok.nii.gz", np.zeros(SHAPE, np.uint8), geometry)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "ok.nii.gz"]  # no partial files


def _bad_files(tmp_path):
    good = write_nifti(tmp_path / "good.nii.gz", np.random.default_rng(0).integers(0, 999, (32, 32, 32), np.int16))
    raw = good.read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
    files = {
        "missing.nii.gz": None,
        "empty.nii.gz": b"",
        "empty.nii": b"",
        "random.nii.gz": os.urandom(4000),
        "random.nii": os.urandom(4000),
        "cut_header.nii.gz": raw[:40],
        "cut.nii.gz": raw[: len(raw) * 2 // 3],
        "cut.nii": gzip.decompress(raw)[:2000],
        "cut_header.nii": gzip.decompress(raw)[:100],
        "corrupt.nii.gz": bytes(flipped),
    }
    for name, content in files.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    return files


@pytest.mark.parametrize("name,what", [
    ("missing.nii.gz", "not found"), ("empty.nii.gz", "empty"), ("empty.nii", "empty"),
    ("random.nii.gz", "not a gzip file"), ("random.nii", "not a NIfTI file"), ("cut_header.nii.gz", "truncated"),
    ("cut.nii.gz", "truncated"), ("cut.nii", "truncated"), ("cut_header.nii", "truncated"), ("corrupt.nii.gz", "corrupt"),
])
def test_unreadable_files_raise_dataerror_naming_the_file(tmp_path, name, what):
    _bad_files(tmp_path)
    with pytest.raises(DataError, match=what) as err:
        load_volume(tmp_path / name)
    assert err.value.path == tmp_path / name
    assert str(err.value).startswith(str(tmp_path / name))


def test_dimensionality_and_channel_errors(tmp_path):
    four_d = write_nifti(tmp_path / "4d.nii.gz", np.ones((*SHAPE, 2), np.int16))
    three_d = write_nifti(tmp_path / "3d.nii.gz", np.ones(SHAPE, np.int16))
    singleton = write_nifti(tmp_path / "3d1.nii.gz", np.ones((*SHAPE, 1), np.int16))
    with pytest.raises(DataError, match="is 4D"):
        load_volume(four_d)
    with pytest.raises(DataError, match="channel 2 does not exist"):
        load_volume(four_d, channel=2)
    with pytest.raises(DataError, match="expected a 4D file"):
        load_volume(three_d, channel=0)
    assert load_volume(singleton)[0].shape == SHAPE  # (X, Y, Z, 1) is a 3D volume
    assert load_volume(four_d, channel=1, dtype=np.float32)[0].dtype == np.float32


def test_nifti2_and_scaled_files_are_read(tmp_path):
    data = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    for suffix in (".nii", ".nii.gz"):
        nib.save(nib.Nifti2Image(data, np.eye(4)), tmp_path / f"two{suffix}")
        out, img = load_volume(tmp_path / f"two{suffix}")
        assert isinstance(img, nib.Nifti2Image) and np.array_equal(out, data)
    scaled = nib.Nifti1Image(data, np.eye(4))
    scaled.header.set_slope_inter(2.0, 1.0)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    assert np.array_equal(load_volume(tmp_path / "scaled.nii.gz")[0], data * 2.0 + 1.0)
