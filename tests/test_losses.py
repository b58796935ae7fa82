"""The Categorical Dice loss (eq. 12-14), its options and build_loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from agsevnet.errors import ConfigError
from agsevnet.models import CategoricalDiceLoss, build_loss


pytestmark = pytest.mark.usefixtures("one_thread")

LN3 = math.log(3.0)


def _tiny():
    """Three voxels, two classes; softmax gives P(class 1) = 0.75, 0.25, 0.75; labels 1, 0, 1."""
    logits = torch.tensor([[0.0, LN3, 0.0], [LN3, 0.0, LN3]], dtype=torch.float64).reshape(1, 2, 3, 1, 1)
    labels = torch.tensor([1, 0, 1]).reshape(1, 3, 1, 1)
    return logits, labels


def test_loss_equals_hand_computation():
    """(Tolerance 1e-8 in float64: MONAI's DiceLoss keeps the class weights in float32.)"""
    logits, labels = _tiny()
    # class 0: sum PG = 0.75, sum P = 1.25, sum G = 1 -> D0 = 1.5 / 2.25; class 1: 1.5, 1.75, 2 -> D1 = 3 / 3.75
    d0, d1 = 1.5 / 2.25, 3.0 / 3.75
    loss = CategoricalDiceLoss(weights=(0.1, 1.0), smooth=0.0)(logits, labels)
    assert loss.item() == pytest.approx(-(0.1 * d0 + 1.0 * d1) / 1.1, abs=1e-8)
    # smoothing s: (2 sum PG + s) / (sum P + sum G + s)
    loss = CategoricalDiceLoss(weights=(1.0, 1.0), smooth=1.0)(logits, labels)
    assert loss.item() == pytest.approx(-((1.5 + 1) / (2.25 + 1) + (3 + 1) / (3.75 + 1)) / 2, abs=1e-8)
    # squared denominator (eq. 13): sum P^2 + sum G^2
    d0_sq, d1_sq = 1.5 / (0.6875 + 1), 3.0 / (1.1875 + 2)
    loss = CategoricalDiceLoss(weights=(0.1, 1.0), smooth=0.0, squared=True)(logits, labels)
    assert loss.item() == pytest.approx(-(0.1 * d0_sq + d1_sq) / 1.1, abs=1e-8)


def test_cross_entropy_term():
    logits, labels = _tiny()
    dice = CategoricalDiceLoss(weights=(0.1, 1.0))(logits, labels)
    both = CategoricalDiceLoss(weights=(0.1, 1.0), ce_weight=0.5)(logits, labels)
    # voxel CE: -log 0.75 for every voxel
    assert both.item() == pytest.approx(dice.item() + 0.5 * -math.log(0.75), abs=1e-8)


def _random_case(seed: int, n: int = 2, shape=(6, 5, 4)):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n, *shape), generator=gen)
    logits = torch.randn(n, 4, *shape, generator=gen)
    return logits, labels


