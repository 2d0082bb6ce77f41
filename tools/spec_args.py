"""The ``--spec key=value ...`` option shared by the benchmark and experiment scripts."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_spec_argument(ap: argparse.ArgumentParser) -> None:
    """Add ``--spec key=value ...``: ModelSpec overrides, values in JSON (2, 0.25, true)."""
    ap.add_argument("--spec", nargs="*", default=[],
                    help="ModelSpec overrides key=value (JSON values), e.g. relax_steps=8")


def spec_overrides(pairs: list[str]) -> dict[str, Any]:
    """{key: value} from ``key=value`` strings with JSON values; SystemExit naming the bad one.

    >>> spec_overrides(["relax_steps=8", "curv_mix=1.0", "fixed_point=true"])
    {'relax_steps': 8, 'curv_mix': 1.0, 'fixed_point': True}
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--spec expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            raise SystemExit(f"--spec {key}: {value!r} is not a JSON value") from None
    return out
