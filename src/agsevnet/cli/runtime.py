"""CPU runtime settings the commands apply before torch loads (a user's own environment settings win)."""

from __future__ import annotations

import os
import sys


def tune_cpu_runtime(*, passive_wait: bool = False, all_threads: bool = True) -> None:
    """PyTorch's transparent-huge-page allocator, optionally sleeping OpenMP waits, and every CPU this process may
    run on.

    - ``THP_MEM_ALLOC_ENABLE=1``: large tensors are ``madvise``d as huge pages (checked: ``AnonHugePages`` grows by
      the tensor's size); a 16->16-channel 3x3x3 convolution on 96^3 ran 1.5x faster with it here.
    - ``passive_wait``: ``OMP_WAIT_POLICY=PASSIVE``, OpenMP threads that sleep instead of spinning while they wait.
      When other programs share the cores, spinning threads wait on each other for whole scheduler slices:
      cpu-small training steps ran 2-13x faster with it on this project's shared 2-core machine, and the demo's
      training 7-17x (3.7 vs 0.2-0.5 steps/s at the same load).
    - ``all_threads``: ``torch.set_num_threads`` to the CPUs this process may use (not under torchrun, which gives
      each process its share).

    Both variables are read once, when torch loads, so they are only set before torch is imported.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
        if passive_wait:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if all_threads:
        import torch

        from agsevnet.parallel import available_cpus

        torch.set_num_threads(available_cpus())
