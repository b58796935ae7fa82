"""Several processes through PyTorch's own engine: ``torchrun --nproc_per_node N -m agsevnet train ...``.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
with ``WORLD_SIZE > 1`` training joins the process group (NCCL on CUDA, gloo on the CPU) and wraps the model in
``DistributedDataParallel``. Without those variables everything here is a no-op for a single process.

Waiting for rank 0: cache building (:func:`on_main`) and validation (the :func:`barrier` after it) run on rank 0
alone while the other ranks wait. In the default process group that wait is a collective under the group's
timeout (NCCL's default is 10 minutes), and a full BraTS cache build or validation takes longer: the waiting
ranks would be killed. So those waits go through a second, gloo (CPU) group whose timeout is
:data:`WAIT_TIMEOUT_S` (6 hours; ``AGSEVNET_WAIT_TIMEOUT`` in seconds overrides it), while the training
collectives keep the default group and its timeout, so a genuinely hung step is still detected. A failure on
rank 0 is not waited out: :func:`on_main` hands it to every rank at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from agsevnet.errors import AgsevnetError

T = TypeVar("T")

WAIT_TIMEOUT_S = 6 * 3600
"""How long the other ranks wait for rank 0 working alone (cache building, validation, checkpointing)."""


def wait_timeout() -> timedelta:
    """:data:`WAIT_TIMEOUT_S`, or ``AGSEVNET_WAIT_TIMEOUT`` (seconds) when set."""
    value = os.environ.get("AGSEVNET_WAIT_TIMEOUT")
    try:
        seconds = float(value) if value else float(WAIT_TIMEOUT_S)
    except ValueError:
        raise AgsevnetError(f"AGSEVNET_WAIT_TIMEOUT must be a number of seconds, got {value!r}") from None
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    wait_group: Any = field(default=None, compare=False, repr=False)  # gloo group with the long timeout

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
    """Join the process group when started by torchrun (NCCL for CUDA, gloo for the CPU; a group the caller
    initialised already is used as it is) and create the gloo group for waiting on rank 0 (:func:`wait_timeout`)."""
    info = env_info()
    if not info.enabled:
        return info
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    wait_group = dist.new_group(backend="gloo", timeout=wait_timeout())
    return DistInfo(info.rank, info.world_size, info.local_rank, info.local_world_size, dist.get_backend(), wait_group)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait until every rank gets here, however long rank 0 works alone before it (see the module docstring)."""
    if info.enabled:
        dist.barrier(group=info.wait_group)


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
    dist.broadcast_object_list(payload, src=0, group=info.wait_group)  # CPU tensors: the gloo group
    status, value = payload[0]
    if status == "error":
        if failure is not None:
            raise failure
        cls, message, path = value
        raise cls(message, path)
    return value
