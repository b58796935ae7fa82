"""Re-score the fold models of finished cross-validation studies under inference variants, without retraining.

    python scripts/crossval_variants.py DATA CV_A [CV_B ...] --out variants.json

For every fold of the studies (they must hold the same folds: the same recipe trained with other seeds, or other
recipes on the same split) and every held-out patient, the probabilities of each study's fold model are computed
once (the checkpoint's preprocessing, resolution and sliding window, exactly as ``agsevnet predict`` does; the
fold's final weights), and then decoded under each variant:

- ``<study>/<rule>``: one study's model, tumour components ranked by ``rule`` and kept when they score at least
  half of the best one (:func:`agsevnet.infer.postprocess.keep_main_components`), or ``none`` (no filter);
- ``ensemble/<rule>``: the mean of all studies' probabilities (nnU-Net's ensembling), then the same rules.

Each variant is scored with ``agsevnet evaluate``'s code (Dice, HD95 pooled rule) against the ground truth; the
JSON holds every case's scores and, per variant, the means, the worst patient and the number of failures (WT Dice
below 0.5), plus the per-case signals of :func:`agsevnet.infer.signals.case_signals` for the study of flagging
failures. Choosing a variant here is a choice made on the cross-validation: report it as such.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RULES = ("none", "size", "mass", "core")


def main() -> None:
    import torch

    from agsevnet.data.io import load_case
    from agsevnet.data.layouts import discover
    from agsevnet.evaluate.metrics import case_metrics
    from agsevnet.infer.postprocess import component_weights, keep_main_components
    from agsevnet.infer.predictor import Predictor
    from agsevnet.infer.signals import case_signals
    from agsevnet.preprocess import brain_mask, crop, uncrop

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data")
    ap.add_argument("studies", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--checkpoint", default="last.pt", help="file in each fold folder (default: the final weights)")
    args = ap.parse_args()

    specs = {s.case_id: s for s in discover(Path(args.data))}
    studies = [Path(s) for s in args.studies]
    records = [json.loads((s / "crossval.json").read_text()) for s in studies]
    folds = records[0]["folds"]
    rows: list[dict] = []
    for k, fold in folds.items():
        predictors = [Predictor.from_checkpoint(s / f"fold{k}" / args.checkpoint, min_component_fraction=0.0)
                      for s in studies]
        for case_id in fold["cases"]:
            case = load_case(specs[case_id])
            gt_full = case.label
            spacing = tuple(float(z) for z in case.geometry.zooms)
            probs = []
            pre = None
            for predictor in predictors:
                pre = predictor.preprocess_case(case)
                _, prob = predictor.labels_on_crop(pre)
                probs.append(prob.astype(np.float32))
            brain = crop(brain_mask(case.images), pre.box)
            variants = {s.name: p for s, p in zip(studies, probs)}
            if len(probs) > 1:
                variants["ensemble"] = np.mean(probs, axis=0)
            for name, prob in variants.items():
                raw = torch.argmax(torch.from_numpy(prob), dim=0).to(torch.uint8).numpy()
                for rule in RULES:
                    if rule == "none":
                        labels = raw
                    else:
                        labels = keep_main_components(raw, args.fraction, component_weights(prob, rule))
                    full = uncrop(labels, pre.box, pre.original_shape, fill=0)
                    scores = case_metrics(full, gt_full, spacing, hd95="pooled")
                    row = {"variant": f"{name}/{rule}", "fold": k, "case": case_id, **scores}
                    if rule == "none":
                        members = probs if name == "ensemble" else None
                        row["signals"] = case_signals(raw, prob, brain, case.geometry.affine, spacing, members=members)
                    rows.append(row)
                    print(f"{name}/{rule} fold {k} {case_id}: Dice ET {scores['Dice_ET']:.3f} WT "
                          f"{scores['Dice_WT']:.3f} TC {scores['Dice_TC']:.3f}", flush=True)
    summary = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        vr = [r for r in rows if r["variant"] == variant]
        means = {key: float(np.mean([r[key] for r in vr])) for key in vr[0] if key.startswith(("Dice_", "Hausdorff95_"))}
        worst = min(vr, key=lambda r: r["Dice_WT"])
        summary[variant] = {**means, "worst_case": worst["case"], "worst_WT": worst["Dice_WT"],
                            "failures": sum(r["Dice_WT"] < 0.5 for r in vr), "n": len(vr)}
    Path(args.out).write_text(json.dumps({"studies": [str(s) for s in studies], "rows": rows, "summary": summary},
                                         indent=1, default=float))
    print("variant | Dice ET | WT | TC | HD95 ET | WT | TC | worst WT | failures")
    for variant, m in summary.items():
        print(f"{variant} | {m['Dice_ET']:.3f} | {m['Dice_WT']:.3f} | {m['Dice_TC']:.3f} | {m['Hausdorff95_ET']:.1f} | "
              f"{m['Hausdorff95_WT']:.1f} | {m['Hausdorff95_TC']:.1f} | {m['worst_WT']:.2f} ({m['worst_case']}) | "
              f"{m['failures']}")


if __name__ == "__main__":
    main()
