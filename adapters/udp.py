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

End of stream and sessions (augury framing): a sender's END datagram *flushes* its last
batch window at once (without ``until_end`` the receiver then waits for the next sender);
a sender silent for ``session_idle_s`` is flushed too and idles out. With
``sessions=single`` (default) one sender session is received at a time: while it is open
the datagrams of any other session are dropped and counted (``other_session``); the next
session takes over once it has ended or idled out, as a restart of the stream's clock.
``sessions=merge`` accepts every session into one stream on one clock.

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
wrong magic, version or header size, length inconsistent with count, a base time outside
0..2**62 µs, an event outside the datagram's geometry, geometry different from the
source's, or a length that is not a whole number of records) are counted in
``Counters.malformed`` and by reason (``udp_decode.REASONS``) in ``stats.malformed`` and
``source_stats()``, and skipped; the receiver never stops on bad input.
"""

from __future__ import annotations

import dataclasses
import logging
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from augury.adapters.base import Chunk
from augury.adapters.ring import EventRing, ThreadedSource
from augury.adapters.udp_decode import (
    DatagramDecoder,
    FlushChunk,
    UdpStats,
    unroll_u32,
)
from augury.adapters.udp_send import SendStats, UdpSender, send_file
from augury.adapters.udp_session import SESSION_POLICIES, SequenceTracker
from augury.adapters.udp_wire import (
    AUGURY_RECORD,
    DEFAULT_EVENTS_PER_PACKET,
    FAERY_RECORD,
    FAERY_T32_RECORD,
    FLAG_END,
    FORMATS,
    HEADER,
    HEADER_BYTES,
    MAGIC,
    MAX_UDP_PAYLOAD,
    SEQ_WINDOW,
    SPIF_TS_RECORD,
    VERSION,
    Clock,
    _ends,
    _opt_float,
    _parse_bool,
    canonical_format,
    monotonic_us,
    parse_geometry,
    parse_host_port,
)
from augury.events import Counters, EventBatch, SensorGeometry

log = logging.getLogger("augury.udp")

WAIT_LOG_EVERY_S = 30.0
"""While waiting for a first sender, a log line every this many seconds (s)."""

# ---------------------------------------------------------------------------------------------
# Receiver


@dataclass(frozen=True)
class UdpOptions:
    """Options of ``open_udp`` (URI query strings are converted; units in the names).

    capacity_events: ring size in events (memory ≈ 13 B × capacity); overflow: ring policy;
    idle_timeout_s: end ``chunks()`` after that long without data (None: never);
    rcvbuf_bytes: requested SO_RCVBUF; max_datagram: receive slot in bytes (larger datagrams
    are malformed "oversize"); until_end: end the stream after this many augury END
    packets (senders that finished; true = 1; 0 = never: a daemon waits for the next);
    reorder_window_us: validation's reorder window (0: events older than an already
    handed-out chunk are dropped and counted; each burst is sorted anyway);
    wait_sender_s: how long reading ``geometry`` waits for a first augury datagram when no
    ``geometry`` is given (s; None, the default: forever, as a daemon should; a log line
    says it is waiting; ``geometry_timeout_s`` is an older name);
    session_idle_s: a sender silent this long (s) has its last window flushed and idles
    out (None: never); sessions: "single" (one sender session at a time, the others
    counted and dropped) or "merge" (every session into one stream), see ``SessionGate``;
    burst_datagrams: datagrams drained per chunk; poll_s: receive poll interval (how fast
    close() and idle senders are noticed).
    """

    format: str = "augury"
    geometry: SensorGeometry | None = None
    timestamps: bool = False
    capacity_events: int = 1 << 21
    overflow: str = "drop_oldest"
    idle_timeout_s: float | None = None
    rcvbuf_bytes: int = 16 << 20
    max_datagram: int = 65536
    until_end: int = 0
    reorder_window_us: int = 0
    wait_sender_s: float | None = None
    session_idle_s: float | None = 1.0
    sessions: str = "single"
    burst_datagrams: int = 256
    poll_s: float = 0.02

    @classmethod
    def from_options(cls, opts: dict[str, Any]) -> UdpOptions:
        conv: dict[str, Callable[[Any], Any]] = {
            "format": canonical_format, "geometry": parse_geometry, "timestamps": _parse_bool,
            "capacity_events": int, "overflow": str, "idle_timeout_s": _opt_float,
            "rcvbuf_bytes": int, "max_datagram": int, "until_end": _ends,
            "reorder_window_us": int, "wait_sender_s": _opt_float,
            "session_idle_s": _opt_float, "sessions": str, "burst_datagrams": int,
            "poll_s": float,
        }
        opts = dict(opts)
        if "geometry_timeout_s" in opts:  # the older name of wait_sender_s
            opts.setdefault("wait_sender_s", opts.pop("geometry_timeout_s"))
        unknown = sorted(set(opts) - set(conv))
        if unknown:
            raise ValueError(f"unknown udp option(s) {unknown}; known: {sorted(conv)}")
        values = {k: conv[k](v) for k, v in opts.items()}
        o = cls(**values)
        if not 0 < o.max_datagram <= 65536:
            raise ValueError(f"max_datagram must be in 1..65536, got {o.max_datagram}")
        if o.burst_datagrams <= 0:
            raise ValueError(f"burst_datagrams must be > 0, got {o.burst_datagrams}")
        if o.sessions not in SESSION_POLICIES:
            raise ValueError(f"sessions must be one of {SESSION_POLICIES}, got {o.sessions!r}")
        for name in ("wait_sender_s", "session_idle_s"):
            v = getattr(o, name)
            if v is not None and not (v >= 0 and v < float("inf")):
                raise ValueError(f"{name} must be a number of seconds >= 0 (or none), got {v}")
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
                                       max_datagram=o.max_datagram, source=uri,
                                       sessions=o.sessions, idle_s=o.session_idle_s)
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
        self._window_us: int | None = None
        super().__init__(self._receive, ring, geometry=None, uri=bound_uri,
                         format=_FORMAT_NAMES[o.format], idle_timeout_s=o.idle_timeout_s,
                         poll_s=o.poll_s)
        self.reorder_window_us = o.reorder_window_us

    # -- geometry: given, or learned from the first augury header ----------------------------
    @property  # type: ignore[override]
    def geometry(self) -> SensorGeometry:
        """The sensor geometry: given, or learned from the first augury datagram, waiting
        ``wait_sender_s`` for it (None: forever, with a log line every WAIT_LOG_EVERY_S).

        Raises TimeoutError when that wait ends without a sender, RuntimeError when the
        source is closed while waiting."""
        known = self.decoder.geometry_known
        limit = self.options.wait_sender_s
        if not known.is_set():
            deadline = None if limit is None else time.monotonic() + limit
            waited_s = 0.0
            while not known.is_set():
                log.info("%s: waiting for a sender (%s); the sensor geometry comes from its "
                         "first augury datagram (or pass geometry=WIDTHxHEIGHT)", self.uri,
                         "no time limit" if limit is None else f"up to {limit:g} s"
                         if not waited_s else f"{waited_s:.0f} s so far")
                step = WAIT_LOG_EVERY_S if deadline is None else \
                    max(0.0, min(WAIT_LOG_EVERY_S, deadline - time.monotonic()))
                if known.wait(step):
                    break
                waited_s += step
                if self._closed:
                    raise RuntimeError(f"{self.uri}: closed while waiting for a sender")
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"{self.uri}: no sender within {limit:g} s (no augury "
                                       f"datagram to learn the sensor geometry from); pass "
                                       f"geometry=WIDTHxHEIGHT or a longer wait_sender_s")
        return self.decoder.geometry  # type: ignore[return-value]

    @geometry.setter
    def geometry(self, value: SensorGeometry) -> None:
        self.decoder.geometry = value
        self.decoder.geometry_known.set()

    @property
    def stats(self) -> UdpStats:
        return self.decoder.stats

    def source_stats(self) -> dict[str, Any]:
        """Counters of this source for ``stats``/``status`` (cumulative; plain JSON types):
        datagrams, events, malformed datagrams by reason and in total, sender sessions heard,
        datagrams dropped for their session (``other_session``, ``after_end``), loss
        tracking, flushes, late events and ring drops."""
        st, g, sq = self.stats, self.decoder.gate, self.decoder.seq
        return {
            "datagrams": st.datagrams, "bytes": st.bytes, "events": st.events,
            "heartbeats": st.heartbeats, "end_packets": st.end_packets,
            "malformed": st.malformed_total, "malformed_by_reason": dict(st.malformed),
            "sessions": sq.sessions, "session_policy": g.policy,
            "other_session": g.other_session, "after_end": g.after_end,
            "session_takeovers": g.takeovers, "end_repeats": g.end_repeats,
            "lost_packets": sq.lost, "duplicate_packets": sq.duplicates,
            "reordered_packets": sq.reordered, "stale_packets": sq.stale,
            "end_flushes": st.end_flushes, "idle_flushes": st.idle_flushes,
            "late_events": st.late_events, "ring_dropped_events": self.ring.dropped_events,
        }

    def batches(self, *, batch_us: int | None = None, batch_events: int | None = None
                ) -> Iterator[EventBatch]:
        """``EventSource.batches``; the window span (µs) is also kept, so that an END or an
        idle sender flushes exactly the last window (see ``chunks``)."""
        if batch_us is None and batch_events is None:
            batch_us = 10_000
        self._window_us = batch_us
        return super().batches(batch_us=batch_us, batch_events=batch_events)

    def chunks(self) -> Iterator[Chunk]:
        """The receiver's chunks, in order, with the end of a sender's stream applied.

        At a ``FlushChunk`` (the sender's END, or it fell silent) ``t_known_us`` becomes
        the end of the batch window holding the last event handed on (window: the
        ``batch_us`` of ``batches``; without one, that event's time + 1 µs), so that the
        last window is batched now. Events of the same clock older than that time, arriving
        later, are dropped and counted (``Counters.dropped``, ``stats.late_events``): no
        event is handed on backwards in time. A restart (a new sender) starts afresh.
        """
        last_t: int | None = None
        floor: int | None = None
        for chunk in super().chunks():  # ring drops folded in, flags and type kept
            if chunk.restart:
                last_t = floor = None
            ev, counters, known = chunk.events, chunk.counters, chunk.t_known_us
            if floor is not None and ev.size and int(ev["t"][0]) < floor:
                keep = ev["t"] >= floor
                n_late = int(ev.size - keep.sum())
                ev = ev[keep]
                counters = Counters(counters.read, counters.dropped + n_late,
                                    counters.malformed)
                self.stats.late_events += n_late
            if ev.size:
                t = int(ev["t"].max())
                last_t = t if last_t is None else max(last_t, t)
            if isinstance(chunk, FlushChunk) and last_t is not None:
                w = self._window_us
                end = (last_t // w + 1) * w if w else last_t + 1
                known = end if known is None else max(known, end)
                floor = known
            if ev is chunk.events and known == chunk.t_known_us:
                yield chunk
            else:
                yield dataclasses.replace(chunk, events=ev, counters=counters,
                                          t_known_us=known)

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
        decoder = self.decoder
        log.info("%s: listening, waiting for a sender", self.uri)
        heard = False
        try:
            while not stop.is_set():
                if not poller.poll(poll_ms):
                    flush = decoder.idle(time.monotonic())
                    if flush is not None:
                        log.info("%s: sender silent for %g s: its last window is flushed",
                                 self.uri, o.session_idle_s)
                        yield flush
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
                sessions = decoder.seq.sessions
                now_s = time.monotonic()
                for chunk in decoder.decode_chunks(buf, spans, arrival, now_s):
                    if chunk.events.size or chunk.counters.malformed or chunk.restart \
                            or chunk.counters.dropped or chunk.counters.read \
                            or chunk.t_known_us is not None:
                        # the events were copied out of buf by decode, so buf can be reused
                        yield chunk
                if not heard or decoder.seq.sessions != sessions:
                    heard = True
                    log.info("%s: receiving from a sender (%s)", self.uri,
                             f"session {decoder.gate.current:08x}"
                             if decoder.gate.current is not None else self.format)
                if o.until_end and decoder.stats.end_packets >= o.until_end:
                    return
                flush = decoder.idle(now_s)  # the current sender may be silent while
                if flush is not None:        # others are not
                    yield flush
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


__all__ = [
    "AUGURY_RECORD", "DEFAULT_EVENTS_PER_PACKET", "FAERY_RECORD", "FAERY_T32_RECORD",
    "FLAG_END", "FORMATS", "HEADER", "HEADER_BYTES", "MAGIC", "MAX_UDP_PAYLOAD", "SEQ_WINDOW",
    "SPIF_TS_RECORD", "VERSION", "canonical_format", "monotonic_us", "parse_geometry",
    "parse_host_port",
    "DatagramDecoder", "SendStats", "SequenceTracker", "UdpOptions",
    "UdpSender", "UdpSource", "UdpStats", "open_udp", "send_file", "unroll_u32",
]