def test_perfect_prediction_is_minimal_and_range_is_minus_one_to_zero():
    loss_fn = CategoricalDiceLoss()
    logits, labels = _random_case(0)
    perfect = 30.0 * F.one_hot(labels, 4).permute(0, 4, 1, 2, 3).float()
    best = loss_fn(perfect, labels)
    assert best.item() == pytest.approx(-1.0, abs=1e-6)
    for seed in range(5):
        other, _ = _random_case(seed + 1)
        value = loss_fn(3 * other, labels).item()
        assert best.item() < value <= 0.0 and value >= -1.0
    wrong = 30.0 * F.one_hot((labels + 1) % 4, 4).permute(0, 4, 1, 2, 3).float()  # no overlap at all
    assert loss_fn(wrong, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_target_formats_agree_and_bad_targets_are_rejected():
    loss_fn = CategoricalDiceLoss(ce_weight=1.0)
    logits, labels = _random_case(1)
    one_hot = F.one_hot(labels, 4).permute(0, 4, 1, 2, 3).float()
    ref = loss_fn(logits, labels)
    torch.testing.assert_close(loss_fn(logits, labels[:, None].to(torch.uint8)), ref)
    torch.testing.assert_close(loss_fn(logits, one_hot), ref)
    with pytest.raises(ValueError, match="0..3"):
        loss_fn(logits, labels + 1)
    with pytest.raises(ValueError, match="integer dtype"):
        loss_fn(logits, labels.float())
    with pytest.raises(ValueError, match="fits neither"):
        loss_fn(logits, labels[:, :3])


def test_weights_change_the_loss_as_they_should():
    logits, labels = _random_case(2)
    per_class = []
    for c in range(4):
        weights = [0.0] * 4
        weights[c] = 1.0
        per_class.append(-CategoricalDiceLoss(weights=weights)(logits, labels).item())  # = mean_n D_nc
    weights = [0.1, 1.0, 2.0, 0.5]
    expected = -sum(w * d for w, d in zip(weights, per_class)) / sum(weights)
    assert CategoricalDiceLoss(weights=weights)(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    # scaling all weights changes nothing; down-weighting a class reduces its influence
    assert CategoricalDiceLoss(weights=[2 * w for w in weights])(logits, labels).item() == pytest.approx(expected)
    better_bg = logits.clone()
    better_bg[:, 0] += 5.0 * (labels == 0)  # improve only the background prediction
    gain_default = CategoricalDiceLoss()(logits, labels) - CategoricalDiceLoss()(better_bg, labels)
    gain_equal = (CategoricalDiceLoss(weights=(1, 1, 1, 1))(logits, labels)
                  - CategoricalDiceLoss(weights=(1, 1, 1, 1))(better_bg, labels))
    assert 0 < gain_default < gain_equal  # background weight 0.1 counts less than weight 1


@pytest.mark.parametrize("options", [{}, {"squared": True}, {"ce_weight": 0.7, "smooth": 1.0}])
def test_gradcheck_float64(options):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 3, 3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    labels = torch.randint(0, 4, (2, 3, 3, 2), generator=gen)
    loss_fn = CategoricalDiceLoss(**options)
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, labels), (logits,))


def test_low_precision_logits_do_not_overflow():
    gen = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 4, (1, 64, 64, 32), generator=gen)  # 131072 voxels: sums overflow float16 (65504)
    logits = torch.randn(1, 4, 64, 64, 32, generator=gen)
    ref = CategoricalDiceLoss(ce_weight=1.0)(logits, labels)
    for dtype in (torch.float16, torch.bfloat16):
        low = CategoricalDiceLoss(ce_weight=1.0)(logits.to(dtype), labels)
        assert low.dtype == torch.float32 and torch.isfinite(low)
        assert low.item() == pytest.approx(ref.item(), abs=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = CategoricalDiceLoss(ce_weight=1.0)(logits.bfloat16(), labels)
    assert inside.dtype == torch.float32 and inside.item() == pytest.approx(ref.item(), abs=1e-2)


def test_build_loss():
    default = build_loss(None)
    assert isinstance(default, CategoricalDiceLoss)
    assert list(default.weights) == pytest.approx([0.1, 1.0, 1.0, 1.0]) and not default.squared
    custom = build_loss({"name": "categorical_dice", "weights": [0.2, 1, 1, 1], "squared": True, "ce_weight": 1})
    assert custom.squared and custom.ce_weight == 1.0
    with pytest.raises(ConfigError, match="unknown loss"):
        build_loss({"name": "focal"})
    with pytest.raises(ConfigError, match="no option"):
        build_loss({"weight": [1, 1, 1, 1]})
    with pytest.raises(ConfigError, match="weights"):
        build_loss({"weights": [-1, 1, 1, 1]})
    with pytest.raises(ValueError, match="class weights"):
        default(torch.randn(1, 3, 2, 2, 2), torch.zeros(1, 2, 2, 2, dtype=torch.long))
