"""``agsevnet prepare``: scans as they come from the scanner -> a BraTS-conformant case (issue 16).

The stage before :mod:`agsevnet.preprocess`: four sequences in any orientation and voxel size are co-registered
(FLAIR, T1, T2 rigidly to the T1ce), brought onto the SRI24 atlas grid of the BraTS releases (the T1ce rigidly,
or on request rigidly then affinely, to the atlas), skull-stripped, and each resampled once with its composed transform. ``prepare.json`` holds every
transform, so that a label map on the atlas grid goes back onto the scanner's grid (:mod:`.native`).

Modules: :mod:`.sequences` (which file is which), :mod:`.inputs` (a folder -> four images), :mod:`.atlas`,
:mod:`.geometry` (nibabel <-> SimpleITK, 4x4 transforms, the resampling), :mod:`.register`, :mod:`.brain`,
:mod:`.pipeline` (:func:`prepare`), :mod:`.qc`, :mod:`.native`. The heavy dependencies (SimpleITK, deepbet)
are the optional extra ``agsevnet[prepare]``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from agsevnet.errors import ConfigError

INSTALL_HINT = 'pip install "agsevnet[prepare]" (from a clone: pip install -e ".[prepare]")'


def require(module: str) -> ModuleType:
    """Import an optional dependency of ``prepare``, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"agsevnet prepare needs {module.split('.')[0]}, which is not installed: {INSTALL_HINT} "
                          f"({exc})") from None
