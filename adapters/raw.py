"""Prophesee ``.raw`` files (EVT 2.0 / 2.1 / 3.0) as an EventSource.

The file is read ``chunk_bytes`` at a time through one streaming ``EvtDecoder``, so memory
stays bounded whatever the file size; each chunk's events keep file order and carry the
decoder's sensor time (µs) so that empty windows can be emitted while the sensor is silent.
Accounting per chunk: read = CD events decoded (including those outside the sensor or
without an address), dropped = those never output, malformed = words of unknown type plus
an incomplete last word.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from augury.adapters.base import Chunk, EventSource
from augury.adapters.evt import (
    FORMAT_NAMES,
    WORD_BYTES,
    DecoderCounters,
    EvtDecoder,
    RawHeader,
    read_raw_header,
)
from augury.adapters.files import checked_geometry
from augury.events import Counters, SensorGeometry, empty_events


def chunk_counters(before: DecoderCounters, after: DecoderCounters) -> Counters:
    """Counters for the events decoded between two cumulative decoder snapshots."""
    lost = (after.out_of_bounds - before.out_of_bounds) + (after.orphans - before.orphans)
    return Counters(read=(after.events - before.events) + lost, dropped=lost,
                    malformed=after.malformed - before.malformed)


class RawFileSource(EventSource):
    """Events of a Prophesee ``.raw`` file, decoded in chunks of ``chunk_bytes`` bytes.

    ``fmt`` ("evt2" | "evt21" | "evt3") and ``geometry`` override the header (a header that
    lies about the geometry makes events outside the true sensor count as dropped, never
    output). Raises FileNotFoundError for a missing file and EventFormatError (naming the
    file) for an unusable header. ``format`` is "EVT 3.0", "EVT 2.0" or "EVT 2.1";
    ``decoder_counters`` holds the cumulative decoder accounting of the last pass.
    A file still being recorded is served by ``augury.adapters.tail.TailRawSource``.
    """

    def __init__(self, path: str | os.PathLike[str], *, chunk_bytes: int = 1 << 20,
                 fmt: str | None = None, geometry: SensorGeometry | None = None,
                 reorder_window_us: int = 0) -> None:
        super().__init__()
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
        self.path = Path(path)
        self.uri = str(path)
        self.header: RawHeader = read_raw_header(self.path, fmt=fmt, geometry=geometry)
        self.geometry = self.header.geometry
        self.format = FORMAT_NAMES[self.header.format]
        self.chunk_bytes = int(chunk_bytes)
        self.reorder_window_us = int(reorder_window_us)
        self.decoder_counters = DecoderCounters()
        self._file: BinaryIO | None = None

    def chunks(self) -> Iterator[Chunk]:
        """Decode the file from the start; one Chunk per ``chunk_bytes`` read."""
        dec = EvtDecoder(self.header.format, self.geometry, source=self.uri,
                         evt21_legacy=self.header.evt21_legacy)
        self.close()
        self._file = f = open(self.path, "rb")
        try:
            f.seek(self.header.data_offset)
            before = dec.counters
            while True:
                data = f.read(self.chunk_bytes)
                if not data:
                    break
                events = dec.decode(data)
                after = dec.counters
                self.decoder_counters = after
                yield Chunk(events, chunk_counters(before, after), dec.time_us)
                before = after
            if dec.finish():  # an incomplete last word: count it, emit nothing
                after = dec.counters
                self.decoder_counters = after
                yield Chunk(empty_events(), chunk_counters(before, after), dec.time_us)
        finally:
            f.close()
            if self._file is f:
                self._file = None

    def close(self) -> None:
        """Close the file of a pass under way (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None


_INT_OPTIONS = ("chunk_bytes", "reorder_window_us")


def _parse_geometry(value: Any) -> SensorGeometry:
    """SensorGeometry, (width, height) or "WxH" -> SensorGeometry (sides ≤ MAX_SENSOR_SIDE)."""
    if isinstance(value, SensorGeometry):
        width, height = value.width, value.height
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
        if m is None:
            raise ValueError(f"geometry must look like 640x480, got {value!r}")
        width, height = int(m.group(1)), int(m.group(2))
    else:
        width, height = (int(v) for v in value)
    return checked_geometry(width, height, what="option geometry")


def open_raw(path: str | os.PathLike[str], **opts: Any) -> RawFileSource:
    """Open a ``.raw`` file; options may be strings (URI query values).

    Options: chunk_bytes (or chunk_events: words per chunk), fmt (or format), geometry
    ("640x480", (w, h) or SensorGeometry), width + height, reorder_window_us. Unknown
    options raise TypeError.
    """
    opts = dict(opts)
    kwargs: dict[str, Any] = {}
    for name in _INT_OPTIONS:
        if name in opts:
            kwargs[name] = int(opts.pop(name))
    chunk_words = opts.pop("chunk_events", None)  # generic file option: words per chunk
    fmt = opts.pop("fmt", None) or opts.pop("format", None)
    if fmt:
        kwargs["fmt"] = str(fmt)
    width, height = opts.pop("width", None), opts.pop("height", None)
    if "geometry" in opts:
        kwargs["geometry"] = _parse_geometry(opts.pop("geometry"))
    elif width is not None and height is not None:
        kwargs["geometry"] = _parse_geometry((width, height))
    elif width is not None or height is not None:
        raise ValueError(f"{path}: give both width and height (or geometry=WxH)")
    if opts:
        raise TypeError(f"{path}: unknown option(s) for a .raw file: {', '.join(sorted(opts))}")
    source = RawFileSource(path, **kwargs)
    if chunk_words is not None and "chunk_bytes" not in kwargs:
        n = int(chunk_words)
        if n <= 0:
            raise ValueError(f"{path}: chunk_events must be > 0, got {n}")
        source.chunk_bytes = n * WORD_BYTES[source.header.format]
    return source


__all__ = ["RawFileSource", "chunk_counters", "open_raw"]
