"""Finding the cases in a dataset folder, whatever its layout (nothing is read but file names and
``dataset.json``).

Layouts, detected automatically by :func:`discover`:

- ``brats2020`` BraTS 2018-2021: ``<case>/<case>_flair|_t1|_t1ce|_t2[_seg].nii[.gz]`` (any capitalisation,
  e.g. ``Brats18_...``); labels 1/2/4.
- ``brats2023`` BraTS 2023+: ``<case>/<case>-t2f|-t1n|-t1c|-t2w[-seg].nii[.gz]``; labels 1/2/3.
- ``msd`` Medical Segmentation Decathlon Task01: ``imagesTr/BRATS_001.nii.gz`` (4D, channels FLAIR, T1,
  T1gd, T2), ``labelsTr/BRATS_001.nii.gz`` (1 edema, 2 non-enhancing, 3 enhancing), ``imagesTs/``.
- ``nnunet`` nnU-Net raw: ``imagesTr/<case>_0000..0003.nii.gz``, ``labelsTr/<case>.nii.gz``, ``imagesTs/``.

For MSD and nnU-Net the channel order and the label convention come from ``dataset.json`` (nnU-Net v2
``channel_names``/``labels``, v1 and MSD ``modality``/``labels``); without one, the MSD order and labels are
assumed and that assumption is recorded as a note. BraTS files may also lie flat in one folder (grouped by
their case prefix) or be named without a prefix (``<case>/flair.nii.gz``, case id = folder name).
:func:`case_from_files` makes a case from explicit file paths (scheme ``files``): the case id is the files' case
prefix or, for names that are only a modality (``Flair.nii.gz``), their folder's name; the label convention is
that of the BraTS release whose modality names the files carry, and must be given where the names do not tell.

What discovery can already tell is wrong (a missing or duplicated modality, a label without images, an
unreadable ``dataset.json``, a case id used twice) goes into ``CaseSpec.problems``, each message naming the
file or folder; reading the files (:mod:`agsevnet.data.checks`) finds the rest. A subfolder whose NIfTI files
are all named unlike any modality becomes a case of scheme ``unknown`` carrying that problem, so that
``agsevnet check`` shows it instead of skipping it silently. What is merely worth knowing (an assumed channel
order, an ignored file) goes into ``CaseSpec.notes``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agsevnet import MODALITIES
from agsevnet.data import labels as labelmod
from agsevnet.data.case import CaseSpec, ImageSource
from agsevnet.data.nifti import is_nifti_name, strip_nifti_suffix
from agsevnet.errors import ConfigError, DataError

LAYOUT_HINT = (
    "expected one of these layouts: "
    "BraTS 2018-2021 <case>/<case>_flair.nii.gz, _t1, _t1ce, _t2 [, _seg]; "
    "BraTS 2023+ <case>/<case>-t2f.nii.gz, -t1n, -t1c, -t2w [, -seg]; "
    "MSD Task01 imagesTr/BRATS_001.nii.gz (4D) with labelsTr/; "
    "nnU-Net raw imagesTr/<case>_0000.nii.gz .. _0003 with labelsTr/<case>.nii.gz "
    "(pass the folder that holds the case folders, or one case folder)"
)

# BraTS file-name tokens -> modality. 2018-2021 and 2023+ tokens; "seg" is the label.
_BRATS2020_TOKENS = {"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}
_BRATS2023_TOKENS = {"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2"}
_BRATS_FILE = re.compile(
    r"^(?:(?P<prefix>.+?)(?P<sep>[_-]))?(?P<token>flair|t1ce|t1|t2|t2f|t1n|t1c|t2w|seg)\.nii(?:\.gz)?$",
    re.IGNORECASE,
)
_NNUNET_IMAGE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(?:\.gz)?$", re.IGNORECASE)

# dataset.json modality names (lower case, letters and digits only) -> internal modality.
_MODALITY_NAMES: dict[str, str] = {
    **dict.fromkeys(("flair", "t2flair", "t2f", "t2wflair", "fluidattenuatedinversionrecovery"), "flair"),
    **dict.fromkeys(("t1", "t1w", "t1n", "t1native", "t1pre", "nativet1", "t1weighted"), "t1"),
    **dict.fromkeys(("t1ce", "t1gd", "t1c", "t1wce", "t1post", "t1gad", "t1contrast", "t1cegd",
                     "t1contrastenhanced", "t1wgd", "t1postcontrast"), "t1ce"),
    **dict.fromkeys(("t2", "t2w", "t2weighted"), "t2"),
}

# What every MSD file and an nnU-Net dataset without dataset.json is assumed to hold.
_MSD_CHANNELS: dict[int, str] = {0: "flair", 1: "t1", 2: "t1ce", 3: "t2"}
_MSD_ASSUMPTION = ("assuming the MSD channel order (FLAIR, T1, T1gd, T2) and MSD labels "
                   "(1 edema, 2 non-enhancing, 3 enhancing)")


@dataclass
class _DatasetInfo:
    """What ``dataset.json`` says (or what is assumed without one)."""

    channels: dict[int, str]  # channel index -> modality (channels with an unknown name left out)
    convention: str
    n_channels: int = len(MODALITIES)  # channels declared
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _problem(path: Path, what: str) -> str:
    return f"{path}: {what}"


def _nifti_files(folder: Path) -> list[Path]:
    """NIfTI files directly in ``folder``, sorted; hidden files (``._BRATS_001.nii.gz`` from macOS) skipped."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and is_nifti_name(p.name))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# ----------------------------------------------------------------------------------------------------------
