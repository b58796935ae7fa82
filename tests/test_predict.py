"""Prediction end to end: outputs on exactly the input grid, label conventions, batch behaviour (broken case,
resume, --overwrite), the four-file input, probabilities, postprocessing, segment() on arrays, real data."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from agsevnet import MODALITIES
from agsevnet.checkpoint import make_checkpoint, save_checkpoint
from agsevnet.data.labels import allowed_values, from_internal, to_internal
from agsevnet.errors import ConfigError
from agsevnet.synth.phantom import make_phantom, write_phantom_dataset
from agsevnet.infer.postprocess import relabel_small_enhancing
from agsevnet.infer.predictor import Predictor, predict, segment
from agsevnet.preprocess import brain_mask, crop_box, normalize
from helpers import run_cli

SHAPE = (48, 48, 32)
NARROW = {"name": "agsevnet", "base_width": 4, "depth": 3, "dropout": 0.0}
PREPROCESS = {"normalization": "brain", "margin": 2, "dtype": "float32"}


class IntensityOracle(nn.Module):
    """Stand-in network whose labels are a known function of the normalised FLAIR: the class whose centre
    (-0.5, 0.3, 1.0, 1.8 z-scores) is nearest. Every class appears on a phantom."""

    centres = torch.tensor([-0.5, 0.3, 1.0, 1.8])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -10 * (x[:, :1] - self.centres.view(1, 4, 1, 1, 1)) ** 2


def oracle_labels(images: np.ndarray, margin: int) -> np.ndarray:
    """What IntensityOracle must give on the input grid, computed independently of the predictor."""
    mask = brain_mask(images)
    box = crop_box(mask, margin)
    normalized, _ = normalize(images, mask, "brain")
    labels = np.zeros(images.shape[1:], dtype=np.uint8)
    inside = tuple(slice(a, b) for a, b in box)
    flair = torch.from_numpy(normalized[0][inside])
    labels[inside] = torch.argmin((flair[None] - IntensityOracle.centres.view(4, 1, 1, 1)).abs(), dim=0).numpy()
    return labels


def oracle() -> Predictor:
    return Predictor(IntensityOracle(), preprocess=PREPROCESS, strategy="whole", divisor=1, precision="fp32")


def _random_checkpoint(path: Path, model_cfg: dict) -> Path:
    from agsevnet.models import build_model

    torch.manual_seed(0)
    model = build_model(dict(model_cfg))
    return save_checkpoint(path, make_checkpoint(model, model_cfg, {"preprocess": PREPROCESS}, step=0,
                                                 patch_size=(32, 32, 16)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _random_checkpoint(tmp_path_factory.mktemp("ckpt") / "narrow.pt", NARROW)


def _write_case(folder: Path, case_id: str, images: np.ndarray, affine: np.ndarray, qform_code: int,
                sform_code: int) -> dict[str, Path]:
    """A BraTS 2020-named case with the given header (int16, like the real files)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for modality, volume in zip(MODALITIES, images):
        img = nib.Nifti1Image(volume.astype(np.int16), affine)
        img.set_qform(affine, code=qform_code)
        img.set_sform(affine, code=sform_code)
        paths[modality] = folder / f"{case_id}_{modality}.nii.gz"
        nib.save(img, paths[modality])
    return paths


# ------------------------------------------------------------------------------------------ arrays


