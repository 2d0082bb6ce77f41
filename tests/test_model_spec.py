"""ModelSpec validation, geometry, and Network input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from augury.events import EVENT_DTYPE, EventBatch, EventFormatError
from augury.model.network import Network, column_to_map, map_to_column
from augury.model.spec import ModelSpec
from augury.model.state import init_scratch


def test_from_dict_unknown_key_is_named() -> None:
    with pytest.raises(ValueError, match="tau_ms"):
        ModelSpec.from_dict({"width": 64, "height": 48, "tau_ms": 20})


def test_from_dict_missing_geometry() -> None:
    with pytest.raises(ValueError, match="width"):
        ModelSpec.from_dict({"height": 48})


def test_pool_zero_is_chosen_from_the_sensor_size() -> None:
    from augury.model.spec import default_pool

    assert [default_pool(w, h) for w, h in ((1280, 720), (640, 480), (346, 260), (320, 240),
                                            (240, 180), (34, 34))] == [8, 4, 4, 2, 2, 1]
    assert ModelSpec(width=346, height=260, pool=0).pool == 4
    s = ModelSpec.from_dict({"width": 64, "height": 48, "mix_taus_us": [5000, 50000]})
    assert s.mix_taus_us == (5000, 50000) and ModelSpec.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="mix_taus_us"):
        ModelSpec(width=64, height=48, mix_taus_us=(0,))


def test_from_dict_coerces_numbers() -> None:
    s = ModelSpec.from_dict({"width": 64, "height": 48, "kappa": 1, "tau_us": 20000.0})
    assert s.kappa == 1.0 and isinstance(s.tau_us, int)
    assert ModelSpec.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(("field", "value"), [
    ("pool", -1), ("k1", -1), ("layers", 3), ("kappa", 0.0), ("kappa", 1.5), ("alpha", 2.0),
    ("pi_min", -1.0), ("theta_e", float("nan")), ("tau_us", 1.5), ("fixed_point", 1),
    ("shared_fit", "irls"), ("shared_floor", 0.0),
])
def test_bad_field_is_named(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ModelSpec(width=64, height=48, **{field: value})


def test_horizon_must_be_a_multiple_of_tick() -> None:
    with pytest.raises(ValueError, match="horizon_us"):
        ModelSpec(width=64, height=48, horizon_us=10_000, tick_us=3_000, learn_us=9_000)
    with pytest.raises(ValueError, match="learn_us"):
        ModelSpec(width=64, height=48, tick_us=1_000, learn_us=1_500)


def test_geometry_derivations() -> None:
    s = ModelSpec(width=1280, height=720)
    assert s.pooled_shape == (90, 160)
    assert s.grid1 == (23, 40) and s.grid2 == (12, 20)
    assert s.d1 == 32 and s.d2 == 32


def test_column_map_round_trip() -> None:
    s = ModelSpec(width=100, height=70, pool=4, column=3)
    m = np.random.default_rng(0).random(s.pooled_shape + (2,))
    back = column_to_map(s, map_to_column(s, m))
    np.testing.assert_array_equal(back, m)


def test_scratch_tables_match_the_geometry() -> None:
    """The kernels' lookup tables equal the integer-division formulas they replace, and the
    decay table equals libm's exp bit for bit (odd sizes: partial columns and blocks)."""
    s = ModelSpec(width=101, height=70, pool=4, column=3, k1=5, tick_us=700, learn_us=2_100,
                  horizon_us=7_000)
    sc = init_scratch(s)
    rows1, cols1 = s.grid1
    x, y = np.meshgrid(np.arange(s.width), np.arange(s.height))
    px, py = x // s.pool, y // s.pool
    j = sc.jy[y] + sc.jx[x]
    np.testing.assert_array_equal(j, (py // s.column) * cols1 + px // s.column)
    np.testing.assert_array_equal(sc.dy[y] + sc.dx[x],
                                  ((py % s.column) * s.column + px % s.column) * 2)
    cols2 = s.grid2[1]
    for col in range(s.n1):
        cy, cx = divmod(col, cols1)
        assert sc.big1[col] == (cy // 2) * cols2 + cx // 2
        assert sc.slot1[col] == ((cy % 2) * 2 + cx % 2) * s.k1
        assert sc.kids[sc.big1[col], sc.slot1[col] // s.k1] == col
    assert (sc.kids >= 0).sum() == s.n1  # every other quadrant is off the grid (−1)
    gap = min(s.learn_us, s.horizon_us)  # longest time a column's traces stay anchored
    assert sc.decay.shape == sc.grow.shape == (gap + 1,)
    assert all(sc.decay[dt] == math.exp(-dt / s.tau_us) for dt in range(gap + 1))
    assert all(sc.grow[dt] == math.exp(dt / s.tau_us) for dt in range(gap + 1))


def test_poll_gap_must_stay_within_eight_time_constants() -> None:
    with pytest.raises(ValueError, match="8 × tau_us"):
        ModelSpec(width=64, height=48, tau_us=1_000, tick_us=1_000, learn_us=9_000,
                  horizon_us=9_000)
    ModelSpec(width=64, height=48, tau_us=1_000, tick_us=1_000, learn_us=8_000,
              horizon_us=16_000)  # the shorter of the two sets the gap


def _batch(ev: np.ndarray, t0: int = 0, t1: int = 1000, seq: int = 0) -> EventBatch:
    return EventBatch(ev, t0, t1, seq)


def _ev(ts: list[int], xs: list[int], ys: list[int], ps: list[int]) -> np.ndarray:
    ev = np.zeros(len(ts), EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = ts, xs, ys, ps
    return ev


@pytest.mark.parametrize(("ev", "match"), [
    (_ev([5, 3], [1, 1], [1, 1], [0, 0]), "event 1: field t goes backwards"),
    (_ev([5], [64], [1], [0]), "event 0: x outside"),
    (_ev([5], [1], [48], [0]), "event 0: y outside"),
    (_ev([5], [1], [1], [2]), "event 0: p not in"),
    (_ev([1000], [1], [1], [0]), r"event 0: t outside \[0, 1000\)"),
    (_ev([5, 6, 7], [1, 1, 64], [1, 48, 1], [0, 0, 0]), "event 1: y outside"),  # first bad
])
def test_step_rejects_bad_batches(ev: np.ndarray, match: str) -> None:
    net = Network(ModelSpec(width=64, height=48), backend="reference")
    with pytest.raises(EventFormatError, match=match):
        net.step(_batch(ev))


def test_step_rejects_time_going_backwards() -> None:
    net = Network(ModelSpec(width=64, height=48), backend="reference")
    net.step(_batch(_ev([], [], [], []), 0, 5000))
    with pytest.raises(EventFormatError, match="before the time already reached"):
        net.step(_batch(_ev([], [], [], []), 4000, 6000, 1))


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        Network(ModelSpec(width=64, height=48), backend="cuda")


def test_fixed_point_warns_that_it_is_not_a_model_of_loihi() -> None:
    """``fixed_point`` (round half up) cannot match Lava's fixed_pt models: it warns and names
    the integer twin that does (pyproject's filter hides this warning from the precision
    study's tests only)."""
    with pytest.warns(FutureWarning, match="arithmetic='loihi'"):
        ModelSpec(width=64, height=48, fixed_point=True, frac_bits=14)
