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

AEDAT 4.0: decoded by ``aedat`` when importable, else by ``dv_processing`` (which hangs on some
corrupted packets; ``backend="dv"`` forces it); neither is a core dependency
(``pip install 'augury[aedat4]'``). Timestamps are absolute µs.
"""

from __future__ import annotations

import importlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from augury.adapters.base import Chunk, EventSource
from augury.adapters.files import (
    DEFAULT_CHUNK_EVENTS,
    RecordLayout,
    Unroll,
    check_options,
    pack_columns,
    parse_bool,
    parse_geometry,
    parse_int,
    read_record_blocks,
    record_layout,
    unroll_u32,
)
from augury.events import Counters, EventFormatError, SensorGeometry, empty_events, to_events

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
    lines: list[str] = []
    with open(p, "rb") as f:
        while f.peek(1)[:1] == b"#":
            start = f.tell()
            raw = f.readline(_MAX_HEADER_LINE)
            if _has_control_bytes(raw):
                if not lines:
                    raise EventFormatError("header line holds binary bytes", source=src,
                                           offset=start)
                f.seek(start)  # a record that happens to start with '#'
                break
            if not raw.endswith(b"\n"):
                raise EventFormatError("header line does not end in a newline (truncated "
                                       "file?)", source=src, offset=start)
            lines.append(raw.decode("latin-1").rstrip("\r\n"))
        data_offset = f.tell()
    if not lines or not lines[0].startswith("#!AER-DAT"):
        raise EventFormatError("not an AEDAT file: the first line must be '#!AER-DAT2.0'",
                               source=src, offset=0)
    version = lines[0][len("#!AER-DAT"):].strip()
    if not version.startswith("2."):
        raise EventFormatError(f"AEDAT version {version!r} is not supported here (only 2.0; "
                               "AEDAT 4 files use the .aedat4 suffix)", source=src, offset=0)
    return Aedat2Header(version, _header_camera(lines), tuple(lines),
                        record_layout(size, data_offset, AEDAT2_RECORD.itemsize))


def _has_control_bytes(raw: bytes) -> bool:
    body = np.frombuffer(raw.rstrip(b"\r\n"), dtype=np.uint8)
    return bool(np.any((body < 0x20) & (body != 0x09)) or np.any(body == 0x7F))


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


def available_aedat4_backends() -> tuple[str, ...]:
    """The AEDAT 4.0 decoders that can be imported here, preferred first."""
    out = []
    for name, module in (("aedat", "aedat"), ("dv", "dv_processing")):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        out.append(name)
    return tuple(out)


def aedat4_truncation_offset(path: str | Path) -> int | None:
    """Byte offset of the first incomplete packet of an AEDAT 4.0 file, or None if complete.

    Layout: magic (14 bytes), int32 IO-header size, IO header (a flatbuffer whose field 1 is
    the int64 position of the file data table, -1 if none), then packets of (int32 stream
    id, int32 payload size, payload) up to the data table or the end of the file. Used only
    to name an offset in errors; returns 0 if the magic is missing.
    """
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        if f.read(len(AEDAT4_MAGIC)) != AEDAT4_MAGIC:
            return 0
        head = f.read(4)
        if len(head) < 4:
            return len(AEDAT4_MAGIC)
        n_header = struct.unpack("<i", head)[0]
        header = f.read(max(n_header, 0))
        if n_header < 0 or len(header) < n_header:
            return len(AEDAT4_MAGIC)
        table = _data_table_position(header)
        end = table if table is not None and table > 0 else size
        offset = len(AEDAT4_MAGIC) + 4 + n_header
        while offset < end:
            f.seek(offset)
            ph = f.read(8)
            if len(ph) < 8:
                return offset
            _stream, n = struct.unpack("<ii", ph)
            if n < 0 or offset + 8 + n > min(end, size):
                return offset
            offset += 8 + n
    return None if end <= size else end


def _data_table_position(header: bytes) -> int | None:
    """Field 1 (int64 dataTablePosition) of the IOHeader flatbuffer, or None if unreadable.

    Flatbuffer: uint32 root-table offset; the table starts with an int32 back-offset to its
    vtable = (uint16 vtable size, uint16 table size, uint16 field offsets...).
    """
    try:
        root = struct.unpack_from("<I", header, 0)[0]
        vtable = root - struct.unpack_from("<i", header, root)[0]
        vsize = struct.unpack_from("<H", header, vtable)[0]
        if vsize < 8:
            return None
        field = struct.unpack_from("<H", header, vtable + 6)[0]
        return struct.unpack_from("<q", header, root + field)[0] if field else None
    except struct.error:
        return None


class Aedat4Source(EventSource):
    """Events of an AEDAT 4.0 file (first event stream), via dv-processing or aedat.

    ``backend`` "auto" (aedat if importable, else dv-processing), "aedat" or "dv". Library
    batches are cut into pieces of at most ``chunk_events``. Geometry from the stream's
    metadata; the ``geometry`` option overrides. Decoder errors become EventFormatError
    naming the file and, when it can be found, the offset of the incomplete packet.
    """

    format = "AEDAT 4.0"

    def __init__(self, path: str | Path, *, geometry: SensorGeometry | None = None,
                 backend: str = "auto", chunk_events: int = DEFAULT_CHUNK_EVENTS) -> None:
        super().__init__()
        self.path = Path(path)
        self.uri = str(self.path)
        self.backend = _pick_backend(backend)
        self.chunk_events = chunk_events
        if self.path.stat().st_size == 0:
            raise EventFormatError("empty file: no AEDAT 4.0 header", source=self.uri, offset=0)
        stored = self._library_call(lambda: _stream_geometry(self.backend, self.path))
        self.geometry = geometry or stored

    def chunks(self) -> Iterator[Chunk]:
        batches = _dv_batches if self.backend == "dv" else _aedat_batches
        it = batches(self.path)
        while True:
            arr = self._library_call(lambda: next(it, None))
            if arr is None:
                return
            for i in range(0, arr.size, self.chunk_events):
                part = arr[i:i + self.chunk_events]
                yield Chunk(to_events(part, source=self.uri), Counters(read=int(part.size)))

    def _library_call(self, fn: Any) -> Any:
        """Run a decoder call, turning its errors (and Rust panics) into an EventFormatError."""
        try:
            return fn()
        except EventFormatError:
            raise
        except BaseException as exc:
            # aedat (Rust) panics raise pyo3's PanicException, a BaseException
            if not (isinstance(exc, (RuntimeError, OSError, ValueError))
                    or type(exc).__name__ == "PanicException"):
                raise
            first = str(exc).strip().splitlines()
            msg = first[0] if first else type(exc).__name__
            if "EndOfFile" in str(exc) or "End-Of-File" in str(exc):
                msg = "file ended early"
            raise EventFormatError(f"AEDAT 4.0 decoder ({self.backend}) failed: {msg}",
                                   source=self.uri,
                                   offset=aedat4_truncation_offset(self.path)) from None


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


def _stream_geometry(backend: str, path: Path) -> SensorGeometry:
    """Event resolution from the file's stream metadata."""
    if backend == "dv":
        import dv_processing as dv

        rec = dv.io.MonoCameraRecording(str(path))
        res = rec.getEventResolution() if rec.isEventStreamAvailable() else None
        if res is None:
            raise EventFormatError("no event stream in the file", source=str(path))
        return SensorGeometry(int(res[0]), int(res[1]))
    import aedat

    for info in aedat.Decoder(str(path)).id_to_stream().values():
        if info.get("type") == "events":
            return SensorGeometry(int(info["width"]), int(info["height"]))
    raise EventFormatError("no event stream in the file", source=str(path))


