"""Patients, not files: cases that hold the same scan count once.

BraTS re-releases patients under new ids (the BraTS 2021 and 2023 copies of one patient hold byte-identical
images). Counting such a patient twice weights it double in training and, in cross-validation, can put one copy
in training and the other among the held-out cases, so a fold would be scored on a patient it trained on.
:func:`unique_patients` keeps one id per scan; the trainer calls it with the preprocessing cache's content hash
(``meta["image_sha1"]`` of :mod:`agsevnet.preprocess`), so this module needs no cache of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def unique_patients(ids: Sequence[str], digest: Callable[[str], str | None]) -> tuple[list[str], dict[str, list[str]]]:
    """``(ids with one case per scan, {kept id: [dropped copies]})``.

    ``digest(case_id)`` identifies a case's images (None: unknown, the case counts as its own patient). Of the
    cases sharing a digest, the first id in sorted order is kept (the choice does not depend on the order of
    ``ids``); the kept ids come back in the order of ``ids``.
    """
    first: dict[str, str] = {}
    copies: dict[str, list[str]] = {}
    kept: list[str] = []
    for case_id in sorted(ids):
        key = digest(case_id) or f"id:{case_id}"
        if key in first:
            copies.setdefault(first[key], []).append(case_id)
        else:
            first[key] = case_id
            kept.append(case_id)
    order = {c: i for i, c in enumerate(ids)}
    return sorted(kept, key=order.__getitem__), copies
