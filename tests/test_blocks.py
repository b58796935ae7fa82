"""Blocks of AGSE-VNet: the O(voxels) box filter, the attention guided filter (eq. 5-8), SE (eq. 1-4), convs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from agsevnet.models.blocks import (
    AttentionGuidedFilter,
    ConvNormAct,
    SqueezeExcitation,
    box_mean,
    box_sum,
    group_count,
    guided_filter_coefficients,
    make_norm,
    window_counts,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _windows(shape: tuple[int, ...], r: int):
    """(voxel index, tuple of slices of its clamped window) for every voxel of ``shape``."""
    for idx in itertools.product(*(range(n) for n in shape)):
        yield idx, tuple(slice(max(i - r, 0), min(i + r, n - 1) + 1) for i, n in zip(idx, shape))


def _brute_box_sum(x: np.ndarray, r: int) -> np.ndarray:
    out = np.zeros_like(x)
    for idx, window in _windows(x.shape[2:], r):
        out[(slice(None), slice(None), *idx)] = x[(slice(None), slice(None), *window)].sum(axis=(2, 3, 4))
    return out


# maps larger than the window (2r+1) in every axis, smaller in every axis, and mixed
BOX_CASES = [
    (1, (5, 6, 7)), (1, (2, 1, 2)),
    (2, (7, 8, 6)), (2, (3, 4, 2)),
    (16, (36, 3, 35)), (16, (5, 6, 4)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("radius", "shape"), BOX_CASES)
def test_box_sum_matches_brute_force(radius, shape, dtype):
    rng = np.random.default_rng(radius + sum(shape))
    x = rng.normal(size=(2, 3, *shape))
    expected = _brute_box_sum(x, radius)
    got = box_sum(torch.as_tensor(x, dtype=dtype), radius)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    np.testing.assert_allclose(got.numpy(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize(("radius", "shape"), BOX_CASES)
def test_window_counts_and_box_mean_divide_by_covered_voxels(radius, shape):
    counts = window_counts(list(shape), radius, torch.device("cpu"), torch.float64)[0, 0].numpy()
    expected = _brute_box_sum(np.ones((1, 1, *shape)), radius)[0, 0]
    np.testing.assert_array_equal(counts, expected)
    x = torch.randn(1, 2, *shape, dtype=torch.float64)
    np.testing.assert_allclose(box_mean(x, radius).numpy(), _brute_box_sum(x.numpy(), radius) / expected)


class _OpLog(TorchDispatchMode):
    """Records every ATen operation that computes data (views left out) and the number of elements it produced."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        size = sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        self.ops.append((str(func.overloadpacket), size))
        return out


def _trace(fn) -> list[tuple[str, int]]:
    with _OpLog() as log:
        fn()
    return log.ops


def test_box_filter_and_guided_filter_cost_is_independent_of_radius():
    x = torch.randn(1, 2, 36, 34, 35)
    voxels = x.numel()
    traces = {r: _trace(lambda r=r: box_sum(x, r)) for r in (1, 2, 16)}
    names = {r: [name for name, _ in ops] for r, ops in traces.items()}
    assert names[1] == names[2] == names[16]  # the same operations whatever r
    work = {r: sum(size for _, size in ops) for r, ops in traces.items()}
    # O(voxels): per axis one cumsum, one concatenation and one subtraction, never (2r+1)^3 work per voxel
    assert work[16] <= work[2] <= work[1] <= 9 * voxels

    guide, src, weight = torch.randn(1, 2, 36, 34, 35), torch.randn(1, 2, 36, 34, 35), torch.rand(1, 1, 36, 34, 35)
    gtraces = {r: _trace(lambda r=r: guided_filter_coefficients(guide, src, weight, r, 0.01)) for r in (1, 16)}
    assert [n for n, _ in gtraces[1]] == [n for n, _ in gtraces[16]]
    assert sum(s for _, s in gtraces[16]) <= sum(s for _, s in gtraces[1])


