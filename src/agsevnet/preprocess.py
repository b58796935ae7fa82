"""Preprocessing: crop to the brain, z-score each modality, and the on-disk cache of preprocessed cases.

:func:`preprocess_case` is the one preprocessing used by training *and* prediction: prediction runs it on a
loaded case, predicts on the cropped, normalised image and puts the result back on the input grid with
:func:`uncrop` (``uncrop(output, pp.box, pp.original_shape)``).

Steps, per case:

1. Brain mask = voxels where any modality is non-zero (BraTS images are skull-stripped: background is exactly
   0). Crop box = bounding box of the mask (and of the labelled voxels, so that labels are never cut off) plus
   ``margin`` voxels, clipped to the volume.
2. Normalise each modality to zero mean, unit standard deviation: over the brain voxels, with the background
   set to 0 afterwards (``"brain"``, the default, as nnU-Net does), or over the whole uncropped image
   (``"image"``, the paper's eq. 15). The statistics used are recorded.
3. Optionally (``spacing``, e.g. ``(2, 2, 2)`` mm) resample the cropped image to a coarser grid by area
   averaging (:func:`resample_image`), and the labels by a majority vote over the same cells
   (:func:`resample_labels`); the native-resolution cropped labels are kept beside them, because evaluation
   (training's validation included) always scores on the input grid. Prediction resamples the network's
   probabilities back onto the native crop before deciding labels (:func:`resample_to_shape`).
4. Store ``float16`` (default) or ``float32``. z-scores fit float16 whatever the input: by Samuelson's
   inequality a value is at most sqrt(n - 1) standard deviations from the mean of the n values it was
   normalised with (under 3,000 for a 240x240x155 volume), far below float16's maximum of 65,504; the
   rounding error (relative 2^-11) is far below MRI noise.

Cache layout (:func:`build_cache`): ``CACHE/<case_id>/image.npy`` ``(4, x, y, z)`` (memory-mappable),
``label.npy`` (uint8, internal labels; absent for unlabelled cases) and ``meta.json`` (written last: a case
without it is not in the cache). A cached case is reused while its meta records the same format version,
normalisation, margin and dtype and its source files have the same paths, sizes and modification times;
otherwise it is rebuilt.

The crop and normalisation are a few NumPy reductions, written here rather than taken from MONAI
(``generate_spatial_bounding_box``, ``NormalizeIntensity``): measured on a 4x240x240x155 volume the bounding
box is equally fast (14 ms both), importing MONAI costs ~2.8 s in each worker process, and
``NormalizeIntensity(nonzero=True)`` masks each channel by its own non-zero voxels (not the brain mask), leaves
the background as it was and does not return the statistics it used.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from agsevnet import MODALITIES, __version__
from agsevnet.boxes import Box, bounding_box
from agsevnet.data.case import Case, CaseSpec, Geometry
from agsevnet.errors import AgsevnetError, ConfigError, DataError
from agsevnet.fsutil import atomic_path, write_json_atomic
from agsevnet.parallel import worker_count

FORMAT = "agsevnet-preprocessed"
FORMAT_VERSION = 2
"""2: ``spacing`` (optional resampling), ``label_native.npy`` and the content hash ``image_sha1``."""
NORMALIZATIONS: tuple[str, ...] = ("brain", "image", "brain-clip")
CLIP_PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""``brain-clip``: each modality is clipped to these percentiles of its brain voxels before the z-score."""
DTYPES: tuple[str, ...] = ("float16", "float32")

DEFAULT_MARGIN = 2
"""Voxels of background kept around the brain's bounding box. A margin adds no information (the background is
constant after normalisation, 0 by default, like the zero padding of convolutions and sliding-window inference), but it keeps the
brain surface off the array edge, so that spatial augmentations that pad from the edge ("border"/"reflection"
padding: small shifts, elastic deformation) pad with background instead of smearing or mirroring brain
tissue. It costs voxels, i.e. cache size and inference time, on every case: measured on the 11 real BraTS cases
(float16), 29.1 MB per case with margin 0, 31.4 MB with 2 (+8 %), 33.8 MB with 4 (+16 %)."""

IMAGE_FILE = "image.npy"
LABEL_FILE = "label.npy"
NATIVE_LABEL_FILE = "label_native.npy"
META_FILE = "meta.json"



# --------------------------------------------------------------------------------------------- pure functions


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


