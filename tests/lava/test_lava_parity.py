"""Lava floating_pt layer 1 against the numba engine (``clocked_input``, ``settle = 0``) on a
crop of a real recording, weights and precisions learned by numba, learning frozen."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lava.magma", reason="lava-nc is not installed (Python 3.10 venv only: "
                    "make lava-test)")

from lava_helpers import run_numba  # noqa: E402

from augury.events import EVENT_DTYPE  # noqa: E402
from augury.lava.layer1 import LavaLayer1  # noqa: E402
from augury.model.network import Network  # noqa: E402
from augury.model.state import C_UP, State  # noqa: E402

FIELDS = ("mu1", "mus1", "u1", "z1", "xhat1", "eps1")


def _copy(st: State) -> State:
    return State(*[a.copy() for a in st])


def _diff(a: State, b: State) -> dict[str, float]:
    return {k: float(np.abs(getattr(a, k) - getattr(b, k)).max()) for k in FIELDS}


def _trained_copy(trained: Network) -> Network:
    net = Network(trained.spec)
    net.load_state_dict(trained.state_dict())
    return net


def test_one_tick_restarts(trained: Network, rotdisk_crop: np.ndarray) -> None:
    """From numba's state at each of 100 ticks, one Lava tick agrees with numba's within
    1e-12 (every variable of the error and belief units)."""
    net = _trained_copy(trained)
    t0 = net.t_us
    n = 100
    states = [_copy(net.state)]
    for i in range(n):
        run_numba(net, rotdisk_crop, t0 + i * 1_000, t0 + (i + 1) * 1_000)
        states.append(_copy(net.state))
    assert states[-1].counters[C_UP] > states[0].counters[C_UP]  # error spikes happened
    worst = dict.fromkeys(FIELDS, 0.0)
    with LavaLayer1(net.spec, states[0], chunk_ticks=1) as lav:
        for i in range(n):
            if i:
                lav.load(states[i])
            ev = rotdisk_crop[(rotdisk_crop["t"] >= t0 + i * 1_000)
                              & (rotdisk_crop["t"] < t0 + (i + 1) * 1_000)]
            lav.advance(ev, 1)
            got = lav.state()
            np.testing.assert_array_equal(got.active, states[i + 1].active)
            for k, v in _diff(got, states[i + 1]).items():
                worst[k] = max(worst[k], v)
    print("one-tick restarts, max |Δ| over", n, "ticks:", worst)
    assert max(worst.values()) <= 1e-12, worst
    assert np.abs(states[-1].mu1).max() > 0.1  # beliefs are not trivially zero


@pytest.mark.parametrize(("gap", "connections"), [(False, "dense"), (True, "dense"),
                                                  (True, "sparse")],
                         ids=["plain", "silence-and-wake", "silence-and-wake-sparse"])
def test_trajectory(trained: Network, rotdisk_crop: np.ndarray, gap: bool,
                    connections: str) -> None:
    """250 ticks (≥ 50 asked) of Lava and numba from the same state agree within 1e-9.

    ``silence-and-wake``: column 0's events are cut for 160 ms, so it goes silent (reset at
    a learning epoch) and wakes up when its events come back.
    """
    net = _trained_copy(trained)
    t0 = net.t_us
    n = 250
    ev = rotdisk_crop[(rotdisk_crop["t"] >= t0) & (rotdisk_crop["t"] < t0 + n * 1_000)]
    if gap:
        col0 = (ev["x"] < 16) & (ev["y"] < 16)  # pool 4, column 4: column 0 is 16×16 px
        cut = col0 & (ev["t"] >= t0 + 10_000) & (ev["t"] < t0 + 170_000)
        ev = ev[~cut]
    active0 = []
    st0 = _copy(net.state)
    step = 10
    with LavaLayer1(net.spec, st0, chunk_ticks=step * 2, connections=connections) as lav:
        assert lav.sparse == (connections == "sparse")
        worst = 0.0
        for i in range(0, n, step):
            a, b = t0 + i * 1_000, t0 + (i + step) * 1_000
            run_numba(net, ev, a, b)
            lav.advance(ev[(ev["t"] >= a) & (ev["t"] < b)], step)
            got = lav.state()
            np.testing.assert_array_equal(got.active, net.state.active)
            active0.append(int(net.state.active[0]))
            worst = max(worst, *_diff(got, net.state).values())
    print(f"trajectory ({'gap' if gap else 'plain'}, {connections}), {n} ticks: "
          f"max |Δ| = {worst:.3g}")
    assert worst <= 1e-9
    if gap:
        assert 0 in active0 and active0[-1] == 1, active0  # silenced, then woke


def test_numba_lava_numba_round_trip(trained: Network, rotdisk_crop: np.ndarray) -> None:
    """Learned in numba, served by Lava for 60 ticks, continued in numba for 60 more: layer 1
    agrees within 1e-9 with numba running all 120 ticks (learning frozen throughout)."""
    ref = _trained_copy(trained)
    t0 = ref.t_us
    run_numba(ref, rotdisk_crop, t0, t0 + 120_000)
    ev = rotdisk_crop[(rotdisk_crop["t"] >= t0) & (rotdisk_crop["t"] < t0 + 60_000)]
    with LavaLayer1(trained.spec, trained.state, chunk_ticks=30) as lav:
        lav.advance(ev, 60)
        back = lav.state()
    net = Network(trained.spec)
    net.load_state_dict({**dict(zip(back._fields, back, strict=True)), "__learning__":
                         np.array([0])})
    assert net.t_us == t0 + 60_000 and not net.learning
    run_numba(net, rotdisk_crop, t0 + 60_000, t0 + 120_000)
    worst = max(_diff(net.state, ref.state).values())
    np.testing.assert_array_equal(net.state.active, ref.state.active)
    for k in ("W1", "pi1", "h1"):
        np.testing.assert_array_equal(getattr(net.state, k), getattr(ref.state, k), err_msg=k)
    print(f"numba → Lava → numba, 120 ticks: max |Δ| = {worst:.3g}")
    assert worst <= 1e-9


def test_feed_follows_numba_batches(trained: Network, rotdisk_crop: np.ndarray) -> None:
    """``feed`` takes the daemon's batches (any span, here 3.7 ms) like ``Network.advance``;
    wherever a batch ends on a tick both engines hold the same layer 1 (within 1e-9)."""
    net = _trained_copy(trained)
    t0 = net.t_us
    span, n_batches = 3_700, 27  # 99.9 ms; batch ends on a tick at multiples of 37 ms
    with LavaLayer1(trained.spec, trained.state, chunk_ticks=16) as lav:
        checked = 0
        for i in range(n_batches):
            a, b = t0 + i * span, t0 + (i + 1) * span
            run_numba(net, rotdisk_crop, a, b)
            ran = lav.feed(rotdisk_crop[(rotdisk_crop["t"] >= a) & (rotdisk_crop["t"] < b)], b)
            assert lav.t_next_us == (b // 1_000 + 1) * 1_000 and ran >= 3
            assert np.abs(lav.beliefs() - lav.state().mu1).max() == 0.0
            if b % 1_000 == 0:
                assert max(_diff(lav.state(), net.state).values()) <= 1e-9
                checked += 1
        assert checked == 2


def test_long_run_reconstruction_quality(trained: Network, rotdisk_crop: np.ndarray) -> None:
    """Over 1,500 ticks the states drift apart by summation order (not asserted); the
    reconstruction quality Σ(z − x̂)² / Σz², sampled every 5 ticks, agrees within 1e-4
    (relative), and so does the mean belief."""
    net = _trained_copy(trained)
    t0 = net.t_us
    n, every = 1_500, 5
    ev = rotdisk_crop[(rotdisk_crop["t"] >= t0) & (rotdisk_crop["t"] < t0 + n * 1_000)]
    sums = np.zeros((2, 3))  # engine × [Σ(z − x̂)², Σz², Σμ]
    drift = 0.0
    with LavaLayer1(net.spec, net.state, chunk_ticks=every) as lav:
        for i in range(0, n, every):
            a, b = t0 + i * 1_000, t0 + (i + every) * 1_000
            run_numba(net, ev, a, b)
            lav.advance(ev[(ev["t"] >= a) & (ev["t"] < b)], every)
            for row, st in enumerate((lav.state(), net.state)):
                sums[row] += [((st.z1 - st.xhat1) ** 2).sum(), (st.z1 ** 2).sum(),
                              st.mu1.sum()]
            drift = max(drift, *_diff(lav.state(), net.state).values())
    rec = sums[:, 0] / sums[:, 1]
    print(f"{n} ticks: reconstruction Lava {rec[0]:.6f} numba {rec[1]:.6f}; "
          f"mean μ {sums[0, 2]:.6g} / {sums[1, 2]:.6g}; max state drift {drift:.3g}")
    assert abs(rec[0] - rec[1]) <= 1e-4 * rec[1]
    assert abs(sums[0, 2] - sums[1, 2]) <= 1e-4 * abs(sums[1, 2])


def test_load_refuses_other_learned_arrays(trained: Network) -> None:
    """``load`` swaps the inference state only: a State with other weights is refused."""
    from augury.lava import LavaError

    with LavaLayer1(trained.spec, trained.state, chunk_ticks=1) as lav:
        lav.advance(np.zeros(0, EVENT_DTYPE), 1)
        other = _copy(trained.state)
        other.W1[...] *= 1.01
        with pytest.raises(LavaError, match="W1 differs"):
            lav.load(other)
