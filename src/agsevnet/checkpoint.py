"""The checkpoint format shared by training and prediction.

A checkpoint is a plain ``dict`` saved with :func:`torch.save` that holds only Python scalars, strings,
``None``, lists/tuples/dicts of them and tensors, so that ``torch.load(path, weights_only=True)`` loads it
without executing pickled code::

    {"format": "agsevnet-checkpoint", "format_version": 1, "agsevnet_version": str,
     "model": {"name": ..., **kwargs},            # agsevnet.models.build_model(ckpt["model"])
     "state_dict": {...},                           # plain module keys (no "module." / "_orig_mod.")
     "channels": ["flair", "t1", "t1ce", "t2"],     # input channel order the model was trained with
     "preprocess": {"normalization": "brain", "margin": int, "dtype": str},  # preprocess_case(**...)
     "patch_size": [x, y, z], "num_classes": 4,     # outputs are internal labels 0..3
     "config": {...}, "step": int, "metrics": {...},
     "members": [state_dict, ...],                  # optional: an ensemble of this architecture (bundled models);
                                                    # "state_dict" is then the first member
     # training state (in last.pt; may be absent from exported weights):
     "optimizer": ..., "scheduler": ..., "scaler": ..., "rng": {...}}

Random-number-generator state is stored in a ``weights_only``-loadable form by :func:`rng_state` and
restored by :func:`set_rng_state` (torch's generators as uint8 tensors, NumPy ``bit_generator.state`` dicts and
Python's ``random.getstate()`` as lists).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agsevnet import MODALITIES, __version__
from agsevnet.errors import DataError
from agsevnet.fsutil import atomic_path

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

FORMAT = "agsevnet-checkpoint"
FORMAT_VERSION = 1
_PREFIXES = ("module.", "_orig_mod.")  # added by DistributedDataParallel / DataParallel and torch.compile
_REQUIRED = ("model", "state_dict", "channels", "preprocess", "num_classes")


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Keys without the ``module.`` / ``_orig_mod.`` prefixes that DDP and ``torch.compile`` add (at any depth
    of nesting, e.g. ``module._orig_mod.conv.weight`` -> ``conv.weight``)."""
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    from torch import nn

    while True:
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def to_plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with NumPy scalars/arrays and paths turned into Python values/tensors and tuples into lists,
    so that ``torch.load(weights_only=True)`` can load it.

    Raises TypeError naming the entry (``where``) for anything else (at save time rather than at load time).
    """
    import numpy as np
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {to_plain(k, where): to_plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    raise TypeError(f"{where}: {type(obj).__name__} cannot be stored in a weights_only checkpoint")


def make_checkpoint(
    model: nn.Module,
    model_cfg: Mapping[str, Any],
    config: Mapping[str, Any],
    step: int,
    *,
    preprocess: Mapping[str, Any] | None = None,
    patch_size: list[int] | tuple[int, ...] | None = None,
    channels: list[str] | tuple[str, ...] = MODALITIES,
    num_classes: int = 4,
    metrics: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A checkpoint dict (see the module docstring) for ``model`` built from ``model_cfg``.

    ``preprocess`` defaults to ``config["preprocess"]`` and ``patch_size`` to ``config["patch_size"]`` (or
    ``config["data"][...]``) when not given. ``extra`` holds the training state (``optimizer=opt.state_dict()``,
    ``scheduler=...``, ``scaler=...``, ``rng=rng_state()``) or anything else plain. Weights are copied to the CPU
    and keys lose their ``module.`` / ``_orig_mod.`` prefixes.
    """
    if "name" not in model_cfg:
        raise ValueError("model_cfg needs a 'name' (the build_model architecture)")
    data_cfg = config.get("data", {}) if isinstance(config.get("data"), Mapping) else {}
    if preprocess is None:
        preprocess = config.get("preprocess", data_cfg.get("preprocess", {"normalization": "brain"}))
    if patch_size is None:
        patch_size = config.get("patch_size", data_cfg.get("patch_size"))
    state = strip_prefixes(_unwrap(model).state_dict())
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "agsevnet_version": __version__,
        "model": to_plain(dict(model_cfg), "model"),
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in state.items()},
        "channels": list(channels),
        "preprocess": to_plain(dict(preprocess), "preprocess"),
        "patch_size": None if patch_size is None else [int(s) for s in patch_size],
        "num_classes": int(num_classes),
        "config": to_plain(dict(config), "config"),
        "step": int(step),
        "metrics": to_plain(dict(metrics or {}), "metrics"),
    }
    for key, value in extra.items():
        ckpt[key] = to_plain(value, key)
    return ckpt


