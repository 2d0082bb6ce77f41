"""UDP event sources and senders: augury framing (loss visible), SPIF words, faery packets.

``open_udp("host:port", format=..., geometry="640x480", ...)`` binds a UDP socket, runs a
receiver thread that decodes datagrams into an ``EventRing`` (drop_oldest by default) and
yields ``Chunk``s; ``UdpSender`` and ``send_file`` are the other end.

Wire formats (all little-endian):

``augury`` (this project's framing, version 1): a 32-byte header, then ``count`` packed
9-byte records::

    offset size  field
     0     4     magic b"AUGY"
     4     1     version = 1
     5     1     flags: bit 0 END (the sender finished; count = 0); other bits 0
     6     2     header_bytes = 32
     8     4     session u32: random id drawn by each sender; a new id resets loss tracking
    12     4     seq u32: datagram number within the session, +1 per datagram, wraps at 2**32
    16     8     base_t_us i64 (µs)
    24     2     width u16   (sensor geometry: the receiver learns it from here)
    26     2     height u16
    28     4     count u32
    32     9·n   records: dt_us u32 (t = base_t_us + dt_us), x u16, y u16, p u8

A datagram must be exactly ``32 + 9·count`` bytes. ``count = 0`` is a heartbeat: sensor
time has reached ``base_t_us`` (published as ``Chunk.t_known_us``). The receiver tracks
``seq`` per session with serial-number arithmetic over a window of 1024 datagrams and
counts ``lost_packets`` (sequence numbers skipped, net of late arrivals),
``duplicate_packets`` (dropped), ``reordered_packets`` (arrived after a later one; kept) and
``stale_packets`` (older than the window; dropped, duplicate or late cannot be told apart).

``spif`` (SpiNNaker spif / AEStream UDP output): one u32 word per event,
``bit 31`` = 1 if no timestamp follows, ``bits 30..16`` = x, ``bit 15`` = polarity,
``bits 14..0`` = y. With ``timestamps=1`` every word has bit 31 = 0 and is followed by a u32
timestamp in µs (wraps unrolled by the receiver); without, events are stamped with their
arrival time from the ``clock`` argument (µs). Words whose bit 31 disagrees with the option
are counted as malformed and skipped.

``faery`` (faery ``t64_x16_y16_on8``): packed 13-byte records t u64 µs, x u16, y u16,
on u8. ``faery_t32`` (faery ``t32_x16_y15_on1``): 8-byte records t u32 µs (wraps unrolled),
x u16, u16 holding ``y << 1 | on``.

Datagrams that cannot be decoded (shorter than a header, longer than ``max_datagram``,
wrong magic, version or header size, length inconsistent with count, geometry different
from the source's, or a length that is not a whole number of records) are counted in
``Counters.malformed`` (and by reason in ``stats.malformed``) and skipped; the receiver
never stops on bad input.
"""

from __future__ import annotations

import secrets
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from augury.adapters.base import Chunk, EventSource, parse_uri
from augury.adapters.replay import paced
from augury.adapters.ring import EventRing, ThreadedSource
from augury.events import EVENT_DTYPE, Counters, SensorGeometry

Clock = Callable[[], int]
"""A clock returning the current time in integer µs."""

