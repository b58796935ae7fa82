"""Uncertainty: the normalised-entropy map and the per-case confidence figure (agsevnet.infer.uncertainty), and
``agsevnet predict --save-uncertainty`` end to end: the map on the input grid, the sidecars and summary, the
"check these" list, evaluate ignoring the maps, the report's viewer showing them.

A small cpu-small model is trained on phantoms once per module (a few hundred steps) so that the figure is that of
a model that segments; it must fall when the input is heavily degraded (blurred: the degradation that lowered it
by a clear margin whatever the training run; see that test)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from agsevnet.data.case import Case
from agsevnet.data.io import load_case
from agsevnet.data.layouts import discover
from agsevnet.infer.predictor import Predictor, predict
from agsevnet.infer.uncertainty import case_confidence, confidence_region, normalised_entropy
from helpers import run_cli

SHAPE = (48, 48, 48)
TRAIN = ["train.steps=250", "validation.every=0", "validation.fold=all", "train.log_every=50",
         "train.checkpoint_every=250", "data.patch_size=[32,32,32]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint of cpu-small trained 250 steps on 4 phantoms, a dataset of 2 held-out phantoms)."""
    from agsevnet.synth.phantom import write_phantom_dataset
    from agsevnet.train.trainer import train

    root = tmp_path_factory.mktemp("uncertainty")
    write_phantom_dataset(root / "train", 4, seed=11, shape=SHAPE)
    write_phantom_dataset(root / "test", 2, seed=4242, shape=SHAPE)
    train(root / "train", root / "run", config="cpu-small", overrides=TRAIN, device="cpu",
          cache_dir=root / "cache", progress=False)
    return root / "run" / "last.pt", root / "test"


# ------------------------------------------------------------------------------------------------ units


def test_normalised_entropy_bounds():
    certain = np.zeros((4, 2, 2, 2), np.float32)
    certain[2] = 1
    assert np.array_equal(normalised_entropy(certain), np.zeros((2, 2, 2), np.float32))
    uniform = np.full((4, 3), 0.25, np.float32)
    assert np.allclose(normalised_entropy(uniform), 1.0)
    two = np.array([[0.5], [0.5], [0], [0]], np.float32)  # two classes evenly: log 2 / log 4
    assert np.allclose(normalised_entropy(two), 0.5)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=1000).T.astype(np.float32)
    h = normalised_entropy(p)
    assert h.dtype == np.float32 and 0 <= h.min() and h.max() <= 1


def test_confidence_is_one_minus_the_mean_entropy_over_tumour_and_rim():
    classes = np.zeros((4, 20, 20, 20), np.float32)
    classes[0] = 1
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[8:12, 8:12, 8:12] = 2
    classes[:, 8:12, 8:12, 8:12] = np.array([0, 0, 1, 0], np.float32)[:, None, None, None]
    assert case_confidence(labels, classes)["confidence"] == 1.0  # certain everywhere
    classes[:, 0, 0, 0] = [0.95, 0, 0.05, 0]  # slight doubt far from the tumour (tumour p < 0.1) does not count
    assert case_confidence(labels, classes)["confidence"] == 1.0
    classes[:, 7, 10, 10] = 0.25  # doubt on the rim does
    out = case_confidence(labels, classes)
    region = confidence_region(labels, classes)
    assert out["region_voxels"] == int(region.sum()) > 64
    assert out["confidence"] == pytest.approx(1 - 1 / region.sum(), abs=1e-6)


# ------------------------------------------------------------------------------------------------ a trained model


def _confidence(predictor: Predictor, case: Case) -> float:
    result = predictor.predict_case(case, with_uncertainty=True)
    return float(result.confidence["confidence"])


def test_confidence_falls_when_the_phantom_is_degraded(trained):
    """Heavy blurring (a Gaussian of sigma 3 voxels on every contrast, the brain's outline kept: a scan of about
    7 mm resolution) lowers the figure of every case by a clear margin, whichever way the fixture's training run
    happens to go on this machine and these library versions.

    Measured 2026-12 with this fixture trained under six seeds (0-5), two phantoms each: blurring lowered the
    figure by 0.033-0.110 in all twelve (seed 0, the fixture's: 0.037 / 0.033), so ``> 0.015`` holds with a
    margin.
    What this test asserted before did not hold: heavy noise (3x the brain's intensity spread) raised the figure
    in three of six (seeds 0-2), and a missing FLAIR or T2 lowered it by between -0.004 (a rise) and 0.043 (a
    fresh clone failed on "no FLAIR" 0.861368 against clean 0.861051). Entropy does not see a model that is
    confidently wrong: blur and noise together left one phantom at WT Dice 0.07 with the figure at 0.89, above
    its clean 0.88 (earlier: a missing T1ce halved the Dice and lowered the figure by only 0.005-0.011)."""
    from scipy import ndimage

    ckpt, test = trained
    predictor = Predictor.from_checkpoint(ckpt, precision="fp32")
    for spec in discover(test):
        case = load_case(spec, with_label=False)
        clean = _confidence(predictor, case)
        brain = case.images > 0
        blurred = np.stack([ndimage.gaussian_filter(image, 3.0) * inside for image, inside in zip(case.images, brain)])
        value = _confidence(predictor, Case(case.spec, blurred.astype(np.float32), None, case.geometry))
        print(spec.case_id, f"clean {clean:.3f} blurred {value:.3f}")
        assert clean - value > 0.015, (spec.case_id, clean, value)


