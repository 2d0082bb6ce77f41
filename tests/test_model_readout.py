"""The numba read-out (``compute_readout``) agrees with its NumPy twin on the same state.

Covers 1 and 2 layers, per-column weights, fixed point, an odd geometry, random states,
a fresh and a reset network, silence, a real Prophesee recording; the returned arrays
are fresh (callers may keep them); non-finite state reaches the read-out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_helpers import bars, batches, noise, windows

from augury.model import readout_kernels as rk
from augury.model.network import Network, Readout, compute_readout, compute_readout_numpy
from augury.model.spec import ModelSpec
from augury.model.state import State, init_state
from augury.pipeline import readout_is_finite

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EVT2 = DATA / "prophesee" / "evt2_sample.raw"


def assert_same_readout(new: Readout, ref: Readout, what: str = "") -> None:
    """Every published field equal to float tolerance (float32 arrays, float64 scalars)."""
    assert new.t_us == ref.t_us, what
    fields = [("mu", new.mu, ref.mu), ("sigma", new.sigma, ref.sigma)]
    fields += [(n, [getattr(new, n)], [getattr(ref, n)])
               for n in ("rate_hz", "rate_var", "surprise_map", "surprise_zmap")]
    for name, xs, ys in fields:
        assert len(xs) == len(ys), f"{what} {name}: {len(xs)} vs {len(ys)} layers"
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            msg = f"{what} {name}[{i}]"
            assert x.dtype == y.dtype == np.float32, msg
            assert x.shape == y.shape, msg
            scale = max(1.0, float(np.abs(y).max()) if y.size else 1.0)
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * scale, err_msg=msg)
    assert new.count_observed.dtype == ref.count_observed.dtype == np.float32, what
    np.testing.assert_array_equal(new.count_observed, ref.count_observed, err_msg=what)
    assert (new.obs_t_start_us, new.obs_t_end_us) == (ref.obs_t_start_us,
                                                      ref.obs_t_end_us), what
    for name in ("surprise_total", "surprise_z", "free_energy"):
        a, b = getattr(new, name), getattr(ref, name)
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9 * max(1.0, abs(b))), f"{what} {name}"


def check_along(net: Network, stream: list) -> int:
    """Advance batch by batch, comparing both read-outs after each; returns batches checked."""
    for b in stream:
        net.advance(b)
        assert_same_readout(compute_readout(net.spec, net.state, net.t_us),
                            compute_readout_numpy(net.spec, net.state, net.t_us),
                            f"t={net.t_us}")
    return len(stream)


CONFIGS = {
    "one-layer": dict(layers=1),
    "two-layers": dict(layers=2),
    "per-column": dict(layers=2, per_column_weights=True, k1=4, k2=3),
    "per-column-one-layer": dict(layers=1, per_column_weights=True, k1=3),
    "fixed-point": dict(layers=2, fixed_point=True, frac_bits=14),
    "small-pool": dict(pool=4, column=2, k1=5, tick_us=500, horizon_us=2_000),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity_synthetic_scene(name: str) -> None:
    t1 = 40_000
    ev = bars(64, 48, t1, seed=3, noise_rate_hz=5.0)
    net = Network(ModelSpec(width=64, height=48, **CONFIGS[name]))
    check_along(net, windows(ev, 0, t1, 2_500))
    assert net.state.active.any() and np.abs(net.state.mu1).sum() > 0  # a busy state


def test_parity_odd_geometry() -> None:
    """Sensor not a multiple of pool·column: edge columns reach beyond the pooled grid."""
    t1 = 30_000
    ev = bars(61, 43, t1, seed=5, noise_rate_hz=20.0)
    net = Network(ModelSpec(width=61, height=43, pool=3, column=3, k1=4, k2=5))
    check_along(net, windows(ev, 0, t1, 3_000))


def test_parity_fresh_reset_and_silence() -> None:
    spec = ModelSpec(width=64, height=48, pool=4)  # 3 × 4 columns
    net = Network(spec)
    for t in (0, 12_345):  # fresh: no column active, all beliefs 0
        assert_same_readout(compute_readout(spec, net.state, t),
                            compute_readout_numpy(spec, net.state, t), "fresh")
    ev = bars(64, 48, 30_000, seed=1)
    check_along(net, windows(ev, 0, 30_000, 5_000))
    # silence: columns decay below z_off one by one, then all are silent
    check_along(net, windows(ev[:0], 30_000, 630_000, 50_000))
    assert net.state.active.sum() == 0
    # sparse noise after the silence: a few columns re-activate next to silent ones
    sparse = noise(24, 20, 20_000, 100.0, seed=2, t0_us=630_000)  # top-left corner only
    check_along(net, windows(sparse, 630_000, 650_000, 4_000))
    assert 0 < net.state.active.sum() < spec.n1
    net.reset()
    assert_same_readout(net.readout(), compute_readout_numpy(spec, net.state, net.t_us),
                        "reset")


def _random_state(spec: ModelSpec, rng: np.random.Generator) -> State:
    """A state of the spec's shapes with random values in each array's natural range."""
    st = init_state(spec)
    t_now = 50_000

    def pos(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, a.shape)

    active = (rng.random(spec.n1) < 0.6).astype(np.uint8)
    return st._replace(
        z1=pos(st.z1, 0, 5), tcol=rng.integers(0, t_now + 5_000, spec.n1), active=active,
        xhat1=pos(st.xhat1, 0, 5), pi1=np.exp(rng.uniform(np.log(0.01), np.log(100),
                                                          st.pi1.shape)),
        mu1=pos(st.mu1, 0, 2) * (rng.random(st.mu1.shape) < 0.5), mus1=pos(st.mus1, 0, 2),
        W1=pos(st.W1, 0, 4), pred2=pos(st.pred2, 0, 2), pi2=pos(st.pi2, 0.01, 100),
        mu2=pos(st.mu2, 0, 2) * (rng.random(st.mu2.shape) < 0.5),
        nact2=rng.integers(0, 5, spec.n2), W2=pos(st.W2, 0, 4),
        A=rng.normal(0, 0.5, st.A.shape), rho=pos(st.rho, 0, 1), R=pos(st.R, 0, 0.3),
        gh=pos(st.gh, 0, 1),
        vF=pos(st.vF, 0.01, 3), baseline=np.array([rng.uniform(0, 50), rng.uniform(1, 9)]),
        sbase1=np.stack([pos(st.tcol, 0, 5), pos(st.tcol, 0.1, 4)], axis=1),
    )


@pytest.mark.parametrize("seed", range(4))
def test_parity_random_states(seed: int) -> None:
    """Arbitrary states (not only those the engine reaches) on varied geometries."""
    rng = np.random.default_rng(seed)
    for layers in (1, 2):
        spec = ModelSpec(width=int(rng.integers(8, 90)), height=int(rng.integers(8, 70)),
                         pool=int(rng.integers(1, 5)), column=int(rng.integers(1, 5)),
                         k1=int(rng.integers(1, 9)), k2=int(rng.integers(1, 9)),
                         layers=layers, per_column_weights=bool(rng.random() < 0.5))
        st = _random_state(spec, rng)
        assert_same_readout(compute_readout(spec, st, 50_000),
                            compute_readout_numpy(spec, st, 50_000), f"{spec}")


@pytest.mark.skipif(not EVT2.exists(), reason=f"real recording not found: {EVT2}")
def test_parity_real_recording() -> None:
    """Prophesee EVT 2.0 busy scene (640×480, default spec), read through open_source."""
    from augury.adapters import open_source

    with open_source(EVT2) as src:
        ev = src.read_all()
        spec = ModelSpec(width=src.geometry.width, height=src.geometry.height)
    ev = ev[ev["t"] < ev["t"][0] + 25_000].copy()
    t0 = int(ev["t"][0])
    net = Network(spec)
    stream = batches(ev, t0, t0 + 25_000, list(range(t0 + 1_000, t0 + 25_000, 1_000)))
    net.advance(stream[0])
    for k in range(1, len(stream), 3):  # read out every 3 ms, after 1-ms batches
        for b in stream[k:k + 3]:
            net.advance(b)
        assert_same_readout(net.readout(), compute_readout_numpy(spec, net.state, net.t_us),
                            f"t={net.t_us}")
    assert net.state.active.sum() > spec.n1 // 10


def test_returned_arrays_are_fresh() -> None:
    """Nothing returned aliases the state or a later read-out (callers keep them)."""
    spec = ModelSpec(width=64, height=48, layers=2)
    net = Network(spec)
    ev = bars(64, 48, 20_000, seed=4)
    b1, b2 = windows(ev, 0, 20_000, 10_000)
    r1 = net.step(b1)
    kept = [a.copy() for a in (*r1.mu, *r1.sigma, r1.rate_hz, r1.rate_var, r1.surprise_map)]
    r2 = net.step(b2)
    arrays = [*r1.mu, *r1.sigma, r1.rate_hz, r1.rate_var, r1.surprise_map]
    for a, k in zip(arrays, kept, strict=True):
        np.testing.assert_array_equal(a, k)  # unchanged by the next step and read-out
        assert a.flags.c_contiguous and a.flags.writeable
        for other in (*r2.mu, *r2.sigma, r2.rate_hz, r2.rate_var, r2.surprise_map,
                      *net.state):
            assert not np.shares_memory(a, other)
    assert not np.array_equal(r1.rate_hz, r2.rate_hz)


@pytest.mark.parametrize("field", ["pi1", "W1", "gh", "rho", "R", "A", "mu1", "mu2",
                                   "W2", "pi2", "pred2", "xhat1", "z1", "Lmix"])
def test_non_finite_state_reaches_readout(field: str) -> None:
    """A NaN in any array the read-out reads (on an active column) makes it non-finite,
    as with the twin: the daemon rolls back on that."""
    spec = ModelSpec(width=64, height=48, layers=2)
    net = Network(spec)
    ev = bars(64, 48, 20_000, seed=4)
    for b in windows(ev, 0, 20_000, 5_000):
        net.advance(b)
    st = net.state
    j = int(np.flatnonzero(st.active)[0])
    big = int(np.flatnonzero(st.nact2)[0])
    arr = getattr(st, field)
    index = {"z1": j, "xhat1": j, "pi1": j, "gh": j, "rho": j, "mprev": j, "Lmix": j, "mu1": j,
             "mu2": big, "pi2": big, "pred2": big}.get(field, 0)
    arr[index].flat[0] = np.nan
    assert not readout_is_finite(compute_readout_numpy(spec, st, net.t_us))
    assert not readout_is_finite(compute_readout(spec, st, net.t_us))


def test_log_sum_matches_numpy() -> None:
    rng = np.random.default_rng(7)
    v = np.exp(rng.uniform(-300, 300, 2_000))  # products would over- and underflow
    assert rk.log_sum(v[None], 0) == pytest.approx(float(np.log(v).sum()), rel=1e-12)
    v = rng.uniform(0.01, 100.0, 64)
    assert rk.log_sum(v[None], 0) == pytest.approx(float(np.log(v).sum()), rel=1e-12, abs=1e-12)
    assert rk.log_sum(v[None, :0], 0) == 0.0
    for bad in (0.0, -1.0, np.nan):
        w = v.copy()
        w[5] = bad
        assert np.isnan(rk.log_sum(w[None], 0))


def histogram(spec: ModelSpec, ev: np.ndarray, t0_us: int, t1_us: int) -> np.ndarray:
    """Events with t0_us ≤ t < t1_us counted per pooled cell and polarity, (Hp, Wp, 2)."""
    sel = ev[(ev["t"] >= t0_us) & (ev["t"] < t1_us)]
    out = np.zeros((*spec.pooled_shape, 2), np.int64)
    np.add.at(out, (sel["y"].astype(np.int64) // spec.pool,
                    sel["x"].astype(np.int64) // spec.pool, sel["p"].astype(np.int64)), 1)
    return out


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_observed_counts_are_the_last_whole_window(backend: str) -> None:
    """count_observed equals a direct histogram of the events in [obs_t_start_us,
    obs_t_end_us), the last horizon window ended by the read-out time, at read-out times
    that do not align with window ends, with events exactly on window edges, through a
    silence (every column goes off) longer than the rate experts' ``mix_kmax`` windows and
    a wake-up, on an odd geometry."""
    spec = ModelSpec(width=61, height=43, pool=3, column=3, k1=4, k2=5, horizon_us=4_000,
                     tick_us=1_000, mix_taus_us=(20_000, 60_000))  # mix_kmax = 60 windows
    h = spec.horizon_us
    busy = bars(61, 43, 30_000, seed=5, noise_rate_hz=20.0)
    edge = busy[:50].copy()  # events exactly at window edges count in the window they open
    edge["t"] = 12_000
    late = noise(61, 43, 10_000, 50.0, seed=7, t0_us=600_000)
    ev = np.sort(np.concatenate([busy, edge, late]), order="t", kind="stable")
    rng = np.random.default_rng(0)
    cuts = sorted({int(c) for c in rng.integers(1, 610_000, 80)} | {12_000, 12_001})
    net = Network(spec, backend=backend)
    seen = set()
    silent = capped = False
    for b in batches(ev, 0, 610_000, cuts):  # the stream starts on a tick: T = 0 ends [-Δ, 0)
        r = net.step(b)
        assert r.obs_t_end_us == (r.t_us // h) * h and r.obs_t_start_us == r.obs_t_end_us - h
        want = histogram(spec, ev, r.obs_t_start_us, r.obs_t_end_us)
        assert r.count_observed.shape == r.count_mean.shape
        np.testing.assert_array_equal(r.count_observed, want, err_msg=f"t={r.t_us}")
        seen.add(bool(want.any()))
        silent = silent or not net.state.active.any()
        capped = capped or net.state.mixage[1] >= 60
    assert seen == {True, False}  # busy windows and silent ones were both checked
    assert silent and capped and net.state.active.any()  # all went off (> mix_kmax), woke


def test_observed_counts_restart_with_the_stream() -> None:
    """After a restart of the stream's clock no window has ended: no bounds, zero counts."""
    from augury.pipeline import restart_stream

    spec = ModelSpec(width=64, height=48)
    net = Network(spec)
    ev = bars(64, 48, 30_000, seed=1)
    r = net.step(windows(ev, 0, 30_000, 30_000)[0])
    assert r.count_observed.sum() == len(ev[(ev["t"] >= 20_000) & (ev["t"] < 30_000)]) > 0
    restart_stream(net)
    r = net.readout()
    assert (r.obs_t_start_us, r.obs_t_end_us) == (None, None)
    assert not r.count_observed.any()
