"""agsevnet's own sliding window (no MONAI import at prediction time) against MONAI's sliding_window_inference."""

from __future__ import annotations

import pytest
import torch

from agsevnet.infer.engine import gaussian_importance, sliding_window, window_starts


def _net(batch: torch.Tensor) -> torch.Tensor:
    """A position-dependent 'network': windows disagree, so blending and placement show in the output."""
    x = batch.float()
    return torch.softmax(torch.cat([x[:, :1] * 3, x[:, 1:2] ** 2, x.mean(1, keepdim=True)], 1), 1)


@pytest.mark.parametrize("shape,roi,overlap", [
    ((37, 41, 30), (16, 16, 16), 0.5),
    ((48, 20, 33), (24, 24, 16), 0.25),   # one axis shorter than the window: padded
    ((16, 16, 16), (16, 16, 16), 0.5),    # exactly one window
    ((50, 31, 29), (20, 12, 16), 0.6),
])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_matches_monai(shape, roi, overlap, mode):
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    image = torch.randn(1, 3, *shape)
    ours = sliding_window(image, roi, _net, overlap=overlap, mode=mode, sw_batch_size=3)
    ref = sliding_window_inference(image, roi, 2, _net, overlap=overlap, mode=mode)
    assert ours.shape == ref.shape == (1, 3, *shape)
    torch.testing.assert_close(ours, torch.as_tensor(ref), rtol=1e-5, atol=1e-6)


def test_window_placement_and_weights():
    assert window_starts(40, 16, 0.5) == [0, 8, 16, 24]
    assert window_starts(41, 16, 0.5) == [0, 8, 16, 24, 25]
    assert window_starts(16, 16, 0.5) == [0]
    w = gaussian_importance((8, 8, 8))
    assert w.shape == (8, 8, 8) and float(w.max()) == pytest.approx(float(w[3:5, 3:5, 3:5].max()))
    assert float(w.min()) >= 1e-3


def test_padding_uses_the_background_value():
    seen = []

    def net(batch):
        seen.append(batch.clone())
        return batch

    image = torch.zeros(1, 2, 8, 8, 8)
    sliding_window(image, (12, 8, 8), net, pad_value=[-1.5, 2.0])
    padded = seen[0]
    assert padded.shape == (1, 2, 12, 8, 8)
    assert float(padded[0, 0, 0].max()) == -1.5 and float(padded[0, 1, -1].min()) == 2.0
