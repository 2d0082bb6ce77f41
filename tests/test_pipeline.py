"""The pipeline in-process: read-outs only when publishing, health checks, roll-back of a
non-finite state, stale batches, and the publication schedule."""

from __future__ import annotations

import numpy as np

from augury.client import Subscriber
from augury.config import load_config
from augury.daemon import build_daemon

SCENE = "synthetic://bars?duration_us=300000&width=64&height=48"


def _daemon(**overrides: object):
    cfg = load_config(None, {"source.uri": SCENE, "source.pace": "asap",
                             "source.batch_us": 1000, "publish.rate_ms": 20.0,
                             "publish.endpoint": "tcp://127.0.0.1:*",
                             "control.endpoint": "none", **overrides})
    return build_daemon(cfg)


def test_readout_only_when_publishing_or_checking() -> None:
    daemon = _daemon()
    calls = []
    net = daemon.pipeline.network
    real = net.readout
    net.readout = lambda: calls.append(net.t_us) or real()  # type: ignore[method-assign]
    try:
        m = daemon.pipeline.run()
    finally:
        daemon.close()
    assert m.batches == 300
    # one read-out per 20 ms of stream (+ the first and the final one), not one per batch
    assert 14 <= len(calls) <= 18, calls
    assert m.published == len(calls)
    assert m.events_processed == m.events_in > 0


def test_non_finite_state_is_rolled_back_and_serving_goes_on() -> None:
    daemon = _daemon(**{"publish.rate_ms": 5.0})
    p = daemon.pipeline
    net = p.network
    real_advance = net.advance
    poisoned = []

    def advance(batch):  # poison the learned weights once, half-way through the scene
        counts = real_advance(batch)
        if not poisoned and net.t_us >= 150_000:
            net.state.W1[...] = np.nan
            poisoned.append(net.t_us)
        return counts

    net.advance = advance  # type: ignore[method-assign]
    with Subscriber(daemon.publisher.bound_endpoint, topics=("beliefs",),
                    timeout_ms=5000) as sub:
        for _ in range(200):  # connect before running (bounded handshake, no sleep)
            if daemon.publisher.subscriptions:
                break
            daemon.publisher.poll_subscriptions(timeout_ms=20)
        assert daemon.publisher.subscriptions
        try:
            m = p.run()
        finally:
            daemon.close()
        assert poisoned and m.rollbacks == 1
        got = []
        while (msg := sub.recv(timeout_ms=2000)) is not None:
            got.append(msg)
    assert got, "nothing published"
    for msg in got:
        assert all(np.isfinite(a).all() for a in msg.arrays.values())
    assert got[-1].stream_time_us >= 290_000  # serving went on after the roll-back
    for name, arr in net.state_dict().items():
        if arr.dtype.kind == "f":
            assert np.isfinite(arr).all(), name
