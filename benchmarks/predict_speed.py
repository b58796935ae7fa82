"""Prediction speed: AGSE-VNet end to end (read -> write) against MONAI's SegResNet sliding window.

Segments one real BraTS case (240x240x155) with ``agsevnet predict``'s code path and default settings
(``auto`` strategy: one pass over the brain crop where it fits; ``auto`` precision: bf16 on CPUs with native
bf16; channels_last_3d; the huge-page allocator and all CPUs), and, on the same case in the same run, times
MONAI's SegResNet with the BraTS tutorial settings (blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1],
init_filters=16, 4 -> 3 channels, fp32) through ``sliding_window_inference`` (roi 128x128x64, overlap 0.5,
Gaussian blending) on the full volume: the baseline's time is its inference alone (reading and writing are not
counted for it).

Each measurement runs in its own child process so that its peak memory (the RSS high-water mark, from
``wait4``) is its own. Wall-clock times and process CPU times are printed: on a shared machine the wall clock
depends on what else runs, the CPU time (all threads) much less; on an idle machine wall ~ CPU time / threads.
Both children get the same environment (``THP_MEM_ALLOC_ENABLE=1``, all CPUs).

Usage::

    python benchmarks/predict_speed.py [--case DIR] [--model CKPT] [--precision auto|fp32|bf16]
                                       [--strategy auto|whole|sliding] [--contiguous] [--skip-monai] [--profile]
                                       [--backends torch,onnxruntime,openvino]

Without ``--model`` the bundled model (``agsevnet predict``'s default, with the inference settings it was
validated with) is timed, against the targets of issue 10 (<= 5 s end to end, <= 0.15x SegResNet).
``--model default-random`` times the ``default`` AGSE-VNet (randomly initialised, saved in a temporary folder:
speed does not depend on the weights); ``--model NAME|CKPT`` any bundled model or checkpoint. ``--profile`` also prints where AGSE-VNet's time goes
(operators grouped as convolutions, normalisation, guided filter, ...).

``--backends torch,onnxruntime,openvino`` times each runtime (``agsevnet predict --backend``) end to end on the same
case, each in its own child process, and prints them side by side with each one's voxel agreement with the
torch labels; the network is exported to ONNX once beforehand (into a temporary cache, its time printed
apart), so no child pays for the export. Runtimes that are not installed are reported and left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("AGSEVNET_REAL_DATA", REPO.parent / "shared" / "data" / "brats-real"))
DEFAULT_CASE = REAL_DATA / "BraTS2021_00000"

# aten operators grouped by what they do in the network, for --profile.
OP_GROUPS = {
    "convolution": ("conv", "mkldnn_convolution", "slow_conv"),
    "normalisation": ("group_norm", "native_group_norm", "instance_norm", "batch_norm"),
    "guided filter (box sums, statistics, upsampling)": ("cumsum", "index_select", "upsample_trilinear",
                                                          "avg_pool3d", "addcmul", "div", "clamp", "narrow"),
    "activations, SE, elementwise": ("relu", "sigmoid", "mul", "add", "sub", "mean", "linear", "addmm"),
}


def _child_agsevnet(args: argparse.Namespace) -> dict:
    from agsevnet.cli.runtime import tune_cpu_runtime

    tune_cpu_runtime()  # as `agsevnet predict` does: before torch allocates anything
    import torch

    from agsevnet.infer.predictor import Predictor, predict

    t0 = time.perf_counter()
    predictor = Predictor.from_checkpoint(args.model, strategy=args.strategy, precision=args.precision,
                                          channels_last=args.channels_last,  # strategy None: the checkpoint's
                                          backend=args.backend)
    load_s = time.perf_counter() - t0
    runs, cpu, rss = [], [], []
    for _ in range(2):  # the first includes oneDNN's one-off kernel set-up; a batch pays it once
        t0, c0 = time.perf_counter(), time.process_time()
        summary = predict(args.case, predictor, args.out, overwrite=True, progress=False, raise_errors=True)
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        rss.append(_rss_gib())
    result = summary.results[0]
    out = {"model_load_s": load_s, "first_case_s": runs[0], "next_case_s": runs[1], "first_case_cpu_s": cpu[0],
           "next_case_cpu_s": cpu[1], "strategy": result.strategy,
           "precision": predictor.precision, "threads": torch.get_num_threads(), "rss_after_case_gib": rss,
           "backend": args.backend}
    if args.profile:
        out["profile"] = _profile(predictor, args.case)
    return out


def _rss_gib() -> float:
    """This process's resident memory now (to show it stays flat from case to case)."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024**2


def _profile(predictor, case_dir: str) -> dict:
    """Self CPU time per operator group of one network pass on the case's preprocessed crop."""
    from torch.profiler import ProfilerActivity, profile

    from agsevnet.data.io import load_case
    from agsevnet.data.layouts import discover
    from agsevnet.preprocess import preprocess_case

    pre = preprocess_case(load_case(discover(case_dir)[0], with_label=False), **predictor.preprocess)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        predictor.probabilities(pre.image)
    groups: dict[str, float] = {}
    ops: dict[str, float] = {}
    for event in prof.key_averages():
        name, seconds = event.key, event.self_cpu_time_total / 1e6
        ops[name] = seconds
        group = next((g for g, keys in OP_GROUPS.items() if any(k in name for k in keys)), "other")
        groups[group] = groups.get(group, 0.0) + seconds
    top = dict(sorted(ops.items(), key=lambda kv: -kv[1])[:12])
    return {"groups_s": groups, "top_ops_s": top, "crop_shape": list(pre.image.shape[1:])}


