"""Coarse-resolution training and prediction: area-averaged images, majority-vote labels, native labels kept for
scoring, and predictions resampled back onto the input grid; the same scan under two names counted once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agsevnet.data.case import Case, CaseSpec
from agsevnet.synth.phantom import make_phantom, phantom_geometry
from agsevnet.errors import ConfigError
from agsevnet.preprocess import (
    build_cache,
    load_cached,
    load_native_label,
    preprocess_case,
    resample_image,
    resample_labels,
    resample_to_shape,
    resampled_shape,
)


def _case(seed: int = 3, shape=(64, 64, 48), case_id: str = "P1") -> Case:
    images, labels = make_phantom(seed, shape)
    spec = CaseSpec(case_id=case_id, scheme="files", images={}, label=None, label_convention="brats2020")
    return Case(spec=spec, images=images, label=labels, geometry=phantom_geometry(shape))


def test_area_averaging_is_the_block_mean():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 8, 6, 4)).astype(np.float32)
    out = resample_image(image, (4, 3, 2))
    expected = image.reshape(2, 4, 2, 3, 2, 2, 2).mean(axis=(2, 4, 6))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert resampled_shape((155, 240, 240), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0)) == (78, 120, 120)


def test_label_majority_vote_and_ties():
    label = np.zeros((4, 4, 2), np.uint8)
    label[:2, :2, :] = 2          # a whole 2x2x2 cell of edema
    label[2:, :2, :][0, 0, 0] = 3  # one voxel of 8: background wins that cell
    label[:2, 2:, :][:, :, 0] = 1  # four of eight: a tie between background and core goes to core
    out = resample_labels(label, (2, 2, 1))
    assert out.dtype == np.uint8
    assert out[0, 0, 0] == 2 and out[1, 0, 0] == 0 and out[0, 1, 0] == 1 and out[1, 1, 0] == 0


def test_back_to_the_native_grid_keeps_values_and_shape():
    import torch

    coarse = torch.rand(4, 5, 6, 7)
    fine = resample_to_shape(coarse, (10, 12, 14))
    assert tuple(fine.shape) == (4, 10, 12, 14)
    assert float(fine.min()) >= float(coarse.min()) - 1e-6 and float(fine.max()) <= float(coarse.max()) + 1e-6
    assert resample_to_shape(coarse, (5, 6, 7)) is coarse


def test_preprocess_at_2mm_keeps_the_native_labels():
    case = _case()
    native = preprocess_case(case)
    coarse = preprocess_case(case, spacing=(2.0, 2.0, 2.0))
    assert coarse.meta["spacing"] == [2.0, 2.0, 2.0]
    assert coarse.crop_shape == native.image.shape[1:] == tuple(coarse.meta["crop_shape"])
    assert coarse.image.shape[1:] == tuple(round(s / 2) for s in native.image.shape[1:])
    np.testing.assert_array_equal(coarse.label_native, native.label)
    assert coarse.label.shape == coarse.image.shape[1:]
    # every tumour class survives the vote, in about the same volume (x8 per coarse voxel)
    for c in (1, 2, 3):
        fine, rough = int((native.label == c).sum()), 8 * int((coarse.label == c).sum())
        assert rough == pytest.approx(fine, rel=0.35), c
    assert coarse.meta["image_sha1"] == native.meta["image_sha1"]  # the hash is of the native crop
    with pytest.raises(ConfigError, match="spacing"):
        preprocess_case(case, spacing=(2.0, 0.0, 2.0))


def test_cache_at_2mm_round_trip(tmp_path: Path):
    from agsevnet.synth.phantom import write_phantom_dataset

    write_phantom_dataset(tmp_path / "data", 2, seed=1, shape=(48, 48, 32))
    ids = build_cache(tmp_path / "data", tmp_path / "cache", spacing=(2.0, 2.0, 2.0), progress=False, workers=1)
    for case_id in ids:
        pre = load_cached(tmp_path / "cache", case_id)
        native = load_native_label(tmp_path / "cache", case_id)
        assert native.shape == pre.crop_shape and pre.label.shape == pre.image.shape[1:]
        assert pre.image.shape[1] < native.shape[0]
        assert (tmp_path / "cache" / case_id / "label_native.npy").is_file()
    # another spacing is another cache: the cases are rebuilt, at 1 mm without a separate native label file
    build_cache(tmp_path / "data", tmp_path / "cache", progress=False, workers=1)
    pre = load_cached(tmp_path / "cache", ids[0])
    assert pre.meta["spacing"] is None and not (tmp_path / "cache" / ids[0] / "label_native.npy").exists()
    np.testing.assert_array_equal(load_native_label(tmp_path / "cache", ids[0]), pre.label)


def test_prediction_from_a_coarse_model_lands_on_the_input_grid(one_thread):
    import torch

    from agsevnet.infer.predictor import Predictor
    from agsevnet.models import build_model

    torch.manual_seed(0)
    model = build_model({"name": "agsevnet", "base_width": 4, "depth": 3, "enc_convs": [1, 1, 1], "dec_convs": 1})
    predictor = Predictor(model, preprocess={"normalization": "brain", "margin": 2, "dtype": "float32",
                                             "spacing": [2.0, 2.0, 2.0]}, strategy="whole", precision="fp32")
    case = _case(shape=(48, 48, 32))
    result = predictor.predict_case(case, with_probabilities=True)
    assert result.labels.shape == case.images.shape[1:]
    assert result.probabilities.shape == (4, *case.images.shape[1:])
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-4)


def test_back_to_the_native_grid_keeps_each_value_in_place():
    """A hot coarse voxel lands on the fine voxels it covers, on every axis (a mirrored or transposed
    resampling puts it elsewhere)."""
    import torch

    coarse = torch.zeros(2, 4, 5, 6)
    coarse[1, 0, 3, 1] = 1.0  # off-centre on every axis
    fine = resample_to_shape(coarse, (8, 10, 12))
    peak = np.unravel_index(int(torch.argmax(fine[1])), (8, 10, 12))
    assert tuple(int(i) // 2 for i in peak) == (0, 3, 1)
    assert float(fine[0].abs().max()) == 0.0


def _bright_is_enhancing():
    """Stand-in network: enhancing tumour wherever the normalised FLAIR is above 1, background elsewhere; it
    records the spatial shape of each input (``.shapes``: the grid it was given)."""
    import torch
    from torch import nn

    class BrightIsEnhancing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shapes: list[tuple[int, ...]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.shapes.append(tuple(x.shape[2:]))
            f = x[:, :1]
            low = torch.full_like(f, -10.0)
            return torch.cat([torch.zeros_like(f), low, low, 10 * (f - 1)], dim=1)

    return BrightIsEnhancing()


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (3.0, 2.0, 1.5)])
def test_coarse_prediction_comes_back_in_place(spacing, one_thread):
    """An asymmetric pattern predicted on a coarse grid comes back at the same place on the input grid: a bright
    cube off-centre on every axis, which a network stand-in labels enhancing, must be found where it is (Dice,
    centre of mass) after the probabilities are resampled back (:meth:`Predictor.labels_on_crop`). A resampling
    that mirrored any axis would put it in the opposite corner of the crop (Dice 0)."""
    from agsevnet.data.case import Geometry
    from agsevnet.infer.predictor import Predictor

    shape = (40, 36, 28)
    images = np.zeros((4, *shape), np.float32)
    images[:, 4:36, 4:32, 4:24] = 100.0  # the brain: the crop (margin 2) is [2:38, 2:34, 2:26]
    cube = np.zeros(shape, bool)
    cube[8:16, 10:18, 6:12] = True  # crop coordinates [6:14, 8:16, 4:10]; mirrored: [22:30, 16:24, 14:20]
    images[0][cube] = 400.0
    eye = np.eye(4)
    geometry = Geometry(shape=shape, affine=eye, qform=eye, qform_code=0, sform=eye, sform_code=0,
                        zooms=(1.0, 1.0, 1.0))
    case = Case(CaseSpec("asym", "files", {}, None, "brats2020"), images, None, geometry)
    model = _bright_is_enhancing()
    predictor = Predictor(model, preprocess={"normalization": "brain", "margin": 2, "dtype": "float32",
                                             "spacing": list(spacing)},
                          strategy="whole", divisor=1, precision="fp32", channels_last=False)
    result = predictor.predict_case(case, with_probabilities=True)
    assert model.shapes == [resampled_shape((36, 32, 24), (1, 1, 1), spacing)]  # it did go through a coarse grid
    found = result.labels == 3
    assert set(np.unique(result.labels)) == {0, 3}
    dice = 2 * int((found & cube).sum()) / (int(found.sum()) + int(cube.sum()))
    assert dice > 0.75, dice  # measured: 0.989 at (2, 2, 2), 0.829 at (3, 2, 1.5); mirrored: 0
    np.testing.assert_allclose(np.argwhere(found).mean(0), np.argwhere(cube).mean(0), atol=1.0)
    prob = result.probabilities[3]
    np.testing.assert_allclose(np.argwhere(prob > 0.5).mean(0), np.argwhere(cube).mean(0), atol=1.0)