def test_predict_save_uncertainty_end_to_end(trained, tmp_path, capsys):
    """The CLI writes the map on the input grid (shape, affine, float32, [0, 1], highest on the predicted tumour's
    border), the sidecars and summary agree, 'check these' lists the cases under the threshold, evaluate ignores
    the maps, and the report's viewer picks them up."""
    from agsevnet.report import viewer

    ckpt, test = trained
    out = tmp_path / "pred"
    assert run_cli(["predict", str(test), "--model", str(ckpt), "--out", str(out), "--save-uncertainty", "-q",
                    "--confidence-threshold", "1.0"]) == 0
    printed = capsys.readouterr()
    summary = json.loads((out / "predict-summary.json").read_text())
    specs = discover(test)
    assert [c["case_id"] for c in summary["cases"]] == [s.case_id for s in specs]
    for spec in specs:
        flair = nib.load(spec.images["flair"].path)
        unc_img = nib.load(out / f"{spec.case_id}_uncertainty.nii.gz")
        unc = np.asarray(unc_img.dataobj)
        assert unc.shape == flair.shape and unc.dtype == np.float32
        assert np.allclose(unc_img.affine, flair.affine)
        assert 0 <= unc.min() and unc.max() <= 1 and unc.max() > 0.3
        labels = np.asarray(nib.load(out / f"{spec.case_id}.nii.gz").dataobj) > 0
        from scipy import ndimage

        border = labels & ~ndimage.binary_erosion(labels)
        assert border.any() and unc[border].mean() > 5 * unc[~labels].mean()  # registered: doubt sits on the border
        side = json.loads((out / f"{spec.case_id}.json").read_text())
        entry = next(c for c in summary["cases"] if c["case_id"] == spec.case_id)
        assert 0 < side["confidence"] < 1 and entry["confidence"] == side["confidence"]
        assert side["uncertainty"] == f"{spec.case_id}_uncertainty.nii.gz" and side["labels"] == "brats2020"
        assert side["model"] == str(ckpt) and side["settings"]["tta_flips"] == 1 and side["check"] is True
    # threshold 1.0: every case is one to check, least confident first
    assert summary["check_these"] == [c["case_id"] for c in sorted(summary["cases"], key=lambda c: c["confidence"])]
    text = printed.out + printed.err
    assert "check these (2 case(s): confidence < 1 or a warning sign)" in text
    for c in summary["cases"]:  # one line per case: the low figure first, then any flag
        reasons = ["low confidence {:.3f}".format(c["confidence"]), *c["flags"]]
        assert f"    {c['case_id']}: {'; '.join(reasons)}" in text
    # a rerun skips both and keeps their figures (read from the sidecars)
    assert run_cli(["predict", str(test), "--model", str(ckpt), "--out", str(out), "--save-uncertainty", "-q"]) == 0
    again = json.loads((out / "predict-summary.json").read_text())
    assert [c["status"] for c in again["cases"]] == ["skipped", "skipped"]
    assert [c["confidence"] for c in again["cases"]] == [c["confidence"] for c in summary["cases"]]

    # evaluate: the maps are no predictions (no warning about predictions without ground truth)
    capsys.readouterr()
    assert run_cli(["evaluate", str(out), str(test), "--json", str(tmp_path / "eval.json")]) == 0
    said = "".join(capsys.readouterr())
    assert "_uncertainty.nii" not in said and "ground truth" not in said
    record = json.loads((tmp_path / "eval.json").read_text())
    assert sorted(c["case"] for c in record["cases"]) == sorted(s.case_id for s in specs)
    assert record["unmatched_predictions"] == []  # before the ignore rule: the two maps were listed here
    # the viewer picks the map up next to the prediction
    volumes = viewer.load_case(record["cases"][0], {})
    saved = np.asarray(nib.load(out / f"{record['cases'][0]['case']}_uncertainty.nii.gz").dataobj)
    assert volumes.uncertainty is not None and np.allclose(volumes.uncertainty, saved)


def test_region_model_uncertainty_is_the_entropy_of_the_derived_classes():
    """A region-based model's map: the entropy of regions_to_classes' class probabilities."""
    import torch
    from torch import nn

    from agsevnet.data.case import CaseSpec, Geometry
    from agsevnet.synth.phantom import make_phantom

    class Regions(nn.Module):  # WT/TC/ET logits from the FLAIR: a known function
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = x[:, :1]
            return torch.cat([3 * (f - 0.5), 3 * (f - 1.0), 3 * (f - 1.5)], dim=1)

    images, _ = make_phantom(3, (32, 32, 32))
    predictor = Predictor(Regions(), output="regions", strategy="whole", divisor=1, precision="fp32",
                          preprocess={"normalization": "brain", "margin": 2, "dtype": "float32"})
    eye = np.eye(4)
    geometry = Geometry(shape=images.shape[1:], affine=eye, qform=eye, qform_code=0, sform=eye, sform_code=0,
                        zooms=(1.0, 1.0, 1.0))
    case = Case(CaseSpec("x", "files", {}, None, "brats2020"), images, None, geometry)
    result = predictor.predict_case(case, with_uncertainty=True, with_probabilities=True)
    pre = predictor.preprocess_case(case)
    _, classes = predictor.labels_on_crop(pre)
    inside = tuple(slice(a, b) for a, b in pre.box)
    assert np.allclose(result.uncertainty[inside], normalised_entropy(classes), atol=1e-6)
    assert np.allclose(result.probabilities[(slice(None), *inside)], classes, atol=1e-6)
    assert np.allclose(classes.sum(0), 1, atol=1e-5) and 0 < result.confidence["confidence"] < 1
