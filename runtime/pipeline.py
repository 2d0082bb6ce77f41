"""Source → engine → publisher: the daemon's threads, backpressure, metrics and recovery.

Threads (DESIGN §1):

* a **reader** thread iterates the source's batches (paced for recordings), stamps each with
  its arrival time and puts it in a bounded ``EventRing`` (policy ``block`` for recordings,
  ``drop_oldest`` for live sources; every drop counted and published in ``stats``);
* the **engine** (the thread that calls ``Pipeline.run``) drains the ring, steps the network,
  serves control requests between steps, publishes read-outs with non-blocking sends (a slow
  subscriber loses messages, never stalls the engine) and hands state copies to the
  checkpoint manager's background writer, so that a slow disk never stalls it either.

The layer-1 dictionary (``dictionary`` topic: the learned weights W¹ as K1 receptive fields)
is published on a wall-clock schedule instead, once right after start and then every
``dictionary_every_s`` seconds (also while the source is quiet), because it changes slowly
and a viewer wants it refreshed every few seconds whatever the stream's pace.

The read-out (beliefs, σ, predicted rates, surprise) is computed only when it is published
or every ``check_every_us`` of stream time; a state found non-finite there is rolled back
to the last good copy (kept every ``good_every_s`` seconds) and counted; the daemon keeps
serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from augury.adapters.base import EventSource
from augury.adapters.replay import paced
from augury.adapters.ring import EventRing
from augury.checkpoint import CheckpointError, CheckpointManager
from augury.control import ControlServer, Handler, RequestError, check_args
from augury.control_commands import (
    parse_reset,
    parse_set,
    setting_learning,
    setting_publish_every_us,
)
from augury.events import EventBatch
from augury.model.compat import reconcile
from augury.model.network import Network, Readout
from augury.model.spec import ModelSpec
from augury.model.state import K_STARTED, LEARNED, init_state
from augury.publish import TOPIC_DICTIONARY, Publisher

log = logging.getLogger("augury.pipeline")

STATE_SCHEMA = 1


@dataclass(frozen=True)
class Arrival:
    """A batch as queued by the reader, with its arrival time (perf_counter ns) and the
    number of clock restarts its source had signalled up to it (``EventBatch.restart``): the
    engine still sees a restart when the queue dropped the batch that carried it."""

    batch: EventBatch
    arrival_ns: int
    clock_epoch: int = 0

    @property
    def events(self) -> np.ndarray:
        return self.batch.events


@dataclass(frozen=True)
class PipelineOptions:
    """Run-time settings of the pipeline (see augury.config for the TOML keys).

    batch_us: source batch span (µs); publish_every_us: stream time between read-outs (µs);
    queue_size: batches held between reader and engine; overflow: "block" | "drop_oldest";
    pace: "asap" | "realtime"; speed: replay speed factor; good_every_s: how often a copy of a
    good state is kept for roll-back (s); check_every_us: stream time between health checks
    of the state when nothing is published (the read-out is computed only to publish or to
    check, not at every step); wait_subscriber_s: before reading the source, wait
    up to this long for a first subscriber (XPUB notification), so that a short recording is
    not published into the void; restart_after_us: a batch that ends more than this long
    (µs) before the time the network has reached, one its source marks as the first after
    a restart of its clock, or the first batch of a run (a daemon resumed from a checkpoint)
    when it starts before that time, means the stream's clock restarted (a camera
    reconnected, a new sender session, a recording replayed again, a resume):
    the network keeps what it learned, restarts its fast state (traces, beliefs, clock) at
    the new time and goes on (counted in ``stream_restarts``); smaller steps back (after a
    queue drop) are trimmed or skipped as stale. dictionary_every_s: wall-clock seconds
    between two ``dictionary`` messages (the layer-1 weights), the first one right after
    start; 0 disables the topic.
    """

    batch_us: int = 10_000
    publish_every_us: int = 50_000
    queue_size: int = 64
    overflow: str = "block"
    pace: str = "asap"
    speed: float = 1.0
    good_every_s: float = 1.0
    check_every_us: int = 100_000
    wait_subscriber_s: float = 0.0
    restart_after_us: int = 1_000_000
    dictionary_every_s: float = 5.0


@dataclass
class Metrics:
    """Cumulative counters and recent latencies of one run (published on ``stats``).

    latencies_ns: per publication, from the arrival of the newest batch it includes (stamped
    by the reader after pacing) to the return of the publish calls (ns).
    """

    batches: int = 0
    events_in: int = 0
    events_processed: int = 0
    source_dropped: int = 0
    source_malformed: int = 0
    bad_batches: int = 0
    rollbacks: int = 0
    stream_restarts: int = 0
    spikes: int = 0
    synops: int = 0
    published: int = 0
    latencies_ns: deque[int] = field(default_factory=lambda: deque(maxlen=20_000))
    started_s: float = field(default_factory=time.monotonic)
    _quantiles: tuple[float, float | None, float | None] = (-1.0, None, None)

    def latency_ms(self, q: float, *, max_age_s: float = 0.5) -> float | None:
        """p50 or p99 (q = 50 | 99) of the recent arrival→publication latencies (ms).

        Recomputed at most every ``max_age_s`` seconds, so that a daemon publishing at kHz
        does not sort 20,000 numbers per message.
        """
        if q not in (50, 99):
            raise ValueError(f"latency quantile must be 50 or 99, got {q}")
        now = time.monotonic()
        if now - self._quantiles[0] > max_age_s:
            if self.latencies_ns:
                lat = np.fromiter(self.latencies_ns, np.int64)
                p50, p99 = (float(v) / 1e6 for v in np.percentile(lat, (50, 99)))
                self._quantiles = (now, p50, p99)
            else:
                self._quantiles = (now, None, None)
        return self._quantiles[1] if q == 50 else self._quantiles[2]


def readout_messages(
    r: Readout, prediction_meta: Mapping[str, Any] | None = None
) -> list[tuple[str, dict[str, np.ndarray], dict[str, Any]]]:
    """The schema-v2 messages (topic, arrays, meta) for one read-out; see docs/protocol.md.

    prediction_meta: e.g. horizon_ms, pool and tau_us of the model, sent with "prediction".
    "prediction" also carries the observed counts of the last whole horizon window
    (``count_observed``, the layout of ``count_mean``) and that window's bounds in stream µs
    (meta ``observed_t_start_us``, ``observed_t_end_us``; null before the first window).
    """
    prediction_meta = dict(prediction_meta or {})
    beliefs: dict[str, np.ndarray] = {}
    for i, (mu, sigma) in enumerate(zip(r.mu, r.sigma, strict=True), start=1):
        beliefs[f"mu_l{i}"] = mu
        beliefs[f"sigma_l{i}"] = sigma
    return [
        ("beliefs", beliefs, {"layers": len(r.mu)}),
        ("prediction", {"rate_hz": r.rate_hz, "rate_var": r.rate_var,
                        "count_mean": r.count_mean, "count_var": r.count_var,
                        "count_observed": r.count_observed},
         {"count_distribution": "poisson_mixture",
          "observed_t_start_us": r.obs_t_start_us, "observed_t_end_us": r.obs_t_end_us,
          **prediction_meta}),
        ("surprise", {"map": r.surprise_map, "zmap": r.surprise_zmap,
                      "total": np.array(r.surprise_total, np.float64),
                      "zscore": np.array(r.surprise_z, np.float64)},
         {"total": r.surprise_total, "zscore": r.surprise_z, "free_energy": r.free_energy}),
    ]


def dictionary_message(spec: ModelSpec, w1: np.ndarray, s1: np.ndarray | None = None,
                       *, every_s: float | None = None
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The ``dictionary`` message (arrays, meta): the layer-1 weights as K1 receptive fields.

    w1: W¹ of the state, (nW1, D1, K1) with D1 = column·column·2 and nW1 = 1 (weights shared
    by every column) or n1 (``per_column_weights``); s1: their posterior variance s²,
    same shape, or None. Returns ``w_l1`` (float32, (K1, column, column, 2)): atom k's weight
    on the pooled cell (row, col) of a column (row 0 at the top) and polarity p (0 OFF,
    1 ON), in trace units per unit of belief (events); ``w_var_l1`` (float32, same layout,
    weight²) when s1 is given. Channel d of a column is cell (d // 2 // column,
    d // 2 % column), polarity d % 2: the order of ``augury.model.network.column_to_map``.
    With per-column weights both are the mean over the n1 columns (meta ``shared`` false,
    ``aggregate`` "mean_over_columns"). Meta: ``k1``, ``column``, ``pool`` (sensor px per
    cell side), ``shared``, ``aggregate``, ``columns`` (nW1), ``w_max`` (the weights' soft
    bound), ``every_s`` (the publication period, s) when given.
    """
    c = spec.column
    w1 = np.asarray(w1)
    expected = (spec.n1 if spec.per_column_weights else 1, spec.d1, spec.k1)
    if w1.shape != expected:
        raise ValueError(f"W1 must have shape {expected} (nW1, D1, K1), got {w1.shape}")

    def atoms(w: np.ndarray) -> np.ndarray:
        mean = w[0] if w.shape[0] == 1 else w.mean(axis=0)  # (D1, K1)
        return np.ascontiguousarray(mean.T.reshape(spec.k1, c, c, 2), dtype=np.float32)

    arrays = {"w_l1": atoms(w1)}
    if s1 is not None:
        if np.shape(s1) != expected:
            raise ValueError(f"S1 must have the shape of W1 {expected}, got {np.shape(s1)}")
        arrays["w_var_l1"] = atoms(np.asarray(s1))
    shared = w1.shape[0] == 1
    meta: dict[str, Any] = {
        "k1": spec.k1, "column": c, "pool": spec.pool, "shared": shared,
        "aggregate": "none" if shared else "mean_over_columns", "columns": int(w1.shape[0]),
        "layout": "k,row,col,polarity", "units": "trace per unit belief (events)",
        "w_max": spec.w_max}
    if every_s is not None:
        meta["every_s"] = every_s
    return arrays, meta


