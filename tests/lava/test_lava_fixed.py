"""Lava fixed_pt layer 1 against the numba integer twin (``arithmetic = "loihi"``): bit-exact
on a crop of a real recording, weights and precisions learned by the twin, learning frozen."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lava.magma", reason="lava-nc is not installed (Python 3.10 venv only: "
                    "make lava-test)")

from lava_helpers import crop_spec, run_numba  # noqa: E402

from augury.lava.layer1 import LavaLayer1  # noqa: E402
from augury.model import loihi_int  # noqa: E402
from augury.model.network import Network  # noqa: E402
from augury.model.state import C_UP  # noqa: E402

FIELDS = ("z", "xhat", "eps", "u", "mu", "mus", "active")


@pytest.fixture(scope="module")
def twin(rotdisk_crop: np.ndarray) -> Network:
    """The integer twin trained (learning on) on the crop's first 1.5 s, then frozen."""
    net = Network(crop_spec(arithmetic="loihi"))
    run_numba(net, rotdisk_crop, 0, 1_500_000)
    net.freeze_learning()
    return net


def _q(net: Network) -> loihi_int.QState:
    s = net.state
    return loihi_int.quantise_state(net.spec, s.z1, s.xhat1, s.eps1, s.u1, s.mu1, s.mus1,
                                    s.h1, s.active)


@pytest.mark.parametrize("connections", ["dense", "sparse"])
def test_bit_exact_1200_ticks_with_silence_and_wake(twin: Network, rotdisk_crop: np.ndarray,
                                                    connections: str) -> None:
    """1,200 ticks (≥ 1,000 asked) of Lava fixed_pt and the numba twin from the same state:
    every integer of layer 1 (z, x̂, ε̂, u, μ, μ̂, the column flags) is equal at every check
    (every 10 ticks). Column 0's events are cut for 160 ms: it is silenced at a learning
    epoch and wakes when they return."""
    net = Network(twin.spec)
    net.load_state_dict(twin.state_dict())
    t0, n, step = net.t_us, 1_200, 10
    ev = rotdisk_crop[(rotdisk_crop["t"] >= t0) & (rotdisk_crop["t"] < t0 + n * 1_000)]
    col0 = (ev["x"] < 16) & (ev["y"] < 16)
    ev = ev[~(col0 & (ev["t"] >= t0 + 10_000) & (ev["t"] < t0 + 170_000))]
    up0 = int(net.state.counters[C_UP])
    active0, checks = [], 0
    with LavaLayer1(net.spec, net.state, chunk_ticks=2 * step,
                    connections=connections) as lav:
        for i in range(0, n, step):
            a, b = t0 + i * 1_000, t0 + (i + step) * 1_000
            run_numba(net, ev, a, b)
            lav.advance(ev[(ev["t"] >= a) & (ev["t"] < b)], step)
            got, want = lav.qstate(), _q(net)
            for f in FIELDS:
                np.testing.assert_array_equal(getattr(got, f), getattr(want, f),
                                              err_msg=f"{f} after {i + step} ticks")
            active0.append(bool(want.active[0]))
            checks += 1
        back = lav.state()
    assert checks * step == n
    assert not all(active0) and active0[-1], active0  # silenced, then woke
    assert net.state.counters[C_UP] - up0 > 10_000  # the error units were busy
    assert np.abs(net.state.mu1).max() > 0.1
    for k in ("z1", "xhat1", "eps1", "u1", "mu1", "mus1", "active"):
        np.testing.assert_array_equal(getattr(back, k), getattr(net.state, k), err_msg=k)
    print(f"fixed_pt vs numba twin ({connections}): {n} ticks bit-exact, {checks} checks, "
          f"column 0 active at checks: {''.join('1' if x else '0' for x in active0[:25])}…")
