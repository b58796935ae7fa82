"""Training data: the fold split, random patches from memory-mapped cached cases, MONAI augmentation, the loader.

Patches are *stateless*: the patch at (rank, global step, index in the batch) is drawn with a generator seeded
from ``(seed, rank, step, index)``, and so is its augmentation. Which worker process draws it, how many workers
there are, and whether the run was interrupted and resumed make no difference: a resumed run sees exactly the
batches an uninterrupted one would. The loader's index stream is simply ``step * batch + index`` from the first
step still to train.

Sampling (after nnU-Net): a case is chosen uniformly; with probability ``foreground_share`` the patch is centred
on a tumour voxel (the tumour label drawn uniformly among the labels the case has when ``class_balanced``, so small
enhancing regions are seen as often as edema; otherwise in proportion to their voxel counts), else its position
is uniform. Cases smaller than the patch along an axis are padded symmetrically to the patch size with the
case's background value per channel (:attr:`PatchCase.background`: 0 under brain normalisation, ``-mean/std``
under whole-image normalisation, where the background is not zero), so padding looks like the scan's own
background. Every patch lies inside that padded volume.

Spatial augmentation (after nnU-Net): when the affine warp (rotation, scaling) fires, a region larger than the
patch (:func:`affine_context`, centred on the patch) is read, warped about its centre, and the patch cut from
the middle of the result. Warping the patch itself would pull empty (padded) corners into it; the larger
region holds real image there. Flips and intensity transforms then act on the patch.

Open files: each cached case a process reads is a pair of memory maps, one file descriptor each. A process
keeps at most :func:`open_case_limit` cases open (least recently used closed first), so a loader process over
a full BraTS training set (about 1,000 cases per fold) stays far below the usual limit of 1,024 open files.

Fold split (``fold_split``): case ids are ordered by the SHA-256 hash of the id and dealt round-robin into
``folds`` folds: fold sizes differ by at most one, the split depends on nothing but the set of ids (not on the
order files are listed in, nor on the naming years, which sorted names would cluster), and adding a case moves
only the cases hashed after it. The same patient under two names (BraTS 2021 and 2023 copies) cannot be detected
from the ids: remove such duplicates before cross-validating.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from agsevnet.errors import ConfigError

MAX_LOCATIONS_PER_CLASS = 10_000
"""Tumour voxels remembered per label and case for foreground sampling (a deterministic random subset)."""

TUMOUR_LABELS: tuple[int, ...] = (1, 2, 3)

MAX_OPEN_CASES = 32
"""Cached cases one process keeps memory-mapped at most (two file descriptors each); see :func:`open_case_limit`.
Reopening an evicted case costs a ``meta.json`` read and two ``np.load`` calls (well under a millisecond; the
data stay in the page cache), against milliseconds to read and augment a patch."""


def open_case_limit() -> int:
    """Cases this process may keep open: :data:`MAX_OPEN_CASES`, or fewer when the open-files soft limit is
    low (at most a sixteenth of it for the cases' descriptors, the rest for Python, torch and the loader)."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN_CASES
    return max(1, min(MAX_OPEN_CASES, int(soft) // 16))


# --------------------------------------------------------------------------------------------------- folds
def fold_split(case_ids: Sequence[str], fold: int | str, folds: int = 5) -> tuple[list[str], list[str]]:
    """``(train_ids, val_ids)`` of fold ``fold`` (0-based) of a ``folds``-fold split; ``fold="all"``: all, none.

    Raises :class:`ConfigError` for a fold out of range or when the cases are too few to give fold ``fold`` any
    validation case.
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ConfigError("case ids must be unique to split them into folds")
    if fold == "all":
        return ids, []
    if not (isinstance(fold, int) and 0 <= fold < folds):
        raise ConfigError(f"fold must be 'all' or an integer in 0..{folds - 1}, got {fold!r}")
    ranked = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    val = sorted(ranked[fold::folds])
    if not val:
        raise ConfigError(f"{len(ids)} cases are too few for fold {fold} of {folds}: use fold 'all'")
    held_out = set(val)
    train = [i for i in ids if i not in held_out]
    return train, val


# --------------------------------------------------------------------------------------------------- cases
class _InMemory:
    """A picklable loader for a case already in memory (tests, notebooks)."""

    def __init__(self, image: np.ndarray, label: np.ndarray):
        self.image, self.label = image, label

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.image, self.label


class _Cached:
    """A picklable loader that memory-maps a cached case (opened lazily; see :func:`open_case_limit`)."""

    def __init__(self, cache_dir: str, case_id: str):
        self.cache_dir, self.case_id = cache_dir, case_id

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        from agsevnet.preprocess import load_cached

        pre = load_cached(self.cache_dir, self.case_id, mmap=True)
        return pre.image, pre.label


@dataclass
class PatchCase:
    """One training case: its spatial shape, where its tumour voxels are, and how to get its arrays.

    ``locations`` maps each tumour label present to flat voxel indices (a deterministic subset of at most
    :data:`MAX_LOCATIONS_PER_CLASS`). ``load`` returns ``(image (C, X, Y, Z), label (X, Y, Z))``, typically
    memory maps; its result is kept while the case is among the process's recently used ones.
    ``background``: the value of the image's background per channel, which padding uses (None: 0).
    ``negatives``: flat indices of "bright negatives" (:func:`bright_negatives`), the normal anatomy a
    ``negative_share`` of the patches is centred on (None or empty: such patches fall back to uniform ones).
    """

    case_id: str
    shape: tuple[int, int, int]
    locations: dict[int, np.ndarray]
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    background: tuple[float, ...] | None = None
    negatives: np.ndarray | None = None


def tumour_locations(label: np.ndarray, case_id: str, max_per_class: int = MAX_LOCATIONS_PER_CLASS) -> dict[int, np.ndarray]:
    """Flat indices of each tumour label's voxels, at most ``max_per_class`` each (subset seeded by the case id)."""
    flat = np.asarray(label).reshape(-1)
    idx = np.flatnonzero(flat)
    values = flat[idx]
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    out: dict[int, np.ndarray] = {}
    for c in TUMOUR_LABELS:
        sel = idx[values == c]
        if sel.size > max_per_class:
            sel = np.sort(rng.choice(sel, max_per_class, replace=False))
        if sel.size:
            out[c] = sel.astype(np.int64)
    return out


def brain_voxels(image: np.ndarray, background: Sequence[float] | None = None) -> np.ndarray:
    """Boolean ``(X, Y, Z)``: voxels where any channel differs from its background value (None: 0)."""
    bg = np.zeros(image.shape[0], np.float32) if background is None else np.asarray(background, np.float32)
    out = np.zeros(image.shape[1:], dtype=bool)
    for c in range(image.shape[0]):
        out |= np.abs(np.asarray(image[c], dtype=np.float32) - bg[c]) > 1e-3
    return out


BRIGHT_PERCENTILE = 90.0
"""FLAIR percentile (over the non-tumour brain voxels of a case) above which a voxel is a "bright negative"."""


def bright_negatives(image: np.ndarray, label: np.ndarray, case_id: str, background: Sequence[float] | None = None,
                     max_count: int = MAX_LOCATIONS_PER_CLASS, channel: int = 0) -> np.ndarray:
    """Flat indices of normal brain voxels that are bright on FLAIR (channel ``channel``): above the
    :data:`BRIGHT_PERCENTILE` of the case's non-tumour brain voxels, outside every tumour label; at most
    ``max_count`` (a deterministic subset seeded by the case id).

    Why: the model's errors on unseen patients were large false "tumour" regions in normal anatomy that is bright
    on FLAIR (cerebellum, brainstem, orbitofrontal cortex). Patches centred on such voxels are hard negatives
    that need no model to find (Havaei et al. 2017 mined them with a trained model instead)."""
    flair = np.asarray(image[channel], dtype=np.float32).reshape(-1)
    normal = brain_voxels(image, background).reshape(-1) & (np.asarray(label).reshape(-1) == 0)
    if not normal.any():
        return np.zeros(0, dtype=np.int64)
    threshold = np.percentile(flair[normal], BRIGHT_PERCENTILE)
    idx = np.flatnonzero(normal & (flair > threshold))
    if idx.size > max_count:
        rng = np.random.default_rng(zlib.crc32(("neg:" + case_id).encode()))
        idx = np.sort(rng.choice(idx, max_count, replace=False))
    return idx.astype(np.int64)


def memory_case(case_id: str, image: np.ndarray, label: np.ndarray, background: Sequence[float] | None = None) -> PatchCase:
    """A :class:`PatchCase` for arrays in memory: image ``(C, X, Y, Z)``, internal labels ``(X, Y, Z)``;
    ``background``: the image's background value per channel (None: 0)."""
    if image.ndim != 4 or image.shape[1:] != label.shape:
        raise ValueError(f"{case_id}: image {image.shape} and label {label.shape} do not match (C, X, Y, Z) / (X, Y, Z)")
    bg = None if background is None else tuple(float(v) for v in background)
    return PatchCase(case_id, tuple(label.shape), tumour_locations(label, case_id), _InMemory(image, label), bg,
                     bright_negatives(image, label, case_id, bg))


def cached_cases(cache_dir: str, case_ids: Sequence[str], progress: bool = False, negatives: bool = False) -> list[PatchCase]:
    """:class:`PatchCase` objects for cached cases (labels read once to find the tumour voxels; with
    ``negatives`` the images too, to find the bright negatives)."""
    from agsevnet.preprocess import background_values, load_cached
    from agsevnet.progress import progress_bar

    out = []
    for case_id in progress_bar(case_ids, desc="indexing tumour voxels", unit="case", disable=not progress, leave=False):
        pre = load_cached(cache_dir, case_id, mmap=True)
        if pre.label is None:
            from agsevnet.errors import DataError

            raise DataError("cached case has no label: training needs labelled cases", f"{cache_dir}/{case_id}")
        bg = tuple(background_values(pre.meta))
        neg = bright_negatives(pre.image, pre.label, case_id, bg) if negatives else None
        out.append(PatchCase(case_id, tuple(pre.label.shape), tumour_locations(pre.label, case_id),
                             _Cached(str(cache_dir), case_id), bg, neg))
        del pre  # drop the memory maps (and their file descriptors) before the next case
    return out


# ------------------------------------------------------------------------------------------------- patches
def padded_extent(shape: Sequence[int], patch: Sequence[int]) -> tuple[list[int], list[int]]:
    """Per axis: the padded size ``max(dim, patch)`` and the padding before the volume (symmetric)."""
    size = [max(d, p) for d, p in zip(shape, patch)]
    before = [(s - d) // 2 for s, d in zip(size, shape)]
    return size, before


SAMPLING: tuple[str, ...] = ("start", "centre")
"""Where a non-tumour-centred patch lies: ``start``: its first voxel uniform over the positions that keep it
inside the (padded) volume, so voxels near the volume's edge are covered by few patches (with a 48-voxel patch
on a 75-voxel axis the outermost voxel is in 1 patch of 28); ``centre``: its centre voxel uniform over the
volume (the patch reaches up to half its size into the background padding, as nnU-Net allows), so the edges of
the brain (its bottom: cerebellum, brainstem; the orbitofrontal cortex) are seen about as often as its middle."""


def choose_patch(case: PatchCase, patch: Sequence[int], rng: np.random.Generator, foreground: bool,
                 class_balanced: bool = True, *, negative: bool = False, sampling: str = "start") -> tuple[int, int, int]:
    """The patch's first voxel in the case's coordinates (negative where it reaches into the padding).

    A foreground patch is centred on a tumour voxel, a ``negative`` one on a bright negative (both clipped so
    they stay inside the padded volume, which keeps that voxel inside the patch); cases without tumour (or
    without bright negatives) fall back to an untargeted position, drawn as ``sampling`` says
    (:data:`SAMPLING`).
    """
    size, before = padded_extent(case.shape, patch)
    flat: int | None = None
    if foreground and case.locations:
        labels = sorted(case.locations)
        if class_balanced:
            c = labels[int(rng.integers(len(labels)))]
        else:
            counts = np.array([case.locations[c].size for c in labels], dtype=np.float64)
            c = labels[int(rng.choice(len(labels), p=counts / counts.sum()))]
        flat = int(case.locations[c][int(rng.integers(case.locations[c].size))])
    elif negative and case.negatives is not None and case.negatives.size:
        flat = int(case.negatives[int(rng.integers(case.negatives.size))])
    if flat is not None:
        centre = np.unravel_index(flat, case.shape)
        start = [min(max(int(v) + b - p // 2, 0), s - p) for v, b, p, s in zip(centre, before, patch, size)]
    elif sampling == "centre":
        # centre uniform over the volume; the patch may reach p // 2 into the padding on either side
        return tuple(int(rng.integers(d)) - p // 2 for d, p in zip(case.shape, patch))  # type: ignore[return-value]
    else:
        start = [int(rng.integers(s - p + 1)) for s, p in zip(size, patch)]
    return tuple(s - b for s, b in zip(start, before))  # type: ignore[return-value]


def read_patch(image: np.ndarray, label: np.ndarray, start: Sequence[int], patch: Sequence[int],
               background: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The patch at ``start`` (may be negative) as float32 image and uint8 label arrays; outside the volume the
    label is 0 and the image the ``background`` value of each channel (None: 0)."""
    from agsevnet.preprocess.transforms import pad_channels

    shape = label.shape
    patch = tuple(int(p) for p in patch)
    src = tuple(slice(max(s, 0), min(s + p, d)) for s, p, d in zip(start, patch, shape))
    img = np.array(image[(slice(None), *src)], dtype=np.float32)  # copies: out of the (read-only) memory map
    lab = np.array(label[src], dtype=np.uint8)
    if img.shape[1:] == patch:
        return img, lab
    pads = [(sl.start - s, s + p - sl.stop) for sl, s, p in zip(src, start, patch)]
    return pad_channels(img, pads, 0.0 if background is None else background), pad_channels(lab[None], pads)[0]


# ------------------------------------------------------------------------------------------- augmentation
def _rotations(angles: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(n, 3, 3)`` for every combination of the given angles about the three axes, composed
    in both orders (x then y then z, and z then y then x)."""
    a, b, c = (g.reshape(-1) for g in np.meshgrid(angles, angles, angles, indexing="ij"))
    one, zero = np.ones_like(a), np.zeros_like(a)

    def rot(t: np.ndarray, axis: int) -> np.ndarray:
        cos, sin = np.cos(t), np.sin(t)
        i, j = [k for k in range(3) if k != axis]
        m = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, one, zero], -1), np.stack([zero, zero, one], -1)], -2)
        m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = cos, -sin, sin, cos
        return m

    rx, ry, rz = rot(a, 0), rot(b, 1), rot(c, 2)
    return np.concatenate([rx @ ry @ rz, rz @ ry @ rx])


def affine_context(patch: Sequence[int], rotate_deg: float, scale: float) -> tuple[int, ...]:
    """The region to warp so that the patch cut from its centre holds no voxel from outside it: the largest
    axis-aligned extent of the patch rotated by up to ``rotate_deg`` about each axis (a 9-step grid of angles,
    both composition orders) and scaled by up to ``1 + scale``, plus 2 voxels, rounded so that region and
    patch share their centre voxel-exactly (their sizes differ by an even number)."""
    p = np.asarray([int(v) for v in patch], dtype=np.float64)
    extent = p.copy()
    rot = math.radians(float(rotate_deg))
    if rot > 0:
        extent = np.maximum(extent, (np.abs(_rotations(np.linspace(-rot, rot, 9))) @ p).max(axis=0))
    extent *= 1.0 + max(0.0, float(scale))
    size = [int(math.ceil(e - 1e-9)) + 2 for e in extent]
    return tuple(s + (s - int(q)) % 2 for s, q in zip(size, p))


class Augmentation:
    """Training augmentation, in three parts (after nnU-Net).

    ``warp(patch)``: MONAI's ``RandAffined`` (rotation, scaling) that maps a region of
    :meth:`context` size to the ``patch`` at its centre; :class:`PatchDataset` applies it with probability
    ``affine_prob`` to the larger region it reads, so the warped patch holds image everywhere instead of
    empty corners. ``flips``: mirroring on each axis. ``intensity``: per-channel brightness (scale, shift),
    contrast about the mean, gamma (and inverted gamma: the gamma applied to the negated image), Gaussian blur,
    simulated low resolution and Gaussian noise (MONAI dictionary transforms, keys ``image`` (C, ...) and
    ``label`` (1, ...)). With ``remask_background`` the voxels that were background before the intensity
    transforms are set back to the background value afterwards: at inference the background is exactly that
    value, so a model never needs to learn shifted or noisy background. Randomness comes only from the seeds
    :class:`PatchDataset` passes (``set_random_state``).
    """

    def __init__(self, cfg: Mapping[str, Any]):
        from monai.transforms import (
            Compose,
            RandAdjustContrastd,
            RandFlipd,
            RandGaussianNoised,
            RandGaussianSmoothd,
            RandScaleIntensityd,
            RandScaleIntensityFixedMeand,
            RandShiftIntensityd,
            RandSimulateLowResolutiond,
        )

        self.affine_prob = float(cfg["affine_prob"])
        self.rotate_deg, self.scale = float(cfg["rotate_deg"]), float(cfg["scale"])
        self.remask = bool(cfg.get("remask_background", False))
        keys = ["image", "label"]
        flips = [RandFlipd(keys, prob=cfg["flip_prob"], spatial_axis=axis) for axis in range(3)] if cfg["flip_prob"] > 0 else []
        ts: list = []
        if cfg["intensity_prob"] > 0:
            ts.append(RandScaleIntensityd("image", factors=cfg["intensity_scale"], prob=cfg["intensity_prob"], channel_wise=True))
            ts.append(RandShiftIntensityd("image", offsets=cfg["intensity_shift"], prob=cfg["intensity_prob"], channel_wise=True))
        if cfg.get("contrast_prob", 0) > 0:
            ts.append(RandScaleIntensityFixedMeand("image", factors=cfg["contrast"], preserve_range=True,
                                                   prob=cfg["contrast_prob"], channel_wise=True))
        if cfg.get("lowres_prob", 0) > 0:
            ts.append(RandSimulateLowResolutiond("image", prob=cfg["lowres_prob"], zoom_range=tuple(cfg["lowres_zoom"])))
        if cfg["gamma_prob"] > 0:
            ts.append(RandAdjustContrastd("image", gamma=tuple(cfg["gamma"]), prob=cfg["gamma_prob"], retain_stats=True))
        if cfg.get("invert_gamma_prob", 0) > 0:
            ts.append(RandAdjustContrastd("image", gamma=tuple(cfg["gamma"]), prob=cfg["invert_gamma_prob"],
                                          retain_stats=True, invert_image=True))
        if cfg.get("blur_prob", 0) > 0:
            sigma = tuple(cfg["blur_sigma"])
            ts.append(RandGaussianSmoothd("image", sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=cfg["blur_prob"]))
        if cfg["noise_prob"] > 0:
            ts.append(RandGaussianNoised("image", prob=cfg["noise_prob"], std=cfg["noise_std"]))
        self.flips = Compose(flips) if flips else None
        self.intensity = Compose(ts) if ts else None
        self._warps: dict[tuple[int, ...], Any] = {}

    def context(self, patch: Sequence[int]) -> tuple[int, ...]:
        """The size of the region read for a warped patch (the patch itself when there is no warp)."""
        if self.affine_prob <= 0:
            return tuple(int(p) for p in patch)
        return affine_context(patch, self.rotate_deg, self.scale)

    def warp(self, patch: Sequence[int]) -> Any:
        """The affine warp (always applied: the caller draws whether) producing a ``patch``-sized output."""
        patch = tuple(int(p) for p in patch)
        if patch not in self._warps:
            from monai.transforms import RandAffined

            rot = math.radians(self.rotate_deg)
            # "border": the region is large enough that no sample falls outside it; were one to, it would
            # repeat the region's edge (image or background) rather than insert zeros.
            self._warps[patch] = RandAffined(["image", "label"], spatial_size=patch, prob=1.0,
                                             rotate_range=(rot, rot, rot), scale_range=(self.scale,) * 3,
                                             mode=("bilinear", "nearest"), padding_mode="border")
        return self._warps[patch]


def build_augmentation(cfg: Mapping[str, Any]) -> Augmentation | None:
    """The :class:`Augmentation` of the ``augment`` config section; ``None`` when disabled."""
    if not cfg["enabled"]:
        return None
    return Augmentation(cfg)


# -------------------------------------------------------------------------------------- dataset and loader
class PatchDataset(Dataset):
    """Item ``step * batch_size + i`` is patch ``i`` of the batch of global step ``step`` on this rank.

    Returns ``{"image": float32 (C, *patch), "label": uint8 (1, *patch)}``. Each process keeps at most
    :func:`open_case_limit` cases open (least recently used evicted).
    """

    def __init__(self, cases: Sequence[PatchCase], patch_size: Sequence[int], batch_size: int, seed: int, rank: int = 0,
                 foreground_share: float = 0.0, class_balanced: bool = True, augment: Augmentation | None = None,
                 *, negative_share: float = 0.0, sampling: str = "start", natural_from_step: int | None = None):
        if not cases:
            raise ConfigError("no training cases")
        self.cases = list(cases)
        self.patch = tuple(int(p) for p in patch_size)
        self.batch_size = int(batch_size)
        self.seed, self.rank = int(seed), int(rank)
        self.foreground_share = float(foreground_share)
        self.class_balanced = bool(class_balanced)
        self.negative_share = float(negative_share)
        if self.foreground_share + self.negative_share > 1 + 1e-9:
            raise ConfigError(f"data.foreground_share + data.negative_share must be <= 1, got "
                              f"{self.foreground_share} + {self.negative_share}")
        if sampling not in SAMPLING:
            raise ConfigError(f"data.sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
        self.sampling = sampling
        self.natural_from_step = natural_from_step
        self.augment = augment
        self.context = augment.context(self.patch) if augment is not None else self.patch
        self._arrays: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._max_open: int | None = None  # per process: set at the first open

    def __getstate__(self) -> dict:  # worker processes started by spawn reopen the memory maps themselves
        state = self.__dict__.copy()
        state["_arrays"] = OrderedDict()
        state["_max_open"] = None
        return state

    def rng(self, index: int) -> np.random.Generator:
        step, i = divmod(int(index), self.batch_size)
        return np.random.default_rng([self.seed, self.rank, step, i])

    def arrays(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Case ``k``'s arrays, opened on first use; the least recently used case is closed beyond the limit."""
        if k in self._arrays:
            self._arrays.move_to_end(k)
            return self._arrays[k]
        if self._max_open is None:
            self._max_open = open_case_limit()
        while len(self._arrays) >= self._max_open:
            self._arrays.popitem(last=False)  # the memory maps (and their descriptors) go with the last reference
        arrays = self._arrays[k] = self.cases[k].load()
        return arrays

    def _draw(self, index: int) -> tuple[np.random.Generator, int, tuple[int, int, int]]:
        rng = self.rng(index)
        k = int(rng.integers(len(self.cases)))
        u = rng.random()
        foreground = bool(u < self.foreground_share)
        negative = not foreground and bool(u < self.foreground_share + self.negative_share)
        if self.natural_from_step is not None and int(index) // self.batch_size >= self.natural_from_step:
            # the second phase (Havaei et al. 2017): patches as the data come, no targeting
            foreground = negative = False
        start = choose_patch(self.cases[k], self.patch, rng, foreground, self.class_balanced, negative=negative,
                             sampling=self.sampling)
        return rng, k, start

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, int, tuple[int, int, int], np.random.Generator]:
        """The raw patch of item ``index``: image, label, case number, start, and the generator (for augmentation)."""
        rng, k, start = self._draw(index)
        image, label = self.arrays(k)
        img, lab = read_patch(image, label, start, self.patch, self.cases[k].background)
        return img, lab, k, start, rng

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        # One thread, as in the loader's worker processes (_worker_init): reductions inside the augmentation (the
        # gamma's retained mean and std) differ in the last bits with the thread count, and an item must not
        # depend on whether a worker or the training process computed it.
        threads = torch.get_num_threads()
        if threads == 1:
            return self._item(index)
        torch.set_num_threads(1)
        try:
            return self._item(index)
        finally:
            torch.set_num_threads(threads)

    def _item(self, index: int) -> dict[str, torch.Tensor]:
        aug = self.augment
        rng, k, start = self._draw(index)
        warp = aug is not None and aug.affine_prob > 0 and bool(rng.random() < aug.affine_prob)
        if not warp:
            image_arr, label_arr = self.arrays(k)
            img, lab = read_patch(image_arr, label_arr, start, self.patch, self.cases[k].background)
            image, label = torch.from_numpy(img), torch.from_numpy(lab)[None]
        else:
            image_arr, label_arr = self.arrays(k)
            region = [s - (c - p) // 2 for s, c, p in zip(start, self.context, self.patch)]
            img, lab = read_patch(image_arr, label_arr, region, self.context, self.cases[k].background)
            transform = aug.warp(self.patch)
            transform.set_random_state(seed=int(rng.integers(2**32)))
            out = transform({"image": torch.from_numpy(img), "label": torch.from_numpy(lab)[None]})
            image, label = self._plain(out)
        if aug is not None and aug.flips is not None:
            aug.flips.set_random_state(seed=int(rng.integers(2**32)))
            image, label = self._plain(aug.flips({"image": image, "label": label}))
        if aug is not None and aug.intensity is not None:
            seed = int(rng.integers(2**32))
            background = None
            if aug.remask:
                bg = self.cases[k].background
                bg_t = torch.zeros(image.shape[0]) if bg is None else torch.tensor(bg, dtype=torch.float32)
                background = (bg_t, (image - bg_t.view(-1, 1, 1, 1)).abs().amax(dim=0) <= 1e-3)
            aug.intensity.set_random_state(seed=seed)
            image, label = self._plain(aug.intensity({"image": image, "label": label}))
            if background is not None:
                bg_t, outside = background
                image = torch.where(outside[None], bg_t.view(-1, 1, 1, 1), image)
        return {"image": image.contiguous(), "label": label.contiguous()}

    @staticmethod
    def _plain(out: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain float32 image and uint8 label tensors from a MONAI transform's output."""
        from monai.utils import convert_to_tensor

        image = convert_to_tensor(out["image"], dtype=torch.float32, track_meta=False)
        label = convert_to_tensor(out["label"], track_meta=False)
        if label.is_floating_point():  # the affine warp (nearest) returns labels as floats
            label = label.round()
        return image, label.to(torch.uint8)


class StepSampler(Sampler[int]):
    """Indices ``start * batch .. stop * batch - 1``: the items of steps ``start`` to ``stop - 1``, in order."""

    def __init__(self, start_step: int, stop_step: int, batch_size: int):
        self.start, self.stop, self.batch = int(start_step), int(stop_step), int(batch_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start * self.batch, self.stop * self.batch))

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # each loader process works on one patch at a time; leave the cores to training


def default_workers() -> int:
    """Loader processes when the config says null: ``min(4, CPUs - 1)`` (0 on a single CPU); the reasons for the
    cap are in :mod:`agsevnet.parallel`."""
    from agsevnet.parallel import worker_count

    return worker_count(cap=4, reserve=1, minimum=0)


def make_loader(dataset: PatchDataset, start_step: int, stop_step: int, workers: int, pin_memory: bool = False) -> DataLoader:
    """Batches of the steps ``start_step .. stop_step - 1`` (persistent worker processes; pinned memory on CUDA).

    The loader gets its own generator so that creating it does not draw from torch's global RNG (which the
    training's dropout uses): otherwise a resumed run's dropout stream would differ from an uninterrupted one's.
    """
    return DataLoader(
        dataset,
        batch_size=dataset.batch_size,
        sampler=StepSampler(start_step, stop_step, dataset.batch_size),
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(dataset.seed),
        drop_last=False,
    )
