"""The checkpoint format: weights_only round trip, prefix stripping, RNG state, clear errors for bad files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from agsevnet import MODALITIES
from agsevnet.checkpoint import (
    FORMAT,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    strip_prefixes,
)
from agsevnet.errors import DataError
from agsevnet.models import build_model

NARROW = {"name": "agsevnet", "base_width": 4, "depth": 3, "dropout": 0.0}
CONFIG = {"preprocess": {"normalization": "brain", "margin": 4, "dtype": "float16"},
          "data": {"patch_size": (32, 32, 16)}, "seed": np.int64(3)}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(dict(NARROW))


def test_round_trip_with_weights_only(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(1, 4, 16, 16, 16)).sum().backward()
    opt.step()
    ckpt = make_checkpoint(model, NARROW, CONFIG, step=7, metrics={"val_dice_mean": np.float32(0.5)},
                           optimizer=opt.state_dict(), rng=rng_state())
    path = save_checkpoint(tmp_path / "sub" / "last.pt", ckpt)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # atomic: no temporary left behind

    loaded = torch.load(path, weights_only=True)  # the format loads without unpickling code
    assert loaded["format"] == FORMAT and loaded["step"] == 7
    assert loaded["channels"] == list(MODALITIES)
    assert loaded["preprocess"] == CONFIG["preprocess"]
    assert loaded["patch_size"] == [32, 32, 16] and loaded["num_classes"] == 4
    assert loaded["config"]["seed"] == 3 and loaded["metrics"]["val_dice_mean"] == pytest.approx(0.5)
    assert loaded["optimizer"]["state"]  # Adam moments survived

    restored = model_from_checkpoint(load_checkpoint(path))
    assert not restored.training
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), restored(x))


def test_prefixes_of_ddp_and_compile_are_stripped():
    model = _model()
    wrapped = nn.Module()
    wrapped.module = model  # what DistributedDataParallel looks like
    ckpt = make_checkpoint(wrapped, NARROW, CONFIG, step=0)
    assert set(ckpt["state_dict"]) == set(model.state_dict())
    assert strip_prefixes({"module._orig_mod.a.weight": 1, "_orig_mod.b": 2, "c": 3}) == {"a.weight": 1, "b": 2, "c": 3}


def test_values_that_weights_only_cannot_load_are_refused_at_save_time():
    with pytest.raises(TypeError, match=r"config\['bad'\]"):
        make_checkpoint(_model(), NARROW, {**CONFIG, "bad": object()}, step=0)


def test_rng_state_round_trip(tmp_path):
    gen = np.random.default_rng(5)
    path = tmp_path / "rng.pt"
    torch.save(rng_state({"sampler": gen}), path)
    first = (torch.rand(3), np.random.rand(3), random.random(), gen.random(3))
    set_rng_state(torch.load(path, weights_only=True), {"sampler": gen})
    second = (torch.rand(3), np.random.rand(3), random.random(), gen.random(3))
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2] and np.array_equal(first[3], second[3])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a checkpoint", "not a readable PyTorch checkpoint"),
        (None, "not an agsevnet checkpoint"),  # a valid torch file holding something else
        ("truncated", "not a readable PyTorch checkpoint"),
    ],
)
def test_bad_files_are_rejected_naming_the_file(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)
    elif content == "truncated":
        save_checkpoint(path, make_checkpoint(_model(), NARROW, CONFIG, step=0))
        path.write_bytes(path.read_bytes()[:500])
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        load_checkpoint(path)
    assert info.value.path == path and str(path) in str(info.value)


def test_missing_file_and_newer_format(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    ckpt = make_checkpoint(_model(), NARROW, CONFIG, step=0)
    ckpt["format_version"] = 99
    save_checkpoint(tmp_path / "new.pt", ckpt)
    with pytest.raises(DataError, match="format version 99"):
        load_checkpoint(tmp_path / "new.pt")


def test_weights_that_do_not_fit_the_architecture():
    ckpt = make_checkpoint(_model(), NARROW, CONFIG, step=0)
    ckpt["model"] = {**NARROW, "base_width": 8}
    with pytest.raises(DataError, match="do not fit"):
        model_from_checkpoint(ckpt, "x.pt")
