"""iniVation / jAER files: AEDAT 2.0 (NumPy reader) and AEDAT 4.0 (dv-processing or aedat).

AEDAT 2.0 (jAER): ASCII header lines starting with ``#`` (first ``#!AER-DAT2.0``; the camera
in ``# HardwareInterface:``, ``# AEChip:`` or ``# Source:``), then big-endian records
``uint32 address, int32 timestamp`` (8 bytes, µs). Address layouts:

* DAVIS (240, 346, 640, 128): bit 31 = APS/IMU sample (skipped, counted in ``others``),
  bit 10 = external input event (skipped, ``others``); DVS events: y = bits 22–30,
  x = bits 12–21, polarity = bit 11 (1 = ON).
* DVS128 / Tmpdiff128: x = bits 1–7, y = bits 8–14, polarity = bit 0 (1 = ON),
  bit 15 = external event (skipped, ``others``).

jAER places the origin at the bottom left and mirrors x; the image origin is top left, so
by default (``mirror=true``) x_img = W−1−x and y_img = H−1−y for both layouts (verified on
DAVIS240C recordings, see ../shared/data/README.md). Timestamps are unrolled across 32-bit
wraps. A trailing partial record is counted as malformed.

AEDAT 4.0: decoded by ``aedat`` when installed, else by ``dv_processing`` (``backend="dv"``
forces it); neither is a core dependency (``pip install 'augury[aedat4]'``). Both are native
libraries that abort, crash or hang on some corrupted files, so the framing is checked in
Python first and decoding runs in a child process with a timeout (see ``Aedat4Source``).
Timestamps are absolute µs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from augury.adapters.base import Chunk, EventSource
from augury.adapters.files import (
    DEFAULT_CHUNK_EVENTS,
    PLAUSIBLE_RECORDS,
    RecordLayout,
    Unroll,
    check_options,
    check_plausible,
    checked_geometry,
    pack_columns,
    parse_bool,
    parse_geometry,
    parse_int,
    read_record_blocks,
    record_layout,
    unroll_u32,
)
from augury.events import (
    EVENT_DTYPE,
    Counters,
    EventFormatError,
    SensorGeometry,
    empty_events,
    to_events,
)

# -- AEDAT 2.0 ------------------------------------------------------------------------------

AEDAT2_RECORD = np.dtype([("addr", ">u4"), ("t", ">u4")])
"""One AEDAT 2.0 record: big-endian address and timestamp (µs), 8 bytes."""

CAMERAS: dict[str, tuple[str, SensorGeometry]] = {
    "DAVIS240": ("davis", SensorGeometry(240, 180)),
    "DAVIS346": ("davis", SensorGeometry(346, 260)),
    "DAVIS640": ("davis", SensorGeometry(640, 480)),
    "DAVIS128": ("davis", SensorGeometry(128, 128)),
    "DVS128": ("dvs128", SensorGeometry(128, 128)),
    "TMPDIFF128": ("dvs128", SensorGeometry(128, 128)),
}
"""Camera name fragment (as in jAER chip / interface names) → (address layout, geometry)."""

DEFAULT_CAMERA = "DAVIS240"
"""Assumed when the header names no known camera."""

_MAX_HEADER_LINE = 1 << 16
_MAX_HEADER_BYTES = 1 << 24
"""Longest AEDAT 2.0 header accepted (bytes); jAER headers with preferences are ~200 KB."""
_CAMERA_KEYS = ("AECHIP", "HARDWAREINTERFACE", "SOURCE")


@dataclass(frozen=True)
class Aedat2Header:
    """What a jAER header says: version, camera (a CAMERAS key or None) and the records."""

    version: str
    camera: str | None
    lines: tuple[str, ...]
    layout: RecordLayout


def read_aedat2_header(path: str | Path) -> Aedat2Header:
    """Parse the '#' header of an AEDAT 2.0 file.

    A header line is '#' + text up to '\\n' with no control bytes (a data record may begin
    with the byte '#'). Raises EventFormatError (file, byte offset) for an empty file, a
    missing ``#!AER-DAT`` version line or a version other than 2.x.
    """
    p = Path(path)
    src = str(p)
    size = p.stat().st_size
    if size == 0:
        raise EventFormatError("empty file: no '#!AER-DAT2.0' header", source=src, offset=0)
    with open(p, "rb") as f:
        buf, data_offset = _scan_header(f)
    if data_offset == 0:
        line = buf[:_MAX_HEADER_LINE].split(b"\n", 1)[0]
        if buf[:1] == b"#" and _has_control_bytes(line + b"\n"):
            raise EventFormatError("header line holds binary bytes", source=src, offset=0)
    elif data_offset > _MAX_HEADER_BYTES:
        raise EventFormatError(f"header longer than {_MAX_HEADER_BYTES} bytes", source=src,
                               offset=_MAX_HEADER_BYTES)
    if buf[data_offset:data_offset + 1] == b"#":  # a '#' line that is not a clean text line
        nl = buf.find(b"\n", data_offset, data_offset + _MAX_HEADER_LINE)
        raw = buf[data_offset:nl + 1] if nl >= 0 else buf[data_offset:data_offset
                                                            + _MAX_HEADER_LINE]
        if data_offset and _has_control_bytes(raw):
            if _corrupt_header_line(raw, buf[nl + 1:nl + 1 + _MAX_HEADER_LINE] if nl >= 0
                                    else b""):
                bad = _first_control_byte(raw)
                raise EventFormatError(f"header line holds the control byte "
                                       f"0x{raw[bad]:02X} (corrupt header)", source=src,
                                       offset=data_offset + bad)
            # else: a data record that happens to start with '#'
        elif data_offset:
            raise EventFormatError("header line does not end in a newline (truncated file?) "
                                   f"or is longer than {_MAX_HEADER_LINE} bytes", source=src,
                                   offset=data_offset)
    lines = [ln.decode("latin-1").rstrip("\r") for ln in buf[:data_offset].split(b"\n")[:-1]]
    if any(len(ln) >= _MAX_HEADER_LINE for ln in lines):
        raise EventFormatError(f"a header line is longer than {_MAX_HEADER_LINE} bytes",
                               source=src, offset=0)
    if not lines or not lines[0].startswith("#!AER-DAT"):
        raise EventFormatError("not an AEDAT file: the first line must be '#!AER-DAT2.0'",
                               source=src, offset=0)
    version = lines[0][len("#!AER-DAT"):].strip()
    if not version.startswith("2."):
        raise EventFormatError(f"AEDAT version {version!r} is not supported here (only 2.0; "
                               "AEDAT 4 files use the .aedat4 suffix)", source=src, offset=0)
    return Aedat2Header(version, _header_camera(lines), tuple(lines),
                        record_layout(size, data_offset, AEDAT2_RECORD.itemsize))


_CLEAN_LINES = re.compile(rb"(?:#[\t\x20-\x7e\x80-\xff]*\r*\n)*")
"""Consecutive '#' header lines without control bytes (tab allowed; CRs only at the end)."""


def _scan_header(f: Any) -> tuple[bytes, int]:
    """(bytes read, end of the clean '#' lines at the start of the file).

    Reads 1 MiB at a time while the clean lines run to the end of what was read, and stops
    once they exceed _MAX_HEADER_BYTES: bounded work whatever the file holds (one regex pass,
    no per-line Python loop, so a header of millions of tiny lines costs milliseconds).
    """
    buf = b""
    end = 0
    while True:
        chunk = f.read(1 << 20)
        buf += chunk
        m = _CLEAN_LINES.match(buf, end)
        end = m.end() if m else end
        if not chunk or end < len(buf) - _MAX_HEADER_LINE or end > _MAX_HEADER_BYTES:
            return buf, end


def _control_mask(raw: bytes) -> np.ndarray:
    """Mask of the control bytes (not tab) of a line without its line end."""
    body = np.frombuffer(raw.rstrip(b"\r\n"), dtype=np.uint8)
    return ((body < 0x20) & (body != 0x09)) | (body == 0x7F)


def _has_control_bytes(raw: bytes) -> bool:
    return bool(np.any(_control_mask(raw)))


def _first_control_byte(raw: bytes) -> int:
    return int(np.flatnonzero(_control_mask(raw))[0])


def _corrupt_header_line(raw: bytes, following: bytes) -> bool:
    """True if a '#' line holding control bytes is a damaged header line, not data.

    Data records may start with '#' (0x23), so such a line ends the header only when it
    looks binary: it is a damaged header line if it is mostly text (at least 16 bytes, at
    most one control byte in ten; event records have about one in eight or more) or if the
    next line is itself a clean '#' header line.
    """
    mask = _control_mask(raw)
    if raw.endswith(b"\n") and mask.size >= 16 and 10 * int(np.count_nonzero(mask)) <= mask.size:
        return True
    nxt = following.split(b"\n", 1)
    return (raw.endswith(b"\n") and len(nxt) == 2 and nxt[0].startswith(b"#")
            and not _has_control_bytes(nxt[0] + b"\n"))


def _header_camera(lines: list[str]) -> str | None:
    """The first CAMERAS key named in an AEChip / HardwareInterface / Source header line."""
    for ln in lines:
        text = ln.lstrip("#").strip().upper()
        if not text.replace(" ", "").startswith(_CAMERA_KEYS):
            continue
        compact = text.replace(" ", "").replace("_", "")
        for name in CAMERAS:
            if name in compact:
                return name
    return None


def decode_davis(
    addr: np.ndarray, geometry: SensorGeometry, mirror: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """DAVIS addresses (n,) uint32 → (is_dvs bool, x, y int64, p uint8), image coordinates.

    is_dvs = bit31 == 0 and bit10 == 0; x = bits 12–21, y = bits 22–30, p = bit 11;
    mirrored: x_img = W−1−x, y_img = H−1−y (values may fall outside; validation drops them).
    """
    a = addr.astype(np.int64)
    is_dvs = ((a >> 31) & 1 == 0) & ((a >> 10) & 1 == 0)
    x = (a >> 12) & 0x3FF
    y = (a >> 22) & 0x1FF
    p = ((a >> 11) & 1).astype(np.uint8)
    if mirror:
        x = geometry.width - 1 - x
        y = geometry.height - 1 - y
    return is_dvs, x, y, p


def decode_dvs128(
    addr: np.ndarray, geometry: SensorGeometry, mirror: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """DVS128 addresses (n,) → (is_dvs, x, y, p): x = bits 1–7, y = bits 8–14, p = bit 0.

    is_dvs = bit 15 == 0 (bit 15 marks external events); mirrored as decode_davis.
    """
    a = addr.astype(np.int64)
    is_dvs = (a >> 15) & 1 == 0
    x = (a >> 1) & 0x7F
    y = (a >> 8) & 0x7F
    p = (a & 1).astype(np.uint8)
    if mirror:
        x = geometry.width - 1 - x
        y = geometry.height - 1 - y
    return is_dvs, x, y, p


_DECODERS = {"davis": decode_davis, "dvs128": decode_dvs128}


class Aedat2Source(EventSource):
    """DVS events of a jAER AEDAT 2.0 file, read ``chunk_events`` records at a time.

    Camera (address layout + geometry) from the header, else DAVIS240 (240×180); options
    ``camera`` ("DAVIS240", "DVS128", ... or "davis"/"dvs128") and ``geometry`` override.
    ``others`` counts non-DVS records (APS, IMU, external input) skipped so far; they are
    neither events nor malformed.
    """

    format = "AEDAT 2.0"

    def __init__(self, path: str | Path, *, geometry: SensorGeometry | None = None,
                 camera: str | None = None, mirror: bool = True,
                 chunk_events: int = DEFAULT_CHUNK_EVENTS) -> None:
        super().__init__()
        self.path = Path(path)
        self.uri = str(self.path)
        self.header = read_aedat2_header(self.path)
        self.camera, self.layout_name, default_geometry = _pick_camera(camera,
                                                                       self.header.camera)
        self.geometry = geometry or default_geometry
        self.mirror = mirror
        self.chunk_events = chunk_events
        self.others = 0
        self._check_first_records()

    def _check_first_records(self) -> None:
        """Refuse the file if its first DVS records are mostly implausible (check_plausible):
        a header misread as data or a file that is not AEDAT 2.0 shows up there."""
        decode = _DECODERS[self.layout_name]
        with open(self.path, "rb") as f:
            for offset, rec in read_record_blocks(f, self.header.layout, AEDAT2_RECORD,
                                                  PLAUSIBLE_RECORDS, source=self.uri):
                t, _ = unroll_u32(rec["t"], None)
                is_dvs, x, y, p = decode(rec["addr"], self.geometry, self.mirror)
                check_plausible(t[is_dvs], x[is_dvs], y[is_dvs], p[is_dvs], self.geometry,
                                source=self.uri, offset=offset, fmt="AEDAT 2.0")
                break

    def chunks(self) -> Iterator[Chunk]:
        layout = self.header.layout
        decode = _DECODERS[self.layout_name]
        state: Unroll | None = None
        self.others = 0
        with open(self.path, "rb") as f:
            for _offset, rec in read_record_blocks(f, layout, AEDAT2_RECORD, self.chunk_events,
                                                   source=self.uri):
                t, state = unroll_u32(rec["t"], state)
                is_dvs, x, y, p = decode(rec["addr"], self.geometry, self.mirror)
                n_dvs = int(np.count_nonzero(is_dvs))
                self.others += int(rec.size) - n_dvs
                events, n_bad = pack_columns(t[is_dvs], x[is_dvs], y[is_dvs], p[is_dvs])
                yield Chunk(events, Counters(read=n_dvs, dropped=n_bad))
        if layout.trailing_bytes:
            yield Chunk(empty_events(), Counters(malformed=1))


def _pick_camera(option: str | None, from_header: str | None) -> tuple[str, str, SensorGeometry]:
    """(camera name, address layout, geometry) from the option, the header or the default."""
    if option is not None:
        key = option.strip().upper().replace("_", "").replace(" ", "")
        if key == "DAVIS":
            key = "DAVIS240"
        if key not in CAMERAS:
            raise ValueError(f"unknown camera {option!r}; known: {', '.join(CAMERAS)}, davis")
        name = key
    else:
        name = from_header or DEFAULT_CAMERA
    layout, geometry = CAMERAS[name]
    return name, layout, geometry


def open_aedat2(path: str | Path, **opts: Any) -> Aedat2Source:
    """Open a jAER AEDAT 2.0 file. Options: geometry ("WxH"), camera, mirror, chunk_events."""
    check_options(opts, ("geometry", "camera", "mirror", "chunk_events"), "AEDAT 2.0")
    camera = opts.get("camera")
    return Aedat2Source(path, geometry=parse_geometry(opts.get("geometry")),
                        camera=None if camera is None else str(camera),
                        mirror=parse_bool(opts.get("mirror", True), "mirror"),
                        chunk_events=parse_int(opts.get("chunk_events", DEFAULT_CHUNK_EVENTS),
                                               "chunk_events"))


# -- AEDAT 4.0 ------------------------------------------------------------------------------

AEDAT4_MAGIC = b"#!AER-DAT4.0\r\n"
AEDAT4_BACKENDS = ("aedat", "dv")
"""Decoders in order of preference: dv-processing 2.0.4 was seen to loop forever on a
corrupted LZ4 packet, where aedat raises an error; so "auto" picks aedat when installed."""

AEDAT4_TIMEOUT_S = 20.0
"""Default longest wait (s) for the decoder process to hand over its next packet."""

_MAX_IO_HEADER = 1 << 24
"""Longest IOHeader accepted (bytes); real ones hold a few KB of XML."""

_PACKET_HEADER = struct.Struct("<ii")
_FRAME = struct.Struct("<4sqq")
"""Worker → caller frame header: kind (b"HELO" once the decoder is imported, b"EVTS",
b"DONE", b"FAIL"), packets decoded so far, payload bytes (EVENT_DTYPE records for EVTS, a
UTF-8 message for FAIL)."""

AEDAT4_STARTUP_S = 60.0
"""Longest wait for the worker process to start and import its decoder (a loaded machine
may need seconds); ``timeout_s`` applies from then on, between packets."""


def available_aedat4_backends() -> tuple[str, ...]:
    """The AEDAT 4.0 decoders installed here, preferred first (found without importing them)."""
    out = []
    for name, module in (("aedat", "aedat"), ("dv", "dv_processing")):
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return tuple(out)


@dataclass(frozen=True)
class Aedat4Layout:
    """The framing of an AEDAT 4.0 file, checked in Python before any decoder sees it.

    streams: stream id → type identifier ("EVTS", "IMUS", ...) from the IOHeader's XML;
    event_stream: id of the first "EVTS" stream (None if there is none); geometry: its
    sizeX × sizeY (None if not given); packets: int64 (n, 3) rows (byte offset, stream id,
    payload bytes) of every packet between the IOHeader and the data table (or the end).
    """

    data_offset: int
    end: int
    streams: dict[int, str]
    event_stream: int | None
    geometry: SensorGeometry | None
    packets: np.ndarray


def read_aedat4_layout(path: str | Path) -> Aedat4Layout:
    """Check the framing of an AEDAT 4.0 file and return it (bounded work, no native code).

    Layout: magic (14 bytes), int32 IOHeader size, IOHeader (a flatbuffer, identifier
    "IOHE": field 0 int32 compression, field 1 int64 data-table position or -1, field 2 the
    XML description of the streams), then packets (int32 stream id, int32 payload size,
    payload) up to the data table or the end of the file. Raises EventFormatError naming the
    file and the byte offset of the first thing that does not fit: the magic, an IOHeader
    size or field outside the header, unparsable XML, an absurd stream geometry, a packet of
    an undeclared stream, of size ≤ 0 or running past the data (a truncated file).
    """
    p = Path(path)
    src = str(p)
    size = p.stat().st_size
    if size == 0:
        raise EventFormatError("empty file: no AEDAT 4.0 header", source=src, offset=0)
    with open(p, "rb") as f:
        if f.read(len(AEDAT4_MAGIC)) != AEDAT4_MAGIC:
            raise EventFormatError("not an AEDAT 4.0 file: it must start with '#!AER-DAT4.0'",
                                   source=src, offset=0)
        head = f.read(4)
        pos = len(AEDAT4_MAGIC)
        if len(head) < 4:
            raise EventFormatError("file ends inside the IOHeader size", source=src, offset=pos)
        n_header = struct.unpack("<i", head)[0]
        if not 0 < n_header <= min(size - pos - 4, _MAX_IO_HEADER):
            raise EventFormatError(f"IOHeader size {n_header} is outside 1.."
                                   f"{min(size - pos - 4, _MAX_IO_HEADER)}", source=src,
                                   offset=pos)
        header = f.read(n_header)
        data_offset = pos + 4 + n_header
        table, xml = _io_header_fields(header, src, pos + 4)
        if table is not None and table >= 0 and not data_offset <= table <= size:
            where = "past the end of the file (truncated?)" if table > size else \
                "inside the header"
            raise EventFormatError(f"the data table position {table} is {where}", source=src,
                                   offset=pos + 4)
        end = table if table is not None and table > 0 else size
        streams, event_stream, geometry = _io_header_streams(xml, src, pos + 4)
        packets = _walk_packets(f, data_offset, end, streams, src)
    return Aedat4Layout(data_offset, end, streams, event_stream, geometry, packets)


def _io_header_fields(header: bytes, src: str, base: int) -> tuple[int | None, str]:
    """(data-table position or None, stream XML) of the IOHeader flatbuffer; every offset is
    bounds-checked (EventFormatError at byte ``base`` + offset otherwise)."""
    def fail(what: str, at: int) -> EventFormatError:
        return EventFormatError(f"IOHeader flatbuffer: {what}", source=src, offset=base + at)

    n = len(header)
    try:
        root = struct.unpack_from("<I", header, 0)[0]
        if not 4 <= root <= n - 4:
            raise fail(f"root table offset {root} outside the header", 0)
        vtable = root - struct.unpack_from("<i", header, root)[0]
        if not 0 <= vtable <= n - 4:
            raise fail(f"vtable offset {vtable} outside the header", root)
        vsize, tsize = struct.unpack_from("<HH", header, vtable)
        if vsize < 4 or vsize % 2 or vtable + vsize > n or root + tsize > n:
            raise fail(f"vtable size {vsize} / table size {tsize} do not fit", vtable)
        fields = [struct.unpack_from("<H", header, vtable + 4 + 2 * i)[0]
                  for i in range((vsize - 4) // 2)]
        if any(fo and fo + 4 > tsize for fo in fields):
            raise fail("a field lies outside its table", vtable)
        table = None
        if len(fields) > 1 and fields[1]:
            if fields[1] + 8 > tsize:
                raise fail("the data-table field lies outside its table", vtable)
            table = struct.unpack_from("<q", header, root + fields[1])[0]
        xml = ""
        if len(fields) > 2 and fields[2]:
            at = root + fields[2]
            sat = at + struct.unpack_from("<I", header, at)[0]
            if not 0 <= sat <= n - 4:
                raise fail("the stream description string lies outside the header", at)
            length = struct.unpack_from("<I", header, sat)[0]
            if sat + 4 + length > n:
                raise fail(f"the stream description ({length} bytes) runs past the header", sat)
            xml = header[sat + 4:sat + 4 + length].decode("utf-8", "replace")
    except struct.error:
        raise fail("ends early", 0) from None
    return table, xml


def _io_header_streams(xml: str, src: str, offset: int
                       ) -> tuple[dict[int, str], int | None, SensorGeometry | None]:
    """Streams declared in the IOHeader XML: (id → type, first event stream, its geometry)."""
    try:
        root = ElementTree.fromstring(xml) if xml.strip() else None
    except ElementTree.ParseError as exc:
        raise EventFormatError(f"the IOHeader's stream description is not valid XML ({exc})",
                               source=src, offset=offset) from None
    if root is None:
        raise EventFormatError("the IOHeader declares no streams", source=src, offset=offset)
    streams: dict[int, str] = {}
    event_stream: int | None = None
    geometry: SensorGeometry | None = None
    for node in root.iter("node"):
        attrs = {a.get("key"): (a.text or "").strip() for a in node.findall("attr")}
        name = node.get("name", "")
        if "typeIdentifier" not in attrs or not name.isdigit():
            continue
        sid = int(name)
        streams[sid] = attrs["typeIdentifier"]
        if attrs["typeIdentifier"] == "EVTS" and event_stream is None:
            event_stream = sid
            info = {a.get("key"): (a.text or "").strip()
                    for child in node.findall("node") if child.get("name") == "info"
                    for a in child.findall("attr")}
            if "sizeX" in info or "sizeY" in info:
                try:
                    w, h = int(info.get("sizeX", "")), int(info.get("sizeY", ""))
                except ValueError:
                    raise EventFormatError(f"event stream {sid}: sizeX/sizeY "
                                           f"{info.get('sizeX')!r}/{info.get('sizeY')!r} are "
                                           "not integers", source=src, offset=offset) from None
                geometry = checked_geometry(w, h, source=src,
                                            what=f"IOHeader stream {sid} sizeX/sizeY")
    if not streams:
        raise EventFormatError("the IOHeader declares no streams", source=src, offset=offset)
    return streams, event_stream, geometry


def _walk_packets(f: Any, start: int, end: int, streams: dict[int, str], src: str) -> np.ndarray:
    """(offset, stream id, size) rows of the packets in [start, end), checked (see above)."""
    rows: list[tuple[int, int, int]] = []
    offset = start
    while offset < end:
        f.seek(offset)
        ph = f.read(_PACKET_HEADER.size)
        if len(ph) < _PACKET_HEADER.size or offset + _PACKET_HEADER.size > end:
            raise EventFormatError("file ends inside a packet header (truncated?)", source=src,
                                   offset=offset)
        sid, n = _PACKET_HEADER.unpack(ph)
        if sid not in streams:
            raise EventFormatError(f"packet of stream {sid}, which the IOHeader does not "
                                   f"declare (declared: {sorted(streams)})", source=src,
                                   offset=offset)
        if n <= 0 or offset + _PACKET_HEADER.size + n > end:
            raise EventFormatError(f"packet size {n} does not fit in the "
                                   f"{end - offset - _PACKET_HEADER.size} bytes left "
                                   "(truncated or corrupt)", source=src, offset=offset)
        rows.append((offset, sid, n))
        offset += _PACKET_HEADER.size + n
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def aedat4_truncation_offset(path: str | Path) -> int | None:
    """Byte offset of the first packet whose framing is broken, or None if the framing holds.

    (Kept for callers that only want the offset; ``read_aedat4_layout`` raises instead.)
    """
    try:
        read_aedat4_layout(path)
    except EventFormatError as exc:
        return exc.offset
    return None


class Aedat4Source(EventSource):
    """Events of an AEDAT 4.0 file (first event stream), via aedat or dv-processing.

    Both decoders are native libraries that were seen to abort the process (SIGABRT), crash
    (SIGSEGV) or loop forever on corrupted files, so they never run in the caller's process:
    the framing (header, streams, packet sizes) is checked in Python at open
    (``read_aedat4_layout``), and decoding runs in a child process that streams EVENT_DTYPE
    packets back through a pipe. A decoder error, crash or a silence longer than
    ``timeout_s`` seconds between packets (AEDAT4_STARTUP_S for the process to start and
    import its decoder) ends the child and raises EventFormatError naming the file and the
    offset of the packet after the last one decoded. Costs one process start (~0.3 s) per
    pass over the file.

    ``backend`` "auto" (aedat if installed, else dv-processing), "aedat" or "dv". Packets are
    cut into pieces of at most ``chunk_events``. Geometry from the stream's sizeX/sizeY in
    the IOHeader (sides ≤ MAX_SENSOR_SIDE); the ``geometry`` option overrides.
    """

    format = "AEDAT 4.0"

    def __init__(self, path: str | Path, *, geometry: SensorGeometry | None = None,
                 backend: str = "auto", chunk_events: int = DEFAULT_CHUNK_EVENTS,
                 timeout_s: float = AEDAT4_TIMEOUT_S) -> None:
        super().__init__()
        self.path = Path(path)
        self.uri = str(self.path)
        self.backend = _pick_backend(backend)
        self.chunk_events = chunk_events
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.layout = read_aedat4_layout(self.path)
        if self.layout.event_stream is None:
            raise EventFormatError("no event stream (typeIdentifier EVTS) in the file",
                                   source=self.uri, offset=len(AEDAT4_MAGIC))
        stored = self.layout.geometry
        if geometry is None and stored is None:
            raise EventFormatError("the event stream gives no sizeX/sizeY; pass the option "
                                   "geometry='WIDTHxHEIGHT'", source=self.uri,
                                   offset=len(AEDAT4_MAGIC))
        self.geometry = geometry or stored
        self._proc: subprocess.Popen[bytes] | None = None

    def chunks(self) -> Iterator[Chunk]:
        self.close()
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE, self.backend,
                                     str(self.path)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=errors)
            self._proc = proc
            try:
                yield from self._read_worker(proc, errors)
            finally:
                self.close()

    def _read_worker(self, proc: subprocess.Popen[bytes], errors: Any) -> Iterator[Chunk]:
        """Chunks from the worker's frames; EventFormatError on error, crash or timeout."""
        assert proc.stdout is not None  # set by Popen(stdout=PIPE), not input validation
        fd = proc.stdout.fileno()
        done = 0
        wait_s = max(AEDAT4_STARTUP_S, self.timeout_s)  # until HELO: process start, imports
        while True:
            head = _read_exact(fd, _FRAME.size, wait_s)
            if head is None or len(head) < _FRAME.size:
                self._fail_worker(proc, errors, done, timed_out=head is None)
            kind, done, n = _FRAME.unpack(head)  # type: ignore[arg-type]
            wait_s = self.timeout_s
            body = _read_exact(fd, n, self.timeout_s) if n else b""
            if body is None or len(body) < n:
                self._fail_worker(proc, errors, done, timed_out=body is None)
            if kind == b"HELO":
                continue
            if kind == b"DONE":
                return
            if kind == b"FAIL":
                msg = body.decode("utf-8", "replace")  # type: ignore[union-attr]
                raise EventFormatError(f"AEDAT 4.0 decoder ({self.backend}) failed: {msg}",
                                       source=self.uri, offset=self._offset_after(done))
            if kind != b"EVTS" or n % EVENT_DTYPE.itemsize:
                self._fail_worker(proc, errors, done, timed_out=False)
            arr = np.frombuffer(body, dtype=EVENT_DTYPE)  # type: ignore[arg-type]
            for i in range(0, arr.size, self.chunk_events):
                part = arr[i:i + self.chunk_events]
                yield Chunk(part, Counters(read=int(part.size)))

    def _fail_worker(self, proc: subprocess.Popen[bytes], errors: Any, done: int, *,
                     timed_out: bool) -> None:
        """Stop the worker and raise EventFormatError saying how it failed."""
        if timed_out:
            proc.kill()
        try:
            rc = proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        if timed_out:
            how = f"made no progress for {self.timeout_s:g} s (a decoder hang); stopped"
        elif rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            how = f"crashed ({name})"
        else:
            errors.seek(0)
            tail = errors.read()[-2000:].decode("utf-8", "replace").strip().splitlines()
            how = f"exited with status {rc}" + (f": {tail[-1]}" if tail else "")
        raise EventFormatError(f"AEDAT 4.0 decoder ({self.backend}) {how} after {done} "
                               "packets; the file is refused (corrupt packet?)",
                               source=self.uri, offset=self._offset_after(done))

    def _offset_after(self, done: int) -> int:
        """Offset of the packet after the ``done`` packets the worker reported decoded.

        aedat counts every packet; dv-processing only event packets (of the event stream).
        """
        rows = self.layout.packets
        if self.backend == "dv":
            rows = rows[rows[:, 1] == self.layout.event_stream]
        return int(rows[done, 0]) if 0 <= done < rows.shape[0] else self.layout.end

    def close(self) -> None:
        """End a decoder process still running (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _read_exact(fd: int, n: int, timeout_s: float) -> bytes | None:
    """Up to ``n`` bytes from ``fd`` (fewer only at end of file), or None if a wait for more
    data exceeded ``timeout_s``."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        if not ready:
            return None
        part = os.read(fd, min(n - got, 1 << 20))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


