"""File sources: ``open_file(path)`` dispatch by suffix, plus the NumPy and text readers.

Suffixes (case-insensitive) and readers:

=============  ==============================  ==========================================
suffix         format                          reader
=============  ==============================  ==========================================
.raw           Prophesee RAW (EVT 2.0/2.1/3.0) ``augury.adapters.raw.open_raw``
.dat           Prophesee DAT v2                ``augury.adapters.dat.open_dat`` (expelliarmus)
.aedat         AEDAT 2.0 (jAER)                ``augury.adapters.aedat.open_aedat2``
.aedat4        AEDAT 4.0                       ``augury.adapters.aedat.open_aedat4``
.bin, .bs2     N-MNIST binary                  ``augury.adapters.nmnist.open_nmnist``
.npy, .npz     NumPy structured event arrays   ``open_numpy`` (this module)
.csv, .txt     text ``t x y p`` per line       ``open_text`` (this module)
=============  ==============================  ==========================================

Readers are imported only when their suffix is used. Options may come from URI query
strings, so every reader accepts strings ("640x480", "4096", "true") as well as Python values;
unknown options are an error naming the known ones. Shared helpers for the binary readers
(option parsing, fixed-size record blocks, 32-bit time unrolling, column packing) live here.
"""

from __future__ import annotations

import errno
import importlib
import itertools
import re
import tokenize
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
from numba import njit

from augury.adapters.base import Chunk, EventSource
from augury.events import (
    EVENT_DTYPE,
    Counters,
    EventFormatError,
    SensorGeometry,
    check_events,
    make_events,
    to_events,
)

SUFFIXES: dict[str, str] = {
    ".raw": "Prophesee RAW (EVT 2.0 / 2.1 / 3.0)",
    ".dat": "Prophesee DAT",
    ".aedat": "AEDAT 2.0 (jAER)",
    ".aedat4": "AEDAT 4.0",
    ".bin": "N-MNIST binary",
    ".bs2": "N-MNIST binary",
    ".npy": "NumPy structured events",
    ".npz": "NumPy structured events (+ geometry)",
    ".csv": "text: t x y p per line",
    ".txt": "text: t x y p per line",
}
"""Suffix → human-readable format name (used by ``augury info``)."""

_OPENERS: dict[str, str] = {
    ".raw": "augury.adapters.raw:open_raw",
    ".dat": "augury.adapters.dat:open_dat",
    ".aedat": "augury.adapters.aedat:open_aedat2",
    ".aedat4": "augury.adapters.aedat:open_aedat4",
    ".bin": "augury.adapters.nmnist:open_nmnist",
    ".bs2": "augury.adapters.nmnist:open_nmnist",
    ".npy": "augury.adapters.files:open_numpy",
    ".npz": "augury.adapters.files:open_numpy",
    ".csv": "augury.adapters.files:open_text",
    ".txt": "augury.adapters.files:open_text",
}

DEFAULT_CHUNK_EVENTS = 1 << 16
"""Default number of input records decoded per chunk."""


def open_file(path: str | Path, **opts: Any) -> EventSource:
    """Open an event file, choosing the reader by its suffix (case-insensitive).

    ``opts`` are passed to the reader (``chunk_events``, ``geometry`` ("640x480"), ...);
    strings are parsed. Raises FileNotFoundError for a missing file, IsADirectoryError for a
    directory, EventFormatError for an unknown suffix or unreadable content, TypeError for
    an option the reader does not know and ValueError for a bad option value.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, "event file not found", str(p))
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, "expected an event file, got a directory", str(p))
    suffix = p.suffix.lower()
    target = _OPENERS.get(suffix)
    if target is None:
        known = ", ".join(sorted(SUFFIXES))
        raise EventFormatError(f"unknown event file suffix {suffix or '(none)'!r}; "
                               f"known suffixes: {known}", source=str(p))
    module, _, name = target.partition(":")
    opener = getattr(importlib.import_module(module), name)
    return opener(p, **opts)


# -- option parsing (values may be strings from URI query strings) ---------------------------

_GEOMETRY_RE = re.compile(r"^\s*(\d+)\s*[xX×,]\s*(\d+)\s*$")


MAX_SENSOR_SIDE = 8192
"""Largest sensor width or height a file (or the ``geometry`` option) may declare, in pixels.