def _image_hash(image: np.ndarray) -> str:
    """SHA-1 of an image's bytes: the same scan under two names (BraTS 2021 and 2023 copies of one patient)
    gets the same hash, which lets training count a patient once and keep its copies in one fold."""
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------- one case


@dataclass
class Preprocessed:
    """A preprocessed case: cropped, normalised image ``(4, x, y, z)`` (float16/float32), cropped internal
    labels (uint8, or None) and the JSON-able ``meta`` needed to put outputs back on the input grid."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    meta: dict[str, Any]
    label_native: np.ndarray | None = None
    """Cropped labels on the input grid when the image was resampled (``meta["spacing"]``); else ``label``."""

    def __post_init__(self) -> None:
        if self.label_native is None and not self.meta.get("spacing"):
            self.label_native = self.label

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """Spatial shape of the brain crop on the input grid (what the prediction is resampled back to)."""
        return tuple(int(b) - int(a) for a, b in self.meta["crop_box"])

    @property
    def box(self) -> Box:
        return tuple((int(a), int(b)) for a, b in self.meta["crop_box"])

    @property
    def original_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.meta["original_shape"])

    @property
    def geometry(self) -> Geometry:
        return Geometry.from_json(self.meta["geometry"])


def _check_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise ConfigError(f"spacing must be null or three positive numbers (mm), got {spacing!r}")
    return values


def _check_settings(normalization: str, margin: int, dtype: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; expected one of {', '.join(NORMALIZATIONS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if not isinstance(margin, int) or isinstance(margin, bool) or margin < 0:
        raise ConfigError(f"margin must be a non-negative integer, got {margin!r}")


def preprocess_case(
    case: Case, normalization: str = "brain", margin: int = DEFAULT_MARGIN, dtype: str = "float16",
    spacing: Sequence[float] | None = None,
) -> Preprocessed:
    """Crop ``case`` to its brain (plus ``margin``), normalise it, optionally resample it to voxels of
    ``spacing`` mm, and convert it to ``dtype``.

    With ``spacing``, ``image`` and ``label`` are on the coarse grid and ``label_native`` holds the cropped labels
    on the input grid (``meta["crop_shape"]``); without it ``label_native`` is ``label``. The input arrays are not
    modified. Raises :class:`DataError` (naming the case folder) for images that
    are not ``(4, X, Y, Z)``, hold NaN/Inf, or labels whose shape differs from the images.
    """
    _check_settings(normalization, margin, dtype)
    spacing = _check_spacing(spacing)
    where = case.spec.folder or case.case_id
    images = np.asarray(case.images)
    if images.ndim != 4 or images.shape[0] != len(MODALITIES):
        raise DataError(f"case {case.case_id}: expected images of shape (4, X, Y, Z), got {images.shape}", where)
    if not np.isfinite(images).all():
        raise DataError(f"case {case.case_id}: images contain NaN or Inf voxels", where)
    shape = images.shape[1:]
    if case.label is not None and case.label.shape != shape:
        raise DataError(f"case {case.case_id}: label shape {case.label.shape} differs from images {shape}", where)

    mask = brain_mask(images)
    box = crop_box(mask, margin)
    if case.label is not None and case.label.any():
        # Labelled voxels outside the brain (none in BraTS) would otherwise be cut off by the crop.
        box = union_box(box, crop_box(case.label, margin))
    normalized, stats = normalize(images, mask, normalization)
    cropped = crop(normalized, box)
    crop_shape = tuple(int(s) for s in cropped.shape[1:])
    digest = _image_hash(np.ascontiguousarray(cropped, dtype=dtype))
    label_native = None
    if case.label is not None:
        label_native = np.ascontiguousarray(crop(np.asarray(case.label), box), dtype=np.uint8)
    label = label_native
    if spacing is not None:
        target = resampled_shape(crop_shape, case.geometry.zooms, spacing)
        cropped = resample_image(cropped, target)
        if label_native is not None:
            label = resample_labels(label_native, target)
    image = np.ascontiguousarray(cropped, dtype=dtype)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "agsevnet_version": __version__,
        "case_id": case.case_id,
        "scheme": case.spec.scheme,
        "label_convention": case.spec.label_convention,
        "channels": list(MODALITIES),
        "has_label": label is not None,
        "geometry": case.geometry.to_json(),
        "original_shape": [int(s) for s in shape],
        "crop_box": [[int(a), int(b)] for a, b in box],
        "image_shape": [int(s) for s in image.shape],
        "margin": int(margin),
        "dtype": dtype,
        "spacing": None if spacing is None else list(spacing),
        "crop_shape": list(crop_shape),
        "image_sha1": digest,
        "normalization": stats,
        "brain_voxels": int(mask.sum()),
    }
    if label is not None:
        meta["label_voxels"] = [int(n) for n in np.bincount(label.ravel(), minlength=4)]
    return Preprocessed(case.case_id, image, label, meta, label_native)


# --------------------------------------------------------------------------------------------- the cache


@dataclass
class CaseFailure:
    """A case that could not be cached: the file concerned and what is wrong."""

    case_id: str
    path: str | None  # None when ``reason`` already names the file (problems found by discovery)
    reason: str

    def __str__(self) -> str:
        return self.reason if self.path is None else f"{self.path}: {self.reason}"


@dataclass
class CacheReport:
    """What one :func:`update_cache` run did. ``case_ids``: every case now valid in the cache, input order."""

    cache_dir: Path
    case_ids: list[str] = field(default_factory=list)
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[CaseFailure] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes on disk per cached case
    seconds: float = 0.0

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())


def _sources(spec: CaseSpec) -> list[dict[str, Any]]:
    """The files a case is read from, with size and modification time (what cache validity is checked on)."""
    entries: list[tuple[str, Path, int | None]] = [
        (name, spec.images[name].path, spec.images[name].channel) for name in MODALITIES if name in spec.images
    ]
    if spec.label is not None:
        entries.append(("label", spec.label, None))
    out = []
    for role, path, channel in entries:
        path = Path(path).resolve()
        st = path.stat()
        out.append({"role": role, "path": str(path), "channel": channel, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _settings(normalization: str, margin: int, dtype: str, spacing: Sequence[float] | None = None) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "normalization": normalization, "margin": margin, "dtype": dtype,
            "spacing": None if spacing is None else [float(v) for v in spacing]}


def _read_meta(case_dir: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((case_dir / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _os_error(exc: OSError, path: Path) -> DataError:
    """A :class:`DataError` carrying the operating system's own reason (not a guess about the cache)."""
    import errno
    import resource

    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        reason += f" (this process may open {soft}: raise it with `ulimit -n`, or use fewer loader processes)"
    return DataError(f"cannot open the cached array: {reason}", Path(exc.filename or path))


