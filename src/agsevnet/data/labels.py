"""Label conventions and the one internal label set.

Internal labels (what every model, loss and metric in agsevnet sees):

    0 background, 1 necrotic / non-enhancing tumour core (NCR/NET), 2 peritumoural edema (ED),
    3 enhancing tumour (ET)

Source conventions (remembered per case, so predictions can be written back the way the user has them):

    brats2020  BraTS 2018-2021 files: 1 NCR/NET, 2 ED, 4 ET
    brats2023  BraTS 2023+ files:     1 NCR,     2 ED, 3 ET
    msd        Medical Segmentation Decathlon Task01 (and nnU-Net's conversions of it):
               1 edema, 2 non-enhancing tumour, 3 enhancing tumour

Regions (BraTS): WT = NCR+ED+ET, TC = NCR+ET, ET = ET.
"""

from __future__ import annotations

import numpy as np

INTERNAL_LABELS: dict[int, str] = {0: "background", 1: "necrotic/non-enhancing core", 2: "edema", 3: "enhancing"}

# source value -> internal value
_TO_INTERNAL: dict[str, dict[int, int]] = {
    "brats2020": {0: 0, 1: 1, 2: 2, 4: 3},
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 3},
    "msd": {0: 0, 1: 2, 2: 1, 3: 3},
}
CONVENTIONS: tuple[str, ...] = tuple(_TO_INTERNAL)

# Internal label sets that make up each region.
REGION_LABELS: dict[str, tuple[int, ...]] = {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}


def allowed_values(convention: str) -> tuple[int, ...]:
    """Label values a file in ``convention`` may contain."""
    return tuple(sorted(_mapping(convention)))


def _mapping(convention: str) -> dict[int, int]:
    try:
        return _TO_INTERNAL[convention]
    except KeyError:
        raise ValueError(f"unknown label convention {convention!r}; expected one of {', '.join(CONVENTIONS)}") from None


def _lut(mapping: dict[int, int], size: int) -> np.ndarray:
    lut = np.full(size, 255, dtype=np.uint8)  # 255 marks a value outside the convention
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def present_values(labels: np.ndarray) -> np.ndarray:
    """Sorted distinct values of ``labels`` (np.bincount for small non-negative integers: several times faster
    than np.unique on a 240x240x155 volume)."""
    arr = np.asarray(labels)
    if arr.dtype.kind in "ui" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi < 65536:
            return np.flatnonzero(np.bincount(arr.ravel(), minlength=hi + 1)).astype(arr.dtype)
    return np.unique(arr)


def unexpected_values(labels: np.ndarray, convention: str) -> list[float]:
    """Values in ``labels`` that ``convention`` does not define (non-integers included), sorted."""
    values = present_values(labels)
    allowed = set(allowed_values(convention))
    return [v.item() for v in values if not (float(v).is_integer() and int(v) in allowed)]


def to_internal(labels: np.ndarray, convention: str) -> np.ndarray:
    """Map a label array in ``convention`` to internal labels (uint8).

    Raises ValueError naming the unexpected values if the array holds values the convention does not define.
    """
    bad = unexpected_values(labels, convention)
    if bad:
        raise ValueError(f"unexpected label values {bad} for convention {convention} (allowed {list(allowed_values(convention))})")
    mapping = _mapping(convention)
    return _lut(mapping, max(mapping) + 1)[np.asarray(labels).astype(np.int64, copy=False)]


def from_internal(labels: np.ndarray, convention: str) -> np.ndarray:
    """Map internal labels (0-3) back to ``convention`` (uint8)."""
    inverse = {dst: src for src, dst in _mapping(convention).items()}
    arr = np.asarray(labels)
    if arr.size and (arr.min() < 0 or arr.max() > 3):
        raise ValueError(f"internal labels must be in 0..3, got range {arr.min()}..{arr.max()}")
    return _lut(inverse, 4)[arr.astype(np.int64, copy=False)]


def region_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of the BraTS regions (ET, WT, TC) from an internal label array."""
    return {name: np.isin(labels, values) for name, values in REGION_LABELS.items()}


_DESCRIPTIONS: dict[str, str] = {
    "brats2020": "1 NCR/NET, 2 edema, 4 enhancing",
    "brats2023": "1 NCR, 2 edema, 3 enhancing",
    "msd": "1 edema, 2 non-enhancing, 3 enhancing",
}


def describe(convention: str) -> str:
    """``convention`` with what its values mean, e.g. ``"brats2020 (1 NCR/NET, 2 edema, 4 enhancing)"``."""
    _mapping(convention)  # unknown conventions raise
    return f"{convention} ({_DESCRIPTIONS[convention]})"
