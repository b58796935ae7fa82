"""How many worker processes a stage starts when the user does not say: one heuristic for every stage.

Every stage that fans out over processes (preprocessing, data checks, evaluation, phantom writing, training's
patch loader) asks :func:`worker_count` and states its own limits as arguments, so that the rule is written
once and each caller's cap sits next to the reason for it:

================================  ==============================================================================
caller                            call and why
================================  ==============================================================================
``preprocess.update_cache``       ``worker_count(n_cases)``: one process per case up to the CPUs; a case is
                                  seconds of NumPy work and each process holds one case at a time.
``data.checks.check_specs``       ``worker_count(n_cases, cap=8)``: reading a case's headers and labels needs
                                  ~0.3 GB per process; 8 bounds the memory on large machines.
``evaluate.runner.evaluate``      ``worker_count(n_cases, cap=4, items_per_worker=4)``: starting a process costs
                                  ~1 s (imports), so each one should score at least 4 cases; each process holds
                                  two label volumes and their distance maps, 4 bounds the memory.
``cli.phantom``                   ``worker_count(n_cases)``: one process per phantom up to the CPUs.
``train.data.default_workers``    ``worker_count(cap=4, reserve=1, minimum=0)``: the main process trains, so one
                                  CPU is left to it; 0 on a single CPU (load patches in the main process); at
                                  most 4 loader processes, each of which keeps its own open cases and
                                  prefetched batches in memory.
================================  ==============================================================================

The CPUs counted are those this process may run on (:func:`available_cpus`: the affinity mask that
``taskset``, cgroups-aware launchers and job schedulers set), not the machine's total, so that a job given 4 of
64 cores does not start 64 processes.
"""

from __future__ import annotations

import os

__all__ = ["available_cpus", "worker_count"]


def available_cpus() -> int:
    """CPUs this process may run on: the size of its affinity mask where the OS has one (Linux), else
    :func:`os.cpu_count` (at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def worker_count(
    n_items: int | None = None,
    *,
    cap: int | None = None,
    reserve: int = 0,
    items_per_worker: int = 1,
    minimum: int = 1,
) -> int:
    """Worker processes for ``n_items`` items of work (None: an open-ended stream, e.g. training batches).

    ``available_cpus() - reserve`` (CPUs left for the calling process's own work), at most ``cap``, at most one
    worker per ``items_per_worker`` items (starting a process only pays off for that many), and at least
    ``minimum`` (1 for stages that need a worker; 0 where the caller can do the work itself).
    """
    if reserve < 0 or items_per_worker < 1 or minimum < 0:
        raise ValueError(f"need reserve >= 0, items_per_worker >= 1, minimum >= 0; got {reserve}, "
                         f"{items_per_worker}, {minimum}")
    n = available_cpus() - reserve
    if cap is not None:
        n = min(n, cap)
    if n_items is not None:
        n = min(n, n_items // items_per_worker)
    return max(minimum, n)
