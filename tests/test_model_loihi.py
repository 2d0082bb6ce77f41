"""The integer twin (``arithmetic = "loihi"``): numba kernels against the NumPy oracle
``loihi_int.tick`` (exact integer equality), quantisers, spec validation."""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import bars, windows

from augury.lava import convert
from augury.model import loihi_int as L
from augury.model.network import Network
from augury.model.spec import ModelSpec
from augury.model.state import C_UP

FIELDS = ("z", "xhat", "eps", "u", "mu", "mus", "active")


def _spec(**kw: object) -> ModelSpec:
    return ModelSpec(width=32, height=32, pool=4, layers=1, clocked_input=True, settle=0.0,
                     arithmetic="loihi", **kw)


def _qstate(spec: ModelSpec, net: Network) -> L.QState:
    s = net.state
    return L.quantise_state(spec, s.z1, s.xhat1, s.eps1, s.u1, s.mu1, s.mus1, s.h1, s.active)


def test_twin_equals_numpy_oracle_with_silence_and_wake() -> None:
    """Trained with learning (200 ms of moving bars), then 450 ticks frozen with column 0's
    events cut for 300 ms: at every tick the numba twin's layer 1 equals ``loihi_int.tick``
    run on the per-tick counts, integer for integer; column 0 goes silent and wakes."""
    spec = _spec()
    ev = bars(32, 32, 700_000, seed=1)
    net = Network(spec)
    for b in windows(ev, 0, 200_000, 5_000):
        net.advance(b)
    net.freeze_learning()
    ll = convert.loihi_layer1(spec, net.state)
    t0, n = net.t_us, 450
    sel = ev[(ev["t"] >= t0) & (ev["t"] < t0 + n * 1_000)]
    cut = (sel["x"] < 16) & (sel["y"] < 16) & (sel["t"] >= t0 + 10_000) & (sel["t"] < t0 + 310_000)
    sel = sel[~cut]
    counts = convert.tick_counts(spec, sel, ll.t_first_us, n).astype(np.int64)
    qs, active0, up0 = ll.state, [], int(net.state.counters[C_UP])
    for i in range(n):
        a = t0 + i * 1_000
        net.advance(windows(sel[(sel["t"] >= a) & (sel["t"] < a + 1_000)], a, a + 1_000,
                            1_000)[0])
        qs = L.tick(spec, ll.consts, ll.params, qs, counts[:, i].reshape(spec.n1, spec.d1),
                    a + 1_000)
        got = _qstate(spec, net)
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(got, f), getattr(qs, f),
                                          err_msg=f"{f} at tick {i}")
        active0.append(bool(qs.active[0]))
    assert not all(active0) and active0[-1], "column 0 must go silent and wake"
    assert net.state.counters[C_UP] > up0 and qs.mu.max() > 0.1 * 2**L.MU_FRAC


def test_twin_equals_oracle_while_learning() -> None:
    """Learning on for 120 ticks: the oracle runs each tick with the parameters the host
    wrote before it (quantised from numba's State) and, after each learning epoch, the
    host's refresh (``loihi_int.refresh``: x̂, u and κ/h from the new weights and
    curvatures); numba's twin equals it integer for integer at every tick."""
    spec = _spec()
    ev = bars(32, 32, 300_000, seed=3)
    net = Network(spec)
    for b in windows(ev, 0, 150_000, 5_000):
        net.advance(b)
    t0, n = net.t_us, 120
    ll = convert.loihi_layer1(spec, net.state)
    counts = convert.tick_counts(spec, ev[(ev["t"] >= t0) & (ev["t"] < t0 + n * 1_000)],
                                 ll.t_first_us, n).astype(np.int64)
    qs, wq0 = ll.state, ll.params.w.copy()
    for i in range(n):
        a = t0 + i * 1_000
        net.advance(windows(ev[(ev["t"] >= a) & (ev["t"] < a + 1_000)], a, a + 1_000,
                            1_000)[0])
        qs = L.tick(spec, ll.consts, ll.params, qs, counts[:, i].reshape(spec.n1, spec.d1),
                    a + 1_000)
        ll = convert.loihi_layer1(spec, net.state)  # the host writes the new parameters
        if (a + 1_000) % spec.learn_us == 0:
            qs = L.refresh(spec, ll.params, qs, net.state.h1)
        got = _qstate(spec, net)
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(got, f), getattr(qs, f),
                                          err_msg=f"{f} at tick {i}")
    assert (ll.params.w != wq0).sum() > 100  # the 8-bit weights changed during the run


