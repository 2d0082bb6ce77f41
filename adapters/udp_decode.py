"""Decoding bursts of UDP datagrams into EVENT_DTYPE arrays: numba kernels for the bytes,
Python for the per-datagram bookkeeping (never a Python loop per event)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from augury.adapters.base import Chunk
from augury.adapters.files import MAX_SENSOR_SIDE
from augury.adapters.udp_session import SessionGate, SessionSequences
from augury.adapters.udp_wire import (
    AUGURY_RECORD,
    FAERY_RECORD,
    FAERY_T32_RECORD,
    FLAG_END,
    canonical_format,
)
from augury.events import EVENT_DTYPE, Counters, SensorGeometry


@dataclass
class UdpStats:
    """Datagram-level accounting of a UDP source (cumulative).

    datagrams, bytes: everything received; events: events handed on; heartbeats: accepted
    datagrams without events (END included); end_packets: accepted END datagrams;
    end_flushes / idle_flushes: last windows flushed by an END or after the idle time;
    late_events: events dropped for being older than a flushed time; malformed: datagrams
    (spif: words) that could not be decoded, by reason (``REASONS``).
    """

    datagrams: int = 0
    bytes: int = 0
    events: int = 0
    heartbeats: int = 0
    end_packets: int = 0
    end_flushes: int = 0
    idle_flushes: int = 0
    late_events: int = 0
    malformed: dict[str, int] = field(default_factory=dict)

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())


def unroll_u32(t32: np.ndarray, last_t: int | None) -> tuple[np.ndarray, int | None]:
    """Unroll wrapping u32 µs timestamps to int64, continuing from the previous value.

    A step back by more than 2**31 µs is a wrap: t += 2**32 from there on. Returns the
    unrolled times (int64, same shape) and the new last value.
    """
    if t32.size == 0:
        return t32.astype(np.int64), last_t
    t = t32.astype(np.int64)
    prev = np.empty_like(t)
    prev[0] = t[0] if last_t is None else last_t & 0xFFFFFFFF
    prev[1:] = t[:-1]
    wraps = np.cumsum((t - prev) < -(1 << 31))
    hi = 0 if last_t is None else (last_t >> 32) << 32
    t += hi + (wraps << 32)
    return t, int(t[-1])


# datagram status codes written by the kernels (index into _REASONS)
_OK, _SHORT, _OVERSIZE, _BAD_MAGIC, _BAD_VERSION, _BAD_LENGTH, _BAD_TIME, _BAD_EVENT = range(8)
_REASONS = ("ok", "short", "oversize", "bad_magic", "bad_version", "bad_length", "bad_time",
            "bad_event")
_META_COLS = 9  # augury: status, flags, session, seq, base_t_us, count, width, height, t_max
MAX_T_US = 1 << 62
"""Largest accepted augury ``base_t_us`` (µs, ~146,000 years): keeps base + dt in int64."""

REASONS = (*_REASONS[1:], "bad_geometry", "spif_timestamp_flag")
"""Every reason a datagram is counted malformed (``UdpStats.malformed`` keys): short (under
the 32-byte header), oversize (over ``max_datagram``), bad_magic, bad_version (version or
header size), bad_length (length not 32 + 9·count, or not whole records; END with events),
bad_time (augury base_t_us < 0 or >= 2**62), bad_event (an event outside the geometry the
datagram declares, or polarity > 1), bad_geometry (a geometry other than the source's, a
side of 0 or above MAX_SENSOR_SIDE), spif_timestamp_flag (a SPIF word, not a datagram, whose
bit 31 disagrees with the ``timestamps`` option)."""


@njit(cache=True, nogil=True)
def _u16(b, i):
    return np.int64(b[i]) | (np.int64(b[i + 1]) << 8)


@njit(cache=True, nogil=True)
def _u32(b, i):
    return _u16(b, i) | (_u16(b, i + 2) << 16)


@njit(cache=True, nogil=True)
def _i64(b, i):
    hi = _u32(b, i + 4)
    if hi >= 1 << 31:
        hi -= 1 << 32
    return (hi << 32) + _u32(b, i)


@njit(cache=True, nogil=True)
def _unroll(t32, state):
    """Unroll a u32 µs timestamp: state = [seen, last unrolled t]; a step back by more than
    2**31 µs is a wrap (same rule as ``unroll_u32``)."""
    if state[0] == 0:
        state[0] = 1
        t = t32
    else:
        lo = state[1] & 0xFFFFFFFF
        hi = state[1] - lo
        if t32 - lo < -(1 << 31):
            hi += 1 << 32
        t = hi + t32
    state[1] = t
    return t


@njit(cache=True, nogil=True)
def _augury_kernel(buf, offs, lens, max_datagram, out, meta):
    """Decode augury datagrams buf[offs[k]:offs[k]+lens[k]] into out (EVENT_DTYPE).

    meta[k] (int64, shape (n, 9)) receives status, flags, session, seq, base_t_us, count,
    width, height and the latest event time t_max (µs); events are written only for status
    0, in datagram order. A datagram is refused whole (bad_time, bad_event) if its base time
    is outside 0..MAX_T_US or one of its events lies outside the geometry it declares or has
    a polarity above 1. Returns the number of events written. out must hold
    sum(lens) // 9 events.
    """
    n_out = 0
    for k in range(offs.shape[0]):
        o = offs[k]
        n = lens[k]
        for c in range(meta.shape[1]):
            meta[k, c] = 0
        if n > max_datagram:
            meta[k, 0] = _OVERSIZE
            continue
        if n < 32:
            meta[k, 0] = _SHORT
            continue
        if buf[o] != 65 or buf[o + 1] != 85 or buf[o + 2] != 71 or buf[o + 3] != 89:  # AUGY
            meta[k, 0] = _BAD_MAGIC
            continue
        flags = np.int64(buf[o + 5])
        if buf[o + 4] != 1 or _u16(buf, o + 6) != 32:
            meta[k, 0] = _BAD_VERSION
            continue
        count = _u32(buf, o + 28)
        if n != 32 + 9 * count or ((flags & 1) != 0 and count != 0):
            meta[k, 0] = _BAD_LENGTH
            continue
        base = _i64(buf, o + 16)
        if base < 0 or base >= MAX_T_US:
            meta[k, 0] = _BAD_TIME
            continue
        w = _u16(buf, o + 24)
        h = _u16(buf, o + 26)
        p = o + 32
        t_max = base
        bad = False
        for _ in range(count):
            if _u16(buf, p + 4) >= w or _u16(buf, p + 6) >= h or buf[p + 8] > 1:
                bad = True
                break
            t_max = max(t_max, base + _u32(buf, p))
            p += 9
        if bad:
            meta[k, 0] = _BAD_EVENT
            continue
        meta[k, 1] = flags
        meta[k, 2] = _u32(buf, o + 8)
        meta[k, 3] = _u32(buf, o + 12)
        meta[k, 4] = base
        meta[k, 5] = count
        meta[k, 6] = w
        meta[k, 7] = h
        meta[k, 8] = t_max
        p = o + 32
        for _ in range(count):
            e = out[n_out]
            e.t = base + _u32(buf, p)
            e.x = _u16(buf, p + 4)
            e.y = _u16(buf, p + 6)
            e.p = buf[p + 8]
            n_out += 1
            p += 9
    return n_out


@njit(cache=True, nogil=True)
def _record_datagram_status(n: int, max_datagram: int, rec: int) -> int:
    """Status of a datagram of n bytes made of whole ``rec``-byte records (spif, faery)."""
    if n > max_datagram:
        return _OVERSIZE
    if n == 0 or n % rec != 0:
        return _BAD_LENGTH
    return _OK


@njit(cache=True, nogil=True)
def _spif_kernel(buf, offs, lens, arrival_us, max_datagram, timestamps, out, status,
                 state):
    """Decode SPIF words (with u32 timestamp words if ``timestamps``) into out.

    status[k] receives the datagram status; returns (events written, words whose bit 31
    disagrees with ``timestamps``). Without timestamps events get arrival_us[k].
    """
    rec = 8 if timestamps else 4
    n_out = 0
    n_bad = 0
    for k in range(offs.shape[0]):
        o = offs[k]
        n = lens[k]
        status[k] = _record_datagram_status(n, max_datagram, rec)
        if status[k] != _OK:
            continue
        for j in range(n // rec):
            p = o + j * rec
            w = _u32(buf, p)
            no_ts = w >> 31
            if timestamps:
                if no_ts != 0:
                    n_bad += 1
                    continue
                t = _unroll(_u32(buf, p + 4), state)
            else:
                if no_ts != 1:
                    n_bad += 1
                    continue
                t = arrival_us[k]
            e = out[n_out]
            e.t = t
            e.x = (w >> 16) & 0x7FFF
            e.y = w & 0x7FFF
            e.p = (w >> 15) & 1
            n_out += 1
    return n_out, n_bad


@njit(cache=True, nogil=True)
def _faery_kernel(buf, offs, lens, max_datagram, t32, out, status, state):
    """Decode faery t64_x16_y16_on8 (13-byte) or, if ``t32``, t32_x16_y15_on1 (8-byte)
    records into out. Returns (events written, events dropped: t64 beyond int64)."""
    rec = 8 if t32 else 13
    n_out = 0
    n_drop = 0
    for k in range(offs.shape[0]):
        o = offs[k]
        n = lens[k]
        status[k] = _record_datagram_status(n, max_datagram, rec)
        if status[k] != _OK:
            continue
        for j in range(n // rec):
            p = o + j * rec
            e = out[n_out]
            if t32:
                yp = _u16(buf, p + 6)
                e.t = _unroll(_u32(buf, p), state)
                e.x = _u16(buf, p + 4)
                e.y = yp >> 1
                e.p = yp & 1
            else:
                t = _i64(buf, p)
                if t < 0:
                    n_drop += 1
                    continue
                e.t = t
                e.x = _u16(buf, p + 8)
                e.y = _u16(buf, p + 10)
                e.p = buf[p + 12]
            n_out += 1
    return n_out, n_drop


@dataclass
class FlushChunk(Chunk):
    """A Chunk after which the stream of the current sender is over for now (its END, or
    it fell silent): the consumer raises ``t_known_us`` to the end of the batch window
    holding the last event it handed on, so that this window is batched now
    (``UdpSource.chunks``). Later events of the same clock older than that are dropped."""


@dataclass
class _Segment:
    """Events of one burst that belong to one clock: kept datagrams' event ranges, the known
    time, whether the clock restarts with it and whether it ends with a flush (END)."""

    restart: bool
    ranges: list[tuple[int, int]] = field(default_factory=list)
    t_known: int | None = None
    flush: bool = False


class DatagramDecoder:
    """Decode bursts of datagrams of one format into EVENT_DTYPE arrays, with accounting.

    ``decode_chunks(buf, spans, arrival_us, now_s)`` takes a buffer holding datagrams at
    ``spans`` [(offset, length) bytes] received at ``arrival_us`` (µs, one per datagram;
    used by SPIF without timestamps) and at receiver time ``now_s`` (s, monotonic) and
    returns Chunks (events sorted by t, stable, so that datagrams reordered within one burst
    are repaired). The numba kernels above do the byte work; this class keeps the state
    carried across calls (sender sessions, sequence tracking, timestamp unrolling, learned
    geometry, the time of the last event) and the per-datagram bookkeeping.
    ``max_datagram`` is the largest accepted datagram (bytes).

    End of stream: a sender session's END datagram, or ``idle(now_s)`` once nothing came
    for ``idle_s`` seconds, ends its chunks with a ``FlushChunk``, so that the consumer
    batches the last window now instead of when (if ever) the next event arrives. Sessions:
    see ``augury.adapters.udp_session.SessionGate``.
    """

    def __init__(self, fmt: str, geometry: SensorGeometry | None, *, timestamps: bool = False,
                 max_datagram: int = 65536, source: str = "", sessions: str = "single",
                 idle_s: float | None = 1.0) -> None:
        self.format = canonical_format(fmt)
        if self.format != "augury" and geometry is None:
            raise ValueError(f"{source or 'udp'}: geometry=WIDTHxHEIGHT is required for format "
                             f"{self.format!r} (only augury framing carries it)")
        self.geometry = geometry
        self.timestamps = bool(timestamps)
        self.max_datagram = int(max_datagram)
        self.source = source
        self.gate = SessionGate(sessions)
        self.seq = SessionSequences()
        self.stats = UdpStats()
        self.idle_s = idle_s
        self._t_state = np.zeros(2, dtype=np.int64)  # timestamp unrolling: [seen, last t]
        self._pending = False  # events handed on since the last flush
        self._last_rx_s: float | None = None  # when the current sender was last heard (s)
        self.geometry_known = threading.Event()
        if geometry is not None:
            self.geometry_known.set()

    # -- end of stream ---------------------------------------------------------------------
    def idle(self, now_s: float) -> FlushChunk | None:
        """A FlushChunk (no events) if the current sender has been silent for ``idle_s``
        seconds at receiver time ``now_s`` (s) and events were handed on since the last
        flush; the current session then idles out (another one may take over)."""
        if self.idle_s is None or self._last_rx_s is None \
                or now_s - self._last_rx_s < self.idle_s:
            return None
        self._last_rx_s = None
        self.gate.idle()
        if not self._pending:
            return None
        self._pending = False
        self.stats.idle_flushes += 1
        return FlushChunk(np.empty(0, dtype=EVENT_DTYPE), Counters(), None)

    # -- decoding ---------------------------------------------------------------------------
    def decode(self, buf: bytearray | bytes | memoryview, spans: list[tuple[int, int]],
               arrival_us: list[int], now_s: float = 0.0) -> Chunk:
        """One Chunk of the burst's events (the events of a session that takes over appended
        after the old one's); ``decode_chunks`` keeps them apart."""
        parts = self.decode_chunks(buf, spans, arrival_us, now_s)
        if len(parts) == 1:
            return parts[0]
        c = Counters()
        for p in parts:
            c.add(p.counters)
        known = [p.t_known_us for p in parts if p.t_known_us is not None]
        return Chunk(np.concatenate([p.events for p in parts]), c,
                     max(known) if known else None)

    def decode_chunks(self, buf: bytearray | bytes | memoryview, spans: list[tuple[int, int]],
                      arrival_us: list[int], now_s: float = 0.0) -> list[Chunk]:
        """The burst's events as one Chunk, or one more per sender session (augury framing)
        that takes over inside it, marked ``restart`` (the new sender's clock is not
        compared with the old one's). The burst's counters go with the last Chunk."""
        k = len(spans)
        if k == 0:
            return [Chunk(np.empty(0, dtype=EVENT_DTYPE), Counters(), None)]
        data = np.frombuffer(buf, dtype=np.uint8)
        sp = np.array(spans, dtype=np.int64).reshape(k, 2)
        offs, lens = sp[:, 0], sp[:, 1]
        if int(offs.min()) < 0 or int((offs + np.minimum(lens, self.max_datagram)).max()) \
                > data.size:
            raise ValueError("datagram spans reach outside the buffer")
        lens = lens.copy()
        self.stats.datagrams += k
        self.stats.bytes += int(lens.sum())
        cap = int(np.minimum(lens, self.max_datagram).sum()) // _MIN_RECORD[self.format]
        out = np.empty(cap, dtype=EVENT_DTYPE)
        counters = Counters()
        if self.format == "augury":
            segments = self._augury(data, offs, lens, out, counters, now_s)
        else:
            segments = [self._records(data, offs, lens, arrival_us, out, counters, now_s)]
        chunks = []
        for i, seg in enumerate(segments):
            idx = [np.arange(a, b) for a, b in seg.ranges]
            ev = out[np.concatenate(idx)] if len(idx) > 1 else (
                out[seg.ranges[0][0]:seg.ranges[0][1]] if idx else out[:0])
            self.stats.events += int(ev.size)
            last = i == len(segments) - 1
            kind = FlushChunk if seg.flush else Chunk
            chunks.append(kind(_sorted_copy(ev, cap), counters if last else Counters(),
                               seg.t_known, seg.restart))
        return chunks

    def _records(self, data: np.ndarray, offs: np.ndarray, lens: np.ndarray,
                 arrival_us: list[int], out: np.ndarray, counters: Counters,
                 now_s: float) -> _Segment:
        """SPIF and faery datagrams (no sessions): one segment on one clock."""
        status = np.zeros(offs.size, dtype=np.int64)
        dropped = 0
        if self.format == "spif":
            arr = np.asarray(arrival_us, dtype=np.int64)
            n, n_bad = _spif_kernel(data, offs, lens, arr, self.max_datagram, self.timestamps,
                                    out, status, self._t_state)
            if n_bad:
                self._bad("spif_timestamp_flag", n_bad)
                counters.malformed += n_bad
        else:
            n, dropped = _faery_kernel(data, offs, lens, self.max_datagram,
                                       self.format == "faery_t32", out, status, self._t_state)
        for code in status[status != _OK].tolist():
            self._bad(_REASONS[code])
            counters.malformed += 1
        counters.read += int(n) + int(dropped)
        counters.dropped += int(dropped)
        if n:
            self._pending = True
            self._last_rx_s = now_s
        return _Segment(False, [(0, int(n))])

    def _bad(self, reason: str, units: int = 1) -> None:
        self.stats.malformed[reason] = self.stats.malformed.get(reason, 0) + units

    def _augury(self, data: np.ndarray, offs: np.ndarray, lens: np.ndarray, out: np.ndarray,
                counters: Counters, now_s: float) -> list[_Segment]:
        """Kernel decode, then the per-datagram checks that need state: geometry, session
        policy, sequence, END. Returns the burst's segments (a new one for each session that
        takes over); counts into ``counters``."""
        meta = np.empty((offs.size, _META_COLS), dtype=np.int64)
        _augury_kernel(data, offs, lens, self.max_datagram, out, meta)
        seg = _Segment(False)
        segments = [seg]
        pos = 0
        for status, flags, session, seq, base, count, w, h, _t_max in meta.tolist():
            if status != _OK:
                self._bad(_REASONS[status])
                counters.malformed += 1
                continue
            first, pos = pos, pos + count
            counters.read += count
            if not self._geometry_ok(w, h):
                self._bad("bad_geometry")
                counters.malformed += 1
                counters.read -= count
                continue
            verdict = self.gate.admit(session, end=bool(flags & FLAG_END) and count == 0)
            if verdict == "end_repeat":  # a copy of an END already acted on
                continue
            if verdict in ("other", "after_end"):
                counters.dropped += count
                continue
            if verdict == "restart":  # a new segment: its clock is not compared with the old
                seg = _Segment(True)
                segments.append(seg)
            self._last_rx_s = now_s
            if self.seq.observe(session, seq) in ("duplicate", "stale"):
                counters.read -= count  # a copy of events already counted, or too old
                continue
            if count:
                seg.ranges.append((first, first + count))
                self._pending = True
                continue
            self.stats.heartbeats += 1
            seg.t_known = base if seg.t_known is None else max(seg.t_known, base)
            if flags & FLAG_END:
                self.stats.end_packets += 1
                self.gate.end(session)
                if self.gate.policy == "single":  # (merged: the other senders go on)
                    if self._pending:
                        self._pending = False
                        self.stats.end_flushes += 1
                        seg.flush = True
        return segments

    def _geometry_ok(self, w: int, h: int) -> bool:
        if not (0 < w <= MAX_SENSOR_SIDE and 0 < h <= MAX_SENSOR_SIDE):
            return False
        if self.geometry is None:
            self.geometry = SensorGeometry(w, h)
            self.geometry_known.set()
            return True
        return (w, h) == (self.geometry.width, self.geometry.height)


def _sorted_copy(events: np.ndarray, cap: int) -> np.ndarray:
    """Events sorted by t (datagrams reordered within one burst are repaired here, where it
    is free of the reorder window: events later than an already handed-out chunk would be
    dropped by validation unless reorder_window_us allows them), copied out of a mostly
    empty decode buffer so that it is not kept alive."""
    if events.size > 1 and bool(np.any(np.diff(events["t"]) < 0)):
        return events[np.argsort(events["t"], kind="stable")]
    if 4 * events.size < 3 * cap:
        return events.copy()
    return events


_MIN_RECORD = {"augury": AUGURY_RECORD.itemsize, "spif": 4, "faery": FAERY_RECORD.itemsize,
               "faery_t32": FAERY_T32_RECORD.itemsize}
