"""Decoding bursts of UDP datagrams into EVENT_DTYPE arrays: numba kernels for the bytes,
Python for the per-datagram bookkeeping (never a Python loop per event)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from augury.adapters.base import Chunk
from augury.adapters.udp_session import SequenceTracker
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
    """Datagram-level accounting of a UDP source (cumulative)."""

    datagrams: int = 0
    bytes: int = 0
    events: int = 0
    heartbeats: int = 0
    end_packets: int = 0
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
_OK, _SHORT, _OVERSIZE, _BAD_MAGIC, _BAD_VERSION, _BAD_LENGTH = range(6)
_REASONS = ("ok", "short", "oversize", "bad_magic", "bad_version", "bad_length")
_META_COLS = 8  # augury: status, flags, session, seq, base_t_us, count, width, height


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

    meta[k] (int64, shape (n, 8)) receives status, flags, session, seq, base_t_us, count,
    width, height; events are written only for status 0, in datagram order. Returns the
    number of events written. out must hold sum(lens) // 9 events.
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
        meta[k, 1] = flags
        meta[k, 2] = _u32(buf, o + 8)
        meta[k, 3] = _u32(buf, o + 12)
        meta[k, 4] = base
        meta[k, 5] = count
        meta[k, 6] = _u16(buf, o + 24)
        meta[k, 7] = _u16(buf, o + 26)
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


class DatagramDecoder:
    """Decode bursts of datagrams of one format into EVENT_DTYPE arrays, with accounting.

    ``decode(buf, spans, arrival_us)`` takes a buffer holding datagrams at ``spans``
    [(offset, length) bytes] received at ``arrival_us`` (µs, one per datagram) and returns a
    Chunk (events sorted by t, stable, so that datagrams reordered within one burst are
    repaired). The numba kernels above do the byte work; this class
    keeps the state carried across calls (sequence tracking, timestamp unrolling, learned
    geometry) and the per-datagram bookkeeping. ``max_datagram`` is the largest accepted
    datagram (bytes).
    """

    def __init__(self, fmt: str, geometry: SensorGeometry | None, *, timestamps: bool = False,
                 max_datagram: int = 65536, source: str = "") -> None:
        self.format = canonical_format(fmt)
        if self.format != "augury" and geometry is None:
            raise ValueError(f"{source or 'udp'}: geometry=WIDTHxHEIGHT is required for format "
                             f"{self.format!r} (only augury framing carries it)")
        self.geometry = geometry
        self.timestamps = bool(timestamps)
        self.max_datagram = int(max_datagram)
        self.source = source
        self.seq = SequenceTracker()
        self.stats = UdpStats()
        self._t_state = np.zeros(2, dtype=np.int64)  # timestamp unrolling: [seen, last t]
        self.geometry_known = threading.Event()
        if geometry is not None:
            self.geometry_known.set()

    def decode(self, buf: bytearray | bytes | memoryview, spans: list[tuple[int, int]],
               arrival_us: list[int]) -> Chunk:
        """One Chunk of the burst's events (a new sender session's events appended after the
        old one's); ``decode_chunks`` keeps them apart."""
        parts = self.decode_chunks(buf, spans, arrival_us)
        if len(parts) == 1:
            return parts[0]
        c = Counters()
        for p in parts:
            c.add(p.counters)
        known = [p.t_known_us for p in parts if p.t_known_us is not None]
        return Chunk(np.concatenate([p.events for p in parts]), c,
                     max(known) if known else None)

    def decode_chunks(self, buf: bytearray | bytes | memoryview, spans: list[tuple[int, int]],
                      arrival_us: list[int]) -> list[Chunk]:
        """The burst's events as one Chunk, or two when a new sender session (augury
        framing) starts inside it: the second is marked ``restart`` (the new sender's clock
        is not compared with the old one's)."""
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
        status = np.zeros(k, dtype=np.int64)
        dropped = malformed = 0
        t_known: int | None = None
        restart_at: int | None = None
        t_before: int | None = None
        if self.format == "augury":
            events, malformed, t_known, restart_at, t_before = self._augury(data, offs, lens,
                                                                            out)
        else:
            if self.format == "spif":
                arr = np.asarray(arrival_us, dtype=np.int64)
                n, n_bad = _spif_kernel(data, offs, lens, arr, self.max_datagram,
                                        self.timestamps, out, status, self._t_state)
                if n_bad:
                    self._bad("spif_timestamp_flag", n_bad)
                    malformed += n_bad
            else:
                n, dropped = _faery_kernel(data, offs, lens, self.max_datagram,
                                           self.format == "faery_t32", out, status,
                                           self._t_state)
            events = out[:n]
            for code in status[status != _OK].tolist():
                self._bad(_REASONS[code])
                malformed += 1
        self.stats.events += int(events.size)
        counters = Counters(read=int(events.size) + dropped, dropped=dropped,
                            malformed=malformed)
        if restart_at is None:
            return [Chunk(_sorted_copy(events, cap), counters, t_known)]
        # the burst's counters go with the second chunk, which is always handed on
        return [Chunk(_sorted_copy(events[:restart_at], cap), Counters(), t_before),
                Chunk(_sorted_copy(events[restart_at:], cap), counters, t_known,
                      restart=True)]

    def _bad(self, reason: str, units: int = 1) -> None:
        self.stats.malformed[reason] = self.stats.malformed.get(reason, 0) + units

    def _augury(self, data: np.ndarray, offs: np.ndarray, lens: np.ndarray, out: np.ndarray
                ) -> tuple[np.ndarray, int, int | None, int | None, int | None]:
        """Kernel decode, then per-datagram checks that need state: geometry, sequence.

        Returns (events, malformed datagrams, known time (of the newest sender session),
        index of the first event of a new sender session that started in this burst or
        None, known time of the session before it or None)."""
        meta = np.empty((offs.size, _META_COLS), dtype=np.int64)
        n = _augury_kernel(data, offs, lens, self.max_datagram, out, meta)
        malformed = 0
        t_known: int | None = None
        keep: list[bool] = []
        counts: list[int] = []
        restart_at: int | None = None
        t_before: int | None = None
        for status, flags, session, seq, base, count, w, h in meta.tolist():
            if status != _OK:
                self._bad(_REASONS[status])
                malformed += 1
                continue
            ok = self._geometry_ok(w, h)
            sessions = self.seq.sessions
            if not ok:
                self._bad("bad_geometry")
                malformed += 1
            elif self.seq.observe(session, seq) in ("duplicate", "stale"):
                ok = False
            if ok and sessions and self.seq.sessions != sessions:  # a new sender session
                restart_at = sum(c for c, kept in zip(counts, keep, strict=True) if kept)
                t_before, t_known = t_known, None  # known times of the old sender's clock
            if ok and count == 0:
                self.stats.heartbeats += 1
                t_known = base if t_known is None else max(t_known, base)
                if flags & FLAG_END:
                    self.stats.end_packets += 1
            if count:
                keep.append(ok)
                counts.append(count)
        events = out[:n]
        if not all(keep):
            events = events[np.repeat(np.array(keep, dtype=bool), counts)]
        return events, malformed, t_known, restart_at, t_before

    def _geometry_ok(self, w: int, h: int) -> bool:
        if w == 0 or h == 0:
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
