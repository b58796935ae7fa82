"""Tests of agsevnet.preprocess (crop/uncrop, normalisation, preprocess_case, the cache) and `agsevnet preprocess`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from agsevnet import MODALITIES
from agsevnet.data.case import Case, CaseSpec, Geometry, ImageSource
from agsevnet.errors import ConfigError, DataError
from agsevnet.preprocess import (
    DEFAULT_MARGIN,
    FORMAT_VERSION,
    build_cache,
    crop,
    crop_box,
    list_cached,
    load_cached,
    normalize,
    preprocess_case,
    uncrop,
    update_cache,
)

SHAPE = (24, 22, 16)
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


# ------------------------------------------------------------------------------------------------ helpers


def _brain(shape=SHAPE, center=None, radii=None) -> np.ndarray:
    center = center or tuple(s / 2 for s in shape)
    radii = radii or tuple(s / 3 for s in shape)
    grid = np.indices(shape, dtype=float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1


def _arrays(seed: int = 0, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Raw int-valued images (4, X, Y, Z) inside an ellipsoid brain and internal labels (a nested tumour)."""
    rng = np.random.default_rng(seed)
    brain = _brain(shape)
    images = np.zeros((4, *shape), dtype=np.float32)
    for c in range(4):
        images[c][brain] = rng.integers(50 + 100 * c, 400 + 300 * c, size=int(brain.sum()))
    label = np.zeros(shape, dtype=np.uint8)
    cx, cy, cz = (s // 2 for s in shape)
    label[cx - 3 : cx + 3, cy - 3 : cy + 3, cz - 2 : cz + 2] = 2
    label[cx - 2 : cx + 2, cy - 2 : cy + 2, cz - 1 : cz + 1] = 3
    label[cx - 1 : cx + 1, cy - 1 : cy + 1, cz - 1 : cz + 1] = 1
    return images, label


def _geometry(shape=SHAPE) -> Geometry:
    return Geometry(shape=shape, affine=AFFINE, qform=AFFINE, qform_code=1, sform=AFFINE, sform_code=1, zooms=(1.0, 1.0, 1.0))


def _case(seed: int = 0, label: bool = True) -> Case:
    images, lab = _arrays(seed)
    spec = CaseSpec(f"case{seed}", "brats2020", {m: ImageSource(Path(f"{m}.nii.gz")) for m in MODALITIES}, None, "brats2020")
    return Case(spec, images, lab if label else None, _geometry())


def _write_case(root: Path, case_id: str, seed: int = 0, label: bool = True) -> CaseSpec:
    """A small case on disk in the BraTS 2018-2021 naming (int16 images, 0/1/2/4 labels); returns its spec."""
    images, lab = _arrays(seed)
    folder = root / case_id
    folder.mkdir(parents=True)
    sources = {}
    for m, arr in zip(MODALITIES, images):
        path = folder / f"{case_id}_{m}.nii.gz"
        nib.save(nib.Nifti1Image(arr.astype(np.int16), AFFINE), path)
        sources[m] = ImageSource(path)
    label_path = None
    if label:
        label_path = folder / f"{case_id}_seg.nii.gz"
        nib.save(nib.Nifti1Image(np.where(lab == 3, 4, lab).astype(np.uint8), AFFINE), label_path)
    return CaseSpec(case_id, "brats2020", sources, label_path, "brats2020", folder)


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


@pytest.fixture
def data_layer():
    """The data layer's loader (agsevnet.data.io); skips where it is not built yet."""
    return pytest.importorskip("agsevnet.data.io")


# ------------------------------------------------------------------------------------------ crop / uncrop


@pytest.mark.parametrize("seed", range(6))
def test_crop_uncrop_roundtrip_is_identical(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(5, 20, size=3))
    labels = np.zeros(shape, dtype=np.uint8)
    # a random block of random labels, touching the volume's border on some axes
    lo = [int(rng.integers(0, s)) if rng.random() < 0.5 else 0 for s in shape]
    hi = [int(rng.integers(l + 1, s + 1)) if rng.random() < 0.5 else s for l, s in zip(lo, shape)]
    block = tuple(slice(a, b) for a, b in zip(lo, hi))
    labels[block] = rng.integers(0, 4, size=labels[block].shape)
    labels[tuple(lo)] = 3  # at least one foreground voxel
    margin = int(rng.integers(0, 4))
    box = crop_box(labels, margin)
    for (start, stop), size in zip(box, shape):
        assert 0 <= start < stop <= size
    cropped = crop(labels, box)
    assert cropped.sum() == labels.sum()
    restored = uncrop(cropped, box, shape)
    assert restored.dtype == labels.dtype
    np.testing.assert_array_equal(restored, labels)


def test_crop_box_margin_and_clipping():
    mask = np.zeros((10, 12, 8), dtype=bool)
    mask[0, 5, 7] = True  # touches the low border on x and the high border on z
    mask[3, 6, 6] = True
    assert crop_box(mask, 0) == ((0, 4), (5, 7), (6, 8))
    assert crop_box(mask, 2) == ((0, 6), (3, 9), (4, 8))
    assert crop_box(mask, 100) == ((0, 10), (0, 12), (0, 8))


def test_crop_box_union_of_modalities_and_all_zero():
    images = np.zeros((4, 9, 9, 9), dtype=np.float32)
    images[0, 1, 2, 3] = 5
    images[3, 7, 6, 5] = -2  # negative intensities are foreground too
    assert crop_box(images, 0) == ((1, 8), (2, 7), (3, 6))
    # no foreground: nothing to crop, the whole volume
    assert crop_box(np.zeros((9, 8, 7)), 3) == ((0, 9), (0, 8), (0, 7))
    with pytest.raises(ValueError):
        crop_box(images, -1)


def test_crop_and_uncrop_channels():
    images, _ = _arrays(1)
    box = crop_box(images, 1)
    cropped = crop(images, box)
    assert cropped.shape[0] == 4 and cropped.shape[1:] == tuple(b - a for a, b in box)
    np.testing.assert_array_equal(uncrop(cropped, box, SHAPE), images)  # spatial shape
    np.testing.assert_array_equal(uncrop(cropped, box, images.shape), images)  # full shape
    filled = uncrop(cropped, box, SHAPE, fill=-1)
    assert (filled[:, : box[0][0]] == -1).all()
    with pytest.raises(ValueError):
        uncrop(cropped[:, :-1], box, SHAPE)  # does not fit the box
    with pytest.raises(ValueError):
        uncrop(cropped, ((5, 5 + cropped.shape[1]), *box[1:]), (5, *SHAPE[1:]))  # box outside the shape


# --------------------------------------------------------------------------------------------- normalize


def test_normalize_brain_statistics():
    images, _ = _arrays(2)
    mask = images.any(axis=0)
    out, stats = normalize(images, mask, "brain")
    assert out.dtype == np.float32 and out.shape == images.shape
    assert stats["mode"] == "brain" and stats["voxels"] == int(mask.sum())
    for c in range(4):
        assert abs(out[c][mask].mean()) < 1e-5
        assert abs(out[c][mask].std() - 1) < 1e-5
        assert (out[c][~mask] == 0).all()
        assert stats["mean"][c] == pytest.approx(images[c][mask].mean(dtype=np.float64))
        assert stats["std"][c] == pytest.approx(images[c][mask].std(dtype=np.float64))
    # the default mask is the brain (any modality non-zero)
    np.testing.assert_array_equal(normalize(images)[0], out)


def test_normalize_image_mode_uses_all_voxels():
    images, _ = _arrays(3)
    out, stats = normalize(images, mode="image")
    assert stats["mode"] == "image" and stats["voxels"] == int(np.prod(SHAPE))
    for c in range(4):
        assert abs(out[c].mean()) < 1e-5 and abs(out[c].std() - 1) < 1e-5
        assert stats["mean"][c] == pytest.approx(images[c].mean(dtype=np.float64))
    background = ~images.any(axis=0)
    assert (out[0][background] < 0).all()  # the background is not zero in this mode
    with pytest.raises(ValueError):
        normalize(images, mode="percentile")


def test_normalize_constant_channel_is_guarded():
    images, _ = _arrays(4)
    images[1] = 0  # an all-zero modality
    out, stats = normalize(images, mode="brain")
    assert np.isfinite(out).all() and (out[1] == 0).all()
    assert stats["std"][1] == 0
    out, stats = normalize(np.zeros((4, 3, 3, 3), np.float32), mode="brain")  # no brain at all
    assert np.isfinite(out).all() and stats["voxels"] == 0


# ------------------------------------------------------------------------------------------ preprocess_case


def test_preprocess_case_crops_normalises_and_records_meta():
    case = _case(5)
    before = case.images.copy()
    pp = preprocess_case(case, normalization="brain", margin=2, dtype="float32")
    np.testing.assert_array_equal(case.images, before)  # input untouched
    meta = json.loads(json.dumps(pp.meta))  # JSON-able
    assert meta["case_id"] == "case5" and meta["scheme"] == "brats2020" and meta["label_convention"] == "brats2020"
    assert meta["original_shape"] == list(SHAPE) and meta["margin"] == 2 and meta["dtype"] == "float32"
    assert meta["format_version"] == FORMAT_VERSION and meta["channels"] == list(MODALITIES)
    assert meta["image_shape"] == list(pp.image.shape)
    np.testing.assert_array_equal(pp.geometry.affine, AFFINE)
    assert pp.box == crop_box(case.images, 2) and pp.original_shape == SHAPE
    assert pp.image.shape[1:] == pp.label.shape and pp.image.dtype == np.float32 and pp.label.dtype == np.uint8
    full, stats = normalize(case.images, mode="brain")
    assert meta["normalization"] == stats
    np.testing.assert_array_equal(uncrop(pp.image, pp.box, SHAPE), full)
    np.testing.assert_array_equal(uncrop(pp.label, pp.box, SHAPE), case.label)
    assert meta["label_voxels"] == np.bincount(crop(case.label, pp.box).ravel(), minlength=4).tolist()


def test_preprocess_case_image_mode_and_float16():
    case = _case(6)
    pp32 = preprocess_case(case, normalization="image", dtype="float32")
    pp16 = preprocess_case(case, normalization="image", dtype="float16")
    assert pp16.image.dtype == np.float16 and pp16.image.nbytes * 2 == pp32.image.nbytes
    assert pp16.meta["normalization"]["mode"] == "image" and pp16.meta["margin"] == DEFAULT_MARGIN
    np.testing.assert_allclose(pp16.image.astype(np.float32), pp32.image, rtol=1e-3, atol=1e-3)
    full, _ = normalize(case.images, mode="image")  # the paper's statistics: over the uncropped image
    np.testing.assert_array_equal(pp32.image, crop(full, pp32.box))


def test_preprocess_case_keeps_labels_outside_the_brain_and_unlabelled_cases():
    case = _case(7)
    case.label[0, 0, 0] = 2  # a labelled voxel outside the brain's box
    pp = preprocess_case(case, margin=0)
    assert pp.box[0][0] == 0 and pp.box[1][0] == 0 and pp.box[2][0] == 0
    np.testing.assert_array_equal(uncrop(pp.label, pp.box, SHAPE), case.label)
    pp = preprocess_case(_case(7, label=False))
    assert pp.label is None and pp.meta["has_label"] is False and "label_voxels" not in pp.meta


def test_preprocess_case_rejects_bad_input():
    case = _case(8)
    case.images[2, 5, 5, 5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        preprocess_case(case)
    case = _case(8)
    case.label = case.label[:-1]
    with pytest.raises(DataError, match="label shape"):
        preprocess_case(case)
    with pytest.raises(ConfigError):
        preprocess_case(_case(8), normalization="zscore")
    with pytest.raises(ConfigError):
        preprocess_case(_case(8), dtype="int8")
    with pytest.raises(ConfigError):
        preprocess_case(_case(8), margin=-1)


# ------------------------------------------------------------------------------------------------ cache


def test_cache_build_load_and_skip(tmp_path, data_layer):
    specs = [_write_case(tmp_path / "data", "A", 0), _write_case(tmp_path / "data", "B", 1, label=False)]
    cache = tmp_path / "cache"
    report = update_cache(specs, cache, workers=1, progress=False)
    assert report.built == ["A", "B"] and report.skipped == [] and report.failed == []
    assert report.case_ids == ["A", "B"] == list_cached(cache)
    assert report.sizes["A"] == sum(f.stat().st_size for f in (cache / "A").iterdir())

    a = load_cached(cache, "A")  # memory-mapped, read-only
    assert isinstance(a.image, np.memmap) and isinstance(a.label, np.memmap)
    assert a.image.dtype == np.float16 and a.image.shape[0] == 4
    with pytest.raises(ValueError):
        a.image[0, 0, 0, 0] = 1
    loaded = data_layer.load_case(specs[0])
    expected = preprocess_case(loaded)
    np.testing.assert_array_equal(np.asarray(a.image), expected.image)
    np.testing.assert_array_equal(uncrop(np.asarray(a.label), a.box, a.original_shape), loaded.label)
    assert {s["role"] for s in a.meta["sources"]} == {*MODALITIES, "label"}
    b = load_cached(cache, "B", mmap=False)
    assert b.label is None and not (cache / "B" / "label.npy").exists() and not isinstance(b.image, np.memmap)

    again = update_cache(specs, cache, workers=1, progress=False)
    assert again.skipped == ["A", "B"] and again.built == []
    assert build_cache(specs, cache, workers=1, progress=False, overwrite=True) == ["A", "B"]


def test_cache_rebuilds_invalid_cases(tmp_path, data_layer):
    specs = [_write_case(tmp_path / "data", "A", 0), _write_case(tmp_path / "data", "B", 1)]
    cache = tmp_path / "cache"
    update_cache(specs, cache, workers=1, progress=False)

    _touch(specs[0].images["t1ce"].path)  # a source file changed
    report = update_cache(specs, cache, workers=1, progress=False)
    assert report.built == ["A"] and report.skipped == ["B"]

    # a cache written with other settings is rebuilt and then records the new ones
    report = update_cache(specs, cache, normalization="image", workers=1, progress=False)
    assert report.built == ["A", "B"]
    assert load_cached(cache, "A").meta["normalization"]["mode"] == "image"
    report = update_cache(specs, cache, normalization="image", dtype="float32", workers=1, progress=False)
    assert report.built == ["A", "B"] and load_cached(cache, "B").image.dtype == np.float32
    assert update_cache(specs, cache, normalization="image", dtype="float32", margin=1, workers=1, progress=False).built == ["A", "B"]

    # damaged arrays (truncated, or replaced by another shape) are rebuilt too
    (cache / "A" / "image.npy").write_bytes((cache / "A" / "image.npy").read_bytes()[:200])
    np.save(cache / "B" / "label.npy", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(DataError, match="rebuild"):
        load_cached(cache, "A")
    report = update_cache(specs, cache, normalization="image", dtype="float32", margin=1, workers=1, progress=False)
    assert report.built == ["A", "B"]
    load_cached(cache, "A"), load_cached(cache, "B")


def test_cache_float16_is_half_the_size_of_float32(tmp_path, data_layer):
    specs = [_write_case(tmp_path / "data", "A", 0)]
    update_cache(specs, tmp_path / "c16", dtype="float16", workers=1, progress=False)
    update_cache(specs, tmp_path / "c32", dtype="float32", workers=1, progress=False)
    img16 = load_cached(tmp_path / "c16", "A")
    img32 = load_cached(tmp_path / "c32", "A")
    assert img16.image.nbytes * 2 == img32.image.nbytes
    np.testing.assert_allclose(np.asarray(img16.image, np.float32), img32.image, rtol=1e-3, atol=1e-3)


def test_cache_write_is_atomic(tmp_path, data_layer, monkeypatch):
    specs = [_write_case(tmp_path / "data", "A", 0)]
    cache = tmp_path / "cache"
    update_cache(specs, cache, workers=1, progress=False)
    _touch(specs[0].label)

    real_save = np.save

    def save_fails_on_labels(path, arr, *args, **kwargs):
        if arr.dtype == np.uint8:
            Path(path).write_bytes(b"half a file")
            raise OSError(28, "No space left on device")
        return real_save(path, arr, *args, **kwargs)

    monkeypatch.setattr(np, "save", save_fails_on_labels)
    report = update_cache(specs, cache, workers=1, progress=False)
    assert [f.case_id for f in report.failed] == ["A"] and "No space left" in report.failed[0].reason
    # the half-rebuilt case is not valid-looking: no meta.json, not listed, not loadable, no temp files left
    assert list_cached(cache) == [] and not (cache / "A" / "meta.json").exists()
    assert sorted(p.name for p in (cache / "A").iterdir()) == ["image.npy", "label.npy"]
    with pytest.raises(DataError, match="not in the cache"):
        load_cached(cache, "A")
    monkeypatch.undo()
    assert update_cache(specs, cache, workers=1, progress=False).built == ["A"]
    assert list_cached(cache) == ["A"]


def test_cache_reports_failures_and_caches_the_others_in_parallel(tmp_path, data_layer):
    root = tmp_path / "data"
    specs = [_write_case(root, "A", 0), _write_case(root, "B", 1), _write_case(root, "C", 2)]
    broken = specs[1].images["t2"].path
    broken.write_bytes(b"this is not a NIfTI file")
    known_bad = _write_case(root, "D", 3)  # discovery already found a problem: not even loaded
    known_bad.problems.append(f"{known_bad.folder / 'D_t1.nii.gz'}: duplicated t1 image")
    bad_id = _write_case(root, "E", 4)
    bad_id.case_id = "../E"  # not usable as a folder name
    cache = tmp_path / "cache"
    report = update_cache([*specs, known_bad, bad_id], cache, workers=2, progress=False)  # two worker processes
    assert report.built == ["A", "C"] and report.case_ids == ["A", "C"]
    failed = {f.case_id: str(f) for f in report.failed}
    assert sorted(failed) == ["../E", "B", "D"]
    assert "B_t2" in failed["B"]  # names the file
    assert failed["D"] == known_bad.problems[0] and "folder name" in failed["../E"]
    assert sorted(p.name for p in cache.iterdir()) == ["A", "C"]
    with pytest.raises(DataError, match="B_t2"):
        build_cache(specs, cache, workers=1, progress=False)
    assert list_cached(cache) == ["A", "C"]


def test_cache_refuses_to_write_into_the_dataset(tmp_path, data_layer):
    specs = [_write_case(tmp_path, "A", 0)]
    with pytest.raises(ConfigError):
        update_cache(specs, tmp_path, workers=1, progress=False)
    assert sorted(p.name for p in (tmp_path / "A").iterdir()) == sorted(
        [f"A_{m}.nii.gz" for m in MODALITIES] + ["A_seg.nii.gz"]
    )


# ------------------------------------------------------------------------------------------------- CLI


def _cli(args, capsys) -> tuple[int, str, str]:
    from agsevnet.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_cli_preprocess(tmp_path, capsys, data_layer):
    pytest.importorskip("agsevnet.data.layouts")
    data, cache = tmp_path / "data", tmp_path / "cache"
    _write_case(data, "A", 0)
    _write_case(data, "B", 1)
    code, out, _ = _cli(["preprocess", str(data), str(cache), "--workers", "1", "--margin", "1"], capsys)
    assert code == 0, out
    assert "2 case(s) cached (2 built, 0 already valid), 0 failed" in out and "per case" in out
    assert list_cached(cache) == ["A", "B"] and load_cached(cache, "A").meta["margin"] == 1
    code, out, _ = _cli(["preprocess", str(data), str(cache), "--workers", "1", "--margin", "1"], capsys)
    assert code == 0 and "(0 built, 2 already valid)" in out
    (data / "B" / "B_flair.nii.gz").write_bytes(b"\x1f\x8b truncated")
    code, out, err = _cli(
        ["preprocess", str(data), str(cache), "--workers", "1", "--normalization", "image", "--dtype", "float32"], capsys
    )
    assert code == 1 and "1 failed" in out
    assert "error:" in err and "B_flair.nii.gz" in err
    assert load_cached(cache, "A").image.dtype == np.float32
    code, _, err = _cli(["preprocess", str(tmp_path / "missing"), str(cache)], capsys)
    assert code == 1 and err.startswith("error:")
    code, _, _ = _cli(["preprocess", str(data), str(cache), "--normalization", "zscore"], capsys)
    assert code == 2  # usage error


# -------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_cases_roundtrip(real_data, tmp_path):
    layouts = pytest.importorskip("agsevnet.data.layouts")
    io = pytest.importorskip("agsevnet.data.io")
    wanted = ("BraTS2021_00000", "BraTS-GLI-00000-000")  # the same patient, 2021 and 2023 naming
    specs = [s for s in layouts.discover(real_data) if s.case_id in wanted]
    assert sorted(s.case_id for s in specs) == sorted(wanted)
    cache = tmp_path / "cache"
    assert sorted(build_cache(specs, cache, workers=1, progress=False)) == sorted(wanted)
    cached = {}
    for spec in specs:
        case = io.load_case(spec)
        pp = load_cached(cache, spec.case_id)
        assert pp.image.dtype == np.float16 and pp.image.shape[1:] == pp.label.shape
        assert all(b - a < s for (a, b), s in zip(pp.box, case.images.shape[1:]))  # it does crop
        np.testing.assert_array_equal(uncrop(np.asarray(pp.label), pp.box, pp.original_shape), case.label)
        np.testing.assert_array_equal(pp.geometry.affine, case.geometry.affine)
        cached[spec.case_id] = pp
    a, b = (cached[c] for c in wanted)
    assert a.box == b.box
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))
    np.testing.assert_array_equal(np.asarray(a.label), np.asarray(b.label))


def test_normalize_brain_clip_is_not_moved_by_an_outlier():
    """``brain-clip``: each modality clipped to the 0.5-99.5 percentiles of its brain voxels before the z-score, so
    one extreme voxel moves the statistics under ``brain`` but hardly under ``brain-clip``."""
    from agsevnet.preprocess import CLIP_PERCENTILES, background_values

    images, _ = _arrays(6)
    mask = images.any(axis=0)
    spiked = images.copy()
    voxel = tuple(np.argwhere(mask)[len(np.argwhere(mask)) // 2])
    spiked[(0, *voxel)] = 1e6
    _, clean = normalize(images, mask, "brain")
    _, plain = normalize(spiked, mask, "brain")
    out, stats = normalize(spiked, mask, "brain-clip")
    assert plain["mean"][0] > clean["mean"][0] + 100 and plain["std"][0] > 10 * clean["std"][0]
    assert stats["mean"][0] == pytest.approx(clean["mean"][0], rel=0.02)
    assert stats["std"][0] == pytest.approx(clean["std"][0], rel=0.05)
    assert stats["mode"] == "brain-clip" and stats["voxels"] == int(mask.sum()) and "clip" not in plain
    assert len(stats["clip"]) == 4
    for c in range(4):
        lo, hi = stats["clip"][c]
        assert [lo, hi] == pytest.approx(list(np.percentile(spiked[c][mask], CLIP_PERCENTILES)))
        mean, std = stats["mean"][c], stats["std"][c]
        inside = out[c][mask]
        assert inside.max() == pytest.approx((hi - mean) / std, rel=1e-5)  # within the clip range
        assert inside.min() == pytest.approx((lo - mean) / std, rel=1e-5)
        assert (out[c][~mask] == 0).all()  # the background stays 0 (clipping alone would lift it to lo)
        clipped = np.clip(spiked[c][mask].astype(np.float64), lo, hi)
        assert mean == pytest.approx(clipped.mean()) and std == pytest.approx(clipped.std())
    assert out[(0, *voxel)] == pytest.approx((stats["clip"][0][1] - stats["mean"][0]) / stats["std"][0], rel=1e-5)
    assert background_values({"normalization": stats, "dtype": "float16"}) == [0.0] * 4


def test_pad_channels_fills_each_channel_with_its_own_value_for_arrays_and_tensors():
    import torch

    from agsevnet.preprocess import pad_channels

    arr = np.arange(2 * 2 * 3 * 1, dtype=np.float32).reshape(2, 2, 3, 1) + 10
    pads = [(1, 0), (0, 2), (3, 1)]
    out = pad_channels(arr, pads, [-1.5, 7.0])
    assert out.shape == (2, 3, 5, 5) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 1:, :3, 3:4], arr)  # the image where the pads put it
    inside = np.zeros(out.shape[1:], bool)
    inside[1:, :3, 3:4] = True
    assert np.all(out[0][~inside] == -1.5) and np.all(out[1][~inside] == 7.0)
    batch = torch.from_numpy(arr)[None]  # (N, C, X, Y, Z), as inference pads it
    np.testing.assert_array_equal(pad_channels(batch, pads, [-1.5, 7.0])[0].numpy(), out)
    labels = np.ones((1, 2, 3, 1), np.uint8)
    assert pad_channels(labels, pads).sum() == 6 and pad_channels(labels, pads).dtype == np.uint8
    with pytest.raises(ValueError, match="3 padding values for 2 channels"):
        pad_channels(arr, pads, [0, 0, 0])
