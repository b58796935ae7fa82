"""Models shipped inside the package: ``agsevnet predict`` and :func:`agsevnet.infer.predictor.segment` use one
when no checkpoint is given, and ``agsevnet models`` lists them.

A bundled model is an ordinary agsevnet checkpoint (:mod:`agsevnet.checkpoint`, loaded with
``weights_only=True``) in ``agsevnet/weights/<name>.pt``, without the training state, with its weights in
half precision where that changes no prediction (:func:`bundle_checkpoint` checks it), and with a ``"card"``
entry: what it was trained on, the recipe, the training time and machine, and its cross-validated figures
(``MODEL_CARD.md`` says the same in prose). Nothing is downloaded, ever.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from agsevnet.errors import ConfigError

DEFAULT_MODEL = "brats-robust"
"""The bundled model used when none is named."""


def weights_dir() -> Path:
    """The folder holding the bundled ``.pt`` files."""
    return Path(str(resources.files("agsevnet.weights")))


def bundled_names() -> list[str]:
    """Names of the bundled models (their file stems), sorted."""
    return sorted(p.stem for p in weights_dir().glob("*.pt"))


def bundled_path(name: str) -> Path:
    """The file of bundled model ``name``; :class:`ConfigError` listing the bundled names when there is none."""
    path = weights_dir() / f"{name}.pt"
    if not path.is_file():
        names = ", ".join(bundled_names()) or "none (this installation ships no weights)"
        raise ConfigError(f"no bundled model named {name!r}; bundled: {names}")
    return path


def resolve_model(model: str | Path | None) -> Path:
    """The checkpoint file for ``--model``: None -> the default bundled model; a bundled model's name -> its file;
    otherwise a path to a checkpoint, which must exist."""
    if model is None:
        return bundled_path(DEFAULT_MODEL)
    text = str(model)
    if text in bundled_names():
        return bundled_path(text)
    path = Path(model)
    if path.exists():
        return path
    if "/" not in text and not text.endswith(".pt"):
        names = ", ".join(bundled_names()) or "none"
        raise ConfigError(f"--model {text!r} is neither a bundled model ({names}) nor an existing checkpoint file")
    from agsevnet.errors import DataError

    raise DataError("checkpoint not found", path)


def model_card(name: str) -> dict[str, Any]:
    """The ``"card"`` entry of bundled model ``name`` (plus its file and size)."""
    from agsevnet.checkpoint import load_checkpoint

    path = bundled_path(name)
    ckpt = load_checkpoint(path)
    card = dict(ckpt.get("card") or {})
    card.update({"name": name, "file": str(path), "bytes": path.stat().st_size,
                 "members": len(ckpt.get("members") or [ckpt["state_dict"]]),
                 "parameters": int(sum(v.numel() for state in (ckpt.get("members") or [ckpt["state_dict"]])
                                       for v in state.values() if hasattr(v, "numel")))})
    return card


def bundle_checkpoint(ckpt: Mapping[str, Any], card: Mapping[str, Any], *, half: bool = True) -> dict[str, Any]:
    """A checkpoint fit to ship: the training state dropped, the ``card`` added, floating-point weights stored as
    float16 when ``half`` (they are cast back to float32 when loaded into the model; loading an fp16 tensor into
    an fp32 parameter is exact up to fp16 rounding, which the caller checks on real cases)."""
    import torch

    from agsevnet.checkpoint import to_plain

    keep = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scheduler", "scaler", "rng", "best", "elapsed_s")}

    def shrink(state_dict: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in state_dict.items():
            if half and isinstance(value, torch.Tensor) and value.is_floating_point():
                value = value.to(torch.float16)
            out[key] = value
        return out

    if ckpt.get("members"):  # an ensemble: "state_dict" is the first member (the same tensors, stored once)
        keep["members"] = [shrink(m) for m in ckpt["members"]]
        keep["state_dict"] = keep["members"][0]
    else:
        keep["state_dict"] = shrink(ckpt["state_dict"])
    keep["card"] = to_plain(dict(card), "card")
    return keep