MAGIC = b"AUGY"
VERSION = 1
FLAG_END = 0x01
HEADER = struct.Struct("<4sBBHIIqHHI")
HEADER_BYTES = HEADER.size  # 32
AUGURY_RECORD = np.dtype([("dt", "<u4"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
FAERY_RECORD = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
FAERY_T32_RECORD = np.dtype([("t", "<u4"), ("x", "<u2"), ("yp", "<u2")])
SPIF_TS_RECORD = np.dtype([("w", "<u4"), ("t", "<u4")])
MAX_UDP_PAYLOAD = 65507
SEQ_WINDOW = 1024

FORMATS = ("augury", "spif", "faery", "faery_t32")
_FORMAT_ALIASES = {"t64_x16_y16_on8": "faery", "t32_x16_y15_on1": "faery_t32", "aestream": "spif"}

DEFAULT_EVENTS_PER_PACKET = {
    "augury": (1472 - HEADER_BYTES) // AUGURY_RECORD.itemsize,  # 160: one 1500-byte MTU frame
    "spif": 128,  # 512 bytes: what AEStream's UDP listener reads per datagram
    "faery": 100,  # faery's default
    "faery_t32": 100,
}


def monotonic_us() -> int:
    """Default clock: ``time.monotonic_ns() // 1000`` (µs)."""
    return time.monotonic_ns() // 1000


def canonical_format(fmt: str) -> str:
    """Normalise a format name ('augury', 'spif', 'faery', 'faery_t32' or faery's names)."""
    f = _FORMAT_ALIASES.get(str(fmt).lower(), str(fmt).lower())
    if f not in FORMATS:
        raise ValueError(f"unknown UDP format {fmt!r}; known: {', '.join(FORMATS)}")
    return f


def parse_geometry(value: SensorGeometry | str | tuple[int, int] | None) -> SensorGeometry | None:
    """'640x480', (640, 480) or a SensorGeometry → SensorGeometry (None stays None)."""
    if value is None or isinstance(value, SensorGeometry):
        return value
    if isinstance(value, str):
        w, sep, h = value.lower().partition("x")
        if not sep or not w.strip().isdigit() or not h.strip().isdigit():
            raise ValueError(f"geometry must look like '640x480', got {value!r}")
        return SensorGeometry(int(w), int(h))
    w, h = value
    return SensorGeometry(int(w), int(h))


def parse_host_port(location: str) -> tuple[str, int]:
    """'host:port', '[::1]:port' or ':port' → (host, port); an empty host means all interfaces."""
    loc = location.strip().rstrip("/")
    if loc.startswith("["):
        host, sep, rest = loc[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_s = loc.rpartition(":")
    if not sep or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"UDP location must be host:port, got {location!r}")
    return host, int(port_s)


def _parse_bool(value: Any) -> bool:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")
    return bool(value)


def _opt_float(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return float(value)


# ---------------------------------------------------------------------------------------------
# Loss / duplicate / reorder detection


@dataclass
class SequenceTracker:
    """Classify datagram sequence numbers (u32, serial-number arithmetic) of one session.

    ``observe(session, seq)`` returns "new", "reordered" (arrives after a higher number and
    was not seen before; keep), "duplicate" (seen before; drop) or "stale" (older than
    ``window`` numbers; drop). ``lost`` is the number of sequence numbers skipped between the
    session's first datagram and its highest, net of late arrivals; ``sessions`` counts
    sender sessions (a new session id resets the tracking).
    """

    window: int = SEQ_WINDOW
    lost: int = 0
    duplicates: int = 0
    reordered: int = 0
    stale: int = 0
    sessions: int = 0
    _session: int | None = None
    _highest: int = 0
    _state: bytearray = field(default_factory=bytearray)  # per seq % window: 1 seen, 2 missing

    def __post_init__(self) -> None:
        if self.window <= 1 or self.window & (self.window - 1) or self.window > 1 << 16:
            raise ValueError(f"window must be a power of two in 2..65536 (it divides 2**32), "
                             f"got {self.window}")

    def observe(self, session: int, seq: int) -> str:
        if self._session != session:
            self._session = session
            self.sessions += 1
            self._highest = seq
            self._state = bytearray(self.window)
            self._state[seq % self.window] = 1
            return "new"
        delta = ((seq - self._highest + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
        if delta > 0:
            self.lost += delta - 1
            for k in range(1, min(delta, self.window)):
                self._state[(seq - k) % self.window] = 2
            self._state[seq % self.window] = 1
            self._highest = seq
            return "new"
        if -delta >= self.window:
            self.stale += 1
            return "stale"
        slot = seq % self.window
        if self._state[slot] == 1:
            self.duplicates += 1
            return "duplicate"
        if self._state[slot] == 2:  # counted lost when skipped: it was only late
            self.lost -= 1
        self._state[slot] = 1  # (0: older than the first datagram of the session)
        self.reordered += 1
        return "reordered"


# ---------------------------------------------------------------------------------------------
# Decoding: one burst of datagrams at a time; numba kernels do the bytes, Python the
# per-datagram bookkeeping (never a Python loop per event)


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


# ---------------------------------------------------------------------------------------------
# Receiver


@dataclass(frozen=True)
class UdpOptions:
    """Options of ``open_udp`` (URI query strings are converted; units in the names).

    capacity_events: ring size in events (memory ≈ 13 B × capacity); overflow: ring policy;
    idle_timeout_s: end ``chunks()`` after that long without data (None: never);
    rcvbuf_bytes: requested SO_RCVBUF; max_datagram: receive slot in bytes (larger datagrams
    are malformed "oversize"); until_end: end the stream on an augury END packet;
    reorder_window_us: validation's reorder window (0: events older than an already
    handed-out chunk are dropped and counted; each burst is sorted anyway);
    geometry_timeout_s: how long reading ``geometry`` waits for a first augury packet;
    burst_datagrams: datagrams drained per chunk; poll_s: receive poll interval (how fast
    close() is noticed).
    """

    format: str = "augury"
    geometry: SensorGeometry | None = None
    timestamps: bool = False
    capacity_events: int = 1 << 21
    overflow: str = "drop_oldest"
    idle_timeout_s: float | None = None
    rcvbuf_bytes: int = 16 << 20
    max_datagram: int = 65536
    until_end: bool = False
    reorder_window_us: int = 0
    geometry_timeout_s: float = 5.0
    burst_datagrams: int = 256
    poll_s: float = 0.02

    @classmethod
    def from_options(cls, opts: dict[str, Any]) -> UdpOptions:
        conv: dict[str, Callable[[Any], Any]] = {
            "format": canonical_format, "geometry": parse_geometry, "timestamps": _parse_bool,
            "capacity_events": int, "overflow": str, "idle_timeout_s": _opt_float,
            "rcvbuf_bytes": int, "max_datagram": int, "until_end": _parse_bool,
            "reorder_window_us": int, "geometry_timeout_s": float, "burst_datagrams": int,
            "poll_s": float,
        }
        unknown = sorted(set(opts) - set(conv))
        if unknown:
            raise ValueError(f"unknown udp option(s) {unknown}; known: {sorted(conv)}")
        values = {k: conv[k](v) for k, v in opts.items()}
        o = cls(**values)
        if not 0 < o.max_datagram <= 65536:
            raise ValueError(f"max_datagram must be in 1..65536, got {o.max_datagram}")
        if o.burst_datagrams <= 0:
            raise ValueError(f"burst_datagrams must be > 0, got {o.burst_datagrams}")
        return o


class UdpSource(ThreadedSource):
    """Events received on a UDP socket, decoded by a receiver thread into an EventRing.

    ``address`` is the bound (host, port) (bind port 0 for an ephemeral port). ``stats``,
    ``lost_packets``, ``duplicate_packets``, ``reordered_packets``, ``stale_packets`` give
    datagram-level accounting; ``ring.dropped_events`` the events lost to a full ring.
    """

    def __init__(self, host: str, port: int, options: UdpOptions | None = None, *,
                 clock: Clock = monotonic_us) -> None:
        o = options or UdpOptions()
        self.options = o
        self.clock = clock
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        uri = f"udp://{'[' + host + ']' if family == socket.AF_INET6 else host}:{port}"
        self.decoder = DatagramDecoder(o.format, o.geometry, timestamps=o.timestamps,
                                       max_datagram=o.max_datagram, source=uri)
        ring = EventRing(o.capacity_events, o.overflow)  # validates before a socket exists
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            _set_rcvbuf(sock, int(o.rcvbuf_bytes))
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self.rcvbuf_bytes = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        bound_uri = f"udp://{host if family == socket.AF_INET else '[' + host + ']'}:" \
                    f"{self.address[1]}"
        super().__init__(self._receive, ring, geometry=None, uri=bound_uri,
                         format=_FORMAT_NAMES[o.format], idle_timeout_s=o.idle_timeout_s,
                         poll_s=o.poll_s)
        self.reorder_window_us = o.reorder_window_us

    # -- geometry: given, or learned from the first augury header ----------------------------
    @property  # type: ignore[override]
    def geometry(self) -> SensorGeometry:
        if not self.decoder.geometry_known.wait(self.options.geometry_timeout_s):
            raise TimeoutError(f"{self.uri}: no augury datagram within "
                               f"{self.options.geometry_timeout_s} s to learn the sensor "
                               f"geometry; pass geometry=WIDTHxHEIGHT")
        return self.decoder.geometry  # type: ignore[return-value]

    @geometry.setter
    def geometry(self, value: SensorGeometry) -> None:
        self.decoder.geometry = value
        self.decoder.geometry_known.set()

    @property
    def stats(self) -> UdpStats:
        return self.decoder.stats

    @property
    def lost_packets(self) -> int:
        return self.decoder.seq.lost

    @property
    def duplicate_packets(self) -> int:
        return self.decoder.seq.duplicates

    @property
    def reordered_packets(self) -> int:
        return self.decoder.seq.reordered

    @property
    def stale_packets(self) -> int:
        return self.decoder.seq.stale

    # -- receiver thread ---------------------------------------------------------------------
    def _receive(self, stop: threading.Event) -> Iterator[Chunk]:
        """Producer run in the reader thread: poll, drain a burst, decode, yield a Chunk."""
        o = self.options
        slot = o.max_datagram
        buf = bytearray(max(slot * 4, min(o.burst_datagrams * 2048, 8 << 20)))
        view = memoryview(buf)
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        poll_ms = max(1, int(o.poll_s * 1000))
        recv_into = self._sock.recv_into
        flags = socket.MSG_TRUNC  # returns the real length, so oversize datagrams are seen
        last_slot = len(buf) - slot
        clock = self.clock
        stamp = o.format == "spif" and not o.timestamps
        burst = o.burst_datagrams
        try:
            while not stop.is_set():
                if not poller.poll(poll_ms):
                    continue
                spans: list[tuple[int, int]] = []
                arrival: list[int] = []
                off = 0
                while len(spans) < burst and off <= last_slot:
                    try:
                        n = recv_into(view[off:off + slot], slot, flags)
                    except (BlockingIOError, InterruptedError):
                        break
                    spans.append((off, n))
                    if stamp:  # only SPIF without timestamps needs the arrival time
                        arrival.append(clock())
                    off += n if n < slot else slot
                if not stamp:
                    arrival = [0] * len(spans)
                if not spans:
                    continue
                for chunk in self.decoder.decode_chunks(buf, spans, arrival):
                    if chunk.events.size or chunk.counters.malformed or chunk.restart \
                            or chunk.counters.dropped or chunk.t_known_us is not None:
                        # the events were copied out of buf by decode, so buf can be reused
                        yield chunk
                if o.until_end and self.decoder.stats.end_packets:
                    return
        finally:
            view.release()

    def close(self) -> None:
        """Stop and join the receiver thread, then close the socket (idempotent)."""
        super().close()
        if self._sock.fileno() != -1 and not self.thread_alive:
            self._sock.close()


_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE",
                          33 if sys.platform.startswith("linux") else None)


def _set_rcvbuf(sock: socket.socket, nbytes: int) -> None:
    """Ask for an nbytes receive buffer; beyond net.core.rmem_max, try SO_RCVBUFFORCE (Linux,
    needs CAP_NET_ADMIN) and otherwise keep what the kernel granted."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, nbytes)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < nbytes and _SO_RCVBUFFORCE:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, nbytes)
        except OSError:
            pass


_FORMAT_NAMES = {"augury": "augury UDP v1", "spif": "SPIF UDP", "faery": "faery UDP t64",
                 "faery_t32": "faery UDP t32"}


def open_udp(location: str, *, clock: Clock = monotonic_us, **opts: Any) -> UdpSource:
    """Open ``udp://host:port?format=augury|spif|faery|faery_t32&geometry=WxH&...``.

    ``location`` is "host:port" (port 0: ephemeral, see ``source.address``); ``opts`` are the
    fields of ``UdpOptions`` (strings from the URI are converted). Geometry is required for
    spif and faery; augury framing carries it. ``clock`` stamps SPIF events that carry no
    timestamp (µs).
    """
    host, port = parse_host_port(location)
    return UdpSource(host, port, UdpOptions.from_options(opts), clock=clock)


# ---------------------------------------------------------------------------------------------
# Sender


class UdpSender:
    """Send EVENT_DTYPE arrays as UDP datagrams in one of the receiver's formats.

    ``send(events)`` splits into datagrams of at most ``max_events_per_packet`` events (default
    per format: augury 160 = one 1500-byte MTU frame, spif 128, faery 100) and returns the
    number of datagrams sent. augury: ``heartbeat(t_us)`` says sensor time reached t_us with
    no events, ``end(t_us)`` sends the END packet. ``session_id`` (u32) defaults to a random
    value so receivers can tell a restarted sender apart. ``refused`` counts datagrams the
    kernel reported undeliverable (nobody listening); sending goes on.
    """

    def __init__(self, host: str, port: int, fmt: str = "augury",
                 geometry: SensorGeometry | str | None = None,
                 max_events_per_packet: int | None = None, *, timestamps: bool = False,
                 session_id: int | None = None, sndbuf_bytes: int = 4 << 20) -> None:
        self.format = canonical_format(fmt)
        self.geometry = parse_geometry(geometry)
        if self.format == "augury" and self.geometry is None:
            raise ValueError("augury framing needs the sensor geometry (geometry='WxH')")
        self.timestamps = bool(timestamps)
        rec = {"augury": AUGURY_RECORD.itemsize, "spif": 8 if self.timestamps else 4,
               "faery": FAERY_RECORD.itemsize, "faery_t32": FAERY_T32_RECORD.itemsize}
        self._record_bytes = rec[self.format]
        hdr = HEADER_BYTES if self.format == "augury" else 0
        limit = (MAX_UDP_PAYLOAD - hdr) // self._record_bytes
        n = DEFAULT_EVENTS_PER_PACKET[self.format] if max_events_per_packet is None \
            else int(max_events_per_packet)
        if not 0 < n <= limit:
            raise ValueError(f"max_events_per_packet must be in 1..{limit} for {self.format}, "
                             f"got {n}")
        self.max_events_per_packet = n
        self.session_id = secrets.randbits(32) if session_id is None else int(session_id)
        self.seq = 0
        self.packets_sent = 0
        self.events_sent = 0
        self.refused = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(sndbuf_bytes))
        self._sock.connect((host, port))

    def __enter__(self) -> UdpSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _check(self, events: np.ndarray) -> None:
        if events.dtype != EVENT_DTYPE:
            raise TypeError(f"UdpSender.send needs EVENT_DTYPE, got {events.dtype}")
        if not events.size:
            return
        if self.geometry is not None:
            w, h = self.geometry.width, self.geometry.height
        else:
            w = h = 1 << 15 if self.format == "spif" else 1 << 16
        if int(events["x"].max()) >= w or int(events["y"].max()) >= h:
            raise ValueError(f"events outside the {w}x{h} sensor cannot be sent")
        if int(events["t"].min()) < 0:
            raise ValueError("negative timestamps cannot be sent")

    def encode(self, events: np.ndarray) -> list[list[bytes | memoryview]]:
        """The datagrams (each a list of buffers to concatenate) that ``send`` would send.

        Advances ``seq`` for augury framing.
        """
        self._check(events)
        n = self.max_events_per_packet
        starts = np.arange(0, events.size, n)
        if self.format == "augury":
            return self._encode_augury(events, starts)
        if self.format == "spif":
            word = ((events["x"].astype(np.uint32) & 0x7FFF) << 16) \
                | ((events["p"].astype(np.uint32) & 1) << 15) \
                | (events["y"].astype(np.uint32) & 0x7FFF)
            if self.timestamps:
                wire = np.empty(events.size, dtype=SPIF_TS_RECORD)
                wire["w"] = word
                wire["t"] = events["t"] & 0xFFFFFFFF
            else:
                wire = word | np.uint32(1 << 31)
        elif self.format == "faery":
            wire = np.empty(events.size, dtype=FAERY_RECORD)
            wire["t"] = events["t"]
            wire["x"], wire["y"], wire["p"] = events["x"], events["y"], events["p"]
        else:
            wire = np.empty(events.size, dtype=FAERY_T32_RECORD)
            wire["t"] = events["t"] & 0xFFFFFFFF
            wire["x"] = events["x"]
            wire["yp"] = ((events["y"] & 0x7FFF) << 1) | (events["p"] & 1)
        raw = memoryview(wire.view(np.uint8).reshape(-1))
        size = self._record_bytes
        return [[raw[s * size:min(s + n, events.size) * size]] for s in starts]

    def _header(self, flags: int, base_us: int, count: int) -> bytes:
        g = self.geometry
        hdr = HEADER.pack(MAGIC, VERSION, flags, HEADER_BYTES, self.session_id, self.seq,
                          base_us, g.width, g.height, count)  # type: ignore[union-attr]
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return hdr

    def _encode_augury(self, events: np.ndarray, starts: np.ndarray
                       ) -> list[list[bytes | memoryview]]:
        if not events.size:
            return []
        t = events["t"]
        base = np.minimum.reduceat(t, starts)
        sizes = np.diff(np.append(starts, events.size))
        dt = t - np.repeat(base, sizes)
        if int(dt.max()) > 0xFFFFFFFF:
            raise ValueError("events of one datagram span more than 2**32 µs; send fewer "
                             "events per packet")
        wire = np.empty(events.size, dtype=AUGURY_RECORD)
        wire["dt"] = dt
        wire["x"], wire["y"], wire["p"] = events["x"], events["y"], events["p"]
        raw = memoryview(wire.view(np.uint8).reshape(-1))
        size = AUGURY_RECORD.itemsize
        out: list[list[bytes | memoryview]] = []
        for s, b, k in zip(starts.tolist(), base.tolist(), sizes.tolist(), strict=True):
            out.append([self._header(0, b, k), raw[s * size:(s + k) * size]])
        return out

    def send_datagrams(self, datagrams: list[list[bytes | memoryview]]) -> int:
        """Send pre-encoded datagrams (from ``encode``) in the given order.

        UDP is fire-and-forget: a datagram refused because nothing listens yet (ICMP port
        unreachable on a connected socket) is counted in ``refused`` and the rest are sent.
        """
        send = self._sock.sendmsg
        for parts in datagrams:
            try:
                send(parts)
            except ConnectionRefusedError:
                self.refused += 1
        self.packets_sent += len(datagrams)
        return len(datagrams)

    def _send_one(self, datagram: bytes) -> None:
        try:
            self._sock.send(datagram)
        except ConnectionRefusedError:
            self.refused += 1
        self.packets_sent += 1

    def send(self, events: np.ndarray) -> int:
        """Send events (EVENT_DTYPE); returns the number of datagrams sent."""
        n = self.send_datagrams(self.encode(events))
        self.events_sent += int(events.size)
        return n

    def heartbeat(self, t_us: int) -> None:
        """augury only: an empty datagram saying sensor time has reached t_us."""
        self._augury_only("heartbeat")
        self._send_one(self._header(0, int(t_us), 0))

    def end(self, t_us: int) -> None:
        """augury only: the END datagram (the stream is over at t_us)."""
        self._augury_only("end")
        self._send_one(self._header(FLAG_END, int(t_us), 0))

    def _augury_only(self, what: str) -> None:
        if self.format != "augury":
            raise ValueError(f"{what} needs augury framing, not {self.format}")


@dataclass(frozen=True)
class SendStats:
    """What ``send_file`` sent: events, datagrams, sensor span (µs) and wall time (s)."""

    events: int
    packets: int
    span_us: int
    wall_s: float


def send_file(source: EventSource, uri: str, pace: str = "realtime", speed: float = 1.0, *,
              batch_us: int = 1000, clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> SendStats:
    """Send every event of ``source`` to ``udp://host:port?format=...`` (the CLI's
    ``augury send FILE udp://...``).

    pace "realtime": batches of ``batch_us`` µs leave when wall time (``clock``, s) reaches
    their end scaled by 1/``speed`` (``augury.adapters.replay.paced``); augury framing also
    sends a heartbeat for empty windows. pace "asap": as fast as the socket takes them.
    augury framing ends with an END datagram. Raises ValueError for a bad pace or speed.
    URI options: format, geometry (default: the source's), max_events_per_packet, timestamps.
    """
    scheme, location, query = parse_uri(uri)
    if scheme != "udp":
        raise ValueError(f"send_file needs a udp:// URI, got {uri!r}")
    host, port = parse_host_port(location)
    known = {"format", "geometry", "max_events_per_packet", "timestamps"}
    if set(query) - known:
        raise ValueError(f"unknown udp send option(s) {sorted(set(query) - known)}; "
                         f"known: {sorted(known)}")
    geometry = parse_geometry(query.get("geometry")) or source.geometry
    mepp = query.get("max_events_per_packet")
    sender = UdpSender(host, port, query.get("format", "augury"), geometry,
                       None if mepp is None else int(mepp),
                       timestamps=_parse_bool(query.get("timestamps", "0")))
    wall0 = clock()
    t0: int | None = None
    t_last = 0
    n_events = 0
    try:
        batches = (source.batches(batch_us=batch_us) if pace == "realtime"
                   else source.batches(batch_events=sender.max_events_per_packet * 64))
        for batch in paced(batches, pace=pace, speed=speed, clock=clock, sleep=sleep):
            if t0 is None:
                t0 = batch.t_start_us
            t_last = batch.t_end_us
            if len(batch):
                sender.send(batch.events)
                n_events += len(batch)
            elif sender.format == "augury":
                sender.heartbeat(batch.t_end_us)
        if sender.format == "augury":
            sender.end(t_last)
        return SendStats(n_events, sender.packets_sent, t_last - (t0 or 0), clock() - wall0)
    finally:
        sender.close()


__all__ = [
    "DatagramDecoder", "SendStats", "SequenceTracker", "UdpOptions",
    "UdpSender", "UdpSource", "UdpStats", "open_udp", "send_file", "unroll_u32",
]
