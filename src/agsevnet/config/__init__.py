"""Training configurations: the presets shipped as YAML in this package, user YAML files, and ``--set`` overrides.

Presets (``agsevnet/config/<name>.yaml``): ``paper`` (the paper's setup, section 4.2), ``default`` (what we
recommend on a GPU) and ``cpu-small`` (a narrow network that trains usefully on a 2-core CPU in minutes).

A user YAML file names the preset it starts from with ``preset: <name>`` (``default`` when absent) and lists only
what it changes; the fully resolved config a run writes to ``RUN/config.yaml`` is such a file too, so
``load_config("RUN/config.yaml")`` gives back exactly the config of that run.

Keys are checked against the preset: an unknown key is an error naming it (a typo never passes silently), and a
value of the wrong kind (text where a number is expected) is an error naming the key. The ``model`` and ``loss``
sections are the exceptions: they are passed as they are to :func:`agsevnet.models.build_model` and
:func:`agsevnet.models.losses.build_loss`, whose keys depend on the chosen network or loss, and those functions
validate them; a section that names another network or loss than the preset's replaces the preset's section
instead of being merged into it.

Overrides are ``dotted.key=value`` strings (``train.steps=500``, ``data.patch_size=[96,96,64]``,
``optim.lr=3e-4``); the value is parsed as YAML.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from agsevnet.errors import ConfigError

PRESETS: tuple[str, ...] = ("paper", "default", "cpu-small", "brats-cpu", "brats-robust")
"""The configurations shipped with the package."""

OPEN_SECTIONS: tuple[str, ...] = ("model", "loss")
"""Sections whose keys are validated by the component they configure, not against the preset."""

_CHOICES: dict[str, tuple[Any, ...]] = {
    "preprocess.normalization": ("brain", "image", "brain-clip"),
    "preprocess.dtype": ("float16", "float32"),
    "optim.name": ("adam", "adamw", "sgd"),
    "optim.schedule": ("constant", "step", "poly", "cosine"),
    "train.amp": ("auto", "none", "bf16", "fp16"),
    "inference.strategy": ("auto", "sliding", "whole"),
    "inference.component_rule": ("size", "mass", "core"),
}


_ALSO_ALLOWED: dict[str, tuple[Any, ...]] = {"validation.fold": ("all",)}
"""Values accepted for a key besides those of the preset value's kind."""


