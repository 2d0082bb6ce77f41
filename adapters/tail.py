"""Follow a Prophesee ``.raw`` file that another program is still writing.

``TailRawSource(path)`` waits for the file to exist and for its ``%`` header to be
complete, then decodes new bytes with the streaming ``EvtDecoder`` as they arrive (a word
split between two writes is carried over by the decoder) and yields ``Chunk``s.

Header completeness (the writer may stop anywhere, even inside a header line): header lines
are ``%``, optionally a space and printable ASCII, then ``\\n`` (as in ``augury.adapters.evt``).
The header is complete at a ``% end`` line, or when the bytes after the last whole header
line cannot become a header line (binary data has started). Bytes that could still grow
into a header line (``% geome``) mean "wait".

The stream ends when the ``stop`` event is set (the bytes already in the file are decoded
first, so "the recorder finished, then set stop" loses nothing) or after
``idle_timeout_s`` seconds without new bytes. A file that shrinks (truncated or replaced)
raises EventFormatError naming the file and offset. Accounting per chunk as in
``augury.adapters.raw``: read = CD events decoded (including those outside the sensor or
without an address), dropped = those never output, malformed = unknown words (plus an
incomplete last word when the stream ends).
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from augury.adapters.base import Chunk, EventSource
from augury.adapters.evt import (
    FORMAT_NAMES,
    DecoderCounters,
    EvtDecoder,
    RawHeader,
    read_raw_header,
)
from augury.events import Counters, EventFormatError, SensorGeometry, empty_events

_LINE = re.compile(rb"%(?: [\x20-\x7e\t]*)?\r?\n")
"""A whole header line (same grammar as augury.adapters.evt)."""
_LINE_PREFIX = re.compile(rb"%(?: [\x20-\x7e\t]*)?\r?")
"""What a header line can look like before its newline has been written."""
_MAX_LINE = 4096
_MAX_HEADER = 1 << 20


def header_end(head: bytes, *, source: str = "") -> int | None:
    """Byte offset where binary data starts if the header in ``head`` is complete, else None.

    ``head`` is the start of a file being written. Complete means: a ``% end`` line was
    read, or the bytes after the last whole header line cannot be (the start of) a header
    line. Raises EventFormatError if the header exceeds 1 MiB or a line exceeds 4 KiB.
    """
    pos = 0
    while pos < len(head) and head[pos:pos + 1] == b"%":
        m = _LINE.match(head, pos)
        if m is None:
            p = _LINE_PREFIX.match(head, pos)
            if p is not None and p.end() == len(head):  # a header line still being written
                if len(head) - pos > _MAX_LINE:
                    raise EventFormatError(f"header line longer than {_MAX_LINE} bytes",
                                           source=source, offset=pos)
                return None
            return pos  # binary data that happens to start with '%'
        pos = m.end()
        if m.group(0)[1:].strip() == b"end":
            return pos
        if pos > _MAX_HEADER:
            raise EventFormatError(f"header longer than {_MAX_HEADER} bytes", source=source,
                                   offset=pos)
    return pos if pos < len(head) else None


def _chunk_counters(before: DecoderCounters, after: DecoderCounters) -> Counters:
    """Counters for what was decoded between two cumulative decoder snapshots."""
    lost = (after.out_of_bounds - before.out_of_bounds) + (after.orphans - before.orphans)
    return Counters(read=(after.events - before.events) + lost, dropped=lost,
                    malformed=after.malformed - before.malformed)


class TailRawSource(EventSource):
    """Events of a ``.raw`` file that is still growing, decoded as bytes arrive.

    poll_s: wait between checks for new bytes (s); idle_timeout_s: end after that long with
    no new bytes (None: never); stop: ends the stream once the bytes present are decoded
    (default: an internal event set by ``close()``); fmt / geometry override the header;
    chunk_bytes: largest read (bytes); clock: seconds, for the idle timeout;
    header_timeout_s: how long reading ``geometry`` (or ``wait_header``) waits for the
    header before raising TimeoutError. ``bytes_read`` counts data bytes decoded so far.
    """

    def __init__(self, path: str | os.PathLike[str], *, poll_s: float = 0.01,
                 idle_timeout_s: float | None = None, stop: threading.Event | None = None,
                 fmt: str | None = None, geometry: SensorGeometry | None = None,
                 chunk_bytes: int = 1 << 20, reorder_window_us: int = 0,
                 header_timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
        self.path = Path(path)
        self.uri = str(path)
        self.poll_s = float(poll_s)
        self.idle_timeout_s = idle_timeout_s
        self.stop = stop if stop is not None else threading.Event()
        self._fmt = fmt
        self._geometry_override = geometry
        self.chunk_bytes = int(chunk_bytes)
        self.reorder_window_us = int(reorder_window_us)
        self.header_timeout_s = float(header_timeout_s)
        self._clock = clock
        self.header: RawHeader | None = None
        self.header_attempts = 0
        self.bytes_read = 0
        self.decoder_counters = DecoderCounters()

    # -- header ----------------------------------------------------------------------------
    def _try_header(self) -> RawHeader | None:
        """Parse the header if the file holds all of it now; None if not (yet)."""
        self.header_attempts += 1
        try:
            with open(self.path, "rb") as f:
                head = f.read(_MAX_HEADER + _MAX_LINE)
        except FileNotFoundError:
            return None
        end = header_end(head, source=self.uri)
        if end is None:
            return None
        hdr = read_raw_header(io.BytesIO(head[:end]), source=self.uri, fmt=self._fmt,
                              geometry=self._geometry_override)
        self.header = RawHeader(hdr.format, hdr.geometry, end, hdr.fields)
        self.format = FORMAT_NAMES[hdr.format]
        return self.header

    def wait_header(self, timeout_s: float | None) -> RawHeader | None:
        """Wait (polling every poll_s) until the header is complete; None on timeout/stop."""
        deadline = None if timeout_s is None else self._clock() + timeout_s
        while self.header is None:
            if self._try_header() is not None:
                break
            if self.stop.is_set() or (deadline is not None and self._clock() >= deadline):
                return None
            self.stop.wait(self.poll_s)
        return self.header

    @property  # type: ignore[override]
    def geometry(self) -> SensorGeometry:
        if self.wait_header(self.header_timeout_s) is None:
            raise TimeoutError(f"{self.uri}: no complete .raw header within "
                               f"{self.header_timeout_s} s")
        return self.header.geometry  # type: ignore[union-attr]

    @geometry.setter
    def geometry(self, value: SensorGeometry) -> None:
        self._geometry_override = value

    # -- data --------------------------------------------------------------------------------
    def chunks(self) -> Iterator[Chunk]:
        """Decode the file from the start, following it as it grows (one pass)."""
        header = self.wait_header(self.idle_timeout_s)
        if header is None:
            if self.stop.is_set():
                return
            raise EventFormatError(f"no complete .raw header after {self.idle_timeout_s} s",
                                   source=self.uri, offset=self._size())
        dec = EvtDecoder(header.format, header.geometry, source=self.uri,
                         evt21_legacy=header.evt21_legacy)
        with open(self.path, "rb") as f:
            f.seek(header.data_offset)
            yield from self._follow(f, dec, header.data_offset)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _follow(self, f: BinaryIO, dec: EvtDecoder, pos: int) -> Iterator[Chunk]:
        buf = bytearray(self.chunk_bytes)
        view = memoryview(buf)
        before = dec.counters
        last_data = self._clock()
        while True:
            stopping = self.stop.is_set()  # read before draining: nothing written earlier is lost
            n = f.readinto(buf)
            if n:
                pos += n
                self.bytes_read += n
                events = dec.decode(view[:n])
                after = dec.counters
                self.decoder_counters = after
                yield Chunk(events, _chunk_counters(before, after), dec.time_us)
                before = after
                last_data = self._clock()
                continue
            size = os.fstat(f.fileno()).st_size
            if size < pos:
                raise EventFormatError(f"file shrank to {size} bytes while being followed",
                                       source=self.uri, offset=pos)
            if stopping or (self.idle_timeout_s is not None
                            and self._clock() - last_data >= self.idle_timeout_s):
                break
            self.stop.wait(self.poll_s)
        if dec.finish():  # an incomplete last word: count it, emit nothing
            after = dec.counters
            self.decoder_counters = after
            yield Chunk(empty_events(), _chunk_counters(before, after), dec.time_us)

    def close(self) -> None:
        """End a pass under way (at its next poll); the file is closed by the pass itself."""
        self.stop.set()


def open_tail(location: str, **opts: Any) -> TailRawSource:
    """``tail://PATH?poll_s=0.01&idle_timeout_s=5``: follow a .raw file being recorded."""
    conv: dict[str, Callable[[Any], Any]] = {
        "poll_s": float, "chunk_bytes": int, "reorder_window_us": int, "fmt": str,
        "header_timeout_s": float,
        "idle_timeout_s": lambda v: None if str(v).lower() in ("", "none") else float(v),
        "geometry": lambda v: v if isinstance(v, SensorGeometry) else SensorGeometry(
            *(int(p) for p in str(v).lower().split("x"))),
    }
    passthrough = {"stop", "clock"}
    unknown = sorted(set(opts) - set(conv) - passthrough)
    if unknown:
        raise ValueError(f"unknown tail option(s) {unknown}; known: {sorted(conv)}")
    kw = {k: (v if k in passthrough else conv[k](v)) for k, v in opts.items()}
    return TailRawSource(location, **kw)


__all__ = ["TailRawSource", "header_end", "open_tail"]
