"""Several processes through PyTorch's own engine: ``torchrun --nproc_per_node N -m agsevnet train ...``.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
with ``WORLD_SIZE > 1`` training joins the process group (NCCL on CUDA, gloo on the CPU) and wraps the model in
``DistributedDataParallel``. Without those variables everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from agsevnet.errors import AgsevnetError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """The rank and world size torchrun put in the environment (one process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
    )


def init(device_type: str) -> DistInfo:
    """Join the process group when started by torchrun (NCCL for CUDA, gloo for the CPU)."""
    info = env_info()
    if not info.enabled:
        return info
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(info.rank, info.world_size, info.local_rank, info.local_world_size, backend)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean(value: float, info: DistInfo, device: torch.device) -> float:
    """The mean of ``value`` over all ranks."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def gather(obj: T, info: DistInfo) -> list[T]:
    """Every rank's ``obj``, in rank order (pickled: small plain objects or bytes, not tensors)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], T], info: DistInfo) -> T:
    """Run ``fn`` on rank 0 only and hand its result to every rank; an error on rank 0 is raised on all ranks
    (so the others do not wait for it forever)."""
    if not info.enabled:
        return fn()
    payload: list[Any] = [None]
    failure: BaseException | None = None
    if info.is_main:
        try:
            payload[0] = ("ok", fn())
        except AgsevnetError as exc:
            failure, payload[0] = exc, ("error", (type(exc), exc.message, exc.path))
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            failure, payload[0] = exc, ("error", (AgsevnetError, f"rank 0 failed: {type(exc).__name__}: {exc}", None))
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        if failure is not None:
            raise failure
        cls, message, path = value
        raise cls(message, path)
    return value
