"""N-MNIST binaries (``.bin`` / ``.bs2``) and their label files.

Format (Orchard et al. 2015; the same binary serves N-Caltech101): 5 bytes per event,

    byte 0: x (8 bits)      byte 1: y (8 bits)
    byte 2: bit 7 = polarity (1 = ON), bits 6–0 = timestamp bits 22–16
    bytes 3–4: timestamp bits 15–0 (big-endian)          → t: 23-bit µs

A record with y == 240 is a timestamp-overflow marker from the ATIS camera: it is not an event
(counted in ``others``) and adds 2¹³ µs to every later timestamp. Geometry is 34×34 by the
dataset's definition (the ``geometry`` option overrides, e.g. 240x180 for N-Caltech101).
A trailing partial record is counted as malformed. The format has no header, so the content
is checked at open: an empty file, another format's signature (a ``.raw`` renamed ``.bin``)
or first records that are mostly invalid are refused with an EventFormatError.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from augury.adapters.base import Chunk, EventSource
from augury.adapters.files import (
    DEFAULT_CHUNK_EVENTS,
    PLAUSIBLE_RECORDS,
    check_options,
    check_plausible,
    pack_columns,
    parse_geometry,
    parse_int,
    read_record_blocks,
    record_layout,
)
from augury.events import Counters, EventFormatError, SensorGeometry, empty_events

NMNIST_GEOMETRY = SensorGeometry(34, 34)
"""Sensor size of N-MNIST samples (saccades of 28×28 digits on an ATIS crop)."""

NMNIST_RECORD = np.dtype([("x", "u1"), ("y", "u1"), ("b2", "u1"), ("b3", "u1"), ("b4", "u1")])
"""One 5-byte N-MNIST record."""

_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"% ", "Prophesee RAW/DAT ('% ' text header; suffix .raw or .dat)"),
    (b"#!AER-DAT", "AEDAT (suffix .aedat or .aedat4)"),
    (b"\x93NUMPY", "NumPy .npy"),
    (b"PK\x03\x04", "zip / NumPy .npz"),
)
"""Signatures of other formats: an N-MNIST file starting with one of them is refused ('% '
only when a whole printable text line follows, since it is also a record at x=37, y=32)."""

_TEXT_LINE = re.compile(rb"% [\x20-\x7e\t]{0,4096}\r?\n")

OVERFLOW_Y = 240
"""y value of a timestamp-overflow marker record."""

OVERFLOW_STEP_US = 1 << 13
"""Time added to later events by each overflow marker (µs)."""


def decode_nmnist(
    rec: np.ndarray, overflows_before: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Decode records (n,) of NMNIST_RECORD.

    t_us = ((b2 & 0x7F) << 16 | b3 << 8 | b4) + 2¹³ · (overflow markers up to this record);
    returns (is_event bool, t int64, x, y, p (n,) each, overflow markers so far).
    """
    is_overflow = rec["y"] == OVERFLOW_Y
    n_over = overflows_before + np.cumsum(is_overflow, dtype=np.int64)
    t23 = ((rec["b2"].astype(np.int64) & 0x7F) << 16) | (rec["b3"].astype(np.int64) << 8) | (
        rec["b4"].astype(np.int64))
    t = t23 + OVERFLOW_STEP_US * n_over
    p = (rec["b2"] >> 7).astype(np.uint8)
    total = int(n_over[-1]) if n_over.size else overflows_before
    return ~is_overflow, t, rec["x"], rec["y"], p, total


