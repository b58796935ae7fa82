"""Inference runtimes other than PyTorch, behind the same call as the network: ``agsevnet predict --backend``.

A backend is an :class:`torch.nn.Module` whose ``forward`` runs the network in another runtime on the tensor the
inference engine gives it and returns the logits as a tensor, so :func:`agsevnet.infer.engine.
predict_probabilities` (sliding window, whole pass, TTA) and everything around it are unchanged:

- ``torch``: the PyTorch network itself (the default);
- ``onnxruntime``: an ``onnxruntime.InferenceSession`` (CPU execution provider) on the network exported to ONNX
  (:func:`agsevnet.infer.export.write_onnx`); ``pip install 'agsevnet[onnx]'``;
- ``openvino``: the same ONNX file compiled by OpenVINO for the CPU (f32, or bf16 where the predictor's precision
  is bf16); ``pip install 'agsevnet[openvino]'``.

The ONNX export takes a minute or more for a full-size network, so it is done once per network and kept in a
cache folder (``$AGSEVNET_CACHE``, else ``$XDG_CACHE_HOME/agsevnet``, else ``~/.cache/agsevnet``) under
``exported/<hash>.onnx``, the hash taken over the architecture, the weights and the agsevnet and torch versions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agsevnet import __version__
from agsevnet.errors import ConfigError

if TYPE_CHECKING:
    import torch

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
_INSTALL = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}


def require(backend: str) -> Any:
    """The runtime module of ``backend``; :class:`ConfigError` with the install command when it is missing."""
    import importlib

    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    module, extra = _INSTALL[backend]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"--backend {backend} needs the {module} package, which is not installed: "
                          f"pip install 'agsevnet[{extra}]'") from exc


def cache_dir() -> Path:
    """Where exported networks are kept (see the module docstring)."""
    if os.environ.get("AGSEVNET_CACHE"):
        return Path(os.environ["AGSEVNET_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "agsevnet"


def network_hash(model: torch.nn.Module) -> str:
    """A content hash of ``model``'s architecture (its ``repr``), weights and buffers, and the agsevnet and torch
    versions: the name of its exported file in the cache."""
    import torch

    h = hashlib.sha1()
    h.update(json.dumps([__version__, torch.__version__, repr(model)]).encode())
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def exported_onnx(model: torch.nn.Module, divisor: int, folder: str | Path | None = None) -> Path:
    """The network as an ONNX file in the cache, exported on first use."""
    from agsevnet.infer.export import write_onnx

    path = Path(folder or cache_dir() / "exported") / f"{network_hash(model)}.onnx"
    if not path.is_file():
        import sys

        print(f"exporting the network to ONNX once (cached in {path.parent})...", file=sys.stderr, flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_onnx(model, path, divisor)
    return path


@functools.cache
def _module_base():
    from torch import nn

    class RuntimeModel(nn.Module):
        """A network run by another runtime, callable like the PyTorch one.

        ``to()``, ``eval()`` and ``train()`` change nothing (the runtime decides its own device and the graph is in
        inference mode). It carries the attributes the inference engine reads from a network: ``required_divisor``
        and, for the whole-pass memory estimate (:func:`agsevnet.infer.engine.first_layer_width`), a weightless
        ``width_probe`` convolution on the meta device with the network's first-layer width."""

        def __init__(self, model: nn.Module, divisor: int, name: str) -> None:
            super().__init__()
            from agsevnet.infer.engine import first_layer_width

            self.required_divisor = int(divisor)
            self.in_channels = int(getattr(model, "in_channels", 4))
            self.width_probe = nn.Conv3d(1, first_layer_width(model), 1, bias=False, device="meta")
            self.backend = name

        def to(self, *args: Any, **kwargs: Any) -> RuntimeModel:  # noqa: D102 - see the class docstring
            return self

        def train(self, mode: bool = True) -> RuntimeModel:  # noqa: D102
            return self

        def eval(self) -> RuntimeModel:  # noqa: D102
            return self

        def run(self, x):  # numpy in, numpy out
            raise NotImplementedError

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            import numpy as np
            import torch

            array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
            return torch.from_numpy(np.asarray(self.run(array), dtype=np.float32))

    return RuntimeModel


def onnxruntime_model(model: torch.nn.Module, divisor: int, *, onnx_path: str | Path | None = None,
                      threads: int | None = None) -> torch.nn.Module:
    """``model`` run by onnxruntime (CPU execution provider, all graph optimisations, ``threads`` intra-op threads,
    default torch's thread count)."""
    import torch

    ort = require("onnxruntime")
    path = Path(onnx_path) if onnx_path else exported_onnx(model, divisor)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    class OnnxRuntimeModel(_module_base()):
        def run(self, x):
            return session.run(None, {name: x})[0]

    wrapped = OnnxRuntimeModel(model, divisor, "onnxruntime")
    wrapped.session = session
    return wrapped


def openvino_model(model: torch.nn.Module, divisor: int, *, onnx_path: str | Path | None = None,
                   precision: str = "fp32", threads: int | None = None) -> torch.nn.Module:
    """``model`` compiled by OpenVINO for the CPU from its ONNX export (dynamic shapes; inference precision f32,
    or bf16 when ``precision`` is ``"bf16"``; latency hint, ``threads`` inference threads)."""
    import torch

    ov = require("openvino")
    path = Path(onnx_path) if onnx_path else exported_onnx(model, divisor)
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads())}
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()

    class OpenVinoModel(_module_base()):
        def run(self, x):
            return request.infer({0: x})[compiled.output(0)]

    wrapped = OpenVinoModel(model, divisor, "openvino")
    wrapped.compiled = compiled
    return wrapped


def backend_model(backend: str, model: torch.nn.Module, divisor: int, *, precision: str = "fp32",
                  onnx_path: str | Path | None = None) -> torch.nn.Module:
    """``model`` itself for ``torch``, else a :func:`onnxruntime_model` / :func:`openvino_model` wrapper."""
    if backend == "torch":
        return model
    require(backend)
    if backend == "onnxruntime":
        return onnxruntime_model(model, divisor, onnx_path=onnx_path)
    return openvino_model(model, divisor, onnx_path=onnx_path, precision=precision)