def _numpy_guided_filter(guide, src, weight, r, eps):
    """Eq. 6-8 solved directly: per window the 2x2 normal equations of the weighted ridge regression
    min sum_i T_i^2 (a I_i + b - O_i)^2 + eps a^2, then the mean of (a_k, b_k) over the windows covering i."""
    n_batch, channels = guide.shape[:2]
    shape = guide.shape[2:]
    a = np.zeros_like(guide)
    b = np.zeros_like(guide)
    for n, c in itertools.product(range(n_batch), range(channels)):
        for idx, window in _windows(shape, r):
            x = guide[n, c][window].ravel()
            y = src[n, c][window].ravel()
            w = weight[n, 0][window].ravel() ** 2
            lhs = np.array([[np.sum(w * x * x) + eps * x.size, np.sum(w * x)], [np.sum(w * x), np.sum(w)]])
            rhs = np.array([np.sum(w * x * y), np.sum(w * y)])
            a[(n, c, *idx)], b[(n, c, *idx)] = np.linalg.solve(lhs, rhs)
    count = _brute_box_sum(np.ones((1, 1, *shape)), r)
    return _brute_box_sum(a, r) / count, _brute_box_sum(b, r) / count


def _numpy_he_guided_filter(guide, src, r, eps):
    """He et al.'s guided filter (uniform weights): a = cov(I, O) / (var(I) + eps), b = mean(O) - a mean(I)."""
    count = _brute_box_sum(np.ones((1, 1, *guide.shape[2:])), r)

    def mean(v):
        return _brute_box_sum(v, r) / count

    a = (mean(guide * src) - mean(guide) * mean(src)) / (mean(guide * guide) - mean(guide) ** 2 + eps)
    b = mean(src) - a * mean(guide)
    return mean(a), mean(b)