def test_segment_arrays_gives_the_known_labels_on_the_input_grid():
    images, _ = make_phantom(1, SHAPE)
    labels = segment(images, IntensityOracle(), preprocess=PREPROCESS, strategy="whole", divisor=1, precision="fp32")
    assert labels.dtype == np.uint8 and labels.shape == SHAPE
    expected = oracle_labels(images, PREPROCESS["margin"])
    assert set(np.unique(expected)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(labels, expected)
    as_2020, prob = segment(images, oracle(), convention="brats2020", return_probabilities=True)
    np.testing.assert_array_equal(as_2020, from_internal(expected, "brats2020"))
    assert prob.shape == (4, *SHAPE) and prob.dtype == np.float32
    np.testing.assert_array_equal(prob.argmax(0), expected)


class ShapeRecorder(IntensityOracle):
    """IntensityOracle that records the spatial shape of every input it is given: the grid the network saw."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape[2:]))
        return super().forward(x)


def test_segment_resamples_from_the_given_spacing():
    """A model that works at 2 mm is given a phantom averaged to 2 mm. With ``spacing=(2, 2, 2)`` it sees the
    array's own grid (nothing to resample) and its labels are the oracle's on that grid exactly; with the 1 mm
    default it sees the anatomy at half the size (a 4 mm grid) and the labels differ. The spacing applies per
    axis in array order."""
    from agsevnet.preprocess import resample_image

    fine, _ = make_phantom(5, (64, 64, 48))
    images = resample_image(fine, (32, 32, 24))  # the same anatomy averaged to 2 mm voxels
    preprocess = {**PREPROCESS, "spacing": [2.0, 2.0, 2.0]}
    crop = tuple(b - a for a, b in crop_box(brain_mask(images), PREPROCESS["margin"]))
    expected = oracle_labels(images, PREPROCESS["margin"])

    def run(**spacing: tuple[float, float, float]) -> tuple[np.ndarray, tuple[int, ...]]:
        model = ShapeRecorder()
        labels = segment(images, model, preprocess=preprocess, strategy="whole", divisor=1, precision="fp32",
                         **spacing)
        assert labels.shape == images.shape[1:] and len(set(model.shapes)) == 1
        return labels, model.shapes[0]

    labels, seen = run(spacing=(2, 2, 2))
    assert seen == crop
    np.testing.assert_array_equal(labels, expected)
    default, seen = run()
    assert seen == tuple(round(n / 2) for n in crop)  # taken for 1 mm: shrunk to a 4 mm grid
    wrong = int((default != expected).sum())
    assert wrong > 0.1 * int((expected > 0).sum()), wrong  # measured: 19% of the oracle's non-zero voxels
    _, seen = run(spacing=(4.0, 2.0, 1.0))  # x at 4 mm is upsampled, z at 1 mm shrunk
    assert seen == (2 * crop[0], crop[1], round(crop[2] / 2))


@pytest.mark.parametrize("spacing", [(2.0, 2.0), (2.0, 0.0, 2.0), (1.0, -1.0, 1.0), (1.0, float("nan"), 1.0),
                                     ("a", 1, 1), None, 2.0])
def test_segment_rejects_a_bad_spacing(spacing):
    images = np.ones((4, 8, 8, 8), np.float32)
    with pytest.raises(ConfigError, match="spacing must be three positive numbers"):
        segment(images, IntensityOracle(), preprocess=PREPROCESS, strategy="whole", divisor=1, spacing=spacing)


def test_segment_from_a_checkpoint_with_sliding_and_tta(checkpoint):
    images, _ = make_phantom(2, SHAPE)
    labels = segment(images, checkpoint, strategy="sliding", tta=2, precision="fp32")
    assert labels.shape == SHAPE and labels.dtype == np.uint8 and labels.max() <= 3


def test_predictor_takes_its_settings_from_the_checkpoint(checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint, precision="fp32")
    assert predictor.preprocess == PREPROCESS
    assert predictor.roi_size == (32, 32, 16) and predictor.divisor == 4  # patch size; 2**(depth - 1)
    assert Predictor.from_checkpoint(checkpoint, roi_size=(16, 16, 16)).roi_size == (16, 16, 16)


def test_enhancing_threshold_postprocessing():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[2:4, 2:4, 2:4] = 3  # 8 ET voxels
    labels[5:7, 5:7, 5:7] = 2
    assert relabel_small_enhancing(labels, 0) is labels
    assert np.array_equal(relabel_small_enhancing(labels, 8), labels)
    small = relabel_small_enhancing(labels, 9)
    assert not (small == 3).any() and (small == 1).sum() == 8 and (small == 2).sum() == 8
    assert (labels == 3).sum() == 8  # input not modified

    images, _ = make_phantom(1, SHAPE)
    expected = oracle_labels(images, PREPROCESS["margin"])
    relabelled = segment(images, IntensityOracle(), preprocess=PREPROCESS, strategy="whole", divisor=1,
                         precision="fp32", et_threshold=int((expected == 3).sum()) + 1)
    np.testing.assert_array_equal(relabelled, np.where(expected == 3, 1, expected))


# ------------------------------------------------------------------------------------------ files


def test_output_has_the_input_grid_exactly(tmp_path):
    images, _ = make_phantom(4, SHAPE)
    # An oblique affine with unusual codes: a prediction must copy the header, not rebuild it.
    affine = np.array([[0.0, -0.9, 0.1, 20.0], [1.1, 0.0, 0.0, -30.0], [0.0, 0.05, 1.2, 5.5], [0, 0, 0, 1]])
    _write_case(tmp_path / "in" / "P1", "P1", images, affine, qform_code=2, sform_code=4)
    summary = predict(tmp_path / "in", oracle(), tmp_path / "out", save_probabilities=True, progress=False)
    assert summary.ok and [r.status for r in summary.results] == ["written"]

    src = nib.load(tmp_path / "in" / "P1" / "P1_flair.nii.gz")
    out = nib.load(tmp_path / "out" / "P1.nii.gz")
    assert out.shape == src.shape and out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(out.affine, src.affine)
    for coded in ("get_qform", "get_sform"):
        (m_out, c_out), (m_src, c_src) = getattr(out, coded)(coded=True), getattr(src, coded)(coded=True)
        assert c_out == c_src
        np.testing.assert_allclose(m_out, m_src, atol=1e-6)
    expected = oracle_labels(images.astype(np.int16).astype(np.float32), PREPROCESS["margin"])
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), from_internal(expected, "brats2020"))

    prob = nib.load(tmp_path / "out" / "P1_prob.nii.gz")
    assert prob.shape == (*SHAPE, 4) and prob.get_data_dtype() == np.float32
    values = np.asanyarray(prob.dataobj).astype(np.float32)
    np.testing.assert_allclose(values.sum(-1), 1, atol=1e-5)
    np.testing.assert_array_equal(values.argmax(-1), expected)


@pytest.mark.parametrize("naming", ["brats2020", "brats2023", "msd"])
def test_labels_follow_the_layout_convention_unless_overridden(tmp_path, naming):
    write_phantom_dataset(tmp_path / "in", cases=1, seed=5, shape=SHAPE, naming=naming)
    assert predict(tmp_path / "in", oracle(), tmp_path / "default", progress=False).ok
    assert predict(tmp_path / "in", oracle(), tmp_path / "msd", labels="msd", progress=False).ok
    [default] = sorted((tmp_path / "default").glob("*.nii.gz"))
    [as_msd] = sorted((tmp_path / "msd").glob("*.nii.gz"))
    internal = to_internal(np.asanyarray(nib.load(default).dataobj), naming)
    assert set(np.unique(internal)) == {0, 1, 2, 3}
    assert set(np.unique(np.asanyarray(nib.load(default).dataobj))) == set(allowed_values(naming))
    np.testing.assert_array_equal(np.asanyarray(nib.load(as_msd).dataobj), from_internal(internal, "msd"))


def test_batch_with_a_broken_case_resume_and_overwrite(tmp_path, checkpoint, capsys):
    files = write_phantom_dataset(tmp_path / "in", cases=3, seed=7, shape=SHAPE, naming="brats2020")
    cases = sorted({f.parent for f in files})
    broken_case = cases[1]
    broken = next(broken_case.glob("*_t1.nii.gz"))
    broken.write_bytes(broken.read_bytes()[:2000])  # a truncated download
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "in"), "--model", str(checkpoint), "--out", str(out), "--strategy", "whole",
            "--quiet"]

    assert run_cli(argv) == 1
    err = capsys.readouterr().err
    assert str(broken) in err and "1 failed" in err
    good = sorted(p.name for p in out.glob("*.nii.gz"))
    assert good == sorted(f"{c.name}.nii.gz" for c in cases if c != broken_case)
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary files left
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}

    assert run_cli(argv) == 1  # the broken case still fails; the others are skipped, not redone
    assert "2 skipped" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == mtimes

    broken.unlink()
    assert run_cli(argv) == 1  # a missing modality is reported too
    assert "t1" in capsys.readouterr().err

    assert run_cli([*argv, "--overwrite"]) == 1
    assert all(p.stat().st_mtime_ns != t for p, t in mtimes.items())


def test_explicit_four_files(tmp_path, checkpoint, capsys):
    images, _ = make_phantom(8, SHAPE)
    files = _write_case(tmp_path / "in", "Solo", images, np.diag([-1.0, -1.0, 1.0, 1.0]), 1, 1)
    argv = ["predict", "--model", str(checkpoint), "--out", str(tmp_path / "out"), "--quiet", "--strategy",
            "sliding", "--roi", "32", "32", "16", "--overlap", "0.25", "--precision", "fp32",
            *[x for m in MODALITIES for x in (f"--{m}", str(files[m]))]]
    assert run_cli(argv) == 0
    assert "1 written" in capsys.readouterr().out
    out = nib.load(tmp_path / "out" / "Solo.nii.gz")
    assert out.shape == SHAPE and out.get_data_dtype() == np.uint8
    assert run_cli(argv[:-2]) == 1  # --t2 missing
    assert "--t2" in capsys.readouterr().err


def test_a_bad_checkpoint_is_named(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_text("not a model")
    assert run_cli(["predict", str(tmp_path), "--model", str(bad), "--out", str(tmp_path / "o")]) == 1
    assert f"error: {bad}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.slow
@pytest.mark.realdata
def test_real_cases(real_data, tmp_path):
    # A tiny network (one conv per stage, two stages) keeps 11 full-size cases affordable on 2 cores.
    tiny = {"name": "agsevnet", "base_width": 4, "depth": 2, "enc_convs": [1, 1], "dec_convs": 1, "dropout": 0.0}
    checkpoint = _random_checkpoint(tmp_path / "tiny.pt", tiny)
    out = tmp_path / "out"
    assert run_cli(["predict", str(real_data), "--model", str(checkpoint), "--out", str(out), "--strategy", "whole",
                 "--quiet"]) == 0
    cases = sorted(p for p in real_data.iterdir() if p.is_dir())
    for case in cases:
        flair = nib.load(next(f for f in case.glob("*.nii.gz") if f.name.lower().endswith(("flair.nii.gz",
                                                                                           "t2f.nii.gz"))))
        pred = nib.load(out / f"{case.name}.nii.gz")
        assert pred.shape == flair.shape and pred.get_data_dtype() == np.uint8, case.name
        np.testing.assert_array_equal(pred.affine, flair.affine)
        values = set(np.unique(np.asanyarray(pred.dataobj)).tolist())
        allowed = {0, 1, 2, 3} if case.name.startswith("BraTS-GLI") else {0, 1, 2, 4}
        assert values <= allowed, (case.name, values)
    old = np.asanyarray(nib.load(out / "BraTS2021_00000.nii.gz").dataobj)
    new = np.asanyarray(nib.load(out / "BraTS-GLI-00000-000.nii.gz").dataobj)
    assert len(np.unique(old)) >= 3  # a non-trivial segmentation, so the comparison below means something
    np.testing.assert_array_equal(to_internal(old, "brats2020"), to_internal(new, "brats2023"))
