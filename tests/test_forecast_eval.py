"""tools/experiments/forecast_eval in its --quick form: the targets that hold are asserted, so
that a regression of the published forecast fails the build."""

from __future__ import annotations

import numpy as np
import pytest

from tools.experiments import forecast_eval as fe

pytestmark = pytest.mark.skipif(not fe.DATA.exists(),
                                reason="shared data directory ../shared/data is absent")


def test_block_bootstrap_brackets_the_gain() -> None:
    rng = np.random.default_rng(0)
    events = np.full(200, 100.0)
    diff = rng.normal(5.0, 20.0, 200)  # +0.05 nats/event on average
    lo, hi = fe.block_bootstrap(diff, events)
    g = diff.sum() / events.sum()
    assert lo < g < hi and hi - lo < 0.1
    lo, hi = fe.block_bootstrap(np.full(50, 3.0), np.full(50, 10.0))
    assert lo == pytest.approx(0.3) and hi == pytest.approx(0.3)


def test_rls_learns_a_spatial_average() -> None:
    """Counts equal to the 3 × 3 sum of last window's counts are learned exactly."""
    rng = np.random.default_rng(1)
    rls = fe.Rls()
    last = rng.poisson(2.0, (12, 10, 2))
    for _ in range(5):
        nxt = np.rint(fe.neighbourhood(last)[:, :, :9].sum(-1)).reshape(last.shape)
        rls.update(last, nxt)
        last = rng.poisson(2.0, (12, 10, 2))
    nxt = fe.neighbourhood(last)[:, :, :9].sum(-1).reshape(last.shape)
    np.testing.assert_allclose(rls.predict(last), nxt, atol=1e-3)  # the prior 0.01 I: ~1e-5


@pytest.fixture(scope="module")
def quick() -> dict[str, dict]:
    return {r["stream"]: r for r in fe.run(quick=True, seeds=[0], streams=None, overrides={},
                                           ablations=False)}


@pytest.mark.parametrize("name", ["rotdisk", "dvxplorer"])
def test_real_recordings_beat_persistence_and_the_best_ema(quick: dict, name: str) -> None:
    r = quick[name]
    assert r["vs_persistence"]["lo"] > 0.3, r["vs_persistence"]
    assert r["vs_best_ema"]["lo"] > 0.05, r["vs_best_ema"]  # measured +0.22, +0.14
    assert r["vs_rls"]["gain"] > 0.0, r["vs_rls"]  # measured +0.03, +0.23
    assert 0.87 <= r["coverage90"] <= 0.93, r["coverage90"]
    assert 0.9 < r["pred_over_actual"] < 1.1


def test_static_scene(quick: dict) -> None:
    """Background activity and hot pixels: the best EMA has a long τ; the mixture of rate
    experts stays within 0.1 nats/event of it (the forecast unit alone lost 0.3)."""
    r = quick["static"]
    assert r["best_ema_tau_ms"] >= 200
    assert r["vs_persistence"]["lo"] > 0.3
    assert r["vs_best_ema"]["gain"] > -0.1, r["vs_best_ema"]
    assert 0.87 <= r["coverage90"] <= 0.93, r["coverage90"]


def test_too_short_stream_is_reported_not_scored() -> None:
    r = fe.evaluate_stream("evt3_burst", seeds=[0], overrides={}, duration_us=None,
                           ablations=False)
    assert r["too_short"] and "vs_best_ema" not in r