@pytest.mark.parametrize(("radius", "eps"), [(1, 0.01), (2, 0.1), (16, 0.01)])
def test_guided_filter_matches_direct_solve_of_eq_6_to_8(radius, eps):
    rng = np.random.default_rng(radius)
    guide = rng.normal(size=(2, 2, 5, 4, 6))
    src = 0.7 * guide + rng.normal(scale=0.5, size=guide.shape)
    weight = rng.uniform(0.05, 1.0, size=(2, 1, 5, 4, 6))  # random attention T in (0, 1)
    exp_a, exp_b = _numpy_guided_filter(guide, src, weight, radius, eps)
    a64, b64 = guided_filter_coefficients(*(torch.as_tensor(v) for v in (guide, src, weight)), radius, eps)
    np.testing.assert_allclose(a64.numpy(), exp_a, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(b64.numpy(), exp_b, rtol=1e-9, atol=1e-10)
    a32, b32 = guided_filter_coefficients(*(torch.as_tensor(v, dtype=torch.float32) for v in (guide, src, weight)),
                                          radius, eps)
    assert a32.dtype == torch.float32
    np.testing.assert_allclose(a32.numpy(), exp_a, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b32.numpy(), exp_b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("level", [1.0, 0.3])
def test_guided_filter_with_uniform_attention_is_he_guided_filter(level):
    rng = np.random.default_rng(7)
    guide = rng.normal(size=(1, 3, 6, 5, 4))
    src = np.sin(guide) + rng.normal(scale=0.2, size=guide.shape)
    weight = np.full((1, 1, 6, 5, 4), level)
    for radius, eps in [(1, 0.01), (2, 0.04)]:
        exp_a, exp_b = _numpy_he_guided_filter(guide, src, radius, eps / level**2)  # T = c scales eps by 1/c^2
        a, b = guided_filter_coefficients(torch.as_tensor(guide), torch.as_tensor(src), torch.as_tensor(weight),
                                          radius, eps)
        np.testing.assert_allclose(a.numpy(), exp_a, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(b.numpy(), exp_b, rtol=1e-9, atol=1e-10)


def test_attention_guided_filter_reproduces_a_linear_relation_at_high_resolution():
    """O = alpha * I_l + beta exactly and eps = 0: every a_k = alpha, b_k = beta, so after the trilinear
    up-sampling O~ = alpha * I + beta exactly, whatever the attention map."""
    torch.manual_seed(0)
    alpha, beta = -1.7, 0.4
    block = AttentionGuidedFilter(1, 1, radius=2, eps=0.0).double()
    with torch.no_grad():
        block.project.weight.fill_(alpha)
        block.project.bias.fill_(beta)
    skip = torch.randn(2, 1, 8, 12, 6, dtype=torch.float64)
    x = torch.nn.functional.avg_pool3d(skip, 2)
    out = block(x, skip)
    assert out.shape == skip.shape
    torch.testing.assert_close(out, alpha * skip + beta, rtol=1e-9, atol=1e-9)


def test_attention_guided_filter_shapes_gradients_and_low_precision():
    torch.manual_seed(0)
    block = AttentionGuidedFilter(8, 4, radius=16, eps=0.01)
    x = torch.randn(2, 8, 4, 6, 2, requires_grad=True)
    skip = torch.randn(2, 4, 8, 12, 4, requires_grad=True)
    out = block(x, skip)
    assert out.shape == skip.shape
    out.square().mean().backward()
    assert all(torch.isfinite(t).all() and t.abs().sum() > 0 for t in (x.grad, skip.grad, block.project.weight.grad,
                                                                     block.attention.psi.weight.grad))
    # the attention map changes the result (T is not a no-op)
    with torch.no_grad():
        ref = block(x, skip)
        block.attention.psi.bias.add_(3.0)
        assert not torch.allclose(block(x, skip), ref, atol=1e-4)
        block.attention.psi.bias.sub_(3.0)
        # statistics in float32 under bf16 autocast: same result up to bf16 rounding of the convolutions
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block(x, skip.bfloat16())
            guide = skip.bfloat16()
            a, _ = guided_filter_coefficients(guide, guide, guide[:, :1].sigmoid(), 16, 0.01)
        assert a.dtype == torch.float32
        assert torch.isfinite(low).all()
        torch.testing.assert_close(low.float(), ref, rtol=0.1, atol=0.1)


def test_attention_guided_filter_with_saturated_attention_stays_finite():
    block = AttentionGuidedFilter(4, 2, radius=1)
    with torch.no_grad():
        block.attention.psi.bias.fill_(-200.0)  # T = sigmoid(-200): T^2 underflows to 0 in float32
    x = torch.randn(1, 4, 3, 3, 3, requires_grad=True)
    skip = torch.randn(1, 2, 6, 6, 6)
    out = block(x, skip)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_se_gates_are_in_unit_interval_and_scale_the_input():
    torch.manual_seed(0)
    se = SqueezeExcitation(8, reduction=4)
    assert se.fc[0].out_features == 2  # C / m hidden units
    x = 3 * torch.randn(2, 8, 5, 4, 3)
    gates = se.gates(x)
    assert gates.shape == (2, 8)
    assert ((gates > 0) & (gates < 1)).all()
    torch.testing.assert_close(se(x), x * gates[:, :, None, None, None])
    # the squeeze is the global mean (eq. 2): a constant shift of one channel's voxels changes only via the mean
    z = x.mean(dim=(2, 3, 4))
    torch.testing.assert_close(gates, torch.sigmoid(se.fc[2](torch.relu(se.fc[0](z)))))
    with pytest.raises(ValueError, match="reduction"):
        SqueezeExcitation(2, reduction=4)


@pytest.mark.parametrize(("channels", "requested", "expected"),
                         [(20, 20, 20), (320, 20, 20), (8, 20, 8), (12, 20, 12), (30, 20, 15), (7, 4, 1)])
def test_group_count_is_largest_divisor_not_above_request(channels, requested, expected):
    assert group_count(channels, requested) == expected
    assert make_norm("group", channels, requested).num_groups == expected


def test_conv_block_layers_and_dropout():
    block = ConvNormAct(4, 20, dropout=0.5)
    kinds = [type(m).__name__ for m in block]
    assert kinds == ["Conv3d", "GroupNorm", "ReLU", "Dropout"]
    assert block[1].num_groups == 20 and block[0].kernel_size == (3, 3, 3)
    assert [type(m).__name__ for m in ConvNormAct(4, 8, dropout=0.0)] == ["Conv3d", "GroupNorm", "ReLU"]
    assert isinstance(make_norm("instance", 8), torch.nn.InstanceNorm3d)
    assert isinstance(make_norm("batch", 8), torch.nn.BatchNorm3d)
    down = ConvNormAct(8, 16, stride=2)
    assert down(torch.randn(1, 8, 8, 6, 4)).shape == (1, 16, 4, 3, 2)
    with pytest.raises(ValueError, match="normalisation"):
        make_norm("layer", 8)