# dataset.json (MSD, nnU-Net v1 and v2)


def modality_of(name: str) -> str | None:
    """The internal modality a channel name means (``"T1Gd"`` -> ``"t1ce"``), or None."""
    return _MODALITY_NAMES.get(re.sub(r"[^a-z0-9]", "", name.lower()))


def _label_role(name: str) -> str | None:
    """What a label (or region) name in dataset.json stands for."""
    n = name.lower().strip()
    if n in ("background", "bg", "0"):
        return "background"
    if any(k in n for k in ("edema", "oedema", "snfh", "hyperintens")) or n == "ed":
        return "edema"
    if "whole" in n or n == "wt":
        return "wt"
    if any(k in n for k in ("necro", "ncr", "non-enh", "nonenh", "non enh", "non_enh")) or n in ("net", "netc"):
        return "core"
    if "core" in n or n == "tc":
        return "tc"
    if "enhanc" in n or n == "et":
        return "enhancing"
    return None


def _labels_by_role(raw: dict) -> dict[str, set[int]]:
    """dataset.json ``labels`` in either direction (v2 ``name -> value(s)``, v1/MSD ``"value" -> name``)."""
    pairs: list[tuple[str, set[int]]] = []
    for key, value in raw.items():
        if isinstance(value, str) and str(key).strip().lstrip("-").isdigit():  # v1 / MSD
            pairs.append((value, {int(key)}))
        elif isinstance(value, int):
            pairs.append((str(key), {value}))
        elif isinstance(value, list) and all(isinstance(v, int) for v in value):  # v2 region
            pairs.append((str(key), set(value)))
        else:
            raise ValueError(f"label entry {key!r}: {value!r} is neither a value nor a list of values")
    roles: dict[str, set[int]] = {}
    for name, values in pairs:
        role = _label_role(name)
        if role is None:
            raise ValueError(f"label name {name!r} is not one of background, edema, necrotic/non-enhancing, "
                             "enhancing (or the regions whole tumour, tumour core, enhancing tumour)")
        roles[role] = values
    return roles


def convention_from_labels(raw: dict) -> str:
    """The label convention (``msd``, ``brats2023``, ``brats2020``) a dataset.json ``labels`` entry describes.

    Understands plain labels (``{"edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}``) and
    nnU-Net's region-based ones (``{"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}``).
    Raises ValueError when the entry does not match one of the conventions.
    """
    roles = _labels_by_role(raw)
    et = roles.get("enhancing")
    core = roles.get("core")
    edema = roles.get("edema")
    if core is None and "tc" in roles and et is not None:
        core = roles["tc"] - et
    if edema is None and "wt" in roles and "tc" in roles:
        edema = roles["wt"] - roles["tc"]
    found = {"necrotic/non-enhancing": core, "edema": edema, "enhancing": et}
    if any(v is None or len(v) != 1 for v in found.values()):
        raise ValueError(f"cannot tell the value of each tumour class from labels {raw}")
    source = np.array([next(iter(core)), next(iter(edema)), next(iter(et))])
    for convention in labelmod.CONVENTIONS:
        if set(source.tolist()) <= set(labelmod.allowed_values(convention)) and \
                labelmod.to_internal(source, convention).tolist() == [1, 2, 3]:
            return convention
    raise ValueError(f"labels {raw} match none of the conventions {', '.join(labelmod.CONVENTIONS)}")


