"""An MSD Task01 dataset as downloaded: ``imagesTs/`` holds cases without labels. Training leaves them out and
says so (before, they landed in a training or validation fold and stopped the run); prediction still takes
them."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from agsevnet.data.layouts import discover, labelled_cases
from agsevnet.synth.phantom import write_phantom_dataset

SHAPE = (32, 32, 32)
TINY = [
    "model.base_width=4", "model.depth=3", "model.enc_convs=[1,1,1]", "data.patch_size=[16,16,16]",
    "data.batch_size=2", "data.workers=0", "train.steps=3", "train.log_every=1", "train.checkpoint_every=3",
    "validation.every=3", "validation.max_cases=1", "validation.folds=2", "validation.fold=0",
    "optim.warmup_steps=1",
]


@pytest.fixture(scope="module")
def msd_download(tmp_path_factory) -> Path:
    """Three labelled cases in imagesTr/labelsTr and two unlabelled ones in imagesTs (BRATS_101, BRATS_102)."""
    root = tmp_path_factory.mktemp("msd") / "Task01_BrainTumour"
    write_phantom_dataset(root, 3, seed=11, shape=SHAPE, naming="msd")
    test_split = tmp_path_factory.mktemp("msd_ts")
    write_phantom_dataset(test_split, 2, seed=12, shape=SHAPE, naming="msd", with_labels=False)
    (root / "imagesTs").mkdir()
    for i in (1, 2):
        shutil.move(test_split / "imagesTs" / f"BRATS_{i:03d}.nii.gz", root / "imagesTs" / f"BRATS_{100 + i}.nii.gz")
    return root


def test_labelled_cases_leaves_out_the_unlabelled_ones(msd_download):
    specs = discover(msd_download)
    assert [s.case_id for s in specs] == ["BRATS_001", "BRATS_002", "BRATS_003", "BRATS_101", "BRATS_102"]
    kept, note = labelled_cases(specs)
    assert [s.case_id for s in kept] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert note is not None and "left out 2 case(s) without a label file" in note
    assert str(msd_download / "imagesTs") in note
    assert labelled_cases(kept) == (kept, None)


def test_training_on_an_msd_download_uses_the_labelled_cases_only(msd_download, tmp_path, capsys):
    from agsevnet.infer.predictor import find_cases
    from agsevnet.preprocess import list_cached
    from agsevnet.train.trainer import train

    summary = train(msd_download, tmp_path / "run", config="cpu-small", overrides=TINY, device="cpu",
                    cache_dir=tmp_path / "cache", progress=False)
    assert summary["steps"] == 3
    err = capsys.readouterr().err
    assert "left out 2 case(s) without a label file" in err and "3 labelled case(s)" in err
    split = re.search(r"fold 0: (\d+) training case\(s\), (\d+) validation case\(s\)(?: \(the first \d+ of (\d+))?",
                      err)
    assert split is not None and int(split[1]) + int(split[3] or split[2]) == 3  # two folds of the 3 labelled cases
    assert list_cached(tmp_path / "cache") == ["BRATS_001", "BRATS_002", "BRATS_003"]  # imagesTs is not cached
    # prediction still takes every case, the unlabelled ones included
    assert {s.case_id for s in find_cases(msd_download)} >= {"BRATS_101", "BRATS_102"}
