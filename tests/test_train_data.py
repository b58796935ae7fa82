"""The training data pipeline: fold split, patch sampling (foreground share, class balance, padding, bounds),
stateless determinism (same patch for the same (seed, rank, step, index) whatever the loader), augmentation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from agsevnet.config import load_config
from agsevnet.errors import ConfigError
from agsevnet.train.data import (
    PatchDataset,
    build_augmentation,
    choose_patch,
    fold_split,
    make_loader,
    memory_case,
    padded_extent,
    read_patch,
    tumour_locations,
)

IDS = [f"case{i:03d}" for i in range(23)]


# ------------------------------------------------------------------------------------------------ folds
def test_folds_are_deterministic_disjoint_and_cover_every_case():
    vals = []
    for k in range(5):
        train, val = fold_split(IDS, k, 5)
        assert set(train).isdisjoint(val) and set(train) | set(val) == set(IDS)
        assert fold_split(list(reversed(IDS)), k, 5) == (train, val)  # independent of listing order
        vals.append(val)
    assert sorted(c for v in vals for c in v) == sorted(IDS)  # each case validates in exactly one fold
    assert max(map(len, vals)) - min(map(len, vals)) <= 1
    assert fold_split(IDS, "all", 5) == (sorted(IDS), [])


def test_fold_errors():
    with pytest.raises(ConfigError, match="too few"):
        fold_split(["a", "b"], 4, 5)
    with pytest.raises(ConfigError, match="fold"):
        fold_split(IDS, 5, 5)


# ---------------------------------------------------------------------------------------------- sampling
def _case(shape=(60, 50, 40), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(4, *shape)).astype(np.float16)
    label = np.zeros(shape, np.uint8)
    label[5:25, 5:25, 5:20] = 2  # a big edema blob in one corner
    label[10:14, 10:14, 8:12] = 1
    label[shape[0] - 3, shape[1] - 3, shape[2] - 3] = 3  # a single enhancing voxel far away
    return memory_case("c", image, label)


def test_tumour_locations_cover_each_label_and_are_capped_deterministically():
    case = _case()
    label = case.load()[1]
    for c, idx in case.locations.items():
        assert np.all(label.reshape(-1)[idx] == c)
        assert idx.size == np.count_nonzero(label == c)
    capped = tumour_locations(label, "c", max_per_class=50)
    assert capped[2].size == 50 and np.array_equal(capped[2], tumour_locations(label, "c", max_per_class=50)[2])
    assert set(capped) == {1, 2, 3}


def test_foreground_share_and_class_balance():
    case = _case(shape=(96, 96, 96))
    patch = (16, 16, 16)
    image, label = case.load()

    def fraction(share, balanced, value):
        ds = PatchDataset([case], patch, 1, seed=3, foreground_share=share, class_balanced=balanced)
        hits = 0
        for i in range(400):
            _, lab, _, _, _ = ds.sample(i)
            hits += bool(np.isin(lab, value).any())
        return hits / 400

    # uniform patches rarely touch the tumour (~2%); a third are centred on it
    assert fraction(0.0, True, (1, 2, 3)) < 0.08
    assert 0.27 < fraction(1 / 3, True, (1, 2, 3)) < 0.45
    assert fraction(1.0, True, (1, 2, 3)) == 1.0
    # class-balanced: the single enhancing voxel is the centre of about a third of foreground patches
    assert 0.22 < fraction(1.0, True, 3) < 0.45
    assert fraction(1.0, False, 3) < 0.02  # in proportion to voxel counts: almost never


def test_small_cases_are_padded_and_patches_stay_inside_the_padded_volume():
    rng = np.random.default_rng(0)
    for shape, patch in [((10, 20, 30), (32, 32, 32)), ((40, 20, 33), (32, 32, 16)), ((32, 32, 32), (32, 32, 32))]:
        case = _case(shape)
        image, label = case.load()
        size, before = padded_extent(shape, patch)
        for _ in range(200):
            start = choose_patch(case, patch, rng, foreground=bool(rng.random() < 0.5))
            for s, p, b, n in zip(start, patch, before, size):
                assert -b <= s and s + p <= n - b  # inside the padded volume
            img, lab = read_patch(image, label, start, patch)
            assert img.shape == (4, *patch) and lab.shape == patch
            assert img.dtype == np.float32 and lab.dtype == np.uint8
        if all(d <= p for d, p in zip(shape, patch)):  # the patch is the whole padded case: nothing lost
            img, lab = read_patch(image, label, start, patch)
            assert np.count_nonzero(lab) == np.count_nonzero(label)
            assert np.isclose(img.sum(dtype=np.float64), image.astype(np.float64).sum())


def test_read_patch_matches_numpy_padding():
    case = _case((20, 30, 10))
    image, label = case.load()
    start, patch = (-3, 5, -4), (16, 16, 16)
    img, lab = read_patch(image, label, start, patch)
    padded = np.pad(label, [(3, 16), (0, 16), (4, 16)])
    assert np.array_equal(lab, padded[0:16, 5:21, 0:16])


def test_foreground_patches_contain_their_centre_voxel_even_at_the_border():
    case = _case((60, 50, 40))
    image, label = case.load()
    rng = np.random.default_rng(1)
    for _ in range(100):
        start = choose_patch(case, (32, 32, 32), rng, foreground=True)
        _, lab = read_patch(image, label, start, (32, 32, 32))
        assert lab.any()


# --------------------------------------------------------------------------------------------- determinism
def test_items_are_a_function_of_seed_rank_step_and_index():
    case = _case()
    aug = build_augmentation(load_config("default")["augment"])
    a = PatchDataset([case, _case(seed=1)], (32, 32, 32), 2, seed=5, foreground_share=0.33, augment=aug)
    b = PatchDataset([case, _case(seed=1)], (32, 32, 32), 2, seed=5, foreground_share=0.33, augment=aug)
    for i in (0, 7, 123):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
    other_rank = PatchDataset([case], (32, 32, 32), 2, seed=5, rank=1)
    same_rank = PatchDataset([case], (32, 32, 32), 2, seed=5, rank=0)
    assert not torch.equal(other_rank[4]["image"], same_rank[4]["image"])
    assert not torch.equal(same_rank[4]["image"], same_rank[5]["image"])


def test_loader_batches_do_not_depend_on_workers_or_start_step():
    case = _case()
    aug = build_augmentation(load_config("cpu-small")["augment"])
    ds = PatchDataset([case, _case(seed=2)], (32, 32, 16), 2, seed=0, foreground_share=0.5, augment=aug)
    serial = [b["image"] for b in make_loader(ds, 0, 6, workers=0)]
    parallel = [b["image"] for b in make_loader(ds, 0, 6, workers=2)]
    resumed = [b["image"] for b in make_loader(ds, 4, 6, workers=1)]
    assert len(serial) == 6 and serial[0].shape == (2, 4, 32, 32, 16)
    assert all(torch.equal(s, p) for s, p in zip(serial, parallel))
    assert torch.equal(resumed[0], serial[4]) and torch.equal(resumed[1], serial[5])
    # building a loader does not touch torch's global RNG (which dropout uses)
    state = torch.get_rng_state()
    next(iter(make_loader(ds, 0, 1, workers=0)))
    assert torch.equal(state, torch.get_rng_state())


def test_dataset_pickles_without_open_arrays():
    ds = PatchDataset([_case()], (16, 16, 16), 1, seed=0)
    ds[0]
    assert ds._arrays
    assert pickle.loads(pickle.dumps(ds))._arrays == {}


# ------------------------------------------------------------------------------------------- augmentation
def test_augmentation_presets():
    assert build_augmentation(load_config("paper")["augment"]) is None
    aug = build_augmentation(load_config("default")["augment"])
    assert aug.affine_prob > 0 and type(aug.warp((32, 32, 32))).__name__ == "RandAffined"
    names = [type(t).__name__ for t in [*aug.flips.transforms, *aug.intensity.transforms]]
    for expected in ("RandFlipd", "RandScaleIntensityd", "RandShiftIntensityd", "RandAdjustContrastd",
                     "RandGaussianNoised"):
        assert expected in names


def test_spatial_augmentation_keeps_image_and_label_aligned():
    shape = (24, 24, 24)
    label = np.zeros(shape, np.uint8)
    label[3:9, 4:15, 2:6] = 1
    label[15:20, 10:22, 12:23] = 3
    image = np.repeat(label[None].astype(np.float32), 4, axis=0)
    cfg = dict(load_config("default")["augment"], affine_prob=0.0, intensity_prob=0.0, gamma_prob=0.0, noise_prob=0.0,
               flip_prob=0.5)
    ds = PatchDataset([memory_case("x", image, label)], shape, 1, seed=0, augment=build_augmentation(cfg))
    flipped = 0
    for i in range(12):
        item = ds[i]
        assert item["label"].dtype == torch.uint8 and item["label"].shape == (1, *shape)
        assert torch.equal(item["image"][0].round().to(torch.uint8), item["label"][0])
        flipped += not torch.equal(item["label"][0], torch.from_numpy(label))
    assert flipped > 0  # the flips did something

    cfg_affine = dict(cfg, flip_prob=0.0, affine_prob=1.0)
    ds = PatchDataset([memory_case("x", image, label)], shape, 1, seed=0, augment=build_augmentation(cfg_affine))
    item = ds[0]
    agree = (item["image"][0].round().to(torch.uint8) == item["label"][0]).float().mean()
    assert agree > 0.97 and set(item["label"].unique().tolist()) <= {0, 1, 3}


# ------------------------------------------------------------------------ issue 11: scale and padding fixes
def test_affine_warp_reads_a_larger_region_so_no_empty_corners_come_in():
    """A rotated/scaled patch is cut from the middle of a warped larger region (nnU-Net), not warped itself:
    inside a uniform volume every voxel of the augmented patch is image, none is padding."""
    shape, patch = (64, 64, 64), (16, 16, 16)
    image = np.ones((4, *shape), np.float32)
    label = np.zeros(shape, np.uint8)
    label[30:34, 30:34, 30:34] = 2
    cfg = dict(load_config("default")["augment"], affine_prob=1.0, flip_prob=0.0, intensity_prob=0.0, gamma_prob=0.0,
               noise_prob=0.0, rotate_deg=15.0, scale=0.1)
    ds = PatchDataset([memory_case("u", image, label)], patch, 1, seed=0, foreground_share=1.0,
                      augment=build_augmentation(cfg))
    for i in range(8):
        item = ds[i]
        assert item["image"].shape == (4, *patch)
        assert torch.allclose(item["image"], torch.ones_like(item["image"]), atol=1e-5), f"item {i} has padded corners"


def test_affine_context_covers_the_rotated_and_scaled_patch():
    from agsevnet.train.data import affine_context

    assert affine_context((16, 16, 16), 0.0, 0.0) == (18, 18, 18)
    ctx = affine_context((128, 128, 64), 15.0, 0.1)
    assert all((c - p) % 2 == 0 and c > p for c, p in zip(ctx, (128, 128, 64)))
    # a 15 degree rotation about one axis alone needs cos + sin = 1.22 times the extent, times the 1.1 zoom
    assert ctx[0] >= 128 * 1.22 * 1.1


def test_padding_uses_the_background_value_of_whole_image_normalisation():
    """Under ``preprocess.normalization=image`` the background is -mean/std per channel, not 0: patches reaching
    past a small case (and the warped region) are padded with it."""
    from agsevnet.preprocess import background_values, normalize

    rng = np.random.default_rng(0)
    raw = np.zeros((4, 12, 12, 12), np.float32)
    raw[:, 3:9, 3:9, 3:9] = rng.uniform(50, 100, size=(4, 6, 6, 6))
    image, stats = normalize(raw, mode="image")
    image = image.astype(np.float16)
    meta = {"normalization": stats, "dtype": "float16"}
    bg = background_values(meta)
    assert np.array_equal(np.asarray(bg, np.float16), image[:, 0, 0, 0])  # exactly the stored background
    assert all(v < -0.1 for v in bg)
    assert background_values({"normalization": {"mode": "brain", "mean": [1.0] * 4, "std": [2.0] * 4}}) == [0.0] * 4
    label = np.zeros((12, 12, 12), np.uint8)
    label[5:7, 5:7, 5:7] = 1
    case = memory_case("s", image, label, background=bg)
    ds = PatchDataset([case], (24, 24, 24), 1, seed=0)
    img = ds[0]["image"].numpy()
    corner = img[:, 0, 0, 0]  # the case is 12^3 inside a 24^3 patch: the corner is padding
    assert np.allclose(corner, bg), (corner, bg)
    assert not np.isclose(img, 0).all(axis=0).any()  # no voxel is 0 in every channel: no zero padding anywhere
    cfg = dict(load_config("default")["augment"], affine_prob=1.0, flip_prob=0.0, intensity_prob=0.0, gamma_prob=0.0,
               noise_prob=0.0)
    warped = PatchDataset([case], (24, 24, 24), 1, seed=0, augment=build_augmentation(cfg))[0]["image"].numpy()
    assert np.allclose(warped[:, 0, 0, 0], bg, atol=1e-3)


def test_loader_keeps_a_bounded_number_of_cases_open():
    from agsevnet.train import data as D

    cases = [_case(shape=(20, 20, 20), seed=i) for i in range(12)]
    opened = []
    for c in cases:
        inner = c.load
        c.load = (lambda inner=inner, cid=c.case_id: (opened.append(cid), inner())[1])
    ds = PatchDataset(cases, (8, 8, 8), 4, seed=0)
    ds._max_open = 3
    for i in range(200):
        ds.sample(i)
        assert len(ds._arrays) <= 3
    assert len(opened) > 12  # cases were closed and opened again
    assert D.open_case_limit() >= 1


def test_whole_pass_pads_with_the_given_background_value():
    """The whole-image pass pads the crop to the network's divisor with ``pad_value`` per channel (issue 11 fix 9)."""
    from agsevnet.infer.engine import predict_probabilities

    seen = []

    class Probe(torch.nn.Module):
        required_divisor = 16

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(2, 4, 1)

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.conv(x)

    image = np.ones((2, 10, 12, 16), np.float32)
    predict_probabilities(Probe(), image, roi_size=(16, 16, 16), strategy="whole", pad_value=[-0.5, -2.0], amp="fp32")
    x = seen[-1][0]
    assert x.shape == (2, 16, 16, 16)
    assert torch.all(x[0, 0] == -0.5) and torch.all(x[1, 0] == -2.0)  # a padded slice
    assert torch.all(x[:, 3:13, 2:14, :] == 1.0)  # the image itself, centred
    predict_probabilities(Probe(), image, roi_size=(16, 16, 16), strategy="whole", amp="fp32")
    assert torch.all(seen[-1][0, :, 0] == 0.0)  # default: zeros, as before


