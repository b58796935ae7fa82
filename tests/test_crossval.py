"""Cross-validation end to end on phantoms: every fold trained, its held-out cases predicted through the user's
path and evaluated; the training's own validation (what picks best.pt) agrees with that evaluation, because both
go through the same Predictor settings (resolution, strategy, postprocessing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

TINY = [
    "model.base_width=4", "model.depth=3", "model.enc_convs=[1,1,1]", "data.patch_size=[16,16,16]",
    "data.batch_size=2", "data.workers=0", "validation.folds=2", "validation.every=0", "train.log_every=5",
    "train.checkpoint_every=10", "optim.warmup_steps=2", "preprocess.spacing=[2.0,2.0,2.0]",
    "inference.strategy=sliding", "inference.overlap=0.25", "inference.min_component_fraction=0.1",
]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path, str]:
    from agsevnet.synth.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("cv")
    write_phantom_dataset(root / "data", 4, seed=11, shape=(48, 48, 40))
    args = ["cross-validate", str(root / "data"), "--out", str(root / "cv"), "--config", "cpu-small",
            "--steps", "24", "-q"] + [a for kv in TINY for a in ("--set", kv)]
    return root, root / "cv", " ".join(args)


def test_every_fold_is_trained_predicted_and_evaluated(study, capsys):
    root, out, args = study
    assert run_cli(args.split()) == 0
    table = capsys.readouterr().out
    assert "Dice ET" in table and "HD95 WT" in table
    record = json.loads((out / "crossval.json").read_text())
    assert set(record["folds"]) == {"0", "1"}
    cases = [r["case"] for r in record["rows"]]
    assert len(cases) == 4 == len(set(cases))  # every patient held out exactly once
    assert record["inference"]["strategy"] == "sliding"
    for k in ("0", "1"):
        assert (out / f"fold{k}" / "best.pt").is_file()
        assert all((out / f"fold{k}" / "preds" / f"{c}.nii.gz").is_file() for c in record["folds"][k]["cases"])
    for line in ("mean |", "0 |", "1 |"):
        assert line in table


def test_validation_scores_what_predict_writes(study):
    """The Dice the training logged for its held-out cases equals the evaluation of predict's files."""
    _, out, _ = study
    record = json.loads((out / "crossval.json").read_text())
    for k, fold in record["folds"].items():
        summary = json.loads((out / f"fold{k}" / "summary.json").read_text())
        logged = summary["last_validation"]
        for region in ("ET", "WT", "TC"):
            assert logged[f"val_dice_{region}"] == pytest.approx(fold["means"][f"Dice_{region}"], abs=1e-6), (k, region)
    assert any(np.isfinite(r["Dice_WT"]) and r["Dice_WT"] > 0 for r in record["rows"])


def test_a_second_call_keeps_finished_folds(study, capsys):
    _, out, args = study
    mtime = (out / "fold0" / "best.pt").stat().st_mtime_ns
    assert run_cli(args.split()) == 0
    assert "trained already" in capsys.readouterr().err
    assert (out / "fold0" / "best.pt").stat().st_mtime_ns == mtime
