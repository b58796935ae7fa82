"""Export a checkpoint's network to ONNX or TorchScript, with its preprocessing contract, checked against PyTorch.

``agsevnet export CKPT --format onnx|torchscript --out FILE`` (:func:`export_model`) writes

- ``FILE``: the network alone, input ``image`` float32 ``(N, C, X, Y, Z)`` -> ``logits`` ``(N, K, X, Y, Z)``,
  batch and spatial sizes dynamic (each of X, Y, Z any positive multiple of the model's divisor, 16 for the
  ``default`` AGSE-VNet);
- ``FILE.json``: the preprocessing contract (:func:`contract`): input channel order, normalisation, crop margin,
  resampling ``spacing``, divisor, the output kind (``classes``: softmax over 4 internal classes; ``regions``:
  sigmoid of WT, TC, ET) and how to decode labels, the checkpoint's inference settings, and the measured check.

The same contract is embedded in the model file (ONNX ``metadata_props["agsevnet_contract"]``, TorchScript extra
file ``agsevnet_contract.json``). Both files are written atomically; an existing ``FILE`` is kept unless
``overwrite``.

Dynamic spatial sizes in ONNX. The guided filter's box sums (:func:`agsevnet.models.blocks.guided_filter.
_box_sum_axis`) branch on the map size (``radius >= n - 1``: every window spans the axis), and ``torch.export``
specialises such a branch to the example's side of it, so an ONNX graph traced as is would only be valid for
sizes whose every level falls on the same side. :func:`shape_generic_box_sums` swaps in, during the ONNX trace
only, the branch-free form of the same sums (two gathers of the cumulative sum at clamped indices), which is
mathematically identical for every size; the check below measures it. TorchScript (``torch.jit.script``) keeps
the branch as control flow and needs no change.

The check (:func:`check_export`) runs the exported file (ONNX through onnxruntime when it is installed,
TorchScript through ``torch.jit.load``) and the eager network on a random input and a normalised phantom at two
sizes, and records the largest absolute difference of the logits; :data:`TOLERANCE` is the limit the export
must meet.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agsevnet import MODALITIES, __version__
from agsevnet.errors import ConfigError, DataError
from agsevnet.fsutil import atomic_path, write_json_atomic

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
CONTRACT_FORMAT = "agsevnet-export-contract"
CONTRACT_VERSION = 1
ONNX_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "logits"
TOLERANCE = 1e-3
"""Largest absolute difference of the logits allowed between an exported model and eager PyTorch (float32).
Measured 2026-12-01 (2-core AMD EPYC, onnxruntime 1.32, torch 2.13) on random AGSE-VNets of width 4: ONNX
1.6e-4 at most (on a phantom, 48x32x64; the gather-based box sums add in another order), TorchScript 0 (same
kernels); the limit leaves room for other CPUs' kernels while staying far below anything that moves a label."""

REGIONS: tuple[str, ...] = ("WT", "TC", "ET")


