#!/usr/bin/env bash
# The GPU check of issue 11: one script, under 8 minutes on one GPU, that prints a table of
#   - `default` training: steps/s and peak GPU memory with bf16 and channels_last_3d, on phantoms at BraTS size
#     (240x240x155), against the model step alone on in-memory batches;
#   - whether the loader keeps up (its batches/s against the model's steps/s);
#   - `torchrun --nproc_per_node 2` training steps/s, when two GPUs exist;
#   - whole-pass vs sliding-window inference: time and peak GPU memory per case (default model, bf16);
#   - the bundled model (`agsevnet predict` without --model): time per case, skipped when none is bundled.
#
#   bash benchmarks/gpu_check.sh [WORKDIR]        # WORKDIR default: a temporary folder (removed at the end)
#
# Every section is guarded (its own time limit; a failure or a skip is a row of the table, not the end of the
# script). Environment: AGSEVNET (the CLI, default .venv/bin/agsevnet or agsevnet), PYTHON (default
# .venv/bin/python or python3), STEPS (timed training steps, default 40), CASES (phantoms, default 6).
# Written on a machine without a GPU: it has not been run on one yet (see the README for measured figures).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
AGSEVNET=${AGSEVNET:-$([ -x .venv/bin/agsevnet ] && echo .venv/bin/agsevnet || echo agsevnet)}
STEPS=${STEPS:-40}
CASES=${CASES:-6}
if [ $# -ge 1 ]; then WORK=$1; mkdir -p "$WORK"; KEEP=1; else WORK=$(mktemp -d); KEEP=0; fi
ROWS="$WORK/rows.tsv"
: >"$ROWS"
cleanup() { if [ "$KEEP" = 0 ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT

row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$ROWS"; }   # check, result, note
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" >&2; }

# run_section NAME LIMIT_S COMMAND...: runs COMMAND (a program or one of the functions below, in a child bash
# under `timeout`; it appends its own rows); a failure or a timeout becomes a row instead.
run_section() {
  local name=$1 limit=$2
  shift 2
  log "$name (at most ${limit}s)"
  local rc=0
  timeout --kill-after=10 "$limit" bash -euo pipefail -c "$(printf '%q ' "$@")" >"$WORK/$name.log" 2>&1 || rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    row "$name" "TIMEOUT" "over ${limit}s; see $WORK/$name.log"
  elif [ "$rc" != 0 ]; then
    row "$name" "FAILED (rc $rc)" "$(tail -n 1 "$WORK/$name.log" | cut -c1-120)"
  fi
  return 0
}

export WORK ROWS PYTHON AGSEVNET STEPS CASES
export -f row log

# ------------------------------------------------------------------------------------------ 0. the machine
GPUS=0
if command -v nvidia-smi >/dev/null 2>&1; then
  GPUS=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || echo 0)
  row "gpu" "$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -n 1)" "$GPUS GPU(s)"
fi
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  row "cuda" "SKIPPED" "torch sees no CUDA GPU: nothing to measure"
  column -t -s $'\t' "$ROWS"
  exit 0
fi
row "torch" "$("$PYTHON" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')" "$(nproc) CPUs"

# ---------------------------------------------------------------------------------- 1. phantoms and cache
phantoms() {
  "$AGSEVNET" phantom "$WORK/data" --cases "$CASES" --shape 240 240 155 --seed 1 --overwrite
  "$AGSEVNET" preprocess "$WORK/data" "$WORK/cache" --margin 4
  row "phantoms" "$CASES cases" "240x240x155, cached for the default config"
}
export -f phantoms
run_section phantoms 150 phantoms

# ------------------------------------------------------------------- 2. training: model step vs the loop
cat >"$WORK/train_check.py" <<'EOF'
"""Model-step rate (in-memory batch), the loader's batch rate, and the full loop's rate and peak memory."""
import csv, sys, time
from pathlib import Path

import torch

from agsevnet.config import load_config
from agsevnet.train import distributed
from agsevnet.train.data import make_loader
from agsevnet.train.trainer import make_trainer, training_step

work, steps = Path(sys.argv[1]), int(sys.argv[2])
rows = open(work / "rows.tsv", "a")
over = [f"train.steps={steps}", "train.amp=bf16", "train.channels_last=true", "train.log_every=10",
        "validation.every=0", "validation.max_cases=1", f"train.checkpoint_every={steps}"]
if __name__ == "__main__":
    tr = make_trainer(work / "data", work / "run", config="default", overrides=over, device="cuda",
                      cache_dir=work / "cache", progress=False, overwrite=True)
    cfg = load_config("default")
    batch, patch = int(cfg["data"]["batch_size"]), [int(p) for p in cfg["data"]["patch_size"]]
    # the model step alone, on an in-memory batch
    x = torch.randn(batch, 4, *patch, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, 4, (batch, 1, *patch), device="cuda")
    for _ in range(5):
        training_step(tr.net, tr.loss_fn, tr.optimizer, tr.scaler, x, y, torch.bfloat16, cfg["optim"]["grad_clip"])
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(20):
        training_step(tr.net, tr.loss_fn, tr.optimizer, tr.scaler, x, y, torch.bfloat16, cfg["optim"]["grad_clip"])
    torch.cuda.synchronize()
    model_rate = 20 / (time.perf_counter() - t)
    rows.write(f"train step (in-memory batch)\t{model_rate:.2f} steps/s\tdefault, batch {batch}, {patch}, bf16, channels_last\n")
    # the loader alone
    loader = iter(make_loader(tr.dataset, 0, 10 + 40, tr.workers, pin_memory=True))
    for _ in range(10):
        next(loader)
    t = time.perf_counter()
    for _ in range(40):
        next(loader)
    loader_rate = 40 / (time.perf_counter() - t)
    del loader  # its worker processes
    keeps = "yes" if loader_rate >= model_rate else "NO"
    rows.write(f"loader keeps up\t{keeps}\t{loader_rate:.2f} batches/s with {tr.workers} worker(s) vs {model_rate:.2f} steps/s\n")
    rows.flush()
    # the full loop (fresh weights do not matter for speed)
    torch.cuda.reset_peak_memory_stats()
    tr.fit()
    peak = torch.cuda.max_memory_allocated() / 2**30
    logged = [r for r in csv.DictReader(open(work / "run" / "metrics.csv")) if r.get("steps_per_s")]
    rate = float(logged[-1]["steps_per_s"]) if logged else float("nan")
    rows.write(f"train loop (default)\t{rate:.2f} steps/s\tpeak {peak:.1f} GiB allocated; last {10} logged steps\n")
    distributed.shutdown(tr.info)
EOF
if [ -d "$WORK/cache" ]; then
  run_section train 180 "$PYTHON" "$WORK/train_check.py" "$WORK" "$STEPS"
else
  row "train" "SKIPPED" "no cache (phantoms failed)"
fi

# ------------------------------------------------------------------------------------ 3. two GPUs (DDP)
ddp() {
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2 -m agsevnet train "$WORK/data" \
    --out "$WORK/run-ddp" --config default --steps "$STEPS" --device cuda --cache "$WORK/cache" -q \
    --set train.amp=bf16 --set validation.every=0 --set validation.max_cases=1 --set train.log_every=10 \
    --set "train.checkpoint_every=$STEPS"
  local rate
  rate=$("$PYTHON" -c "import csv,sys; r=[x for x in csv.DictReader(open(sys.argv[1])) if x['steps_per_s']]; print(r[-1]['steps_per_s'])" \
    "$WORK/run-ddp/metrics.csv")
  row "torchrun x2 (default)" "$rate steps/s" "per process; each step is 2 batches"
}
export -f ddp
if [ "$GPUS" -ge 2 ] && [ -d "$WORK/cache" ]; then
  run_section ddp 180 ddp
else
  row "torchrun x2" "SKIPPED" "$GPUS GPU(s)"
fi

# --------------------------------------------------------------------------- 4. whole vs sliding inference
cat >"$WORK/infer_check.py" <<'EOF'
"""Whole pass vs sliding window on one cached BraTS-size phantom: seconds and peak GPU memory per case."""
import sys, time
from pathlib import Path

import numpy as np
import torch

from agsevnet.config import load_config
from agsevnet.infer.engine import predict_probabilities
from agsevnet.models import build_model
from agsevnet.preprocess import list_cached, load_cached

work = Path(sys.argv[1])
rows = open(work / "rows.tsv", "a")
cfg = load_config("default")
model = build_model(dict(cfg["model"])).cuda().to(memory_format=torch.channels_last_3d).eval()
pre = load_cached(work / "cache", list_cached(work / "cache")[0])
image = np.asarray(pre.image, dtype=np.float32)
for strategy in ("whole", "sliding"):
    kw = dict(roi_size=cfg["data"]["patch_size"], overlap=0.5, strategy=strategy, device="cuda", amp="bf16",
              channels_last=True)
    predict_probabilities(model, image, **kw)  # warm-up (cuDNN autotuning)
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); t = time.perf_counter()
    for _ in range(3):
        predict_probabilities(model, image, **kw)
    torch.cuda.synchronize()
    sec = (time.perf_counter() - t) / 3
    rows.write(f"inference {strategy}\t{sec:.2f} s/case\tpeak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB; "
               f"crop {list(image.shape[1:])}, bf16, network only\n")
    rows.flush()
EOF
if [ -d "$WORK/cache" ]; then
  run_section inference 120 "$PYTHON" "$WORK/infer_check.py" "$WORK"
else
  row "inference" "SKIPPED" "no cache (phantoms failed)"
fi

# ------------------------------------------------------------------------------------ 5. the bundled model
bundled() {
  local n=2 start
  mkdir -p "$WORK/two"
  for c in $(ls "$WORK/data" | head -n "$n"); do cp -r "$WORK/data/$c" "$WORK/two/"; done
  start=$(date +%s.%N)
  if ! "$AGSEVNET" predict "$WORK/two" --out "$WORK/pred-bundled" --device cuda -q >"$WORK/bundled.out" 2>&1; then
    if grep -qiE "no bundled|not bundled|bundled model.*(not|missing|absent)|no such model|not found" "$WORK/bundled.out"; then
      row "bundled model" "SKIPPED" "$(tail -n 1 "$WORK/bundled.out" | cut -c1-100)"
      return 0
    fi
    cat "$WORK/bundled.out"
    return 1
  fi
  local end
  end=$(date +%s.%N)
  row "bundled model" "$("$PYTHON" -c "print(f'{($end - $start) / $n:.1f} s/case')")" \
    "end to end incl. start-up, $n phantoms; $(grep -oE '[0-9.]+ s per written case' "$WORK/bundled.out" | head -n 1)"
}
export -f bundled
if [ -d "$WORK/data" ]; then
  run_section bundled 150 bundled
else
  row "bundled model" "SKIPPED" "no phantoms"
fi

echo
column -t -s $'\t' "$ROWS"