class NmnistSource(EventSource):
    """Events of one N-MNIST sample file, read ``chunk_events`` records at a time.

    ``others`` counts timestamp-overflow markers (not events, not malformed).
    """

    format = "N-MNIST"

    def __init__(self, path: str | Path, *, geometry: SensorGeometry | None = None,
                 chunk_events: int = DEFAULT_CHUNK_EVENTS) -> None:
        super().__init__()
        self.path = Path(path)
        self.uri = str(self.path)
        self.geometry = geometry or NMNIST_GEOMETRY
        self.chunk_events = chunk_events
        self.layout = record_layout(self.path.stat().st_size, 0, NMNIST_RECORD.itemsize)
        self.others = 0
        self._check_content()

    def _check_content(self) -> None:
        """Refuse an empty file, another format's magic, or records that are mostly invalid.

        N-MNIST has no header, so the content is checked: the file must hold at least one
        whole record, must not start with the signature of another format the project reads
        (a Prophesee ``.raw``/``.dat`` '%' header, AEDAT '#!AER-DAT', NumPy, zip), and the
        first PLAUSIBLE_RECORDS records must pass ``check_plausible``.
        """
        if self.layout.count == 0:
            raise EventFormatError(f"empty N-MNIST file: {self.layout.trailing_bytes} bytes, "
                                   f"less than one {NMNIST_RECORD.itemsize}-byte record",
                                   source=self.uri, offset=0)
        with open(self.path, "rb") as f:
            head = f.read(NMNIST_RECORD.itemsize * PLAUSIBLE_RECORDS)
        for magic, name in _OTHER_FORMATS:
            if head.startswith(magic) and (magic != b"% " or _TEXT_LINE.match(head)):
                raise EventFormatError(f"this is not N-MNIST: it starts like a {name} file "
                                       f"({magic!r}); rename it to the matching suffix",
                                       source=self.uri, offset=0)
        n = len(head) // NMNIST_RECORD.itemsize
        rec = np.frombuffer(head[:n * NMNIST_RECORD.itemsize], dtype=NMNIST_RECORD)
        is_event, t, x, y, p, _ = decode_nmnist(rec, 0)
        check_plausible(t[is_event], x[is_event], y[is_event], p[is_event], self.geometry,
                        source=self.uri, offset=0, fmt="N-MNIST")

    def chunks(self) -> Iterator[Chunk]:
        overflows = 0
        self.others = 0
        with open(self.path, "rb") as f:
            for _offset, rec in read_record_blocks(f, self.layout, NMNIST_RECORD,
                                                   self.chunk_events, source=self.uri):
                is_event, t, x, y, p, overflows = decode_nmnist(rec, overflows)
                self.others = overflows
                events, n_bad = pack_columns(t[is_event], x[is_event], y[is_event], p[is_event])
                yield Chunk(events, Counters(read=int(np.count_nonzero(is_event)),
                                             dropped=n_bad))
        if self.layout.trailing_bytes:
            yield Chunk(empty_events(), Counters(malformed=1))


def open_nmnist(path: str | Path, **opts: Any) -> NmnistSource:
    """Open an N-MNIST .bin/.bs2 file. Options: geometry ("WxH", default 34x34), chunk_events."""
    check_options(opts, ("geometry", "chunk_events"), "N-MNIST")
    return NmnistSource(path, geometry=parse_geometry(opts.get("geometry")),
                        chunk_events=parse_int(opts.get("chunk_events", DEFAULT_CHUNK_EVENTS),
                                               "chunk_events"))


_LABEL_RE = re.compile(rb"^\s*(\d+)[\s,]+(\d+)\s*$")


def read_nmnist_labels(path: str | Path) -> dict[int, int]:
    """Sample id → class from a label file (``#sample #class`` header, then ``id class`` lines).

    Blank lines and lines starting with '#' are skipped; any other line that is not two
    non-negative integers raises EventFormatError naming the line and its byte offset, as
    does a sample id listed twice.
    """
    p = Path(path)
    labels: dict[int, int] = {}
    offset = 0
    with open(p, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            text = raw.strip()
            if text and not text.startswith(b"#"):
                m = _LABEL_RE.match(raw)
                if m is None:
                    shown = raw[:60].decode("utf-8", "replace").rstrip()
                    raise EventFormatError(f"line {line_no}: expected 'sample class', "
                                           f"got {shown!r}", source=str(p), offset=offset)
                sample, label = int(m.group(1)), int(m.group(2))
                if sample in labels:
                    raise EventFormatError(f"line {line_no}: sample {sample} listed twice",
                                           source=str(p), offset=offset)
                labels[sample] = label
            offset += len(raw)
    return labels
