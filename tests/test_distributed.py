"""Issue 11 fix 7: the other ranks survive rank 0 working alone (cache building, validation) for longer than
the default process group's timeout (NCCL's is 10 minutes). Two gloo processes on the CPU; the default group
gets a deliberately short timeout (1 s) and rank 0 works alone for 3 s, in :func:`on_main` and before a
:func:`barrier`: both waits must go through the long-timeout group, and the default group still works after."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

_SCRIPT = """
import json, os, sys, time
from datetime import timedelta
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

def worker(rank, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # the default group with a short timeout, standing in for NCCL's 10 minutes
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=1))
    from agsevnet.train import distributed
    info = distributed.init("cpu")
    result = {"rank": rank}
    try:
        result["on_main"] = distributed.on_main(lambda: (time.sleep(3), "built")[1], info)
        if rank == 0:
            time.sleep(3)  # e.g. validation
        distributed.barrier(info)
        result["mean"] = distributed.mean(float(rank), info, torch.device("cpu"))  # the default group still works
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"[:300]
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    try:
        distributed.shutdown(info)
    except Exception:
        pass

if __name__ == "__main__":
    mp.start_processes(worker, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2, start_method="spawn", join=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_wait_for_rank_0_longer_than_the_default_timeout(tmp_path):
    script = tmp_path / "wait.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    proc = subprocess.run([sys.executable, str(script), str(_free_port()), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)
               if (tmp_path / f"rank{r}.json").exists()]
    assert len(results) == 2, proc.stderr[-3000:]
    for r in results:
        assert "error" not in r, r
        assert r["on_main"] == "built" and r["mean"] == 0.5


def test_wait_timeout_is_configurable(monkeypatch):
    from agsevnet.train import distributed

    assert distributed.wait_timeout().total_seconds() == distributed.WAIT_TIMEOUT_S >= 3600
    monkeypatch.setenv("AGSEVNET_WAIT_TIMEOUT", "90")
    assert distributed.wait_timeout().total_seconds() == 90
