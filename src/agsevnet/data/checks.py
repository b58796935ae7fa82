"""Dataset integrity checks (``agsevnet check``): every problem of every case, never stopping at the first.

:func:`check_case` reads a case with :func:`agsevnet.data.io.read_case` (the same reader training and
prediction use, so ``check`` finds exactly what would make them fail) and summarises it as a
:class:`CaseReport`; :func:`check_dataset` does that for every case of a folder, in worker processes, with a
progress bar.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from dataclasses import dataclass, field
from pathlib import Path

from agsevnet import MODALITIES
from agsevnet.data.case import CaseSpec
from agsevnet.data.io import read_case
from agsevnet.data.layouts import discover
from agsevnet.parallel import worker_count


@dataclass
class CaseReport:
    """What ``agsevnet check`` says about one case."""

    case_id: str
    scheme: str
    label_convention: str
    folder: Path | None
    modalities: list[str]  # found by discovery, MODALITIES order
    shape: tuple[int, int, int] | None  # of the reference image (None if unreadable)
    spacing: tuple[float, float, float] | None
    has_label: bool
    label_values: list[float] | None  # values stored in the label file (None: no label or unreadable)
    problems: list[str] = field(default_factory=list)  # each "<file>: <what is wrong>"
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_case(spec: CaseSpec) -> CaseReport:
    """Read every file of ``spec`` and report what is found and every problem (never raises for bad data)."""
    problems = list(spec.problems)
    shape = spacing = values = None
    try:
        data = read_case(spec, with_label=True, arrays=False)
    except Exception as exc:  # noqa: BLE001 - a report must come back for every case, whatever happens
        problems.append(f"{spec.folder}: could not be checked ({type(exc).__name__}: {exc})")
    else:
        problems += [str(p) for p in data.problems]
        if data.geometry is not None:
            shape, spacing = tuple(data.geometry.shape), tuple(data.geometry.zooms)
        values = data.label_values
    return CaseReport(
        case_id=spec.case_id, scheme=spec.scheme, label_convention=spec.label_convention, folder=spec.folder,
        modalities=[m for m in MODALITIES if m in spec.images], shape=shape, spacing=spacing,
        has_label=spec.has_label, label_values=values, problems=problems, notes=list(spec.notes))


def default_workers(n_cases: int) -> int:
    """Worker processes for ``n_cases``: one per CPU, at most one per case, at most 8 (memory: ~0.3 GB each);
    see :mod:`agsevnet.parallel`."""
    return worker_count(n_cases, cap=8)


def check_specs(specs: list[CaseSpec], workers: int | None = None, progress: bool = True) -> list[CaseReport]:
    """Check ``specs`` (in parallel when there are several); reports in the order of ``specs``."""
    from tqdm.auto import tqdm

    workers = default_workers(len(specs)) if workers is None else max(1, min(workers, len(specs)))
    bar = tqdm(total=len(specs), desc="check", unit="case", disable=not progress or len(specs) < 2,
               dynamic_ncols=True)
    try:
        if workers == 1:
            reports = []
            for spec in specs:
                reports.append(check_case(spec))
                bar.update()
            return reports
        reports_by_index: dict[int, CaseReport] = {}
        # "spawn": workers start clean even when the caller already runs threads (torch, tqdm).
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(check_case, spec): i for i, spec in enumerate(specs)}
            for future in as_completed(futures):
                reports_by_index[futures[future]] = future.result()
                bar.update()
        return [reports_by_index[i] for i in range(len(specs))]
    finally:
        bar.close()


def check_dataset(path: str | Path, workers: int | None = None, progress: bool = True) -> list[CaseReport]:
    """Check every case in ``path`` (any layout :func:`agsevnet.data.layouts.discover` knows).

    Raises ``DataError`` only when ``path`` holds no recognisable case; every other problem is reported.
    """
    return check_specs(discover(path), workers=workers, progress=progress)
