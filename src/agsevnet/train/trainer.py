"""Training: from a dataset folder to a validated, resumable checkpoint, on a CPU, one GPU or many (DDP).

``train(data_dir, run_dir, config=..., overrides=...)`` is what ``agsevnet train`` calls. It

1. resolves the config (a preset or YAML file plus ``--set`` overrides; on ``--resume`` the run's own config),
   refuses a run folder that already holds a run unless ``resume`` or ``overwrite``;
2. builds (or reuses) the preprocessing cache (``RUN/cache`` unless ``cache_dir``), splits the cases into
   folds (:func:`agsevnet.train.data.fold_split`) and indexes the training cases' tumour voxels;
3. trains on random patches (:mod:`agsevnet.train.data`) with the configured network, loss, optimiser and
   learning-rate schedule, mixed precision and ``channels_last_3d`` on CUDA, optionally ``torch.compile``;
4. validates every ``validation.every`` steps and at the end on whole validation cases with the inference
   engine (sliding window, roi = patch size), logs mean Dice of ET/WT/TC, keeps ``best.pt``;
5. writes ``last.pt`` atomically every ``train.checkpoint_every`` steps and at the end, ``metrics.csv``,
   TensorBoard events under ``tb/`` and ``summary.json``.

Exact resume: the data are stateless (see :mod:`agsevnet.train.data`), the checkpoint holds the model,
optimiser, scheduler, AMP scaler, step and every rank's RNG states; ``--resume`` restores them all, drops the
log rows written after the checkpoint and continues. On the CPU with a fixed seed, a run killed and resumed
ends with exactly the weights of an uninterrupted one (``tests/test_train.py``).

Under torchrun (``WORLD_SIZE > 1``) every rank draws its own patches (the rank is part of each patch's seed),
gradients are averaged by ``DistributedDataParallel``, and only rank 0 writes files, logs and validates, with
barriers around validation and checkpointing.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agsevnet import REGIONS
from agsevnet.config import diff_configs, dump_config, load_config
from agsevnet.errors import AgsevnetError, ConfigError, DataError, OutputExistsError
from agsevnet.fsutil import atomic_path, write_json_atomic, write_text_atomic
from agsevnet.train import distributed
from agsevnet.train.data import PatchDataset, build_augmentation, cached_cases, default_workers, fold_split, make_loader

RUN_FILES: tuple[str, ...] = ("config.yaml", "metrics.csv", "tb", "last.pt", "best.pt", "summary.json")
"""What a run folder holds (the cache, ``RUN/cache`` by default, is kept by ``--overwrite``)."""

METRIC_COLUMNS: tuple[str, ...] = (
    "step", "loss", "lr", "steps_per_s", "elapsed_s", "val_dice_ET", "val_dice_WT", "val_dice_TC", "val_dice_mean",
)

RESUMABLE_CHANGES: frozenset[str] = frozenset({"train.steps", "data.workers"})
"""Config keys ``--resume`` may change (to extend a run, or use another number of loader processes)."""


# ---------------------------------------------------------------------------------------------- helpers
class LRSchedule:
    """The learning-rate factor after ``s`` optimiser steps (``LambdaLR``): linear warm-up, then the schedule.

    ``constant``; ``step`` (times ``gamma`` at each of ``milestones``); ``poly`` ((1 - progress)^poly_power);
    ``cosine`` (half a cosine from 1 to ``min_lr / lr``). ``poly`` and ``cosine`` never go below ``min_lr``.

    A callable object rather than a closure so that ``LambdaLR.state_dict()`` saves its attributes (plain numbers)
    in the checkpoint: a resumed run knows the schedule it was on. :meth:`retarget` moves the end of the decay
    (``--resume`` with another ``train.steps``) without a jump: the decay continues from the factor reached.
    """

    def __init__(self, optim: Mapping[str, Any], total_steps: int):
        self.warmup = int(optim["warmup_steps"])
        self.schedule = str(optim["schedule"])
        self.floor = float(optim["min_lr"]) / float(optim["lr"])
        self.milestones = sorted(int(m) for m in optim["milestones"])
        self.gamma, self.power = float(optim["gamma"]), float(optim["poly_power"])
        self.total = int(total_steps)
        self.anchor_step: int | None = None  # where the decay (re)starts, and from which factor (None: warm-up end, 1)
        self.anchor_factor: float | None = None

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        if self.schedule == "step":
            return self.gamma ** sum(s >= m for m in self.milestones)
        if self.schedule not in ("poly", "cosine"):
            return 1.0
        start, top = (self.warmup, 1.0) if self.anchor_step is None else (self.anchor_step, self.anchor_factor)
        progress = min(1.0, max(0.0, (s - start) / max(1, self.total - start)))
        if self.schedule == "poly":
            return max(self.floor, top * (1.0 - progress) ** self.power)
        return self.floor + (top - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def retarget(self, step: int, total_steps: int) -> float:
        """End the decay at ``total_steps`` instead, continuing smoothly from the factor at ``step``: ``poly`` and
        ``cosine`` decay from there to ``min_lr`` over the remaining steps (restarting them over the new total
        would jump the rate back up); warm-up, ``step`` and ``constant`` do not depend on the total. Returns
        the factor at ``step``."""
        current = self(step)
        if self.schedule in ("poly", "cosine") and step >= self.warmup:
            self.anchor_step, self.anchor_factor = int(step), float(current)
        self.total = int(total_steps)
        return current


def lr_lambda(optim: Mapping[str, Any], total_steps: int) -> LRSchedule:
    """The :class:`LRSchedule` of the ``optim`` config section over ``total_steps``."""
    return LRSchedule(optim, total_steps)


def training_step(net: torch.nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, x: torch.Tensor, y: torch.Tensor, autocast_dtype: torch.dtype | None,
                  grad_clip: float | None) -> torch.Tensor:
    """One optimisation step (forward under autocast, loss in float32, scaled backward, optional clipping of the
    gradient norm, optimiser step); returns the loss tensor."""
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = net(x)
    loss = loss_fn(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], float(grad_clip))
    scaler.step(optimizer)
    scaler.update()
    return loss


def build_optimizer(params: Any, optim: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (Nesterov momentum) from the ``optim`` section."""
    name, lr, wd = optim["name"], float(optim["lr"]), float(optim["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(optim["betas"]), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(optim["betas"]), weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=float(optim["momentum"]), nesterov=True, weight_decay=wd)


def resolve_device(device: str | None) -> torch.device:
    """``cpu``, ``cuda`` (or ``cuda:N``); ``None``: CUDA when available. Under torchrun, CUDA is the local rank's GPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is available to PyTorch here (use --device cpu)")
        info = distributed.env_info()
        if info.enabled:
            dev = torch.device("cuda", info.local_rank)
    return dev


def resolve_amp(amp: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``train.amp``: ``auto`` is bf16 on a GPU that has it (else fp16), fp32 on the CPU."""
    if amp == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    return "fp32" if amp == "none" else amp


def resolve_config(run_dir: Path, config: str | Path | None, overrides: Sequence[str] | Mapping[str, Any], resume: bool) -> dict:
    """The run's config: ``config`` (a preset or YAML file; ``default`` when None) with ``overrides``.

    With ``resume`` and an existing ``RUN/config.yaml``, that file is the base; the overrides may only change
    :data:`RESUMABLE_CHANGES` (anything else would not be the same run).
    """
    saved = run_dir / "config.yaml"
    if resume and saved.is_file():
        base = load_config(saved)
        cfg = load_config(config if config is not None else saved, overrides)
        changed = [k for k in diff_configs(base, cfg) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(
                f"--resume continues a run with its own config, but these settings differ: {', '.join(changed)} "
                "(start a new run folder, or --overwrite)", saved)
        return cfg
    return load_config(config if config is not None else "default", overrides)


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that already holds a run unless ``resume`` or ``overwrite`` (read-only check)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputExistsError("the run folder is a file", run_dir)
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if existing and not (resume or overwrite):
        raise OutputExistsError(
            f"already holds a training run ({', '.join(existing)}); use --resume to continue it or --overwrite "
            "to start again", run_dir)


def _remove_run_files(run_dir: Path) -> None:
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while isinstance(getattr(model, "module", None), torch.nn.Module) or isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


# --------------------------------------------------------------------------------------------- the logs
class RunLog:
    """``metrics.csv`` (one row per logged step) and TensorBoard events under ``tb/``; rank 0 only."""

    def __init__(self, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.csv"
        rows = []
        if start_step > 0 and self.path.is_file():  # a resumed run: drop rows logged after the checkpoint
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= start_step]
        with atomic_path(self.path) as tmp:
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
                writer.writeheader()
                writer.writerows({k: r.get(k, "") for k in METRIC_COLUMNS} for r in rows)
        self.file = self.path.open("a", newline="")
        self.csv = csv.DictWriter(self.file, fieldnames=METRIC_COLUMNS)
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step > 0 else None)

    def write(self, row: Mapping[str, Any]) -> None:
        self.csv.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
        self.file.flush()
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and value is not None:
                tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
                self.tb.add_scalar(tag, float(value), step)
        self.tb.flush()

    def close(self) -> None:
        self.file.close()
        self.tb.close()


# --------------------------------------------------------------------------------------------- training
class Trainer:
    """One training run (see the module docstring); build it with :func:`train`."""

    def __init__(self, cfg: dict, run_dir: Path, data_dir: Path, cache_dir: Path, device: torch.device,
                 info: distributed.DistInfo, resume: bool, overwrite: bool, progress: bool):
        self.cfg, self.run_dir, self.data_dir, self.cache_dir = cfg, run_dir, data_dir, cache_dir
        self.device, self.info, self.progress = device, info, progress and info.is_main
        self.patch = [int(p) for p in cfg["data"]["patch_size"]]
        self.amp = resolve_amp(cfg["train"]["amp"], device)
        self.channels_last = bool(cfg["train"]["channels_last"])
        self.total = int(cfg["train"]["steps"])
        self.start_step = 0
        self.best: dict[str, Any] = {"dice_mean": None, "step": None}
        self.last_val: dict[str, float] | None = None
        self.elapsed_before = 0.0
        self._bar: Any = None

        ids = distributed.on_main(lambda: self._prepare(resume, overwrite), info)
        self._split(ids)
        self._build()
        if resume:
            self._load_state()

    # -- setup
    def say(self, message: str) -> None:
        if self.info.is_main:
            if self._bar is not None:
                self._bar.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr, flush=True)

    def _prepare(self, resume: bool, overwrite: bool) -> list[str]:
        """Rank 0: clean or create the run folder, write the config, build the cache of the labelled cases
        (:func:`~agsevnet.data.layouts.labelled_cases`: MSD's imagesTs/ has none); returns the case ids."""
        from agsevnet.data.layouts import discover, labelled_cases
        from agsevnet.preprocess import build_cache

        if overwrite:
            _remove_run_files(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / "config.yaml", dump_config(self.cfg))
        pre = self.cfg["preprocess"]
        specs, note = labelled_cases(discover(self.data_dir))
        if note:
            self.say(note)
        return build_cache(specs, self.cache_dir, normalization=pre["normalization"], margin=pre["margin"],
                           dtype=pre["dtype"], spacing=pre["spacing"], progress=self.progress)

    def _split(self, ids: list[str]) -> None:
        from agsevnet.data.patients import unique_patients
        from agsevnet.preprocess import load_cached

        val_cfg = self.cfg["validation"]
        fold, folds = val_cfg["fold"], val_cfg["folds"]
        if not ids:
            raise DataError("no cases to train on", self.data_dir)
        ids, copies = unique_patients(ids, lambda c: load_cached(self.cache_dir, c).meta.get("image_sha1"))
        for kept, dropped in copies.items():
            self.say(f"note: {', '.join(dropped)} hold(s) the same images as {kept}: counted once, as {kept}")
        if fold != "all" and len(ids) < folds:
            self.say(f"note: {len(ids)} cases are fewer than {folds} folds: training on all of them (fold 'all')")
            fold = "all"
        self.fold = fold
        self.train_ids, val_ids = fold_split(ids, fold, folds)
        self.val_on_train = not val_ids
        if self.val_on_train:
            val_ids = list(self.train_ids)
        held_out = len(val_ids)
        if val_cfg["max_cases"] is not None:
            val_ids = val_ids[: int(val_cfg["max_cases"])]
        self.val_ids = val_ids
        if self.val_on_train and val_ids:
            self.say(f"note: fold 'all': validating on {len(val_ids)} training case(s); their Dice is optimistic")
        limited = f" (the first {len(val_ids)} of {held_out}: validation.max_cases)" if len(val_ids) < held_out else ""
        self.say(f"fold {fold}: {len(self.train_ids)} training case(s), {len(self.val_ids)} validation case(s){limited}")
        meta = load_cached(self.cache_dir, self.train_ids[0]).meta
        self.preprocess = {"normalization": meta["normalization"]["mode"], "margin": int(meta["margin"]),
                           "dtype": str(meta["dtype"]), "spacing": meta.get("spacing")}
        self.cases = cached_cases(str(self.cache_dir), self.train_ids, progress=self.progress,
                                  negatives=float(self.cfg["data"]["negative_share"]) > 0)
        if not any(c.locations for c in self.cases):
            raise DataError("no training case has any tumour label", self.cache_dir)

    def _build(self) -> None:
        from agsevnet.models import build_model, required_divisor
        from agsevnet.models.losses import build_loss

        cfg, dev, info = self.cfg, self.device, self.info
        if cfg["train"]["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        torch.manual_seed(int(cfg["seed"]))  # the same initial weights on every rank
        model = build_model(dict(cfg["model"]))
        divisor = int(required_divisor(dict(cfg["model"])))
        if any(p % divisor for p in self.patch):
            raise ConfigError(f"data.patch_size {self.patch} must be a multiple of {divisor} for this network")
        self.n_params = sum(p.numel() for p in model.parameters())
        model.to(dev)
        if self.channels_last:
            model.to(memory_format=torch.channels_last_3d)
        self.model = model
        self.loss_fn = build_loss(dict(cfg["loss"]))
        self.optimizer = build_optimizer(model.parameters(), cfg["optim"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg["optim"], self.total))
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp == "fp16")
        net: torch.nn.Module = model
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if cfg["train"]["compile"]:
            net = torch.compile(net)
        self.net = net
        # Dropout draws from torch's global generator: a stream of its own per rank.
        torch.manual_seed(int(np.random.SeedSequence([int(cfg["seed"]), info.rank, 1]).generate_state(1)[0]))

        workers = cfg["data"]["workers"]
        if workers is None:
            workers = default_workers() if not info.enabled else max(0, default_workers() // info.local_world_size)
        self.workers = int(workers)
        self.dataset = PatchDataset(
            self.cases, self.patch, int(cfg["data"]["batch_size"]), int(cfg["seed"]), info.rank,
            float(cfg["data"]["foreground_share"]), bool(cfg["data"]["class_balanced"]), build_augmentation(cfg["augment"]),
            negative_share=float(cfg["data"]["negative_share"]), sampling=str(cfg["data"]["sampling"]),
            natural_from_step=cfg["data"]["natural_from_step"],
        )

    def _load_state(self) -> None:
        from agsevnet.checkpoint import load_checkpoint, set_rng_state

        path = self.run_dir / "last.pt"
        if not path.is_file():
            self.say(f"note: {path} does not exist yet: starting at step 0")
            return
        ckpt = load_checkpoint(path)
        missing = [k for k in ("optimizer", "scheduler", "scaler", "rng") if k not in ckpt]
        if missing:
            raise DataError(f"checkpoint lacks the training state ({', '.join(missing)}); cannot resume from it", path)
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_step = int(ckpt["step"])
        self._continue_schedule(ckpt)
        self.best = dict(ckpt.get("best", self.best))
        self.elapsed_before = float(ckpt.get("elapsed_s", 0.0))
        ranks = ckpt["rng"]["ranks"]
        if len(ranks) == self.info.world_size:
            set_rng_state(ranks[self.info.rank])
        else:
            self.say(f"note: the run had {len(ranks)} process(es), now {self.info.world_size}: dropout randomness "
                     "differs from an uninterrupted run")
        if self.start_step >= self.total:
            self.say(f"note: the run already reached step {self.start_step} of {self.total} (raise --steps to extend it)")
        else:
            self.say(f"resuming from step {self.start_step} ({path})")

    def _continue_schedule(self, ckpt: Mapping[str, Any]) -> None:
        """After loading the scheduler: when ``train.steps`` changed, retarget the decay to the new total from the
        rate reached (see :meth:`LRSchedule.retarget`) and say so."""
        saved = (ckpt["scheduler"].get("lr_lambdas") or [None])[0]
        for fn in self.scheduler.lr_lambdas:
            if not saved:  # a checkpoint from before LRSchedule: the run's own config says which total it had
                fn.total = int(((ckpt.get("config") or {}).get("train") or {}).get("steps", fn.total))
            old_total = fn.total
            if old_total == self.total or self.start_step >= self.total:
                continue
            factor = fn.retarget(self.start_step, self.total)
            base = float(self.cfg["optim"]["lr"])
            if fn.schedule in ("poly", "cosine") and self.start_step >= fn.warmup:
                self.say(f"note: train.steps changed from {old_total} to {self.total}: the learning rate continues "
                         f"from {base * factor:.3g} (step {self.start_step}) and decays to optim.min_lr "
                         f"{fn.floor * base:.3g} over the remaining {self.total - self.start_step} steps "
                         "(the schedule is not restarted)")
        for group, base_lr, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base_lr * fn(self.start_step)  # the rate the next step uses

    # -- checkpoints and validation
    def _checkpoint(self, step: int, **extra: Any) -> dict:
        from agsevnet.checkpoint import make_checkpoint

        return make_checkpoint(self.model, dict(self.cfg["model"]), self.cfg, step, preprocess=self.preprocess,
                               patch_size=self.patch, metrics=dict(self.last_val or {}), **self._checkpoint_header(),
                               **extra)

    def save_last(self, step: int, elapsed: float) -> None:
        """Every rank: gather the RNG states; rank 0 writes ``last.pt`` atomically; then a barrier."""
        from agsevnet.checkpoint import rng_state, save_checkpoint

        # Gathered as torch.save bytes: all_gather_object cannot unpickle tensors in torch 2.13.
        buffer = io.BytesIO()
        torch.save(rng_state(), buffer)
        states = [torch.load(io.BytesIO(b), weights_only=True) for b in distributed.gather(buffer.getvalue(), self.info)]
        if self.info.is_main:
            ckpt = self._checkpoint(
                step, optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(), rng={"ranks": states}, best=self.best, elapsed_s=elapsed,
            )
            save_checkpoint(self.run_dir / "last.pt", ckpt)
        distributed.barrier(self.info)

    def predictor(self) -> Any:
        """A :class:`~agsevnet.infer.predictor.Predictor` around the model being trained, with exactly the settings
        its checkpoint will carry (``inference`` section, output kind, preprocessing, patch size as the window):
        validation scores what ``agsevnet predict`` will produce with ``best.pt``."""
        from agsevnet.infer.predictor import Predictor, inference_settings
        from agsevnet.models import required_divisor

        settings = inference_settings(self._checkpoint_header())
        return Predictor(
            _unwrap(self.model), preprocess=self.preprocess, divisor=required_divisor(dict(self.cfg["model"])),
            roi_size=self.patch, device=self.device,
            precision="auto",  # what predict uses: bf16 on CPUs and GPUs that have it (labels differ slightly from fp32)
            # channels-last inputs: fine on CUDA, but 12x slower through the sliding window on the CPU
            # (measured: 228 s vs 18 s for a real case); the channels-last weights are fine either way.
            channels_last=self.channels_last and self.device.type == "cuda",
            **settings,
        )

    def _checkpoint_header(self) -> dict[str, Any]:
        """What a checkpoint says about how to predict with it: the ``inference`` settings and the output kind."""
        from agsevnet.models.losses import loss_output

        return {"inference": dict(self.cfg["inference"]), "output": loss_output(self.cfg["loss"])}

    def validate(self, step: int) -> dict[str, float] | None:
        """Rank 0: mean Dice of ET, WT, TC over the validation cases, predicted exactly as ``agsevnet predict``
        will (:meth:`predictor`) and scored on the input grid; saves ``best.pt`` on a new best. Barrier."""
        result = None
        if self.info.is_main and self.val_ids:
            from agsevnet.checkpoint import save_checkpoint
            from agsevnet.evaluate.metrics import dice_scores
            from agsevnet.evaluate.summary import region_mean
            from agsevnet.preprocess import load_cached, load_native_label

            predictor = self.predictor()
            was_training = self.model.training
            scores = {r: [] for r in REGIONS}
            try:
                for case_id in self.val_ids:
                    pre = load_cached(self.cache_dir, case_id, mmap=True)
                    pred, _ = predictor.labels_on_crop(pre)
                    truth = np.asarray(load_native_label(self.cache_dir, case_id))
                    for region, value in dice_scores(pred, truth).items():
                        scores[region].append(value)
            finally:
                self.model.train(was_training)
                if self.channels_last:  # the Predictor may have converted the weights' memory format
                    self.model.to(memory_format=torch.channels_last_3d)
            result = {r: float(np.mean(v)) for r, v in scores.items()}
            result["mean"] = region_mean(result)
            self.last_val = {f"val_dice_{k}": v for k, v in result.items()}
            if self.best["dice_mean"] is None or result["mean"] > self.best["dice_mean"]:
                self.best = {"dice_mean": result["mean"], "step": step}
                save_checkpoint(self.run_dir / "best.pt", self._checkpoint(step))
        distributed.barrier(self.info)
        return result

    # -- the loop
    def fit(self) -> dict:
        from agsevnet.progress import progress_bar

        cfg, dev, info = self.cfg, self.device, self.info
        tcfg = cfg["train"]
        log_every, ckpt_every = int(tcfg["log_every"]), int(tcfg["checkpoint_every"])
        val_every = int(cfg["validation"]["every"])
        clip = cfg["optim"]["grad_clip"]
        autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        log = RunLog(self.run_dir, self.start_step) if info.is_main else None
        loader = make_loader(self.dataset, self.start_step, self.total, self.workers, pin_memory=dev.type == "cuda")
        self._bar = progress_bar(total=self.total, initial=self.start_step, desc="train", unit="step",
                                 disable=not self.progress, file=sys.stderr, smoothing=0.05)
        self.say(
            f"training {cfg['model']['name']} ({self.n_params / 1e6:.2f} M parameters) on {dev}"
            f"{' x %d processes' % info.world_size if info.enabled else ''}, {self.amp}, patches {self.patch} x "
            f"{cfg['data']['batch_size']}, {self.workers} loader process(es), steps {self.start_step}->{self.total}"
        )
        t0 = time.perf_counter()
        t_log, step_log = t0, self.start_step
        running = torch.zeros((), dtype=torch.float64, device=dev)
        n_running = 0
        step = self.start_step
        last_loss = None
        validated_at = saved_at = None
        self.net.train()
        try:
            for batch in loader:
                step += 1
                x = batch["image"].to(dev, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last_3d)
                y = batch["label"].to(dev, non_blocking=True).long()
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                loss = training_step(self.net, self.loss_fn, self.optimizer, self.scaler, x, y, autocast_dtype, clip)
                self.scheduler.step()
                running += loss.detach()
                n_running += 1
                self._bar.update(1)

                val_due = val_every > 0 and step % val_every == 0
                if step % log_every == 0 or val_due or step == self.total:
                    now = time.perf_counter()
                    last_loss = distributed.mean(float(running.item()) / n_running, info, dev)
                    if not math.isfinite(last_loss):
                        raise AgsevnetError(f"the loss became {last_loss} at step {step}; lower optim.lr or check the data",
                                            self.run_dir)
                    rate = (step - step_log) / max(now - t_log, 1e-9)
                    row: dict[str, Any] = {"step": step, "loss": round(last_loss, 6), "lr": lr, "steps_per_s": round(rate, 4),
                                           "elapsed_s": round(self.elapsed_before + now - t0, 1)}
                    running.zero_()
                    n_running, t_log, step_log = 0, now, step
                    self._bar.set_postfix_str(f"loss {last_loss:.4f} lr {lr:.2e}", refresh=False)
                    if val_due or step == self.total:
                        val = self.validate(step)
                        validated_at = step
                        if val is not None:
                            row.update({f"val_dice_{k}": round(v, 5) for k, v in val.items()})
                            self.say(f"step {step}: validation Dice ET {val['ET']:.3f} WT {val['WT']:.3f} "
                                     f"TC {val['TC']:.3f} mean {val['mean']:.3f} (best {self.best['dice_mean']:.3f} "
                                     f"at step {self.best['step']})")
                        t_log = time.perf_counter()  # steps/s measures training only
                    if log is not None:
                        log.write(row)
                if step % ckpt_every == 0 or step == self.total:
                    self.save_last(step, self.elapsed_before + time.perf_counter() - t0)
                    saved_at = step
        finally:
            self._bar.close()
            self._bar = None
            if log is not None:
                log.close()

        if validated_at != step and self.val_ids and step > 0:
            self.validate(step)  # e.g. a resumed run that was already complete
        if saved_at != step:
            self.save_last(step, self.elapsed_before + time.perf_counter() - t0)
        seconds = time.perf_counter() - t0
        summary = {
            "run_dir": str(self.run_dir), "config": cfg["preset"], "model": cfg["model"]["name"],
            "parameters": self.n_params, "device": str(dev), "processes": info.world_size, "precision": self.amp,
            "fold": self.fold, "train_cases": len(self.train_ids), "val_cases": list(self.val_ids),
            "validated_on_training_cases": self.val_on_train, "start_step": self.start_step, "steps": step,
            "seconds": round(seconds, 1), "total_seconds": round(self.elapsed_before + seconds, 1),
            "steps_per_s": round((step - self.start_step) / seconds, 4) if step > self.start_step else None,
            "final_loss": last_loss, "last_validation": self.last_val, "best": self.best,
            "best_checkpoint": str(self.run_dir / "best.pt") if self.best["step"] is not None else None,
            "last_checkpoint": str(self.run_dir / "last.pt"),
        }
        if info.is_main:
            if self.best["step"] is None:  # nothing validated: the final weights are the best we know
                from agsevnet.checkpoint import save_checkpoint

                save_checkpoint(self.run_dir / "best.pt", self._checkpoint(step))
                summary["best_checkpoint"] = str(self.run_dir / "best.pt")
            write_json_atomic(self.run_dir / "summary.json", summary)
        return summary


def format_summary(s: Mapping[str, Any]) -> str:
    """The one-paragraph summary printed at the end of a run."""
    rate = f" ({s['steps_per_s']:.2f} steps/s)" if s.get("steps_per_s") else ""
    text = (f"Trained {s['model']} ({s['parameters'] / 1e6:.2f} M parameters, config {s['config']}) on {s['device']}"
            f"{' x %d processes' % s['processes'] if s['processes'] > 1 else ''} in {s['precision']} for steps "
            f"{s['start_step']}->{s['steps']} in {_fmt_time(s['seconds'])}{rate}, on {s['train_cases']} training case(s) "
            f"(fold {s['fold']}).")
    if s.get("final_loss") is not None:
        text += f" Final training loss {s['final_loss']:.4f}."
    val = s.get("last_validation")
    if val:
        where = "training cases (optimistic)" if s["validated_on_training_cases"] else "held-out validation cases"
        text += (f" Validation Dice on {len(s['val_cases'])} {where}: ET {val['val_dice_ET']:.3f}, WT {val['val_dice_WT']:.3f},"
                 f" TC {val['val_dice_TC']:.3f} (mean {val['val_dice_mean']:.3f}); best mean {s['best']['dice_mean']:.3f}"
                 f" at step {s['best']['step']}.")
    else:
        text += " No validation was run."
    text += f" Checkpoints: {s['best_checkpoint']} (best), {s['last_checkpoint']} (last, resumable)."
    return text


def make_trainer(data_dir: str | Path, run_dir: str | Path, *, config: str | Path | None = None,
                 overrides: Sequence[str] | Mapping[str, Any] = (), resume: bool = False, overwrite: bool = False,
                 device: str | None = None, cache_dir: str | Path | None = None, progress: bool = True) -> Trainer:
    """A ready :class:`Trainer` (config resolved, run folder checked, process group joined under torchrun,
    cache built, model and data set up); :func:`train` runs it. Call :func:`distributed.shutdown` when done."""
    run_dir = Path(run_dir)
    data_dir = Path(data_dir)
    cfg = resolve_config(run_dir, config, overrides, resume)
    if not data_dir.exists():
        raise DataError("data folder not found", data_dir)
    dev = resolve_device(device)
    info = distributed.init(dev.type)
    try:
        # On rank 0 only (before it writes anything), the verdict shared with every rank.
        distributed.on_main(lambda: check_run_dir(run_dir, resume, overwrite), info)
        return Trainer(cfg, run_dir, data_dir, Path(cache_dir) if cache_dir else run_dir / "cache", dev, info,
                       resume, overwrite, progress)
    except BaseException:
        distributed.shutdown(info)
        raise


def train(data_dir: str | Path, run_dir: str | Path, *, config: str | Path | None = None,
          overrides: Sequence[str] | Mapping[str, Any] = (), resume: bool = False, overwrite: bool = False,
          device: str | None = None, cache_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Train a network on the labelled cases of ``data_dir``; writes the run to ``run_dir``; returns the summary.

    ``config``: a preset name (``paper``, ``default``, ``cpu-small``) or a YAML file (default: ``default``, or the
    run's own config with ``resume``); ``overrides``: ``"dotted.key=value"`` strings. Raises
    :class:`OutputExistsError` when ``run_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set,
    :class:`ConfigError` for bad settings, :class:`DataError` for unusable data.
    """
    trainer = make_trainer(data_dir, run_dir, config=config, overrides=overrides, resume=resume, overwrite=overwrite,
                           device=device, cache_dir=cache_dir, progress=progress)
    try:
        return trainer.fit()
    finally:
        distributed.shutdown(trainer.info)