_WORKER_CODE = "import augury.adapters.aedat as m; m.aedat4_worker()"


def aedat4_worker() -> None:
    """Child-process entry: decode ``argv[1]`` (backend) ``argv[2]`` (file) to stdout frames.

    Frames (``_FRAME`` header then payload): HELO once the decoder is imported, EVTS with
    the EVENT_DTYPE events of one packet, then DONE; or FAIL with the decoder's error
    message. Each header carries the number of
    packets decoded so far (every packet for aedat, event packets for dv-processing), which
    the caller maps to a byte offset. A crash or hang here only ends this process.
    """
    backend, path = sys.argv[1], Path(sys.argv[2])
    out = sys.stdout.buffer
    batches = _dv_batches if backend == "dv" else _aedat_batches
    done = 0
    try:
        importlib.import_module("dv_processing" if backend == "dv" else "aedat")
        out.write(_FRAME.pack(b"HELO", 0, 0))
        out.flush()
        for done, arr in batches(path):
            ev = to_events(arr, source=str(path))
            data = ev.tobytes()
            out.write(_FRAME.pack(b"EVTS", done, len(data)) + data)
            out.flush()
    except Exception as exc:  # noqa: BLE001 - any decoder error is reported to the caller
        lines = str(exc).strip().splitlines()
        msg = lines[0] if lines else type(exc).__name__
        if "EndOfFile" in str(exc) or "End-Of-File" in str(exc):
            msg = "file ended early"
        data = msg.encode("utf-8", "replace")[:4096]
        out.write(_FRAME.pack(b"FAIL", done, len(data)) + data)
    else:
        out.write(_FRAME.pack(b"DONE", done, 0))
    out.flush()