def test_learning_keeps_state_on_the_grid() -> None:
    """With learning on, every layer-1 inference variable stays an exact multiple of its
    format's step (the float State is the integer state), and weights learn in float."""
    spec = _spec()
    ev = bars(32, 32, 150_000, seed=2)
    net = Network(spec)
    w0 = net.state.W1.copy()
    for b in windows(ev, 0, 150_000, 7_000):
        net.advance(b)
    s = net.state
    for v, f in ((s.z1, L.Z_FRAC), (s.xhat1, L.XHAT_FRAC), (s.eps1, L.EPS_FRAC),
                 (s.u1, L.U_FRAC), (s.mu1, L.MU_FRAC), (s.mus1, L.MU_FRAC)):
        np.testing.assert_array_equal(L.from_q(L.to_q(v, f), f), v)
        assert np.abs(L.to_q(v, f)).max() <= L.Q_MAX
    assert np.abs(s.W1 - w0).max() > 1e-3
    assert not np.array_equal(s.W1 * 64, np.round(s.W1 * 64))  # W itself stays float


def test_quantisers() -> None:
    """Gains: 8-bit mantissa, floor shift (also for negative x); thresholds floored so that
    |Δ_q| > θ_q ⇔ |Δ| > θ; the scalar and array quantisers agree; 12-bit decay."""
    c = np.array([1e-5, 0.01, 0.3, 1.0, 1.999, 16.0, 100.0, 0.0, -1.0])
    m, s = L.quant_gains(c)
    assert [L.quant_gain(v) for v in c] == list(zip(m.tolist(), s.tolist(), strict=True))
    pos = c > 0
    assert ((m[pos] >= 128) & (m[pos] <= 255)).all()
    np.testing.assert_allclose(m[pos] * 2.0 ** -s[pos], c[pos], rtol=1 / 256)
    assert L.gain(np.array([-5]), 128, 8).tolist() == [-3]  # floor(−2.5)
    assert L.gain(np.array([5]), 128, -1).tolist() == [1280]
    thr = L.quant_thresholds(np.array([0.25]), L.EPS_FRAC)[0]
    assert 257 > thr and not 256 > thr
    spec = _spec()
    assert L.decay_keep(spec) == 3896 and L.consts(spec).thmu == 81
    np.testing.assert_array_equal(L.quant_weights(np.array([0.0, 1 / 128, 3.99, 5.0])),
                                  [0, 1, 255, 255])


@pytest.mark.parametrize(("kw", "match"), [
    (dict(arithmetic="int"), "must be one of"),
    (dict(arithmetic="loihi", layers=2), "layers=2"),
    (dict(arithmetic="loihi", settle=0.1), "settle=0.1"),
    (dict(arithmetic="loihi", clocked_input=False), "clocked_input"),
    (dict(arithmetic="loihi", fixed_point=True), "fixed_point"),
])
def test_spec_refuses(kw: dict, match: str) -> None:
    base = dict(width=32, height=32, pool=4, layers=1, clocked_input=True, settle=0.0)
    with pytest.raises(ValueError, match=match):
        ModelSpec(**{**base, **kw})


def test_reference_backend_refuses_loihi() -> None:
    with pytest.raises(ValueError, match="numba backend only"):
        Network(_spec(), backend="reference")
