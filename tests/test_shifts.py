"""tools/experiments/shifts in its --quick form: after a polarity flip of a real recording the
published forecast recovers within 100 ms of stream time, the surprise detects the shift, and
the return to the original scene costs little (issue 13, *Adaptation*)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tools.experiments import shifts as sh

pytestmark = pytest.mark.skipif(not all(p.exists() for p in sh.RECORDINGS.values()),
                                reason="shared data directory ../shared/data is absent")


def test_polarity_flip(capsys: pytest.CaptureFixture[str]) -> None:
    sh.main(["--quick"])
    h = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert h["polarity_learn_recovery_ms"] <= 100.0, h  # measured 60 ms
    assert h["polarity_learn_surprise_peak_z"] > 2.0, h  # measured 3.6
    assert abs(h["polarity_learn_forgetting"]) < 0.05, h  # measured −0.002 nats/event


def test_shifts_are_what_they_say() -> None:
    a = np.zeros(4, dtype=[("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
    a["t"] = [0, 10, 20, 30]
    a["x"], a["y"], a["p"] = [1, 2, 3, 4], [5, 6, 7, 8], [0, 1, 0, 1]
    flip = sh.shifted("polarity", a, 0, 31, 0)  # the span: one loop, the 4 events
    assert list(flip["p"]) == [1, 0, 1, 0]
    rot = sh.shifted("rotation", a, 0, 31, 0)
    assert list(rot["x"]) == [sh.SIDE - 1 - y for y in (5, 6, 7, 8)]
    assert list(rot["y"]) == [1, 2, 3, 4]
    fast = sh.shifted("speed x2", a, 0, 15, 0)  # 30 µs of A in 15 µs
    assert list(fast["t"]) == [0, 5, 10]


def test_recovery_measure() -> None:
    """A drop at the shift that recovers linearly over 100 ms: recovery ≈ 90 ms + smoothing."""
    ll = np.full(400, -2.0)
    ll[100:110] = np.linspace(-4.0, -2.0, 10)
    z = np.zeros(400)
    m = sh.measures(ll, z, [0, 100, 300], np.full(400, -2.0))
    assert 80 <= m["recovery_ms"] <= 150, m
    assert m["forgetting"] == pytest.approx(0.0) and m["shift_drop"] < -1.0
