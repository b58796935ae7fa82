"""Patches per second of the training loader alone (memory-mapped cache, sampling, augmentation, worker
processes) against the patches per second the model's training step consumes, for one config.

    python benchmarks/loader_throughput.py --config default --data ../shared/data/brats-real --workers 0 1 2
    python benchmarks/loader_throughput.py --config cpu-small          # on 4 generated full-size phantoms

A ratio above 1 means the loader keeps the model fed. Both are measured separately: on a CPU the loader's
processes and the training step share the same cores, so the two rates are upper bounds there; on a GPU
machine the loader runs on CPU cores the GPU step does not use.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def loader_rate(dataset, workers: int, batches: int, warmup: int) -> float:
    """Patches per second delivered by a loader with ``workers`` processes (after ``warmup`` batches)."""
    from agsevnet.train.data import make_loader

    loader = make_loader(dataset, 0, warmup + batches, workers, pin_memory=torch.cuda.is_available())
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * dataset.batch_size / (time.perf_counter() - start)
    del it, loader
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: 4 generated phantoms)")
    parser.add_argument("--cache", type=Path, default=None, help="preprocessing cache (default: a temporary folder)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--model-steps", type=int, default=None, help="timed model steps (default: 3 on a CPU "
                        "for paper/default, 20 otherwise)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from agsevnet.config import load_config
    from agsevnet.preprocess import build_cache
    from agsevnet.train.data import PatchDataset, build_augmentation, cached_cases
    from train_speed import measure

    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from agsevnet.synth.phantom import write_phantom_dataset

            data = Path(tmp) / "phantoms"
            write_phantom_dataset(data, 4, seed=0, workers=2)
        pre = cfg["preprocess"]
        cache = args.cache or Path(tmp) / "cache"
        ids = build_cache(data, cache, normalization=pre["normalization"], margin=pre["margin"], dtype=pre["dtype"])
        cases = cached_cases(str(cache), ids)
        dataset = PatchDataset(cases, cfg["data"]["patch_size"], cfg["data"]["batch_size"], cfg["seed"], 0,
                               cfg["data"]["foreground_share"], cfg["data"]["class_balanced"],
                               build_augmentation(cfg["augment"]))
        device = torch.device(args.device)
        big = args.config in ("paper", "default") and device.type == "cpu"
        model = measure(args.config, device, args.model_steps or (3 if big else 20), 1, None)
        needed = model["batch"] / model["s_per_step"]
        print(f"config {args.config}: {len(cases)} cases, patch {cfg['data']['patch_size']} x batch "
              f"{cfg['data']['batch_size']}, augmentation {'on' if cfg['augment']['enabled'] else 'off'}, "
              f"foreground share {cfg['data']['foreground_share']}")
        print(f"model training step on {device} ({model['precision']}): {model['s_per_step']:.3f} s/step = "
              f"{needed:.1f} patches/s needed")
        print(f"{'workers':>7} {'patches/s':>10} {'loader / model':>15}")
        for w in args.workers:
            rate = loader_rate(dataset, w, args.batches, args.warmup)
            print(f"{w:>7} {rate:>10.1f} {rate / needed:>15.2f}", flush=True)


if __name__ == "__main__":
    main()
