r"""AGSE-VNet (Guan et al., "3D AGSE-VNet", sections 3.1-3.7, Figs 1-5) and its ablations in one class.

``AGSEVNet(se=True, skip="ag")`` is AGSE-VNet; ``se=False`` / ``skip="concat"`` give AG-VNet, SE-VNet and the plain
VNet. Pure PyTorch; maps (N, 4, X, Y, Z) to **logits** (N, 4, X, Y, Z) for background, necrosis/non-enhancing
core, edema and enhancing tumour (the internal labels 0-3). Softmax is *not* part of the network: the loss
(:mod:`agsevnet.models.losses`) and inference apply it, which is cheaper and numerically safer (log-softmax in
cross-entropy, probabilities only where needed).

Architecture (defaults; ``l`` = level 0..4, widths C_l = ``base_width`` * 2**l = 20, 40, 80, 160, 320)
=========================================================================================================

Every convolution ("conv" below) is Conv3d 3x3x3 (padding 1, bias) -> GroupNorm -> ReLU -> Dropout(p) (§3.4: "all
convolutional layers have adopted normalization and dropout"; §4.2: dropout 0.5).

Encoder stage l (Fig. 5a), input x_l:

* its convolutions, (2, 2, 3, 3, 3) per stage (the paper says "2-3 layers"; the counts are those of the
  TensorFlow VNet for BraTS the paper builds on), with a residual add of the stage input. At level 0 the input
  has 4 channels, so (as in that reference) the first conv maps 4 -> 20 and the residual adds *its* output;
* eq. 1: U = the stage's output (U_c = sum_s v_c^s * x^s, the convolutions);
* eq. 2 (squeeze): z_c = mean_{voxels} U_c;
* eq. 3 (excitation): s = sigmoid(W2 ReLU(W1 z)), W1: C -> C/m, W2: C/m -> C, m = 4;
* eq. 4 (scale): x~_c = s_c U_c  -> the skip s_l of this level (SE in every encoder stage, the bottom one too);
* down-sampling (eq. 9-10 with k = 3, s = 2, p = 1): a stride-2 conv C_l -> C_{l+1} (with norm, ReLU and
  dropout), halving the resolution and doubling the width.

Decoder stage l = 3..0 (Fig. 5b), input x from level l+1 (C_{l+1} channels), skip s = s_l:

* up-sampling (eq. 11): u = ReLU(ConvTranspose3d 3x3x3, stride 2, padding 1, output_padding 1)(x), C_l
  channels, exactly twice x's size (eq. 11 as printed gives 2i - 1 for k = 3, p = 1; the skip needs 2i);
* the Attention Guided Filter replaces VNet's concatenation (§3.5-3.6), see
  :mod:`agsevnet.models.blocks.guided_filter` for eq. 5-8 in full:
  I = s, I_l = avg_pool3d(I, 2), O = conv1x1x1(x) (C_{l+1} -> C_l: the paper only says O has I_l's size; x has
  twice the channels, so a 1x1x1 projection is needed), T = sigmoid(psi(ReLU(theta(I_l) + phi(O)))) (Fig. 3),
  per channel the T^2-weighted ridge regression of eq. 6 in every window of radius r = 16 (eps = 0.1^2) solved
  in closed form (eq. 7), coefficients averaged over the covering windows (eq. 8) -> A_l, B_l, trilinear
  up-sampling -> A_h, B_h (the paper says "down-sampling" here, a slip: the coefficients go up to I's size),
  O~ = A_h * I + B_h;
  with ``skip="concat"`` (plain VNet) the fused map is instead cat([s, u]) (2 C_l channels);
* three convs on the fused map (the first maps it to C_l), and a residual add of u (§3.5: "the idea of skip
  connection is adopted in each decoder block").

Output: a 1x1x1 convolution C_0 -> 4 (logits; §3.5 mentions a sigmoid and §3.7 a softmax: the classes are
mutually exclusive, so the loss and inference use softmax).

Choices the paper leaves open, and why
======================================

* Widths, convs per stage, GroupNorm with 20 groups, element-wise dropout after every conv, the stage-0 residual
  and the 3x3x3 transposed conv follow the TensorFlow VNet for BraTS the paper's implementation is based on.
  GroupNorm uses the largest divisor of C that is <= ``norm_groups`` (see
  :func:`agsevnet.models.blocks.group_count`), so narrow networks still build; ``norm="instance"`` / ``"batch"``
  are alternatives.
* SE comes after the stage's residual add and before the down-sampling (Fig. 5a), so the skip and the
  down-sampling path both see the recalibrated channels.
* The attention map T has one channel shared by all channels of the regression (AG-Net's GridAttentionBlock;
  psi maps to one channel), its intermediate width is C_l (as in AG-Net).
* Eq. 6 is solved as written, with weights T^2 (the printed eq. 7 is He's unweighted formula, which would
  make T a no-op; it is the T = 1 case of our solution).
* Windows are clamped at the borders and normalised by the voxels they cover, so r = 16 (the paper's value, at
  every level) works on maps smaller than 33 voxels; ``ag_radius`` and ``ag_eps`` are configurable.
* In the AG variants, the transposed-conv output u still feeds the decoder stage's residual add, so the
  decoder keeps VNet's up-sampling path and the AG block supplies the fused high-resolution map.
* Input sizes must be multiples of 2**(depth - 1) (16 by default) in every axis; anything else raises a
  ``ValueError`` naming the size and the divisor (pad or crop; the sliding-window inference does this).

Speed and memory: dropout is absent when p = 0 and the identity in eval mode; SE is one global mean and two tiny
linear layers; the guided filter's box sums cost O(voxels) whatever r, computed in float32 in two batched
passes at the low resolution; at inference the residual adds and the guided filter's output work in place and
every full-resolution map is released as soon as it has been used. The network runs under ``torch.autocast``
(CPU bf16, CUDA fp16/bf16) and keeps the memory format of its input: with a ``torch.channels_last_3d`` input
the whole pass runs in that layout, where oneDNN's 3D convolutions at the default width are up to twice as
fast on CPU (20 -> 20 channels at 128x128x64: 0.6 s vs 1.2 s on the 2-core machine); for narrow networks
(a few channels) the standard layout is faster, above all in the backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from agsevnet.models.blocks import AttentionGuidedFilter, ConvNormAct, SqueezeExcitation, UpConv
from agsevnet.models.blocks.convs import NORMS

SKIPS = ("ag", "concat")


def default_enc_convs(depth: int) -> tuple[int, ...]:
    """(2, 2, 3, 3, 3) for depth 5; two convs in the first two stages and three in every deeper one."""
    return tuple(2 if level < 2 else 3 for level in range(depth))


def _add(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``fresh + other``, in place into ``fresh`` (a tensor nothing else uses) when no gradient is recorded, which
    saves one full-resolution tensor at the peak of an inference pass."""
    if torch.is_grad_enabled():
        return fresh + other
    return fresh.add_(other)


