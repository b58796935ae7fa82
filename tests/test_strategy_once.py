"""The inference strategy is chosen once per case: the one a Prediction reports is the one the engine ran."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from agsevnet.data.case import Case, CaseSpec, Geometry
from agsevnet.synth.phantom import make_phantom
from agsevnet.infer import engine
from agsevnet.infer.predictor import Predictor


class _Pointwise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], -x[:, :1]], dim=1)


def test_predict_chooses_the_strategy_once(monkeypatch):
    """A fake ``auto`` that answers differently each time it is asked: a second choice inside the engine would
    run another strategy than the one reported (failed before: 2 ``auto`` decisions, reported whole, ran sliding)."""
    answers = iter(["whole", "sliding", "whole", "sliding"])
    calls: list[tuple[str, str]] = []
    real = engine.choose_strategy

    def fake(model, shape, roi_size, *, strategy="auto", **kwargs):
        chosen = next(answers) if strategy == "auto" else real(model, shape, roi_size, strategy=strategy, **kwargs)
        calls.append((strategy, chosen))
        return chosen

    monkeypatch.setattr(engine, "choose_strategy", fake)
    predictor = Predictor(_Pointwise(), preprocess={"normalization": "brain", "margin": 2, "dtype": "float32"},
                          strategy="auto", divisor=1, precision="fp32", roi_size=(16, 16, 16))
    images, _ = make_phantom(0, (32, 32, 24))
    eye = np.eye(4)
    geometry = Geometry(shape=tuple(images.shape[1:]), affine=eye, qform=eye, qform_code=0, sform=eye,
                        sform_code=0, zooms=(1.0, 1.0, 1.0))
    spec = CaseSpec(case_id="p0", scheme="files", images={}, label=None, label_convention="brats2020")
    case = Case(spec=spec, images=images, label=None, geometry=geometry)
    result = predictor.predict_case(case)
    assert [s for s, _ in calls].count("auto") == 1
    assert result.strategy == calls[-1][1] == "whole"  # reported == run by the engine
    assert result.labels.shape == images.shape[1:] and result.labels.dtype == np.uint8