def contract_path(path: str | Path) -> Path:
    """``FILE.json`` beside the exported ``FILE``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


# ------------------------------------------------------------------------------------------- shape-generic trace


def _box_sum_axis_gather(x: torch.Tensor, dim: int, radius: int) -> torch.Tensor:
    """The sums of :func:`~agsevnet.models.blocks.guided_filter._box_sum_axis` without a branch on the axis size:
    ``sum_i = C[min(i + r, n - 1) + 1] - C[max(i - r - 1, -1) + 1]`` with ``C`` the cumulative sum preceded by a
    zero, for every ``n`` (an ONNX graph traced through it is valid for every input size)."""
    import torch
    import torch.nn.functional as F

    n = x.shape[dim]
    c = x.movedim(dim, -1).cumsum(-1)
    c = F.pad(c, (1, 0))  # C[0] = 0
    idx = torch.arange(n, device=x.device)
    hi = (idx + radius).clamp(max=n - 1) + 1
    lo = (idx - radius - 1).clamp(min=-1) + 1
    out = c.index_select(-1, hi) - c.index_select(-1, lo)
    return out.movedim(-1, dim)


@contextlib.contextmanager
def shape_generic_box_sums() -> Iterator[None]:
    """Within the block, the guided filter computes its box sums by :func:`_box_sum_axis_gather` (see the module
    docstring); restored afterwards."""
    from agsevnet.models.blocks import guided_filter

    original = guided_filter._box_sum_axis
    guided_filter._box_sum_axis = _box_sum_axis_gather
    try:
        yield
    finally:
        guided_filter._box_sum_axis = original


# ------------------------------------------------------------------------------------------------------ writers


def load_source(checkpoint: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], nn.Module, str]:
    """``(checkpoint dict, eval-mode network, a name for it)`` of a checkpoint path, a bundled model's name or a
    loaded checkpoint dict."""
    from agsevnet.checkpoint import load_checkpoint, model_from_checkpoint

    if isinstance(checkpoint, Mapping):
        return dict(checkpoint), model_from_checkpoint(checkpoint), "checkpoint dict"
    from agsevnet.infer.bundled import resolve_model

    path = resolve_model(checkpoint)
    ckpt = load_checkpoint(path)
    return ckpt, model_from_checkpoint(ckpt, path), str(checkpoint)


def _multiple(n: int, divisor: int) -> int:
    return -(-int(n) // divisor) * divisor


def check_shapes(divisor: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The two spatial sizes of the export check (the first is also what the ONNX trace sees): about (2, 3, 2) and
    (3, 2, 4) times the divisor, at least 24 voxels (the smallest phantom), distinct per axis so the tracer keeps
    every axis symbolic, and one axis of 48 or more, so that the guided filter's windows (radius 16) span the
    whole map on some levels and not on others."""
    first = (max(2 * divisor, 24), max(3 * divisor, 32), max(2 * divisor, 24))
    second = (max(3 * divisor, 32), max(2 * divisor, 24), max(4 * divisor, 48))
    return (tuple(_multiple(n, divisor) for n in first), tuple(_multiple(n, divisor) for n in second))


def example_shape(divisor: int) -> tuple[int, int, int]:
    """The spatial size traced for ONNX: the first of :func:`check_shapes`."""
    return check_shapes(divisor)[0]


