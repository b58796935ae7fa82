"""Cross-validation end to end on phantoms: every fold trained, its held-out cases predicted through the user's
path and evaluated with the fold's final weights (never a checkpoint chosen on the held-out cases, although the
tiny config validates on them during training); finished folds are reused only under the study's configuration;
studies over seeds are summarised. Every test stands alone: the study is trained once per module by a fixture, and
a test that changes a study works on its own copy."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli

STEPS = 24
TINY = [
    "model.base_width=4", "model.depth=3", "model.enc_convs=[1,1,1]", "data.patch_size=[16,16,16]",
    "data.batch_size=2", "data.workers=0", "validation.folds=2", "train.log_every=5",
    "validation.every=8",  # validates on the held-out cases during training, so best.pt is chosen on them
    "train.checkpoint_every=10", "optim.warmup_steps=2", "preprocess.spacing=[2.0,2.0,2.0]",
    "inference.strategy=sliding", "inference.overlap=0.25", "inference.min_component_fraction=0.1",
]


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return (["cross-validate", str(data), "--out", str(out), "--config", "cpu-small", "--steps", str(STEPS), "-q"]
            + [a for kv in TINY for a in ("--set", kv)] + list(extra))


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``agsevnet ARGV`` with its exit code, stdout and stderr (usable from module-scoped fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_cli(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """A trained two-fold study of four phantoms: its folders, the printed table and the record."""
    from agsevnet.synth.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("cv")
    write_phantom_dataset(root / "data", 4, seed=11, shape=(48, 48, 40))
    code, table, err = _run(_args(root / "data", root / "cv"))
    assert code == 0, err
    return {"data": root / "data", "out": root / "cv", "table": table,
            "record": json.loads((root / "cv" / "crossval.json").read_text())}


def _copy(study: dict, tmp_path: Path) -> Path:
    out = tmp_path / "cv"
    shutil.copytree(study["out"], out)
    return out


def test_every_fold_is_trained_predicted_and_evaluated(study):
    out, record, table = study["out"], study["record"], study["table"]
    assert "Dice ET" in table and "HD95 WT" in table
    assert set(record["folds"]) == {"0", "1"}
    cases = [r["case"] for r in record["rows"]]
    assert len(cases) == 4 == len(set(cases))  # every patient held out exactly once
    assert record["inference"]["strategy"] == "sliding"
    for k in ("0", "1"):
        assert all((out / f"fold{k}" / "preds" / f"{c}.nii.gz").is_file() for c in record["folds"][k]["cases"])
    for line in ("mean |", "0 |", "1 |"):
        assert line in table
    # the evaluation's CSVs: one row per case with its fold, and the summary statistics
    lines = (out / "crossval.csv").read_text().splitlines()
    assert lines[0].startswith("case,fold,Dice_ET,Dice_WT,Dice_TC,") and len(lines) == 5
    assert {line.split(",")[1] for line in lines[1:]} == {"0", "1"}
    summary = (out / "crossval_summary.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in summary] == ["statistic", "Mean", "StdDev", "Median", "25quantile",
                                                        "75quantile"]
    assert record["mean"]["Dice_WT"] == pytest.approx(np.mean([r["Dice_WT"] for r in record["rows"]]))
    assert record["std"]["Dice_WT"] == pytest.approx(np.std([r["Dice_WT"] for r in record["rows"]]))


def test_worst_patient_and_failures_are_reported(study):
    record, table = study["record"], study["table"]
    wt = {r["case"]: r["Dice_WT"] for r in record["rows"]}
    worst = min(wt, key=wt.get)
    assert record["worst"]["case"] == worst and record["worst"]["Dice_WT"] == wt[worst]
    failures = sorted(c for c, v in wt.items() if v < 0.5)
    assert record["failures"]["count"] == len(failures)
    assert sorted(c["case"] for c in record["failures"]["cases"]) == failures
    assert f"worst patient: {worst}" in table and f"{len(failures)} of 4" in table
    for fold in record["folds"].values():
        assert fold["worst"]["case"] in fold["cases"]


def test_each_fold_is_scored_with_its_final_weights(study, tmp_path):
    """The config validates on the held-out cases during training (best.pt chosen on them); the study must score
    the final weights: the record says so, and a best.pt that would score differently changes nothing."""
    from agsevnet.checkpoint import load_checkpoint, save_checkpoint

    record = study["record"]
    assert record["checkpoint"] == "final"
    out = _copy(study, tmp_path)
    for k, fold in record["folds"].items():
        run = out / f"fold{k}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["best"]["step"] is not None  # in-training validation did choose a best.pt
        assert "val_dice_mean" in (run / "metrics.csv").read_text().splitlines()[0]
        assert fold["checkpoint"] == "final" and fold["checkpoint_step"] == STEPS == summary["steps"]
        assert Path(fold["checkpoint_file"]).name == "last.pt"
        assert load_checkpoint(run / "last.pt")["step"] == STEPS
        # a best.pt whose weights predict nothing: scoring it would give Dice 0 for every region
        best = load_checkpoint(run / "best.pt")
        best["state_dict"] = {k: torch.zeros_like(v) for k, v in best["state_dict"].items()}
        save_checkpoint(run / "best.pt", best)
    assert any(r["Dice_WT"] > 0 for r in record["rows"])
    code, _, err = _run(_args(study["data"], out))
    assert code == 0, err
    again = json.loads((out / "crossval.json").read_text())
    assert again["rows"] == record["rows"]


def test_validation_scores_what_predict_writes(study):
    """The Dice the training logged at its last step equals the evaluation of predict's files (final weights)."""
    out, record = study["out"], study["record"]
    for k, fold in record["folds"].items():
        summary = json.loads((out / f"fold{k}" / "summary.json").read_text())
        logged = summary["last_validation"]
        for region in ("ET", "WT", "TC"):
            assert logged[f"val_dice_{region}"] == pytest.approx(fold["means"][f"Dice_{region}"], abs=1e-6), (k, region)
    assert any(np.isfinite(r["Dice_WT"]) and r["Dice_WT"] > 0 for r in record["rows"])


