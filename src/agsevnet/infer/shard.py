"""Sharded batch prediction: split an archive over machines (or GPUs) with no coordinator.

``agsevnet predict DATA --shard I/N`` (1-based, ``1/4`` ... ``4/4``) segments only the cases whose shard is I:
a case's shard is ``sha256(case id) mod N + 1``, a function of its id alone, not of its position in a listing.
So every job of an array computes the same split from the same folder without talking to the others, a case
never moves between shards when the folder is listed in another order or on another machine, and when the folder
gains cases only the new ones are assigned (each to the shard its id hashes to); the cases already there keep
theirs. The shards partition the cases exactly (``tests/test_shard.py``). With thousands of cases the shards'
sizes are within a few percent of ``len / N`` (a hash is not a round-robin; with very few cases a shard may be
empty, which is not an error).

Each run writes ``OUT/predict-summary-shard-I-of-N.json`` (``OUT/predict-summary.json`` without ``--shard``),
atomically, when it ends: every case of the shard with its status (written, skipped, failed), message, seconds
confidence figure and flags (:func:`agsevnet.infer.signals.flag_reasons`). A shard rerun resumes (cases whose
outputs exist are skipped, their confidence and flags read back from their sidecars) and rewrites its summary.
``agsevnet predict --summary OUT`` merges the shards' summaries (:func:`merge_summaries`): counts, the failures,
the shards whose summary is missing (a job that never ran or died before its end), the cases to check with their
reasons (:func:`cases_to_check`); its exit status is non-zero when any case failed or a shard is missing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agsevnet.errors import ConfigError, DataError

SUMMARY_FORMAT = "agsevnet-predict-summary"
SUMMARY_GLOB = "predict-summary*.json"
_SHARD_NAME = re.compile(r"^predict-summary-shard-(\d+)-of-(\d+)\.json$")

T = TypeVar("T")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``1 <= I <= N``; ConfigError saying what is wrong otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ConfigError(f"--shard must be I/N with whole numbers, 1-based (e.g. 1/4), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ConfigError(f"--shard {text}: the number of shards N must be at least 1")
    if not 1 <= index <= count:
        raise ConfigError(f"--shard {text}: I must be between 1 and N={count} (shards are 1-based)")
    return index, count


def shard_of(case_id: str, count: int) -> int:
    """The 1-based shard of a case among ``count``: ``sha256(case id) mod count + 1`` (the first 8 bytes of the
    digest as an integer), stable across runs, machines and Python versions (unlike ``hash()``)."""
    if count < 1:
        raise ValueError(f"the number of shards must be >= 1, got {count}")
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def select_shard(items: Iterable[T], index: int, count: int, key: Any = lambda item: item.case_id) -> list[T]:
    """The items of shard ``index`` of ``count`` (their order kept); ``key`` gives an item's case id."""
    return [item for item in items if shard_of(key(item), count) == index]


def summary_name(shard: tuple[int, int] | None) -> str:
    """``predict-summary-shard-I-of-N.json``, or ``predict-summary.json`` for an unsharded run."""
    return "predict-summary.json" if shard is None else f"predict-summary-shard-{shard[0]}-of-{shard[1]}.json"