def readout_is_finite(r: Readout) -> bool:
    """True if every published number of the read-out is finite."""
    arrays = [*r.mu, *r.sigma, r.rate_hz, r.rate_var, r.count_mean, r.count_var,
              r.surprise_map]
    scalars = (r.surprise_total, r.free_energy)
    return all(np.isfinite(a).all() for a in arrays) and all(np.isfinite(s) for s in scalars)


class Pipeline:
    """One source, one network, one publisher; optional control server and checkpoints."""

    def __init__(
        self,
        source: EventSource,
        network: Network,
        publisher: Publisher,
        options: PipelineOptions,
        *,
        control: ControlServer | None = None,
        checkpoints: CheckpointManager | None = None,
        state_meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.source = source
        self.network = network
        self.publisher = publisher
        self.options = options
        self.control = control
        self.checkpoints = checkpoints
        self.state_meta = dict(state_meta or {})
        self.metrics = Metrics()
        self.ring = EventRing(1 << 62, options.overflow, max_items=options.queue_size)
        self.stop_event = threading.Event()
        self._reader: threading.Thread | None = None
        self._reader_error: BaseException | None = None
        self._reader_done = threading.Event()
        self._good: dict[str, np.ndarray] | None = None
        self._good_s = 0.0
        self._next_publish_us: int | None = None
        self._next_check_us = 0
        # clock restarts of the source seen by the engine so far; None before a run's first
        # batch (whose clock is new to the network: a resume is a stream restart)
        self._clock_epoch: int | None = None
        self._pending_arrivals: list[int] = []
        self.publish_every_us = options.publish_every_us
        self._next_dictionary_s = 0.0  # monotonic s; 0: due at the next chance
        if control is not None:
            control.handlers.update(self.control_handlers())

    # -- reader thread ----------------------------------------------------------------------
    def _read(self) -> None:
        epoch = 0
        try:
            batches: Iterator[EventBatch] = self.source.batches(batch_us=self.options.batch_us)
            for batch in paced(batches, pace=self.options.pace, speed=self.options.speed):
                if self.stop_event.is_set():
                    break
                if batch.restart:
                    epoch += 1
                item = Arrival(batch, time.perf_counter_ns(), epoch)
                while not self.ring.put(item, timeout=0.1):
                    if self.stop_event.is_set() or self.ring.closed:
                        return
                    if self.options.overflow != "block":
                        break
        except BaseException as exc:  # noqa: BLE001 - handed to the engine, which logs it
            self._reader_error = exc
        finally:
            self._reader_done.set()

    def state_snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Copies of the network state plus metadata, for a checkpoint."""
        arrays = self.network.state_dict()
        arrays.pop("__learning__", None)  # kept in meta: array names are plain identifiers
        meta = {**self.state_meta, "schema": STATE_SCHEMA, "spec": self.network.spec_json(),
                "t_us": self.network.t_us, "events_processed": self.metrics.events_processed,
                "learning": self.network.learning}
        return arrays, meta

    # -- control ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The run's counters (also the body of the ``stats`` topic): the source's malformed
        input (``source_malformed``, and ``source_stats`` by reason when the source gives
        them, e.g. UDP) next to the engine's."""
        m = self.metrics
        by_source = getattr(self.source, "source_stats", None)
        return {
            "source": self.source.uri, "format": self.source.format,
            "engine": getattr(self.network, "engine", "numba"),
            "geometry": [self.source.geometry.width, self.source.geometry.height],
            "t_us": self.network.t_us, "learning": self.network.learning,
            "batches": m.batches, "events_in": m.events_in,
            "events_processed": m.events_processed, "source_dropped": m.source_dropped,
            "source_malformed": m.source_malformed,
            **({"source_stats": by_source()} if callable(by_source) else {}),
            "queue_dropped_events": self.ring.dropped_events, "queue_depth": len(self.ring),
            "bad_batches": m.bad_batches, "rollbacks": m.rollbacks,
            "stream_restarts": m.stream_restarts,
            "published": m.published, "publish_dropped": self.publisher.dropped,
            "latency_p50_ms": m.latency_ms(50), "latency_p99_ms": m.latency_ms(99),
            "checkpoints_saved": self.checkpoints.saved if self.checkpoints else 0,
            "publish_every_us": self.publish_every_us,
            "uptime_s": time.monotonic() - m.started_s,
        }

    def control_handlers(self) -> dict[str, Handler]:
        """The control commands over this pipeline, every argument checked (RequestError).

        ``status`` (plus the control server's counters when one is wired), ``pause_learning``,
        ``resume_learning``, ``snapshot`` take no argument; ``reset`` resets exactly the
        scope it names (``RESET_SCOPES``: ``beliefs``, the default, keeps everything learned
        and is the stream-restart notion; ``all`` is a fresh network); ``set`` takes
        ``{"key": NAME, "value": V}`` or ``{NAME: V, ...}`` (``SETTABLE``), all checked
        before any is applied (augury.control_commands).
        """
        def status(args: dict[str, Any]) -> dict[str, Any]:
            check_args("status", args)
            if self.control is None:
                return self.status()
            return {**self.status(), "control": self.control.stats()}

        def pause(args: dict[str, Any]) -> dict[str, Any]:
            check_args("pause_learning", args)
            self.network.freeze_learning()
            return {"learning": False}

        def resume(args: dict[str, Any]) -> dict[str, Any]:
            check_args("resume_learning", args)
            self.network.resume_learning()
            return {"learning": True}

        def snapshot(args: dict[str, Any]) -> dict[str, Any]:
            check_args("snapshot", args)
            if self.checkpoints is None:
                raise RequestError("no state directory configured (--state-dir)")
            path = self.checkpoints.save_now(self.state_snapshot)
            return {"path": str(path)}

        def reset(args: dict[str, Any]) -> dict[str, Any]:
            what = parse_reset(args)
            if what == "beliefs":
                restart_stream(self.network)  # learned state kept
            else:
                self.network.reset()
                self._good = None  # the roll-back copy holds what was just reset
                self._next_dictionary_s = 0.0  # show the forgotten weights at once
            log.info("control: reset %s", what)
            return {"reset": what}

        def set_(args: dict[str, Any]) -> dict[str, Any]:
            checked = parse_set(args)  # everything checked before anything is applied
            for key, value in checked.items():
                if key == "publish_every_us":
                    self.publish_every_us = setting_publish_every_us(value)
                elif key == "learning":
                    (self.network.resume_learning if setting_learning(value)
                     else self.network.freeze_learning)()
            return {"set": checked}

        return {"status": status, "pause_learning": pause, "resume_learning": resume,
                "snapshot": snapshot, "reset": reset, "set": set_}

    # -- engine -----------------------------------------------------------------------------
    def _restart_reason(self, batch: EventBatch, *, first: bool, restarted: bool) -> str | None:
        """Why ``batch`` restarts the stream's clock, or None if it continues the stream.

        The network's clock must have started. A batch whose source marks a restart of its
        clock in the middle of a run (``restarted``: the ``clock_epoch`` changed, e.g. a new
        UDP sender session) is a restart wherever its time lies: the batches between may
        have been dropped by a full queue, so the first one seen can start after the
        network's time. Otherwise the batch must start before the time the network reached
        (``network.t_us``, µs), and it is a restart if it is the first one of this run
        (``first``: after a resume from a checkpoint the source's clock is not the one the
        network's time came from, however close the two times are) or if it ends
        ``restart_after_us`` or more before that time. A smaller, unmarked step back in the
        middle of a run is not a restart: ``_step`` trims it as stale.
        """
        t_us = self.network.t_us
        if not self.network.state.clock[K_STARTED]:
            return None
        if restarted and not first:
            return "the source restarted its clock"
        if batch.t_start_us >= t_us:
            return None
        if first:
            return "the first batch of this run: a resume from a checkpoint"
        if batch.t_end_us + self.options.restart_after_us <= t_us:
            return f"a step back of at least restart_after_us={self.options.restart_after_us} µs"
        return None

    def _step(self, item: Arrival) -> bool:
        """Advance the network by one batch (no read-out); False if the batch was skipped."""
        batch = item.batch
        m = self.metrics
        first = self._clock_epoch is None
        restarted = item.clock_epoch != self._clock_epoch
        self._clock_epoch = item.clock_epoch
        m.batches += 1
        m.events_in += len(batch)
        m.source_dropped += batch.counters.dropped
        m.source_malformed += batch.counters.malformed
        why = self._restart_reason(batch, first=first, restarted=restarted)
        if why is not None:
            log.warning("the stream restarted (%s): network time %d µs, next batch from %d µs; "
                        "learned state kept, traces and beliefs restart", why,
                        self.network.t_us, batch.t_start_us)
            restart_stream(self.network)
            self._good = None
            self._next_publish_us = None  # the schedules follow the new stream time
            self._next_check_us = 0
            m.stream_restarts += 1
        if batch.t_start_us < self.network.t_us:
            # after a queue drop or a source restart time may not tile; skip what is stale
            if batch.t_end_us <= self.network.t_us:
                m.bad_batches += 1
                return False
            ev = batch.events[batch.events["t"] >= self.network.t_us]
            batch = EventBatch(ev, self.network.t_us, batch.t_end_us, batch.seq, batch.counters)
        try:
            counts = self.network.advance(batch)
        except ValueError as exc:  # a batch that breaks the stream contract: count, go on
            m.bad_batches += 1
            log.warning("skipped a bad batch: %s", exc)
            return False
        m.events_processed += counts.events
        m.spikes += counts.spikes_up + counts.spikes_down
        m.synops += counts.synops
        self._pending_arrivals.append(item.arrival_ns)
        return True

    def _checked_readout(self) -> Readout | None:
        """The read-out, or None after rolling a non-finite state back to the last good copy
        (counted in ``rollbacks``). A good copy is kept every ``good_every_s`` seconds."""
        r = self.network.readout()
        if not readout_is_finite(r):
            self.metrics.rollbacks += 1
            log.error("non-finite state at t=%d µs; rolled back to the last good state",
                      self.network.t_us)
            if self._good is not None:
                self.network.load_state_dict(self._good)
            else:
                self.network.reset()
            return None
        now = time.monotonic()
        if self._good is None or now - self._good_s >= self.options.good_every_s:
            self._good = self.network.state_dict()
            self._good_s = now
        return r

    def _publish(self, r: Readout, sensor_time_us: int) -> None:
        spec = self.network.spec
        pmeta = {"horizon_ms": spec.horizon_us / 1e3, "pool": spec.pool, "tau_us": spec.tau_us}
        for topic, arrays, meta in readout_messages(r, pmeta):
            self.publisher.publish(topic, arrays, meta, stream_time_us=r.t_us,
                                   sensor_time_us=sensor_time_us)
        now = time.perf_counter_ns()
        # freshness of what is published: from the arrival of the newest batch it includes
        # (older batches of the same read-out waited for the publication schedule, by design)
        self.metrics.latencies_ns.append(now - self._pending_arrivals[-1])
        self._pending_arrivals.clear()
        m = self.metrics
        elapsed = max(time.monotonic() - m.started_s, 1e-9)
        stats = {
            **{k: v for k, v in self.status().items() if k not in ("geometry",)},
            "events_per_s_in": m.events_in / elapsed,
            "events_per_s_processed": m.events_processed / elapsed,
            "spikes_per_s": m.spikes / elapsed, "synops_per_s": m.synops / elapsed,
            "free_energy": r.free_energy,
        }
        self.publisher.publish("stats", {}, stats, stream_time_us=r.t_us,
                               sensor_time_us=sensor_time_us)
        m.published += 1

    def _maybe_publish_dictionary(self) -> None:
        """Publish the ``dictionary`` topic when its wall-clock time has come (engine thread).

        Skipped (and tried again 0.1 s later) while W1 is not finite: the health check of
        the read-out rolls such a state back.
        """
        every = self.options.dictionary_every_s
        now = time.monotonic()
        if every <= 0 or now < self._next_dictionary_s:
            return
        st = self.network.state
        if not np.isfinite(st.W1).all():
            self._next_dictionary_s = now + min(every, 0.1)
            return
        arrays, meta = dictionary_message(self.network.spec, st.W1, st.S1, every_s=every)
        meta["learning"] = self.network.learning
        self.publisher.publish(TOPIC_DICTIONARY, arrays, meta, stream_time_us=self.network.t_us)
        self._next_dictionary_s = now + every

    def run(self, *, max_batches: int | None = None) -> Metrics:
        """Run until the source ends, ``stop_event`` is set or ``max_batches`` are stepped."""
        deadline = time.monotonic() + self.options.wait_subscriber_s
        while (not self.publisher.subscriptions and not self.stop_event.is_set()
               and time.monotonic() < deadline):
            self.publisher.poll_subscriptions(timeout_ms=50)
            if self.control is not None:
                self.control.poll(0)
        self._reader = threading.Thread(target=self._read, name="augury-reader", daemon=True)
        self._clock_epoch = None  # each run reads its source from the start: a new clock
        self._reader.start()
        self._next_check_us = 0
        self._next_dictionary_s = 0.0  # once right after start
        try:
            while not self.stop_event.is_set():
                if self.control is not None:
                    self.control.poll(0)
                self._maybe_publish_dictionary()
                item = self.ring.get(timeout=0.02)
                if item is None:
                    if self._reader_done.is_set() and len(self.ring) == 0:
                        break
                    continue
                if self._step(item):
                    t = self.network.t_us
                    if self._next_publish_us is None:
                        self._next_publish_us = t
                    if t >= self._next_publish_us or t >= self._next_check_us:
                        self._next_check_us = t + self.options.check_every_us
                        r = self._checked_readout()
                        if r is not None and t >= self._next_publish_us:
                            self._publish(r, item.batch.t_end_us)
                            self._next_publish_us = t + self.publish_every_us
                if self.checkpoints is not None:
                    self.checkpoints.maybe_save(self.state_snapshot)
                if max_batches is not None and self.metrics.batches >= max_batches:
                    break
            if self._pending_arrivals:  # what was processed since the last publication
                r = self._checked_readout()
                if r is not None:
                    self._publish(r, r.t_us)
        finally:
            self.stop_event.set()
            self.ring.close()
            self._reader.join(timeout=5.0)
            self._finish_checkpoints()
        if self._reader_error is not None:
            raise self._reader_error
        return self.metrics

    def _finish_checkpoints(self) -> None:
        """Write a final checkpoint synchronously (after any background write)."""
        if self.checkpoints is None:
            return
        try:
            path = self.checkpoints.save_now(self.state_snapshot)
            log.info("final checkpoint %s", path)
        except OSError as exc:
            log.error("final checkpoint failed: %s", exc)
        except CheckpointError as exc:  # non-finite state is never saved; older ones stay
            log.error("final checkpoint refused: %s", exc)


KEPT_ACROSS_RESTARTS = (*LEARNED, "counters", "baseline", "sbase1")
"""State that survives a restart of the stream's clock: what was learned, the cumulative
counters and the surprise baselines (statistics of the scene, not of the moment)."""


def restart_stream(network: Network) -> None:
    """Keep the learned state, reset the fast state (traces, beliefs, sent values, active
    columns, clock) to its initial value: the next batch starts the clock afresh."""
    d = network.state_dict()
    for name, value in init_state(network.spec)._asdict().items():
        if name not in KEPT_ACROSS_RESTARTS:
            d[name] = value
    network.load_state_dict(d)


def restore_network(network: Network, checkpoints: CheckpointManager) -> Path | None:
    """Load the newest valid checkpoint into ``network``; None if there is none.

    Learned state is kept across changed hyper-parameters and across versions that added or
    removed state arrays (``augury.model.compat``; each difference is logged). Raises
    ValueError if the checkpoint was written for another network geometry (sensor, pooling,
    columns, beliefs, layers): learned state is then never discarded silently, the user
    must move the state directory or match the configuration.
    """
    found = checkpoints.load_latest()
    if found is None:
        return None
    try:
        fitted = reconcile(str(found.meta.get("spec")), dict(found.arrays), network.spec)
        network.load_state_dict(fitted.arrays)
    except ValueError as exc:
        raise ValueError(f"checkpoint {found.path}: {exc}; use the same sensor and [model] "
                         "geometry, or another --state-dir") from None
    if fitted.summary():
        log.warning("resumed %s with changes: %s", found.path, fitted.summary())
    if found.meta.get("learning", True):
        network.resume_learning()
    else:
        network.freeze_learning()
    return Path(found.path)
