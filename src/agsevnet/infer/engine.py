"""Network inference on one preprocessed image: class probabilities, by sliding window or in one whole pass.

:func:`predict_probabilities` is the one inference routine of agsevnet, used by prediction, by training's
validation and by the robustness experiment. It takes a cropped, normalised image ``(C, x, y, z)`` and
returns softmax probabilities ``(num_classes, x, y, z)`` (float32, on the CPU).

Strategies
    ``sliding``  :func:`sliding_window`, MONAI's sliding-window placement and Gaussian blending of the
                 per-window softmax probabilities (roi and overlap configurable).
    ``whole``    the whole crop, zero-padded (symmetrically) to a multiple of the network's divisor, in one
                 pass: no overlap, so on a CPU it computes 2-4x fewer voxels than the sliding window.
    ``auto``     ``whole`` when the padded crop is at most :data:`MAX_WHOLE_EXTENT` times the window's volume
                 and :func:`estimate_whole_memory` fits the memory budget (:func:`default_memory_budget`),
                 else ``sliding``.

Whole is not always the same function as sliding: GroupNorm/InstanceNorm normalise over the extent they are
given and the guided filters' windows (r = 16) span most of a deep map, so a network fed an input much larger
than its training patches sees statistics it was not trained on. Measured with a cpu-small AGSE-VNet trained
(100 steps, validation Dice 0.72) on 48^3 patches of 96x96x64 phantoms: on four held-out phantoms (crop ~8x the
patch volume) whole and sliding (overlap 0.5) labels disagreed on 49-75% of the tumour voxels (mean Dice 0.67
both, per case differences up to 0.3). Hence ``auto`` keeps whole for crops close to the training extent: the
``default`` preset's 128^3 patches against BraTS brain crops (1.7-2.3x) run whole; the ``paper`` preset's
128x128x64 (3.4x and more) and ``cpu-small``'s 64^3 slide.

Test-time augmentation mirrors the input over up to 8 combinations of the three spatial axes, maps each
prediction back to the original orientation and averages the probabilities.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

STRATEGIES: tuple[str, ...] = ("auto", "sliding", "whole")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")

FLIPS: tuple[tuple[int, ...], ...] = tuple(
    axes for n in range(4) for axes in itertools.combinations((0, 1, 2), n)
)
"""The 8 mirrorings of the three spatial axes, the identity first: (), (0,), (1,), (2,), (0, 1), ... (0, 1, 2)."""

DEFAULT_DIVISOR = 16
MAX_WHOLE_EXTENT = 3.0
"""``auto`` runs one whole pass only over crops (padded) of at most this many times the roi's voxels."""
# Peak memory of a whole pass in units of (first-layer width x padded voxels x 4 bytes). An encoder-decoder in
# inference mode keeps the skips of every level (about 1.15x the first level's width in all) and a few working
# tensors of the current level alive. Measured for the default AGSE-VNet (width 20) on a 144x176x160 brain
# crop: 2.2 GB in fp32 (factor 6.0: its guided filters work in float32 at full resolution) and 1.9 GB in bf16,
# so the estimate counts 4-byte elements whatever the precision.
_ACTIVATION_FACTOR = 6.0


def tta_flips(tta: bool | int | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """The spatial-axis flips for ``tta``: False -> identity only, True -> all 8, an int n -> the first n of
    :data:`FLIPS`, or an explicit list of axis tuples (axes in 0..2)."""
    if tta is False or tta is None:
        return [()]
    if tta is True:
        return list(FLIPS)
    if isinstance(tta, int):
        if not 1 <= tta <= len(FLIPS):
            raise ValueError(f"tta must be between 1 and {len(FLIPS)} flips, got {tta}")
        return list(FLIPS[:tta])
    flips = [tuple(sorted({int(a) for a in axes})) for axes in tta]
    if not flips or any(a not in (0, 1, 2) for axes in flips for a in axes):
        raise ValueError(f"tta flips must be tuples of spatial axes 0, 1, 2; got {tta!r}")
    return flips


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), which oneDNN uses for
    convolutions; without it bf16 is emulated and slower than fp32."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """``auto`` -> bf16 on a CUDA GPU that supports it (else fp16) and on a CPU with native bf16 (else fp32)."""
    import torch

    precision = precision or "auto"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def first_layer_width(model: nn.Module) -> int:
    """Output channels of the model's first convolution (its full-resolution width); 32 if it has none."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            return int(module.out_channels)
    return 32


def model_divisor(model: nn.Module, divisor: int | None = None) -> int:
    """The multiple every spatial size of a whole-pass input must be: ``divisor`` if given, else the model's
    ``required_divisor`` attribute (set by :func:`agsevnet.models.build_model`), else 16."""
    if divisor is not None:
        return int(divisor)
    return int(getattr(model, "required_divisor", DEFAULT_DIVISOR) or DEFAULT_DIVISOR)


