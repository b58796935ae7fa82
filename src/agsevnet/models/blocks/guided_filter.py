"""The Attention Guided Filter (paper section 3.3, eq. 5-8; Zhang et al., AG-Net, MICCAI 2019; He et al.,
guided image filtering) and the O(voxels) box filter it is built on.

Notation (one decoder stage): ``x`` is the low-resolution decoder input (2C channels), ``s`` the encoder skip
at twice its resolution (C channels).

* guide, high resolution:   I   = s
* guide, low resolution:    I_l = avg_pool3d(I, 2)                       (x's resolution)
* map to be filtered:       O   = conv1x1x1(x)                            (C channels, x's resolution)
* attention map (Fig. 3):   T   = sigmoid(psi(ReLU(theta(I_l) + phi(O))))  (one channel, x's resolution)
* eq. 5 states the result's form: O~_i = sum_j W_ij(I) O_j, a filter of O whose weights depend on the guide
  (and here on T); eq. 6-8 give it explicitly:
* eq. 6, per channel and window w_k (a cube of radius r around voxel k, clamped to the map):
      min_{a_k, b_k}  sum_{i in w_k} T_i^2 (a_k I_li + b_k - O_i)^2 + eps a_k^2
  whose closed form, with the weighted window statistics (means taken over the voxels the window covers)
      W = mean(T^2),  mu_I = mean(T^2 I_l) / W,  mu_O = mean(T^2 O) / W,
      var_I = mean(T^2 I_l^2) / W - mu_I^2,  cov_IO = mean(T^2 I_l O) / W - mu_I mu_O,
  is
      a_k = cov_IO / (var_I + eps / W),   b_k = mu_O - a_k mu_I                                   (eq. 7)
  With uniform T (T = 1) this is exactly He's guided filter, a_k = cov / (var + eps). The paper prints He's
  unweighted formula as eq. 7, which ignores T; we solve eq. 6 as written (the weighted problem), which is the
  only reading in which the attention map has an effect, and which reduces to the printed eq. 7 when T = 1.
  Note that eq. 6 sums the ridge term over the window's voxels while the data term is weighted by T^2, so a
  window of low attention (small W) is regularised more strongly: a -> 0 and b -> the weighted mean of O.
* eq. 8: every voxel is covered by several windows; its coefficients are the means over those windows,
      A_l = mean_{k: i in w_k} a_k,   B_l = mean_{k: i in w_k} b_k
  (the same clamped box mean, because window k covers i exactly when i's window contains k);
* A_h, B_h = trilinear up-sampling of A_l, B_l to I's resolution (align_corners=False, the grid convention of
  the 2x average pooling that made I_l), and the output is  O~ = A_h * I + B_h.

Borders: windows are clamped to the map and every mean divides by the number of voxels the window actually
covers, so any radius works on any map size (the paper's r = 16 gives 33-voxel windows, larger than the
deepest maps of a 128x128x64 patch: there every window is the whole map and a, b are the weighted global
regression per channel).

Cost: the box sums are separable cumulative-sum differences along each axis, O(voxels) and independent of r.
All five statistics are stacked along the channel axis (1 + 4C channels) and box-summed in one pass, the
coefficients (2C channels) in a second. The statistics are computed on float32 copies of I_l, O and T: none
of the operations involved (mul, cat, cumsum, div, interpolate) is on autocast's lower-precision list,
so they stay in float32 under ``torch.autocast`` (CPU bf16, CUDA fp16/bf16) without a context switch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _box_sum_axis(x: torch.Tensor, dim: int, radius: int) -> torch.Tensor:
    """Sums of ``x`` over the windows [i - r, i + r] clamped to [0, n - 1] along ``dim``, via one cumsum.

    With c = cumsum(x): sum_i = c[min(i + r, n - 1)] - c[i - r - 1], where the second term is absent (zero) for
    i <= r and, for i > r, runs over the contiguous range c[0 : n - r - 1]. Both terms are slices of c (the
    first padded with copies of c[n - 1]): on CPU this is several times faster than ``index_select``.
    The cumulative sum runs on a view with ``dim`` moved last, where PyTorch's CPU kernel is 2-3x faster than
    along an outer dimension (measured on (1, 81, 64, 64, 32) float32: 105 ms vs 250 ms for dim 2).
    """
    n = x.shape[dim]
    c = x.movedim(dim, -1).cumsum(-1).movedim(-1, dim)
    if radius >= n - 1:  # every window spans the whole axis
        return c.narrow(dim, n - 1, 1).expand_as(c).contiguous()
    last = c.narrow(dim, n - 1, 1)
    out = torch.cat([c.narrow(dim, radius, n - radius), last.expand_as(c.narrow(dim, 0, radius))], dim)
    k = n - radius - 1
    out.narrow(dim, radius + 1, k).sub_(c.narrow(dim, 0, k))
    return out


def box_sum(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum of ``x`` (N, C, X, Y, Z) over the cube of radius ``radius`` around every voxel, clamped at the
    borders. Cost O(voxels), independent of ``radius`` (separable cumulative sums)."""
    for dim in range(2, x.dim()):
        x = _box_sum_axis(x, dim, radius)
    return x