def _read_dataset_json(root: Path) -> _DatasetInfo:
    path = root / "dataset.json"
    assumed = _DatasetInfo(dict(_MSD_CHANNELS), "msd")
    if not path.is_file():
        assumed.notes.append(_problem(root, f"no dataset.json: {_MSD_ASSUMPTION}"))
        return assumed
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        assumed.problems.append(_problem(path, f"cannot be read ({exc}); {_MSD_ASSUMPTION}"))
        return assumed

    info = _DatasetInfo(dict(_MSD_CHANNELS), "msd")
    names = meta.get("channel_names", meta.get("modality"))
    if names is None:
        info.notes.append(_problem(path, "declares no channel_names/modality: assuming FLAIR, T1, T1gd, T2"))
    else:
        channels: dict[int, str] = {}
        try:
            entries = {int(k): str(v) for k, v in dict(names).items()}
        except (TypeError, ValueError):
            entries = None
            info.problems.append(_problem(path, f"channel names {names} are not a mapping of index -> name"))
        for index, name in sorted((entries or {}).items()):
            modality = modality_of(name)
            if modality is None:
                info.problems.append(_problem(
                    path, f"channel {index} {name!r} is not one of FLAIR, T1, T1ce (T1gd), T2"))
            elif modality in channels.values():
                info.problems.append(_problem(path, f"channel {index} {name!r} repeats modality {modality}"))
            else:
                channels[index] = modality
        if entries is not None:
            info.channels = channels
            info.n_channels = len(entries)
            missing = [m for m in MODALITIES if m not in channels.values()]
            if missing and not info.problems:
                info.problems.append(_problem(path, f"declares no channel for {', '.join(missing)}"))
    msd_labels = "MSD labels (1 edema, 2 non-enhancing, 3 enhancing)"
    if "labels" in meta:
        try:
            info.convention = convention_from_labels(dict(meta["labels"]))
        except (TypeError, ValueError) as exc:
            info.problems.append(_problem(path, f"{exc}; assuming {msd_labels}"))
    else:
        info.notes.append(_problem(path, f"declares no labels: assuming {msd_labels}"))
    return info


# ----------------------------------------------------------------------------------------------------------
# MSD Task01 and nnU-Net raw


def _decathlon_files(root: Path) -> list[tuple[Path, Path | None]]:
    """(images folder, labels folder or None) pairs that exist under an MSD / nnU-Net root."""
    pairs = []
    for split in ("Tr", "Ts"):
        images = root / f"images{split}"
        if images.is_dir():
            labels = root / f"labels{split}"
            pairs.append((images, labels if labels.is_dir() else None))
    return pairs