def save_checkpoint(path: str | Path, ckpt: Mapping[str, Any]) -> Path:
    """Write ``ckpt`` atomically to ``path`` (a temporary file renamed into place); returns the path."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(ckpt), tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint with ``torch.load(weights_only=True)``.

    Raises :class:`DataError` naming ``path`` when the file is missing, unreadable, not an agsevnet checkpoint,
    written by a newer format version, or lacks an entry prediction needs.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError("checkpoint not found" if not path.exists() else "checkpoint is not a file", path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
            AttributeError, ImportError, IndexError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"not a readable PyTorch checkpoint (corrupt, truncated or unsafe to load: {first})",
                        path) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DataError(f"not an agsevnet checkpoint (no 'format': '{FORMAT}' entry); train one with "
                        "'agsevnet train' or export it with agsevnet.checkpoint.make_checkpoint", path)
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(f"checkpoint format version {version!r} is not supported by agsevnet {__version__} "
                        f"(reads up to {FORMAT_VERSION}); upgrade agsevnet", path)
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise DataError(f"checkpoint lacks {', '.join(missing)}", path)
    if not isinstance(ckpt["model"], dict) or "name" not in ckpt["model"]:
        raise DataError("checkpoint 'model' entry has no architecture 'name'", path)
    unknown = [c for c in ckpt["channels"] if c not in MODALITIES]
    if unknown:
        raise DataError(f"checkpoint uses unknown input channels {unknown} (known: {list(MODALITIES)})", path)
    if not isinstance(ckpt["preprocess"], dict):
        raise DataError("checkpoint 'preprocess' entry is not a mapping", path)
    return ckpt


def model_from_checkpoint(ckpt: Mapping[str, Any], path: str | Path | None = None) -> nn.Module:
    """The network of ``ckpt`` with its weights loaded, in eval mode, on the CPU.

    ``path`` only names the file in the :class:`DataError` raised when the weights do not fit the architecture.
    ``ckpt["members"]`` (several weight sets of the one architecture) gives an
    :class:`~agsevnet.models.ensemble.Ensemble` of them that averages their probabilities.
    """
    from agsevnet.models import build_model

    states = list(ckpt.get("members") or [ckpt["state_dict"]])
    models = []
    for state in states:
        model = build_model(dict(ckpt["model"]))
        try:
            model.load_state_dict(strip_prefixes(state), strict=True)
        except RuntimeError as exc:
            raise DataError(f"weights do not fit architecture {ckpt['model'].get('name')!r}: "
                            f"{str(exc).splitlines()[0]}", path) from exc
        models.append(model.eval())
    if len(models) == 1:
        return models[0]
    from agsevnet.models.ensemble import Ensemble

    return Ensemble(models, "sigmoid" if ckpt.get("output") == "regions" else "softmax").eval()


def rng_state(generators: Mapping[str, np.random.Generator] | None = None) -> dict[str, Any]:
    """The state of torch's (CPU and CUDA), NumPy's global, Python's and the given NumPy generators, in a form
    ``torch.load(weights_only=True)`` loads (tensors, ints, lists, dicts)."""
    import numpy as np
    import torch

    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_global": to_plain(np_state, "rng.numpy_global"),
        "python": to_plain(random.getstate(), "rng.python"),
        "generators": {name: to_plain(g.bit_generator.state, f"rng.{name}") for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Mapping[str, Any], generators: Mapping[str, np.random.Generator] | None = None) -> None:
    """Restore what :func:`rng_state` captured (into the given NumPy generators too, matched by name)."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(_numpy_state(state["numpy_global"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, gen in (generators or {}).items():
        gen.bit_generator.state = _numpy_state(state["generators"][name])


def _numpy_state(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A NumPy bit-generator state dict from its stored form (tensors back to arrays)."""
    import numpy as np
    import torch

    def back(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.numpy()
        if isinstance(v, dict):
            return {k: back(x) for k, x in v.items()}
        return v

    return back(dict(saved))
