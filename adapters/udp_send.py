"""Sending events as UDP datagrams in the receiver's formats (``augury send``)."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from augury.adapters.base import EventSource, parse_uri
from augury.adapters.replay import paced
from augury.adapters.udp_wire import (
    AUGURY_RECORD,
    DEFAULT_EVENTS_PER_PACKET,
    FAERY_RECORD,
    FAERY_T32_RECORD,
    FLAG_END,
    HEADER,
    HEADER_BYTES,
    MAGIC,
    MAX_UDP_PAYLOAD,
    SPIF_TS_RECORD,
    VERSION,
    _parse_bool,
    canonical_format,
    parse_geometry,
    parse_host_port,
)
from augury.events import EVENT_DTYPE, SensorGeometry


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

    def end(self, t_us: int, repeats: int = 3, interval_s: float = 0.005) -> None:
        """augury only: the END datagram (the stream is over at t_us), sent ``repeats`` times
        ``interval_s`` apart with one sequence number, since a datagram may be lost (a
        receiver whose socket buffer is full drops the last of a burst first). The receiver
        acts on the first copy and ignores the others (``end_repeats``). Blocks for
        (repeats − 1) · interval_s seconds."""
        self._augury_only("end")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        datagram = self._header(FLAG_END, int(t_us), 0)
        for i in range(int(repeats)):
            if i:
                time.sleep(interval_s)
            self._send_one(datagram)

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
