"""Time per 1,000 training steps of each training config on this machine (model step only: forward, loss,
backward, optimiser; data comes from memory, see loader_throughput.py for the loader).

    python benchmarks/train_speed.py                       # paper, default, cpu-small on the default device
    python benchmarks/train_speed.py --configs cpu-small --steps 30 --amp fp32 bf16   # does bf16 help this CPU?

Each config runs ``--warmup`` untimed steps, then ``--steps`` timed ones (the paper's 17.6 M-parameter network on
128x128x64 patches takes seconds per step on a CPU: keep --steps small there). Wall time and process CPU time
are both printed: on a shared machine the wall time is inflated by other jobs, the CPU time much less so.
The ratio column compares each config's step time with the first config measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch


def measure(config: str, device: torch.device, steps: int, warmup: int, amp: str | None) -> dict:
    from agsevnet.config import load_config
    from agsevnet.models import build_model
    from agsevnet.models.losses import build_loss
    from agsevnet.train.trainer import build_optimizer, resolve_amp, training_step

    cfg = load_config(config)
    precision = resolve_amp(amp or cfg["train"]["amp"], device)
    torch.manual_seed(0)
    model = build_model(cfg["model"]).to(device)
    channels_last = bool(cfg["train"]["channels_last"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    loss_fn = build_loss(cfg["loss"])
    optimizer = build_optimizer(model.parameters(), cfg["optim"])
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    batch, patch = int(cfg["data"]["batch_size"]), [int(p) for p in cfg["data"]["patch_size"]]
    x = torch.randn(batch, 4, *patch, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, 4, (batch, 1, *patch), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step() -> None:
        training_step(model, loss_fn, optimizer, scaler, x, y, dtype, cfg["optim"]["grad_clip"])

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps
    return {"config": config, "precision": precision, "batch": batch, "patch": patch, "s_per_step": wall,
            "cpu_s_per_step": cpu, "params": sum(p.numel() for p in model.parameters())}


def _hms(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["paper", "default", "cpu-small"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per config (default: 3 for paper/default "
                        "on a CPU, 30 otherwise)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--amp", nargs="+", default=[None], help="precisions to compare (fp32, bf16, fp16); "
                        "default: each config's own")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"{'config':<10} {'precision':<9} {'batch x patch':<20} {'params':>8} {'s/step':>8} {'CPU s/step':>10} "
          f"{'per 1000 steps':>15} {'ratio':>6}")
    base = None
    for config in args.configs:
        for amp in args.amp:
            big = config in ("paper", "default") and device.type == "cpu"
            steps = args.steps or (3 if big else 30)
            r = measure(config, device, steps, 1 if big else args.warmup, amp)
            base = base or r["s_per_step"]
            shape = f"{r['batch']} x {'x'.join(map(str, r['patch']))}"
            print(f"{r['config']:<10} {r['precision']:<9} {shape:<20} {r['params'] / 1e6:>7.2f}M {r['s_per_step']:>8.3f} "
                  f"{r['cpu_s_per_step']:>10.3f} {_hms(1000 * r['s_per_step']):>15} {r['s_per_step'] / base:>6.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
