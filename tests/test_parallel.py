"""The one worker-count heuristic (agsevnet.parallel) and each stage's use of it: the same counts as the four
rules it replaced (written out here as the reference), CPUs counted from the affinity mask."""

from __future__ import annotations

import os

import pytest

from agsevnet import parallel
from agsevnet.data import checks
from agsevnet.evaluate import runner
from agsevnet.train import data as train_data


def test_available_cpus_follows_the_affinity_mask(monkeypatch):
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this OS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert parallel.available_cpus() == 3  # a job given 3 of 64 cores starts 3 processes, not 64


def test_worker_count_rules(monkeypatch):
    monkeypatch.setattr(parallel, "available_cpus", lambda: 6)
    assert parallel.worker_count() == 6
    assert parallel.worker_count(3) == 3  # at most one per item
    assert parallel.worker_count(0) == 1  # at least the minimum
    assert parallel.worker_count(0, minimum=0) == 0
    assert parallel.worker_count(100, cap=4) == 4
    assert parallel.worker_count(reserve=2) == 4
    assert parallel.worker_count(9, items_per_worker=4) == 2
    with pytest.raises(ValueError, match="items_per_worker"):
        parallel.worker_count(4, items_per_worker=0)


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 5, 8, 16, 64])
def test_each_stage_keeps_its_former_count(monkeypatch, cpus):
    monkeypatch.setattr(parallel, "available_cpus", lambda: cpus)
    # The rules each stage had before there was one helper.
    assert train_data.default_workers() == max(0, min(4, cpus - 1))
    for n in (0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 100, 1251):
        assert runner.default_workers(n) == max(1, min(4, cpus, n // 4))
        assert checks.default_workers(n) == max(1, min(n, cpus, 8))
        assert parallel.worker_count(n) == max(1, min(n, cpus))  # preprocess.update_cache, agsevnet phantom
