"""``LavaNetwork`` in-process (``LocalLayer1``): the host's clocked work on Lava's layer 1 gives
numba's read-out, through a column going silent and waking, after a state reload, and with
learning on (the host learns, Lava gets the new parameters every epoch)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lava.magma", reason="lava-nc is not installed (Python 3.10 venv only: "
                    "make lava-test)")

from augury.events import EventBatch  # noqa: E402
from augury.lava.backend import LavaNetwork, LocalLayer1, clocked_ticks  # noqa: E402
from augury.lava.convert import LavaSpecError  # noqa: E402
from augury.model.network import Network, Readout  # noqa: E402
from augury.model.spec import ModelSpec  # noqa: E402


def test_clocked_ticks() -> None:
    spec = ModelSpec(width=32, height=32, pool=4, learn_us=5_000, horizon_us=10_000)
    assert clocked_ticks(spec, 1_000, 21_000) == [5_000, 10_000, 15_000, 20_000]
    assert clocked_ticks(spec, 5_000, 5_000) == [5_000]
    assert clocked_ticks(spec, 6_000, 9_999) == []
    spec2 = ModelSpec(width=32, height=32, pool=4, learn_us=3_000, horizon_us=10_000)
    assert clocked_ticks(spec2, 1_000, 12_000) == [3_000, 6_000, 9_000, 10_000, 12_000]


def _frozen(trained: Network) -> Network:
    net = Network(trained.spec)
    net.load_state_dict(trained.state_dict())
    net.freeze_learning()
    return net


def _batches(ev: np.ndarray, t0: int, t1: int, span: int) -> list[EventBatch]:
    return [EventBatch(ev[(ev["t"] >= a) & (ev["t"] < a + span)], a, a + span, i)
            for i, a in enumerate(range(t0, t1, span))]


def _close(a: Readout, b: Readout) -> dict[str, float]:
    """Largest differences between two read-outs (float32 maps, relative for counts)."""
    return {"mu": float(np.abs(a.mu[0] - b.mu[0]).max()),
            "count_mean": float(np.abs(a.count_mean - b.count_mean).max()
                                / max(1.0, float(np.abs(b.count_mean).max()))),
            "surprise": abs(a.surprise_total - b.surprise_total)
            / max(1.0, abs(b.surprise_total)),
            "free_energy": abs(a.free_energy - b.free_energy) / max(1.0, abs(b.free_energy))}


def test_backend_reads_out_like_numba_through_silence_and_wake(
        trained: Network, rotdisk_crop: np.ndarray) -> None:
    """300 ms in 7.5 ms batches (not aligned with the 5 ms epochs, the 10 ms horizon or, every
    other batch, the 1 ms tick), column 0's events cut for 160 ms: at every batch ending on
    a tick, the read-out (beliefs, count forecast, surprise, F) and the column flags agree
    with numba's (between ticks Lava holds the last events: docs/lava.md); column 0 is
    silenced and wakes in both."""
    ref = _frozen(trained)
    t0 = ref.t_us
    ev = rotdisk_crop[(rotdisk_crop["t"] >= t0) & (rotdisk_crop["t"] < t0 + 300_000)]
    col0 = (ev["x"] < 16) & (ev["y"] < 16)
    ev = ev[~(col0 & (ev["t"] >= t0 + 10_000) & (ev["t"] < t0 + 170_000))]
    lav = LavaNetwork.from_network(ref, LocalLayer1())
    worst: dict[str, float] = {}
    active0 = []
    try:
        for b in _batches(ev, t0, t0 + 300_000, 7_500):
            counts = lav.advance(b)
            ref.advance(b)
            assert counts.events == b.events.size
            if b.t_end_us % 1_000 == 0:  # at a tick both engines hold every event
                np.testing.assert_array_equal(lav.state.active, ref.state.active)
                for k, v in _close(lav.readout(), ref.readout()).items():
                    worst[k] = max(worst.get(k, 0.0), v)
            active0.append(int(ref.state.active[0]))
    finally:
        lav.close()
    print(f"backend vs numba, 300 ms with silence and wake: {worst}")
    assert 0 in active0 and active0[-1] == 1, active0
    assert lav.syncs >= 60 + 40  # a sync per clocked tick (60) and per batch (40)
    assert worst["mu"] <= 1e-6 and worst["count_mean"] <= 1e-5, worst
    assert worst["surprise"] <= 1e-6 and worst["free_energy"] <= 1e-6, worst
    assert np.abs(ref.readout().count_mean).max() > 0.1  # forecasts are not trivially zero


def test_backend_reloads_a_state(trained: Network, rotdisk_crop: np.ndarray) -> None:
    """A state_dict taken mid-run and loaded back (a roll-back) re-anchors the Lava side and
    continues like numba; a two-layer spec is refused."""
    ref = _frozen(trained)
    t0 = ref.t_us
    ev = rotdisk_crop[(rotdisk_crop["t"] >= t0) & (rotdisk_crop["t"] < t0 + 100_000)]
    bs = _batches(ev, t0, t0 + 100_000, 10_000)
    lav = LavaNetwork.from_network(ref, LocalLayer1())
    try:
        assert lav.learning is False
        for b in bs[:5]:
            lav.advance(b)
            ref.advance(b)
        saved = lav.state_dict()
        lav.advance(bs[5])  # moves on, then goes back to the saved state
        lav.load_state_dict(saved)
        for b in bs[5:]:
            lav.advance(b)
            ref.advance(b)
        d = _close(lav.readout(), ref.readout())
        assert d["mu"] <= 1e-6 and d["count_mean"] <= 1e-5, d
        assert lav.writes == 0
    finally:
        lav.close()
    with pytest.raises(LavaSpecError, match="layers=2"):
        LavaNetwork(ModelSpec(width=32, height=32, pool=4, layers=2, clocked_input=True,
                              settle=0.0), LocalLayer1())


def test_backend_learns_on_the_host_like_numba(trained: Network,
                                               rotdisk_crop: np.ndarray) -> None:
    """Learning on: every 5 ms epoch the host learns on Lava's layer 1 and writes W1, π1,
    thresholds, h, x̂, u back; after 100 ms the learned arrays and the read-out agree with
    numba learning on the same input."""
    ref = Network(trained.spec)
    ref.load_state_dict(trained.state_dict())
    ref.resume_learning()
    t0 = ref.t_us
    ev = rotdisk_crop[(rotdisk_crop["t"] >= t0) & (rotdisk_crop["t"] < t0 + 100_000)]
    lav = LavaNetwork.from_network(ref, LocalLayer1())
    w0 = ref.state.W1.copy()
    try:
        assert lav.learning is True
        for b in _batches(ev, t0, t0 + 100_000, 10_000):
            lav.advance(b)
            ref.advance(b)
        d = _close(lav.readout(), ref.readout())
        dw = {k: float(np.abs(getattr(lav.state, k) - getattr(ref.state, k)).max())
              for k in ("W1", "pi1", "gh", "rho")}
        print(f"backend vs numba, learning on, 100 ms: read-out {d}, learned {dw}")
        assert lav.writes == 20
        assert np.abs(ref.state.W1 - w0).max() > 1e-6  # numba did learn
        assert max(dw.values()) <= 1e-9, dw
        assert d["mu"] <= 1e-6 and d["count_mean"] <= 1e-5, d
    finally:
        lav.close()
