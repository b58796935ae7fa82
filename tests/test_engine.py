"""The inference engine: strategies agree, TTA maps every flip back, padding to the divisor, auto choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from agsevnet.synth.phantom import make_phantom
from agsevnet.infer.engine import FLIPS, choose_strategy, predict_probabilities, tta_flips
from agsevnet.preprocess import brain_mask, crop, crop_box, normalize


class Pointwise(nn.Module):
    """Stand-in network: logits = a fixed, non-symmetric linear map of the 4 channels at each voxel (so it
    commutes with flips). Records the spatial shapes it is called with."""

    def __init__(self, divisor: int | None = None):
        super().__init__()
        self.conv = nn.Conv3d(4, 4, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(16.0).reshape(4, 4, 1, 1, 1).sin() * 3)
            self.conv.bias.copy_(torch.tensor([0.5, -0.2, 0.1, 0.3]))
        self.divisor = divisor
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.divisor:
            assert all(s % self.divisor == 0 for s in x.shape[2:]), x.shape
        self.inputs.append(x.clone())
        return self.conv(x)


def _ramp_image(shape=(20, 18, 12)) -> torch.Tensor:
    """Channels that are coordinate ramps along each axis (and noise): every flip of it is different."""
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape], indexing="ij")
    noise = torch.Generator().manual_seed(0)
    return torch.stack([grids[0], grids[1], grids[2] ** 3, torch.randn(shape, generator=noise)])


@pytest.mark.parametrize("strategy", ["whole", "sliding"])
@pytest.mark.parametrize("tta", [True, 3, [(0,)], [(1,)], [(2,)], [(0, 2)], [(0, 1, 2)]])
def test_tta_maps_every_flip_back(strategy, tta):
    image = _ramp_image()
    net = Pointwise()
    kwargs = dict(roi_size=(16, 16, 8), overlap=0.5, strategy=strategy, amp="fp32", divisor=4)
    plain = predict_probabilities(net, image, **kwargs)
    augmented = predict_probabilities(net, image, tta=tta, **kwargs)
    assert augmented.shape == plain.shape == (4, *image.shape[1:])
    torch.testing.assert_close(augmented, plain, atol=1e-6, rtol=0)


def test_tta_feeds_each_flip_and_the_input_is_not_symmetric():
    image = _ramp_image((16, 16, 8))
    net = Pointwise()
    predict_probabilities(net, image, roi_size=(16, 16, 8), strategy="whole", tta=True, amp="fp32", divisor=8)
    assert len(net.inputs) == 8
    for axes, seen in zip(FLIPS, net.inputs):
        expected = torch.flip(image, [a + 1 for a in axes]) if axes else image
        torch.testing.assert_close(seen[0], expected)
    # Had a prediction not been flipped back, the result would differ: the test above would notice.
    plain = torch.softmax(net.conv(image[None]), 1)[0]
    unflipped = torch.softmax(net.conv(torch.flip(image, [1])[None]), 1)[0]
    assert (plain - unflipped).abs().max() > 0.1


def test_tta_flips_argument():
    assert tta_flips(False) == [()]
    assert tta_flips(True) == list(FLIPS) and len(set(FLIPS)) == 8
    assert tta_flips(2) == [(), (0,)]
    assert tta_flips([(2, 0)]) == [(0, 2)]
    with pytest.raises(ValueError):
        tta_flips([(3,)])
    with pytest.raises(ValueError):
        tta_flips(9)


def test_whole_pass_pads_to_the_divisor_and_crops_back():
    image = _ramp_image((37, 29, 21))
    net = Pointwise(divisor=16)
    prob = predict_probabilities(net, image.numpy(), roi_size=(16, 16, 16), strategy="whole", amp="fp32", divisor=16)
    assert net.inputs[0].shape[2:] == (48, 32, 32)
    assert prob.dtype == torch.float32 and prob.device.type == "cpu"
    torch.testing.assert_close(prob, torch.softmax(net.conv(image[None]), 1)[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(prob.sum(0), torch.ones(image.shape[1:]), atol=1e-5, rtol=0)


def _narrow_model(norm: str = "group") -> nn.Module:
    from agsevnet.models import build_model

    torch.manual_seed(0)
    return build_model({"name": "agsevnet", "base_width": 4, "depth": 3, "dropout": 0.0, "norm": norm})


@pytest.fixture(scope="module")
def phantom_crop() -> np.ndarray:
    images, _ = make_phantom(3, shape=(64, 64, 48))
    mask = brain_mask(images)
    normalized, _ = normalize(images, mask)
    return np.ascontiguousarray(crop(normalized, crop_box(mask, 2)))


def test_strategies_agree_on_a_phantom(phantom_crop):
    # BatchNorm in eval mode normalises with fixed statistics, so a window and the whole crop see the same
    # function: what is left is the engine's padding, blending and cropping, plus the zero padding at window
    # borders. (GroupNorm/InstanceNorm normalise by the statistics of whatever extent they are given, so with
    # them the two strategies differ by design: a random GroupNorm net disagrees on ~10% of the voxels.)
    model = _narrow_model("batch").eval()
    kwargs = dict(roi_size=(32, 32, 32), amp="fp32")
    whole = predict_probabilities(model, phantom_crop, strategy="whole", **kwargs)
    sliding = predict_probabilities(model, phantom_crop, strategy="sliding", overlap=0.5, **kwargs)
    assert whole.shape == sliding.shape == (4, *phantom_crop.shape[1:])
    assert all(s > 32 for s in phantom_crop.shape[1:3])  # several windows
    diff = (whole - sliding).abs()
    assert diff.mean() < 0.005 and diff.max() < 0.05
    assert (whole.argmax(0) == sliding.argmax(0)).float().mean() >= 0.999


def test_auto_strategy_follows_the_memory_budget_and_the_training_extent():
    net = Pointwise()
    shape, patch = (140, 170, 130), (128, 128, 128)  # padded 144x176x144: 1.7x the patch
    assert choose_strategy(net, shape, patch, memory_budget=10 * 1024**3) == "whole"
    assert choose_strategy(net, shape, patch, memory_budget=1024**2) == "sliding"
    assert choose_strategy(net, shape, (64, 64, 64), memory_budget=10 * 1024**3) == "sliding"  # 14x the patch
    assert choose_strategy(net, shape, patch, strategy="sliding", memory_budget=10 * 1024**3) == "sliding"
    with pytest.raises(ValueError):
        choose_strategy(net, shape, patch, strategy="fast")


def test_training_mode_is_restored_and_bf16_runs(phantom_crop):
    model = _narrow_model().train()
    fp32 = predict_probabilities(model, phantom_crop, roi_size=(32, 32, 32), strategy="whole", amp="fp32")
    assert model.training
    bf16 = predict_probabilities(model, phantom_crop, roi_size=(32, 32, 32), strategy="whole", amp="bf16")
    assert bf16.dtype == torch.float32
    assert (fp32.argmax(0) == bf16.argmax(0)).float().mean() > 0.95