def window_counts(shape: list[int], radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Number of voxels in each clamped window, shape (1, 1, X, Y, Z) (a product of per-axis counts)."""
    counts = torch.ones([1, 1] + [1] * len(shape), device=device, dtype=dtype)
    for axis, n in enumerate(shape):
        idx = torch.arange(n, device=device)
        per_axis = (idx + radius).clamp(max=n - 1) - (idx - radius).clamp(min=0) + 1
        view = [1, 1] + [1] * len(shape)
        view[2 + axis] = n
        counts = counts * per_axis.to(dtype).view(view)
    return counts


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of ``x`` over the clamped cube of radius ``radius`` around every voxel (the voxels it covers)."""
    return box_sum(x, radius) / window_counts(list(x.shape[2:]), radius, x.device, x.dtype)


def guided_filter_coefficients(
    guide: torch.Tensor, src: torch.Tensor, weight: torch.Tensor, radius: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """A_l, B_l of eq. 6-8: the weighted ridge regression ``src ~ a * guide + b`` in every clamped window
    (weights ``weight**2``), averaged over the windows covering each voxel.

    ``guide`` and ``src`` are (N, C, X, Y, Z), ``weight`` (N, 1, X, Y, Z) or (N, C, X, Y, Z); computed in
    float32 (or float64 if the inputs are float64) and returned in that dtype.
    """
    dtype = torch.float64 if guide.dtype == torch.float64 else torch.float32
    # float32 (or float64) and the standard layout: the cumulative sums are several times slower on
    # channels_last_3d tensors, and these maps are at the low resolution, so the copy is cheap
    guide, src, weight = (t.to(dtype).contiguous() for t in (guide, src, weight))
    channels = guide.shape[1]
    w = weight * weight
    w_guide = w * guide
    stats = box_sum(torch.cat([w, w_guide, w * src, w_guide * guide, w_guide * src], dim=1), radius)
    s_w, s_i, s_o, s_ii, s_io = stats.split([w.shape[1], channels, channels, channels, channels], dim=1)
    # T is a sigmoid, so sum(T^2) > 0 mathematically, but it can underflow in float32 when the attention
    # saturates; clamping keeps a, b finite (a -> 0, b -> a bounded weighted mean of O) and the gradient of
    # eps / W representable (1 / 1e-24 is finite in float32).
    s_w = s_w.clamp_min(1e-12)
    counts = window_counts(list(guide.shape[2:]), radius, guide.device, dtype)
    mu_i = s_i / s_w
    mu_o = s_o / s_w
    var_i = (s_ii / s_w - mu_i * mu_i).clamp_min(0)
    cov = s_io / s_w - mu_i * mu_o
    a = cov / (var_i + eps * counts / s_w)  # eps / W with W = s_w / counts, the window's mean weight
    b = mu_o - a * mu_i
    coefficients = box_sum(torch.cat([a, b], dim=1), radius) / counts
    a_l, b_l = coefficients.split([channels, channels], dim=1)
    return a_l, b_l


class AttentionBlock(nn.Module):
    """Fig. 3: T = sigmoid(psi(ReLU(theta(I_l) + phi(O)))), 1x1x1 convolutions, psi to one channel.

    The intermediate width equals the input width, as in AG-Net's ``GridAttentionBlock``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta = nn.Conv3d(channels, channels, kernel_size=1)
        self.phi = nn.Conv3d(channels, channels, kernel_size=1)
        self.psi = nn.Conv3d(channels, 1, kernel_size=1)

    def forward(self, guide_low: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.psi(torch.relu(self.theta(guide_low) + self.phi(src))))


class AttentionGuidedFilter(nn.Module):
    """The AG block that replaces VNet's concatenation: ``forward(x, skip) -> O~`` with skip's shape.

    Args:
        in_channels: channels of the low-resolution input ``x``.
        channels: channels of the skip ``s`` (and of the output).
        radius: window radius r (paper: 16 at every level).
        eps: ridge regularisation epsilon (paper: 0.1**2).
    """

    def __init__(self, in_channels: int, channels: int, radius: int = 16, eps: float = 0.01) -> None:
        super().__init__()
        if radius < 0 or eps < 0:
            raise ValueError(f"guided filter needs radius >= 0 and eps >= 0, got radius={radius}, eps={eps}")
        self.radius = radius
        self.eps = eps
        self.project = nn.Conv3d(in_channels, channels, kernel_size=1)
        self.attention = AttentionBlock(channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        dtype = skip.dtype
        guide_low = F.avg_pool3d(skip, kernel_size=2)
        src = self.project(x)
        weight = self.attention(guide_low, src)
        a_l, b_l = guided_filter_coefficients(guide_low, src, weight, self.radius, self.eps)
        a_h = self._upsample(a_l, skip)
        b_h = self._upsample(b_l, skip)
        skip = skip.to(a_h.dtype)
        if torch.is_grad_enabled():
            return torch.addcmul(b_h, a_h, skip).to(dtype)
        return b_h.addcmul_(a_h, skip).to(dtype)  # in place: one full-resolution tensor less at the peak

    @staticmethod
    def _upsample(coefficients: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Trilinear up-sampling to ``like``'s size and memory format (the coefficients are computed in the
        standard layout; with a channels_last_3d network the interpolation, which is 2-3x faster in that layout
        on CPU, and everything after it stay channels_last_3d)."""
        if like.is_contiguous(memory_format=torch.channels_last_3d) and not like.is_contiguous():
            coefficients = coefficients.contiguous(memory_format=torch.channels_last_3d)
        return F.interpolate(coefficients, size=like.shape[2:], mode="trilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"radius={self.radius}, eps={self.eps}"
