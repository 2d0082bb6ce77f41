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


def test_expert_settings_of_another_shape_restart_the_experts_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint written with other rate experts (another NE): the learned weights are
    kept, the experts' arrays restart, and the log names them."""
    old = ModelSpec(**{**SPEC.to_dict(), "mix_taus_us": (50_000, 200_000, 1_000_000, 5_000_000)})
    net = _trained(old)
    _save(tmp_path, net)
    back = Network(SPEC)
    with caplog.at_level(logging.WARNING, logger="augury.pipeline"):
        restore_network(back, CheckpointManager(tmp_path, 60.0, 3))
    np.testing.assert_array_equal(back.state.W1, net.state.W1)
    assert back.state.Lmix.shape[2] == 1 + len(SPEC.mix_taus_us) + 1
    assert "state of another shape restarted:" in caplog.text and "Lmix" in caplog.text


def test_daemon_resumes_a_checkpoint_written_with_other_default_geometry(tmp_path: Path) -> None:
    """Upgrading changed the defaults (pool chosen from the sensor, one belief layer): a state
    directory written with the old ones (pool 8, two layers) resumes when [model] leaves them
    unset, instead of refusing the learned state; set explicitly, they are refused."""
    from augury.config import load_config
    from augury.daemon import build_daemon

    old = ModelSpec(width=64, height=48, pool=8, layers=2)
    net = _trained(old)
    _save(tmp_path, net)
    uri = "synthetic://bars?width=64&height=48&duration_us=20000"
    base = {"source.uri": uri, "checkpoint.dir": str(tmp_path),
            "publish.endpoint": "tcp://127.0.0.1:*", "control.endpoint": "none"}
    daemon = build_daemon(load_config(None, base))
    try:
        spec = daemon.pipeline.network.spec
        assert (spec.pool, spec.layers) == (8, 2)
        np.testing.assert_array_equal(daemon.pipeline.network.state.W1, net.state.W1)
    finally:
        daemon.close()
    with pytest.raises(ValueError, match="layers=2 there, 1 configured"):
        build_daemon(load_config(None, {**base, "model.layers": 1}))


def test_a_spec_read_back_from_json_has_no_differences() -> None:
    """The saved spec comes back from JSON (tuples as lists): the same spec must not be
    reported as changed hyper-parameters on every resume."""
    import json

    from augury.model.compat import spec_differences

    assert spec_differences(json.loads(json.dumps(SPEC.to_dict())), SPEC) == {}
    other = {**json.loads(json.dumps(SPEC.to_dict())), "mix_taus_us": [1_000, 2_000]}
    assert set(spec_differences(other, SPEC)) == {"mix_taus_us"}


def test_resume_less_than_restart_after_us_behind_is_a_stream_restart(
        tmp_path: Path, shared_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 10, defect 4: a daemon resumed from a checkpoint on a replay of the same
    recording, whose first batch is less than 1 s (``restart_after_us``) behind the
    checkpoint's stream time, skipped 87,226 of the 374,296 events as 80 ``bad_batches``
    with ``stream_restarts`` 0 and no warning. A resume is a stream restart: every event is
    processed, the learned state is kept, and one warning says why."""
    from augury.config import load_config
    from augury.daemon import build_daemon

    src = shared_data / "inivation" / "davis240c_rotdisk.aedat"
    cfg = load_config(None, {"source.uri": str(src), "source.pace": "asap",
                             "checkpoint.dir": str(tmp_path),
                             "publish.endpoint": "tcp://127.0.0.1:*",
                             "control.endpoint": "none"})
    first = build_daemon(cfg)
    try:
        first.pipeline.run(max_batches=80)  # stream time 0.34 s .. 1.14 s, then a checkpoint
        learned = first.pipeline.network.state.W1.copy()
        t_saved = first.pipeline.network.t_us
    finally:
        first.close()
    second = build_daemon(cfg)
    p = second.pipeline
    assert second.resumed_from is not None
    np.testing.assert_array_equal(p.network.state.W1, learned)
    try:
        with caplog.at_level(logging.WARNING, logger="augury.pipeline"):
            m = p.run()
    finally:
        second.close()
    assert t_saved - 1_000_000 < 340_000 < t_saved  # the case of the defect: < 1 s behind
    assert (m.events_in, m.events_processed) == (374_296, 374_296)
    assert (m.bad_batches, m.stream_restarts) == (0, 1)
    warnings = [r.getMessage() for r in caplog.records if "stream restarted" in r.getMessage()]
    assert len(warnings) == 1 and "resume from a checkpoint" in warnings[0], warnings
    assert p.network.t_us > t_saved  # the whole recording, on its own clock
