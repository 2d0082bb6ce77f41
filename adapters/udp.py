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

import select
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from augury.adapters.base import Chunk
from augury.adapters.ring import EventRing, ThreadedSource
from augury.adapters.udp_decode import (
    DatagramDecoder,
    UdpStats,
    unroll_u32,
)
from augury.adapters.udp_send import SendStats, UdpSender, send_file
from augury.adapters.udp_session import SequenceTracker
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
    _opt_float,
    _parse_bool,
    canonical_format,
    monotonic_us,
    parse_geometry,
    parse_host_port,
)
from augury.events import SensorGeometry

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


__all__ = [
    "AUGURY_RECORD", "DEFAULT_EVENTS_PER_PACKET", "FAERY_RECORD", "FAERY_T32_RECORD",
    "FLAG_END", "FORMATS", "HEADER", "HEADER_BYTES", "MAGIC", "MAX_UDP_PAYLOAD", "SEQ_WINDOW",
    "SPIF_TS_RECORD", "VERSION", "canonical_format", "monotonic_us", "parse_geometry",
    "parse_host_port",
    "DatagramDecoder", "SendStats", "SequenceTracker", "UdpOptions",
    "UdpSender", "UdpSource", "UdpStats", "open_udp", "send_file", "unroll_u32",
]