def _open_arrays(case_dir: Path, meta: dict[str, Any], mmap: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The image and label arrays of a cached case (read-only memory maps with ``mmap``), checked against the
    shapes and dtypes ``meta`` records.

    Raises :class:`DataError` naming the file: a missing, incomplete or mismatching array says so and asks
    for a rebuild; any other operating-system error (too many open files, permissions, I/O) is reported as
    what it is, since rebuilding the cache would not help.
    """
    mode = "r" if mmap else None
    arrays: list[np.ndarray | None] = []
    try:
        expected = [(IMAGE_FILE, list(meta["image_shape"]), np.dtype(meta["dtype"]))]
        if meta["has_label"]:
            expected.append((LABEL_FILE, list(meta["image_shape"][1:]), np.dtype(np.uint8)))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"meta.json lacks the array shapes or dtype ({exc}); rebuild the cache", case_dir / META_FILE) from exc
    for name, shape, dtype in expected:
        path = case_dir / name
        try:
            arr = np.load(path, mmap_mode=mode)
        except FileNotFoundError as exc:
            raise DataError("cached array missing; rebuild the cache (`agsevnet preprocess`)", path) from exc
        except OSError as exc:
            raise _os_error(exc, path) from exc
        except ValueError as exc:  # truncated file or bad header
            raise DataError(f"cached array incomplete or unreadable ({exc}); rebuild the cache", path) from exc
        if list(arr.shape) != shape or arr.dtype != dtype:
            raise DataError(
                f"cached array of shape {list(arr.shape)} {arr.dtype}, but meta.json records {shape} {dtype}; "
                "rebuild the cache", path)
        arrays.append(arr)
    if not meta["has_label"]:
        if (case_dir / LABEL_FILE).exists():
            raise DataError("labels present but meta.json says the case has none; rebuild the cache",
                            case_dir / LABEL_FILE)
        arrays.append(None)
    return arrays[0], arrays[1]  # type: ignore[return-value]


def _arrays_match(case_dir: Path, meta: dict[str, Any]) -> bool:
    """The npy files exist, are complete and have the shapes and dtypes ``meta`` records."""
    try:
        _open_arrays(case_dir, meta, mmap=True)
    except DataError:
        return False
    return True


def _is_valid(case_dir: Path, settings: dict[str, Any], sources: list[dict[str, Any]]) -> bool:
    meta = _read_meta(case_dir)
    if meta is None:
        return False
    recorded = {
        "format_version": meta.get("format_version"),
        "normalization": (meta.get("normalization") or {}).get("mode"),
        "margin": meta.get("margin"),
        "dtype": meta.get("dtype"),
        "spacing": meta.get("spacing"),
    }
    return recorded == settings and meta.get("sources") == sources and _arrays_match(case_dir, meta)


def _write_cached(pp: Preprocessed, case_dir: Path) -> None:
    """Write ``pp`` into ``case_dir`` so that a half-written case is never taken as valid: the old
    ``meta.json`` is removed first, each array is written to a temporary file and renamed, and the new
    ``meta.json`` comes last."""
    case_dir.mkdir(parents=True, exist_ok=True)
    (case_dir / META_FILE).unlink(missing_ok=True)
    with atomic_path(case_dir / IMAGE_FILE) as tmp:
        np.save(tmp, pp.image)
    if pp.label is not None:
        with atomic_path(case_dir / LABEL_FILE) as tmp:
            np.save(tmp, pp.label)
    else:
        (case_dir / LABEL_FILE).unlink(missing_ok=True)
    if pp.label_native is not None and pp.meta.get("spacing"):
        with atomic_path(case_dir / NATIVE_LABEL_FILE) as tmp:
            np.save(tmp, pp.label_native)
    else:
        (case_dir / NATIVE_LABEL_FILE).unlink(missing_ok=True)
    write_json_atomic(case_dir / META_FILE, pp.meta)


def _cache_one(
    spec: CaseSpec, case_dir: Path, normalization: str, margin: int, dtype: str, sources: list[dict[str, Any]],
    spacing: Sequence[float] | None = None,
) -> tuple[str, str] | None:
    """Load, preprocess and write one case (runs in a worker process). Returns None, or (path, reason)."""
    from agsevnet.data.io import load_case

    try:
        case = load_case(spec)
        pp = preprocess_case(case, normalization=normalization, margin=margin, dtype=dtype, spacing=spacing)
        del case
        pp.meta["sources"] = sources
        _write_cached(pp, case_dir)
    except AgsevnetError as exc:
        return (str(exc.path or spec.folder or spec.case_id), exc.message)
    except MemoryError:
        return (str(spec.folder or spec.case_id), "out of memory while preprocessing (try fewer --workers)")
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop the others; the reason is reported
        return (str(spec.folder or spec.case_id), f"{type(exc).__name__}: {exc}")
    return None


def _case_dir(cache_dir: Path, case_id: str) -> Path:
    if not case_id or case_id.startswith(".") or "/" in case_id or "\\" in case_id:
        raise DataError(f"case id {case_id!r} cannot be used as a cache folder name", cache_dir)
    return cache_dir / case_id


def case_size(cache_dir: str | Path, case_id: str) -> int:
    """Bytes on disk of one cached case (image.npy + label.npy + meta.json)."""
    case_dir = Path(cache_dir) / case_id
    return sum(p.stat().st_size for p in (case_dir / n for n in (IMAGE_FILE, LABEL_FILE, META_FILE)) if p.exists())


def update_cache(
    data: str | Path | Iterable[CaseSpec],
    cache_dir: str | Path,
    *,
    normalization: str = "brain",
    margin: int = DEFAULT_MARGIN,
    dtype: str = "float16",
    spacing: Sequence[float] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> CacheReport:
    """Bring the cache in ``cache_dir`` up to date for a dataset folder (any layout
    :func:`agsevnet.data.layouts.discover` knows) or a list of case specs, and report what was done.

    Valid cached cases are skipped (rebuilt with ``overwrite``); the others are built in parallel worker
    processes (``workers``, default: one per case up to the CPU count) with a progress bar. A case that fails
    is recorded in ``report.failed`` (file and reason) and the others are still cached; nothing is raised for
    it (see :func:`build_cache`). Raises :class:`DataError` when the dataset cannot be found, and
    :class:`ConfigError` for bad settings or a cache folder that holds the dataset's own files.
    """
    _check_settings(normalization, margin, dtype)
    spacing = _check_spacing(spacing)
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    if isinstance(data, (str, Path)):
        from agsevnet.data.layouts import discover

        specs = discover(Path(data))
    else:
        specs = list(data)
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ConfigError("the cache folder is a file", cache_dir)
    report = CacheReport(cache_dir=cache_dir)
    settings = _settings(normalization, margin, dtype, spacing)

    todo: list[tuple[CaseSpec, Path, list[dict[str, Any]]]] = []
    seen: set[str] = set()
    for spec in specs:
        where = str(spec.folder or spec.case_id)
        if spec.case_id in seen:
            report.failed.append(CaseFailure(spec.case_id, where, f"duplicate case id {spec.case_id!r} in the dataset"))
            continue
        seen.add(spec.case_id)
        if spec.problems:
            report.failed.append(CaseFailure(spec.case_id, None, "; ".join(spec.problems)))
            continue
        try:
            case_dir = _case_dir(cache_dir, spec.case_id)
            sources = _sources(spec)
        except DataError as exc:
            report.failed.append(CaseFailure(spec.case_id, where, exc.message))
            continue
        except OSError as exc:
            report.failed.append(CaseFailure(spec.case_id, str(exc.filename or where), exc.strerror or str(exc)))
            continue
        resolved_dir = case_dir.resolve()
        if any(Path(s["path"]).is_relative_to(resolved_dir) for s in sources):
            raise ConfigError(
                f"the cache folder would write into case {spec.case_id}'s own folder; choose another cache folder",
                cache_dir,
            )
        if not overwrite and _is_valid(case_dir, settings, sources):
            report.skipped.append(spec.case_id)
        else:
            todo.append((spec, case_dir, sources))

    failures: dict[str, tuple[str, str] | None] = {}
    if todo:
        cache_dir.mkdir(parents=True, exist_ok=True)
        n_workers = min(workers or worker_count(len(todo)), len(todo))  # see agsevnet.parallel
        failures = _run(todo, normalization, margin, dtype, n_workers, progress, len(specs), spacing)
    for spec, _, _ in todo:
        failure = failures.get(spec.case_id)
        if failure is None:
            report.built.append(spec.case_id)
        else:
            report.failed.append(CaseFailure(spec.case_id, failure[0], failure[1]))
    ok = set(report.built) | set(report.skipped)
    report.case_ids = [cid for cid in dict.fromkeys(s.case_id for s in specs) if cid in ok]
    report.sizes = {cid: case_size(cache_dir, cid) for cid in report.case_ids}
    report.seconds = time.perf_counter() - start
    return report


def _run(
    todo: list[tuple[CaseSpec, Path, list[dict[str, Any]]]],
    normalization: str,
    margin: int,
    dtype: str,
    n_workers: int,
    progress: bool,
    total: int,
    spacing: Sequence[float] | None = None,
) -> dict[str, tuple[str, str] | None]:
    """Build the cases of ``todo``, in-process for one worker, else in a process pool; progress over all
    ``total`` cases (those not in ``todo`` are already valid or already failed)."""
    from agsevnet.progress import progress_bar

    bar = progress_bar(total=total, initial=total - len(todo), desc="preprocess", unit="case", disable=not progress,
                       file=sys.stderr)
    results: dict[str, tuple[str, str] | None] = {}
    try:
        if n_workers == 1:
            for spec, case_dir, sources in todo:
                results[spec.case_id] = _cache_one(spec, case_dir, normalization, margin, dtype, sources, spacing)
                bar.update(1)
            return results
        # "spawn", not "fork": workers start clean even when the caller already runs threads (torch, tqdm),
        # where fork can deadlock; the price is Python's usual `if __name__ == "__main__":` guard in scripts.
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=get_context("spawn")) as pool:
            pending = {
                pool.submit(_cache_one, spec, case_dir, normalization, margin, dtype, sources, spacing): spec
                for spec, case_dir, sources in todo
            }
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    spec = pending.pop(future)
                    try:
                        results[spec.case_id] = future.result()
                    except BrokenProcessPool:
                        results[spec.case_id] = (
                            str(spec.folder or spec.case_id),
                            "a worker process died: out of memory (try fewer workers), or a Python script "
                            "calling this without `if __name__ == '__main__':` (workers are started with 'spawn')",
                        )
                    bar.update(1)
    finally:
        bar.close()
    return results


def build_cache(
    data: str | Path | Iterable[CaseSpec],
    cache_dir: str | Path,
    *,
    normalization: str = "brain",
    margin: int = DEFAULT_MARGIN,
    dtype: str = "float16",
    spacing: Sequence[float] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[str]:
    """:func:`update_cache`, returning the ids of the cases valid in the cache (input order); raises
    :class:`DataError` listing every case that failed (after caching all the others)."""
    report = update_cache(
        data,
        cache_dir,
        normalization=normalization,
        margin=margin,
        dtype=dtype,
        spacing=spacing,
        workers=workers,
        overwrite=overwrite,
        progress=progress,
    )
    if report.failed:
        lines = "; ".join(str(f) for f in report.failed)
        raise DataError(f"{len(report.failed)} case(s) could not be preprocessed: {lines}", cache_dir)
    return report.case_ids


def list_cached(cache_dir: str | Path) -> list[str]:
    """Ids of the complete cases in ``cache_dir`` (those with a ``meta.json`` of this format), sorted."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    return sorted(
        d.name for d in cache_dir.iterdir() if d.is_dir() and not d.name.startswith(".") and _read_meta(d) is not None
    )


