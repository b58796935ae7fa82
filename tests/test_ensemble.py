"""Ensembles of one architecture (agsevnet.models.ensemble.Ensemble) and checkpoints holding several weight sets
(``members``): the ensemble's softmax (sigmoid) is the mean of its members' softmaxes (sigmoids)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agsevnet.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from agsevnet.errors import DataError
from agsevnet.models import build_model
from agsevnet.models.ensemble import Ensemble

NARROW = {"name": "agsevnet", "base_width": 4, "depth": 3, "dropout": 0.0}
CONFIG = {"preprocess": {"normalization": "brain", "margin": 2, "dtype": "float16"}, "data": {"patch_size": [16] * 3}}


def _net(seed: int, cfg=NARROW) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(dict(cfg)).eval()


def _x(seed: int = 9) -> torch.Tensor:
    return torch.randn(2, 4, 16, 16, 16, generator=torch.Generator().manual_seed(seed))


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, atol=1e-3)


def test_softmax_ensemble_averages_the_members_probabilities(one_thread):
    a, b = _net(0), _net(1)
    x = _x()
    with torch.no_grad():
        pa, pb = torch.softmax(a(x), 1), torch.softmax(b(x), 1)
        out = Ensemble([a, b])(x)
    assert _differ(pa, pb)  # two different members: the test can tell a mean from either of them
    assert out.shape == pa.shape
    torch.testing.assert_close(torch.softmax(out, 1), (pa + pb) / 2, atol=1e-5, rtol=0)
    assert _differ(torch.softmax(out, 1), torch.softmax((a(x) + b(x)) / 2, 1))  # probabilities, not logits


def test_sigmoid_ensemble_averages_the_members_probabilities():
    torch.manual_seed(0)
    members = [nn.Conv3d(4, 3, 3, padding=1) for _ in range(3)]
    x = _x(1)
    with torch.no_grad():
        probs = [torch.sigmoid(m(x)) for m in members]
        out = Ensemble(members, "sigmoid")(x)
    torch.testing.assert_close(torch.sigmoid(out), sum(probs) / 3, atol=1e-5, rtol=0)
    assert _differ(torch.sigmoid(out), torch.sigmoid(sum(m(x) for m in members) / 3).detach())
    with pytest.raises(ValueError):
        Ensemble([])
    with pytest.raises(ValueError):
        Ensemble(members, "relu")


def _ensemble_checkpoint(members, cfg=NARROW, **extra):
    ckpt = make_checkpoint(members[0], cfg, CONFIG, step=5, **extra)
    ckpt["members"] = [{k: v.clone() for k, v in m.state_dict().items()} for m in members]
    return ckpt


def test_members_checkpoint_loads_as_an_ensemble_through_a_weights_only_file(tmp_path, one_thread):
    a, b = _net(0), _net(1)
    x = _x()
    with torch.no_grad():
        expected = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
    ckpt = _ensemble_checkpoint([a, b])
    model = model_from_checkpoint(ckpt)
    assert isinstance(model, Ensemble) and len(model.members) == 2 and not model.training
    assert model.activation == "softmax"
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(model(x), 1), expected, atol=1e-5, rtol=0)

    path = tmp_path / "ensemble.pt"
    torch.save(ckpt, path)  # a plain torch.save: load_checkpoint reads it with weights_only=True
    loaded = load_checkpoint(path)
    assert len(loaded["members"]) == 2
    reloaded = model_from_checkpoint(loaded, path)
    assert isinstance(reloaded, Ensemble)
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(reloaded(x), 1), expected, atol=1e-5, rtol=0)
    save_checkpoint(tmp_path / "atomic.pt", ckpt)
    assert isinstance(model_from_checkpoint(load_checkpoint(tmp_path / "atomic.pt")), Ensemble)

    single = dict(ckpt)
    del single["members"]  # without members: the one network of state_dict
    plain = model_from_checkpoint(single)
    assert not isinstance(plain, Ensemble)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), a(x))


def test_region_members_checkpoint_averages_sigmoids():
    cfg = dict(NARROW, out_channels=3)
    a, b = _net(0, cfg), _net(1, cfg)
    model = model_from_checkpoint(_ensemble_checkpoint([a, b], cfg, output="regions"))
    assert isinstance(model, Ensemble) and model.activation == "sigmoid"
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(torch.sigmoid(model(x)), (torch.sigmoid(a(x)) + torch.sigmoid(b(x))) / 2,
                                   atol=1e-5, rtol=0)


def test_members_that_do_not_fit_the_architecture_are_a_data_error(tmp_path):
    a = _net(0)
    wider = _net(1, dict(NARROW, base_width=8))
    ckpt = _ensemble_checkpoint([a, a])
    ckpt["members"][1] = wider.state_dict()
    with pytest.raises(DataError, match="do not fit") as info:
        model_from_checkpoint(ckpt, tmp_path / "bad.pt")
    assert "bad.pt" in str(info.value)
    ckpt["members"][1] = {k: v for k, v in a.state_dict().items() if "bias" not in k}  # missing keys
    with pytest.raises(DataError, match="do not fit"):
        model_from_checkpoint(ckpt)


def test_predictor_runs_an_ensemble_member_by_member_and_measures_their_agreement(one_thread):
    """The Predictor averages the members' probabilities itself (equal to the ensemble module's output) and
    reports their whole-tumour agreement as the ``member_dice`` signal; members that agree perfectly give 1."""
    import numpy as np

    from agsevnet.infer.predictor import Predictor

    image = np.random.default_rng(0).normal(size=(4, 16, 16, 16)).astype(np.float32)
    a, b = _net(0), _net(1)
    ensemble = Ensemble([a, b]).eval()
    predictor = Predictor(ensemble, roi_size=(16, 16, 16), strategy="whole", precision="fp32", channels_last=False)
    members: list = []
    averaged = predictor.probabilities(image, members=members)
    assert len(members) == 2 and _differ(members[0], members[1])
    torch.testing.assert_close(averaged, (members[0] + members[1]) / 2, atol=1e-6, rtol=0)
    module = Predictor(Ensemble([_net(0), _net(1)]).eval(), roi_size=(16, 16, 16), strategy="whole",
                       precision="fp32", channels_last=False)
    module.model = nn.Sequential(module.model)  # not an Ensemble any more: one pass through the ensemble module
    torch.testing.assert_close(module.probabilities(image), averaged, atol=1e-5, rtol=0)

    from agsevnet.infer.signals import member_agreement

    assert member_agreement([members[0], members[0]]) == 1.0
    masks = [(m.argmax(0) > 0) for m in members]
    if (masks[0] != masks[1]).any():
        assert member_agreement(members) < 1.0
