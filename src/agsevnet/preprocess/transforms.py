"""Array transforms of preprocessing: the brain mask, the crop box, crop and its exact inverse, the z-score
normalisation, resampling of images, labels and probabilities, and padding with a value per channel.

Pure functions on arrays (no files), used by :func:`agsevnet.preprocess.case.preprocess_case` (the one
preprocessing of training and prediction), by inference (padding, resampling back onto the native crop) and by
training's patch reader (padding).

The crop and normalisation are a few NumPy reductions, written here rather than taken from MONAI
(``generate_spatial_bounding_box``, ``NormalizeIntensity``): measured on a 4x240x240x155 volume the bounding
box is equally fast (14 ms both), importing MONAI costs ~2.8 s in each worker process, and
``NormalizeIntensity(nonzero=True)`` masks each channel by its own non-zero voxels (not the brain mask), leaves
the background as it was and does not return the statistics it used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agsevnet.boxes import Box, bounding_box

NORMALIZATIONS: tuple[str, ...] = ("brain", "image", "brain-clip")
CLIP_PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""``brain-clip``: each modality is clipped to these percentiles of its brain voxels before the z-score."""

DEFAULT_MARGIN = 2
"""Voxels of background kept around the brain's bounding box. A margin adds no information (the background is
constant after normalisation, 0 by default, like the zero padding of convolutions and sliding-window inference), but it keeps the
brain surface off the array edge, so that spatial augmentations that pad from the edge ("border"/"reflection"
padding: small shifts, elastic deformation) pad with background instead of smearing or mirroring brain
tissue. It costs voxels, i.e. cache size and inference time, on every case: measured on the 11 real BraTS cases
(float16), 29.1 MB per case with margin 0, 31.4 MB with 2 (+8 %), 33.8 MB with 4 (+16 %)."""


def brain_mask(images: np.ndarray) -> np.ndarray:
    """Boolean ``(X, Y, Z)`` mask of the voxels where any modality of ``images`` ``(C, X, Y, Z)`` is non-zero."""
    return np.any(np.asarray(images) != 0, axis=0)


def crop_box(mask: np.ndarray, margin: int = DEFAULT_MARGIN) -> Box:
    """Bounding box ``((start, stop), ...)`` of the non-zero voxels of ``mask``, grown by ``margin`` voxels on
    each side and clipped to the volume.

    ``mask`` is ``(X, Y, Z)``, or ``(C, X, Y, Z)`` for the union over channels (e.g. the four modalities).
    A mask without any non-zero voxel gives the whole volume (nothing is cropped).
    """
    mask = np.asarray(mask)
    if mask.ndim == 4:
        mask = np.any(mask != 0, axis=0)
    box = bounding_box(mask, margin)  # the helper every stage shares (agsevnet.boxes)
    return tuple((0, int(s)) for s in mask.shape) if box is None else box


def union_box(a: Box, b: Box) -> Box:
    """The smallest box containing boxes ``a`` and ``b``."""
    return tuple((min(sa, sb), max(ea, eb)) for (sa, ea), (sb, eb) in zip(a, b, strict=True))


def _slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(int(start), int(stop)) for start, stop in box)


def crop(arr: np.ndarray, box: Box) -> np.ndarray:
    """The part of ``arr`` inside ``box`` (a view); ``box`` applies to the last ``len(box)`` axes, so the same
    box crops ``(X, Y, Z)`` labels and ``(C, X, Y, Z)`` images."""
    if arr.ndim < len(box):
        raise ValueError(f"cannot crop a {arr.ndim}D array with a {len(box)}D box")
    return arr[(Ellipsis, *_slices(box))]


def uncrop(arr: np.ndarray, box: Box, shape: Sequence[int], fill: float = 0) -> np.ndarray:
    """Put the cropped ``arr`` back on the original grid: the exact inverse of :func:`crop`.

    ``shape`` is the original spatial shape ``(X, Y, Z)`` (or the full shape, leading axes included); leading
    axes of ``arr`` (channels) are kept. Voxels outside ``box`` get ``fill``. The dtype is kept.
    """
    n = len(box)
    spatial = tuple(int(s) for s in shape)[-n:]
    lead = arr.shape[:-n]
    if len(shape) > n and tuple(shape)[:-n] != lead:
        raise ValueError(f"uncrop: leading axes {lead} of the array do not match shape {tuple(shape)}")
    extent = tuple(stop - start for start, stop in box)
    if arr.shape[-n:] != extent:
        raise ValueError(f"uncrop: array of spatial shape {arr.shape[-n:]} does not fit crop box {box}")
    if any(start < 0 or stop > size for (start, stop), size in zip(box, spatial, strict=True)):
        raise ValueError(f"uncrop: crop box {box} lies outside the shape {spatial}")
    out = np.full(lead + spatial, fill, dtype=arr.dtype)
    out[(Ellipsis, *_slices(box))] = arr
    return out


