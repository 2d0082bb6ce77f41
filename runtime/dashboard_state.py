"""What the dashboard shows, computed from the daemon's messages (no web code here).

``DashboardState.ingest(msg)`` takes every received schema-v1 message (any thread);
``DashboardState.payload(cursor)`` returns the JSON-able object the page draws: the latest
maps (newest frame per topic only: older frames are dropped, never queued), the time-series
points after ``cursor``, and the link status (live / stalled / waiting, gaps, restarts).

Maps (pooled grid, rows × cols, row 0 at the top), sent as base64 little-endian float32:

* ``observed``: events counted in the last whole horizon window (``count_observed``, ON + OFF);
* ``predicted``: events expected in the next horizon window (``count_mean``, ON + OFF);
* ``difference``: observed − the prediction made one horizon earlier for that very window
  (when the publish period equals the horizon; else observed − the current prediction);
* ``uncertainty``: predictive sd of the count, √(Σ_polarity ``count_var``) (events);
* ``surprise_z``: per-column surprise z-score (``surprise.zmap``, sd).

The layer-1 dictionary (``dictionary`` topic, every few seconds) is kept apart from the maps
and resent only when a newer one arrived: ``w_l1`` (K1, column, column, 2) as base64
float32 with its colour range, plus its age on the dashboard's clock in every update.

Time series (one point per ``prediction`` or ``stats`` message):

* forecast log-likelihood per event (nats) of the model's Δ-ahead count map and of
  persistence (last window's counts), scored on the window that then arrives, with the same
  floor as ``augury.model.scoring`` (only when consecutive windows tile: publish period = Δ);
* surprise z of the whole sensor (an alarm above ``alarm_z``);
* events/s received and processed, and drops per s, over intervals of at least 0.25 s between
  ``stats`` messages (the daemon's wall clock); latency p50 / p99 (ms); synaptic operations
  per processed event.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from augury.model.scoring import poisson_loglik

MAX_MAP_CELLS = 160 * 120
"""Largest map sent to the page (cells); larger pooled grids are block-averaged down."""
SERIES_POINTS = 1200
"""Time-series points kept per series (older ones are dropped)."""


def downsample(a: np.ndarray, max_cells: int = MAX_MAP_CELLS) -> np.ndarray:
    """Block-mean of a 2-D map by the smallest integer factor f that gives ≤ max_cells cells.

    a: (rows, cols); returns (ceil(rows/f), ceil(cols/f)) float32 (edges padded by the edge
    mean: padding cells are ignored).
    """
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"a map must be 2-D, got shape {a.shape}")
    f = 1
    while (-(-a.shape[0] // f)) * (-(-a.shape[1] // f)) > max_cells:
        f += 1
    if f == 1:
        return a
    r, c = -(-a.shape[0] // f) * f, -(-a.shape[1] // f) * f
    pad = np.full((r, c), np.nan, np.float32)
    pad[: a.shape[0], : a.shape[1]] = a
    return np.nanmean(pad.reshape(r // f, f, c // f, f), axis=(1, 3)).astype(np.float32)


def encode_map(a: np.ndarray, *, symmetric: bool = False) -> dict[str, Any]:
    """A 2-D map as {"rows", "cols", "b64" (float32 LE, row-major), "lo", "hi"}.

    lo/hi: the colour scale's range (finite values only; ±max|a| when ``symmetric``).
    """
    m = downsample(np.nan_to_num(np.asarray(a, np.float32), nan=0.0, posinf=0.0, neginf=0.0))
    if symmetric:
        top = float(np.max(np.abs(m))) if m.size else 0.0
        lo, hi = -top, top
    else:
        lo = float(m.min()) if m.size else 0.0
        hi = float(m.max()) if m.size else 0.0
    data = np.ascontiguousarray(m, dtype="<f4").tobytes()
    return {"rows": int(m.shape[0]), "cols": int(m.shape[1]),
            "b64": base64.b64encode(data).decode("ascii"), "lo": lo, "hi": hi}


def encode_dictionary(msg: Any) -> dict[str, Any] | None:
    """The page's form of a ``dictionary`` message, or None if it carries no ``w_l1``.

    Returns {"k1", "column", "pool", "shared", "columns", "every_s", "learning", "t_us",
    "seq", "b64" (``w_l1`` float32 LE, C order (K1, column, column, 2): atom, row, col,
    polarity 0 OFF / 1 ON), "lo", "hi" (colour range: min(0, min w) .. max w, weight units),
    "sd_median" (median posterior sd √s² of the weights, or None)}.
    """
    w = msg.arrays.get("w_l1")
    if w is None or w.ndim != 4 or w.shape[3] != 2 or w.shape[1] != w.shape[2]:
        return None
    w = np.nan_to_num(np.asarray(w, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    var = msg.arrays.get("w_var_l1")
    sd = None if var is None or var.shape != w.shape else float(
        np.median(np.sqrt(np.maximum(np.asarray(var, np.float64), 0.0))))
    meta = msg.meta
    return {"k1": int(w.shape[0]), "column": int(w.shape[1]), "pool": meta.get("pool"),
            "shared": meta.get("shared", True), "columns": meta.get("columns"),
            "every_s": meta.get("every_s"), "learning": meta.get("learning"),
            "t_us": msg.stream_time_us, "seq": msg.seq,
            "b64": base64.b64encode(np.ascontiguousarray(w, "<f4").tobytes()).decode("ascii"),
            "lo": min(0.0, float(w.min())) if w.size else 0.0,
            "hi": float(w.max()) if w.size else 0.0, "sd_median": sd}


def polarity_sum(a: np.ndarray) -> np.ndarray:
    """(rows, cols, 2) per-polarity map → (rows, cols) sum; a 2-D map is returned as is."""
    a = np.asarray(a)
    return a.sum(axis=-1) if a.ndim == 3 else a


@dataclass
class ForecastScore:
    """Log-likelihood per event (nats) of one scored window, model and persistence."""

    t_us: int
    model: float
    persistence: float
    events: int


@dataclass
class ForecastScorer:
    """Scores each published Δ-ahead forecast on the window that follows it.

    The prediction published at stream time t covers [t, t + Δ); it is scored when a later
    ``prediction`` message reports ``count_observed`` for exactly that window
    (``observed_t_start_us == t``), i.e. when the publish period equals Δ. Persistence
    forecasts the previous window's counts for the next one. ``note`` says why nothing is
    scored otherwise.
    """

    prev_t_us: int | None = None
    prev_mean: np.ndarray | None = None
    prev_observed: np.ndarray | None = None
    note: str = "waiting for two consecutive prediction messages"

    def reset(self) -> None:
        """Forget the previous forecast (after a daemon restart)."""
        self.prev_t_us = self.prev_mean = self.prev_observed = None

    def update(self, t_us: int, mean: np.ndarray, observed: np.ndarray,
               obs_start_us: int | None, obs_end_us: int | None) -> ForecastScore | None:
        """Take one ``prediction`` message; the score of the previous forecast, or None."""
        score = None
        if (self.prev_t_us is not None and obs_start_us == self.prev_t_us
                and self.prev_mean is not None and self.prev_observed is not None
                and self.prev_mean.shape == observed.shape):
            n = np.rint(observed).astype(np.int64)
            events = int(n.sum())
            if events > 0:
                score = ForecastScore(
                    t_us=int(obs_end_us if obs_end_us is not None else t_us),
                    model=poisson_loglik(self.prev_mean, n) / events,
                    persistence=poisson_loglik(self.prev_observed, n) / events,
                    events=events)
            self.note = ""
        elif self.prev_t_us is not None and obs_start_us is not None:
            period_ms = (t_us - self.prev_t_us) / 1e3
            self.note = (f"not scored: the publish period ({period_ms:g} ms) differs from the "
                         "horizon; run the daemon with --rate-ms equal to the horizon")
        self.prev_t_us = int(t_us)
        self.prev_mean = np.asarray(mean, np.float64).copy()
        self.prev_observed = np.asarray(observed, np.float64).copy()
        return score


@dataclass
class StatsRates:
    """Recent rates from ``stats`` messages at least ``min_interval_s`` apart (wall clock of
    the daemon: the header's ``wall_time_ns``, so that delivery jitter does not matter).

    ``update`` returns None for messages closer than that to the last rated one: a daemon
    publishing every 10 ms would otherwise give rates over 10 ms, mostly batching noise.
    """

    min_interval_s: float = 0.25
    prev: dict[str, float] | None = None

    @staticmethod
    def totals(meta: dict[str, Any], wall_s: float) -> dict[str, float]:
        """Cumulative counters of one ``stats`` meta (synops ≈ synops_per_s · uptime_s)."""
        pub = meta.get("publish_dropped") or {}
        drops = (float(meta.get("source_dropped") or 0) + float(meta.get("queue_dropped_events")
                 or 0) + float(sum(v for v in pub.values() if isinstance(v, (int, float)))))
        return {"wall_s": wall_s, "in": float(meta.get("events_in") or 0),
                "proc": float(meta.get("events_processed") or 0), "drops": drops,
                "synops": float(meta.get("synops_per_s") or 0.0)
                * float(meta.get("uptime_s") or 0.0)}

    def update(self, meta: dict[str, Any], wall_s: float) -> dict[str, float | None] | None:
        """Rates since the last rated ``stats`` (values None on the first one or after a
        restart); None when less than ``min_interval_s`` has passed since it."""
        cur = self.totals(meta, wall_s)
        prev = self.prev
        if prev is not None and cur["proc"] >= prev["proc"] \
                and 0 <= cur["wall_s"] - prev["wall_s"] < self.min_interval_s:
            return None
        self.prev = cur
        out: dict[str, float | None] = {
            "in_hz": None, "proc_hz": None, "drops_hz": None, "synops_per_event": None,
            "latency_p50_ms": meta.get("latency_p50_ms"),
            "latency_p99_ms": meta.get("latency_p99_ms")}
        if prev is None or cur["proc"] < prev["proc"]:
            return out
        dt = cur["wall_s"] - prev["wall_s"]
        if dt <= 0:
            return out
        out["in_hz"] = (cur["in"] - prev["in"]) / dt
        out["proc_hz"] = (cur["proc"] - prev["proc"]) / dt
        out["drops_hz"] = max(0.0, cur["drops"] - prev["drops"]) / dt
        d_ev = cur["proc"] - prev["proc"]
        out["synops_per_event"] = (cur["synops"] - prev["synops"]) / d_ev if d_ev > 0 else None
        return out


@dataclass
class Link:
    """What arrived from the daemon: counts, gaps, restarts, time of the last message."""

    received: int = 0
    gaps: int = 0
    restarts: int = 0
    last_wall_s: float | None = None
    last_stream_us: int | None = None
    missed: dict[str, int] = field(default_factory=dict)


class DashboardState:
    """Latest frame per topic plus time series; thread-safe (one lock).

    stall_s: seconds without any message after which the link shows "stalled";
    alarm_z: surprise z above which a point is an alarm; clock: monotonic seconds
    (an argument so that tests control time).
    """

    def __init__(self, *, stall_s: float = 3.0, alarm_z: float = 3.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self.alarm_z = alarm_z
        self._clock = clock
        self._started_s = clock()
        self._lock = threading.Lock()
        self._maps: dict[str, Any] = {}
        self._maps_version = 0
        self._points: deque[dict[str, Any]] = deque(maxlen=SERIES_POINTS)
        self._next_point = 0
        self._scorer = ForecastScorer()
        self._rates = StatsRates()
        self._link = Link()
        self._last_seq: dict[str, int] = {}
        self._stats: dict[str, Any] = {}
        self._prediction_meta: dict[str, Any] = {}
        self._dictionary: dict[str, Any] | None = None
        self._dictionary_s: float | None = None  # when it arrived (clock s)
        self._dictionary_version = 0
        self.control: dict[str, Any] = {"reachable": False, "status": None}
        self.version = 0
        """Bumped on every ingested message (the server wakes its clients on it)."""

    def _point(self, kind: str, t_us: int, **values: Any) -> None:
        self._points.append({"i": self._next_point, "kind": kind, "t": t_us / 1e6, **values})
        self._next_point += 1

    def _restart(self) -> None:
        self._link.restarts += 1
        self._scorer.reset()
        self._rates.prev = None
        self._last_seq.clear()

    def ingest(self, msg: Any) -> None:
        """Take one decoded message (``augury.client.Message``)."""
        now = self._clock()
        with self._lock:
            link = self._link
            last = self._last_seq.get(msg.topic)
            if last is not None and msg.seq <= last:
                self._restart()
            elif last is not None and msg.seq > last + 1:
                link.gaps += msg.seq - last - 1
                link.missed[msg.topic] = link.missed.get(msg.topic, 0) + msg.seq - last - 1
            self._last_seq[msg.topic] = msg.seq
            link.received += 1
            link.last_wall_s = now
            link.last_stream_us = msg.stream_time_us
            if msg.topic == "prediction":
                self._ingest_prediction(msg)
            elif msg.topic == "surprise":
                self._ingest_surprise(msg)
            elif msg.topic == "stats":
                self._ingest_stats(msg)
            elif msg.topic == "dictionary":
                enc = encode_dictionary(msg)
                if enc is not None:
                    self._dictionary, self._dictionary_s = enc, now
                    self._dictionary_version += 1
            self.version += 1

    def _ingest_prediction(self, msg: Any) -> None:
        a, meta = msg.arrays, msg.meta
        if "count_mean" not in a:
            return
        mean = polarity_sum(a["count_mean"])
        observed = polarity_sum(a.get("count_observed", np.zeros_like(a["count_mean"])))
        var = polarity_sum(a.get("count_var", np.zeros_like(a["count_mean"])))
        prev_mean, prev_t = self._scorer.prev_mean, self._scorer.prev_t_us
        start = meta.get("observed_t_start_us")
        matched = prev_mean is not None and start == prev_t and prev_mean.shape == mean.shape
        score = self._scorer.update(msg.stream_time_us, mean, observed, start,
                                    meta.get("observed_t_end_us"))
        forecast_for_observed = prev_mean if matched else mean
        self._maps.update(
            observed=encode_map(observed), predicted=encode_map(mean),
            difference=encode_map(observed - forecast_for_observed, symmetric=True),
            uncertainty=encode_map(np.sqrt(np.maximum(var, 0.0))))
        self._prediction_meta = {k: meta.get(k) for k in
                                 ("horizon_ms", "pool", "observed_t_start_us",
                                  "observed_t_end_us")}
        self._prediction_meta["difference_matched"] = bool(matched)
        self._prediction_meta["t_us"] = msg.stream_time_us
        self._maps_version += 1
        if score is not None:
            self._point("forecast", score.t_us, model=score.model,
                        persistence=score.persistence, events=score.events)

    def _ingest_surprise(self, msg: Any) -> None:
        zmap = msg.arrays.get("zmap")
        if zmap is not None:
            self._maps["surprise_z"] = encode_map(zmap, symmetric=True)
            self._maps_version += 1
        z = msg.meta.get("zscore")
        if isinstance(z, (int, float)):
            self._point("surprise", msg.stream_time_us, z=float(z),
                        alarm=bool(z > self.alarm_z), total=msg.meta.get("total"))

    def _ingest_stats(self, msg: Any) -> None:
        meta = msg.meta
        rates = self._rates.update(meta, msg.wall_time_ns / 1e9)
        self._stats = {k: meta.get(k) for k in
                       ("source", "format", "learning", "events_in", "events_processed",
                        "publish_every_us", "uptime_s", "rollbacks", "stream_restarts")}
        if rates is not None:
            self._point("stats", msg.stream_time_us, **rates)

    def set_control(self, reachable: bool, status: dict[str, Any] | None) -> None:
        """Record the result of the latest control ``status`` poll."""
        with self._lock:
            self.control = {"reachable": reachable, "status": status}
            self.version += 1

    def link_status(self) -> dict[str, Any]:
        """{"state": "waiting" | "live" | "stalled", "quiet_s", counters}.

        quiet_s: seconds since the last message (since the start when none came yet);
        "stalled" once it exceeds ``stall_s`` (also when nothing ever came), "waiting"
        before that while nothing came yet."""
        link = self._link
        since = self._started_s if link.last_wall_s is None else link.last_wall_s
        quiet = self._clock() - since
        if quiet > self.stall_s:
            state = "stalled"
        elif link.last_wall_s is None:
            state = "waiting"
        else:
            state = "live"
        return {"state": state, "quiet_s": quiet, "stall_s": self.stall_s,
                "received": link.received, "gaps": link.gaps, "missed": dict(link.missed),
                "restarts": link.restarts, "stream_t": None if link.last_stream_us is None
                else link.last_stream_us / 1e6}

    def payload(self, cursor: int = -1, maps_version: int = -1,
                dictionary_version: int = -1) -> dict[str, Any]:
        """The page's update: points with index > cursor; maps only if newer than
        ``maps_version``, the dictionary only if newer than ``dictionary_version``. Returns
        the new cursor and versions in the object, and ``dictionary_age_s`` (seconds since
        the newest dictionary arrived; None before the first)."""
        with self._lock:
            points = [p for p in self._points if p["i"] > cursor]
            out: dict[str, Any] = {
                "type": "update", "link": self.link_status(), "control": self.control,
                "stats": self._stats, "prediction": self._prediction_meta,
                "forecast_note": self._scorer.note, "alarm_z": self.alarm_z,
                "points": points, "cursor": self._next_point - 1,
                "maps_version": self._maps_version,
                "dictionary_version": self._dictionary_version,
                "dictionary_age_s": None if self._dictionary_s is None
                else self._clock() - self._dictionary_s,
            }
            if self._maps_version != maps_version:
                out["maps"] = dict(self._maps)
            if self._dictionary is not None and self._dictionary_version != dictionary_version:
                out["dictionary"] = self._dictionary
            return out
