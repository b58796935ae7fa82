"""Region-based outputs (WT, TC, ET as sigmoid channels), their loss and decoding, and the component filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agsevnet.config import load_config
from agsevnet.infer.postprocess import keep_main_components, regions_to_classes, regions_to_labels
from agsevnet.models.losses import RegionDiceLoss, build_loss, loss_output, region_targets


def _labels() -> torch.Tensor:
    lab = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    lab[0, 1:7, 1:7, 1:7] = 2
    lab[0, 2:6, 2:6, 2:6] = 1
    lab[0, 3:5, 3:5, 3:5] = 3
    return lab


def test_region_targets_are_nested():
    r = region_targets(_labels())
    wt, tc, et = r[0]
    assert r.shape == (1, 3, 8, 8, 8)
    assert bool((tc <= wt).all()) and bool((et <= tc).all())
    assert int(wt.sum()) == 216 and int(tc.sum()) == 64 and int(et.sum()) == 8


def test_region_loss_is_lowest_for_the_truth():
    lab = _labels()
    loss = RegionDiceLoss()
    perfect = (region_targets(lab) * 2 - 1) * 20
    wrong = -perfect
    assert float(loss(perfect, lab)) < -0.99
    assert float(loss(wrong, lab)) > float(loss(torch.zeros_like(perfect), lab)) > float(loss(perfect, lab))
    with pytest.raises(ValueError, match="3 outputs"):
        loss(torch.zeros(1, 4, 8, 8, 8), lab)


def test_decoding_regions_gives_brats_labels():
    lab = _labels()[0].numpy()
    probs = region_targets(_labels())[0].numpy() * 0.9 + 0.05
    np.testing.assert_array_equal(regions_to_labels(probs), lab)
    # a TC or ET probability outside WT cannot create core or enhancing voxels outside the tumour
    probs[1:, 0, 0, 0] = 0.99
    assert regions_to_labels(probs)[0, 0, 0] == 0
    classes = regions_to_classes(probs)
    np.testing.assert_allclose(classes.sum(0), 1.0, atol=1e-6)
    assert (classes >= -1e-6).all()


def test_config_switches_the_whole_loss_section():
    cfg = load_config("cpu-small", {"loss": {"name": "region_dice", "bce_weight": 0.5}, "model.out_channels": 3})
    assert cfg["loss"] == {"name": "region_dice", "bce_weight": 0.5}
    assert isinstance(build_loss(cfg["loss"]), RegionDiceLoss)
    assert loss_output(cfg["loss"]) == "regions" and loss_output(load_config("cpu-small")["loss"]) == "classes"


def test_small_far_components_are_removed():
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:20, 5:20, 5:20] = 2
    labels[8:12, 8:12, 8:12] = 3
    labels[30:32, 30:32, 30:32] = 3      # 8 voxels far away: < 10% of the main lesion
    labels[25:33, 5:13, 5:13] = 1        # 512 voxels: > 10% of 3375, kept
    out = keep_main_components(labels, 0.1)
    assert out[30, 30, 30] == 0 and out[26, 6, 6] == 1 and out[10, 10, 10] == 3
    assert int((out != labels).sum()) == 8
    assert keep_main_components(labels, 0.0) is labels