def test_a_second_call_keeps_finished_folds(study, tmp_path):
    out = _copy(study, tmp_path)
    mtime = (out / "fold0" / "last.pt").stat().st_mtime_ns
    # settings that cannot change the final weights may differ
    code, _, err = _run(_args(study["data"], out, "--set", "train.log_every=7", "--set", "validation.every=0",
                              "--set", "inference.min_component_fraction=0.2"))
    assert code == 0, err
    assert "trained already" in err
    assert (out / "fold0" / "last.pt").stat().st_mtime_ns == mtime


def test_a_fold_trained_otherwise_is_refused_naming_the_keys(study):
    out = study["out"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    code, _, err = _run(_args(study["data"], out, "--set", "augment.enabled=false"))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert str(out / "fold0") in lines[0] and "augment.enabled: True -> False" in lines[0]
    assert "--retrain" in lines[0]
    code, _, err = _run(_args(study["data"], out, "--seed", "3"))
    assert code == 1 and "seed: 0 -> 3" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing touched


def test_retrain_trains_a_fold_trained_otherwise_again(study, tmp_path):
    from agsevnet.config import load_config

    out = _copy(study, tmp_path)
    code, _, err = _run(_args(study["data"], out, "--set", "augment.enabled=false", "--fold", "0", "--retrain"))
    assert code == 0, err
    assert "fold 0: retraining" in err and "augment.enabled: True -> False" in err
    assert load_config(out / "fold0" / "config.yaml")["augment"]["enabled"] is False
    record = json.loads((out / "crossval.json").read_text())
    assert set(record["folds"]) == {"0"} and record["config"]["augment"]["enabled"] is False


# ------------------------------------------------------------------------------------------------ seeds
def _record(seed: int, wt: list[float], et: float, hd: float, **config) -> dict:
    from agsevnet.evaluate.metrics import COLUMNS

    rows = []
    for i, value in enumerate(wt):
        metrics = {c: (hd if c.startswith("Hausdorff") else 0.9) for c in COLUMNS}
        metrics.update(Dice_WT=value, Dice_ET=et, Dice_TC=0.7)
        rows.append({"case": f"P{i}", "fold": i % 2, **metrics})
    mean = {c: float(np.mean([r[c] for r in rows])) for c in COLUMNS}
    cfg = {"preset": "brats-cpu", "seed": seed, "train": {"steps": 100, "log_every": 5}, **config}
    return {"format": "agsevnet-crossval", "config": cfg, "rows": rows, "mean": mean, "inference": {"tta": False},
            "hd95_rule": "pooled", "checkpoint": "final"}


def test_studies_over_seeds_are_summarised(tmp_path, capsys):
    from agsevnet.studies.crossval import combine_studies

    a, b = tmp_path / "s0", tmp_path / "s1"
    a.mkdir()
    b.mkdir()
    (a / "crossval.json").write_text(json.dumps(_record(0, [0.9, 0.3, 0.8, 0.7], et=0.6, hd=10.0)))
    # another seed; log_every does not change training, so it is the same recipe
    (b / "crossval.json").write_text(json.dumps(_record(1, [0.9, 0.4, 0.2, 0.9], et=0.8, hd=20.0,
                                                        train={"steps": 100, "log_every": 50})))
    combined = combine_studies([a, b / "crossval.json"])
    assert combined["seeds"] == [0, 1]
    s0, s1 = combined["studies"]
    assert s0["Dice_WT"] == pytest.approx(0.675) and s1["Dice_WT"] == pytest.approx(0.6)
    assert s0["worst"]["case"] == "P1" and s0["worst_Dice_WT"] == pytest.approx(0.3) and s0["failures"] == 1
    assert s1["worst"]["case"] == "P2" and s1["worst_Dice_WT"] == pytest.approx(0.2) and s1["failures"] == 2
    over = combined["over_seeds"]
    assert over["Dice_ET"]["mean"] == pytest.approx(0.7)
    assert over["Dice_ET"]["sd"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert (over["Dice_ET"]["min"], over["Dice_ET"]["max"]) == pytest.approx((0.6, 0.8))
    assert over["Hausdorff95_WT"]["mean"] == pytest.approx(15.0)
    assert over["failures"]["mean"] == pytest.approx(1.5) and over["failures"]["max"] == 2

    assert run_cli(["cross-validate-summary", str(a), str(b), "--json", str(tmp_path / "seeds.json")]) == 0
    text = capsys.readouterr().out
    assert "0.300 (P1)" in text and "0.200 (P2)" in text
    assert "min-max |  | 0.600-0.800" in text
    assert json.loads((tmp_path / "seeds.json").read_text())["over_seeds"] == json.loads(json.dumps(over))


def test_summary_refuses_other_recipes_and_repeated_seeds(tmp_path, capsys):
    paths = []
    for name, record in (("a", _record(0, [0.9, 0.8], 0.6, 10.0)),
                         ("b", _record(1, [0.9, 0.8], 0.6, 10.0, train={"steps": 200, "log_every": 5})),
                         ("c", _record(0, [0.7, 0.8], 0.6, 10.0))):
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
        paths.append(str(tmp_path / f"{name}.json"))
    assert run_cli(["cross-validate-summary", paths[0], paths[1]]) == 1
    err = capsys.readouterr().err
    assert "train.steps: 100 -> 200" in err and "b.json" in err
    assert run_cli(["cross-validate-summary", paths[0], paths[2]]) == 1
    assert "share seed(s) [0]" in capsys.readouterr().err
