"""The on-disk cache of preprocessed cases (:func:`update_cache`, :func:`build_cache`, :func:`load_cached`).

Cache layout: ``CACHE/<case_id>/image.npy`` ``(4, x, y, z)`` (memory-mappable), ``label.npy`` (uint8, internal
labels; absent for unlabelled cases), ``label_native.npy`` (the cropped labels on the input grid, for cases
resampled to a coarser ``spacing``) and ``meta.json`` (written last: a case without it is not in the cache). A
cached case is reused while its meta records the same format version, normalisation, margin, dtype and spacing
and its source files have the same paths, sizes and modification times; otherwise it is rebuilt. Each case is
:func:`agsevnet.preprocess.case.preprocess_case` of the loaded case.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from agsevnet import MODALITIES
from agsevnet.data.case import CaseSpec
from agsevnet.errors import AgsevnetError, ConfigError, DataError
from agsevnet.fsutil import atomic_path, write_json_atomic
from agsevnet.parallel import worker_count
from agsevnet.preprocess.case import (
    FORMAT,
    FORMAT_VERSION,
    Preprocessed,
    _check_settings,
    _check_spacing,
    preprocess_case,
)
from agsevnet.preprocess.transforms import DEFAULT_MARGIN

IMAGE_FILE = "image.npy"
LABEL_FILE = "label.npy"
NATIVE_LABEL_FILE = "label_native.npy"
META_FILE = "meta.json"




@dataclass
class CaseFailure:
    """A case that could not be cached: the file concerned and what is wrong."""

    case_id: str
    path: str | None  # None when ``reason`` already names the file (problems found by discovery)
    reason: str

    def __str__(self) -> str:
        return self.reason if self.path is None else f"{self.path}: {self.reason}"


@dataclass
class CacheReport:
    """What one :func:`update_cache` run did. ``case_ids``: every case now valid in the cache, input order."""

    cache_dir: Path
    case_ids: list[str] = field(default_factory=list)
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[CaseFailure] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes on disk per cached case
    seconds: float = 0.0

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())


def _sources(spec: CaseSpec) -> list[dict[str, Any]]:
    """The files a case is read from, with size and modification time (what cache validity is checked on)."""
    entries: list[tuple[str, Path, int | None]] = [
        (name, spec.images[name].path, spec.images[name].channel) for name in MODALITIES if name in spec.images
    ]
    if spec.label is not None:
        entries.append(("label", spec.label, None))
    out = []
    for role, path, channel in entries:
        path = Path(path).resolve()
        st = path.stat()
        out.append({"role": role, "path": str(path), "channel": channel, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _settings(normalization: str, margin: int, dtype: str, spacing: Sequence[float] | None = None) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "normalization": normalization, "margin": margin, "dtype": dtype,
            "spacing": None if spacing is None else [float(v) for v in spacing]}


def _read_meta(case_dir: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((case_dir / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _os_error(exc: OSError, path: Path) -> DataError:
    """A :class:`DataError` carrying the operating system's own reason (not a guess about the cache)."""
    import errno
    import resource

    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        reason += f" (this process may open {soft}: raise it with `ulimit -n`, or use fewer loader processes)"
    return DataError(f"cannot open the cached array: {reason}", Path(exc.filename or path))


