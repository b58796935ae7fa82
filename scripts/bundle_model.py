"""Turn trained runs into the bundled model shipped in ``src/agsevnet/weights/<name>.pt``.

    python scripts/bundle_model.py RUN/last.pt [RUN2/last.pt ...] --crossval CV/crossval.json --name brats-cpu \
        --training "..." [--reference ../shared/data/brats-real/BraTS2021_00002] [--inference component_rule=core]

Several checkpoints of one architecture (e.g. the fold models of a cross-validation) become one ensemble
checkpoint (``members``: their probabilities are averaged at inference).
Drops the training state, stores the weights in float16 (checked: the labels predicted on ``--check-case`` with
the float16 weights are compared voxel by voxel with the float32 weights' and the difference printed; pass
``--full`` to keep float32), and records the model card (cross-validated figures from ``crossval.json``, the
training description, and each ``--reference`` case's Dice for the regression test).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--crossval", type=Path, required=True, help="crossval.json of the recipe")
    parser.add_argument("--name", default="brats-cpu")
    parser.add_argument("--training", required=True, help="how, on what and how long it was trained")
    parser.add_argument("--summary", default="", help="one line for `agsevnet models`")
    parser.add_argument("--reference", type=Path, action="append", default=[],
                        help="a labelled case whose Dice the card records (regression test); repeatable")
    parser.add_argument("--full", action="store_true", help="keep float32 weights")
    parser.add_argument("--inference-from", help="a preset whose inference section replaces the checkpoint's (when "
                        "the recipe's postprocessing was chosen after this run was trained; the card's figures must "
                        "come from a cross-validation with the same settings)")
    parser.add_argument("--inference", action="append", default=[], metavar="KEY=VALUE",
                        help="an inference setting to store (e.g. component_rule=core, overlap=0.25); repeatable")
    args = parser.parse_args()


    from agsevnet.checkpoint import load_checkpoint, save_checkpoint
    from agsevnet.data.io import load_case
    from agsevnet.data.layouts import discover
    from agsevnet.evaluate.metrics import dice_scores
    from agsevnet.infer.bundled import bundle_checkpoint
    from agsevnet.infer.predictor import Predictor

    import yaml

    ckpts = [load_checkpoint(path) for path in args.checkpoints]
    ckpt = ckpts[0]
    if len(ckpts) > 1:
        if any(c["model"] != ckpt["model"] or c["preprocess"] != ckpt["preprocess"] for c in ckpts):
            raise SystemExit("the checkpoints differ in architecture or preprocessing: they cannot form one ensemble")
        ckpt["members"] = [c["state_dict"] for c in ckpts]
    cv = json.loads(args.crossval.read_text())
    if args.inference_from:
        from agsevnet.config import load_config

        inference = dict(load_config(args.inference_from)["inference"])
        ckpt["inference"] = inference
        ckpt["config"]["inference"] = inference
    for item in args.inference:
        key, _, value = item.partition("=")
        ckpt["inference"] = {**ckpt["inference"], key: yaml.safe_load(value)}
        ckpt["config"]["inference"] = ckpt["inference"]
    if cv.get("inference") and any(ckpt["inference"].get(k) != v for k, v in cv["inference"].items()):
        raise SystemExit(f"the cross-validation used inference settings {cv['inference']}, the checkpoint carries "
                         f"{ckpt['inference']}: the card's figures would not describe the model")
    patients = len(cv["rows"])
    card = {
        "summary": args.summary,
        "training": args.training,
        "members": len(ckpts),
        "recipe": ckpt["config"].get("preset"),
        "config": ckpt["config"],
        "crossval": {**cv["mean"], "patients": patients, "folds": len(cv["folds"]), "hd95_rule": cv.get("hd95_rule"),
                     "std": cv["std"]},
        "intended_use": "research on BraTS-style multi-modal glioma MRI; not for clinical use",
        "references": {},
    }
    bundled = bundle_checkpoint(ckpt, card, half=not args.full)
    predictor = Predictor.from_checkpoint(bundled)
    original = None if args.full else Predictor.from_checkpoint(ckpt)  # float16 must change no label: say how many
    for case_dir in args.reference:
        case = load_case(discover(case_dir)[0])
        labels = predictor.predict_case(case).labels
        dice = dice_scores(labels, case.label)
        line = f"{case_dir.name}: Dice " + ", ".join(f"{k} {v:.4f}" for k, v in dice.items())
        if original is not None:
            reference = original.predict_case(case).labels
            differ = int((reference != labels).sum())
            line += f"; float16 vs float32 weights differ on {differ} voxels ({differ / max(1, int((reference > 0).sum())):.2e} of the tumour)"
        print(line)
        bundled["card"]["references"][case.case_id] = {k: float(v) for k, v in dice.items()}
    out = REPO / "src" / "agsevnet" / "weights" / f"{args.name}.pt"
    save_checkpoint(out, bundled)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