The largest sensors the readers know are 1280×720 (Prophesee Gen4.1 / IMX636) and 640×480
(DAVIS640, Gen3); 8192 leaves room for future sensors while refusing headers such as
``% geometry 65535x65535``, which would make the model allocate gigabytes per map."""


def checked_geometry(width: int, height: int, *, source: str = "",
                     what: str = "geometry") -> SensorGeometry:
    """SensorGeometry(width, height), or EventFormatError naming ``source`` and ``what``.

    Both sides must be in 1..MAX_SENSOR_SIDE; ``what`` names the header field or option the
    values came from (e.g. "header field '% Width'").
    """
    if not (0 < width <= MAX_SENSOR_SIDE and 0 < height <= MAX_SENSOR_SIDE):
        raise EventFormatError(f"{what} gives a sensor of {width}x{height} pixels; each side "
                               f"must be in 1..{MAX_SENSOR_SIDE}", source=source)
    return SensorGeometry(width, height)


def parse_geometry(value: Any, *, source: str = "",
                   what: str = "option geometry") -> SensorGeometry | None:
    """A SensorGeometry from None, a SensorGeometry, "640x480" / "640,480" or (640, 480).

    Raises ValueError for a malformed value, EventFormatError (a ValueError naming ``source``
    and ``what``) for a side outside 1..MAX_SENSOR_SIDE.
    """
    if value is None:
        return value
    if isinstance(value, SensorGeometry):
        width, height = value.width, value.height
    elif isinstance(value, str):
        m = _GEOMETRY_RE.match(value)
        if m is None:
            raise ValueError(f"geometry must look like '640x480', got {value!r}")
        width, height = int(m.group(1)), int(m.group(2))
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        width, height = int(value[0]), int(value[1])
    else:
        raise ValueError(f"geometry must be 'WIDTHxHEIGHT' or (width, height), got {value!r}")
    return checked_geometry(width, height, source=source, what=what)


def parse_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """An int option (accepts "4096"); raises ValueError naming the option if < minimum."""
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"option {name} must be an integer, got {value!r}") from None
    if isinstance(value, float) and value != out:
        raise ValueError(f"option {name} must be an integer, got {value!r}")
    if out < minimum:
        raise ValueError(f"option {name} must be >= {minimum}, got {out}")
    return out


def parse_bool(value: Any, name: str) -> bool:
    """A bool option from a bool or "true"/"false"/"1"/"0"/"yes"/"no"."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"option {name} must be true or false, got {value!r}")


def check_options(opts: Mapping[str, Any], allowed: tuple[str, ...], fmt: str) -> None:
    """Raise TypeError (as for an unexpected keyword) if ``opts`` holds a key outside
    ``allowed``, so that typos do not pass silently."""
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)} for {fmt} files; "
                         f"known: {', '.join(allowed)}")


# -- shared decoding helpers -----------------------------------------------------------------


class RecordLayout(NamedTuple):
    """Fixed-size records after a header: ``count`` whole records from ``data_offset`` (bytes),
    then ``trailing_bytes`` (< record size) that do not form a whole record."""

    data_offset: int
    record_bytes: int
    count: int
    trailing_bytes: int


