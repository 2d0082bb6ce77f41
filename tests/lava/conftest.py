"""Fixtures of the Lava tests (run in the Python 3.10 venv; skipped elsewhere).

Nothing here imports Lava: each test module starts with ``pytest.importorskip("lava.magma")`` so
that the main (3.11) run reports the modules as skipped with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lava_helpers, crashproc
from lava_helpers import ROTDISK, load_crop, train  # noqa: E402

from augury.model.network import Network  # noqa: E402


@pytest.fixture(scope="session")
def rotdisk_crop() -> np.ndarray:
    if not ROTDISK.exists():
        pytest.skip(f"recording not found: {ROTDISK}")
    return load_crop()


@pytest.fixture(scope="session")
def trained(rotdisk_crop: np.ndarray) -> Network:
    """Trained on the crop's first 1.5 s (copy the state before changing it)."""
    return train(rotdisk_crop)