def write_onnx(model: nn.Module, path: str | Path, divisor: int, contract_json: str | None = None) -> Path:
    """``model`` as an ONNX file (opset :data:`ONNX_OPSET`, torch.export-based exporter) with a dynamic batch and
    spatial sizes ``divisor * k``; written atomically. Needs the ``onnx`` and ``onnxscript`` packages."""
    import torch

    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the onnx and onnxscript packages ({exc.name} is not installed): "
                          "pip install 'agsevnet[onnx]'") from exc
    path = Path(path)
    dims = {2 + a: divisor * torch.export.Dim(f"k{'xyz'[a]}", min=1, max=4096 // divisor) for a in range(3)}
    dims[0] = torch.export.Dim("batch", min=1, max=1024)
    x = torch.randn(2, int(getattr(model, "in_channels", len(MODALITIES))), *example_shape(divisor))
    with shape_generic_box_sums(), torch.no_grad(), contextlib.redirect_stdout(None):
        program = torch.onnx.export(model.eval(), (x,), dynamo=True, dynamic_shapes={"x": dims}, verbose=False,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET,
                                    optimize=True)
    if contract_json is not None:
        program.model.metadata_props["agsevnet_contract"] = contract_json
    with atomic_path(path) as tmp:
        program.save(str(tmp))
    return path


def write_torchscript(model: nn.Module, path: str | Path, contract_json: str | None = None) -> Path:
    """``model`` scripted (``torch.jit.script``: shape branches stay control flow, so every multiple of the
    divisor runs) and saved atomically, the contract as the extra file ``agsevnet_contract.json``."""
    import torch

    path = Path(path)
    scripted = torch.jit.script(model.eval())
    extra = {"agsevnet_contract.json": contract_json} if contract_json is not None else {}
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files=extra)
    return path


# ----------------------------------------------------------------------------------------------------- contract


def contract(ckpt: Mapping[str, Any], fmt: str, model_file: str | Path, source: str,
             check: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a program running the exported file must do around it to reproduce ``agsevnet predict``."""
    from agsevnet.data.labels import INTERNAL_LABELS, _TO_INTERNAL
    from agsevnet.infer.predictor import inference_settings
    from agsevnet.models import required_divisor
    from agsevnet.preprocess import DEFAULT_MARGIN

    divisor = int(required_divisor(dict(ckpt["model"])))
    settings = inference_settings(ckpt)
    kind = settings.pop("output", "classes")
    pre = dict(ckpt["preprocess"])
    normalization = pre.get("normalization", "brain")
    margin = int(pre.get("margin", DEFAULT_MARGIN))
    spacing = pre.get("spacing")
    if kind == "regions":
        output = {
            "kind": "regions", "channels": list(REGIONS), "activation": "sigmoid per channel",
            "decode": "internal label 2 (edema) where WT > 0.5; 1 (NCR/NET) where also TC > 0.5; 3 (enhancing) "
                      "where also ET > 0.5; else 0 (the regions are nested by construction)",
        }
    else:
        output = {
            "kind": "classes", "channels": [INTERNAL_LABELS[i] for i in sorted(INTERNAL_LABELS)],
            "activation": "softmax over the channel axis",
            "decode": "internal label = argmax over the channel axis (0 background, 1 NCR/NET, 2 edema, 3 enhancing)",
        }
    to_source = {name: {str(i): s for s, i in mapping.items()} for name, mapping in _TO_INTERNAL.items()}
    return {
        "format": CONTRACT_FORMAT,
        "format_version": CONTRACT_VERSION,
        "agsevnet_version": __version__,
        "model_file": Path(model_file).name,
        "export_format": fmt,
        **({"onnx_opset": ONNX_OPSET} if fmt == "onnx" else {}),
        "source": source,
        "architecture": dict(ckpt["model"]),
        "step": ckpt.get("step"),
        "input": {
            "name": INPUT_NAME, "dtype": "float32", "layout": "N, C, X, Y, Z (X, Y, Z: the NIfTI voxel axes)",
            "channels": list(ckpt["channels"]), "divisor": divisor,
            "spatial_sizes": f"dynamic: X, Y and Z each a positive multiple of {divisor}; pad the crop "
                             "symmetrically with each channel's background value (what agsevnet does for a "
                             "whole pass) or slide a window",
            "batch": "dynamic",
        },
        "preprocessing": {
            "normalization": normalization, "margin": margin, "spacing": spacing,
            "steps": [
                "brain mask = voxels where any of the four modalities is non-zero",
                f"crop to the mask's bounding box plus {margin} voxels, clipped to the volume",
                ("z-score each modality over the brain voxels, background set to 0 afterwards"
                 if normalization == "brain" else
                 "clip each modality to the 0.5th-99.5th percentiles of its brain voxels, then z-score it over "
                 "the brain voxels, background set to 0 afterwards"
                 if normalization == "brain-clip" else
                 "z-score each modality over the whole (uncropped) image, background keeps its z-score"),
                (f"resample the crop to {spacing} mm voxels (area averaging, round(size * voxel mm / spacing) "
                 "per axis); resample the network's probabilities back to the crop trilinearly "
                 "(align_corners=False) before decoding labels" if spacing else
                 "no resampling: the network runs on the input grid"),
                f"stack the channels in the order {', '.join(ckpt['channels'])}",
            ],
        },
        "output": {"name": OUTPUT_NAME, **output, "dtype": "float32", "layout": "N, K, X, Y, Z (logits)"},
        "labels": {
            "internal": {str(k): v for k, v in INTERNAL_LABELS.items()},
            "to_convention": to_source,
            "outside_crop": 0,
        },
        "inference": {**settings, "patch_size": ckpt.get("patch_size"),
                      "note": "the settings agsevnet predict uses with this checkpoint (strategy, overlap, TTA, "
                              "postprocessing: keep components of at least min_component_fraction of the largest, "
                              "enhancing tumour relabelled as NCR/NET below et_threshold voxels)"},
        "check": dict(check or {}),
    }


# -------------------------------------------------------------------------------------------------------- check


def check_inputs(divisor: int, in_channels: int = 4, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Inputs of the export check: a standard-normal image and a brain-normalised phantom, each at the two sizes
    of :func:`check_shapes`."""
    from agsevnet.synth.phantom import make_phantom
    from agsevnet.preprocess import normalize

    rng = np.random.default_rng(seed)
    out = []
    for shape in check_shapes(divisor):
        out.append((f"random {'x'.join(map(str, shape))}",
                    rng.standard_normal((1, in_channels, *shape)).astype(np.float32)))
        images, _ = make_phantom(seed, shape)
        normed, _ = normalize(images)
        out.append((f"phantom {'x'.join(map(str, shape))}", normed[None, :in_channels].astype(np.float32)))
    return out


def load_exported(path: str | Path, fmt: str):
    """A callable ``numpy (N, C, X, Y, Z) -> numpy logits`` running the exported file, or None for ONNX when
    onnxruntime is not installed."""
    import torch

    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu").eval()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(x)).numpy()

        return run
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x})[0]