def padded_shape(shape: Sequence[int], divisor: int) -> tuple[int, ...]:
    """``shape`` rounded up to multiples of ``divisor``."""
    return tuple(-(-int(s) // divisor) * divisor for s in shape)


def estimate_whole_memory(model: nn.Module, shape: Sequence[int], *, divisor: int | None = None) -> int:
    """Estimated peak bytes of one whole pass over a crop of spatial ``shape``:
    ``_ACTIVATION_FACTOR x first-layer width x padded voxels x 4 bytes`` (activations), plus the float32
    input, logits and probabilities (16 values per voxel)."""
    import math

    voxels = math.prod(padded_shape(shape, model_divisor(model, divisor)))
    return int((_ACTIVATION_FACTOR * first_layer_width(model) + 16) * voxels * 4)


def default_memory_budget(device: torch.device | str) -> int:
    """Bytes a whole pass may use: 80% of the free GPU memory, or half the available system memory
    (MemAvailable), at most 6 GiB on a CPU so a prediction stays a good neighbour."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(min(0.5 * available, 6 * 1024**3))


def choose_strategy(model: nn.Module, shape: Sequence[int], roi_size: Sequence[int], *, strategy: str = "auto",
                    device: Any = "cpu", divisor: int | None = None, memory_budget: int | None = None) -> str:
    """``sliding`` or ``whole`` for a crop of spatial ``shape`` and a window ``roi_size`` (the training patch
    size; see the module docstring)."""
    import math

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy != "auto":
        return strategy
    extent = math.prod(padded_shape(shape, model_divisor(model, divisor))) / math.prod(int(r) for r in roi_size)
    if extent > MAX_WHOLE_EXTENT:
        return "sliding"
    budget = default_memory_budget(device) if memory_budget is None else memory_budget
    need = estimate_whole_memory(model, shape, divisor=divisor)
    return "whole" if need <= budget else "sliding"


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """First voxels of the windows along one axis of ``size`` voxels (``size >= roi``), as MONAI's
    ``dense_patch_slices`` places them: every ``int(roi * (1 - overlap))`` voxels (at least 1; one window when the
    axis is exactly ``roi``), the last window moved back to end at the edge."""
    interval = roi if roi == size else max(1, int(roi * (1 - overlap)))
    count = next((d for d in range(-(-size // interval)) if d * interval + roi >= size), 0) + 1
    return [d * interval - max(d * interval + roi - size, 0) for d in range(count)]


def gaussian_importance(roi: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """The window weights of Gaussian blending: a separable Gaussian of sigma ``sigma_scale * roi`` per axis,
    centred on the window, clamped below at its smallest value (at least 1e-3), as MONAI's
    ``compute_importance_map(mode="gaussian")``."""
    import torch

    weights = None
    for i, n in enumerate(roi):
        x = torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float)
        x = torch.exp(x**2 / (-2 * (n * sigma_scale) ** 2))
        weights = x if i == 0 else weights.unsqueeze(-1) * x[(None,) * i]
    return weights.clamp_(min=max(float(weights.min()), 1e-3))


def sliding_window(batch: torch.Tensor, roi: Sequence[int], network, *, overlap: float = 0.5, mode: str = "gaussian",
                   sw_batch_size: int = 1, pad_value: float | Sequence[float] = 0.0) -> torch.Tensor:
    """Sliding-window inference of ``network`` over ``batch`` (1, C, x, y, z): windows of ``roi`` placed as MONAI's
    :func:`~monai.inferers.sliding_window_inference` places them, outputs blended with Gaussian (or ``"constant"``)
    weights and divided by the summed weights; axes shorter than the window are padded symmetrically (with
    ``pad_value``, per channel: the image's background) and the padding is cut off again.

    Written here rather than called from MONAI (the outputs agree to 1e-6, ``tests/test_engine.py``): importing
    ``monai.inferers`` costs 2.5 s per process on this project's 2-core CPU (measured 2026-12-01), half of a whole
    prediction with the bundled model; and MONAI pads with one value for every channel.
    """
    import torch

    from agsevnet.preprocess.transforms import pad_channels

    roi = tuple(int(r) for r in roi)
    spatial = tuple(int(s) for s in batch.shape[2:])
    size = tuple(max(s, r) for s, r in zip(spatial, roi))
    before = [(t - s) // 2 for s, t in zip(spatial, size)]
    if size != spatial:
        batch = pad_channels(batch, [(b, t - s - b) for s, t, b in zip(spatial, size, before)], pad_value)
    if mode == "gaussian":
        weights = gaussian_importance(roi).to(batch.device)
    elif mode == "constant":
        weights = torch.ones(roi, device=batch.device)
    else:
        raise ValueError(f"blending mode must be gaussian or constant, got {mode!r}")
    starts = [window_starts(n, r, overlap) for n, r in zip(size, roi)]
    corners = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
    out = count = None
    for i in range(0, len(corners), max(1, int(sw_batch_size))):
        group = corners[i:i + max(1, int(sw_batch_size))]
        windows = [tuple(slice(s, s + r) for s, r in zip(corner, roi)) for corner in group]
        prob = network(torch.cat([batch[(slice(None), slice(None), *w)] for w in windows]))
        if out is None:
            out = torch.zeros((1, prob.shape[1], *size), dtype=torch.float32, device=batch.device)
            count = torch.zeros(size, dtype=torch.float32, device=batch.device)
        for j, w in enumerate(windows):
            out[(slice(None), slice(None), *w)] += prob[j:j + 1].float() * weights
            count[w] += weights
    out /= count
    return out[(slice(None), slice(None), *(slice(b, b + s) for b, s in zip(before, spatial)))]


def _autocast(device: torch.device, precision: str):
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def predict_probabilities(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    *,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    strategy: str = "auto",
    tta: bool | int | Sequence[Sequence[int]] = False,
    device: torch.device | str = "cpu",
    amp: str | None = None,
    sw_batch_size: int = 1,
    mode: str = "gaussian",
    divisor: int | None = None,
    memory_budget: int | None = None,
    channels_last: bool = False,
    activation: str = "softmax",
    pad_value: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Softmax probabilities ``(num_classes, x, y, z)`` float32 (CPU) of ``model`` on one image ``(C, x, y, z)``
    (``activation="sigmoid"``: independent per-channel probabilities, for region-based models whose channels are
    the nested regions WT, TC, ET).

    ``amp`` is the precision: ``None``/``"auto"`` (see :func:`resolve_precision`), ``"fp32"``, ``"bf16"`` or
    ``"fp16"`` (autocast). ``strategy``, ``tta``: see the module docstring; ``roi_size``, ``overlap``,
    ``sw_batch_size`` and ``mode`` configure the sliding window. ``divisor`` overrides the model's required
    divisor for the whole pass, ``memory_budget`` (bytes) the budget ``auto`` compares against.
    ``channels_last`` feeds the network channels-last-3d inputs (pair it with a model converted by
    ``model.to(memory_format=torch.channels_last_3d)``). The model runs in eval mode under
    :func:`torch.inference_mode`; its train/eval mode is restored afterwards.
    """
    import torch

    from agsevnet.preprocess.transforms import pad_channels

    device = torch.device(device)
    precision = resolve_precision(amp, device)
    import numpy as np

    if isinstance(image, np.ndarray) and not image.flags.writeable:
        image = np.array(image)  # a read-only memory map: torch would warn about (not) writing into it
    x = torch.as_tensor(image)
    if x.ndim != 4:
        raise ValueError(f"expected one image (C, x, y, z), got shape {tuple(x.shape)}")
    spatial = tuple(int(s) for s in x.shape[1:])
    chosen = choose_strategy(model, spatial, roi_size, strategy=strategy, device=device, divisor=divisor,
                             memory_budget=memory_budget)
    flips = tta_flips(tta)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format

    if activation not in ("softmax", "sigmoid"):
        raise ValueError(f"activation must be softmax or sigmoid, got {activation!r}")

    def network(batch: torch.Tensor) -> torch.Tensor:
        with _autocast(device, precision):
            logits = model(batch.contiguous(memory_format=memory_format))
        return torch.sigmoid(logits.float()) if activation == "sigmoid" else torch.softmax(logits.float(), dim=1)

    if chosen == "whole":
        target = padded_shape(spatial, model_divisor(model, divisor))
        pads = [((t - s) // 2, t - s - (t - s) // 2) for s, t in zip(spatial, target)]
        region = tuple(slice(b, b + s) for (b, _), s in zip(pads, spatial))

        def run(batch: torch.Tensor) -> torch.Tensor:
            # pad_value: the image's background per channel (0, or -mean/std under whole-image normalisation)
            out = network(pad_channels(batch, pads, pad_value))
            return out[(slice(None), slice(None), *region)]
    else:
        roi = tuple(int(r) for r in roi_size)

        def run(batch: torch.Tensor) -> torch.Tensor:
            return sliding_window(batch, roi, network, overlap=overlap, mode=mode, sw_batch_size=sw_batch_size,
                                  pad_value=pad_value)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            batch = x.to(device=device, dtype=torch.float32)[None]
            total = None
            for axes in flips:
                dims = [a + 2 for a in axes]
                inp = torch.flip(batch, dims) if dims else batch
                prob = run(inp)
                prob = torch.flip(prob, dims) if dims else prob
                total = prob if total is None else total.add_(prob)
                del inp, prob
            if len(flips) > 1:
                total.div_(len(flips))
            return total[0].float().cpu().contiguous()
    finally:
        model.train(was_training)
