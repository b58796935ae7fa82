"""``agsevnet predict --flair --t1 --t1ce --t2``: the output's name and label convention come from the file
names only where they tell (a BraTS case prefix and one BraTS release's modality names); names like
``Flair.nii.gz`` take their folder's name and need ``--labels``; the summary names the convention written."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from agsevnet import MODALITIES
from agsevnet.checkpoint import make_checkpoint, save_checkpoint
from agsevnet.data.labels import allowed_values
from agsevnet.synth.phantom import make_phantom
from helpers import run_cli

SHAPE = (32, 32, 24)
MODEL = {"name": "agsevnet", "base_width": 4, "depth": 3, "dropout": 0.0}
PREPROCESS = {"normalization": "brain", "margin": 2, "dtype": "float32"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from agsevnet.models import build_model

    torch.manual_seed(0)
    model = build_model(dict(MODEL))
    path = tmp_path_factory.mktemp("ckpt") / "narrow.pt"
    return save_checkpoint(path, make_checkpoint(model, MODEL, {"preprocess": PREPROCESS}, step=0,
                                                 patch_size=(16, 16, 16)))


def write_images(folder: Path, names: dict[str, str]) -> dict[str, Path]:
    images, _ = make_phantom(3, SHAPE)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for modality, volume in zip(MODALITIES, images):
        paths[modality] = folder / names[modality]
        nib.save(nib.Nifti1Image(volume.astype(np.int16), np.diag([-1.0, -1.0, 1.0, 1.0])), paths[modality])
    return paths


def argv(checkpoint: Path, out: Path, files: dict[str, Path], *extra: str) -> list[str]:
    return ["predict", "--model", str(checkpoint), "--out", str(out), "--quiet", "--strategy", "whole",
            "--precision", "fp32", *[x for m in MODALITIES for x in (f"--{m}", str(files[m]))], *extra]


def test_plain_modality_names_take_the_folder_name_and_need_labels(tmp_path, checkpoint, capsys):
    files = write_images(tmp_path / "Patient7", {"flair": "Flair.nii.gz", "t1": "T1.nii.gz", "t1ce": "T1c.nii.gz",
                                                 "t2": "T2.nii.gz"})
    out = tmp_path / "out"
    # "T1c" alone does not make these BraTS 2023 files: the convention is unknown, so --labels is required.
    assert run_cli(argv(checkpoint, out, files)) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "--labels" in err and "Flair.nii.gz" in err
    assert not out.exists() or not any(out.iterdir())

    assert run_cli(argv(checkpoint, out, files, "--labels", "brats2020")) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["Patient7.nii.gz"]  # not "Flair.nii.gz"
    assert "labels brats2020 (1 NCR/NET, 2 edema, 4 enhancing): all 1 written case(s)" in printed
    values = set(np.unique(np.asanyarray(nib.load(out / "Patient7.nii.gz").dataobj)).tolist())
    assert values <= set(allowed_values("brats2020"))


def test_brats_names_tell_the_case_and_the_convention(tmp_path, checkpoint, capsys):
    case = "BraTS-GLI-00001-000"
    files = write_images(tmp_path / "in", {m: f"{case}-{t}.nii.gz" for m, t in
                                           zip(MODALITIES, ("t2f", "t1n", "t1c", "t2w"))})
    out = tmp_path / "out"
    assert run_cli(argv(checkpoint, out, files)) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{case}.nii.gz"]
    assert "labels brats2023 (1 NCR, 2 edema, 3 enhancing): all 1 written case(s)" in capsys.readouterr().out
    # --labels overrides what the names say, and --case-id the name
    assert run_cli(argv(checkpoint, out, files, "--labels", "msd", "--case-id", "mine")) == 0
    assert "labels msd (1 edema, 2 non-enhancing, 3 enhancing)" in capsys.readouterr().out
    assert (out / "mine.nii.gz").is_file()
