"""``agsevnet export`` (ONNX, TorchScript, the preprocessing contract) and ``predict --backend``.

The networks are tiny (depth 3, width 4, divisor 4) so that the ONNX export, the slow part (torch.export plus the
ONNX translation), runs once per module: the module fixture exports a region-output model, and the backend tests
reuse that file through the export cache.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

from agsevnet.checkpoint import make_checkpoint, save_checkpoint
from agsevnet.errors import ConfigError
from agsevnet.infer import export as ex
from agsevnet.models import build_model
from agsevnet.models.blocks import guided_filter
from helpers import run_cli

TINY = {"name": "agsevnet", "base_width": 4, "depth": 3, "dropout": 0.0}
PRE = {"normalization": "brain", "margin": 3, "dtype": "float32", "spacing": [2.0, 2.0, 2.0]}


def _checkpoint(out_channels: int = 4, seed: int = 0) -> dict:
    cfg = {**TINY, **({"out_channels": out_channels} if out_channels != 4 else {})}
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    ckpt = make_checkpoint(model, cfg, {"preprocess": PRE}, 7, patch_size=[24, 24, 24],
                           num_classes=4)
    ckpt["inference"] = {"strategy": "whole", "overlap": 0.5, "tta": False, "et_threshold": 0}
    if out_channels == 3:
        ckpt["output"] = "regions"
    return ckpt


def _eager(ckpt: dict) -> torch.nn.Module:
    from agsevnet.checkpoint import model_from_checkpoint

    return model_from_checkpoint(ckpt)


SIZES = [(8, 12, 8), (12, 8, 48)]  # the second crosses the guided filter's branch (maps > 17 voxels)


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    folder = tmp_path_factory.mktemp("onnx")
    ckpt = _checkpoint(out_channels=3)
    result = ex.export_model(ckpt, "onnx", folder / "tiny.onnx")
    return ckpt, result


def test_gather_box_sums_equal_the_branching_ones():
    # the export's shape-generic box sums must be the network's, on both sides of the radius branch
    torch.manual_seed(0)
    for n in (1, 5, 17, 18, 40):
        x = torch.randn(1, 3, n, 7, 4, dtype=torch.float64)
        for radius in (1, 16):
            torch.testing.assert_close(ex._box_sum_axis_gather(x, 2, radius), guided_filter._box_sum_axis(x, 2, radius))
    with ex.shape_generic_box_sums():
        assert guided_filter._box_sum_axis is ex._box_sum_axis_gather
    assert guided_filter._box_sum_axis is not ex._box_sum_axis_gather  # restored


def test_torchscript_export_matches_eager_at_two_sizes(tmp_path):
    ckpt = _checkpoint()
    out = tmp_path / "tiny.pt"
    result = ex.export_model(ckpt, "torchscript", out)
    assert result.check["passed"] and result.check["worst"] <= ex.TOLERANCE
    assert len(result.check["max_abs_diff"]) == 4  # random and phantom at two sizes
    extra = {"agsevnet_contract.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["agsevnet_contract.json"])["output"]["kind"] == "classes"
    eager = _eager(ckpt)
    for size in SIZES:  # dynamic spatial sizes
        x = torch.randn(2, 4, *size)
        with torch.no_grad():
            diff = (loaded(x) - eager(x)).abs().max().item()
        assert diff <= ex.TOLERANCE, (size, diff)


def test_contract_has_the_preprocessing_and_output(tmp_path):
    ckpt = _checkpoint()
    ex.export_model(ckpt, "torchscript", tmp_path / "m.ts", check=False)
    c = json.loads((tmp_path / "m.ts.json").read_text())
    assert c["format"] == ex.CONTRACT_FORMAT and c["model_file"] == "m.ts" and c["export_format"] == "torchscript"
    assert c["input"]["channels"] == ["flair", "t1", "t1ce", "t2"] and c["input"]["divisor"] == 4
    assert c["preprocessing"]["normalization"] == "brain" and c["preprocessing"]["margin"] == 3
    assert c["preprocessing"]["spacing"] == [2.0, 2.0, 2.0]
    assert c["output"]["kind"] == "classes" and "softmax" in c["output"]["activation"]
    assert c["output"]["channels"][0] == "background" and len(c["output"]["channels"]) == 4
    assert c["labels"]["to_convention"]["brats2020"]["3"] == 4  # internal enhancing -> BraTS 2020's label 4
    assert c["inference"]["strategy"] == "whole" and c["inference"]["patch_size"] == [24, 24, 24]
    assert c["architecture"]["depth"] == 3 and c["step"] == 7


def test_existing_output_kept_without_overwrite(tmp_path):
    out = tmp_path / "m.ts"
    out.write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="exists"):
        ex.export_model(_checkpoint(), "torchscript", out, check=False)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(ConfigError, match="--format"):
        ex.export_model(_checkpoint(), "tflite", tmp_path / "x", check=False)


def test_onnx_export_dynamic_sizes_and_regions_contract(onnx_export):
    import onnx

    ckpt, result = onnx_export
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1] == 4 and all(d.dim_param for i, d in enumerate(dims) if i != 1)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["agsevnet_contract"])["input"]["divisor"] == 4
    c = result.contract
    assert c["output"]["kind"] == "regions" and c["output"]["channels"] == ["WT", "TC", "ET"]
    assert "sigmoid" in c["output"]["activation"] and c["onnx_opset"] == ex.ONNX_OPSET
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'agsevnet[onnx]'")
    assert c["check"]["passed"] and c["check"]["worst"] <= ex.TOLERANCE
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    eager = _eager(ckpt)
    for size in SIZES:
        x = torch.randn(1, 4, *size)
        with torch.no_grad():
            ref = eager(x).numpy()
        got = session.run(None, {ex.INPUT_NAME: x.numpy()})[0]
        assert got.shape == ref.shape and np.abs(got - ref).max() <= ex.TOLERANCE


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_predict_backend_gives_the_torch_labels(onnx_export, backend, tmp_path, monkeypatch):
    pytest.importorskip(backend, reason=f"{backend} is not installed: pip install 'agsevnet[{'onnx' if backend == 'onnxruntime' else backend}]'")
    from agsevnet.synth.phantom import make_phantom
    from agsevnet.infer.backends import network_hash
    from agsevnet.infer.predictor import Predictor, segment

    ckpt, result = onnx_export
    monkeypatch.setenv("AGSEVNET_CACHE", str(tmp_path))
    (tmp_path / "exported").mkdir()  # the module's export is this network's: no second export
    shutil.copy(result.path, tmp_path / "exported" / f"{network_hash(_eager(ckpt))}.onnx")
    images, _ = make_phantom(3, (48, 40, 32))
    # spacing 2 mm on a 1 mm phantom: the network runs on a 24x20x16 grid
    ref = segment(images, Predictor.from_checkpoint(ckpt, precision="fp32"))
    predictor = Predictor.from_checkpoint(ckpt, precision="fp32", backend=backend)
    assert predictor.model.backend == backend and not predictor.channels_last
    got = segment(images, predictor)
    assert got.shape == ref.shape
    # measured: identical labels (logits agree to ~1e-6, far from any 0.5 threshold) on this phantom
    assert (got == ref).mean() >= 0.999


def test_missing_runtime_is_a_clear_error(monkeypatch):
    from agsevnet.infer.backends import require
    from agsevnet.infer.predictor import Predictor

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'agsevnet\[openvino\]'"):
        require("openvino")
    with pytest.raises(ConfigError, match="needs the openvino package"):
        Predictor(build_model(TINY), backend="openvino")
    with pytest.raises(ConfigError, match="--backend must be one of"):
        Predictor(build_model(TINY), backend="tensorrt")


def test_export_command(tmp_path, capsys):
    ckpt_path = save_checkpoint(tmp_path / "tiny.pt", _checkpoint())
    out = tmp_path / "out" / "tiny.torchscript"
    assert run_cli(["export", str(ckpt_path), "--format", "torchscript", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and (tmp_path / "out" / "tiny.torchscript.json").is_file()
    assert "max abs logit difference" in text
    assert run_cli(["export", str(ckpt_path), "--format", "torchscript", "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
