"""``agsevnet demo``: the whole pipeline on synthetic phantoms, on a CPU, in minutes.

Stages (each timed; progress bars throughout):

1. **phantoms**: labelled training phantoms and held-out phantoms (another seed) in the BraTS 2020 layout
   (:func:`agsevnet.synth.phantom.write_phantom_dataset`) under ``DIR/data/train`` and ``DIR/data/test``;
2. **training**: the ``cpu-small`` preset (:func:`agsevnet.train.trainer.train`) on the training phantoms into
   ``DIR/run``, for a wall-clock budget of ``minutes``: the first ``optim.warmup_steps`` steps (whose learning
   rate does not depend on the run's length) measure this machine's speed, the step count that fits the rest
   of the budget is computed from it, and the run is resumed to that count (an exact resume: the same weights as
   one uninterrupted run of that length);
3. **prediction**: the held-out phantoms with the final weights (:func:`agsevnet.infer.predictor.predict`), one
   NIfTI label map per case in the BraTS 2020 convention on the input grid, under ``DIR/predictions``;
4. **evaluation**: BraTS metrics against the held-out ground truth (:func:`agsevnet.evaluate.runner.evaluate`),
   ``DIR/evaluation/metrics.csv``, ``metrics_summary.csv`` and ``metrics.json``;
5. **robustness**: the paper's k-space noise experiment (Fig. 12) on the held-out phantoms
   (:func:`agsevnet.report.robustness.run_robustness`, the default SNR levels), ``DIR/robustness/``;
6. **report**: ``DIR/report.html`` (:func:`agsevnet.report.html.build_report`), self-contained, with the
   disclaimer :data:`DISCLAIMER` at the top.

``DIR/demo.json`` records the settings, stage times and results; it also marks the folder as a demo folder:
``overwrite`` replaces the demo's own files only in such a folder and never deletes anything in another one.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agsevnet import REGIONS, __version__
from agsevnet.errors import ConfigError, OutputExistsError
from agsevnet.fsutil import write_json_atomic

DISCLAIMER = (
    "DEMONSTRATION ONLY - NOT FOR PATIENTS. This model was trained for a few minutes on synthetic phantoms. "
    "It has never seen a real scan, its results say nothing about real tumours, and it must not be used for "
    "diagnosis, treatment planning or any other clinical purpose."
)
DEFAULT_OUT = Path("agsevnet-demo")
DEFAULT_MINUTES = 5.0
DEFAULT_SHAPE: tuple[int, int, int] = (64, 64, 64)
TRAIN_CASES, TEST_CASES = 8, 4
MAX_STEPS = 1600
"""The most training steps the demo plans, however fast the machine. Mean Dice (ET, WT, TC) on the 4 held-out
phantoms, seeds 0/1/2: 0.953/0.951/0.825 after 800 steps; 0.962/0.959/0.875 after 969/993/1600 steps (5-minute
budget on the shared 2-core machine; seed 2 has a held-out case whose grey matter the model takes for tumour,
0.65 after 1600 steps, 0.50 after 800). 1600 steps take about 3.5 min on an idle 2-core CPU."""
MIN_USEFUL_STEPS = 500
"""Fewer planned steps than this get a warning: the model will segment the phantoms poorly."""
CONFIG = "cpu-small"
MARKER = "demo.json"
DEMO_ENTRIES: tuple[str, ...] = (MARKER, "data", "run", "predictions", "evaluation", "robustness", "report.html")
"""What a demo folder holds."""
STAGES: tuple[str, ...] = ("phantoms", "training", "prediction", "evaluation", "robustness", "report")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir``, or empty the demo's entries in it with ``overwrite``.

    Raises :class:`OutputExistsError` when ``out_dir`` is a file, is non-empty without ``overwrite``, or is
    non-empty and not a demo folder (no ``demo.json``): nothing is ever deleted there.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError("exists and is not a folder", out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputExistsError("output folder is not empty (pass --overwrite to replace the demo in it, or "
                                    "choose another --out)", out_dir)
        if not (out_dir / MARKER).is_file():
            raise OutputExistsError(f"is not empty and holds no {MARKER}: not a demo folder, so --overwrite will not "
                                    "delete anything in it; choose an empty or new --out", out_dir)
        for name in DEMO_ENTRIES:
            path = out_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def stage_seed(seed: int, stage: int) -> int:
    """Independent seeds for the training phantoms (0), the held-out phantoms (1) and the training (2)."""
    return int(np.random.SeedSequence([int(seed), int(stage)]).generate_state(1)[0] % (2**31))


def plan_steps(rate: float, remaining_s: float, done_steps: int, max_steps: int = MAX_STEPS) -> int:
    """Total training steps: those done plus what ``rate`` (steps/s) fits in ``remaining_s`` seconds, keeping
    10% and 15 s for restarting the run and its final validation and checkpoint; within ``[done, max_steps]``."""
    usable = max(0.0, 0.9 * remaining_s - 15.0)
    return int(min(max_steps, max(done_steps, done_steps + int(rate * usable))))


def _calibration_rate(run_dir: Path, step: int, summary: Mapping[str, Any]) -> float:
    """Steps/s of the last logged interval up to ``step`` (after the loader and the first steps warmed up),
    from the run's ``metrics.csv``; the whole short run's rate when no such row exists."""
    try:
        with (run_dir / "metrics.csv").open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) == step and r.get("steps_per_s")]
        if rows:
            return float(rows[-1]["steps_per_s"])
    except (OSError, ValueError):
        pass
    return float(summary.get("steps_per_s") or 0.0)


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _train(data_dir: Path, run_dir: Path, *, budget_s: float, seed: int, max_steps: int, overrides: Sequence[str],
           progress: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    """Stage 2 (see the module docstring); returns the training summary plus the planned steps and the
    calibration rate."""
    from agsevnet.config import load_config
    from agsevnet.train.trainer import train

    start = time.perf_counter()
    warmup = int(load_config(CONFIG, overrides)["optim"]["warmup_steps"])
    calibration = max(1, min(warmup, max_steps // 2))
    # fold "all": every training phantom trains; validation (for the curves) on one of them, every 100 steps.
    base = ["validation.fold=all", "validation.max_cases=1", "validation.every=100", f"seed={stage_seed(seed, 2)}"]
    echo(f"  measuring this machine's speed with the first {calibration} steps (learning-rate warm-up)")
    summary = train(data_dir, run_dir, config=CONFIG, overrides=[*base, *overrides, f"train.steps={calibration}"],
                    progress=progress)
    rate = _calibration_rate(run_dir, calibration, summary)
    remaining = budget_s - (time.perf_counter() - start)
    steps = plan_steps(rate, remaining, calibration, max_steps)
    echo(f"  {rate:.2f} steps/s: training to step {steps} in the remaining {max(remaining, 0) / 60:.1f} min of the "
         f"budget")
    if steps < MIN_USEFUL_STEPS:
        echo(f"  warning: {steps} steps are too few for a good model (this machine is slow or busy; the demo "
             f"plans up to {max_steps}); give more --minutes")
    if steps > calibration:
        summary = train(data_dir, run_dir, overrides=[f"train.steps={steps}"], resume=True, progress=progress)
    return {**summary, "planned_steps": steps, "calibration_steps": calibration, "calibration_steps_per_s": rate}


def run_demo(
    out_dir: str | Path = DEFAULT_OUT,
    *,
    minutes: float = DEFAULT_MINUTES,
    seed: int = 0,
    overwrite: bool = False,
    train_cases: int = TRAIN_CASES,
    test_cases: int = TEST_CASES,
    shape: Sequence[int] = DEFAULT_SHAPE,
    max_steps: int = MAX_STEPS,
    overrides: Sequence[str] = (),
    progress: bool = True,
    echo: Callable[[str], None] = _stderr,
) -> dict[str, Any]:
    """Run the demo into ``out_dir`` (see the module docstring); returns what ``demo.json`` records.

    ``minutes``: the training budget (the other stages take about a minute on a 2-core CPU); ``max_steps``: the
    most training steps whatever the budget; ``overrides``: ``--set`` style changes to the ``cpu-small`` config
    (e.g. a smaller network for tests). ``echo`` receives the stage messages (default: stderr). Raises
    :class:`OutputExistsError` for a non-empty ``out_dir`` without ``overwrite`` (see :func:`prepare_out_dir`),
    :class:`ConfigError` for bad settings.
    """
    from agsevnet.synth.phantom import write_phantom_dataset
    from agsevnet.evaluate.runner import evaluate
    from agsevnet.evaluate.summary import evaluation_record, region_mean, write_outputs
    from agsevnet.infer.predictor import predict
    from agsevnet.report.html import build_report
    from agsevnet.report.robustness import run_robustness

    if not minutes > 0:
        raise ConfigError(f"--minutes must be positive, got {minutes}")
    if train_cases < 1 or test_cases < 1:
        raise ConfigError(f"the demo needs at least one training and one held-out case, got {train_cases} and "
                          f"{test_cases}")
    if max_steps < 1:
        raise ConfigError(f"max_steps must be at least 1, got {max_steps}")
    out_dir = Path(out_dir)
    shape = tuple(int(s) for s in shape)
    prepare_out_dir(out_dir, overwrite)
    data_dir, run_dir = out_dir / "data", out_dir / "run"
    pred_dir, eval_dir, report_path = out_dir / "predictions", out_dir / "evaluation", out_dir / "report.html"
    record: dict[str, Any] = {
        "format": "agsevnet-demo", "agsevnet_version": __version__, "status": "running",
        "settings": {"minutes": minutes, "seed": seed, "train_cases": train_cases, "test_cases": test_cases,
                     "shape": list(shape), "config": CONFIG, "max_steps": max_steps, "overrides": list(overrides)},
        "disclaimer": DISCLAIMER, "stages": {}, "load_average_start": _load_average(),
    }
    write_json_atomic(out_dir / MARKER, record)
    times: dict[str, float] = record["stages"]
    started = time.perf_counter()

    def stage(index: int, name: str, text: str) -> float:
        if index > 1:  # demo.json keeps the times of the stages done so far
            write_json_atomic(out_dir / MARKER, record)
        echo(f"[{index}/{len(STAGES)}] {name}: {text}")
        return time.perf_counter()

    t = stage(1, "phantoms", f"{train_cases} training and {test_cases} held-out synthetic cases of "
                             f"{'x'.join(map(str, shape))} voxels")
    # One process: a small phantom takes ~0.2 s, less than starting a worker process.
    write_phantom_dataset(data_dir / "train", train_cases, stage_seed(seed, 0), shape, progress=progress)
    write_phantom_dataset(data_dir / "test", test_cases, stage_seed(seed, 1), shape, progress=progress)
    times["phantoms"] = round(time.perf_counter() - t, 1)

    t = stage(2, "training", f"{CONFIG} for up to {minutes:g} min (at most {max_steps} steps)")
    training = _train(data_dir / "train", run_dir, budget_s=minutes * 60, seed=seed, max_steps=max_steps,
                      overrides=overrides, progress=progress, echo=echo)
    times["training"] = round(time.perf_counter() - t, 1)
    record["training"] = {k: training.get(k) for k in ("steps", "planned_steps", "calibration_steps",
                                                       "calibration_steps_per_s", "parameters", "device", "final_loss")}
    device, checkpoint = training.get("device") or "cpu", run_dir / "last.pt"

    t = stage(3, "prediction", f"{test_cases} held-out case(s) with {checkpoint}")
    predict(data_dir / "test", checkpoint, pred_dir, progress=progress, raise_errors=True, device=device)
    times["prediction"] = round(time.perf_counter() - t, 1)

    t = stage(4, "evaluation", "BraTS metrics against the held-out ground truth")
    evaluation = evaluation_record(evaluate(pred_dir, data_dir / "test", progress=progress))
    write_outputs(evaluation, eval_dir / "metrics.csv", eval_dir / "metrics.json")
    times["evaluation"] = round(time.perf_counter() - t, 1)
    mean = {r: evaluation["summary"][f"Dice_{r}"]["Mean"] for r in REGIONS}
    mean["mean"] = region_mean(mean)
    record["dice"] = mean
    record["cases"] = {c["case"]: {r: c["metrics"][f"Dice_{r}"] for r in REGIONS} for c in evaluation["cases"]}

    t = stage(5, "robustness", "the held-out phantoms under k-space noise (paper Fig. 12)")
    noise = run_robustness(data_dir / "test", checkpoint, out_dir / "robustness", seed=stage_seed(seed, 3),
                           progress=progress, device=device)
    times["robustness"] = round(time.perf_counter() - t, 1)
    record["robustness"] = {row["level"]: row["Dice_mean"] for row in noise["levels"]}

    t = stage(6, "report", str(report_path))
    build_report(out_dir, report_path, title="agsevnet demo: AGSE-VNet (cpu-small) trained on synthetic phantoms",
                 notes=_report_notes(record), overwrite=True, progress=progress)
    times["report"] = round(time.perf_counter() - t, 1)

    record.update(status="complete", total_seconds=round(time.perf_counter() - started, 1),
                  load_average_end=_load_average(), report=str(report_path.resolve()),
                  checkpoint=str(checkpoint.resolve()))
    write_json_atomic(out_dir / MARKER, record)
    return record


def _snr_key(level: str) -> float:
    return float("inf") if level == "clean" else float(level)


def _report_notes(record: Mapping[str, Any]) -> str:
    s, tr, d, r = record["settings"], record["training"], record["dice"], record["robustness"]
    return (
        f"{DISCLAIMER}\n\n"
        f"What this demo did: generated {s['train_cases']} training and {s['test_cases']} held-out synthetic phantoms "
        f"({'x'.join(map(str, s['shape']))} voxels, seed {s['seed']}; the held-out ones from another seed), trained "
        f"the {s['config']} AGSE-VNet for {tr['steps']} steps ({record['stages']['training'] / 60:.1f} min on "
        f"{tr['device']}), segmented the held-out phantoms and evaluated them: mean Dice ET {d['ET']:.3f}, "
        f"WT {d['WT']:.3f}, TC {d['TC']:.3f} (mean {d['mean']:.3f}). Under k-space noise (robustness/, the paper's "
        f"Fig. 12) the mean Dice goes from {r['clean']:.3f} (clean) to {r[min(r, key=_snr_key)]:.3f} at SNR "
        f"{min(r, key=_snr_key)}."
    )


def format_summary(record: Mapping[str, Any]) -> str:
    """The text printed at the end of the demo: stage times, Dice on the held-out phantoms, the report's path
    and the disclaimer."""
    times, tr, d = record["stages"], record["training"], record["dice"]
    load = record.get("load_average_end")
    lines = [f"agsevnet demo finished in {record['total_seconds'] / 60:.1f} min"
             + (f" (load average {load:.2f})" if load is not None else ""), ""]
    details = {
        "phantoms": f"{record['settings']['train_cases']} training + {record['settings']['test_cases']} held-out cases",
        "training": f"{tr['steps']} steps of {CONFIG} on {tr['device']} "
                    f"({tr['calibration_steps_per_s']:.2f} steps/s measured)",
        "prediction": "NIfTI label maps in predictions/",
        "evaluation": "evaluation/metrics.csv, metrics.json",
        "robustness": "mean Dice " + ", ".join(
            f"{'clean' if level == 'clean' else 'SNR ' + level} {dice:.3f}"
            for level, dice in record["robustness"].items() if level in ("clean", "10", "5")),
        "report": "report.html",
    }
    for name in STAGES:
        lines.append(f"  {name:<11}{times[name]:>7.1f} s   {details[name]}")
    lines += ["", f"Dice on the {len(record['cases'])} held-out phantoms (mean over cases):",
              f"  ET {d['ET']:.3f}   WT {d['WT']:.3f}   TC {d['TC']:.3f}   mean {d['mean']:.3f}"]
    for case, dice in record["cases"].items():
        lines.append(f"    {case}: " + "  ".join(f"{r} {dice[r]:.3f}" for r in REGIONS))
    lines += [
        "", f"Report: {record['report']}", "",
        DISCLAIMER, "",
        "With real data (a BraTS folder with labels):",
        "  agsevnet train BRATS_FOLDER --out runs/fold0 --config default",
        "  agsevnet predict NEW_CASES --model runs/fold0/best.pt --out predictions",
    ]
    return "\n".join(lines)