def _open_arrays(case_dir: Path, meta: dict[str, Any], mmap: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The image and label arrays of a cached case (read-only memory maps with ``mmap``), checked against the
    shapes and dtypes ``meta`` records.

    Raises :class:`DataError` naming the file: a missing, incomplete or mismatching array says so and asks
    for a rebuild; any other operating-system error (too many open files, permissions, I/O) is reported as
    what it is, since rebuilding the cache would not help.
    """
    mode = "r" if mmap else None
    arrays: list[np.ndarray | None] = []
    try:
        expected = [(IMAGE_FILE, list(meta["image_shape"]), np.dtype(meta["dtype"]))]
        if meta["has_label"]:
            expected.append((LABEL_FILE, list(meta["image_shape"][1:]), np.dtype(np.uint8)))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"meta.json lacks the array shapes or dtype ({exc}); rebuild the cache", case_dir / META_FILE) from exc
    for name, shape, dtype in expected:
        path = case_dir / name
        try:
            arr = np.load(path, mmap_mode=mode)
        except FileNotFoundError as exc:
            raise DataError("cached array missing; rebuild the cache (`agsevnet preprocess`)", path) from exc
        except OSError as exc:
            raise _os_error(exc, path) from exc
        except ValueError as exc:  # truncated file or bad header
            raise DataError(f"cached array incomplete or unreadable ({exc}); rebuild the cache", path) from exc
        if list(arr.shape) != shape or arr.dtype != dtype:
            raise DataError(
                f"cached array of shape {list(arr.shape)} {arr.dtype}, but meta.json records {shape} {dtype}; "
                "rebuild the cache", path)
        arrays.append(arr)
    if not meta["has_label"]:
        if (case_dir / LABEL_FILE).exists():
            raise DataError("labels present but meta.json says the case has none; rebuild the cache",
                            case_dir / LABEL_FILE)
        arrays.append(None)
    return arrays[0], arrays[1]  # type: ignore[return-value]


def _arrays_match(case_dir: Path, meta: dict[str, Any]) -> bool:
    """The npy files exist, are complete and have the shapes and dtypes ``meta`` records."""
    try:
        _open_arrays(case_dir, meta, mmap=True)
    except DataError:
        return False
    return True


def _is_valid(case_dir: Path, settings: dict[str, Any], sources: list[dict[str, Any]]) -> bool:
    meta = _read_meta(case_dir)
    if meta is None:
        return False
    recorded = {
        "format_version": meta.get("format_version"),
        "normalization": (meta.get("normalization") or {}).get("mode"),
        "margin": meta.get("margin"),
        "dtype": meta.get("dtype"),
        "spacing": meta.get("spacing"),
    }
    return recorded == settings and meta.get("sources") == sources and _arrays_match(case_dir, meta)


def _write_cached(pp: Preprocessed, case_dir: Path) -> None:
    """Write ``pp`` into ``case_dir`` so that a half-written case is never taken as valid: the old
    ``meta.json`` is removed first, each array is written to a temporary file and renamed, and the new
    ``meta.json`` comes last."""
    case_dir.mkdir(parents=True, exist_ok=True)
    (case_dir / META_FILE).unlink(missing_ok=True)
    with atomic_path(case_dir / IMAGE_FILE) as tmp:
        np.save(tmp, pp.image)
    if pp.label is not None:
        with atomic_path(case_dir / LABEL_FILE) as tmp:
            np.save(tmp, pp.label)
    else:
        (case_dir / LABEL_FILE).unlink(missing_ok=True)
    if pp.label_native is not None and pp.meta.get("spacing"):
        with atomic_path(case_dir / NATIVE_LABEL_FILE) as tmp:
            np.save(tmp, pp.label_native)
    else:
        (case_dir / NATIVE_LABEL_FILE).unlink(missing_ok=True)
    write_json_atomic(case_dir / META_FILE, pp.meta)


def _cache_one(
    spec: CaseSpec, case_dir: Path, normalization: str, margin: int, dtype: str, sources: list[dict[str, Any]],
    spacing: Sequence[float] | None = None,
) -> tuple[str, str] | None:
    """Load, preprocess and write one case (runs in a worker process). Returns None, or (path, reason)."""
    from agsevnet.data.io import load_case

    try:
        case = load_case(spec)
        pp = preprocess_case(case, normalization=normalization, margin=margin, dtype=dtype, spacing=spacing)
        del case
        pp.meta["sources"] = sources
        _write_cached(pp, case_dir)
    except AgsevnetError as exc:
        return (str(exc.path or spec.folder or spec.case_id), exc.message)
    except MemoryError:
        return (str(spec.folder or spec.case_id), "out of memory while preprocessing (try fewer --workers)")
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop the others; the reason is reported
        return (str(spec.folder or spec.case_id), f"{type(exc).__name__}: {exc}")
    return None


def _case_dir(cache_dir: Path, case_id: str) -> Path:
    if not case_id or case_id.startswith(".") or "/" in case_id or "\\" in case_id:
        raise DataError(f"case id {case_id!r} cannot be used as a cache folder name", cache_dir)
    return cache_dir / case_id


def case_size(cache_dir: str | Path, case_id: str) -> int:
    """Bytes on disk of one cached case (image.npy + label.npy + meta.json)."""
    case_dir = Path(cache_dir) / case_id
    return sum(p.stat().st_size for p in (case_dir / n for n in (IMAGE_FILE, LABEL_FILE, META_FILE)) if p.exists())


def update_cache(
    data: str | Path | Iterable[CaseSpec],
    cache_dir: str | Path,
    *,
    normalization: str = "brain",
    margin: int = DEFAULT_MARGIN,
    dtype: str = "float16",
    spacing: Sequence[float] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> CacheReport:
    """Bring the cache in ``cache_dir`` up to date for a dataset folder (any layout
    :func:`agsevnet.data.layouts.discover` knows) or a list of case specs, and report what was done.

    Valid cached cases are skipped (rebuilt with ``overwrite``); the others are built in parallel worker
    processes (``workers``, default: one per case up to the CPU count) with a progress bar. A case that fails
    is recorded in ``report.failed`` (file and reason) and the others are still cached; nothing is raised for
    it (see :func:`build_cache`). Raises :class:`DataError` when the dataset cannot be found, and
    :class:`ConfigError` for bad settings or a cache folder that holds the dataset's own files.
    """
    _check_settings(normalization, margin, dtype)
    spacing = _check_spacing(spacing)
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    if isinstance(data, (str, Path)):
        from agsevnet.data.layouts import discover

        specs = discover(Path(data))
    else:
        specs = list(data)
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ConfigError("the cache folder is a file", cache_dir)
    report = CacheReport(cache_dir=cache_dir)
    settings = _settings(normalization, margin, dtype, spacing)

    todo: list[tuple[CaseSpec, Path, list[dict[str, Any]]]] = []
    seen: set[str] = set()
    for spec in specs:
        where = str(spec.folder or spec.case_id)
        if spec.case_id in seen:
            report.failed.append(CaseFailure(spec.case_id, where, f"duplicate case id {spec.case_id!r} in the dataset"))
            continue
        seen.add(spec.case_id)
        if spec.problems:
            report.failed.append(CaseFailure(spec.case_id, None, "; ".join(spec.problems)))
            continue
        try:
            case_dir = _case_dir(cache_dir, spec.case_id)
            sources = _sources(spec)
        except DataError as exc:
            report.failed.append(CaseFailure(spec.case_id, where, exc.message))
            continue
        except OSError as exc:
            report.failed.append(CaseFailure(spec.case_id, str(exc.filename or where), exc.strerror or str(exc)))
            continue
        resolved_dir = case_dir.resolve()
        if any(Path(s["path"]).is_relative_to(resolved_dir) for s in sources):
            raise ConfigError(
                f"the cache folder would write into case {spec.case_id}'s own folder; choose another cache folder",
                cache_dir,
            )
        if not overwrite and _is_valid(case_dir, settings, sources):
            report.skipped.append(spec.case_id)
        else:
            todo.append((spec, case_dir, sources))

    failures: dict[str, tuple[str, str] | None] = {}
    if todo:
        cache_dir.mkdir(parents=True, exist_ok=True)
        n_workers = min(workers or worker_count(len(todo)), len(todo))  # see agsevnet.parallel
        failures = _run(todo, normalization, margin, dtype, n_workers, progress, len(specs), spacing)
    for spec, _, _ in todo:
        failure = failures.get(spec.case_id)
        if failure is None:
            report.built.append(spec.case_id)
        else:
            report.failed.append(CaseFailure(spec.case_id, failure[0], failure[1]))
    ok = set(report.built) | set(report.skipped)
    report.case_ids = [cid for cid in dict.fromkeys(s.case_id for s in specs) if cid in ok]
    report.sizes = {cid: case_size(cache_dir, cid) for cid in report.case_ids}
    report.seconds = time.perf_counter() - start
    return report


def _run(
    todo: list[tuple[CaseSpec, Path, list[dict[str, Any]]]],
    normalization: str,
    margin: int,
    dtype: str,
    n_workers: int,
    progress: bool,
    total: int,
    spacing: Sequence[float] | None = None,
) -> dict[str, tuple[str, str] | None]:
    """Build the cases of ``todo``, in-process for one worker, else in a process pool; progress over all
    ``total`` cases (those not in ``todo`` are already valid or already failed)."""
    from agsevnet.progress import progress_bar

    bar = progress_bar(total=total, initial=total - len(todo), desc="preprocess", unit="case", disable=not progress,
                       file=sys.stderr)
    results: dict[str, tuple[str, str] | None] = {}
    try:
        if n_workers == 1:
            for spec, case_dir, sources in todo:
                results[spec.case_id] = _cache_one(spec, case_dir, normalization, margin, dtype, sources, spacing)
                bar.update(1)
            return results
        # "spawn", not "fork": workers start clean even when the caller already runs threads (torch, tqdm),
        # where fork can deadlock; the price is Python's usual `if __name__ == "__main__":` guard in scripts.
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=get_context("spawn")) as pool:
            pending = {
                pool.submit(_cache_one, spec, case_dir, normalization, margin, dtype, sources, spacing): spec
                for spec, case_dir, sources in todo
            }
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    spec = pending.pop(future)
                    try:
                        results[spec.case_id] = future.result()
                    except BrokenProcessPool:
                        results[spec.case_id] = (
                            str(spec.folder or spec.case_id),
                            "a worker process died: out of memory (try fewer workers), or a Python script "
                            "calling this without `if __name__ == '__main__':` (workers are started with 'spawn')",
                        )
                    bar.update(1)
    finally:
        bar.close()
    return results


def build_cache(
    data: str | Path | Iterable[CaseSpec],
    cache_dir: str | Path,
    *,
    normalization: str = "brain",
    margin: int = DEFAULT_MARGIN,
    dtype: str = "float16",
    spacing: Sequence[float] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[str]:
    """:func:`update_cache`, returning the ids of the cases valid in the cache (input order); raises
    :class:`DataError` listing every case that failed (after caching all the others)."""
    report = update_cache(
        data,
        cache_dir,
        normalization=normalization,
        margin=margin,
        dtype=dtype,
        spacing=spacing,
        workers=workers,
        overwrite=overwrite,
        progress=progress,
    )
    if report.failed:
        lines = "; ".join(str(f) for f in report.failed)
        raise DataError(f"{len(report.failed)} case(s) could not be preprocessed: {lines}", cache_dir)
    return report.case_ids


def list_cached(cache_dir: str | Path) -> list[str]:
    """Ids of the complete cases in ``cache_dir`` (those with a ``meta.json`` of this format), sorted."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    return sorted(
        d.name for d in cache_dir.iterdir() if d.is_dir() and not d.name.startswith(".") and _read_meta(d) is not None
    )


