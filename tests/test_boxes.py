"""The one bounding-box helper (agsevnet.boxes) against an independent computation (scipy's find_objects), and
the empty-mask meaning each caller keeps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from agsevnet.boxes import bounding_box, bounding_slices
from agsevnet.preprocess import crop_box
from agsevnet.report.viewer import _content_box


def _reference(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return None
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(found[0], mask.shape))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("margin", [0, 1, 3])
def test_bounding_slices_match_find_objects(seed, margin):
    rng = np.random.default_rng(seed)
    mask = np.zeros((11, 9, 7), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        mask[tuple(rng.integers(0, n) for n in mask.shape)] = True
    assert bounding_slices(mask, margin) == _reference(mask, margin)
    box = bounding_box(mask, margin)
    assert box == tuple((s.start, s.stop) for s in _reference(mask, margin))
    assert all(isinstance(v, int) for pair in box for v in pair)


def test_non_boolean_masks_clipping_and_empty():
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[0, 2, 5] = 4
    assert bounding_box(labels, 2) == ((0, 3), (0, 5), (3, 6))  # clipped at both ends of the array
    assert bounding_box(np.zeros((4, 4)), 1) is None and bounding_slices(np.zeros((4, 4, 4))) is None
    with pytest.raises(ValueError, match="margin"):
        bounding_box(labels, -1)


def test_callers_keep_their_meaning_of_empty():
    empty = np.zeros((5, 6, 7), dtype=bool)
    assert crop_box(empty, 2) == ((0, 5), (0, 6), (0, 7))  # preprocessing: nothing cropped
    assert _content_box([empty], empty.shape) == (slice(0, 5), slice(0, 6), slice(0, 7))  # report: whole view
    one = empty.copy()
    one[2, 3, 4] = True
    assert _content_box([one], one.shape) == bounding_slices(one, 2)
