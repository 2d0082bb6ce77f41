"""tools/experiments/nmnist_probe on a cut-down split: the pipeline works end to end and its
numbers are sane (the issue's targets on it are not met yet: docs/results.md)."""

from __future__ import annotations

import numpy as np
import pytest

from augury.model.network import Network
from augury.model.spec import ModelSpec
from tools.experiments import nmnist_probe as npb

pytestmark = pytest.mark.skipif(not npb.DATA.exists(),
                                reason="shared data directory ../shared/data is absent")


def test_learning_pass_changes_weights_and_features_are_finite() -> None:
    digits = [npb.load_digit(s) for s, _ in npb.labels("train1K")[:20]]
    net = Network(ModelSpec.from_dict(npb.BASE_SPEC))
    w0 = net.state.W1.copy()
    npb.learn_pass(net, digits)
    assert not np.array_equal(w0, net.state.W1)
    f = npb.belief_features(net, digits[:5])
    r1, c1 = net.spec.grid1
    assert f["l1"].shape == (5, 2 * r1 * c1 * net.spec.k1) and np.isfinite(f["l1"]).all()
    assert "l2" in f and np.isfinite(f["l2"]).all()


def test_quick_probe_is_well_above_chance() -> None:
    res = npb.run(quick=True, seeds=[0], n_train=120, overrides={})
    assert res["raw counts 34×34×2"]["cv_mean"] > 0.55  # 10 classes: chance is 0.10
    for layer in ("layer 1", "both"):
        assert res[f"learned beliefs, {layer}"]["cv_mean"] > 0.30
        assert res[f"random beliefs, {layer}"]["cv_mean"] > 0.30


def test_passes_replay_the_digits_on_one_clock() -> None:
    digits = [npb.load_digit(s) for s, _ in npb.labels("train1K")[:3]]
    one, two = (Network(ModelSpec.from_dict(npb.BASE_SPEC)) for _ in range(2))
    npb.learn_pass(one, digits)
    npb.learn_pass(two, digits, passes=2)
    assert two.t_us == 2 * one.t_us  # the second pass follows the first, 20 ms gaps kept
    assert not np.array_equal(one.state.W1, two.state.W1)


def test_exemplar_dictionary_is_made_of_busy_traces_at_the_atoms_norm() -> None:
    digits = [npb.load_digit(s) for s, _ in npb.labels("train1K")[:3]]
    net = Network(ModelSpec.from_dict({**npb.BASE_SPEC, "layers": 1, "k1": 8}))
    w0 = net.state.W1[0].copy()
    w = npb.exemplar_dictionary(net, digits, np.random.default_rng(0))
    assert w.shape == w0.shape and np.all(w >= 0)
    np.testing.assert_allclose(np.linalg.norm(w, axis=0),
                               np.mean(np.linalg.norm(w0, axis=0)), rtol=1e-9)
    assert np.array_equal(net.state.W1[0], w0)  # the net's own weights are left alone
    assert npb.atom_top_share(w) > npb.atom_top_share(w0)  # sparse traces, not uniform blurs
