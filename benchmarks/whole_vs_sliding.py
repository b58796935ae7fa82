"""Whole-image pass vs sliding window: how far do the labels of the two inference strategies agree on real cases?

Issue 11 (fix 6): validation, which picks ``best.pt``, used sliding windows while ``predict --strategy auto`` may
take one whole pass, and the two can disagree for models trained on small patches. This script measures it.

For each model (a checkpoint, or the ``default`` architecture randomly initialised with ``--random default``)
and each case it preprocesses the case once with the model's own preprocessing, predicts it with
``strategy=whole`` and with ``strategy=sliding`` (``--overlap``, default 0.5; every other setting, e.g. the
checkpoint's postprocessing, as the checkpoint says) and prints:

- ``agree_tumour``: among the voxels that at least one of the two passes labels as tumour, the share given the
  same label by both (1.0: identical tumour labels);
- ``agree_all``: the share of all voxels of the case's grid with the same label;
- ``Dice WT/TC/ET`` of each pass against the ground truth (when the case has one), and each pass's seconds.

Examples::

    nice -n 19 .venv/bin/python benchmarks/whole_vs_sliding.py --checkpoint /work/exp/cv/e1_classes/fold0/best.pt \\
        --data ../shared/data/brats-real --cases BraTS19_CBICA_ABM_1 Brats18_TCIA05_396_1
    nice -n 19 .venv/bin/python benchmarks/whole_vs_sliding.py --random default \\
        --data ../shared/data/brats-real --cases BraTS2021_00000

Reads the cases and the checkpoint, writes nothing. CPU-only figures are slow for the ``default`` model at 1 mm
(minutes per pass on two cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(agree_tumour, agree_all)`` of two internal label maps (see the module docstring); agree_tumour is NaN
    where neither labels any tumour."""
    same = a == b
    tumour = (a > 0) | (b > 0)
    return (float(same[tumour].mean()) if tumour.any() else float("nan")), float(same.mean())


def random_default_predictor(preset: str, seed: int, device: str):
    """A :class:`Predictor` for the architecture, patch size and preprocessing of config ``preset``, with the
    network's initial (random) weights from ``seed``."""
    import torch

    from agsevnet.config import load_config
    from agsevnet.infer.predictor import Predictor
    from agsevnet.models.registry import build_model, required_divisor

    cfg = load_config(preset)
    torch.manual_seed(seed)
    model = build_model(cfg["model"])
    preprocess = {k: cfg["preprocess"][k] for k in ("normalization", "margin", "dtype", "spacing")}
    return Predictor(model, preprocess=preprocess, divisor=required_divisor(cfg["model"]),
                     roi_size=cfg["data"]["patch_size"], device=device, precision="fp32")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", type=Path, help="a checkpoint (best.pt / last.pt)")
    which.add_argument("--random", metavar="PRESET", help="a config preset's architecture, randomly initialised")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (any layout agsevnet reads)")
    parser.add_argument("--cases", nargs="+", required=True, help="case ids to measure")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed with --random")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch

    from agsevnet.data.io import load_case
    from agsevnet.data.layouts import discover
    from agsevnet.evaluate.metrics import case_metrics
    from agsevnet.infer.predictor import Predictor

    if args.checkpoint is not None:
        predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, precision="fp32")
        model_name = str(args.checkpoint)
    else:
        predictor = random_default_predictor(args.random, args.seed, args.device)
        model_name = f"{args.random} architecture, random init (seed {args.seed})"
    specs = {s.case_id: s for s in discover(args.data)}
    missing = [c for c in args.cases if c not in specs]
    if missing:
        print(f"error: case(s) not found under {args.data}: {', '.join(missing)}", file=sys.stderr)
        return 2
    print(f"model: {model_name}; patch {list(predictor.roi_size)}, preprocessing {predictor.preprocess}, "
          f"sliding overlap {args.overlap}, torch threads {torch.get_num_threads()}")
    header = (f"{'case':<24} {'crop':<14} {'agree_tumour':>12} {'agree_all':>9}  "
              f"{'whole Dice WT/TC/ET':<20} {'sliding Dice WT/TC/ET':<22} {'whole s':>7} {'sliding s':>9}")
    print(header)
    for case_id in args.cases:
        case = load_case(specs[case_id])
        pre = predictor.preprocess_case(case)
        labels, seconds, dice = {}, {}, {}
        for strategy in ("whole", "sliding"):
            predictor.strategy, predictor.overlap = strategy, args.overlap
            start = time.perf_counter()
            labels[strategy] = predictor.predict_preprocessed(pre).labels
            seconds[strategy] = time.perf_counter() - start
            if case.label is not None:
                m = case_metrics(labels[strategy], case.label, case.geometry.zooms)
                dice[strategy] = "/".join(f"{m[f'Dice_{r}']:.3f}" for r in ("WT", "TC", "ET"))
            else:
                dice[strategy] = "n/a"
        tumour, overall = agreement(labels["whole"], labels["sliding"])
        crop = "x".join(str(int(s)) for s in pre.image.shape[1:])
        print(f"{case_id:<24} {crop:<14} {tumour:>12.4f} {overall:>9.4f}  {dice['whole']:<20} "
              f"{dice['sliding']:<22} {seconds['whole']:>7.1f} {seconds['sliding']:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
