"""Sharded batch prediction (agsevnet.infer.shard): the shards partition the cases exactly, a case's shard depends
on its id only (stable when the folder is re-listed or gains cases), the runner writes one summary per shard and
``predict --summary`` merges them (failures, missing shards, exit status); bad ``--shard`` values are one-line
errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from agsevnet.errors import ConfigError, DataError
from agsevnet.infer.predictor import Predictor, predict
from agsevnet.infer.shard import merge_summaries, parse_shard, select_shard, shard_counts, shard_of
from helpers import run_cli

IDS = [f"BraTS2021_{i:05d}" for i in range(1000)]


def test_shards_partition_the_cases_exactly():
    for n in (1, 2, 3, 4, 7, 16):
        shards = [select_shard(IDS, i, n, key=str) for i in range(1, n + 1)]
        union = [c for shard in shards for c in shard]
        assert sorted(union) == sorted(IDS) and len(union) == len(set(union))  # union = all, disjoint
        for i, shard in enumerate(shards, 1):
            assert all(shard_of(c, n) == i for c in shard)
    sizes = shard_counts(IDS, 4)
    assert sum(sizes) == 1000 and min(sizes) > 200  # a hash, not a round-robin, but balanced enough


def test_a_shard_depends_on_the_case_id_only():
    shuffled = IDS[:]
    random.Random(0).shuffle(shuffled)
    for i in (1, 2, 3):
        assert sorted(select_shard(IDS, i, 3, key=str)) == sorted(select_shard(shuffled, i, 3, key=str))
    # the folder gains cases: every old case keeps its shard; only the new ones are assigned
    grown = IDS + [f"BraTS2023_{i:05d}" for i in range(300)]
    before = {c: shard_of(c, 5) for c in IDS}
    after = {c: shard_of(c, 5) for c in grown}
    assert all(after[c] == before[c] for c in IDS)
    # fixed values: the rule is sha256, not Python's per-process hash()
    import hashlib

    assert shard_of("BraTS2021_00000", 7) == int.from_bytes(hashlib.sha256(b"BraTS2021_00000").digest()[:8],
                                                            "big") % 7 + 1


@pytest.mark.parametrize("text", ["0/4", "5/4", "4", "1/0", "a/b", "-1/4", "1/4/2", ""])
def test_bad_shard_values(text):
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(text)


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4) and parse_shard(" 4 / 4 ") == (4, 4) and parse_shard("1/1") == (1, 1)


# ------------------------------------------------------------------------------------------------ the runner


class Flair(nn.Module):
    """Stand-in network: tumour classes from the normalised FLAIR (every phantom gets some of each)."""

    centres = torch.tensor([-0.5, 0.3, 1.0, 1.8])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -10 * (x[:, :1] - self.centres.view(1, 4, 1, 1, 1)) ** 2


def _predictor() -> Predictor:
    return Predictor(Flair(), preprocess={"normalization": "brain", "margin": 2, "dtype": "float32"},
                     strategy="whole", divisor=1, precision="fp32")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from agsevnet.synth.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("shard") / "data"
    write_phantom_dataset(root, 6, seed=3, shape=(24, 24, 24))
    return root


def test_sharded_runs_cover_the_dataset_and_merge(dataset, tmp_path, capsys):
    from agsevnet.data.layouts import discover

    ids = [s.case_id for s in discover(dataset)]
    out = tmp_path / "pred"
    n = 3
    for i in (1, 2):  # shard 3 not run yet
        summary = predict(dataset, _predictor(), out, shard=(i, n), progress=False)
        assert [r.case_id for r in summary.results] == [c for c in ids if shard_of(c, n) == i]
        record = json.loads((out / f"predict-summary-shard-{i}-of-{n}.json").read_text())
        assert record["shard"] == [i, n] and [c["case_id"] for c in record["cases"]] == \
            [r.case_id for r in summary.results]
    merged = merge_summaries(out)
    assert merged.shards == n and merged.missing_shards == [3] and not merged.ok
    assert run_cli(["predict", "--summary", str(out)]) == 1
    assert "missing shard(s): 3/3" in capsys.readouterr().err
    # shard 3 through the CLI; then the merge covers every case, and exits 0
    ckpt_free = predict(dataset, _predictor(), out, shard="3/3", progress=False)
    assert all(shard_of(r.case_id, 3) == 3 for r in ckpt_free.results)
    merged = merge_summaries(out)
    assert merged.ok and sorted(c["case_id"] for c in merged.cases) == sorted(ids)
    assert {c["status"] for c in merged.cases} == {"written"}
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in ids)
    assert run_cli(["predict", "--summary", str(out)]) == 0
    # a shard rerun resumes: its cases are skipped, its summary rewritten
    again = predict(dataset, _predictor(), out, shard=(1, n), progress=False)
    assert {r.status for r in again.results} <= {"skipped"}
    assert merge_summaries(out).ok


def test_merge_lists_failures_and_exits_nonzero(dataset, tmp_path, capsys):
    import shutil

    from agsevnet.data.layouts import discover

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    specs = discover(data)
    broken = specs[0]
    Path(broken.images["t1"].path).write_bytes(b"not a nifti")  # this case fails, the others are written
    out = tmp_path / "pred"
    for i in (1, 2):
        predict(data, _predictor(), out, shard=(i, 2), progress=False)
    merged = merge_summaries(out)
    failed = merged.by_status("failed")
    assert [c["case_id"] for c in failed] == [broken.case_id] and not merged.ok and not merged.missing_shards
    assert len(merged.by_status("written")) == len(specs) - 1
    assert run_cli(["predict", "--summary", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"failed: {broken.case_id}:" in err and "t1" in err


def test_merge_refuses_two_splits_and_non_summaries(tmp_path):
    out = tmp_path / "pred"
    out.mkdir()
    with pytest.raises(DataError, match="no predict-summary"):
        merge_summaries(out)
    record = {"format": "agsevnet-predict-summary", "cases": []}
    (out / "predict-summary-shard-1-of-2.json").write_text(json.dumps(record))
    (out / "predict-summary-shard-1-of-4.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match="different splits"):
        merge_summaries(out)
    (out / "predict-summary-shard-1-of-4.json").write_text("{}")
    with pytest.raises(DataError, match="not a prediction summary"):
        merge_summaries(out)


def test_cli_shard_errors(dataset, tmp_path, capsys):
    for bad in ("0/2", "3/2", "x"):
        assert run_cli(["predict", str(dataset), "--out", str(tmp_path / "o"), "--shard", bad]) != 0
        err = capsys.readouterr().err
        assert "--shard" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert run_cli(["predict", "--summary", str(tmp_path), "--shard", "1/2"]) != 0
    assert "give it alone" in capsys.readouterr().err
    assert run_cli(["predict", str(dataset)]) != 0
    assert "--out is required" in capsys.readouterr().err


def test_summary_records_confidence_and_lists_cases_to_check(dataset, tmp_path):
    summary = predict(dataset, _predictor(), tmp_path / "p", progress=False, confidence_threshold=1.0)
    assert summary.confidence_threshold == 1.0
    assert {r.case_id for r in summary.low_confidence()} == {r.case_id for r in summary.results}
    assert "check these" in summary.format()
    record = json.loads((tmp_path / "p" / "predict-summary.json").read_text())
    assert record["check_these"] == [r.case_id for r in summary.low_confidence()]
    assert all(isinstance(c["confidence"], float) for c in record["cases"])
    quiet = predict(dataset, _predictor(), tmp_path / "q", progress=False, confidence_threshold=0.0)
    assert not quiet.low_confidence() and "low confidence" not in quiet.format()
    # threshold 0: only the cases with a warning sign are left to check (this stub calls tumour all over the brain)
    assert {case_id for case_id, _, _ in quiet.to_check()} == {r.case_id for r in quiet.results if r.flags}
    assert np.isfinite([r.confidence for r in quiet.results]).all()