# ------------------------------------------------- robustness sampling and augmentation (commit e499dea)
def _brain_case(shape=(20, 20, 20), seed=0, background=0.0):
    """An ellipsoid brain (values in [0.5, 2] in every channel; FLAIR with a bright streak of normal tissue), the
    background ``background`` in every channel, and a FLAIR-bright tumour (labels 2 and 1) inside the brain."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=float)
    brain = sum(((g - (s - 1) / 2) / (s / 2.4)) ** 2 for g, s in zip(grid, shape)) <= 1
    image = np.full((4, *shape), background, np.float32)
    image[:, brain] = rng.uniform(0.5, 2.0, size=(4, int(brain.sum())))
    label = np.zeros(shape, np.uint8)
    c = [s // 2 for s in shape]
    label[c[0] - 3 : c[0] + 1, c[1] - 3 : c[1] + 1, c[2] - 3 : c[2] + 1] = 2
    label[c[0] - 2 : c[0], c[1] - 2 : c[1], c[2] - 2 : c[2]] = 1
    image[0][label > 0] = 10.0  # the tumour is the brightest thing on FLAIR: it must still never be a negative
    return image, label, brain


def test_bright_negatives_are_bright_normal_brain_deterministic_and_capped():
    from agsevnet.train.data import bright_negatives

    image, label, brain = _brain_case()
    idx = bright_negatives(image, label, "c")
    flair, normal = image[0].reshape(-1), (brain & (label == 0)).reshape(-1)
    threshold = np.percentile(flair[normal], 90)
    assert idx.dtype == np.int64 and idx.size > 0
    assert (label.reshape(-1)[idx] == 0).all()  # outside every tumour label
    assert brain.reshape(-1)[idx].all()  # inside the brain
    assert (flair[idx] > threshold).all()  # above the 90th percentile of the normal brain
    assert idx.size == np.count_nonzero(normal & (flair > threshold))  # and all of them (under the cap)
    assert np.array_equal(idx, bright_negatives(image, label, "c"))
    assert np.array_equal(memory_case("c", image, label).negatives, idx)  # memory cases carry them

    capped = bright_negatives(image, label, "c", max_count=10)
    assert capped.size == 10 and np.isin(capped, idx).all() and np.all(np.diff(capped) > 0)
    assert np.array_equal(capped, bright_negatives(image, label, "c", max_count=10))  # deterministic per case id
    others = [bright_negatives(image, label, f"other{i}", max_count=10) for i in range(3)]
    assert any(not np.array_equal(capped, o) for o in others)  # seeded by the case id

    # a background that is brighter than the brain (its value per channel given) is never a negative
    image, label, brain = _brain_case(background=5.0)
    idx = bright_negatives(image, label, "c", background=[5.0] * 4)
    assert idx.size > 0 and brain.reshape(-1)[idx].all()
    assert bright_negatives(np.zeros((4, 6, 6, 6), np.float32), np.zeros((6, 6, 6), np.uint8), "e").size == 0


def _covers(start, patch, voxel):
    return all(s <= v < s + p for s, p, v in zip(start, patch, voxel))


def test_negative_patches_contain_the_chosen_bright_negative_and_fall_back_without_any():
    import dataclasses

    image, label, _ = _brain_case((40, 30, 20))
    base = memory_case("c", image, label)
    patch = (16, 16, 16)
    rng = np.random.default_rng(0)
    for voxel in [(0, 0, 0), (39, 29, 19), (20, 3, 17), (5, 25, 10)]:
        one = dataclasses.replace(base, negatives=np.array([np.ravel_multi_index(voxel, base.shape)]))
        starts = [choose_patch(one, patch, rng, foreground=False, negative=True) for _ in range(40)]
        assert all(_covers(s, patch, voxel) for s in starts), voxel
        untargeted = [choose_patch(one, patch, rng, foreground=False) for _ in range(200)]
        assert sum(_covers(s, patch, voxel) for s in untargeted) < 0.6 * 200  # targeting is what does it
    # no bright negatives: the same draw as an untargeted patch
    for negatives in (None, np.zeros(0, np.int64)):
        none = dataclasses.replace(base, negatives=negatives)
        for seed in range(20):
            for sampling in ("start", "centre"):
                a = choose_patch(none, patch, np.random.default_rng(seed), False, negative=True, sampling=sampling)
                b = choose_patch(none, patch, np.random.default_rng(seed), False, sampling=sampling)
                assert a == b


def test_centre_sampling_covers_the_edges_about_as_often_as_the_middle():
    shape, patch = (40, 40, 40), (24, 24, 24)
    label = np.zeros(shape, np.uint8)  # no tumour: every patch is untargeted
    case = memory_case("u", np.ones((4, *shape), np.float32), label)

    def coverage(sampling):
        rng = np.random.default_rng(7)
        counts = np.zeros((3, shape[0]))
        n = 3000
        for _ in range(n):
            start = choose_patch(case, patch, rng, foreground=True, sampling=sampling)
            for axis in range(3):
                lo, hi = max(start[axis], 0), min(start[axis] + patch[axis], shape[axis])
                counts[axis, lo:hi] += 1
        return counts / n

    for sampling, low, high in (("centre", 0.4, 1.0), ("start", 0.0, 0.15)):
        cov = coverage(sampling)
        middle = cov[:, shape[0] // 2]
        for edge in (cov[:, 0], cov[:, -1]):
            ratio = edge / middle
            assert np.all((low <= ratio) & (ratio <= high)), (sampling, ratio)
    # the patch reaches at most half its size into the padding
    rng = np.random.default_rng(0)
    for _ in range(500):
        start = choose_patch(case, patch, rng, foreground=False, sampling="centre")
        assert all(-p // 2 <= s and s + p // 2 <= d for s, p, d in zip(start, patch, shape))


def test_natural_phase_and_negative_share_and_their_errors():
    import dataclasses

    shape, patch = (40, 40, 40), (16, 16, 16)
    label = np.zeros(shape, np.uint8)
    label[2:4, 2:4, 2:4] = 2  # a tiny tumour in a corner: an untargeted patch rarely holds it
    case = memory_case("t", np.ones((4, *shape), np.float32), label)
    negative = (37, 36, 35)  # one bright negative in the opposite corner
    case = dataclasses.replace(case, negatives=np.array([np.ravel_multi_index(negative, shape)]))

    def holds(ds, index, voxel):
        return _covers(ds._draw(index)[2], patch, voxel)

    ds = PatchDataset([case], patch, 2, seed=1, foreground_share=1.0, natural_from_step=5)
    assert all(holds(ds, i, (2, 2, 2)) for i in range(10))  # steps 0-4: every patch centred on the tumour
    assert sum(holds(ds, i, (2, 2, 2)) for i in range(10, 210)) < 20  # from step 5: untargeted
    ds = PatchDataset([case], patch, 2, seed=1, foreground_share=1.0)  # without the second phase: always targeted
    assert all(holds(ds, i, (2, 2, 2)) for i in range(10, 60))

    ds = PatchDataset([case], patch, 2, seed=1, negative_share=1.0, natural_from_step=3)
    assert all(holds(ds, i, negative) for i in range(6))
    assert sum(holds(ds, i, negative) for i in range(6, 206)) < 20
    ds = PatchDataset([case], patch, 2, seed=1, foreground_share=0.5, negative_share=0.5)
    tumour = sum(holds(ds, i, (2, 2, 2)) for i in range(200))
    bright = sum(holds(ds, i, negative) for i in range(200))
    assert tumour + bright == 200 and 60 < tumour < 140

    with pytest.raises(ConfigError, match="negative_share"):
        PatchDataset([case], patch, 2, seed=1, foreground_share=0.7, negative_share=0.5)
    with pytest.raises(ConfigError, match="sampling"):
        PatchDataset([case], patch, 2, seed=1, sampling="middle")


def _intensity_cfg(**overrides):
    cfg = dict(load_config("brats-cpu")["augment"], affine_prob=0.0, flip_prob=0.0, intensity_prob=1.0,
               intensity_shift=1.0, intensity_scale=0.5, noise_prob=1.0, noise_std=0.5, gamma_prob=0.0)
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize("background", [0.0, -0.8])
def test_remask_background_restores_the_background_after_intensity_transforms(background):
    image, label, brain = _brain_case((24, 24, 24), background=background)
    bg = None if background == 0 else [background] * 4
    case = memory_case("r", image, label, background=bg)
    outside = torch.from_numpy(~brain)

    def item(remask, index=0):
        aug = build_augmentation(_intensity_cfg(remask_background=remask))
        return PatchDataset([case], (24, 24, 24), 1, seed=0, augment=aug)[index]  # the patch is the whole case

    for index in range(3):
        on = item(True, index)["image"]
        assert torch.all(on[:, outside] == background)  # exactly the background value again
        assert not torch.allclose(on[:, ~outside], torch.from_numpy(image[:, brain]), atol=0.05)  # brain changed
        off = item(False, index)["image"]
        assert not torch.all(off[:, outside] == background)  # without it the background is shifted and noisy


def test_nnunet_intensity_transforms_run_keep_shapes_and_labels():
    image, label, brain = _brain_case((24, 24, 24))
    cfg = _intensity_cfg(contrast_prob=1.0, invert_gamma_prob=1.0, blur_prob=1.0, lowres_prob=1.0, gamma_prob=1.0,
                         remask_background=True)
    aug = build_augmentation(cfg)
    names = [type(t).__name__ for t in aug.intensity.transforms]
    for expected in ("RandScaleIntensityFixedMeand", "RandAdjustContrastd", "RandGaussianSmoothd",
                     "RandSimulateLowResolutiond", "RandGaussianNoised"):
        assert expected in names
    assert names.count("RandAdjustContrastd") == 2  # gamma and inverted gamma
    assert aug.flips is None
    ds = PatchDataset([memory_case("n", image, label)], (24, 24, 24), 1, seed=0, augment=aug)
    for index in range(2):
        out = ds[index]
        assert out["image"].shape == (4, 24, 24, 24) and out["image"].dtype == torch.float32
        assert torch.isfinite(out["image"]).all()
        assert torch.equal(out["label"][0], torch.from_numpy(label))  # intensity transforms leave labels alone
        assert torch.all(out["image"][:, torch.from_numpy(~brain)] == 0)
        inside = torch.from_numpy(brain)
        assert not torch.allclose(out["image"][:, inside], torch.from_numpy(image[:, brain]), atol=0.05)