def normalize(
    images: np.ndarray, mask: np.ndarray | None = None, mode: str = "brain"
) -> tuple[np.ndarray, dict[str, Any]]:
    """z-score each channel of ``images`` ``(C, X, Y, Z)``; returns ``(float32 images, stats)``.

    ``mode="brain"``: mean and standard deviation over the voxels of ``mask`` (default: :func:`brain_mask`),
    voxels outside it set to 0 afterwards. ``mode="brain-clip"``: the same after clipping each modality to the
    :data:`CLIP_PERCENTILES` of its brain voxels (``stats["clip"]``: the values used): a few very bright voxels
    (vessels, fat, artefacts) then move neither the statistics nor the model's input, whatever the scanner's
    raw scale (raw scales differ ~10x between the BraTS 2018 and 2021 files). ``mode="image"``: over all voxels (the paper's eq. 15); ``mask``
    is not used. ``stats`` = ``{"mode", "mean": [per channel], "std": [per channel], "voxels": n}``; a channel
    with no spread (std 0, e.g. an all-zero modality) or no voxels is divided by 1 instead (its ``std`` is
    recorded as 0).
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {mode!r}; expected one of {', '.join(NORMALIZATIONS)}")
    images = np.asarray(images)
    clip = mode == "brain-clip"
    clip_values: list[list[float]] = []
    if mode in ("brain", "brain-clip"):
        mask = brain_mask(images) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != images.shape[1:]:
            raise ValueError(f"mask shape {mask.shape} does not match images {images.shape}")
        voxels = int(mask.sum())
    else:
        voxels = int(np.prod(images.shape[1:]))
    out = np.empty(images.shape, dtype=np.float32)
    means: list[float] = []
    stds: list[float] = []
    for c in range(images.shape[0]):
        channel = images[c]
        values = channel[mask] if mode != "image" else channel
        if clip and values.size:
            lo, hi = (float(v) for v in np.percentile(values, CLIP_PERCENTILES))
            clip_values.append([lo, hi])
            values = np.clip(values, lo, hi)
            channel = np.clip(channel, lo, hi)
        elif clip:
            clip_values.append([0.0, 0.0])
        mean = float(values.mean(dtype=np.float64)) if values.size else 0.0
        std = float(values.std(dtype=np.float64)) if values.size else 0.0
        means.append(mean)
        stds.append(std)
        divisor = std if std > 0 else 1.0
        np.subtract(channel, np.float32(mean), out=out[c], dtype=np.float32)
        out[c] /= np.float32(divisor)
        if mode != "image":
            out[c][~mask] = 0
    stats: dict[str, Any] = {"mode": mode, "mean": means, "std": stds, "voxels": voxels}
    if clip:
        stats["clip"] = clip_values
    return out, stats


def resampled_shape(shape: Sequence[int], zooms: Sequence[float], spacing: Sequence[float]) -> tuple[int, int, int]:
    """The grid size of a ``shape`` volume of voxel size ``zooms`` (mm) resampled to voxel size ``spacing``:
    ``round(shape * zooms / spacing)``, at least 1 per axis."""
    return tuple(max(1, int(round(int(n) * float(z) / float(s)))) for n, z, s in zip(shape, zooms, spacing, strict=True))


def resample_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``image`` ``(C, X, Y, Z)`` on a grid of ``shape`` (float32), axis by axis: area averaging along every axis
    that shrinks (``adaptive_avg_pool3d``: every coarse voxel is the mean of the fine voxels it covers, so no detail
    is aliased and a 2 mm voxel is what a 2 mm scan would measure), then linear interpolation along every axis that
    grows. Both at once when one axis shrinks and another grows (thick slices: 0.5 x 0.5 x 5 mm to 2 mm), so that
    the in-plane detail is averaged, not sampled (``_shrink_then_grow``)."""
    import torch

    shape = tuple(int(s) for s in shape)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    if tuple(x.shape[2:]) == shape:
        return x[0].numpy()
    return _shrink_then_grow(x, shape)[0].numpy()