@dataclass
class MergedSummary:
    """The shards' summaries of one output folder, merged (see :func:`merge_summaries`)."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)
    shards: int | None = None  # N, where the summaries are those of shards
    missing_shards: list[int] = field(default_factory=list)
    confidence_threshold: float | None = None

    def by_status(self, status: str) -> list[dict[str, Any]]:
        return [c for c in self.cases if c.get("status") == status]

    def low_confidence(self) -> list[dict[str, Any]]:
        """Written or skipped cases whose confidence is below the threshold, least confident first."""
        if self.confidence_threshold is None:
            return []
        low = [c for c in self.cases if c.get("status") in ("written", "skipped")
               and c.get("confidence") is not None and c["confidence"] < self.confidence_threshold]
        return sorted(low, key=lambda c: c["confidence"])

    def to_check(self) -> list[tuple[str, float | None, list[str]]]:
        """``(case id, confidence, reasons)`` of the written or skipped cases to check (:func:`cases_to_check`;
        a summary written before flags existed contributes its low-confidence cases only)."""
        return cases_to_check([(c["case_id"], c.get("confidence"), c.get("flags") or []) for c in self.cases
                               if c.get("status") in ("written", "skipped")], self.confidence_threshold)

    @property
    def ok(self) -> bool:
        return not self.by_status("failed") and not self.missing_shards

    def format(self) -> str:
        written, skipped, failed = (self.by_status(s) for s in ("written", "skipped", "failed"))
        what = f"{len(self.files)} summary file(s)" + (f" of {self.shards} shard(s)" if self.shards else "")
        lines = [f"{self.out_dir}: {what}; {len(self.cases)} case(s): {len(written)} written, "
                 f"{len(skipped)} skipped, {len(failed)} failed"]
        if self.missing_shards:
            shown = ", ".join(f"{i}/{self.shards}" for i in self.missing_shards)
            lines.append(f"  missing shard(s): {shown} (no summary: never run, still running, or stopped early; "
                         "rerun them with --shard)")
        lines += [f"  failed: {c['case_id']}: {c.get('message', '')}" for c in failed]
        lines += check_these(self.to_check(), self.confidence_threshold)
        return "\n".join(lines)


CHECK_LINES = 20
"""At most this many cases are printed under "check these" (all of them are in the JSON summary)."""


def check_reasons(confidence: float | None, flags: Sequence[str], threshold: float | None) -> list[str]:
    """The reasons to check one case: its confidence figure when below ``threshold``, then its ``flags``."""
    low = threshold is not None and confidence is not None and confidence < threshold
    return ([f"low confidence {confidence:.3f}"] if low else []) + [str(f) for f in flags]


def cases_to_check(cases: Iterable[tuple[str, float | None, Sequence[str]]],
                   threshold: float | None) -> list[tuple[str, float | None, list[str]]]:
    """``(case id, confidence, reasons)`` for each of ``cases`` ``(case id, confidence, flags)`` with any reason
    (:func:`check_reasons`), least confident first (cases without a figure last). The one rule behind a run's
    summary, its JSON ``check_these`` / ``check_reasons`` and the merged summaries."""
    rows = [(case_id, confidence, check_reasons(confidence, flags, threshold)) for case_id, confidence, flags in cases]
    return sorted([row for row in rows if row[2]], key=lambda row: (row[1] is None, row[1] or 0.0))


def check_these(rows: Sequence[tuple[str, float | None, Sequence[str]]], threshold: float | None,
                limit: int = CHECK_LINES) -> list[str]:
    """The "check these" lines of a summary, one per case ``case: reason; reason``, from :func:`cases_to_check`;
    at most ``limit`` cases, then how many more the JSON summary lists."""
    if not rows:
        return []
    why = (f"confidence < {threshold:g} or a warning sign" if threshold is not None else "a warning sign")
    lines = [f"  check these ({len(rows)} case(s): {why}):",
             *(f"    {case_id}: {'; '.join(reasons)}" for case_id, _, reasons in rows[:limit])]
    if len(rows) > limit:
        lines.append(f"    ... and {len(rows) - limit} more (check_reasons in the predict-summary JSON)")
    return lines


def read_summary(path: Path) -> dict[str, Any]:
    """One summary file written by ``agsevnet predict``; DataError naming it if it is not one."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the prediction summary: {exc}", path) from None
    if not isinstance(record, dict) or record.get("format") != SUMMARY_FORMAT or not isinstance(
            record.get("cases"), list):
        raise DataError(f"not a prediction summary (expected format {SUMMARY_FORMAT!r})", path)
    return record


def merge_summaries(out_dir: str | Path, threshold: float | None = None) -> MergedSummary:
    """Merge the ``predict-summary*.json`` files of ``out_dir``.

    The shards must agree on N (a folder holding ``-of-4`` and ``-of-8`` summaries was split twice: an error
    naming the folder); a shard in 1..N with no summary is listed as missing. A case found in several summaries
    (the folder was also run unsharded, or split anew) keeps its most decisive record: written over skipped over
    failed, so a case that failed once and was written by a later run counts as written. ``threshold``: the
    confidence below which a case is listed as "check these" (default: the one the runs used); a case with flags
    is listed whatever its confidence.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DataError("no such output folder", out_dir)
    files = sorted(out_dir.glob(SUMMARY_GLOB))
    if not files:
        raise DataError("no predict-summary*.json here (written by 'agsevnet predict' when a run ends)", out_dir)
    merged = MergedSummary(out_dir=out_dir, files=files)
    counts: set[int] = set()
    seen: set[int] = set()
    rank = {"written": 0, "skipped": 1, "failed": 2}
    best: dict[str, dict[str, Any]] = {}
    thresholds: list[float] = []
    for path in files:
        record = read_summary(path)
        name = _SHARD_NAME.match(path.name)
        if name:
            index, count = int(name.group(1)), int(name.group(2))
            counts.add(count)
            seen.add(index)
        if record.get("confidence_threshold") is not None:
            thresholds.append(float(record["confidence_threshold"]))
        for case in record["cases"]:
            old = best.get(case["case_id"])
            if old is None or rank.get(case.get("status"), 3) < rank.get(old.get("status"), 3):
                best[case["case_id"]] = case
    if len(counts) > 1:
        raise DataError(f"summaries of different splits here (N = {', '.join(map(str, sorted(counts)))}); "
                        "move one split's summaries away", out_dir)
    if counts:
        merged.shards = counts.pop()
        merged.missing_shards = [i for i in range(1, merged.shards + 1) if i not in seen]
    merged.cases = sorted(best.values(), key=lambda c: c["case_id"])
    merged.confidence_threshold = threshold if threshold is not None else (max(thresholds) if thresholds else None)
    return merged


def shard_counts(case_ids: Sequence[str], count: int) -> list[int]:
    """How many of ``case_ids`` fall in each of the ``count`` shards (for a look before launching an array)."""
    sizes = [0] * count
    for case_id in case_ids:
        sizes[shard_of(case_id, count) - 1] += 1
    return sizes
