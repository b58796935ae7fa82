"""Issue 11, fix 1: training over a dataset of BraTS 2021 size (>= 1,200 cached cases) runs within an open-files
limit of 256 (loader processes keep a bounded set of cases memory-mapped), and a failure to open a cached array
reports the operating system's reason instead of blaming the cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

N_CASES = 1200
SIDE = 12


def _tiny_cache(tmp_path: Path) -> tuple[Path, Path]:
    """A phantom data folder of one case and a cache of ``N_CASES`` tiny cases written directly in the cache
    format (the meta of a really preprocessed case, with 12^3 arrays): seconds, not minutes."""
    from agsevnet.synth.phantom import write_phantom_dataset
    from agsevnet.preprocess import build_cache

    data = tmp_path / "data"
    write_phantom_dataset(data, 1, seed=3, shape=(32, 32, 32))
    real = tmp_path / "real-cache"
    (case_id,) = build_cache(data, real, margin=0, workers=1, progress=False)
    meta = json.loads((real / case_id / "meta.json").read_text())
    cache = tmp_path / "cache"
    cache.mkdir()
    rng = np.random.default_rng(0)
    label = np.zeros((SIDE,) * 3, np.uint8)
    label[4:8, 4:8, 4:8] = 2
    label[5:7, 5:7, 5:7] = 3
    meta.update(image_shape=[4, SIDE, SIDE, SIDE], original_shape=[SIDE] * 3, crop_box=[[0, SIDE]] * 3,
                label_voxels=[int(n) for n in np.bincount(label.ravel(), minlength=4)])
    meta.pop("sources", None)
    meta.pop("image_sha1", None)  # distinct random images: distinct patients
    for i in range(N_CASES):
        d = cache / f"case{i:04d}"
        d.mkdir()
        np.save(d / "image.npy", rng.normal(size=(4, SIDE, SIDE, SIDE)).astype(np.float16))
        np.save(d / "label.npy", label)
        (d / "meta.json").write_text(json.dumps(dict(meta, case_id=d.name)))
    return data, cache


_SCRIPT = """
import json, sys
import agsevnet.preprocess as P
from agsevnet.train import distributed, trainer as T

data, run, cache, out = sys.argv[1:5]
P.build_cache = lambda *a, **k: P.list_cached(cache)  # the cache is written by the test, not from `data`
if __name__ == "__main__":
    tr = T.make_trainer(data, run, config="cpu-small", overrides=sys.argv[5:], device="cpu", cache_dir=cache,
                        progress=False)
    ds = tr.dataset
    touched = len({int(ds.rng(i).integers(len(ds.cases))) for i in range(ds.batch_size * tr.total)})  # cases drawn
    summary = tr.fit()
    json.dump({"steps": summary["steps"], "train_cases": summary["train_cases"], "touched": touched}, open(out, "w"))
    distributed.shutdown(tr.info)
"""

TINY = ["model.base_width=4", "model.depth=3", "model.enc_convs=[1,1,1]", "data.patch_size=[12,12,12]",
        "data.batch_size=32", "validation.max_cases=1", "validation.every=0", "train.log_every=4",
        "train.checkpoint_every=100", "optim.warmup_steps=2", "train.steps=8", "data.workers=1"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses the shell's ulimit -n")
def test_training_on_1200_cases_runs_with_256_open_files(tmp_path):
    data, cache = _tiny_cache(tmp_path)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    out = tmp_path / "out.json"
    cmd = " ".join([sys.executable, str(script), str(data), str(tmp_path / "run"), str(cache), str(out), *TINY])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(["bash", "-c", f"ulimit -n 256 && exec {cmd}"], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["steps"] == 8 and report["train_cases"] == N_CASES * 4 // 5
    # the loader process memory-mapped enough distinct cases (2 descriptors each) to pass 256 if it kept them all
    assert report["touched"] * 2 > 256, report


def test_an_os_error_opening_a_cached_array_is_reported_as_such(tmp_path):
    """Too many open files: the message says so (and names the limit), it does not ask for a cache rebuild."""
    data, cache = tmp_path / "d", tmp_path / "c"
    from agsevnet.synth.phantom import write_phantom_dataset
    from agsevnet.preprocess import build_cache

    write_phantom_dataset(data, 1, seed=3, shape=(32, 32, 32))
    (case_id,) = build_cache(data, cache, workers=1, progress=False)
    script = textwrap.dedent(f"""
        import resource, sys
        from agsevnet.errors import DataError
        from agsevnet.preprocess import load_cached
        keep = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        try:
            while True:
                keep.append(load_cached({str(cache)!r}, {case_id!r}))
        except DataError as exc:
            print(str(exc))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    message = result.stdout.strip()
    assert "Too many open files" in message and "ulimit -n" in message, message
    assert "rebuild" not in message, message
    shutil.rmtree(cache)
