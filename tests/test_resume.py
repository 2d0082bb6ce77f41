"""Resuming learned state: same spec, other hyper-parameters, older versions, other geometry."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from model_helpers import bars, windows

from augury.checkpoint import CheckpointManager
from augury.model.network import Network
from augury.model.spec import ModelSpec
from augury.model.state import init_state
from augury.pipeline import restore_network

SPEC = ModelSpec(width=64, height=48, pool=4, tick_us=1_000, horizon_us=5_000)


def _trained(spec: ModelSpec) -> Network:
    net = Network(spec)
    ev = bars(64, 48, 60_000, seed=2, noise_rate_hz=5.0)
    for b in windows(ev, 0, 60_000, spec.horizon_us):
        net.step(b)
    return net


def _save(tmp: Path, net: Network, *, drop: tuple[str, ...] = (),
          extra: dict[str, np.ndarray] | None = None) -> None:
    arrays = net.state_dict()
    arrays.pop("__learning__")
    for k in drop:
        arrays.pop(k)
    arrays.update(extra or {})
    meta = {"schema": 1, "spec": net.spec_json(), "learning": True}
    CheckpointManager(tmp, 60.0, 3, background=False).save_now(lambda: (arrays, meta))


def test_same_spec_resumes_bit_exact(tmp_path: Path) -> None:
    net = _trained(SPEC)
    _save(tmp_path, net)
    back = Network(SPEC)
    assert restore_network(back, CheckpointManager(tmp_path, 60.0, 3)) is not None
    for name in net.state._fields:
        np.testing.assert_array_equal(getattr(back.state, name), getattr(net.state, name),
                                      err_msg=name)


def test_other_hyperparameters_keep_learned_state(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    old = ModelSpec(**{**SPEC.to_dict(), "relax_steps": 8, "curv_mix": 1.0})
    net = _trained(old)
    _save(tmp_path, net)
    back = Network(SPEC)
    with caplog.at_level(logging.WARNING, logger="augury.pipeline"):
        restore_network(back, CheckpointManager(tmp_path, 60.0, 3))
    np.testing.assert_array_equal(back.state.W1, net.state.W1)
    np.testing.assert_array_equal(back.state.pi1, net.state.pi1)
    assert back.spec.relax_steps == 2  # the configured value applies from now on
    assert "relax_steps=2 (checkpoint 8)" in caplog.text
    assert "curv_mix=0.25 (checkpoint 1.0)" in caplog.text


def test_checkpoint_of_an_older_version_fills_new_state(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    net = _trained(SPEC)
    _save(tmp_path, net, drop=("sbase1", "gh"), extra={"eprev": np.zeros((SPEC.n1, SPEC.d1))})
    back = Network(SPEC)
    with caplog.at_level(logging.WARNING, logger="augury.pipeline"):
        restore_network(back, CheckpointManager(tmp_path, 60.0, 3))
    fresh = init_state(SPEC)
    np.testing.assert_array_equal(back.state.W1, net.state.W1)
    np.testing.assert_array_equal(back.state.sbase1, fresh.sbase1)
    np.testing.assert_array_equal(back.state.gh, fresh.gh)
    assert "new state initialised: gh, sbase1" in caplog.text
    assert "unknown state dropped: eprev" in caplog.text
    back.step(windows(bars(64, 48, 70_000, seed=2), 60_000, 70_000, 10_000)[0])  # runs on


def test_other_geometry_is_refused_and_the_checkpoint_kept(tmp_path: Path) -> None:
    net = _trained(SPEC)
    _save(tmp_path, net)
    other = ModelSpec(**{**SPEC.to_dict(), "k1": 6})
    with pytest.raises(ValueError, match=r"k1=8 there, 6 configured"):
        restore_network(Network(other), CheckpointManager(tmp_path, 60.0, 3))
    assert len(list(tmp_path.glob("*"))) == 1  # nothing deleted
