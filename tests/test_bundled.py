"""The bundled real-data model: shipped inside the package, loaded with ``weights_only=True``, used by ``predict``
and ``segment`` when no model is named, listed by ``agsevnet models``; on the real cases (skipped where
``../shared`` is absent) it reproduces its recorded Dice, writes the input's exact grid with BraTS labels, and
segments the 2021 and 2023 copies of one patient identically."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import run_cli

from agsevnet.infer.bundled import DEFAULT_MODEL, bundled_names, bundled_path, model_card, resolve_model

pytestmark = pytest.mark.skipif(DEFAULT_MODEL not in bundled_names(),
                                reason=f"this checkout ships no bundled model {DEFAULT_MODEL!r}")

DICE_TOLERANCE = 0.01
"""How far the regression Dice may move (bf16 vs fp32 arithmetic, oneDNN kernels differ between CPUs)."""


def test_bundled_model_loads_with_weights_only_and_is_small():
    path = bundled_path(DEFAULT_MODEL)
    assert path.stat().st_size <= 25 * 1024**2
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["format"] == "agsevnet-checkpoint" and "optimizer" not in ckpt
    card = ckpt["card"]
    assert {"Dice_ET", "Dice_WT", "Dice_TC"} <= set(card["crossval"]) and card["references"]
    assert resolve_model(None) == path and resolve_model(DEFAULT_MODEL) == path


def test_models_command_lists_the_bundled_model(capsys):
    assert run_cli(["models"]) == 0
    out = capsys.readouterr().out
    card = model_card(DEFAULT_MODEL)
    assert DEFAULT_MODEL in out and "(default)" in out and "not for clinical use" in out
    assert f"{card['crossval']['Dice_WT']:.3f}" in out


def test_unknown_model_name_is_a_clear_error(capsys, tmp_path):
    assert run_cli(["predict", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "no-such-model"]) == 1
    assert "neither a bundled model" in capsys.readouterr().err


def test_predict_a_phantom_without_model_or_shared_data(tmp_path: Path):
    from agsevnet.synth.phantom import write_phantom_dataset
    from agsevnet.infer.predictor import segment

    write_phantom_dataset(tmp_path / "data", 1, seed=5)
    assert run_cli(["predict", str(tmp_path / "data"), "--out", str(tmp_path / "preds"), "-q"]) == 0
    written = sorted((tmp_path / "preds").glob("*.nii.gz"))
    assert len(written) == 1
    src = next(p for p in (tmp_path / "data").rglob("*flair*.nii.gz"))
    out, ref = nib.load(written[0]), nib.load(src)
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
    labels = np.asarray(out.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    images = np.stack([np.asarray(nib.load(next((tmp_path / "data").rglob(f"*_{m}.nii.gz"))).dataobj, np.float32)
                       for m in ("flair", "t1", "t1ce", "t2")])
    np.testing.assert_array_equal(segment(images, convention="brats2020"), labels)


@pytest.mark.realdata
def test_real_case_exact_grid_and_recorded_dice(real_data: Path, tmp_path: Path):
    from agsevnet.data.io import load_case
    from agsevnet.data.layouts import discover
    from agsevnet.evaluate.metrics import dice_scores

    refs = model_card(DEFAULT_MODEL)["references"]
    case_id = "BraTS2021_00002" if "BraTS2021_00002" in refs else sorted(refs)[0]
    case_dir = real_data / case_id
    assert run_cli(["predict", str(case_dir), "--out", str(tmp_path), "-q"]) == 0
    out = nib.load(tmp_path / f"{case_id}.nii.gz")
    ref = nib.load(next(case_dir.glob("*_flair.nii.gz")))
    assert out.shape == ref.shape == (240, 240, 155)
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert int(out.header["sform_code"]) == int(ref.header["sform_code"])
    assert int(out.header["qform_code"]) == int(ref.header["qform_code"])
    labels = np.asarray(out.dataobj)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 4} and (labels > 0).any()
    case = load_case(discover(case_dir)[0])
    from agsevnet.data.labels import to_internal

    dice = dice_scores(to_internal(labels, "brats2020"), case.label)
    for region, value in refs[case_id].items():
        assert dice[region] == pytest.approx(value, abs=DICE_TOLERANCE), region


@pytest.mark.realdata
def test_2021_and_2023_copies_get_the_same_segmentation(real_data: Path, tmp_path: Path):
    if not (real_data / "BraTS-GLI-00000-000").is_dir():
        pytest.skip("the BraTS 2023 copy of BraTS2021_00000 is not in the shared data")
    for case in ("BraTS2021_00000", "BraTS-GLI-00000-000"):
        assert run_cli(["predict", str(real_data / case), "--out", str(tmp_path), "-q"]) == 0
    a = np.asarray(nib.load(tmp_path / "BraTS2021_00000.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "BraTS-GLI-00000-000.nii.gz").dataobj)
    assert set(np.unique(a)) <= {0, 1, 2, 4} and set(np.unique(b)) <= {0, 1, 2, 3}
    renamed = np.where(b == 3, 4, b)
    np.testing.assert_array_equal(a, renamed)