def _child_monai(args: argparse.Namespace) -> dict:
    from agsevnet.cli.runtime import tune_cpu_runtime

    tune_cpu_runtime()
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import SegResNet
    from monai.transforms import NormalizeIntensity

    from agsevnet.data.io import load_case
    from agsevnet.data.layouts import discover

    t0 = time.perf_counter()
    case = load_case(discover(args.case)[0], with_label=False)
    image = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(case.images))
    read_s = time.perf_counter() - t0
    model = SegResNet(blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=16, in_channels=4,
                      out_channels=3, dropout_prob=0.2).eval()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = sliding_window_inference(image[None].float(), (128, 128, 64), 1, model, overlap=0.5, mode="gaussian")
    infer_s, infer_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    return {"read_normalise_s": read_s, "inference_s": infer_s, "inference_cpu_s": infer_cpu_s,
            "output_shape": list(out.shape), "threads": torch.get_num_threads()}


def _run_child(kind: str, args: argparse.Namespace, extra: list[str]) -> tuple[dict, float, float]:
    """Run this script as a child; returns (its JSON result, wall seconds, peak RSS in GiB)."""
    cmd = [sys.executable, __file__, "--child", kind, "--case", str(args.case), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed with exit code {proc.returncode}")
    return json.loads(stdout.strip().splitlines()[-1]), wall, usage.ru_maxrss / 1024**2  # ru_maxrss is in KiB


def _default_checkpoint(folder: Path) -> Path:
    import torch

    from agsevnet.checkpoint import make_checkpoint, save_checkpoint
    from agsevnet.config import load_config
    from agsevnet.models import build_model

    config = load_config("default")
    torch.manual_seed(0)
    model = build_model(dict(config["model"]))
    return save_checkpoint(folder / "agsevnet-default-random.pt", make_checkpoint(model, config["model"], config, 0))


def _bundled_available() -> bool:
    try:
        from agsevnet.infer.bundled import resolve_model

        resolve_model(None)
    except Exception:  # noqa: BLE001 - no bundled weights in this checkout: fall back to the random default
        return False
    return True


def _compare_backends(args: argparse.Namespace, model: Path, label: str, extra: list[str], tmp: Path) -> None:
    """Time every backend of ``--backends`` end to end in its own child and print them side by side."""
    import importlib.util

    import nibabel as nib
    import numpy as np

    from agsevnet.infer.backends import BACKENDS

    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in wanted if b not in BACKENDS]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; known: {', '.join(BACKENDS)}")
    missing = [b for b in wanted if b != "torch" and importlib.util.find_spec(b) is None]
    for b in missing:
        print(f"{b}: not installed (pip install 'agsevnet[{'onnx' if b == 'onnxruntime' else b}]'); left out")
    wanted = [b for b in wanted if b not in missing]
    os.environ["AGSEVNET_CACHE"] = str(tmp / "cache")  # the children inherit it: the export below is theirs
    if any(b != "torch" for b in wanted):
        from agsevnet.checkpoint import load_checkpoint, model_from_checkpoint
        from agsevnet.infer.backends import exported_onnx
        from agsevnet.models import required_divisor

        ckpt = load_checkpoint(model)
        t0 = time.perf_counter()
        exported_onnx(model_from_checkpoint(ckpt), required_divisor(dict(ckpt["model"])))
        print(f"ONNX export (once per network, cached): {time.perf_counter() - t0:.1f} s")
    rows, labels = [], {}
    for backend in wanted:
        out = tmp / f"out-{backend}"
        child_extra = [*extra[:2], "--out", str(out), *extra[4:], "--backend", backend]
        result, wall, rss = _run_child("agsevnet", args, child_extra)
        rows.append((backend, result, wall, rss))
        seg = next(out.glob("*.nii.gz"))
        labels[backend] = np.asarray(nib.load(seg).dataobj)
    reference = labels.get("torch")
    print(f"{label}, {rows[0][1]['strategy']}, {rows[0][1]['threads']} threads, backends side by side "
          "(end to end: read, preprocess, network, postprocess, write):")
    print(f"  {'backend':12s} {'precision':9s} {'load s':>7s} {'first s':>8s} {'next s':>7s} {'next CPU s':>10s} "
          f"{'peak RSS GiB':>12s} {'vs torch':>9s} {'voxels = torch':>14s} {'tumour voxels = torch':>21s}")
    torch_next = next((r[1]["next_case_s"] for r in rows if r[0] == "torch"), None)
    for backend, r, wall, rss in rows:
        speed = f"{torch_next / r['next_case_s']:.2f}x" if torch_next else "-"
        if reference is not None:
            agree = float((labels[backend] == reference).mean())
            tumour = (labels[backend] > 0) | (reference > 0)
            tumour_agree = float((labels[backend][tumour] == reference[tumour]).mean()) if tumour.any() else 1.0
            agreement = f"{100 * agree:13.4f}% {100 * tumour_agree:20.2f}%"
        else:
            agreement = "-"
        print(f"  {backend:12s} {r['precision']:9s} {r['model_load_s']:7.1f} {r['first_case_s']:8.1f} "
              f"{r['next_case_s']:7.1f} {r['next_case_cpu_s']:10.1f} {rss:12.2f} {speed:>9s} {agreement}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="a real 240x240x155 BraTS case folder")
    parser.add_argument("--model", help="bundled model name, checkpoint, or default-random (default: the bundled "
                        "model)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--strategy", default=None, choices=["auto", "whole", "sliding"],
                        help="default: the checkpoint's own (auto for default-random)")
    parser.add_argument("--contiguous", dest="channels_last", action="store_false",
                        help="run AGSE-VNet in the contiguous memory format instead of channels_last_3d")
    parser.add_argument("--skip-monai", action="store_true", help="time AGSE-VNet only")
    parser.add_argument("--profile", action="store_true", help="also print AGSE-VNet's time per operator group")
    parser.add_argument("--backends", help="comma-separated runtimes to time side by side (torch, onnxruntime, "
                        "openvino), each end to end in its own process")
    parser.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["agsevnet", "monai"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = _child_agsevnet(args) if args.child == "agsevnet" else _child_monai(args)
        print(json.dumps(result))
        return

    if not args.case.is_dir():
        raise SystemExit(f"case folder not found: {args.case} (set AGSEVNET_REAL_DATA or pass --case)")
    print(f"case {args.case.name}; {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M')}; load average "
          f"{os.getloadavg()[0]:.1f} (other work on the machine inflates the times)")
    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "default-random" or (args.model is None and not _bundled_available()):
            model, label = _default_checkpoint(Path(tmp)), "AGSE-VNet default (random weights)"
            strategy = args.strategy or "auto"
        else:
            from agsevnet.infer.bundled import DEFAULT_MODEL, resolve_model

            model = resolve_model(args.model)
            label = f"AGSE-VNet {args.model or DEFAULT_MODEL}" + (" (bundled)" if str(model).startswith(
                str(Path(resolve_model(None)).parent)) else "")
            strategy = args.strategy
        extra = ["--model", str(model), "--out", str(Path(tmp) / "out"), "--precision", args.precision,
                 *(["--strategy", strategy] if strategy else []), *(["--profile"] if args.profile else []),
                 *([] if args.channels_last else ["--contiguous"])]
        if args.backends:
            _compare_backends(args, model, label, extra, Path(tmp))
            return
        ours, ours_wall, ours_rss = _run_child("agsevnet", args, extra)
    layout = "channels-last" if args.channels_last else "contiguous"
    print(f"{label} ({ours['strategy']}, {ours['precision']}, {layout}, {ours['threads']} threads): end to end "
          f"{ours['first_case_s']:.1f} s first case, {ours['next_case_s']:.1f} s next case (CPU time "
          f"{ours['first_case_cpu_s']:.1f} s, {ours['next_case_cpu_s']:.1f} s) "
          f"(model load {ours['model_load_s']:.1f} s; process {ours_wall:.1f} s); peak RSS {ours_rss:.2f} GiB; RSS "
          f"after each case {', '.join(f'{r:.2f}' for r in ours['rss_after_case_gib'])} GiB")
    if args.profile:
        prof = ours["profile"]
        print(f"  profile of one network pass on the {'x'.join(map(str, prof['crop_shape']))} crop (self CPU s):")
        for name, seconds in sorted(prof["groups_s"].items(), key=lambda kv: -kv[1]):
            print(f"    {name:50s} {seconds:7.2f}")
        print("  top operators: " + ", ".join(f"{k} {v:.2f}" for k, v in prof["top_ops_s"].items()))
    if args.skip_monai:
        return
    base, base_wall, base_rss = _run_child("monai", args, [])
    print(f"MONAI SegResNet sliding window (roi 128x128x64, overlap 0.5, gaussian, fp32, {base['threads']} "
          f"threads): inference {base['inference_s']:.1f} s (CPU time {base['inference_cpu_s']:.1f} s; read+normalise "
          f"{base['read_normalise_s']:.1f} s not "
          f"counted; process {base_wall:.1f} s); peak RSS {base_rss:.2f} GiB")
    first, following = ours["first_case_s"] / base["inference_s"], ours["next_case_s"] / base["inference_s"]
    cpu_ratio = ours["next_case_cpu_s"] / base["inference_cpu_s"]
    target = "<= 0.15 and <= 5 s end to end" if "bundled" in label else "<= 0.5"
    print(f"ratio {label} end to end / SegResNet inference: first case {first:.2f}, next case {following:.2f}; "
          f"in CPU time (less sensitive to other work on the machine) {cpu_ratio:.2f} (target {target})")


if __name__ == "__main__":
    main()
