"""Prophesee ``.dat`` (DAT v2) files, decoded by expelliarmus.

Layout: ASCII header lines starting with ``%`` (``% Version 2``, ``% Date ...``, and in newer
files ``% Width W`` / ``% Height H``, ``% geometry WxH`` or ``% format ...;width=W;height=H``),
then two bytes (event type: 0x00 Event2D/TD or 0x0C CD; event size: 8), then 8-byte
little-endian events: ``uint32 t`` (µs), ``uint32 addr`` with x = bits 0–13, y = bits 14–27,
p = bits 28–31.

The header is parsed here (geometry, data offset, whole-event count), so that a file that is
not DAT gives an EventFormatError naming the byte offset before expelliarmus (which reports
problems only by printing) is asked to decode it. Old files (N-CARS, "Event2d" from ATIS
cameras) carry no geometry: the default is the ATIS sensor, 304×240, and the ``geometry``
option overrides. A trailing partial event is counted as malformed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    parse_geometry,
    parse_int,
    read_record_blocks,
    record_layout,
    unroll_u32,
)
from augury.events import Counters, EventFormatError, SensorGeometry, empty_events

ATIS_GEOMETRY = SensorGeometry(304, 240)
"""Geometry of the ATIS sensor, implied by DAT files without Width/Height (e.g. N-CARS)."""

DAT_EVENT_TYPES = {0x00: "Event2D (TD)", 0x0C: "EventCD"}
"""Event types whose 8-byte layout is t + (x, y, p) address."""

_MAX_HEADER_LINE = 1 << 16
_MAX_HEADER_BYTES = 1 << 20
"""Longest DAT header accepted (bytes); real headers are a few hundred bytes."""


@dataclass(frozen=True)
class DatHeader:
    """What a DAT header says: geometry (None if absent), event type, and where events are."""

    lines: tuple[str, ...]
    geometry: SensorGeometry | None
    event_type: int
    layout: RecordLayout


def read_dat_header(path: str | Path) -> DatHeader:
    """Parse the '%' header and the type/size bytes of a DAT file.

    Raises EventFormatError (file, byte offset) if the file is empty, a header line is not
    terminated, or the type/size bytes are not a supported 8-byte event type.
    """
    p = Path(path)
    src = str(p)
    size = p.stat().st_size
    if size == 0:
        raise EventFormatError("empty file: no DAT header or event-type bytes", source=src,
                               offset=0)
    lines: list[str] = []
    with open(p, "rb") as f:
        while f.peek(1)[:1] == b"%":
            start = f.tell()
            if start >= _MAX_HEADER_BYTES:
                raise EventFormatError(f"DAT header longer than {_MAX_HEADER_BYTES} bytes",
                                       source=src, offset=start)
            raw = f.readline(_MAX_HEADER_LINE)
            if not raw.endswith(b"\n"):
                raise EventFormatError("DAT header line ('%') is not terminated by a newline",
                                       source=src, offset=start)
            bad = _control_byte(raw)
            if bad is not None:
                raise EventFormatError(f"DAT header line holds the control byte "
                                       f"0x{raw[bad]:02X}", source=src, offset=start + bad)
            lines.append(raw.decode("latin-1").rstrip("\r\n"))
        type_offset = f.tell()
        type_size = f.read(2)
    if len(type_size) < 2:
        raise EventFormatError("missing the event type/size bytes after the header",
                               source=src, offset=type_offset)
    ev_type, ev_size = type_size[0], type_size[1]
    if ev_size != 8:
        raise EventFormatError(f"event size byte is {ev_size}, expected 8 (is this a DAT file?)",
                               source=src, offset=type_offset + 1)
    if ev_type not in DAT_EVENT_TYPES:
        known = ", ".join(f"0x{k:02X} {v}" for k, v in DAT_EVENT_TYPES.items())
        raise EventFormatError(f"unsupported DAT event type 0x{ev_type:02X} (supported: {known})",
                               source=src, offset=type_offset)
    return DatHeader(tuple(lines), _header_geometry(lines, src), ev_type,
                     record_layout(size, type_offset + 2, 8))


def _control_byte(raw: bytes) -> int | None:
    """Index of the first control byte (not tab, CR or the final LF) of a header line."""
    body = np.frombuffer(raw[:-1] if raw.endswith(b"\n") else raw, dtype=np.uint8)
    bad = np.flatnonzero(((body < 0x20) & (body != 0x09) & (body != 0x0D)) | (body == 0x7F))
    return int(bad[0]) if bad.size else None


_WIDTH_RE = re.compile(r"(?:^%\s*width\s*[:=]?\s*|[;\s]width=)(\d+)", re.IGNORECASE)
_HEIGHT_RE = re.compile(r"(?:^%\s*height\s*[:=]?\s*|[;\s]height=)(\d+)", re.IGNORECASE)


_GEOMETRY_RE = re.compile(r"^%\s*geometry\s*[:=]?\s*(\d+)\s*x\s*(\d+)", re.IGNORECASE)


def _header_geometry(lines: list[str], source: str = "") -> SensorGeometry | None:
    """Width/height from '% Width W' + '% Height H', '% geometry WxH' or 'width=W;height=H'.

    None if the header names neither; EventFormatError (naming the field) if it names only
    one of them, or a side outside 1..MAX_SENSOR_SIDE (e.g. '% Width 0').
    """
    width = height = None
    for ln in lines:
        mg = _GEOMETRY_RE.search(ln)
        if mg and width is None and height is None:
            width, height = int(mg.group(1)), int(mg.group(2))
        mw, mh = _WIDTH_RE.search(ln), _HEIGHT_RE.search(ln)
        width = int(mw.group(1)) if mw and width is None else width
        height = int(mh.group(1)) if mh and height is None else height
    if width is None and height is None:
        return None
    if width is None or height is None:
        given, missing = ("Height", "Width") if width is None else ("Width", "Height")
        raise EventFormatError(f"the header gives '% {given}' but no '% {missing}'",
                               source=source)
    return checked_geometry(width, height, source=source,
                            what="header fields '% Width' / '% Height' (or '% geometry')")


class DatSource(EventSource):
    """Events of a Prophesee DAT file, read ``chunk_events`` at a time by expelliarmus.

    Geometry: the ``geometry`` option, else the header's width/height, else ATIS 304×240
    (a header giving only one side, or a side outside 1..MAX_SENSOR_SIDE, is refused).
    Timestamps are 32-bit µs in the file and unrolled here (wraps after 71.6 min). The first
    PLAUSIBLE_RECORDS events are checked at open (``check_plausible``): a file that is
    mostly not DAT events is refused with its offset.
    """

    format = "DAT"

    def __init__(self, path: str | Path, *, geometry: SensorGeometry | None = None,
                 chunk_events: int = DEFAULT_CHUNK_EVENTS) -> None:
        super().__init__()
        self.path = Path(path)
        self.uri = str(self.path)
        self.header = read_dat_header(self.path)
        self.geometry = geometry or self.header.geometry or ATIS_GEOMETRY
        self.chunk_events = chunk_events
        for first in _numpy_blocks(self.path, self.header.layout, PLAUSIBLE_RECORDS):
            t, _ = unroll_u32(first["t"], None)
            check_plausible(t, first["x"], first["y"], first["p"], self.geometry,
                            source=self.uri, offset=self.header.layout.data_offset, fmt="DAT")
            break

    def chunks(self) -> Iterator[Chunk]:
        layout = self.header.layout
        decoded = 0
        state: Unroll | None = None
        blocks = _expelliarmus_blocks if str(self.path).endswith(".dat") else _numpy_blocks
        for arr in blocks(self.path, layout, self.chunk_events):
            decoded += int(arr.size)
            if decoded > layout.count:
                break
            t, state = unroll_u32(arr["t"], state)
            events, n_bad = pack_columns(t, arr["x"], arr["y"], arr["p"])
            yield Chunk(events, Counters(read=int(arr.size), dropped=n_bad))
        if decoded != layout.count:
            raise EventFormatError(f"decoded {decoded} events but the file holds {layout.count}",
                                   source=self.uri,
                                   offset=layout.data_offset + 8 * min(decoded, layout.count))
        if layout.trailing_bytes:
            yield Chunk(empty_events(), Counters(malformed=1))


def _expelliarmus_blocks(path: Path, layout: RecordLayout, per_block: int) -> Iterator[Any]:
    """expelliarmus chunks (fields t, x, y, p) of at most ``per_block`` events."""
    if layout.count == 0:  # expelliarmus prints errors instead of yielding nothing
        return
    from expelliarmus import Wizard

    yield from Wizard(encoding="dat", fpath=path, chunk_size=per_block).read_chunk()


def _numpy_blocks(path: Path, layout: RecordLayout, per_block: int) -> Iterator[np.ndarray]:
    """The same decode in NumPy, for paths expelliarmus refuses (suffix not exactly '.dat').

    t = word0; x = word1 & 0x3FFF; y = (word1 >> 14) & 0x3FFF; p = word1 >> 28.
    """
    with open(path, "rb") as f:
        for _offset, rec in read_record_blocks(f, layout, np.dtype("<u4"), per_block,
                                               source=str(path)):
            words = rec.reshape(-1, 2)
            out = np.empty(words.shape[0], dtype=[("t", "<i8"), ("x", "<i4"), ("y", "<i4"),
                                                  ("p", "<i4")])
            out["t"] = words[:, 0]
            out["x"] = words[:, 1] & 0x3FFF
            out["y"] = (words[:, 1] >> 14) & 0x3FFF
            out["p"] = words[:, 1] >> 28
            yield out


def open_dat(path: str | Path, **opts: Any) -> DatSource:
    """Open a Prophesee .dat file. Options: geometry ("WxH"), chunk_events."""
    check_options(opts, ("geometry", "chunk_events"), "DAT")
    return DatSource(path, geometry=parse_geometry(opts.get("geometry")),
                     chunk_events=parse_int(opts.get("chunk_events", DEFAULT_CHUNK_EVENTS),
                                            "chunk_events"))
