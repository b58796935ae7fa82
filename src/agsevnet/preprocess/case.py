"""One case through preprocessing: :func:`preprocess_case`, the one preprocessing used by training *and*
prediction, and :class:`Preprocessed`, what it gives (and what the cache stores).

Prediction runs it on a loaded case, predicts on the cropped, normalised image and puts the result back on the input
grid with :func:`~agsevnet.preprocess.transforms.uncrop` (``uncrop(output, pp.box, pp.original_shape)``).

Steps, per case:

1. Brain mask = voxels where any modality is non-zero (BraTS images are skull-stripped: background is exactly
   0). Crop box = bounding box of the mask (and of the labelled voxels, so that labels are never cut off) plus
   ``margin`` voxels, clipped to the volume.
2. Normalise each modality to zero mean, unit standard deviation: over the brain voxels, with the background
   set to 0 afterwards (``"brain"``, the default, as nnU-Net does), or over the whole uncropped image
   (``"image"``, the paper's eq. 15). The statistics used are recorded.
3. Optionally (``spacing``, e.g. ``(2, 2, 2)`` mm) resample the cropped image to a coarser grid by area
   averaging (:func:`~agsevnet.preprocess.transforms.resample_image`), and the labels by a majority vote over the
   same cells (``resample_labels``); the native-resolution cropped labels are kept beside them, because evaluation
   (training's validation included) always scores on the input grid. Prediction resamples the network's
   probabilities back onto the native crop before deciding labels (``resample_to_shape``).
4. Store ``float16`` (default) or ``float32``. z-scores fit float16 whatever the input: by Samuelson's
   inequality a value is at most sqrt(n - 1) standard deviations from the mean of the n values it was
   normalised with (under 3,000 for a 240x240x155 volume), far below float16's maximum of 65,504; the
   rounding error (relative 2^-11) is far below MRI noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agsevnet import MODALITIES, __version__
from agsevnet.boxes import Box
from agsevnet.data.case import Case, Geometry
from agsevnet.errors import ConfigError, DataError
from agsevnet.preprocess.transforms import (
    DEFAULT_MARGIN,
    NORMALIZATIONS,
    brain_mask,
    crop,
    crop_box,
    normalize,
    resample_image,
    resample_labels,
    resampled_shape,
    union_box,
)

FORMAT = "agsevnet-preprocessed"
FORMAT_VERSION = 2
"""2: ``spacing`` (optional resampling), ``label_native.npy`` and the content hash ``image_sha1``."""
DTYPES: tuple[str, ...] = ("float16", "float32")


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


