"""Which file is which sequence: words in the file (or DICOM series) names, case-insensitive.

A name is cut into words at every character that is not a letter or a digit; the first rule that one of its
words matches decides (FLAIR before T1ce before T2 before T1, so "T2_FLAIR" is FLAIR and "T1_POST_GAD" is T1ce).
Label files (seg, label, mask) are not sequences.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from agsevnet import MODALITIES
from agsevnet.errors import DataError

RULES: tuple[tuple[str, frozenset[str]], ...] = (
    ("flair", frozenset({"flair", "fla", "t2f", "t2flair"})),
    ("t1ce", frozenset({"t1c", "t1ce", "t1gd", "t1post", "gad", "gd", "post", "postcontrast", "contrast"})),
    ("t2", frozenset({"t2", "t2w"})),
    ("t1", frozenset({"t1", "t1n", "t1w"})),
)
NOT_SEQUENCES = frozenset({"seg", "segmentation", "label", "labels", "mask", "prob", "uncertainty"})
NIFTI_SUFFIXES = (".nii.gz", ".nii")

FLAGS_HINT = "settle it with --flair FILE --t1 FILE --t1ce FILE --t2 FILE"


def words(name: str) -> list[str]:
    """The lower-case words of a name (without a NIfTI suffix)."""
    low = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if low.endswith(suffix):
            low = low[: -len(suffix)]
            break
    return [w for w in re.split(r"[^a-z0-9]+", low) if w]


def sequence_of(name: str) -> str | None:
    """The sequence a name says (``flair``, ``t1``, ``t1ce``, ``t2``) or None (no rule matches, or a label)."""
    ws = set(words(name))
    if ws & NOT_SEQUENCES:
        return None
    for modality, keys in RULES:
        if ws & keys:
            return modality
    return None


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES) and not path.name.startswith(".")


def assign(names: Sequence[str], given: Mapping[str, object] | None = None, where: object = None) -> dict[str, str]:
    """``{modality: name}`` for the four sequences from ``names``; ``given`` (modality -> anything) are settled
    already and are not looked for. Raises :class:`DataError` (one line: the files, what each was taken for,
    and the flags) when a sequence is missing or claimed by two names."""
    given = {m: v for m, v in (given or {}).items() if v is not None}
    found: dict[str, list[str]] = {m: [] for m in MODALITIES}
    for name in names:
        modality = sequence_of(name)
        if modality is not None and modality not in given:
            found[modality].append(name)
    missing = [m for m in MODALITIES if m not in given and not found[m]]
    twice = {m: v for m, v in found.items() if len(v) > 1}
    if missing or twice:
        what = []
        if twice:
            what.append("; ".join(f"{m} could be any of {', '.join(v)}" for m, v in twice.items()))
        if missing:
            what.append(f"no file named as {', '.join(missing)}")
        listing = ", ".join(f"{n} ({sequence_of(n) or '?'})" for n in names) or "no image files"
        raise DataError(f"cannot tell the four sequences apart: {'; '.join(what)} (files: {listing}); {FLAGS_HINT}",
                        where)
    return {m: found[m][0] for m in MODALITIES if m not in given}
