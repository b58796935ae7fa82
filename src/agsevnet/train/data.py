"""Training data: the fold split, random patches from memory-mapped cached cases, MONAI augmentation, the loader.

Patches are *stateless*: the patch at (rank, global step, index in the batch) is drawn with a generator seeded
from ``(seed, rank, step, index)``, and so is its augmentation. Which worker process draws it, how many workers
there are, and whether the run was interrupted and resumed make no difference: a resumed run sees exactly the
batches an uninterrupted one would. The loader's index stream is simply ``step * batch + index`` from the first
step still to train.

Sampling (after nnU-Net): a case is chosen uniformly; with probability ``foreground_share`` the patch is centred
on a tumour voxel (the tumour label drawn uniformly among the labels the case has when ``class_balanced``, so small
enhancing regions are seen as often as edema; otherwise in proportion to their voxel counts), else its position
is uniform. Cases smaller than the patch along an axis are padded symmetrically to the patch size (zeros: the
same padding MONAI's sliding-window inference applies, so the network sees the same thing at training and at
prediction time; the brain-normalised background is zero too). Every patch lies inside that padded volume.

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
    """A picklable loader that memory-maps a cached case (opened lazily, once per process)."""

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
    memory maps; it is called once per process and its result kept.
    """

    case_id: str
    shape: tuple[int, int, int]
    locations: dict[int, np.ndarray]
    load: Callable[[], tuple[np.ndarray, np.ndarray]]


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


def memory_case(case_id: str, image: np.ndarray, label: np.ndarray) -> PatchCase:
    """A :class:`PatchCase` for arrays in memory: image ``(C, X, Y, Z)``, internal labels ``(X, Y, Z)``."""
    if image.ndim != 4 or image.shape[1:] != label.shape:
        raise ValueError(f"{case_id}: image {image.shape} and label {label.shape} do not match (C, X, Y, Z) / (X, Y, Z)")
    return PatchCase(case_id, tuple(label.shape), tumour_locations(label, case_id), _InMemory(image, label))


def cached_cases(cache_dir: str, case_ids: Sequence[str], progress: bool = False) -> list[PatchCase]:
    """:class:`PatchCase` objects for cached cases (labels read once to find the tumour voxels)."""
    from tqdm.auto import tqdm

    from agsevnet.preprocess import load_cached

    out = []
    for case_id in tqdm(case_ids, desc="indexing tumour voxels", unit="case", disable=not progress, leave=False):
        pre = load_cached(cache_dir, case_id, mmap=True)
        if pre.label is None:
            from agsevnet.errors import DataError

            raise DataError("cached case has no label: training needs labelled cases", f"{cache_dir}/{case_id}")
        out.append(PatchCase(case_id, tuple(pre.label.shape), tumour_locations(pre.label, case_id), _Cached(str(cache_dir), case_id)))
    return out


