"""Tumour-component filtering (agsevnet.infer.postprocess.keep_main_components) under the component rules:
``size`` ranks components by voxels, ``mass`` by summed tumour probability, ``core`` by summed core probability."""

from __future__ import annotations

import numpy as np
import pytest

from agsevnet.errors import ConfigError
from agsevnet.infer.postprocess import COMPONENT_RULES, component_weights, keep_main_components

SHAPE = (30, 30, 30)


def _edema_region_and_small_tumour():
    """A large edema-only component (1000 voxels, p(edema) 0.86) and a smaller tumour far from it (125 voxels,
    necrosis and enhancing, p(core) 0.9): by size the false region wins, by core probability the tumour."""
    labels = np.zeros(SHAPE, np.uint8)
    prob = np.zeros((4, *SHAPE), np.float32)
    prob[0] = 0.97
    prob[1:] = 0.01
    big = (slice(1, 11), slice(1, 11), slice(1, 11))
    labels[big] = 2
    prob[(slice(None), *big)] = np.array([0.10, 0.02, 0.86, 0.02])[:, None, None, None]
    small = (slice(20, 25), slice(20, 25), slice(20, 25))
    labels[small] = 2
    labels[21:24, 21:24, 21:24] = 3
    labels[22, 22, 22] = 1
    prob[(slice(None), *small)] = np.array([0.05, 0.45, 0.05, 0.45])[:, None, None, None]
    return labels, prob, big, small


def test_core_rule_keeps_the_tumour_that_size_would_delete():
    labels, prob, big, small = _edema_region_and_small_tumour()
    assert component_weights(prob, "size") is None
    by_size = keep_main_components(labels, 0.5)
    assert (by_size[big] == 2).all() and not by_size[small].any()  # the larger, edema-only region wins
    assert np.array_equal(keep_main_components(labels, 0.5, component_weights(prob, "mass")), by_size)

    by_core = keep_main_components(labels, 0.5, component_weights(prob, "core"))
    assert not by_core[big].any()  # the edema-only region is deleted
    assert np.array_equal(by_core[small], labels[small])  # the tumour is kept, labels untouched
    assert labels[big].all()  # the input is not modified

    np.testing.assert_allclose(component_weights(prob, "core"), prob[1] + prob[3])
    np.testing.assert_allclose(component_weights(prob, "mass"), 1 - prob[0])
    assert keep_main_components(labels, 0.0, component_weights(prob, "core")) is labels  # off
    assert keep_main_components(labels, 0.01, component_weights(prob, "core")) is labels  # both kept: no copy
    with pytest.raises(ValueError, match="component rule"):
        component_weights(prob, "volume")


def test_predictor_rejects_an_unknown_component_rule():
    import torch

    from agsevnet.infer.predictor import Predictor

    net = torch.nn.Conv3d(4, 4, 1)
    with pytest.raises(ConfigError, match="component rule"):
        Predictor(net, component_rule="bad")
    for rule in COMPONENT_RULES:
        assert Predictor(net, component_rule=rule, min_component_fraction=0.5).component_rule == rule


def test_predictor_applies_its_component_rule():
    """``Predictor.labels_on_crop`` ranks components with the predictor's rule (network output stubbed)."""
    from types import SimpleNamespace

    import torch

    from agsevnet.infer.predictor import Predictor

    _, prob, big, small = _edema_region_and_small_tumour()
    pre = SimpleNamespace(image=np.zeros((4, *SHAPE), np.float32), crop_shape=SHAPE,
                          meta={"normalization": {"mode": "brain", "mean": [0.0] * 4, "std": [1.0] * 4}})
    kept = {}
    for rule in ("size", "core"):
        predictor = Predictor(torch.nn.Conv3d(4, 4, 1), min_component_fraction=0.5, component_rule=rule)
        predictor.probabilities = lambda image, pad_value=None, strategy=None, members=None: torch.from_numpy(prob.copy())
        labels, classes = predictor.labels_on_crop(pre)
        np.testing.assert_array_equal(classes, prob)
        kept[rule] = (bool(labels[big].any()), bool(labels[small].any()))
    assert kept == {"size": (True, False), "core": (False, True)}


def test_argmax_classes_equals_argmax_with_ties_to_the_lower_class():
    import torch

    from agsevnet.infer.postprocess import argmax_classes

    rng = np.random.default_rng(0)
    p = rng.random((4, 9, 8, 7)).astype(np.float32)
    p[:, 0, 0, 0] = [0.2, 0.4, 0.4, 0.0]  # a tie: the lower class wins, as argmax
    assert (argmax_classes(p) == np.argmax(p, axis=0)).all() and argmax_classes(p)[0, 0, 0] == 1
    t = torch.from_numpy(p)
    assert torch.equal(argmax_classes(t), torch.argmax(t, dim=0).to(torch.uint8))