def _shrink_then_grow(x: Any, shape: tuple[int, int, int]) -> Any:
    """``x`` ``(N, C, X, Y, Z)`` onto ``shape``: area averaging on the axes that shrink, then trilinear interpolation
    (``align_corners=False``, which leaves an axis of unchanged size exactly as it is) on the axes that grow."""
    import torch.nn.functional as F

    between = tuple(min(int(t), int(s)) for t, s in zip(shape, x.shape[2:]))
    if between != tuple(x.shape[2:]):
        x = F.adaptive_avg_pool3d(x, between)
    if between != shape:
        x = F.interpolate(x, size=shape, mode="trilinear", align_corners=False)
    return x


def resample_labels(label: np.ndarray, shape: Sequence[int], num_classes: int = 4) -> np.ndarray:
    """Internal labels ``(X, Y, Z)`` on a grid of ``shape`` (uint8): the class covering most of each coarse
    voxel (area averaging of the one-hot maps, then argmax; ties go to the higher label, i.e. to tumour over
    background and to the inner tumour region)."""
    import torch

    label = np.asarray(label)
    shape = tuple(int(s) for s in shape)
    if label.shape == shape:
        return np.ascontiguousarray(label, dtype=np.uint8)
    one_hot = np.stack([label == c for c in range(num_classes)]).astype(np.float32)
    share = torch.from_numpy(resample_image(one_hot, shape))
    # Reverse-argmax so that exact ties pick the higher label.
    best = (num_classes - 1) - torch.argmax(share.flip(0), dim=0)
    return best.to(torch.uint8).numpy()


def resample_to_shape(values: Any, shape: Sequence[int]) -> Any:
    """Channels ``(C, x, y, z)`` (a torch tensor) trilinearly interpolated onto ``shape``: prediction's way back
    from a coarse grid to the native crop, applied to probabilities before the labels are decided, so that
    boundaries fall between coarse voxels instead of on a 2 mm staircase."""
    import torch.nn.functional as F

    shape = tuple(int(s) for s in shape)
    if tuple(values.shape[1:]) == shape:
        return values
    return F.interpolate(values[None], size=shape, mode="trilinear", align_corners=False)[0]



def pad_channels(arr: Any, pads: Sequence[tuple[int, int]], values: float | Sequence[float] = 0.0) -> Any:
    """``arr`` ``(..., C, X, Y, Z)`` (a NumPy array or a torch tensor, returned as the same kind, dtype and device)
    padded on its last three axes by ``pads`` (``(before, after)`` voxels per axis), every channel with its own
    value: ``values`` one per channel (or one for all). The background of a normalised image is not 0 under
    whole-image normalisation (``-mean / std``, per channel, :func:`agsevnet.preprocess.background_values`), and
    padding must look like it. The one padding of inference (whole pass and sliding window) and of training's
    patch reader."""
    pads = [(int(b), int(a)) for b, a in pads]
    if len(pads) != 3 or min(min(p) for p in pads) < 0:
        raise ValueError(f"pads must be three (before, after) pairs of non-negative voxel counts, got {pads}")
    channels = int(arr.shape[-4])
    fill = [float(v) for v in values] if isinstance(values, Sequence) else [float(values)] * channels
    if len(fill) != channels:
        raise ValueError(f"{len(fill)} padding values for {channels} channels")
    shape = (*arr.shape[:-3], *(int(s) + b + a for s, (b, a) in zip(arr.shape[-3:], pads, strict=True)))
    inside = (Ellipsis, *(slice(b, b + int(s)) for s, (b, _) in zip(arr.shape[-3:], pads, strict=True)))
    if isinstance(arr, np.ndarray):
        out = np.empty(shape, dtype=arr.dtype)
        out[...] = np.asarray(fill, dtype=arr.dtype).reshape(-1, 1, 1, 1)
    else:  # a torch tensor
        import torch

        out = arr.new_empty(shape)
        out[...] = torch.tensor(fill, dtype=arr.dtype, device=arr.device).reshape(-1, 1, 1, 1)
    out[inside] = arr
    return out
