"""tools/experiments/convergence in its --quick form: online learning converges on a real
recording looped eight times (issue 13, *Convergence*)."""

from __future__ import annotations

import numpy as np
import pytest

from tools.experiments import convergence as cv

pytestmark = pytest.mark.skipif(not cv.RECORDINGS["rotdisk"].exists(),
                                reason="shared data directory ../shared/data is absent")


@pytest.fixture(scope="module")
def curve() -> cv.Curve:
    ev, w, h, period = cv.load("rotdisk", cv.QUICK_EVENTS)
    assert period is not None
    return cv.run_curve(ev, w, h, {"seed": 0}, period)


def test_one_block_per_loop(curve: cv.Curve) -> None:
    assert curve.events.size == 8
    assert np.allclose(np.diff(curve.events), 374_296, rtol=0.01)


def test_weights_converge(curve: cv.Curve) -> None:
    """Each loop moves the weights less than the one before (up to noise) and the per-epoch
    change falls by an order of magnitude (measured 0.020 → 0.0015)."""
    d = curve.w_distance
    assert d[0] > 0.2 and d[-2] < 0.25 * d[0], d
    assert np.all(np.diff(d[:-1]) < 0.01), d
    assert curve.dw_per_epoch[-1] < 0.15 * curve.dw_per_epoch[0], curve.dw_per_epoch


def test_forecast_and_free_energy_improve(curve: cv.Curve) -> None:
    """The same events are forecast better on later loops (measured −2.043 → −2.021
    nats/event) and the free energy falls, within 5 % of its final value after 3 loops."""
    assert curve.loglik[-1] > curve.loglik[0] + 0.01, curve.loglik
    assert curve.free_energy[-1] < curve.free_energy[0], curve.free_energy
    s = cv.summarise(curve)
    assert s["events_to_5pct_free_energy"] <= 4 * 374_296, s


def test_entry_time_needs_a_settled_tail() -> None:
    ev = np.arange(1, 11, dtype=float)
    assert cv.within(np.array([5, 3, 1.02, 1, 1, 1, 1, 1, 1, 1.0]), 1.0, ev) == 3.0
    assert np.isnan(cv.within(np.array([5, 4, 3, 2, 2, 2, 2, 2, 1.5, 1.0]), 1.0, ev))


def test_layer_free_energies_add_up_to_the_readout() -> None:
    """F₁ + F₂ + priors is the published free energy (numpy twin), one and two layers."""
    from augury.events import EventBatch
    from augury.model.network import Network, compute_readout_numpy
    from augury.model.spec import ModelSpec

    ev, w, h, _ = cv.load("rotdisk", 60_000)
    for layers in (1, 2):
        spec = ModelSpec.from_dict({"width": w, "height": h, "pool": 0, "layers": layers})
        net = Network(spec)
        cuts = np.searchsorted(ev["t"], np.arange(11) * cv.WINDOW_US)
        for i in range(10):
            net.step(EventBatch(ev[cuts[i]:cuts[i + 1]], i * cv.WINDOW_US,
                                (i + 1) * cv.WINDOW_US, i))
        t = 10 * cv.WINDOW_US
        f1, f2, prior = cv.layer_free_energies(spec, net.state, t)
        ref = compute_readout_numpy(spec, net.state, t).free_energy
        assert f1 + f2 + prior == pytest.approx(ref, rel=1e-9)
        assert (f2 != 0.0) is (layers == 2)


def test_curve_records_per_layer_free_energy(curve: cv.Curve) -> None:
    assert curve.f_layers.shape == (curve.events.size, 3)
    assert np.all(curve.f_layers[:, 1] == 0.0)  # one layer by default
    np.testing.assert_allclose(curve.f_layers.sum(axis=1), curve.free_energy, rtol=1e-3)
