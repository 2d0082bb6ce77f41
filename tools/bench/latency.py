"""Daemon latency: event arrival → published read-out, and throughput with a stalled subscriber.

Usage (from the repository root)::

    python -m tools.bench.latency [--quick] [--seconds S] [--write-docs]

Input: the real recording ``prophesee/evt2_sample.raw`` (Prophesee Gen3, 640×480, 539,481
events in 50 ms, ~10.8 Mev/s) looped — each copy shifted by the loop period, a whole number
of batches — into a temporary EVT 2.0 ``.raw`` file (``augury.adapters.evt_write``), so that
the daemon reads it through its real file adapter and decoder. The daemon is assembled by
``augury.daemon.build_daemon`` in this process (publisher on ``tcp://127.0.0.1:*``, control
``none``, ``batch_us`` = 1000, a read-out published every 1 ms of stream time).

Latency runs: replay paced ``realtime`` × speed, speed = 1 Mev/s ÷ the recording's mean rate
(≈ 1/10.8), ``--seconds`` of wall time in all (split into ``rounds`` runs alternated with the
variant below); a real ``augury.client.Subscriber`` in another thread receives every topic
over the loopback socket. Reported (ms):

* ``p50_ms`` / ``p99_ms`` — (a) the pipeline's own ``Metrics.latencies_ns``: a batch's arrival
  at the reader (``perf_counter_ns`` after pacing) → the publish calls of its read-out returned;
* ``e2e_p50_ms`` / ``e2e_p99_ms`` — (b) end to end: the same arrival stamp → the last message
  of the read-out covering that batch (topic ``surprise``, published after ``beliefs`` and
  ``prediction``) received and decoded by the Subscriber. Both ends are ``perf_counter_ns``
  of this process: the arrival stamps are read off the pipeline's queue (``StampedRing``),
  no clock matching needed; the first read-out whose ``stream_time_us`` ≥ the batch's
  ``t_end_us`` is the one covering it;
* ``transit`` — header ``wall_time_ns`` (``time.time_ns`` when the publisher encoded the
  message) → ``time.time_ns`` at receipt: socket transit, waiting for the GIL, decoding;
* in-daemon probes (``instrument``; instance attributes, the classes are untouched): time in
  the queue, ``Network.step`` and the engine thread's CPU time in it, ``Network.readout``,
  ``Publisher.publish`` per topic, and each chunk the reader thread decodes; batches that
  waited > 1 ms in the queue are attributed to a decode under way and/or the engine still
  busy with the previous batch;
* offline stage costs (one thread, no sockets) on the same batches, back to back and after a
  pause as long as a batch's wall time, interleaved;
* a variant with the ``.raw`` reader reading 64 KiB instead of 1 MiB at a time.

Throughput runs: the same input, pace ``asap``, with no subscriber and with one that never
reads (a plain SUB socket, RCVHWM 1, never calls recv), alternated;
``slow_subscriber_throughput_ratio`` = best events/s with ÷ best without (target ≥ 0.9: the
engine must not stall on a slow reader); the ratio of medians is printed too.

A warm-up run (numba compile or cache load of decoder, model and read-out) comes first,
outside every timed part. The table is printed, then, as the last line, one JSON object.
``--write-docs`` replaces the block between ``<!-- latency:begin -->`` and
``<!-- latency:end -->`` in ``docs/performance.md`` (appending a "## Daemon latency" section
when absent), read-modify-written once at the end of the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from augury.adapters import open_source
from augury.adapters.evt_write import write_raw
from augury.adapters.ring import EventRing
from augury.client import Subscriber
from augury.config import Config, load_config
from augury.daemon import Daemon, build_daemon, model_spec
from augury.events import EventBatch
from augury.model.network import Network
from augury.pipeline import Arrival, readout_messages
from augury.publish import TOPIC_BELIEFS, TOPIC_STATS, TOPIC_SURPRISE, encode_message

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
RECORDING = DATA / "prophesee" / "evt2_sample.raw"
DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- latency:begin -->", "<!-- latency:end -->"
SECTION = "## Daemon latency"


@dataclass(frozen=True)
class BenchParams:
    """What one benchmark run does.

    target_rate_ev_s: input rate of the latency run (events/s); batch_us: source batch span
    (µs); publish_ms: stream time between read-outs (ms); latency_s: wall time of the latency
    run (s); throughput_batches: batches per throughput run; repeats: throughput runs per arm;
    stage_batches: batches of the offline stage-cost measurement; variant_chunk_bytes: a
    second latency run with the .raw reader reading this many bytes at a time (None: none);
    rounds: the latency runs are split into this many alternating baseline / variant runs.
    """

    target_rate_ev_s: float = 1e6
    batch_us: int = 1_000
    publish_ms: float = 1.0
    latency_s: float = 10.0
    throughput_batches: int = 400
    repeats: int = 5
    stage_batches: int = 400
    variant_chunk_bytes: int | None = 1 << 16
    rounds: int = 4


QUICK = BenchParams(latency_s=3.0, throughput_batches=150, repeats=3, stage_batches=150,
                    rounds=1, variant_chunk_bytes=None)


# -- input ------------------------------------------------------------------------------------
def loop_period_us(events: np.ndarray, batch_us: int) -> int:
    """Loop period (µs): the recording's span rounded up to a whole number of batches.

    >>> from augury.events import EVENT_DTYPE
    >>> ev = np.zeros(2, EVENT_DTYPE); ev["t"] = [1_000_500, 1_049_999]
    >>> loop_period_us(ev, 1_000)
    50000
    """
    span = int(events["t"][-1]) - int(events["t"][0]) + 1
    return -(-span // batch_us) * batch_us


def looped(events: np.ndarray, loops: int, period_us: int) -> np.ndarray:
    """The recording repeated ``loops`` times, copy k shifted by k · period_us (µs)."""
    out = np.concatenate([events] * loops)
    out["t"] += np.repeat(np.arange(loops, dtype=np.int64) * period_us, events.size)
    return out


@dataclass(frozen=True)
class Input:
    """The looped recording written for this run: path, events, mean rate (events/s)."""

    path: Path
    events: int
    loops: int
    period_us: int
    rate_ev_s: float


def write_input(directory: Path, params: BenchParams) -> Input:
    """Loop RECORDING long enough for one latency run (latency_s / rounds at the target rate)
    and for the throughput and stage runs, plus one loop; write it as EVT 2.0."""
    with open_source(RECORDING) as src:
        ev = src.read_all().copy()
        geometry = src.geometry
    period = loop_period_us(ev, params.batch_us)
    per_run_s = params.latency_s / params.rounds
    batches = max(params.throughput_batches, params.stage_batches)
    loops = 1 + max(math.ceil(per_run_s * params.target_rate_ev_s / ev.size),
                    math.ceil(batches * params.batch_us / period))
    path = directory / "evt2_sample_looped.raw"
    write_raw(path, looped(ev, loops, period), geometry, "evt2")
    return Input(path, ev.size * loops, loops, period, ev.size / (period / 1e6))


def source_uri(path: Path, chunk_bytes: int | None = None) -> str:
    """The source URI of the looped file; chunk_bytes: the .raw reader's read size (bytes).

    >>> source_uri(Path("/tmp/a.raw"), 65536)
    'file:///tmp/a.raw?chunk_bytes=65536'
    """
    return str(path) if chunk_bytes is None else f"file://{path}?chunk_bytes={chunk_bytes}"


def daemon_config(uri: Path | str, params: BenchParams, *, pace: str, speed: float) -> Config:
    """The daemon config of a run: loopback publisher on a free port, no control channel."""
    return load_config(None, {
        "source.uri": str(uri), "source.pace": pace, "source.speed": speed,
        "source.batch_us": params.batch_us, "publish.rate_ms": params.publish_ms,
        "publish.endpoint": "tcp://127.0.0.1:*", "control.endpoint": "none",
    })


# -- instrumentation ----------------------------------------------------------------------------
class StampedRing(EventRing):
    """The pipeline's queue, also recording each batch's arrival and dequeue.

    arrivals: (t_end_us, arrival_ns, events) per accepted batch, arrival_ns being the
    pipeline's own stamp (perf_counter_ns after pacing); dequeues: (t_end_us,
    perf_counter_ns) when the engine took it. list.append is atomic, so the reader and the
    engine thread may both record.
    """

    def __init__(self, like: EventRing) -> None:
        super().__init__(like.capacity_events, like.overflow, max_items=like.max_items)
        self.arrivals: list[tuple[int, int, int]] = []
        self.dequeues: list[tuple[int, int]] = []

    def put(self, item: Any, timeout: float | None = None) -> bool:
        ok = super().put(item, timeout)
        if ok and isinstance(item, Arrival):
            self.arrivals.append((item.batch.t_end_us, item.arrival_ns, len(item.batch)))
        return ok

    def get(self, timeout: float | None = None) -> Any | None:
        item = super().get(timeout)
        if isinstance(item, Arrival):
            self.dequeues.append((item.batch.t_end_us, time.perf_counter_ns()))
        return item


@dataclass
class Probe:
    """Timings recorded inside one daemon run (ns): the queue stamps, every chunk the source
    decodes (start, end perf_counter ns; reader thread), every ``Network.step`` (read-out
    included; also the engine thread's CPU time in it), every ``Network.readout`` and every
    ``Publisher.publish`` call, and when each ``stats`` publish (the end of a read-out's
    processing) returned."""

    ring: StampedRing
    decode_ns: list[tuple[int, int]] = field(default_factory=list)
    step_ns: list[int] = field(default_factory=list)
    step_cpu_ns: list[int] = field(default_factory=list)
    readout_ns: list[int] = field(default_factory=list)
    publish: list[tuple[str, int]] = field(default_factory=list)
    stats_end_ns: list[int] = field(default_factory=list)


def _timed(fn: Callable[..., Any], sink: Callable[[int], None]) -> Callable[..., Any]:
    """fn wrapped so that each call's duration (perf_counter ns) goes to sink."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            sink(time.perf_counter_ns() - t0)

    return wrapper


def instrument(daemon: Daemon) -> Probe:
    """Probe a daemon that has not run yet: swap its queue for a StampedRing of the same
    bounds and time ``chunks``/``step``/``readout``/``publish`` through instance attributes
    (a few µs per call; the classes are untouched)."""
    probe = Probe(StampedRing(daemon.pipeline.ring))
    daemon.pipeline.ring = probe.ring
    chunks = daemon.source.chunks

    def timed_chunks() -> Iterator[Any]:
        it = chunks()
        while True:
            t0 = time.perf_counter_ns()
            try:
                chunk = next(it)
            except StopIteration:
                return
            probe.decode_ns.append((t0, time.perf_counter_ns()))
            yield chunk

    daemon.source.chunks = timed_chunks  # type: ignore[method-assign]
    net, pub = daemon.pipeline.network, daemon.publisher
    advance = net.advance  # the pipeline advances every batch, reads out only to publish

    def timed_advance(batch: EventBatch) -> Any:
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        try:
            return advance(batch)
        finally:
            probe.step_cpu_ns.append(time.thread_time_ns() - c0)
            probe.step_ns.append(time.perf_counter_ns() - t0)

    net.advance = timed_advance  # type: ignore[method-assign]
    net.readout = _timed(net.readout, probe.readout_ns.append)  # type: ignore[method-assign]
    publish = pub.publish

    def timed_publish(topic: str, *args: Any, **kwargs: Any) -> bool:
        t0 = time.perf_counter_ns()
        try:
            return publish(topic, *args, **kwargs)
        finally:
            t1 = time.perf_counter_ns()
            probe.publish.append((topic, t1 - t0))
            if topic == TOPIC_STATS:
                probe.stats_end_ns.append(t1)

    pub.publish = timed_publish  # type: ignore[method-assign]
    return probe


def overlapping(a_ns: np.ndarray, b_ns: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """For each interval [a, b): does it overlap one of ``spans`` ((n, 2) start, end; sorted,
    disjoint)?

    >>> overlapping(np.array([0, 10, 30]), np.array([5, 20, 40]), np.array([[12, 15], [41, 50]]))
    array([False,  True, False])
    """
    if spans.size == 0:
        return np.zeros(a_ns.shape, dtype=bool)
    idx = np.searchsorted(spans[:, 0], b_ns, side="left") - 1
    ok = idx >= 0
    out = np.zeros(a_ns.shape, dtype=bool)
    out[ok] = spans[idx[ok], 1] > a_ns[ok]
    return out


def horizon_tick(t_end_us: np.ndarray, batch_us: int, horizon_us: int) -> np.ndarray:
    """Whether each batch [t_end − batch_us, t_end) runs a horizon tick: a multiple of
    horizon_us in (t_end − batch_us, t_end] µs (the model runs ticks T ≤ t_end).

    >>> horizon_tick(np.array([9_000, 10_000, 11_000]), 1_000, 10_000).tolist()
    [False, True, False]
    """
    return t_end_us // horizon_us > (t_end_us - batch_us) // horizon_us


def engine_spans(dequeue_ns: np.ndarray, stats_end_ns: np.ndarray) -> np.ndarray:
    """(n, 2) spans during which the engine was busy with a batch: from taking it off the
    queue to the end of the next ``stats`` publish (the end of its read-out's processing);
    batches after the last stats publish are left out.

    >>> engine_spans(np.array([0, 10, 20]), np.array([5, 16])).tolist()
    [[0, 5], [10, 16]]
    """
    idx = np.searchsorted(stats_end_ns, dequeue_ns, side="left")
    ok = idx < stats_end_ns.size
    return np.stack([dequeue_ns[ok], stats_end_ns[idx[ok]]], axis=1)


def readout_publish_ns(calls: list[tuple[str, int]]) -> np.ndarray:
    """Per read-out: total ns of its publish calls other than ``stats`` (sent after the
    pipeline's latency stamp). Calls are in order; a read-out ends at its stats call.

    >>> readout_publish_ns([("beliefs", 1), ("prediction", 2), ("surprise", 3),
    ...                     ("stats", 9), ("beliefs", 4), ("stats", 9)])
    array([6, 4])
    """
    out, acc = [], 0
    for topic, ns in calls:
        if topic == TOPIC_STATS:
            out.append(acc)
            acc = 0
        else:
            acc += ns
    return np.asarray(out, np.int64)


@dataclass
class Received:
    """Messages received by the subscriber thread, one entry per message (same order)."""

    topic: list[str] = field(default_factory=list)
    stream_time_us: list[int] = field(default_factory=list)
    wall_time_ns: list[int] = field(default_factory=list)
    recv_ns: list[int] = field(default_factory=list)
    recv_wall_ns: list[int] = field(default_factory=list)
    missed: int = 0
    malformed: int = 0
    error: str | None = None


def subscribe(endpoint: str, ready: threading.Event, done: threading.Event,
              out: Received) -> None:
    """Receive every topic until ``done`` is set and 200 ms pass without a message."""
    try:
        with Subscriber(endpoint, topics=None, hwm=1_000_000, timeout_ms=200) as sub:
            ready.set()
            while True:
                msg = sub.recv()
                if msg is None:
                    if done.is_set():
                        break
                    continue
                out.recv_ns.append(time.perf_counter_ns())
                out.recv_wall_ns.append(time.time_ns())
                out.topic.append(msg.topic)
                out.stream_time_us.append(msg.stream_time_us)
                out.wall_time_ns.append(msg.wall_time_ns)
            out.missed = sum(sub.missed.values())
            out.malformed = sub.malformed
    except Exception as exc:  # noqa: BLE001 - reported by the caller
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        ready.set()


# -- statistics -------------------------------------------------------------------------------
def summary_ms(ns: np.ndarray) -> dict[str, float | int | None]:
    """p50, p99, max (ms) and count n of durations given in ns.

    >>> summary_ms(np.array([1_000_000, 2_000_000, 3_000_000]))["p50"]
    2.0
    """
    if ns.size == 0:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    q50, q99 = np.percentile(ns, [50, 99]) / 1e6
    return {"p50": round(float(q50), 3), "p99": round(float(q99), 3),
            "max": round(float(ns.max()) / 1e6, 3), "n": int(ns.size)}


def covering_latency_ns(batch_t_end_us: np.ndarray, arrival_ns: np.ndarray,
                        msg_stream_us: np.ndarray, msg_recv_ns: np.ndarray) -> np.ndarray:
    """Per batch: receipt of the first message with stream_time_us ≥ the batch's t_end_us,
    minus the batch's arrival (ns); batches no received message covers are left out.

    Messages must be in publication order (stream time non-decreasing).

    >>> covering_latency_ns(np.array([10, 20, 30]), np.array([0, 5, 9]),
    ...                     np.array([20, 30]), np.array([100, 200]))
    array([100,  95, 191])
    """
    idx = np.searchsorted(msg_stream_us, batch_t_end_us, side="left")
    ok = idx < msg_stream_us.size
    return msg_recv_ns[idx[ok]] - arrival_ns[ok]


def topic_arrays(rx: Received, topic: str) -> tuple[np.ndarray, np.ndarray]:
    """(stream_time_us, recv_ns) of the received messages of one topic."""
    sel = np.array([t == topic for t in rx.topic], dtype=bool)
    return (np.asarray(rx.stream_time_us, np.int64)[sel], np.asarray(rx.recv_ns, np.int64)[sel])


# -- runs ---------------------------------------------------------------------------------------
def warm_up(inp: Input, params: BenchParams) -> float:
    """One short asap run through the whole daemon (compiles or loads the numba caches); s."""
    t0 = time.perf_counter()
    daemon = build_daemon(daemon_config(inp.path, params, pace="asap", speed=1.0))
    try:
        daemon.pipeline.run(max_batches=60)
    finally:
        daemon.close()
    return time.perf_counter() - t0


def latency_run(inp: Input, params: BenchParams, *, seconds: float,
                chunk_bytes: int | None = None) -> dict[str, Any]:
    """One real-time replay at params.target_rate_ev_s for ``seconds`` of wall time, with a
    Subscriber thread; raw samples (ns) and counters, see ``summarise`` and the module doc.

    chunk_bytes: read size of the .raw reader (None: the adapter's default, 1 MiB).
    """
    speed = params.target_rate_ev_s / inp.rate_ev_s
    max_batches = max(1, round(seconds * speed * 1e6 / params.batch_us))
    uri = source_uri(inp.path, chunk_bytes)
    daemon = build_daemon(daemon_config(uri, params, pace="realtime", speed=speed),
                          wait_subscriber_s=10.0)
    rx = Received()
    ready, done = threading.Event(), threading.Event()
    thread = threading.Thread(target=subscribe, name="bench-subscriber",
                              args=(daemon.publisher.bound_endpoint, ready, done, rx))
    try:
        probe = instrument(daemon)
        thread.start()
        ready.wait(10.0)
        t0 = time.perf_counter()
        metrics = daemon.pipeline.run(max_batches=max_batches)
        wall_s = time.perf_counter() - t0
        done.set()
        thread.join(30.0)
        horizon_us = daemon.pipeline.network.spec.horizon_us
        pub_dropped = int(sum(daemon.publisher.dropped.values()))
        queue_dropped = int(daemon.pipeline.ring.dropped_events)
    finally:
        done.set()
        daemon.close()
    if rx.error is not None:
        raise RuntimeError(f"subscriber failed: {rx.error}")
    arr = np.asarray(probe.ring.arrivals, np.int64).reshape(-1, 3)
    deq = np.asarray(probe.ring.dequeues, np.int64).reshape(-1, 2)
    arr = arr[: len(deq)]  # batches the reader queued after the engine's last one are unused
    if not np.array_equal(deq[:, 0], arr[:, 0]):
        raise RuntimeError("queue stamps out of order: the engine skipped or reordered batches")
    queue = deq[:, 1] - arr[:, 1]
    slow = queue > 1_000_000
    spans = np.asarray(probe.decode_ns, np.int64).reshape(-1, 2)
    on_decode = overlapping(arr[slow, 1], deq[slow, 1], spans)
    busy = overlapping(arr[slow, 1], arr[slow, 1] + 1,
                       engine_spans(deq[:, 1], np.asarray(probe.stats_end_ns, np.int64)))
    steps = np.asarray(probe.step_ns, np.int64)
    at_horizon = (horizon_tick(deq[:, 0], params.batch_us, horizon_us) if steps.size == len(deq)
                  else np.zeros(steps.shape, dtype=bool))
    samples = {
        "pipeline": np.fromiter(metrics.latencies_ns, np.int64),
        "step_horizon": steps[at_horizon], "step_other": steps[~at_horizon],
        "transit": np.asarray(rx.recv_wall_ns, np.int64) - np.asarray(rx.wall_time_ns, np.int64),
        "queue": queue,
        "step": np.asarray(probe.step_ns, np.int64),
        "step_off_cpu": (np.asarray(probe.step_ns, np.int64)
                         - np.asarray(probe.step_cpu_ns, np.int64)),
        "readout": np.asarray(probe.readout_ns, np.int64),
        "publish": readout_publish_ns(probe.publish),
        "stats_publish": np.asarray([ns for topic, ns in probe.publish if topic == TOPIC_STATS],
                                    np.int64),
        "decode": spans[:, 1] - spans[:, 0],
    }
    for topic in (TOPIC_BELIEFS, TOPIC_SURPRISE):
        st, rn = topic_arrays(rx, topic)
        samples[f"e2e_{topic}"] = covering_latency_ns(arr[:, 0], arr[:, 1], st, rn)
    counts = {
        "events_in": metrics.events_in, "events_processed": metrics.events_processed,
        "batches": metrics.batches, "published": metrics.published,
        "received": len(rx.topic), "subscriber_missed": rx.missed, "malformed": rx.malformed,
        "publish_dropped": pub_dropped,
        "dropped_events": int(metrics.source_dropped) + queue_dropped,
        "bad_batches": metrics.bad_batches, "rollbacks": metrics.rollbacks,
        "slow_queue": int(slow.sum()),
        "slow_queue_on_decode": int(on_decode.sum()),
        "slow_queue_engine_busy": int(busy.sum()),
        "slow_queue_other": int((~on_decode & ~busy).sum()),
        "input_events": int(arr[1:, 2].sum()) if len(arr) > 1 else 0,
        "input_span_ns": int(arr[-1, 1] - arr[0, 1]) if len(arr) > 1 else 0,
    }
    return {"samples": samples, "counts": counts, "wall_s": wall_s, "speed": speed,
            "chunk_bytes": chunk_bytes, "horizon_us": horizon_us}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the samples of runs with the same settings; p50/p99/max per measure, summed
    counters, achieved input rate (events/s between the first and last arrival of each run)."""
    counts = {k: sum(r["counts"][k] for r in runs) for k in runs[0]["counts"]}
    pooled = {k: np.concatenate([r["samples"][k] for r in runs]) for k in runs[0]["samples"]}
    out: dict[str, Any] = {k: summary_ms(v) for k, v in pooled.items()}
    out["e2e"] = {t: out.pop(f"e2e_{t}") for t in (TOPIC_BELIEFS, TOPIC_SURPRISE)}
    span_s = counts["input_span_ns"] / 1e9
    return {**out, **counts, "runs": len(runs), "wall_s": sum(r["wall_s"] for r in runs),
            "speed": runs[0]["speed"], "chunk_bytes": runs[0]["chunk_bytes"],
            "horizon_us": runs[0]["horizon_us"],
            "rate_ev_s": counts["input_events"] / span_s if span_s > 0 else 0.0}


def latency(inp: Input, params: BenchParams) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Baseline and (if asked) small-chunk runs, alternated ``rounds`` times so that load
    changes hit both; each run lasts latency_s / rounds."""
    seconds = params.latency_s / params.rounds
    base, var = [], []
    for _ in range(params.rounds):
        base.append(latency_run(inp, params, seconds=seconds))
        if params.variant_chunk_bytes is not None:
            var.append(latency_run(inp, params, seconds=seconds,
                                   chunk_bytes=params.variant_chunk_bytes))
    return summarise(base), summarise(var) if var else None


def wait_subscription(daemon: Daemon, timeout_s: float = 10.0) -> None:
    """Block until the publisher has seen a subscription (XPUB notification), no sleeping."""
    deadline = time.monotonic() + timeout_s
    while not daemon.publisher.subscriptions:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            raise TimeoutError("the stalled subscriber's subscription never reached the "
                               "publisher")
        daemon.publisher.poll_subscriptions(timeout_ms=left_ms)


def throughput_run(inp: Input, params: BenchParams, *, stalled: bool) -> tuple[float, int]:
    """(events/s, publisher drops) of one asap run over throughput_batches batches.

    stalled: a SUB socket (RCVHWM 1, subscribed to everything) is connected and never read.
    """
    daemon = build_daemon(daemon_config(inp.path, params, pace="asap", speed=1.0))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    try:
        if stalled:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 1)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(daemon.publisher.bound_endpoint)
            wait_subscription(daemon)
        t0 = time.perf_counter()
        metrics = daemon.pipeline.run(max_batches=params.throughput_batches)
        seconds = time.perf_counter() - t0
        return metrics.events_processed / seconds, int(sum(daemon.publisher.dropped.values()))
    finally:
        daemon.close()
        sock.close(linger=0)
        ctx.term()


def throughput(inp: Input, params: BenchParams) -> dict[str, Any]:
    """Alternate free / stalled runs (so load changes hit both arms); ratio of the best runs
    (other jobs on the machine only ever slow a run down), medians given too."""
    free, stalled, drops = [], [], []
    for _ in range(params.repeats):
        free.append(throughput_run(inp, params, stalled=False)[0])
        rate, dropped = throughput_run(inp, params, stalled=True)
        stalled.append(rate)
        drops.append(dropped)
    f, s = max(free), max(stalled)
    return {"free_mev_s": f / 1e6, "stalled_mev_s": s / 1e6, "ratio": s / f,
            "median_ratio": statistics.median(stalled) / statistics.median(free),
            "stalled_publish_drops": drops, "batches": params.throughput_batches,
            "repeats": params.repeats}


def stage_costs(inp: Input, params: BenchParams, rng: np.random.Generator) -> dict[str, Any]:
    """Offline per-batch costs on the first stage_batches batches, one thread, no sockets.

    Half the batches, chosen by ``rng``, are preceded by a pause as long as the batch's wall
    time in the latency run (batch_us / speed, ~10.6 ms), as the paced daemon sees them; the
    others follow the previous step at once ("back to back"). Interleaving them makes machine
    load hit both alike. Measured: ``Network.step`` (checks + kernel + read-out) in both
    groups; for back-to-back batches also a second ``Network.readout`` and the encoding of the
    three read-out messages.
    """
    cfg = daemon_config(inp.path, params, pace="asap", speed=1.0)
    with open_source(inp.path) as src:
        net = Network(model_spec(cfg, src))
        batches: list[EventBatch] = list(islice(src.batches(batch_us=params.batch_us),
                                                params.stage_batches))
    spec = net.spec
    pmeta = {"horizon_ms": spec.horizon_us / 1e3, "pool": spec.pool, "tau_us": spec.tau_us}
    pause_s = params.batch_us / 1e6 * inp.rate_ev_s / params.target_rate_ev_s
    paused = rng.random(len(batches)) < 0.5
    step, readout, encode = [], [], []
    for b, pause in zip(batches, paused, strict=True):
        if pause:
            time.sleep(pause_s)
        t0 = time.perf_counter_ns()
        r = net.step(b)
        t1 = time.perf_counter_ns()
        step.append(t1 - t0)
        if pause:
            continue
        net.readout()
        t2 = time.perf_counter_ns()
        for i, (topic, arrays, meta) in enumerate(readout_messages(r, pmeta)):
            encode_message(topic, arrays, meta, seq=i, stream_time_us=r.t_us,
                           sensor_time_us=r.t_us, wall_time_ns=time.time_ns())
        readout.append(t2 - t1)
        encode.append(time.perf_counter_ns() - t2)
    skip = min(20, len(batches) // 4)  # the first batches of a fresh network are atypical
    steps = np.asarray(step, np.int64)[skip:]
    late = paused[skip:]
    n_hot_skipped = int((~paused[:skip]).sum())
    return {"step": summary_ms(steps[~late]), "step_after_pause": summary_ms(steps[late]),
            "readout": summary_ms(np.asarray(readout[n_hot_skipped:], np.int64)),
            "encode": summary_ms(np.asarray(encode[n_hot_skipped:], np.int64)),
            "pause_ms": pause_s * 1e3,
            "events_per_batch": float(np.mean([len(b) for b in batches[skip:]]))}


# -- report -------------------------------------------------------------------------------------
def _f(v: float | int | None) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def table(res: dict[str, Any]) -> str:
    """Markdown table of the latency figures, then the throughput line."""
    lat, st, tp = res["latency"], res["stages"], res["throughput"]
    rows = [
        ("pipeline Metrics (a)", "arrival at reader → publish calls returned", lat["pipeline"]),
        ("end to end (b)", "arrival at reader → whole read-out (`surprise`, sent last) "
         "received + decoded by the Subscriber", lat["e2e"][TOPIC_SURPRISE]),
        ("end to end, beliefs", "arrival at reader → `beliefs` received + decoded",
         lat["e2e"][TOPIC_BELIEFS]),
        ("transit", "header wall_time_ns (encode) → received + decoded (time.time_ns)",
         lat["transit"]),
        ("in daemon: queue", "arrival at reader → engine took the batch", lat["queue"]),
        ("in daemon: advance", "Network.advance: checks + numba kernel (no read-out)",
         lat["step"]),
        ("in daemon: advance off-CPU", "advance wall time − engine thread CPU time (descheduled "
         "or waiting for the GIL)", lat["step_off_cpu"]),
        ("in daemon: advance, horizon", "Network.advance of batches that run a horizon tick (every "
         f"{lat['horizon_us'] / 1e3:g} ms: temporal learning, forecasts, surprise baseline)",
         lat["step_horizon"]),
        ("in daemon: advance, others", "Network.advance of the other batches",
         lat["step_other"]),
        ("in daemon: read-out", "Network.readout (numba), before each publication",
         lat["readout"]),
        ("in daemon: publish", "Publisher.publish of beliefs + prediction + surprise "
         "(encode + non-blocking send)", lat["publish"]),
        ("in daemon: stats", "Publisher.publish of stats (after the latency stamp)",
         lat["stats_publish"]),
        ("reader: decode", "read + decode one 1 MiB chunk of the .raw file (reader thread, "
         "wall time incl. waits for the GIL)",
         lat["decode"]),
        ("back to back: step", "Network.step, batches fed without pause (offline)",
         st["step"]),
        ("after a pause: step", f"Network.step after sleeping {st['pause_ms']:.1f} ms, "
         "interleaved with the above (offline)", st["step_after_pause"]),
        ("back to back: read-out", "Network.readout, same (offline)", st["readout"]),
        ("back to back: encode", "encode the 3 read-out messages (offline)", st["encode"]),
    ]
    var = res.get("variant")
    if var is not None:
        kib = var["chunk_bytes"] // 1024
        rows += [
            (f"{kib} KiB chunks: (a)", f"as (a), the .raw reader reading {kib} KiB at a time",
             var["pipeline"]),
            (f"{kib} KiB chunks: (b)", "as (b), same run", var["e2e"][TOPIC_SURPRISE]),
            (f"{kib} KiB chunks: queue", "as queue, same run", var["queue"]),
            (f"{kib} KiB chunks: decode", f"read + decode one {kib} KiB chunk (wall)",
             var["decode"]),
        ]
    lines = ["| measure | from → to | p50 ms | p99 ms | max ms | n |",
             "|---|---|---:|---:|---:|---:|"]
    for name, what, s in rows:
        lines.append(f"| {name} | {what} | {_f(s['p50'])} | {_f(s['p99'])} | {_f(s['max'])} "
                     f"| {s['n']} |")
    lines.append("")
    lines.append(
        f"Throughput, pace asap, same input, {tp['batches']} batches (a read-out each) × "
        f"{tp['repeats']} alternated runs per arm, best run: no subscriber "
        f"{tp['free_mev_s']:.2f} Mev/s, a stalled subscriber (SUB, RCVHWM 1, never reads) "
        f"{tp['stalled_mev_s']:.2f} Mev/s, ratio **{tp['ratio']:.2f}** (ratio of medians "
        f"{tp['median_ratio']:.2f}; publisher drops per stalled run: "
        f"{tp['stalled_publish_drops']} messages).")
    return "\n".join(lines)


def _ms(v: float | int | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def where_time_goes(res: dict[str, Any]) -> str:
    """One paragraph attributing the median and tail latency to the measured stages."""
    lat, st = res["latency"], res["stages"]
    step, ro, pub, q = lat["step"], lat["readout"], lat["publish"], lat["queue"]
    e2e, tr, a = lat["e2e"][TOPIC_SURPRISE], lat["transit"], lat["pipeline"]
    parts = [q["p50"], step["p50"], ro["p50"], pub["p50"]]
    known = sum(v for v in parts if v is not None)
    return (
        f"Where the time goes (medians, in the daemon): a {res['params'].batch_us} µs batch holds "
        f"{st['events_per_batch']:.0f} events; it waits {_ms(q['p50'])} ms in the queue, "
        f"`Network.advance` (checks + numba kernel) takes {_ms(step['p50'])} ms, the numba "
        f"read-out (beliefs, σ, predicted rate map and variance, surprise; computed before "
        f"each publication, here every batch) {_ms(ro['p50'])} ms, and publishing "
        f"the three read-out messages {_ms(pub['p50'])} ms; these sum to {known:.2f} ms "
        f"against the pipeline's own p50 of {_ms(a['p50'])} ms. Socket transit + decoding "
        f"adds {_ms(tr['p50'])} ms (end to end p50 {_ms(e2e['p50'])} ms; the subscriber "
        f"thread shares the GIL with the engine, so this includes waiting for it). "
        f"Offline, one thread, the step takes {_ms(st['step']['p50'])} ms fed back to back "
        f"and {_ms(st['step_after_pause']['p50'])} ms after a {st['pause_ms']:.1f} ms pause "
        f"(as when paced; batches interleaved), the read-out {_ms(st['readout']['p50'])} ms "
        f"back to back. Tail (p99): queue {_ms(q['p99'])} ms, "
        f"step {_ms(step['p99'])} ms, publish {_ms(pub['p99'])} ms, transit "
        f"{_ms(tr['p99'])} ms, end to end {_ms(e2e['p99'])} ms. "
        f"Of the {lat['slow_queue']} batches that waited more than 1 ms in the queue, "
        f"{lat['slow_queue_on_decode']} waited while the reader thread decoded a chunk "
        f"(1 MiB: p50 {_ms(lat['decode']['p50'])} ms wall; the decoder's numba kernels are "
        f"compiled {'with' if res['decoder_nogil'] else 'without'} `nogil`), "
        f"{lat['slow_queue_engine_busy']} arrived while the engine was still busy with the "
        f"previous batch (a batch can be in both), {lat['slow_queue_other']} neither "
        f"(waking the engine thread). "
        f"Steps that run a horizon tick (every {lat['horizon_us'] / 1e3:g} ms of stream) take p50 "
        f"{_ms(lat['step_horizon']['p50'])} ms against {_ms(lat['step_other']['p50'])} ms. "
        f"Steps spent p50 {_ms(lat['step_off_cpu']['p50'])} ms, p99 "
        f"{_ms(lat['step_off_cpu']['p99'])} ms off the CPU (descheduled on the 2 shared cores "
        f"or waiting for the GIL held by the reader or subscriber thread)."
        + _variant_sentence(res))


def _variant_sentence(res: dict[str, Any]) -> str:
    var, lat = res.get("variant"), res["latency"]
    if var is None:
        return ""
    kib = var["chunk_bytes"] // 1024
    return (f" With the reader decoding {kib} KiB at a time (`?chunk_bytes={var['chunk_bytes']}`"
            f" on the source URI; {var['runs']} run(s) alternated with the baseline runs): "
            f"queue p99 {_ms(var['queue']['p99'])} ms (baseline {_ms(lat['queue']['p99'])} ms), "
            f"pipeline p50 / p99 {_ms(var['pipeline']['p50'])} / {_ms(var['pipeline']['p99'])} "
            f"ms (baseline {_ms(lat['pipeline']['p50'])} / {_ms(lat['pipeline']['p99'])} ms), "
            f"{var['slow_queue_on_decode']} of {var['slow_queue']} slow queue waits during a "
            f"decode.")


def decoder_nogil() -> bool:
    """True if every numba kernel of the EVT decoder module releases the GIL (``nogil``)."""
    from numba.core.registry import CPUDispatcher

    import augury.adapters.evt as evt

    kernels = [k for k in vars(evt).values() if isinstance(k, CPUDispatcher)]
    return bool(kernels) and all(k.targetoptions.get("nogil", False) for k in kernels)


def headline(res: dict[str, Any]) -> dict[str, Any]:
    """The JSON summary printed last."""
    lat, tp, st = res["latency"], res["throughput"], res["stages"]
    e2e = lat["e2e"][TOPIC_SURPRISE]
    return {
        "p50_ms": lat["pipeline"]["p50"], "p99_ms": lat["pipeline"]["p99"],
        "rate_mev_s": round(lat["rate_ev_s"] / 1e6, 3),
        "dropped": lat["dropped_events"] + lat["publish_dropped"],
        "e2e_p50_ms": e2e["p50"], "e2e_p99_ms": e2e["p99"],
        "slow_subscriber_throughput_ratio": round(tp["ratio"], 3),
        "publications": lat["published"], "subscriber_missed": lat["subscriber_missed"],
        "transit_p50_ms": lat["transit"]["p50"], "transit_p99_ms": lat["transit"]["p99"],
        "queue_p50_ms": lat["queue"]["p50"], "queue_p99_ms": lat["queue"]["p99"],
        "step_p50_ms": lat["step"]["p50"], "readout_p50_ms": lat["readout"]["p50"],
        "publish_p50_ms": lat["publish"]["p50"], "hot_step_p50_ms": st["step"]["p50"],
        "paused_step_p50_ms": st["step_after_pause"]["p50"],
        "asap_mev_s": round(tp["free_mev_s"], 3),
        **({} if res.get("variant") is None else {
            "small_chunks_p50_ms": res["variant"]["pipeline"]["p50"],
            "small_chunks_p99_ms": res["variant"]["pipeline"]["p99"],
            "small_chunks_queue_p99_ms": res["variant"]["queue"]["p99"]}),
        "latency_s": round(lat["wall_s"], 2),
        "speed": round(lat["speed"], 5), "loadavg_before": res["loadavg_before"],
        "loadavg_after": res["loadavg_after"], "warmup_s": round(res["warmup_s"], 2),
    }


def docs_block(res: dict[str, Any], text: str, command: str) -> str:
    """The Markdown block written between the latency markers."""
    inp: Input = res["input"]
    lat = res["latency"]
    la0, la1 = res["loadavg_before"], res["loadavg_after"]
    alternated = ", alternated with the small-chunk variant" if res.get("variant") else ""
    return (
        f"{BEGIN}\nCommand: `{command}` (Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs; load average "
        f"1/5/15 min {la0} before, {la1} after; {time.strftime('%Y-%m-%d')}).\n\n"
        f"Input: `evt2_sample.raw` (Prophesee Gen3 640×480, 10.8 Mev/s) looped {inp.loops}× "
        f"({inp.events:,} events) into a temporary EVT 2.0 file, replayed in real time × "
        f"{lat['speed']:.4f} → {lat['rate_ev_s'] / 1e6:.2f} Mev/s for {lat['wall_s']:.1f} s "
        f"in {lat['runs']} run(s){alternated}; "
        f"batch_us {res['params'].batch_us}, a read-out (3 messages + stats) every "
        f"{res['params'].publish_ms:g} ms of stream time, "
        f"{lat['published']} read-outs; daemon from `build_daemon` in-process, a "
        f"`Subscriber` in another thread on tcp loopback (missed {lat['subscriber_missed']}, "
        f"publisher drops {lat['publish_dropped']}, events dropped {lat['dropped_events']}). "
        f"(a) and (b) use one clock (`perf_counter_ns`, same process); transit uses the "
        f"header's `wall_time_ns` against `time.time_ns` at receipt.\n\n"
        f"{text}\n\n{where_time_goes(res)}\n\n"
        f"Headline: `{json.dumps(headline(res))}`\n{END}")


def replace_block(doc: str, block: str) -> str:
    """``doc`` with the latency block replaced, or appended under SECTION if absent.

    >>> replace_block("# P\\n\\nx\\n", f"{BEGIN}\\nnew\\n{END}").splitlines()[-3:]
    ['<!-- latency:begin -->', 'new', '<!-- latency:end -->']
    >>> replace_block(f"a\\n{BEGIN}\\nold\\n{END}\\nb\\n", f"{BEGIN}\\nnew\\n{END}")
    'a\\n<!-- latency:begin -->\\nnew\\n<!-- latency:end -->\\nb\\n'
    """
    if BEGIN in doc and END in doc.split(BEGIN, 1)[1]:
        head, _, rest = doc.partition(BEGIN)
        _, _, tail = rest.partition(END)
        return head + block + tail
    return doc.rstrip() + f"\n\n{SECTION}\n\n{block}\n"


def write_docs(block: str, path: Path = DOC) -> None:
    """Read-modify-write docs/performance.md, touching only the latency block."""
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Performance\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".latency.tmp")
    tmp.write_text(replace_block(doc, block), encoding="utf-8")
    tmp.replace(path)


def run(params: BenchParams) -> dict[str, Any]:
    """Every measurement of the benchmark, in a temporary directory."""
    res: dict[str, Any] = {"loadavg_before": [round(x, 2) for x in os.getloadavg()],
                           "decoder_nogil": decoder_nogil(), "params": params}
    with tempfile.TemporaryDirectory(prefix="augury-latency-") as tmp:
        inp = write_input(Path(tmp), params)
        res["input"] = inp
        res["warmup_s"] = warm_up(inp, params)
        res["stages"] = stage_costs(inp, params, np.random.default_rng(0))
        res["throughput"] = throughput(inp, params)
        res["latency"], res["variant"] = latency(inp, params)
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="3 s latency run, fewer repeats, no small-chunk variant")
    ap.add_argument("--seconds", type=float, default=None,
                    help="wall time of the real-time latency run (s)")
    ap.add_argument("--batch-us", type=int, default=None,
                    help="source batch span in stream µs (default 1000)")
    ap.add_argument("--publish-ms", type=float, default=None,
                    help="stream time between read-outs in ms (default 1.0)")
    ap.add_argument("--write-docs", action="store_true",
                    help="replace the latency block of docs/performance.md with this run")
    args = ap.parse_args(argv)
    if not RECORDING.is_file():
        sys.exit(f"recording not found: {RECORDING} (the shared data directory is needed)")
    params = QUICK if args.quick else BenchParams()
    if args.seconds is not None:
        if not args.seconds > 0:
            sys.exit("--seconds must be > 0")
        params = dataclasses.replace(params, latency_s=args.seconds)
    if args.batch_us is not None:
        if not args.batch_us > 0:
            sys.exit("--batch-us must be > 0")
        params = dataclasses.replace(params, batch_us=args.batch_us)
    if args.publish_ms is not None:
        if not args.publish_ms > 0:
            sys.exit("--publish-ms must be > 0")
        params = dataclasses.replace(params, publish_ms=args.publish_ms)
    res = run(params)
    text = table(res)
    print(text)
    print()
    print(where_time_goes(res))
    if args.write_docs:
        command = "python -m tools.bench.latency" + (" --quick" if args.quick else "") + (
            f" --seconds {args.seconds:g}" if args.seconds is not None else "") + (
            f" --batch-us {args.batch_us}" if args.batch_us is not None else "") + (
            f" --publish-ms {args.publish_ms:g}" if args.publish_ms is not None else "") + (
            " --write-docs")
        write_docs(docs_block(res, text, command))
    print(json.dumps(headline(res)))


if __name__ == "__main__":
    main()
