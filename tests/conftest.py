"""Shared fixtures.

Real BraTS cases are read from ``../shared/data/brats-real`` next to the checkout (or ``$AGSEVNET_REAL_DATA``);
tests that need them skip with a clear reason where that folder is absent. They are never copied into the
repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("AGSEVNET_REAL_DATA", REPO.parent / "shared" / "data" / "brats-real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real BraTS cases; skips the test where it is absent."""
    if not (REAL_DATA.is_dir() and any(REAL_DATA.iterdir())):
        pytest.skip(f"real BraTS data not found at {REAL_DATA} (set AGSEVNET_REAL_DATA to run this test)")
    return REAL_DATA


@pytest.fixture
def one_thread():
    """One intra-op thread for small-tensor tests: when other processes hold the cores, OpenMP's threads spin-wait
    on each other and made such tests up to 50x slower. Results do not depend on it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