def load_cached(cache_dir: str | Path, case_id: str, mmap: bool = True) -> Preprocessed:
    """Load one cached case; with ``mmap`` the image and labels are read-only memory maps (nothing is read
    until used; each map holds one file descriptor until it is dropped). Raises :class:`DataError` naming the
    file when the case is missing or incomplete, or with the operating system's reason when a file cannot be
    opened (e.g. too many open files)."""
    case_dir = _case_dir(Path(cache_dir), case_id)
    meta_path = case_dir / META_FILE
    if not meta_path.is_file():
        raise DataError(f"case {case_id} is not in the cache (run `agsevnet preprocess` first)", meta_path)
    try:
        text = meta_path.read_text()
    except OSError as exc:
        raise _os_error(exc, meta_path) from exc
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    if not (isinstance(meta, dict) and meta.get("format") == FORMAT):
        raise DataError("not a readable agsevnet preprocessing record", meta_path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"cache format version {meta.get('format_version')} (this agsevnet reads {FORMAT_VERSION}); "
            "rebuild it with `agsevnet preprocess`",
            meta_path,
        )
    image, label = _open_arrays(case_dir, meta, mmap)
    return Preprocessed(case_id, image, label, meta)


def background_values(meta: dict[str, Any]) -> list[float]:
    """The value the background (voxels 0 in every input modality) has in a preprocessed image, per channel,
    from its ``meta``: 0 under ``brain`` normalisation; ``-mean / std`` under ``image`` normalisation (the
    paper's), computed as :func:`normalize` does and rounded to the cache dtype, so it equals the stored
    background exactly. What padding (training patches, the whole-image pass) should fill with."""
    stats = meta["normalization"]
    if stats.get("mode", "brain") != "image":
        return [0.0] * len(stats["mean"])
    dtype = np.dtype(meta.get("dtype", "float32"))
    out = []
    for mean, std in zip(stats["mean"], stats["std"], strict=True):
        value = (np.float32(0) - np.float32(mean)) / np.float32(std if std > 0 else 1.0)
        out.append(float(np.asarray(value, dtype=np.float32).astype(dtype)))
    return out


def load_native_label(cache_dir: str | Path, case_id: str, mmap: bool = True) -> np.ndarray | None:
    """The cropped labels of a cached case on its input grid (what validation scores against): the
    ``label_native.npy`` of a resampled case, else its ``label.npy``; None for an unlabelled case."""
    case_dir = _case_dir(Path(cache_dir), case_id)
    meta = _read_meta(case_dir)
    if meta is None or not meta.get("has_label"):
        return None
    name = NATIVE_LABEL_FILE if meta.get("spacing") else LABEL_FILE
    try:
        return np.load(case_dir / name, mmap_mode="r" if mmap else None)
    except OSError as exc:
        raise DataError(f"cannot read the cached labels: {exc.strerror or exc}", case_dir / name) from None