def record_layout(size_bytes: int, data_offset: int, record_bytes: int) -> RecordLayout:
    """Split a file of ``size_bytes`` into whole records of ``record_bytes`` after the header."""
    body = max(size_bytes - data_offset, 0)
    return RecordLayout(data_offset, record_bytes, body // record_bytes, body % record_bytes)


def read_record_blocks(
    f: BinaryIO, layout: RecordLayout, dtype: np.dtype, per_block: int, *, source: str
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (byte offset, records) blocks of at most ``per_block`` records of ``dtype``.

    Reads only whole records (``layout.count``); raises EventFormatError naming the offset if
    the file turns out shorter than when it was measured.
    """
    f.seek(layout.data_offset)
    done = 0
    while done < layout.count:
        n = min(per_block, layout.count - done)
        offset = layout.data_offset + done * layout.record_bytes
        buf = f.read(n * layout.record_bytes)
        if len(buf) != n * layout.record_bytes:
            raise EventFormatError("file ended early (truncated while reading?)",
                                   source=source, offset=offset + len(buf))
        yield offset, np.frombuffer(buf, dtype=dtype)
        done += n


class Unroll(NamedTuple):
    """State of 32-bit timestamp unrolling: last raw value and the number of wraps so far."""

    last_raw: int
    wraps: int


def unroll_u32(t_raw: np.ndarray, state: Unroll | None) -> tuple[np.ndarray, Unroll]:
    """Unroll wrapping 32-bit µs timestamps: t = raw + 2³²·wraps.

    A wrap is a step backwards by more than 2³¹ µs (≈36 min); smaller backward steps are kept
    (validation drops them). ``t_raw`` (n,) any integer dtype holding uint32 values; returns
    int64 (n,) and the state to pass with the next block.
    """
    raw = t_raw.astype(np.int64) & 0xFFFFFFFF
    if raw.size == 0:
        return raw, state if state is not None else Unroll(0, 0)
    prev = np.empty_like(raw)
    prev[0] = state.last_raw if state is not None else raw[0]
    prev[1:] = raw[:-1]
    wrapped = (prev - raw) > (1 << 31)
    wraps = (state.wraps if state is not None else 0) + np.cumsum(wrapped)
    t = raw + (wraps << 32)
    return t, Unroll(int(raw[-1]), int(wraps[-1]))


def pack_columns(
    t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray
) -> tuple[np.ndarray, int]:
    """Pack integer columns into EVENT_DTYPE, dropping rows EVENT_DTYPE cannot represent.

    Kept: t ≥ 0, 0 ≤ x, y ≤ 65535, p ∈ {0, 1}. Returns (events (m,), number dropped). Rows
    outside the sensor are left for the base validation, which counts them as dropped.
    """
    t = np.asarray(t)
    x = np.asarray(x)
    y = np.asarray(y)
    p = np.asarray(p)
    ok = (t >= 0) & (x >= 0) & (x <= 65535) & (y >= 0) & (y <= 65535) & ((p == 0) | (p == 1))
    n_bad = int(ok.size - np.count_nonzero(ok))
    if n_bad:
        t, x, y, p = t[ok], x[ok], y[ok], p[ok]
    return make_events(t, x, y, p), n_bad


PLAUSIBLE_RECORDS = 4096
"""Records decoded at open to check that the content matches the format (see below)."""

MAX_STEP_US = 1 << 26
"""Largest forward time step between consecutive records counted as plausible (≈67 s)."""


def check_plausible(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray,
                    geometry: SensorGeometry, *, source: str, offset: int, fmt: str) -> None:
    """Refuse a file whose first records are mostly not events of ``fmt``.

    ``t, x, y, p`` (n,) integer columns of the first (up to PLAUSIBLE_RECORDS) decoded events,
    t unrolled in µs. A record is implausible if it lies outside ``geometry``, has a polarity
    outside {0, 1}, goes back in time or jumps more than MAX_STEP_US forward. Real recordings
    have almost none; bytes of another format (a ``.raw`` renamed ``.bin``, a header misread
    as data) have mostly such records. Raises EventFormatError naming the file and ``offset``
    (the first record's byte offset) when more than half of at least 16 records are
    implausible, or when the file holds no record at all (n == 0 and nothing else counted).
    """
    n = int(np.asarray(t).size)
    if n < 16:
        return
    t64 = np.asarray(t, dtype=np.int64)
    x64 = np.asarray(x, dtype=np.int64)
    y64 = np.asarray(y, dtype=np.int64)
    p64 = np.asarray(p, dtype=np.int64)
    bad = ((x64 < 0) | (x64 >= geometry.width) | (y64 < 0) | (y64 >= geometry.height)
           | ((p64 != 0) & (p64 != 1)) | (t64 < 0))
    step = np.diff(t64)
    bad[1:] |= (step < 0) | (step > MAX_STEP_US)
    n_bad = int(np.count_nonzero(bad))
    if 2 * n_bad > n:
        raise EventFormatError(f"not a {fmt} file, or a corrupt one: {n_bad} of the first {n} "
                               f"records lie outside the {geometry} sensor, have a bad "
                               f"polarity, go back in time or jump by more than "
                               f"{MAX_STEP_US} µs", source=source, offset=offset)


# -- NumPy files ------------------------------------------------------------------------------


def _npz_geometry(npz: Any, source: str) -> SensorGeometry | None:
    """Geometry stored in an npz: key ``geometry`` ("WxH" or [w, h]) or ``width`` + ``height``."""
    try:
        if "geometry" in npz.files:
            g = npz["geometry"]
            return parse_geometry(str(g) if g.dtype.kind in "US" else g.ravel().tolist(),
                                  source=source, what="field 'geometry'")
        if "width" in npz.files and "height" in npz.files:
            return checked_geometry(int(npz["width"]), int(npz["height"]), source=source,
                                    what="fields 'width' and 'height'")
    except EventFormatError:
        raise
    except (ValueError, TypeError) as exc:
        raise EventFormatError(f"bad geometry field: {exc}", source=source) from None
    return None


class NumpySource(EventSource):
    """Events from a ``.npy`` structured array or an ``.npz`` archive (key ``events``).

    Any dtype ``augury.events.to_events`` accepts (tonic, Metavision, dv-processing, faery,
    float seconds). The .npy is memory-mapped and converted ``chunk_events`` at a time.
    Geometry: the ``geometry`` option, else the npz's ``geometry`` / ``width`` + ``height``.
    The content decides between .npy and .npz (as for ``np.load``), so an archive that
    ``save_npy`` wrote under a .npy name reads back with its geometry.
    """

    format = "NumPy"

    def __init__(self, path: str | Path, *, geometry: SensorGeometry | None = None,
                 chunk_events: int = DEFAULT_CHUNK_EVENTS) -> None:
        super().__init__()
        self.path = Path(path)
        self.uri = str(self.path)
        self.chunk_events = chunk_events
        self._events, stored = _load_numpy(self.path)
        geometry = geometry or stored
        if geometry is None:
            raise EventFormatError("the file carries no sensor geometry; pass the option "
                                   "geometry='WIDTHxHEIGHT' (it is never guessed from the data)",
                                   source=self.uri)
        self.geometry = geometry

    def chunks(self) -> Iterator[Chunk]:
        ev = self._events
        for i in range(0, ev.shape[0], self.chunk_events):
            part = np.array(ev[i:i + self.chunk_events])
            try:
                out = to_events(part, source=self.uri)
            except ValueError as exc:  # EventFormatError, or a missing field
                raise EventFormatError(f"events {i}..{i + part.size - 1}: {exc}",
                                       source=self.uri) from None
            yield Chunk(out, Counters(read=int(part.size)))

    def close(self) -> None:
        self._events = np.zeros(0, dtype=EVENT_DTYPE)


def _load_numpy(path: Path) -> tuple[np.ndarray, SensorGeometry | None]:
    """The structured event array of a .npy/.npz (no pickle) and any stored geometry."""
    src = str(path)
    with open(path, "rb") as f:
        magic = f.read(6)
    is_npy = magic == b"\x93NUMPY"  # the content decides, as for np.load: .npy or zip (.npz)
    if not is_npy and magic[:2] != b"PK":
        raise EventFormatError(f"neither a .npy array (magic \\x93NUMPY) nor an .npz archive "
                               f"(magic PK): starts with {magic!r}", source=src, offset=0)
    try:
        if is_npy:
            _check_npy_size(path)
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            stored = None
        else:
            with np.load(path, allow_pickle=False) as npz:
                stored = _npz_geometry(npz, src)
                key = _npz_events_key(npz, src)
                arr = npz[key]
    except EventFormatError:
        raise
    except (ValueError, OSError, EOFError, KeyError, SyntaxError, NotImplementedError,
            tokenize.TokenError, zipfile.BadZipFile, zlib.error) as exc:
        raise EventFormatError(f"not a readable NumPy file ({type(exc).__name__}: {exc})",
                               source=src) from None
    if arr.dtype.names is None or arr.ndim != 1:
        raise EventFormatError(f"expected a 1-D structured event array, got dtype {arr.dtype} "
                               f"and shape {arr.shape}", source=src)
    try:
        to_events(np.array(arr[:0]), source=src)  # fields present and convertible
    except ValueError as exc:
        raise EventFormatError(f"dtype {arr.dtype}: {exc}", source=src) from None
    return arr, stored


def _check_npy_size(path: Path) -> None:
    """Raise EventFormatError if a .npy (format 1.0/2.0) holds fewer bytes than its header says.

    Raises ValueError (caught by the caller) for an unreadable header.
    """
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=1 << 16)
        elif version == (2, 0):
            shape, _fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=1 << 16)
        else:
            return
        data_offset = f.tell()
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = path.stat().st_size - data_offset
    if have < need:
        whole = have // dtype.itemsize if dtype.itemsize else 0
        raise EventFormatError(f"truncated: the header promises shape {shape} ({need} bytes of "
                               f"{dtype}) but {have} bytes follow; record {whole} is "
                               "incomplete", source=str(path),
                               offset=data_offset + whole * dtype.itemsize)


def _npz_events_key(npz: Any, source: str) -> str:
    if "events" in npz.files:
        return "events"
    raise EventFormatError(f"no 'events' array in the npz (keys: {', '.join(npz.files)})",
                           source=source)


def save_npy(path: str | Path, events: np.ndarray, geometry: SensorGeometry) -> Path:
    """Save events as an npz archive (keys ``events``, ``width``, ``height``; no pickle).

    ``events`` in any dtype ``to_events`` accepts; they must lie inside ``geometry`` with t
    non-decreasing (EventFormatError otherwise). The archive is written to ``path`` as given
    (no suffix added); open_file reads it back with its geometry from a ``.npz`` or a
    ``.npy`` path, since the NumPy reader goes by the content, as ``np.load`` does.
    """
    p = Path(path)
    ev = to_events(np.asarray(events), source=str(p))
    check_events(ev, geometry, source=str(p))
    with open(p, "wb") as f:
        np.savez(f, events=ev, width=np.int64(geometry.width), height=np.int64(geometry.height))
    return p


def open_numpy(path: str | Path, **opts: Any) -> NumpySource:
    """Open a .npy/.npz event file. Options: geometry ("WxH"), chunk_events."""
    check_options(opts, ("geometry", "chunk_events"), "NumPy")
    return NumpySource(path, geometry=parse_geometry(opts.get("geometry")),
                       chunk_events=parse_int(opts.get("chunk_events", DEFAULT_CHUNK_EVENTS),
                                              "chunk_events"))


# -- text files (Event-Camera Dataset layout) -------------------------------------------------

_HEADER_GEOMETRY_RE = re.compile(r"^#\s*(\d+)\s*(?:[xX×,]|\s)\s*(\d+)\s*$")


class TextSource(EventSource):
    """Events from text lines ``t x y p`` (Event-Camera Dataset ``events.txt`` layout).

    Separators: whitespace or commas. ``t`` in seconds (decimal, e.g. 1468939993.067416019,
    converted exactly to µs, rounded at the 7th decimal; no exponents) or in integer µs;
    ``time_unit`` "s" | "us" | "auto" (auto: seconds iff the first time value holds a '.').
    Parsing is a numba kernel over the bytes (≈5 M lines/s). Polarity in
    {0, 1} or {-1, 1}. '#' starts a comment; an optional first line ``# WIDTH HEIGHT``
    (or ``# WIDTHxHEIGHT``) gives the geometry, else the ``geometry`` option is required.
    Rows with negative values or polarity outside {-1, 0, 1} are counted as dropped; an
    unparsable line raises EventFormatError naming the line and its byte offset.
    """

    format = "text"

    def __init__(self, path: str | Path, *, geometry: SensorGeometry | None = None,
                 time_unit: str = "auto", chunk_events: int = DEFAULT_CHUNK_EVENTS) -> None:
        super().__init__()
        if time_unit not in ("auto", "s", "us"):
            raise ValueError(f"time_unit must be 'auto', 's' or 'us', got {time_unit!r}")
        self.path = Path(path)
        self.uri = str(self.path)
        self.chunk_events = chunk_events
        first = _first_lines(self.path)
        stored = _text_header_geometry(first, self.uri)
        geometry = geometry or stored
        if geometry is None:
            raise EventFormatError("no sensor geometry: add a first line '# WIDTH HEIGHT' or "
                                   "pass geometry='WIDTHxHEIGHT'", source=self.uri)
        self.geometry = geometry
        self.time_unit = time_unit if time_unit != "auto" else _guess_time_unit(first)

    def chunks(self) -> Iterator[Chunk]:
        with open(self.path, "rb") as f:
            line_no = 0
            offset = 0
            while True:
                lines = list(itertools.islice(f, self.chunk_events))
                if not lines:
                    return
                yield _parse_text_lines(lines, line_no, offset, self.time_unit, self.uri)
                line_no += len(lines)
                offset += sum(map(len, lines))


def _first_lines(path: Path, limit: int = 64) -> list[bytes]:
    """Up to ``limit`` first lines (each cut at 4 KiB) to find the header and the time unit."""
    out: list[bytes] = []
    with open(path, "rb") as f:
        for _ in range(limit):
            ln = f.readline(4096)
            if not ln:
                break
            out.append(ln)
    return out


def _text_header_geometry(lines: list[bytes], source: str = "") -> SensorGeometry | None:
    """Geometry of a first line '# WIDTH HEIGHT' (capped at MAX_SENSOR_SIDE), else None."""
    if not lines:
        return None
    m = _HEADER_GEOMETRY_RE.match(lines[0].decode("utf-8", "replace").strip())
    if m is None:
        return None
    return checked_geometry(int(m.group(1)), int(m.group(2)), source=source,
                            what="header line '# WIDTH HEIGHT'")


def _guess_time_unit(lines: list[bytes]) -> str:
    """'s' if the first data line's time field holds a '.' (or an exponent), else 'us'."""
    for ln in lines:
        text = ln.split(b"#", 1)[0].replace(b",", b" ").strip()
        if text:
            t = text.split()[0]
            return "s" if (b"." in t or b"e" in t.lower()) else "us"
    return "us"


_MAX_DIGITS_S = 12
"""Most digits of whole seconds (10¹² s = 10¹⁸ µs fits int64)."""

_MAX_DIGITS = 18
"""Most digits of an integer field (µs, x, y, p)."""

# error codes of _parse_text_kernel
_TEXT_ERRORS = {
    1: "unexpected character",
    2: "fewer than 4 fields (t x y p)",
    3: "more than 4 fields (t x y p)",
    4: "negative time",
    5: "number too long",
    6: "a '.' in a time given in integer µs (use time_unit='s')",
}


@njit(cache=True, nogil=True)
def _parse_text_kernel(buf: np.ndarray, seconds: bool, t: np.ndarray, x: np.ndarray,
                       y: np.ndarray, p: np.ndarray) -> tuple[int, int, int, int]:
    """Parse text lines ``t x y p`` from ``buf`` (uint8 (n,)) into the output columns.

    Separators: spaces, tabs, commas, '\r'; '#' starts a comment; blank lines are skipped.
    Time: seconds → t_us = whole·10⁶ + round(fraction to 7 digits / 10), exact; or integer
    µs. x, y, p: optionally signed integers (validity is checked by the caller). Outputs must
    hold at least one row per line. Returns (rows, error code (0 = none), line index of the
    error, byte offset of that line); parsing stops at the first error.
    """
    n = buf.size
    i = 0
    row = 0
    line = 0
    while i < n:
        line_start = i
        field = 0
        while True:
            # skip separators
            while i < n and (buf[i] == 32 or buf[i] == 9 or buf[i] == 44 or buf[i] == 13):
                i += 1
            if i >= n or buf[i] == 10 or buf[i] == 35:  # end of line or comment
                break
            if field == 4:
                return row, 3, line, line_start
            neg = False
            if buf[i] == 45 or buf[i] == 43:  # '-' or '+'
                neg = buf[i] == 45
                i += 1
            whole = 0
            digits = 0
            while i < n and 48 <= buf[i] <= 57:
                whole = whole * 10 + (buf[i] - 48)
                digits += 1
                i += 1
            whole_digits = digits
            frac = 0
            frac_digits = 0
            if field == 0 and i < n and buf[i] == 46:  # '.'
                if not seconds:
                    return row, 6, line, line_start
                i += 1
                while i < n and 48 <= buf[i] <= 57:
                    if frac_digits < 7:
                        frac = frac * 10 + (buf[i] - 48)
                        frac_digits += 1
                    i += 1
                    digits += 1
            if digits == 0:
                return row, 1, line, line_start
            limit = _MAX_DIGITS_S if (field == 0 and seconds) else _MAX_DIGITS
            if whole_digits > limit:
                return row, 5, line, line_start
            if i < n and not (buf[i] == 32 or buf[i] == 9 or buf[i] == 44 or buf[i] == 13
                              or buf[i] == 10 or buf[i] == 35):
                return row, 1, line, line_start
            if field == 0:
                if neg and (whole > 0 or frac > 0):
                    return row, 4, line, line_start
                if seconds:
                    while frac_digits < 7:
                        frac *= 10
                        frac_digits += 1
                    t[row] = whole * 1_000_000 + (frac + 5) // 10
                else:
                    t[row] = whole
            else:
                v = -whole if neg else whole
                if field == 1:
                    x[row] = v
                elif field == 2:
                    y[row] = v
                else:
                    p[row] = v
            field += 1
        if field != 0 and field < 4:
            return row, 2, line, line_start
        if field == 4:
            row += 1
        while i < n and buf[i] != 10:  # rest of a comment
            i += 1
        i += 1
        line += 1
    return row, 0, line, n


def _parse_text_lines(lines: list[bytes], line0: int, offset0: int, time_unit: str,
                      source: str) -> Chunk:
    """Parse a block of text lines (line numbers from ``line0``, bytes from ``offset0``)."""
    buf = np.frombuffer(b"".join(lines), dtype=np.uint8)
    cap = len(lines)
    t = np.empty(cap, np.int64)
    x = np.empty(cap, np.int64)
    y = np.empty(cap, np.int64)
    p = np.empty(cap, np.int64)
    rows, err, err_line, err_offset = _parse_text_kernel(buf, time_unit == "s", t, x, y, p)
    if err:
        bad = lines[err_line][:60].decode("utf-8", "replace").rstrip()
        raise EventFormatError(f"line {line0 + err_line + 1}: {_TEXT_ERRORS[err]} in {bad!r}",
                               source=source, offset=offset0 + err_offset)
    t, x, y, p = t[:rows], x[:rows], y[:rows], p[:rows]
    bad_p = (p < -1) | (p > 1)
    p = np.where(bad_p, 2, np.where(p > 0, 1, 0))  # 2 is rejected by pack_columns
    events, n_bad = pack_columns(t, x, y, p)
    return Chunk(events, Counters(read=rows, dropped=n_bad))


def open_text(path: str | Path, **opts: Any) -> TextSource:
    """Open a .csv/.txt event file. Options: geometry ("WxH"), time_unit, chunk_events."""
    check_options(opts, ("geometry", "time_unit", "chunk_events"), "text")
    return TextSource(path, geometry=parse_geometry(opts.get("geometry")),
                      time_unit=str(opts.get("time_unit", "auto")),
                      chunk_events=parse_int(opts.get("chunk_events", DEFAULT_CHUNK_EVENTS),
                                             "chunk_events"))