def check_export(model: nn.Module, path: str | Path, fmt: str, divisor: int) -> dict[str, Any]:
    """Largest absolute logit difference between the exported file and eager PyTorch on :func:`check_inputs`;
    ``{"tolerance", "max_abs_diff": {input: diff}, "worst", "runtime", "passed"}`` (``skipped`` with the reason
    when no runtime can load the file)."""
    import torch

    run = load_exported(path, fmt)
    if run is None:
        return {"skipped": "onnxruntime is not installed (pip install 'agsevnet[onnx]'): the ONNX file was "
                           "checked by onnx.checker only", "tolerance": TOLERANCE}
    diffs = {}
    for name, x in check_inputs(divisor, int(getattr(model, "in_channels", len(MODALITIES)))):
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = run(x)
        if got.shape != ref.shape:
            raise DataError(f"exported model returned shape {got.shape} for {name}, eager PyTorch {ref.shape}", path)
        diffs[name] = float(np.abs(got.astype(np.float64) - ref).max())
    worst = max(diffs.values())
    return {"tolerance": TOLERANCE, "max_abs_diff": diffs, "worst": worst,
            "runtime": "onnxruntime" if fmt == "onnx" else "torch.jit.load", "passed": bool(worst <= TOLERANCE)}


# ------------------------------------------------------------------------------------------------------ command


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured."""

    path: Path
    contract_path: Path
    contract: dict[str, Any] = field(default_factory=dict)

    @property
    def check(self) -> dict[str, Any]:
        return self.contract.get("check", {})


def export_model(checkpoint: str | Path | Mapping[str, Any], fmt: str, out: str | Path, *, overwrite: bool = False,
                 check: bool = True) -> ExportResult:
    """Export ``checkpoint`` (path, bundled name or dict) to ``out`` in ``fmt`` with ``out.json`` beside it.

    Raises :class:`ConfigError` for an unknown format or an existing ``out`` without ``overwrite``, and
    :class:`DataError` (naming ``out``) when the check exceeds :data:`TOLERANCE` (the files are then removed).
    """
    from agsevnet.models import required_divisor

    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    side = contract_path(out)
    if not overwrite and (out.exists() or side.exists()):
        existing = out if out.exists() else side
        raise ConfigError("output exists (use --overwrite to replace it)", existing)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    ckpt, model, source = load_source(checkpoint)
    divisor = int(required_divisor(dict(ckpt["model"])))
    preliminary = json.dumps(contract(ckpt, fmt, out, source))
    if fmt == "onnx":
        write_onnx(model, out, divisor, preliminary)
        import onnx

        onnx.checker.check_model(str(out))
    else:
        write_torchscript(model, out, preliminary)
    measured = check_export(model, out, fmt, divisor) if check else {"skipped": "--no-check"}
    if measured.get("passed") is False:
        out.unlink(missing_ok=True)
        raise DataError(f"exported model differs from PyTorch by {measured['worst']:.2e} (> {TOLERANCE:g}) on "
                        f"{max(measured['max_abs_diff'], key=measured['max_abs_diff'].get)}; not written", out)
    final = contract(ckpt, fmt, out, source, measured)
    write_json_atomic(side, final)
    return ExportResult(out, side, final)


def describe(result: ExportResult) -> str:
    """A short human-readable account of an export."""
    c = result.contract
    lines = [f"wrote {result.path} ({c['export_format']}, {result.path.stat().st_size / 1e6:.1f} MB) and "
             f"{result.contract_path}",
             f"  input {c['input']['name']} (N, {len(c['input']['channels'])}, X, Y, Z) float32, X, Y, Z multiples "
             f"of {c['input']['divisor']}; output {c['output']['kind']} ({c['output']['activation']})"]
    chk = c.get("check", {})
    if "skipped" in chk:
        lines.append(f"  check skipped: {chk['skipped']}")
    else:
        worst = max(chk["max_abs_diff"].items(), key=lambda kv: kv[1])
        lines.append(f"  check ({chk['runtime']} vs eager PyTorch, {len(chk['max_abs_diff'])} inputs): max abs logit "
                     f"difference {chk['worst']:.1e} (on {worst[0]}; tolerance {chk['tolerance']:g})")
    return "\n".join(lines)
