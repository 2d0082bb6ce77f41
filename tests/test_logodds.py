"""Log-odds belief units: kernel/reference parity, determinism, learning helps, no NaN."""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import bars, noise, windows

from augury.model.logodds import LogOddsLayer, LogOddsSpec
from augury.model.scoring import ScoreBoard
from augury.model.spec import ModelSpec

SMALL = ModelSpec(width=32, height=24, pool=4, column=2, k1=4)


def _feed(layer: LogOddsLayer, ev: np.ndarray, t1_us: int, window_us: int) -> None:
    for b in windows(ev, 0, t1_us, window_us):
        layer.advance(b.events, b.t_start_us, b.t_end_us)


def test_kernel_matches_reference() -> None:
    ev = bars(32, 24, 60_000, seed=3, noise_rate_hz=20.0)
    fast, ref = LogOddsLayer(SMALL), LogOddsLayer(SMALL, backend="reference")
    _feed(fast, ev, 60_000, 7_000)
    _feed(ref, ev, 60_000, 7_000)
    assert fast.state.counters[0] == ev.size > 1000
    for name in fast.state._fields:
        if name == "pbuf":  # the kernels' scratch
            continue
        np.testing.assert_allclose(getattr(fast.state, name), getattr(ref.state, name),
                                   rtol=1e-9, atol=1e-9, err_msg=name)
    np.testing.assert_allclose(fast.rates(60_000), ref.rates(60_000), rtol=1e-9)


def test_deterministic_for_a_seed_and_any_batching() -> None:
    ev = bars(32, 24, 100_000, seed=4, noise_rate_hz=20.0)
    a, b, c = (LogOddsLayer(SMALL, LogOddsSpec(seed=s)) for s in (5, 5, 6))
    _feed(a, ev, 100_000, 10_000)
    _feed(b, ev, 100_000, 3_300)  # another split of the same stream
    _feed(c, ev, 100_000, 10_000)
    for name in a.state._fields:
        np.testing.assert_array_equal(getattr(a.state, name), getattr(b.state, name), name)
    assert not np.array_equal(a.state.u, c.state.u)  # another random dictionary


def _loglik(layer: LogOddsLayer, spec: ModelSpec, ev: np.ndarray, t1_us: int) -> float:
    board = ScoreBoard(spec, spec.horizon_us, warmup_us=t1_us // 2)
    for b in windows(ev, 0, t1_us, spec.horizon_us):
        layer.advance(b.events, b.t_start_us, b.t_end_us)
        board.observe(b, layer.rate_map(b.t_end_us))
    return board.ll_model / max(board.events, 1)


def test_learning_improves_prediction_on_moving_bars() -> None:
    spec = ModelSpec(width=64, height=48, pool=4)
    t1 = 1_500_000
    ev = bars(64, 48, t1, seed=1, speed_px_s=300.0, noise_rate_hz=1.0)
    learned = _loglik(LogOddsLayer(spec), spec, ev, t1)
    untrained = LogOddsLayer(spec)
    untrained.learning = False
    frozen = _loglik(untrained, spec, ev, t1)
    # nats per scored event, second half of the stream
    assert learned > frozen + 0.1, (learned, frozen)


def test_no_nan_on_noise() -> None:
    spec = ModelSpec(width=64, height=48, pool=4)
    lo = LogOddsSpec()
    ev = noise(64, 48, 300_000, 110.0, seed=2)
    assert ev.size > 100_000
    layer = LogOddsLayer(spec, lo)
    _feed(layer, ev, 300_000, 10_000)
    st = layer.state
    for name in ("u", "a", "b", "na", "tk", "nb", "tb", "p1", "disc"):
        assert np.all(np.isfinite(getattr(st, name))), name
    assert np.all(np.abs(st.u) <= lo.l_max)
    assert np.all((st.a >= 0) & (st.a <= lo.a_max_hz)) and np.all(st.b >= lo.b_min_hz)
    assert np.all(np.isfinite(layer.rates(300_000)))


def test_bad_input_raises() -> None:
    from augury.events import EventFormatError

    ev = bars(32, 24, 20_000, seed=0, noise_rate_hz=50.0)
    layer = LogOddsLayer(SMALL)
    bad = ev.copy()
    bad["x"][3] = 32  # outside the 32 px sensor: would index past the column tables
    with pytest.raises(EventFormatError, match="event 3"):
        layer.advance(bad, 0, 20_000)
    with pytest.raises(EventFormatError):
        layer.advance(ev[::-1].copy(), 0, 20_000)
    layer.advance(ev, 0, 20_000)
    with pytest.raises(EventFormatError, match="before the time reached"):
        layer.advance(ev[:0], 10_000, 30_000)
