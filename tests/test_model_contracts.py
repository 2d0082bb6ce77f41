"""Contracts of Network: chunking invariance, determinism, checkpoints, frozen learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_helpers import bars, batches, windows

from augury.model.network import Network
from augury.model.spec import ModelSpec

T1 = 120_000
EV = bars(96, 64, T1, seed=5, noise_rate_hz=10.0, n_objects=3)
SPEC = ModelSpec(width=96, height=64, pool=4, layers=2, tick_us=1_000, horizon_us=5_000)


def _run(spec: ModelSpec, cuts: list[int], t0: int = 0, t1: int = T1) -> Network:
    net = Network(spec)
    for b in batches(EV, t0, t1, cuts):
        net.step(b)
    return net


def _states_equal(a: Network, b: Network) -> None:
    for name in a.state._fields:
        np.testing.assert_array_equal(getattr(a.state, name), getattr(b.state, name),
                                      err_msg=name)


WHOLE = _run(SPEC, [])


@settings(max_examples=12, deadline=None)
@given(st.lists(st.integers(1, T1 - 1), min_size=1, max_size=40))
def test_chunking_invariance(cuts: list[int]) -> None:
    """Any split of the same stream into batches gives bit-identical state and readout."""
    # also cut exactly at event times and at tick boundaries
    cuts = cuts + [int(EV["t"][len(EV) // 3]), 50_000]
    net = _run(SPEC, cuts)
    _states_equal(net, WHOLE)
    ra, rb = net.readout(), WHOLE.readout()
    np.testing.assert_array_equal(ra.rate_hz, rb.rate_hz)
    np.testing.assert_array_equal(ra.rate_var, rb.rate_var)
    for ma, mb in zip(ra.mu + ra.sigma, rb.mu + rb.sigma, strict=True):
        np.testing.assert_array_equal(ma, mb)
    assert ra.free_energy == rb.free_energy and ra.surprise_z == rb.surprise_z


def test_step_counters_add_up() -> None:
    net = Network(SPEC)
    outs = [net.step(b) for b in windows(EV, 0, T1, 7_000)]
    assert sum(r.events for r in outs) == EV.size
    assert sum(r.spikes_up for r in outs) == WHOLE.state.counters[1]
    assert sum(r.synops for r in outs) == WHOLE.state.counters[3]


def test_deterministic_for_a_seed() -> None:
    again = _run(SPEC, [30_000, 60_000])
    _states_equal(again, WHOLE)
    other = _run(ModelSpec(**{**SPEC.to_dict(), "seed": 1}), [])
    assert not np.array_equal(other.state.W1, WHOLE.state.W1)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    net = _run(SPEC, [], 0, 60_000)
    path = tmp_path / "model.npz"
    net.save(path)
    loaded = Network.load(path)
    assert loaded.spec == net.spec
    _states_equal(loaded, net)
    copy = Network(SPEC)
    copy.load_state_dict(net.state_dict())
    _states_equal(copy, net)
    # all three continue identically
    rest = batches(EV, 60_000, T1, [90_000])
    for n in (net, loaded, copy):
        for b in rest:
            n.step(b)
    _states_equal(loaded, net)
    _states_equal(copy, net)
    _states_equal(net, WHOLE)


def test_corrupt_checkpoint_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="bad.npz"):
        Network.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="no __spec__"):
        Network.load(other)


def test_load_state_dict_checks_shapes() -> None:
    d = WHOLE.state_dict()
    d["W1"] = d["W1"][:, :, :2]
    with pytest.raises(ValueError, match="W1"):
        Network(SPEC).load_state_dict(d)


def test_frozen_learning_leaves_learned_arrays_unchanged() -> None:
    net = _run(SPEC, [], 0, 60_000)
    before = net.learned_arrays()
    mu_before = net.state.mu1.copy()
    net.freeze_learning()
    assert not net.learning
    for b in batches(EV, 60_000, T1, [80_000]):
        net.step(b)
    for name, arr in net.learned_arrays().items():
        np.testing.assert_array_equal(arr, before[name], err_msg=name)
    assert not np.array_equal(net.state.mu1, mu_before)  # inference still runs
    net.resume_learning()
    net.step(batches(EV, T1, T1 + 20_000, [])[0])
    assert not np.array_equal(net.state.W1, before["W1"])


def test_reset_restores_initial_state() -> None:
    net = _run(SPEC, [], 0, 30_000)
    net.reset()
    _states_equal(net, Network(SPEC))


def test_readout_shapes_and_values() -> None:
    r = WHOLE.readout()
    spec = SPEC
    assert r.t_us == T1
    assert [m.shape for m in r.mu] == [spec.grid1 + (spec.k1,), spec.grid2 + (spec.k2,)]
    assert [s.shape for s in r.sigma] == [m.shape for m in r.mu]
    assert r.rate_hz.shape == r.rate_var.shape == spec.pooled_shape + (2,)
    assert r.surprise_map.shape == spec.grid1
    for a in (*r.mu, *r.sigma, r.rate_hz, r.rate_var, r.surprise_map):
        assert a.dtype == np.float32 and np.all(np.isfinite(a))
    assert all((s > 0).all() for s in r.sigma)
    assert r.rate_hz.min() >= 0 and r.rate_var.min() >= 0
    # the count distribution is a Poisson mixture: variance at least the mean
    assert r.count_mean.shape == r.count_var.shape == spec.pooled_shape + (2,)
    assert np.all(r.count_var >= r.count_mean * (1 - 1e-5))
    np.testing.assert_allclose(r.rate_hz, r.count_mean / (spec.horizon_us * 1e-6), rtol=1e-5)
    assert r.rate_hz.max() > 100.0  # the bars are predicted somewhere (events/s)
    assert r.surprise_total >= float(r.surprise_map.sum()) - 1e-3


def test_silence_costs_nothing() -> None:
    """After the scene stops, columns go silent and later ticks are skipped entirely."""
    net = _run(SPEC, [], 0, T1)
    assert net.state.clock[3] > 0  # active columns at the end of the scene
    net.step(batches(EV, T1, T1 + 500_000, [])[0])  # 0.5 s of silence
    assert net.state.clock[3] == 0 and net.state.active.sum() == 0
    ticks = int(net.state.counters[4])
    net.step(batches(EV, T1 + 500_000, T1 + 10_000_000, [])[0])  # 9.5 s more silence
    assert int(net.state.counters[4]) == ticks
    assert np.all(net.state.mu1 == 0) and np.all(net.state.z1 == 0)


def _events(ts: list[int], xs: list[int], ys: list[int]) -> np.ndarray:
    from augury.events import EVENT_DTYPE

    ev = np.zeros(len(ts), EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = ts, xs, ys, 1
    return ev


def test_quiet_columns_are_polled_only_at_epochs() -> None:
    """A column that got one event and rested is decayed and swept only at learning epochs
    (every 5 ms here) while a busy column elsewhere keeps the 1 ms clock running; its
    traces stay exact: the read-out's trace is Σ e^{−(t − t_i)/τ} over its events."""
    from augury.model.network import traces_at

    spec = ModelSpec(width=96, height=64, pool=4, tick_us=1_000, learn_us=5_000,
                     horizon_us=10_000)
    busy_t = np.arange(0, 23_000, 50)  # column 0 gets an event every 50 µs
    quiet_t = [200, 300]  # column (1, 2) gets two events early, then nothing
    ev = np.concatenate([_events(list(busy_t), [1] * busy_t.size, [1] * busy_t.size),
                         _events(quiet_t, [40, 41], [20, 21])])
    ev = ev[np.argsort(ev["t"], kind="stable")]
    net = Network(spec)
    quiet = (20 // spec.pool // spec.column) * spec.grid1[1] + 40 // spec.pool // spec.column
    assert quiet != 0
    polls = []
    for b in windows(ev, 0, 23_000, spec.tick_us):
        net.step(b)
        polls.append(int(net.state.tcol[quiet]))
        assert net.state.tcol[0] == b.t_end_us  # the busy column is polled every tick
    # once its beliefs settled, the quiet column's anchor moves only at epochs (5 ms) and
    # at the tick after one (the epoch's weight change wakes every column for a step)
    late = sorted(set(polls[10:]))
    assert set(late) <= {10_000, 11_000, 15_000, 16_000, 20_000, 21_000}, polls
    assert {15_000, 20_000} <= set(late), polls
    z = traces_at(spec, net.state, 23_000)[quiet]
    want = sum(np.exp(-(23_000 - t) / spec.tau_us) for t in quiet_t)
    assert z.sum() == pytest.approx(want, rel=1e-12)


def test_readout_is_repeatable() -> None:
    net = Network(SPEC)
    r1 = net.step(batches(EV, 0, 20_000, [])[0])
    r2 = net.readout()
    assert r1.events == r2.events > 0 and r1.synops == r2.synops
    np.testing.assert_array_equal(r1.rate_hz, r2.rate_hz)


@pytest.mark.parametrize(("target", "direction"), [(0.5, 1.0), (200.0, -1.0)])
def test_homeostasis_moves_thresholds_toward_target(target: float, direction: float) -> None:
    """Gains rise (fewer spikes) above the target rate and fall below it; off at rate 0."""
    spec = ModelSpec(**{**SPEC.to_dict(), "homeo_rate": target})
    net = _run(spec, [], 0, 60_000)
    g = net.state.gain1[net.state.gain1 != 1.0]
    assert g.size > 0 and np.all(np.sign(np.log(g)) == direction)
    np.testing.assert_array_equal(WHOLE.state.gain1, 1.0)