def _dv_batches(path: Path) -> Iterator[np.ndarray]:
    """dv-processing event batches (fields timestamp, x, y, polarity)."""
    import dv_processing as dv

    rec = dv.io.MonoCameraRecording(str(path))
    while True:
        batch = rec.getNextEventBatch()
        if batch is None:
            return
        arr = batch.numpy()
        if arr.size:
            yield arr


def _aedat_batches(path: Path) -> Iterator[np.ndarray]:
    """aedat event packets of the first event stream (fields t, x, y, on)."""
    import aedat

    decoder = aedat.Decoder(str(path))
    ids = [k for k, v in decoder.id_to_stream().items() if v.get("type") == "events"]
    if not ids:
        return
    for packet in decoder:
        if "events" in packet and packet["stream_id"] == ids[0] and packet["events"].size:
            yield packet["events"]


def open_aedat4(path: str | Path, **opts: Any) -> Aedat4Source:
    """Open an AEDAT 4.0 file. Options: geometry ("WxH"), backend, chunk_events."""
    check_options(opts, ("geometry", "backend", "chunk_events"), "AEDAT 4.0")
    return Aedat4Source(path, geometry=parse_geometry(opts.get("geometry")),
                        backend=str(opts.get("backend", "auto")),
                        chunk_events=parse_int(opts.get("chunk_events", DEFAULT_CHUNK_EVENTS),
                                               "chunk_events"))
