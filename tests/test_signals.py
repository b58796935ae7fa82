"""Per-case failure signals from a prediction alone (agsevnet.infer.signals.case_signals): where the predicted
tumour lies (inferior fraction, brain edge), its components, and an ensemble's member agreement."""

from __future__ import annotations

import numpy as np
import pytest

from agsevnet.infer.signals import case_signals

SHAPE = (40, 40, 40)
CENTRE = np.array([19.5, 19.5, 19.5])
UP = np.diag([1.0, 1.0, 1.0, 1.0])  # voxel z grows towards superior
DOWN = np.diag([-1.0, -1.0, -1.0, 1.0])  # LPI-like: voxel z grows towards inferior
GRID = np.indices(SHAPE, dtype=float)


def _ball(centre, radius) -> np.ndarray:
    return sum((g - c) ** 2 for g, c in zip(GRID, centre)) <= radius**2


BRAIN = _ball(CENTRE, 18)  # z from 2 to 37


def _labels(*balls, label=2) -> np.ndarray:
    out = np.zeros(SHAPE, np.uint8)
    for centre, radius in balls:
        out[_ball(centre, radius) & BRAIN] = label
    return out


def test_inferior_fraction_follows_the_affine():
    low = _labels(((19.5, 19.5, 7), 3))  # in the brain's lowest quarter of voxel z
    high = _labels(((19.5, 19.5, 32), 3))  # in its highest quarter
    assert case_signals(low, None, BRAIN, UP, (1, 1, 1))["inferior_fraction"] > 0.9
    assert case_signals(high, None, BRAIN, UP, (1, 1, 1))["inferior_fraction"] == 0
    # index growing downwards: the high-index end is the bottom of the brain
    assert case_signals(high, None, BRAIN, DOWN, (1, 1, 1))["inferior_fraction"] > 0.9
    assert case_signals(low, None, BRAIN, DOWN, (1, 1, 1))["inferior_fraction"] == 0
    centre = case_signals(_labels((CENTRE, 3)), None, BRAIN, UP, (1, 1, 1))
    assert centre["inferior_fraction"] == 0 and centre["components"] == 0  # 123 voxels of 1 mm: under 1 ml


def test_two_distant_equal_components():
    spacing = (2.0, 2.0, 2.0)  # 8 mm^3 voxels: a radius-4 ball (257 voxels) is 2 ml
    labels = _labels(((9.5, 19.5, 19.5), 4), ((29.5, 19.5, 19.5), 4))
    labels[19, 35, 19] = 2  # a one-voxel speck: a component, but under the 1 ml that counts
    s = case_signals(labels, None, BRAIN, UP, spacing)
    assert s["components"] == 2
    assert s["second_ratio"] == pytest.approx(1.0)
    assert s["separation_mm"] == pytest.approx(20 * 2.0, abs=0.5)  # 20 voxels of 2 mm apart
    assert s["tumour_ml"] == pytest.approx(np.count_nonzero(labels) * 8 / 1000)
    one = case_signals(_labels(((9.5, 19.5, 19.5), 4)), None, BRAIN, UP, spacing)
    assert one["components"] == 1 and one["second_ratio"] == 0 and one["separation_mm"] == 0
    empty = case_signals(np.zeros(SHAPE, np.uint8), None, BRAIN, UP, spacing)
    assert empty["components"] == 0 and empty["tumour_ml"] == 0 and empty["edge_fraction"] == 0


def test_edge_fraction_at_the_brain_surface_and_in_its_middle():
    at_surface = _labels(((2.5, 19.5, 19.5), 4))  # centred on the brain's surface (x = 1.5)
    middle = _labels((CENTRE, 4))
    assert case_signals(at_surface, None, BRAIN, UP, (1, 1, 1))["edge_fraction"] > 0.5
    assert case_signals(middle, None, BRAIN, UP, (1, 1, 1))["edge_fraction"] == 0


def _probabilities(labels: np.ndarray) -> np.ndarray:
    """Class probabilities (4, X, Y, Z) whose argmax is ``labels``."""
    p = np.full((4, *SHAPE), 0.1, np.float32)
    np.put_along_axis(p, labels[None].astype(np.int64), 0.7, axis=0)
    return p


def test_member_dice_and_confidence():
    labels = _labels((CENTRE, 5))
    agree = [_probabilities(labels), _probabilities(labels)]
    s = case_signals(labels, agree[0], BRAIN, UP, (1, 1, 1), members=agree)
    assert s["member_dice"] == 1.0 and s["confidence"] == pytest.approx(0.7)
    shifted = _labels((CENTRE + [4, 0, 0], 5))
    members = [_probabilities(labels), _probabilities(shifted)]
    disagree = case_signals(labels, None, BRAIN, UP, (1, 1, 1), members=members)
    expected = 2 * np.count_nonzero(labels & shifted) / (np.count_nonzero(labels) + np.count_nonzero(shifted))
    assert disagree["member_dice"] == pytest.approx(expected) and disagree["member_dice"] < 0.8
    assert "member_dice" not in case_signals(labels, None, BRAIN, UP, (1, 1, 1))
    assert "member_dice" not in case_signals(labels, None, BRAIN, UP, (1, 1, 1), members=agree[:1])
