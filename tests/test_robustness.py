"""The k-space noise experiment (paper Fig. 12): the noise reaches the target image SNR (measured two independent
ways), is reproducible for a seed, degrades a fixed intensity-based segmenter as it rises, and the run writes its
table, JSON and plot, protects its outputs, resumes after a stop, and works from the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from agsevnet import REGIONS
from agsevnet.synth.phantom import make_phantom, write_phantom_dataset
from agsevnet.errors import OutputExistsError
from agsevnet.infer.predictor import Predictor
from agsevnet.preprocess import brain_mask, normalize
from agsevnet.report.robustness import (
    CSV_NAME, JSON_NAME, PLOT_NAME, PROGRESS_NAME, TABLE_COLUMNS, add_kspace_noise, level_rng, measured_snr,
    noisy_images, run_robustness,
)
from helpers import run_cli

SHAPE = (48, 48, 48)
PREPROCESS = {"normalization": "brain", "margin": 2, "dtype": "float32"}


class VoxelClassifier(nn.Module):
    """A fixed intensity-based segmenter: a linear classifier of each voxel's four normalised intensities (a 1x1x1
    convolution), fitted once on a phantom. It has no spatial context, so image noise reaches its decisions."""

    def __init__(self) -> None:
        super().__init__()
        self.classify = nn.Conv3d(4, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(x)


@pytest.fixture(scope="module")
def stand_in() -> Predictor:
    """The classifier fitted (60 Adam steps of weighted cross-entropy, ~1 s) on a phantom outside the test data."""
    images, labels = make_phantom(1, SHAPE)
    x = torch.from_numpy(normalize(images, brain_mask(images))[0])[None]
    y = torch.from_numpy(labels.astype(np.int64))[None]
    torch.manual_seed(0)
    model = VoxelClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    weight = torch.tensor([0.2, 1.0, 1.0, 1.0])
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y, weight=weight).backward()
        optimizer.step()
    return Predictor(model.eval(), preprocess=PREPROCESS, strategy="whole", divisor=1, precision="fp32",
                     channels_last=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robustness") / "data"
    write_phantom_dataset(root, 3, seed=5, shape=SHAPE)
    return root


@pytest.fixture(scope="module")
def result(data, stand_in, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("robustness-run")
    return out, run_robustness(data, stand_in, out, snrs=(20, 10, 5), seed=0, progress=False)


# ------------------------------------------------------------------------------------------------- noise


def _rayleigh_sigma(background: np.ndarray) -> float:
    """Noise sigma from a signal-free region of a magnitude image: Rayleigh distributed, E[m^2] = 2 sigma^2."""
    return float(np.sqrt(np.mean(background.astype(np.float64) ** 2) / 2))


@pytest.mark.parametrize("snr", [40.0, 15.0, 5.0])
def test_noise_reaches_the_target_snr(snr):
    images, _ = make_phantom(2, (64, 64, 64))
    mask = brain_mask(images)
    for channel in (0, 2):  # FLAIR and T1ce: different intensity scales, each scaled to its own mean
        clean = images[channel]
        noisy = add_kspace_noise(clean, snr, np.random.default_rng(1), mask=mask, restore_background=False)
        mean = float(clean[mask].mean())
        # 1. From the background (the standard two-region MRI measurement), independent of the brain.
        assert mean / _rayleigh_sigma(noisy[~mask]) == pytest.approx(snr, rel=0.03)
        # 2. From the difference in the brain (Rician: slightly biased on dark tissue at low SNR).
        assert measured_snr(clean, noisy, mask) == pytest.approx(snr, rel=0.03)
    # A uniform object: the magnitude noise is nearly Gaussian with the target sigma.
    cube = np.zeros((40, 40, 40), np.float32)
    cube[8:32, 8:32, 8:32] = 800.0
    noisy = add_kspace_noise(cube, snr, np.random.default_rng(2))
    assert measured_snr(cube, noisy, cube > 0) == pytest.approx(snr, rel=0.03)


def test_background_is_restored_by_default_and_kept_on_request():
    images, _ = make_phantom(3, (40, 40, 40))
    mask = brain_mask(images)
    restored = noisy_images(images, 10, np.random.default_rng(0))
    kept = noisy_images(images, 10, np.random.default_rng(0), restore_background=False)
    assert restored.shape == images.shape and restored.dtype == np.float32
    assert np.all(restored[:, ~mask] == 0) and np.array_equal(brain_mask(restored), mask)
    assert np.array_equal(restored[:, mask], kept[:, mask])  # the same noise; only the background differs
    assert np.all(kept[:, ~mask] > 0)
    assert not np.allclose(restored[:, mask], images[:, mask], rtol=0.01)


def test_noise_is_reproducible_per_seed_case_and_level():
    images, _ = make_phantom(4, (32, 32, 32))

    def noisy(seed, case, snr):
        return noisy_images(images, snr, level_rng(seed, case, snr))

    assert np.array_equal(noisy(0, "A", 10), noisy(0, "A", 10))
    for other in (noisy(1, "A", 10), noisy(0, "B", 10)):
        assert not np.array_equal(noisy(0, "A", 10), other)


# ------------------------------------------------------------------------------------------------- the run


def test_dice_falls_as_noise_rises(result):
    _, record = result
    levels = record["levels"]
    assert [row["level"] for row in levels] == ["clean", "20", "10", "5"]
    dice = {row["level"]: row["Dice_mean"] for row in levels}
    print({k: round(v, 3) for k, v in dice.items()})
    assert dice["clean"] > 0.5  # the stand-in segments the clean phantoms
    assert dice["5"] < dice["10"] < dice["clean"]
    assert dice["5"] < dice["clean"] - 0.05
    for row in levels[1:]:
        assert row["measured_snr"] == pytest.approx(row["snr"], rel=0.05)
        assert row["cases"] == 3
    assert levels[0]["measured_snr"] is None


def test_outputs_table_json_and_plot(result):
    out, record = result
    with (out / CSV_NAME).open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(TABLE_COLUMNS)
    assert [r["level"] for r in rows] == ["clean", "20", "10", "5"]
    for row, level in zip(rows, record["levels"], strict=True):
        for region in (*REGIONS, "mean"):
            assert float(row[f"Dice_{region}"]) == pytest.approx(level[f"Dice_{region}"], abs=1e-6)
    saved = json.loads((out / JSON_NAME).read_text())
    assert saved["format"] == "agsevnet-robustness"
    assert saved["settings"]["snrs"] == [20.0, 10.0, 5.0] and saved["settings"]["restore_background"] is True
    assert len(saved["cases"]) == 4 * 3 and set(saved["cases"][0]["metrics"]) >= {f"Dice_{r}" for r in REGIONS}
    # The table is the mean of the per-case Dice.
    fives = [c["metrics"]["Dice_WT"] for c in saved["cases"] if c["level"] == "5"]
    assert saved["levels"][-1]["Dice_WT"] == pytest.approx(np.mean(fives))
    with Image.open(out / PLOT_NAME) as img:
        assert img.format == "PNG" and img.width >= 600 and img.height >= 350
    assert not (out / PROGRESS_NAME).exists()


def test_rerun_is_identical_and_outputs_are_protected(data, stand_in, result, tmp_path):
    out, record = result
    again = run_robustness(data, stand_in, tmp_path / "again", snrs=(20, 10, 5), seed=0, progress=False)
    assert again["cases"] == record["cases"]
    with pytest.raises(OutputExistsError):
        run_robustness(data, stand_in, out, snrs=(20, 10, 5), seed=0, progress=False)
    other = run_robustness(data, stand_in, tmp_path / "again", snrs=(5,), seed=1, overwrite=True, progress=False)
    assert [row["level"] for row in other["levels"]] == ["clean", "5"]
    assert other["levels"][0]["Dice_mean"] == record["levels"][0]["Dice_mean"]  # clean: no noise, same result
    noisy5 = [c["metrics"] for c in record["cases"] if c["level"] == "5"]
    assert [c["metrics"] for c in other["cases"] if c["level"] == "5"] != noisy5  # another seed, other noise


def test_a_stopped_run_resumes_where_it_stopped(data, stand_in, result, tmp_path, monkeypatch):
    _, record = result
    calls = {"n": 0}
    predict_case = Predictor.predict_case

    def counting(self, case, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # the user stops the run during its 6th segmentation
        return predict_case(self, case, **kwargs)

    monkeypatch.setattr(Predictor, "predict_case", counting)
    with pytest.raises(KeyboardInterrupt):
        run_robustness(data, stand_in, tmp_path, snrs=(20, 10, 5), seed=0, progress=False)
    assert len((tmp_path / PROGRESS_NAME).read_text().splitlines()) == 1 + 5  # settings + five results
    calls["n"] = -100
    resumed = run_robustness(data, stand_in, tmp_path, snrs=(20, 10, 5), seed=0, progress=False)
    assert calls["n"] == -100 + 12 - 5  # only what was missing was segmented
    assert resumed["cases"] == record["cases"]
    # Other settings do not mix with a stopped run's results.
    (tmp_path / PROGRESS_NAME).write_text(json.dumps({"settings": {"seed": 99}}) + "\n")
    for name in (CSV_NAME, JSON_NAME, PLOT_NAME):
        (tmp_path / name).unlink()
    with pytest.raises(OutputExistsError, match="other settings"):
        run_robustness(data, stand_in, tmp_path, snrs=(20, 10, 5), seed=0, progress=False)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_writes_the_table_and_plot(tmp_path, capsys):
    from agsevnet.checkpoint import make_checkpoint, save_checkpoint
    from agsevnet.models import build_model

    data = tmp_path / "data"
    write_phantom_dataset(data, 2, seed=9, shape=(32, 32, 32))
    model_cfg = {"name": "agsevnet", "base_width": 4, "depth": 3, "dropout": 0.0}
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "model.pt", make_checkpoint(build_model(model_cfg), model_cfg,
                                                                   {"preprocess": PREPROCESS}, step=7,
                                                                   patch_size=(32, 32, 32)))
    out = tmp_path / "out"
    assert run_cli(["robustness", str(data), "--model", str(ckpt), "--out", str(out), "--snr", "20,5", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "SNR 20" in printed and "SNR 5" in printed and "clean" in printed
    record = json.loads((out / JSON_NAME).read_text())
    assert [row["level"] for row in record["levels"]] == ["clean", "20", "5"]
    assert record["settings"]["checkpoint_step"] == 7
    assert all((out / name).is_file() for name in (CSV_NAME, PLOT_NAME))
    # Existing results, bad levels and unlabelled data are one-line errors.
    assert run_cli(["robustness", str(data), "--model", str(ckpt), "--out", str(out), "--snr", "20"]) == 1
    assert run_cli(["robustness", str(data), "--model", str(ckpt), "--out", str(tmp_path / "o2"), "--snr", "x"]) == 1
    assert run_cli(["robustness", str(data), "--model", str(ckpt), "--out", str(tmp_path / "o3"), "--snr", "-5"]) == 1
    unlabelled = tmp_path / "unlabelled"
    write_phantom_dataset(unlabelled, 1, seed=9, shape=(32, 32, 32), with_labels=False)
    assert run_cli(["robustness", str(unlabelled), "--model", str(ckpt), "--out", str(tmp_path / "o4")]) == 1
    errors = capsys.readouterr().err
    assert "exists" in errors and "--snr takes numbers" in errors and "positive" in errors
    assert "needs ground truth" in errors
