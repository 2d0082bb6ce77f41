"""Shared fixtures: the real recordings in ../shared/data (read in place, never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true",
                     help="fuzz suites: ten times the cases (thousands per target)")


def pytest_configure(config: pytest.Config) -> None:
    """``--long`` sets the fuzz suites' scale before their modules are imported."""
    if config.getoption("--long"):
        os.environ.setdefault("AUGURY_FUZZ_LONG", "1")
        os.environ.setdefault("AUGURY_FUZZ_SCALE", "10")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; tests that need it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real recordings not found at {SHARED_DATA} (../shared/data is absent)")
    return SHARED_DATA