def preset_path(name: str) -> Path:
    """The YAML file of a shipped preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)} or a path to a YAML file")
    return Path(str(resources.files("agsevnet.config").joinpath(f"{name}.yaml")))


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but reading ``1e-4`` (no dot) as the number a user means, not as text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", path) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("a config file must hold a mapping of keys to values", path)
    return data


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _compatible(old: Any, new: Any) -> bool:
    """Whether ``new`` may replace ``old``: same kind, an integer where a number is expected, or either null."""
    if old is None or new is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float))
    if isinstance(old, int):
        return isinstance(new, int)
    return type(old) is type(new)


def _merge(base: dict[str, Any], update: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Merge ``update`` into ``base`` in place, refusing unknown keys and values of the wrong kind."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        open_section = prefix.split(".")[0] in OPEN_SECTIONS if prefix else False
        if key not in base:
            if open_section:
                base[key] = copy.deepcopy(value)
                continue
            raise ConfigError(f"unknown config key {dotted!r}" + _suggest(key, base, prefix), source)
        old = base[key]
        if (not prefix and key in OPEN_SECTIONS and isinstance(old, dict) and isinstance(value, Mapping)
                and "name" in value and value["name"] != old.get("name")):
            # Another network or loss: the preset's options were for the one it replaces.
            base[key] = copy.deepcopy(dict(value))
            continue
        if isinstance(old, dict) and isinstance(value, Mapping):
            _merge(old, value, source, f"{dotted}.")
        elif open_section or _compatible(old, value) or value in _ALSO_ALLOWED.get(dotted, ()):
            base[key] = copy.deepcopy(value)
        else:
            raise ConfigError(f"{dotted} must be {_kind(old)}, got {value!r}", source)


def _suggest(key: str, section: Mapping[str, Any], prefix: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(section), n=1)
    known = ", ".join(f"{prefix}{k}" for k in section)
    return f" (did you mean {prefix}{close[0]}?)" if close else f" (known keys here: {known})"


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", 0.0003)``; the value is parsed as YAML (``null``, lists, numbers)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"an override must look like key=value (for example train.steps=500), got {text!r}")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: value {raw!r} is not valid YAML: {exc}") from None
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return out


def load_config(name_or_path: str | Path = "default", overrides: Iterable[str] | Mapping[str, Any] | None = None) -> dict:
    """The fully resolved config: a preset name or a YAML file (itself based on a preset), then ``overrides``.

    ``overrides`` is a list of ``"dotted.key=value"`` strings or a mapping of dotted keys to values. Raises
    :class:`ConfigError` naming the file or key for unknown presets, unreadable files, unknown keys and values
    of the wrong kind or outside the allowed choices.
    """
    text = str(name_or_path)
    if text in PRESETS:
        cfg = _read_yaml(preset_path(text))
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"no such preset or config file (presets: {', '.join(PRESETS)})", path)
        user = _read_yaml(path)
        base_name = user.get("preset", "default")
        if base_name not in PRESETS:
            raise ConfigError(f"preset: unknown preset {base_name!r}; expected one of {', '.join(PRESETS)}", path)
        cfg = _read_yaml(preset_path(base_name))
        _merge(cfg, user, str(path))

    if overrides:
        items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
        for key, value in items:
            _merge(cfg, _nest(key, value), "--set")
    validate_config(cfg)
    return cfg


def get(cfg: Mapping[str, Any], dotted: str) -> Any:
    """``get(cfg, "train.steps")``."""
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Check values a typo or a bad override could break (choices, ranges, shapes); raise ConfigError naming the key."""
    for key, choices in _CHOICES.items():
        if get(cfg, key) not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {get(cfg, key)!r}")
    patch = get(cfg, "data.patch_size")
    if not (isinstance(patch, list) and len(patch) == 3 and all(isinstance(p, int) and p > 0 for p in patch)):
        raise ConfigError(f"data.patch_size must be three positive integers, got {patch!r}")
    positive = ("data.batch_size", "train.steps", "train.log_every", "train.checkpoint_every")
    for key in positive:
        value = get(cfg, key)
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    workers = get(cfg, "data.workers")
    if workers is not None and not (isinstance(workers, int) and workers >= 0):
        raise ConfigError(f"data.workers must be null (automatic) or an integer >= 0, got {workers!r}")
    share = get(cfg, "data.foreground_share")
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"data.foreground_share must be between 0 and 1, got {share!r}")
    if get(cfg, "optim.lr") <= 0:
        raise ConfigError(f"optim.lr must be positive, got {get(cfg, 'optim.lr')!r}")
    fold = get(cfg, "validation.fold")
    folds = get(cfg, "validation.folds")
    if not (isinstance(folds, int) and folds >= 2):
        raise ConfigError(f"validation.folds must be an integer >= 2, got {folds!r}")
    if not (fold == "all" or (isinstance(fold, int) and 0 <= fold < folds)):
        raise ConfigError(f"validation.fold must be 'all' or an integer in 0..{folds - 1}, got {fold!r}")
    if get(cfg, "validation.every") < 0:
        raise ConfigError("validation.every must be >= 0 (0: validate only at the end)")
    spacing = get(cfg, "preprocess.spacing")
    if spacing is not None and not (isinstance(spacing, list) and len(spacing) == 3
                                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in spacing)):
        raise ConfigError(f"preprocess.spacing must be null or three positive numbers (mm), got {spacing!r}")
    if not 0.0 <= get(cfg, "inference.overlap") < 1.0:
        raise ConfigError(f"inference.overlap must be in [0, 1), got {get(cfg, 'inference.overlap')!r}")
    if not 0.0 <= get(cfg, "inference.min_component_fraction") <= 1.0:
        raise ConfigError("inference.min_component_fraction must be between 0 and 1, got "
                          f"{get(cfg, 'inference.min_component_fraction')!r}")
    if not isinstance(cfg.get("model"), dict) or "name" not in cfg["model"]:
        raise ConfigError("model must be a mapping with a 'name'")
    if not isinstance(cfg.get("loss"), dict) or "name" not in cfg["loss"]:
        raise ConfigError("loss must be a mapping with a 'name'")


def dump_config(cfg: Mapping[str, Any]) -> str:
    """YAML text of a resolved config (what ``RUN/config.yaml`` holds; :func:`load_config` reads it back)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)


def diff_configs(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs."""
    out: list[str] = []
    for key in sorted(set(a) | set(b), key=str):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += diff_configs(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out