# ------------------------------------------------------------------------------------------------- patches
def padded_extent(shape: Sequence[int], patch: Sequence[int]) -> tuple[list[int], list[int]]:
    """Per axis: the padded size ``max(dim, patch)`` and the padding before the volume (symmetric)."""
    size = [max(d, p) for d, p in zip(shape, patch)]
    before = [(s - d) // 2 for s, d in zip(size, shape)]
    return size, before


def choose_patch(case: PatchCase, patch: Sequence[int], rng: np.random.Generator, foreground: bool, class_balanced: bool = True) -> tuple[int, int, int]:
    """The patch's first voxel in the case's coordinates (negative where it reaches into the padding).

    A foreground patch is centred on a tumour voxel (clipped so it stays inside the padded volume, which keeps
    that voxel inside the patch); cases without tumour fall back to a uniform position.
    """
    size, before = padded_extent(case.shape, patch)
    if foreground and case.locations:
        labels = sorted(case.locations)
        if class_balanced:
            c = labels[int(rng.integers(len(labels)))]
        else:
            counts = np.array([case.locations[c].size for c in labels], dtype=np.float64)
            c = labels[int(rng.choice(len(labels), p=counts / counts.sum()))]
        flat = case.locations[c][int(rng.integers(case.locations[c].size))]
        centre = np.unravel_index(int(flat), case.shape)
        start = [min(max(int(v) + b - p // 2, 0), s - p) for v, b, p, s in zip(centre, before, patch, size)]
    else:
        start = [int(rng.integers(s - p + 1)) for s, p in zip(size, patch)]
    return tuple(s - b for s, b in zip(start, before))  # type: ignore[return-value]


def read_patch(image: np.ndarray, label: np.ndarray, start: Sequence[int], patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The patch at ``start`` (may be negative) as float32 image and uint8 label arrays, zero outside the volume."""
    shape = label.shape
    src = tuple(slice(max(s, 0), min(s + p, d)) for s, p, d in zip(start, patch, shape))
    img = np.array(image[(slice(None), *src)], dtype=np.float32)  # copies: out of the (read-only) memory map
    lab = np.array(label[src], dtype=np.uint8)
    if img.shape[1:] == tuple(patch):
        return img, lab
    out_img = np.zeros((image.shape[0], *patch), dtype=np.float32)
    out_lab = np.zeros(tuple(patch), dtype=np.uint8)
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    out_img[(slice(None), *dst)] = img
    out_lab[dst] = lab
    return out_img, out_lab


# ------------------------------------------------------------------------------------------- augmentation
def build_augmentation(cfg: Mapping[str, Any]) -> Callable | None:
    """MONAI dictionary transforms (keys ``image`` (C, ...) and ``label`` (1, ...)) from the ``augment`` section;
    ``None`` when disabled. Randomness comes only from ``set_random_state`` (see :class:`PatchDataset`)."""
    if not cfg["enabled"]:
        return None
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ["image", "label"]
    ts: list = []
    if cfg["affine_prob"] > 0:
        rot = math.radians(cfg["rotate_deg"])
        ts.append(
            RandAffined(keys, prob=cfg["affine_prob"], rotate_range=(rot, rot, rot), scale_range=(cfg["scale"],) * 3,
                        mode=("bilinear", "nearest"), padding_mode="zeros")
        )
    if cfg["flip_prob"] > 0:
        ts += [RandFlipd(keys, prob=cfg["flip_prob"], spatial_axis=axis) for axis in range(3)]
    if cfg["intensity_prob"] > 0:
        ts.append(RandScaleIntensityd("image", factors=cfg["intensity_scale"], prob=cfg["intensity_prob"], channel_wise=True))
        ts.append(RandShiftIntensityd("image", offsets=cfg["intensity_shift"], prob=cfg["intensity_prob"], channel_wise=True))
    if cfg["gamma_prob"] > 0:
        ts.append(RandAdjustContrastd("image", gamma=tuple(cfg["gamma"]), prob=cfg["gamma_prob"], retain_stats=True))
    if cfg["noise_prob"] > 0:
        ts.append(RandGaussianNoised("image", prob=cfg["noise_prob"], std=cfg["noise_std"]))
    return Compose(ts) if ts else None


# -------------------------------------------------------------------------------------- dataset and loader
class PatchDataset(Dataset):
    """Item ``step * batch_size + i`` is patch ``i`` of the batch of global step ``step`` on this rank.

    Returns ``{"image": float32 (C, *patch), "label": uint8 (1, *patch)}``.
    """

    def __init__(self, cases: Sequence[PatchCase], patch_size: Sequence[int], batch_size: int, seed: int, rank: int = 0,
                 foreground_share: float = 0.0, class_balanced: bool = True, augment: Callable | None = None):
        if not cases:
            raise ConfigError("no training cases")
        self.cases = list(cases)
        self.patch = tuple(int(p) for p in patch_size)
        self.batch_size = int(batch_size)
        self.seed, self.rank = int(seed), int(rank)
        self.foreground_share = float(foreground_share)
        self.class_balanced = bool(class_balanced)
        self.augment = augment
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict:  # worker processes started by spawn reopen the memory maps themselves
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def rng(self, index: int) -> np.random.Generator:
        step, i = divmod(int(index), self.batch_size)
        return np.random.default_rng([self.seed, self.rank, step, i])

    def arrays(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in self._arrays:
            self._arrays[k] = self.cases[k].load()
        return self._arrays[k]

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, int, tuple[int, int, int], np.random.Generator]:
        """The raw patch of item ``index``: image, label, case number, start, and the generator (for augmentation)."""
        rng = self.rng(index)
        k = int(rng.integers(len(self.cases)))
        foreground = bool(rng.random() < self.foreground_share)
        start = choose_patch(self.cases[k], self.patch, rng, foreground, self.class_balanced)
        image, label = self.arrays(k)
        img, lab = read_patch(image, label, start, self.patch)
        return img, lab, k, start, rng

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        img, lab, _, _, rng = self.sample(index)
        image = torch.from_numpy(img)
        label = torch.from_numpy(lab)[None]
        if self.augment is not None:
            from monai.utils import convert_to_tensor

            self.augment.set_random_state(seed=int(rng.integers(2**32)))
            out = self.augment({"image": image, "label": label})
            image = convert_to_tensor(out["image"], dtype=torch.float32, track_meta=False).contiguous()
            label = convert_to_tensor(out["label"], track_meta=False)
            if label.is_floating_point():  # the affine warp (nearest) returns labels as floats
                label = label.round()
            label = label.to(torch.uint8).contiguous()
        return {"image": image, "label": label}


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
    """Loader processes when the config says null: ``min(4, CPUs - 1)`` (0 on a single CPU)."""
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cpus - 1))


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