def _pick_backend(backend: str) -> str:
    if backend not in ("auto", *AEDAT4_BACKENDS):
        raise ValueError(f"backend must be 'auto', 'dv' or 'aedat', got {backend!r}")
    have = available_aedat4_backends()
    if backend == "auto":
        if not have:
            raise ImportError("reading AEDAT 4.0 needs dv-processing or aedat: "
                              "pip install 'augury[aedat4]'")
        return have[0]
    if backend not in have:
        module = "dv-processing" if backend == "dv" else "aedat"
        raise ImportError(f"backend {backend!r} needs {module}: pip install 'augury[aedat4]'")
    return backend


def _dv_batches(path: Path) -> Iterator[tuple[int, np.ndarray]]:
    """(event batches read so far, batch) from dv-processing (fields timestamp, x, y,
    polarity); runs in the worker process only."""
    import dv_processing as dv

    rec = dv.io.MonoCameraRecording(str(path))
    done = 0
    while True:
        batch = rec.getNextEventBatch()
        if batch is None:
            return
        done += 1
        arr = batch.numpy()
        if arr.size:
            yield done, arr


def _aedat_batches(path: Path) -> Iterator[tuple[int, np.ndarray]]:
    """(packets read so far, events) of the first event stream from aedat (fields t, x, y,
    on); runs in the worker process only."""
    import aedat

    decoder = aedat.Decoder(str(path))
    ids = [k for k, v in decoder.id_to_stream().items() if v.get("type") == "events"]
    if not ids:
        return
    done = 0
    for packet in decoder:
        done += 1
        if "events" in packet and packet["stream_id"] == ids[0] and packet["events"].size:
            yield done, packet["events"]


def open_aedat4(path: str | Path, **opts: Any) -> Aedat4Source:
    """Open an AEDAT 4.0 file. Options: geometry ("WxH"), backend, chunk_events, timeout_s
    (longest wait for the decoder process's next packet, default AEDAT4_TIMEOUT_S)."""
    check_options(opts, ("geometry", "backend", "chunk_events", "timeout_s"), "AEDAT 4.0")
    try:
        timeout_s = float(opts.get("timeout_s", AEDAT4_TIMEOUT_S))
    except (TypeError, ValueError):
        raise ValueError(f"option timeout_s must be a number, got {opts['timeout_s']!r}") from None
    return Aedat4Source(path, geometry=parse_geometry(opts.get("geometry")),
                        backend=str(opts.get("backend", "auto")),
                        chunk_events=parse_int(opts.get("chunk_events", DEFAULT_CHUNK_EVENTS),
                                               "chunk_events"),
                        timeout_s=timeout_s)
