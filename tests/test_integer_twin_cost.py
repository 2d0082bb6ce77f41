"""tools/experiments/integer_twin in its --quick form: what docs/lava.md claims the integer
twin costs (reconstruction and forecast against float, same spec and seed) is asserted."""

from __future__ import annotations

import json

import pytest

from tools.experiments import forecast_eval as fe
from tools.experiments import integer_twin

pytestmark = pytest.mark.skipif(not fe.DATA.exists(),
                                reason="shared data directory ../shared/data is absent")


def test_quick_claim(capsys: pytest.CaptureFixture[str]) -> None:
    """On the rotating disk (1.5 s) and the DVXplorer sample: the twin's forecast is within
    0.005 nats/event of float, its reconstruction (relative error energy) at most 0.015
    worse, and no trace leaves x̂'s range (32 events in Q.18, 24 bits)."""
    integer_twin.main(["--quick"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    streams = out["streams"]
    assert set(streams) == {"rotdisk", "dvxplorer"}
    for name, s in streams.items():
        assert abs(s["d_loglik"]) <= 0.005, (name, s)
        assert -0.005 <= s["d_reconstruction"] <= 0.015, (name, s)
        assert s["over_xhat_range"] == 0.0, (name, s)
        assert s["loglik_float"] != s["loglik_loihi"]  # the two arms really differ
