"""The AGSE-VNet family, the registry, the model summary and `agsevnet model-summary`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from agsevnet.cli import main
from agsevnet.errors import ConfigError
from agsevnet.models import (
    AGSEVNet,
    CategoricalDiceLoss,
    build_model,
    check_input_size,
    count_parameters,
    required_divisor,
    summarize,
)
from agsevnet.models.blocks import AttentionGuidedFilter, SqueezeExcitation


pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"base_width": 4, "dropout": 0.0}  # narrow and deterministic, to keep the tests fast
VARIANTS = {
    "AGSE-VNet": {"name": "agsevnet"},
    "AG-VNet": {"name": "agsevnet", "se": False},
    "SE-VNet": {"name": "agsevnet", "skip": "concat"},
    "VNet": {"name": "vnet"},
}


def test_default_network_is_the_papers():
    net = build_model({"name": "agsevnet"})
    assert isinstance(net, AGSEVNet)
    widths = [stage.se.fc[0].in_features for stage in net.encoder]
    assert widths == [20, 40, 80, 160, 320]
    convs = [len(stage.convs) + (not isinstance(stage.entry, nn.Identity)) for stage in net.encoder]
    assert convs == [2, 2, 3, 3, 3]
    assert all(len(stage.convs) == 3 for stage in net.decoder)
    assert all(isinstance(stage.ag, AttentionGuidedFilter) and stage.ag.radius == 16 and stage.ag.eps == 0.01
               for stage in net.decoder)
    assert all(stage.se.fc[0].out_features == stage.se.fc[0].in_features // 4 for stage in net.encoder)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 20 for m in norms)
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == sum(isinstance(m, nn.Conv3d) and m.kernel_size == (3, 3, 3) for m in net.modules())
    assert all(m.p == 0.5 for m in drops)
    assert net.head.out_channels == 4 and net.head.kernel_size == (1, 1, 1)
    assert required_divisor({"name": "agsevnet"}) == 16


def test_default_width_forward_on_a_small_input_returns_logits():
    torch.manual_seed(0)
    net = build_model({"name": "agsevnet"}).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 4, 32, 32, 16))
    assert out.shape == (1, 4, 32, 32, 16)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out.softmax(1).sum(1), torch.zeros(1))  # logits, not probabilities
    assert (out < 0).any() or (out > 1).any()


@pytest.mark.parametrize("patch", [(128, 128, 64), (96, 96, 96), (64, 64, 64), (144, 176, 144)])
def test_output_shapes_for_patch_sizes(patch):
    torch.manual_seed(0)
    net = build_model({"name": "agsevnet", **SMALL}).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 4, *patch))
    assert out.shape == (1, 4, *patch)


@pytest.mark.parametrize("bad", [(40, 32, 32), (32, 32, 24), (100, 100, 100)])
def test_clear_error_for_sizes_not_a_multiple_of_16(bad):
    net = build_model({"name": "agsevnet", **SMALL})
    with pytest.raises(ValueError, match=r"multiple of 16") as info:
        net(torch.randn(1, 4, *bad))
    assert str(list(bad)) in str(info.value)
    with pytest.raises(ValueError, match=r"multiple of 16"):
        check_input_size({"name": "agsevnet"}, bad)
    with pytest.raises(ValueError, match=r"\(N, 4, X, Y, Z\)"):
        net(torch.randn(1, 3, 32, 32, 32))


def test_depth_changes_the_divisor():
    cfg = {"name": "agsevnet", "depth": 4, **SMALL}
    assert required_divisor(cfg) == 8
    net = build_model(cfg).eval()
    assert net.required_divisor == 8
    assert len(net.encoder) == 4
    with torch.no_grad():
        assert net(torch.randn(1, 4, 24, 16, 8)).shape == (1, 4, 24, 16, 8)


def test_variants_are_one_class_with_the_right_blocks():
    for label, cfg in VARIANTS.items():
        net = build_model({**cfg, **SMALL})
        has_se = any(isinstance(m, SqueezeExcitation) for m in net.modules())
        has_ag = any(isinstance(m, AttentionGuidedFilter) for m in net.modules())
        assert (has_se, has_ag) == ("SE" in label, "AG" in label), label
    # options override the vnet defaults (a config stored in a checkpoint rebuilds the same network)
    assert any(isinstance(m, SqueezeExcitation) for m in build_model({"name": "vnet", "se": True}).modules())


def test_registry_errors_and_baselines():
    with pytest.raises(ConfigError, match="unknown model name"):
        build_model({"name": "resnet"})
    with pytest.raises(ConfigError, match="no option.*widht"):
        build_model({"name": "agsevnet", "widht": 3})
    with pytest.raises(ConfigError, match="skip must be one of"):
        build_model({"name": "agsevnet", "skip": "add"})
    assert required_divisor({"name": "segresnet"}) == 8
    assert required_divisor({"name": "unet"}) == 16
    assert required_divisor({"name": "monai-vnet"}) == 16
    torch.manual_seed(0)
    for name in ("segresnet", "unet", "monai-vnet"):
        net = build_model({"name": name}).eval()
        assert net.required_divisor == required_divisor({"name": name})
        with torch.no_grad():
            assert net(torch.randn(1, 4, 32, 32, 16)).shape == (1, 4, 32, 32, 16), name


def _loss_after_one_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    loss_fn = CategoricalDiceLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    loss = loss_fn(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn(net(x), y)
    return loss.item(), after.item()


@pytest.mark.parametrize("cfg", [
    *({**cfg, **SMALL} for cfg in VARIANTS.values()),
    {"name": "segresnet", "init_filters": 8, "dropout_prob": None},
    {"name": "unet", "channels": [4, 8, 16, 32, 64]},
    {"name": "monai-vnet", "dropout_prob_down": 0.0, "dropout_prob_up": (0.0, 0.0)},
], ids=["agsevnet", "ag-vnet", "se-vnet", "vnet", "segresnet", "unet", "monai-vnet"])
def test_one_optimisation_step_lowers_the_loss(cfg):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 32, 16, 16)  # >= 2 voxels at the bottom of the 16x down-sampling nets (InstanceNorm)
    y = (x[:, 0] > 0.5).long() + (x[:, 1] > 1.0).long() + (x[:, 2] > 1.5).long()  # labels 0..3 from the input
    net = build_model(cfg)
    before, after = _loss_after_one_step(net, x, y)
    assert after < before


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    net = build_model({"name": "agsevnet", **SMALL}).eval()
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        ref = net(x)
        cl = net.to(memory_format=torch.channels_last_3d)(x.to(memory_format=torch.channels_last_3d))
        torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
    assert torch.isfinite(low).all()
    assert torch.corrcoef(torch.stack([low.float().flatten(), ref.flatten()]))[0, 1] > 0.98


def test_default_network_exports_and_matches_eager():
    torch.manual_seed(0)
    net = build_model({"name": "agsevnet"}).eval()
    x = torch.randn(1, 4, 32, 32, 16)
    with torch.no_grad():
        ref = net(x)
        scripted = torch.jit.script(net)
        torch.testing.assert_close(scripted(x), ref, rtol=1e-4, atol=1e-4)
        exported = torch.export.export(net, (x,))
        torch.testing.assert_close(exported.module()(x), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="multiple of 16"):
        scripted(torch.randn(1, 4, 40, 32, 16))


@pytest.mark.slow
def test_default_network_exports_to_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    net = build_model({"name": "agsevnet"}).eval()
    program = torch.onnx.export(net, (torch.randn(1, 4, 32, 32, 16),), dynamo=True, verbose=False)
    program.save(str(tmp_path / "agsevnet.onnx"))
    model = onnx.load(str(tmp_path / "agsevnet.onnx"))
    onnx.checker.check_model(model)
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [1, 4, 32, 32, 16]


def test_summary_counts_parameters_and_flops():
    conv = nn.Sequential(nn.Conv3d(4, 6, 3, padding=1))
    summary = summarize(conv, (1, 4, 8, 8, 8))
    assert summary.params == count_parameters(conv) == 4 * 6 * 27 + 6
    assert summary.gflops == pytest.approx(2 * 4 * 6 * 27 * 8**3 / 1e9)
    assert summary.output_shape == [1, 6, 8, 8, 8]
    net = build_model({"name": "agsevnet", **SMALL})
    summary = summarize(net, (1, 4, 32, 32, 16))
    rows = {row.name: row for row in summary.rows}
    assert {"encoder.0.se", "decoder.3.ag", "head"} <= set(rows)
    assert rows["decoder.3.ag"].output_shape == [1, 4, 32, 32, 16]
    assert summary.params == count_parameters(net)
    assert summary.gflops == pytest.approx(sum(r.gflops for r in summary.rows if r.name.count(".") == 1
                                               or r.name == "head"), rel=1e-6)


def test_model_summary_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["model-summary", "--patch", "32", "32", "16", "--base-width", "4", "--no-se", "--skip", "concat"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "parameters:" in out and "GFLOPs" in out and "(1, 4, 32, 32, 16)" in out
    assert "encoder.0.se" not in out and "decoder.0.ag" not in out  # plain VNet: no SE, no AG
    with pytest.raises(SystemExit) as exit_info:
        main(["model-summary", "--patch", "40", "32", "16"])
    assert exit_info.value.code == 1
    assert "multiple of 16" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["model-summary", "--model", "segresnet", "--no-se"])
    assert exit_info.value.code == 1
    assert "apply only to agsevnet and vnet" in capsys.readouterr().err