class EncoderStage(nn.Module):
    """Convs with a residual add, Squeeze-and-Excitation, then a stride-2 conv (absent at the bottom).

    ``forward(x) -> (skip, down)``: the stage output (after SE) and its down-sampled continuation (``skip`` itself
    at the bottom level).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        n_convs: int,
        *,
        se: bool,
        se_reduction: int,
        down: bool,
        conv: dict,
    ) -> None:
        super().__init__()
        # A stage whose input width differs from its own (level 0: 4 -> C_0) starts with a conv that changes it;
        # the residual then adds that conv's output (the reference's ``resnet_Add(layer0, layer1)``).
        change = in_channels != channels
        self.entry = ConvNormAct(in_channels, channels, **conv) if change else nn.Identity()
        self.convs = nn.Sequential(*[ConvNormAct(channels, channels, **conv) for _ in range(n_convs - int(change))])
        self.residual = len(self.convs) > 0
        self.se = SqueezeExcitation(channels, se_reduction) if se else nn.Identity()
        self.down = ConvNormAct(channels, 2 * channels, stride=2, **conv) if down else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.entry(x)
        if self.residual:
            x = _add(self.convs(x), x)
        skip = self.se(x)
        return skip, self.down(skip)


class DecoderStage(nn.Module):
    """Transposed-conv up-sampling, AG filter (or concatenation), convs, residual add of the up-sampled map."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        n_convs: int,
        *,
        skip: str,
        ag_radius: int,
        ag_eps: float,
        conv: dict,
    ) -> None:
        super().__init__()
        self.up = UpConv(in_channels, channels)
        self.ag = AttentionGuidedFilter(in_channels, channels, ag_radius, ag_eps) if skip == "ag" else None
        fused = channels if skip == "ag" else 2 * channels
        self.convs = nn.Sequential(
            *[ConvNormAct(fused if i == 0 else channels, channels, **conv) for i in range(n_convs)]
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """``x`` from the level below; the skip is popped from the end of ``skips`` (the encoder's outputs), so that
        no reference outlives its use and the full-resolution map is freed before the convolutions."""
        skip = skips.pop()
        u = self.up(x)
        if self.ag is not None:
            fused = self.ag(x, skip)
        else:
            fused = torch.cat([skip, u], dim=1)
        del skip
        for conv in self.convs:  # (not self.convs(fused): that would keep ``fused`` alive to the end)
            fused = conv(fused)
        return _add(fused, u)


class AGSEVNet(nn.Module):
    """AGSE-VNet and its ablations (see the module docstring for the equations and choices).

    Args:
        in_channels: input channels (4 modalities: flair, t1, t1ce, t2).
        out_channels: classes (4); the network returns logits.
        base_width: width of level 0 (20); level l has ``base_width * 2**l`` channels.
        depth: number of resolution levels (5); inputs must be multiples of ``2**(depth - 1)``.
        enc_convs: convs per encoder stage (default (2, 2, 3, 3, 3), see :func:`default_enc_convs`).
        dec_convs: convs per decoder stage (3).
        norm: ``"group"`` | ``"instance"`` | ``"batch"``.
        norm_groups: requested GroupNorm groups (20; the largest divisor of C that is <= this is used).
        dropout: element-wise dropout after every conv (0.5 in the paper; 0 disables).
        se: Squeeze-and-Excitation in every encoder stage.
        se_reduction: SE reduction m (4).
        skip: ``"ag"`` (Attention Guided Filter) or ``"concat"`` (VNet concatenation).
        ag_radius: guided-filter window radius r (16 at every level, the paper's).
        ag_eps: guided-filter ridge epsilon (0.1**2).
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        base_width: int = 20,
        depth: int = 5,
        enc_convs: Sequence[int] | None = None,
        dec_convs: int = 3,
        norm: str = "group",
        norm_groups: int = 20,
        dropout: float = 0.5,
        se: bool = True,
        se_reduction: int = 4,
        skip: str = "ag",
        ag_radius: int = 16,
        ag_eps: float = 0.01,
    ) -> None:
        super().__init__()
        enc_convs = tuple(default_enc_convs(depth) if enc_convs is None else enc_convs)
        problems = []
        if depth < 2:
            problems.append(f"depth must be >= 2, got {depth}")
        if len(enc_convs) != depth or min(enc_convs, default=0) < 1:
            problems.append(f"enc_convs needs {depth} counts >= 1 (one per level), got {list(enc_convs)}")
        if dec_convs < 1:
            problems.append(f"dec_convs must be >= 1, got {dec_convs}")
        if base_width < 1 or in_channels < 1 or out_channels < 1:
            problems.append("base_width, in_channels and out_channels must be >= 1")
        if norm not in NORMS:
            problems.append(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if skip not in SKIPS:
            problems.append(f"skip must be one of {', '.join(SKIPS)}, got {skip!r}")
        if not 0 <= dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {dropout}")
        if problems:
            raise ValueError("invalid AGSE-VNet configuration: " + "; ".join(problems))

        self.in_channels = in_channels
        self.divisor = 2 ** (depth - 1)
        widths = [base_width * 2**level for level in range(depth)]
        conv = {"norm": norm, "norm_groups": norm_groups, "dropout": dropout}
        self.encoder = nn.ModuleList(
            EncoderStage(
                in_channels if level == 0 else widths[level],
                widths[level],
                enc_convs[level],
                se=se,
                se_reduction=se_reduction,
                down=level < depth - 1,
                conv=conv,
            )
            for level in range(depth)
        )
        self.decoder = nn.ModuleList(
            DecoderStage(widths[level + 1], widths[level], dec_convs, skip=skip, ag_radius=ag_radius,
                         ag_eps=ag_eps, conv=conv)
            for level in reversed(range(depth - 1))
        )
        self.head = nn.Conv3d(widths[0], out_channels, kernel_size=1)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is (N, in_channels, X, Y, Z) with sizes multiples of the divisor."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected an input of shape (N, {self.in_channels}, X, Y, Z), got {list(x.shape)}"
            )
        for size in x.shape[2:]:
            if size % self.divisor != 0:
                raise ValueError(
                    f"input spatial size {list(x.shape[2:])} is not a multiple of {self.divisor} in every axis "
                    f"(this network has {len(self.encoder)} levels and needs sizes divisible by {self.divisor}; "
                    f"pad or crop the input)"
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips: list[torch.Tensor] = []
        for stage in self.encoder:
            skip, x = stage(x)
            skips.append(skip)
        x = skips.pop()
        for stage in self.decoder:
            x = stage(x, skips)
        return self.head(x)
