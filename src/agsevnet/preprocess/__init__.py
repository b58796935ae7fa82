"""Preprocessing: crop to the brain, z-score each modality, optionally resample, and the on-disk cache.

- :mod:`.transforms`: array transforms (brain mask, crop box, crop/uncrop, normalisation, resampling, padding);
- :mod:`.case`: :func:`preprocess_case`, the one preprocessing used by training *and* prediction, and
  :class:`Preprocessed`;
- :mod:`.cache`: the cache of preprocessed cases (:func:`update_cache`, :func:`build_cache`, :func:`load_cached`).

Every public name is importable from ``agsevnet.preprocess`` itself.
"""

from agsevnet.preprocess.cache import (
    IMAGE_FILE,
    LABEL_FILE,
    META_FILE,
    NATIVE_LABEL_FILE,
    CacheReport,
    CaseFailure,
    _write_cached,
    background_values,
    build_cache,
    case_size,
    list_cached,
    load_cached,
    load_native_label,
    update_cache,
)
from agsevnet.preprocess.case import DTYPES, FORMAT, FORMAT_VERSION, Preprocessed, preprocess_case
from agsevnet.preprocess.transforms import (
    CLIP_PERCENTILES,
    DEFAULT_MARGIN,
    NORMALIZATIONS,
    brain_mask,
    crop,
    crop_box,
    normalize,
    pad_channels,
    resample_image,
    resample_labels,
    resample_to_shape,
    resampled_shape,
    uncrop,
    union_box,
)

__all__ = [
    "CLIP_PERCENTILES", "DEFAULT_MARGIN", "DTYPES", "FORMAT", "FORMAT_VERSION", "IMAGE_FILE", "LABEL_FILE", "META_FILE",
    "NATIVE_LABEL_FILE", "NORMALIZATIONS", "CacheReport", "CaseFailure", "Preprocessed", "background_values",
    "brain_mask", "build_cache", "case_size", "crop", "crop_box", "list_cached", "load_cached", "load_native_label",
    "normalize", "pad_channels", "preprocess_case", "resample_image", "resample_labels", "resample_to_shape",
    "resampled_shape", "uncrop", "union_box", "update_cache", "_write_cached",
]