def _by_stem(files: Iterable[Path]) -> dict[str, list[Path]]:
    """Files grouped by name without ``.nii[.gz]`` (two entries: the same case as ``.nii`` and ``.nii.gz``)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        groups[strip_nifti_suffix(path.name)].append(path)
    return groups


def _case_label(labels: dict[str, list[Path]], cid: str, problems: list[str]) -> Path | None:
    """The label file of case ``cid`` (None if there is none); a duplicate is a problem."""
    paths = labels.get(cid, [])
    if len(paths) > 1:
        problems.append(_problem(paths[0].parent, f"duplicated label file for case {cid}: "
                                                  f"{', '.join(p.name for p in paths)}"))
    return paths[0] if paths else None


def _orphan_labels(labels: dict[str, list[Path]], cases: Iterable[str], images_dir: Path, scheme: str,
                   convention: str) -> list[CaseSpec]:
    """A case for each label file without images, carrying that problem."""
    known = set(cases)
    return [CaseSpec(case_id=cid, scheme=scheme, images={}, label=paths[0], label_convention=convention,
                     folder=paths[0].parent,
                     problems=[_problem(paths[0], f"label file has no image in {images_dir}")])
            for cid, paths in sorted(labels.items()) if cid not in known]


def _discover_msd(root: Path, info: _DatasetInfo) -> list[CaseSpec]:
    specs = []
    for images_dir, labels_dir in _decathlon_files(root):
        labels = _by_stem(_nifti_files(labels_dir)) if labels_dir else {}
        cases = _by_stem(_nifti_files(images_dir))
        for cid, paths in sorted(cases.items()):
            problems = list(info.problems)
            if len(paths) > 1:
                problems.append(_problem(images_dir, f"duplicated image for case {cid}: "
                                                     f"{', '.join(p.name for p in paths)}"))
            specs.append(CaseSpec(
                case_id=cid, scheme="msd",
                images={m: ImageSource(paths[0], channel=c) for c, m in sorted(info.channels.items())},
                label=_case_label(labels, cid, problems), label_convention=info.convention,
                folder=images_dir, problems=problems, notes=list(info.notes)))
        specs += _orphan_labels(labels, cases, images_dir, "msd", info.convention)
    return specs


def _discover_nnunet(root: Path, info: _DatasetInfo) -> list[CaseSpec]:
    specs = []
    for images_dir, labels_dir in _decathlon_files(root):
        labels = _by_stem(_nifti_files(labels_dir)) if labels_dir else {}
        by_case: dict[str, dict[int, list[Path]]] = defaultdict(lambda: defaultdict(list))
        ignored = []
        for path in _nifti_files(images_dir):
            m = _NNUNET_IMAGE.match(path.name)
            if m is None:
                ignored.append(path)
            else:
                by_case[m["case"]][int(m["channel"])].append(path)
        for cid, channels in sorted(by_case.items()):
            problems = list(info.problems)
            images = {}
            for index, modality in sorted(info.channels.items()):
                files = channels.get(index, [])
                if not files:
                    problems.append(_problem(images_dir / f"{cid}_{index:04d}.nii.gz",
                                             f"missing: channel {index} ({modality}) of case {cid}"))
                elif len(files) > 1:
                    problems.append(_problem(images_dir, f"duplicated channel {index} ({modality}) of case "
                                                         f"{cid}: {', '.join(p.name for p in files)}"))
                else:
                    images[modality] = ImageSource(files[0])
            for index in sorted(i for i in channels if i >= info.n_channels):
                problems.append(_problem(channels[index][0], f"unexpected channel {index}: the dataset has "
                                                             f"{info.n_channels} channels"))
            specs.append(CaseSpec(case_id=cid, scheme="nnunet", images=images,
                                  label=_case_label(labels, cid, problems),
                                  label_convention=info.convention, folder=images_dir, problems=problems,
                                  notes=list(info.notes) + [_problem(p, "ignored: not named <case>_XXXX.nii.gz")
                                                            for p in ignored]))
        specs += _orphan_labels(labels, by_case, images_dir, "nnunet", info.convention)
    return specs


def _is_nnunet(root: Path) -> bool:
    """nnU-Net raw if any image is named ``<case>_0000.nii[.gz]`` (MSD files are ``BRATS_001.nii.gz``)."""
    return any((m := _NNUNET_IMAGE.match(p.name)) and m["channel"] == "0000"
               for images_dir, _ in _decathlon_files(root) for p in _nifti_files(images_dir))


# ----------------------------------------------------------------------------------------------------------
# BraTS folders


def _brats_scheme(tokens: Iterable[tuple[str, str]]) -> str:
    """brats2023 if the files use the 2023 modality names (or ``-seg`` alone), else brats2020."""
    tokens = list(tokens)
    if any(t in _BRATS2023_TOKENS for t, _ in tokens):
        return "brats2023"
    if tokens and all(t == "seg" for t, _ in tokens) and all(sep == "-" for _, sep in tokens):
        return "brats2023"
    return "brats2020"


def _convention_for_scheme(scheme: str) -> str:
    return "brats2023" if scheme == "brats2023" else "brats2020"


def _brats_cases_in(folder: Path) -> tuple[list[CaseSpec], list[Path]]:
    """The BraTS cases whose files lie directly in ``folder`` (grouped by case prefix), and the NIfTI
    files there that are not named like a BraTS modality."""
    groups: dict[str, list[tuple[str, str, Path]]] = defaultdict(list)
    unrecognised = []
    for path in _nifti_files(folder):
        m = _BRATS_FILE.match(path.name)
        if m is None:
            unrecognised.append(path)
            continue
        groups[m["prefix"] or folder.name].append((m["token"].lower(), m["sep"] or "", path))

    specs = []
    for cid, files in sorted(groups.items()):
        scheme = _brats_scheme((t, sep) for t, sep, _ in files)
        found: dict[str, list[Path]] = defaultdict(list)
        for token, _, path in files:
            found["seg" if token == "seg" else (_BRATS2020_TOKENS | _BRATS2023_TOKENS)[token]].append(path)
        names = {v: k for k, v in (_BRATS2023_TOKENS if scheme == "brats2023" else _BRATS2020_TOKENS).items()}
        sep = "-" if scheme == "brats2023" else "_"
        problems, images = [], {}
        for modality in MODALITIES:
            paths = found.get(modality, [])
            if not paths:
                problems.append(_problem(folder / f"{cid}{sep}{names[modality]}.nii.gz",
                                         f"missing: no {modality} image for case {cid}"))
            elif len(paths) > 1:
                problems.append(_problem(folder, f"duplicated modality {modality} for case {cid}: "
                                                 f"{', '.join(p.name for p in paths)}"))
            else:
                images[modality] = ImageSource(paths[0])
        label = None
        if len(found.get("seg", [])) > 1:
            problems.append(_problem(folder, f"duplicated label file for case {cid}: "
                                             f"{', '.join(p.name for p in found['seg'])}"))
        elif found.get("seg"):
            label = found["seg"][0]
        notes = [_problem(p, "ignored: not named like a BraTS modality") for p in unrecognised]
        specs.append(CaseSpec(case_id=cid, scheme=scheme, images=images, label=label,
                              label_convention=_convention_for_scheme(scheme), folder=folder,
                              problems=problems, notes=notes))
    return specs, unrecognised


def _discover_brats(root: Path) -> list[CaseSpec]:
    specs, _ = _brats_cases_in(root)
    for sub in _subfolders(root):
        found, unrecognised = _brats_cases_in(sub)
        if not found and unrecognised:
            found = [CaseSpec(case_id=sub.name, scheme="unknown", images={}, label=None,
                              label_convention="brats2020", folder=sub, problems=[_problem(
                                  sub, "no file is named like a BraTS modality (found "
                                       f"{', '.join(p.name for p in unrecognised[:5])}"
                                       f"{', ...' if len(unrecognised) > 5 else ''}); {LAYOUT_HINT}")])]
        specs += found
    return specs


# ----------------------------------------------------------------------------------------------------------
# public API


def _flag_duplicate_ids(specs: list[CaseSpec]) -> None:
    by_id: dict[str, list[CaseSpec]] = defaultdict(list)
    for spec in specs:
        by_id[spec.case_id].append(spec)
    for cid, same in by_id.items():
        if len(same) > 1:
            for spec in same:
                others = ", ".join(str(o.folder) for o in same if o is not spec)
                spec.problems.append(_problem(spec.folder or Path(cid),
                                              f"case id {cid} is used more than once (also in {others})"))


def discover(path: str | Path) -> list[CaseSpec]:
    """All cases in ``path`` (a dataset folder of any supported layout, or one case folder), sorted by case id.

    Raises ``DataError(path)`` if ``path`` is not a folder or holds no recognisable case.
    """
    root = Path(path)
    if not root.exists():
        raise DataError("folder not found", root)
    if not root.is_dir():
        raise DataError("is a file; pass the folder that holds the cases (or one case folder)", root)

    if _decathlon_files(root):
        info = _read_dataset_json(root)
        specs = _discover_nnunet(root, info) if _is_nnunet(root) else _discover_msd(root, info)
    else:
        specs = _discover_brats(root)
    if not specs:
        raise DataError(f"no recognisable case found; {LAYOUT_HINT}", root)
    specs.sort(key=lambda s: s.case_id)
    _flag_duplicate_ids(specs)
    return specs


def _explicit_scheme(paths: Iterable[Path]) -> str | None:
    """``brats2020`` / ``brats2023`` when every file is named with one BraTS release's modality tokens
    (``_flair``, ``_t1``, ``_t1ce``, ``_t2`` / ``-t2f``, ``-t1n``, ``-t1c``, ``-t2w``; ``seg`` fits both), else
    None. Mixed names such as ``Flair``, ``T1``, ``T1c``, ``T2`` (common outside BraTS) tell nothing."""
    tokens = []
    for path in paths:
        m = _BRATS_FILE.match(path.name)
        if m is None:
            return None
        tokens.append(m["token"].lower())
    images = [t for t in tokens if t != "seg"]
    if images and all(t in _BRATS2023_TOKENS for t in images):
        return "brats2023"
    if images and all(t in _BRATS2020_TOKENS for t in images):
        return "brats2020"
    return None


def explicit_case_id(flair: str | Path) -> str:
    """The case id of an explicit FLAIR file: its case prefix (``BraTS2021_00000_flair.nii.gz`` ->
    ``BraTS2021_00000``); for a name that is only a modality (``Flair.nii.gz``, ``T2-FLAIR.nii``), the name of
    its folder; otherwise the name without ``.nii[.gz]``."""
    path = Path(flair)
    stem = strip_nifti_suffix(path.name)
    m = _BRATS_FILE.match(path.name)
    if modality_of(stem) is None and m and m["prefix"]:
        return m["prefix"]
    if m or modality_of(stem) is not None:
        return path.absolute().parent.name or stem
    return stem


def case_from_files(flair: str | Path, t1: str | Path, t1ce: str | Path, t2: str | Path,
                    label: str | Path | None = None, case_id: str | None = None, *,
                    label_convention: str | None = None) -> CaseSpec:
    """A case from explicit files (scheme ``files``). Nothing is read.

    ``case_id`` defaults to :func:`explicit_case_id` of the FLAIR file. ``label_convention`` defaults to the
    BraTS release whose modality names all the files carry (:func:`_explicit_scheme`); where the names do not
    tell (``Flair``/``T1``/``T1c``/``T2``, ``f.nii.gz``, ...), :class:`ConfigError` asks for it (``--labels``):
    a wrong guess would write labels 1/2/3 where 1/2/4 are expected, or the reverse.
    """
    images = {"flair": Path(flair), "t1": Path(t1), "t1ce": Path(t1ce), "t2": Path(t2)}
    label_path = None if label is None else Path(label)
    if label_convention is None:
        label_convention = _explicit_scheme([*images.values(), *([label_path] if label_path else [])])
        if label_convention is None:
            names = ", ".join(p.name for p in images.values())
            raise ConfigError(f"cannot tell the label convention from the file names ({names}): pass --labels "
                              "brats2020 (1/2/4), brats2023 (1/2/3) or msd", images["flair"])
    elif label_convention not in labelmod.CONVENTIONS:
        raise ValueError(f"unknown label convention {label_convention!r}; expected one of "
                         f"{', '.join(labelmod.CONVENTIONS)}")
    if case_id is None:
        case_id = explicit_case_id(images["flair"])
    problems = []
    seen: dict[Path, str] = {}
    for modality, path in [*images.items(), *([("label", label_path)] if label_path else [])]:
        key = path.resolve()
        if key in seen:
            problems.append(_problem(path, f"given as both {seen[key]} and {modality}"))
        seen.setdefault(key, modality)
    return CaseSpec(case_id=case_id, scheme="files", images={m: ImageSource(p) for m, p in images.items()},
                    label=label_path, label_convention=label_convention, folder=images["flair"].parent,
                    problems=problems)


def labelled_cases(specs: Iterable[CaseSpec]) -> tuple[list[CaseSpec], str | None]:
    """The cases training can use, and a note on those it leaves out (None when it leaves out none).

    Training needs a label per case; a dataset as downloaded also holds cases without one (MSD Task01 and
    nnU-Net ``imagesTs/``, a BraTS validation folder mixed in), which would otherwise land in a training or
    validation fold and stop the run. Those are left out and counted; ``agsevnet predict`` still takes every
    case. A case without a label that has problems (e.g. a folder of unrecognised files) is kept, so that the
    cache build reports its problem instead of hiding it.
    """
    kept, left_out = [], []
    for spec in specs:
        (left_out if spec.label is None and not spec.problems else kept).append(spec)
    if not left_out:
        return kept, None
    folders = sorted({str(spec.folder) for spec in left_out if spec.folder is not None})
    where = f" (in {', '.join(folders[:3])}{', ...' if len(folders) > 3 else ''})" if folders else ""
    return kept, (f"note: left out {len(left_out)} case(s) without a label file{where}: training and validation "
                  f"use the {len(kept)} labelled case(s); `agsevnet predict` takes the unlabelled ones")