def load_cached(cache_dir: str | Path, case_id: str, mmap: bool = True) -> Preprocessed:
    """Load one cached case; with ``mmap`` the image and labels are read-only memory maps (nothing is read
    until used; each map holds one file descriptor until it is dropped). Raises :class:`DataError` naming the
    file when the case is missing or incomplete, or with the operating system's reason when a file cannot be
    opened (e.g. too many open files)."""
    case_dir = _case_dir(Path(cache_dir), case_id)
    meta_path = case_dir / META_FILE
    if not meta_path.is_file():
        raise DataError(f"case {case_id} is not in the cache (run `agsevnet preprocess` first)", meta_path)
    try:
        text = meta_path.read_text()
    except OSError as exc:
        raise _os_error(exc, meta_path) from exc
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    if not (isinstance(meta, dict) and meta.get("format") == FORMAT):
        raise DataError("not a readable agsevnet preprocessing record", meta_path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"cache format version {meta.get('format_version')} (this agsevnet reads {FORMAT_VERSION}); "
            "rebuild it with `agsevnet preprocess`",
            meta_path,
        )
    image, label = _open_arrays(case_dir, meta, mmap)
    return Preprocessed(case_id, image, label, meta)


def background_values(meta: dict[str, Any]) -> list[float]:
    """The value the background (voxels 0 in every input modality) has in a preprocessed image, per channel,
    from its ``meta``: 0 under ``brain`` normalisation; ``-mean / std`` under ``image`` normalisation (the
    paper's), computed as :func:`normalize` does and rounded to the cache dtype, so it equals the stored
    background exactly. What padding (training patches, the whole-image pass) should fill with."""
    stats = meta["normalization"]
    if stats.get("mode", "brain") != "image":
        return [0.0] * len(stats["mean"])
    dtype = np.dtype(meta.get("dtype", "float32"))
    out = []
    for mean, std in zip(stats["mean"], stats["std"], strict=True):
        value = (np.float32(0) - np.float32(mean)) / np.float32(std if std > 0 else 1.0)
        out.append(float(np.asarray(value, dtype=np.float32).astype(dtype)))
    return out


def load_native_label(cache_dir: str | Path, case_id: str, mmap: bool = True) -> np.ndarray | None:
    """The cropped labels of a cached case on its input grid (what validation scores against): the
    ``label_native.npy`` of a resampled case, else its ``label.npy``; None for an unlabelled case."""
    case_dir = _case_dir(Path(cache_dir), case_id)
    meta = _read_meta(case_dir)
    if meta is None or not meta.get("has_label"):
        return None
    name = NATIVE_LABEL_FILE if meta.get("spacing") else LABEL_FILE
    try:
        return np.load(case_dir / name, mmap_mode="r" if mmap else None)
    except OSError as exc:
        raise DataError(f"cannot read the cached labels: {exc.strerror or exc}", case_dir / name) from None
