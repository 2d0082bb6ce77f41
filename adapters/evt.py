"""Prophesee EVT 2.0 / 2.1 / 3.0: ``.raw`` header parsing and a streaming numba decoder.

File layout: ASCII header lines ``% key value\\n`` (``% evt 3.0``, ``% format
EVT3;height=720;width=1280``, ``% geometry 1280x720``, ``% plugin_name ...``, optionally
closed by ``% end``), then little-endian binary words:

* **EVT 3.0**, 16-bit words, type = bits 15..12: EVT_ADDR_Y (0x0, y = bits 10..0),
  EVT_ADDR_X (0x2, x = bits 10..0, polarity = bit 11: one event), VECT_BASE_X (0x3, base x
  and polarity), VECT_12 (0x4, 12-bit mask: events at base_x + bit, then base_x += 12),
  VECT_8 (0x5, 8-bit mask, base_x += 8), EVT_TIME_LOW (0x6), CONTINUED_4 (0x7),
  EVT_TIME_HIGH (0x8), EXT_TRIGGER (0xA, id = bits 11..8, value = bit 0), IMU (0xD),
  OTHERS (0xE), CONTINUED_12 (0xF). Time t = loops·2²⁴ + high·2¹² + low µs.
* **EVT 2.0**, 32-bit words, type = bits 31..28: CD_OFF (0x0) / CD_ON (0x1) with time low
  (bits 27..22), x (21..11), y (10..0); EV_TIME_HIGH (0x8, bits 27..0 = t bits 33..6);
  EXT_TRIGGER (0xA, time low 27..22, id 12..8, value bit 0); OTHERS (0xE); CONTINUED (0xF).
  Time t = loops·2³⁴ + high·2⁶ + low µs.
* **EVT 2.1**, 64-bit words: a 32-bit header half (type 31..28, time low 27..22, x 21..11,
  y 10..0; EVT_NEG 0x0, EVT_POS 0x1, EVT_TIME_HIGH 0x8, EXT_TRIGGER 0xA, OTHERS 0xE,
  CONTINUED 0xF) and a 32-bit valid mask (events at x + bit). Standard files store the
  64-bit word little-endian (mask first); ``endianness=legacy`` files (IMX636) store the
  header half first.

Time semantics follow OpenEB (no time shifting, absolute sensor time): words before the
first time-high word are skipped (counted in ``before_time``); a time-high word that
changes the time base resets the low part to 0; a loop of the time counter is detected when
the time high goes backwards by at least half its range (EVT 3.0: 2¹¹·2¹² µs, as OpenEB)
or by nearly all of it (EVT 2.x: ≥ 2³⁴ − 64 − 10 000 µs, as OpenEB's EVT 2.0 decoder; we
use the same rule for 2.1, where OpenEB only accepts an exact wrap).

The decoder never raises on data: unknown word types are counted, events outside the
sensor are counted (``out_of_bounds``) and never output, a trailing partial word is kept
for the next buffer. Hot loops are module-level ``@njit(cache=True, nogil=True)`` kernels over
uint16/uint32 views of the data, with an int64 state array passed in and out; they write
into preallocated EVENT_DTYPE buffers sized from the most events a word can produce.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from numba import njit

from augury.adapters.files import checked_geometry
from augury.events import (
    EVENT_DTYPE,
    EventFormatError,
    SensorGeometry,
    concat_records,
    copy_records,
)

FORMATS = ("evt2", "evt21", "evt3")
WORD_BYTES = {"evt2": 4, "evt21": 8, "evt3": 2}
"""Bytes per word of each format."""
MAX_EVENTS_PER_WORD = {"evt2": 1, "evt21": 32, "evt3": 12}
"""Upper bound on the CD events one word can produce (sizes the output buffers)."""
FORMAT_NAMES = {"evt2": "EVT 2.0", "evt21": "EVT 2.1", "evt3": "EVT 3.0"}

TRIGGER_DTYPE = np.dtype([("t", "<i8"), ("id", "u1"), ("p", "u1")])
"""External trigger events: t µs (same clock as the CD events), channel id, edge (1 rising)."""

# Geometry of sensors whose old headers only name the HAL plugin (substring, width, height);
# first match wins, so longer names come first.
_PLUGIN_GEOMETRY: tuple[tuple[str, int, int], ...] = (
    ("genx320", 320, 320),
    ("gen_x320", 320, 320),
    ("imx8", 320, 320),
    ("imx636", 1280, 720),
    ("imx646", 1280, 720),
    ("gen41", 1280, 720),
    ("gen4", 1280, 720),
    ("gen31", 640, 480),
    ("gen3", 640, 480),
)

_MAX_HEADER_LINE = 4096
_MAX_HEADER_BYTES = 1 << 20
_HEADER_LINE = re.compile(rb"%(?: [\x20-\x7e\t]*)?\r?\n")


# -------------------------------------------------------------------------------------
# header
# -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawHeader:
    """What the ``%`` header of a ``.raw`` file says.

    format: "evt2" | "evt21" | "evt3"; geometry: sensor size (px); data_offset: byte offset
    of the first data byte after the header lines; fields: header keys -> values (for
    ``% format EVT3;height=720;width=1280`` the key is "format" and the value the rest).
    """

    format: str
    geometry: SensorGeometry
    data_offset: int
    fields: dict[str, str]

    @property
    def evt21_legacy(self) -> bool:
        """True for EVT 2.1 files whose 64-bit words store the header half first (IMX636)."""
        return "endianness=legacy" in self.fields.get("format", "").replace(" ", "").lower()


def normalize_format(fmt: str, *, source: str = "") -> str:
    """Map "evt3", "EVT 3.0", "3", "EVT2.1", "evt21" ... to "evt2" | "evt21" | "evt3"."""
    key = re.sub(r"[\s_]", "", str(fmt)).lower().removeprefix("evt")
    table = {"2": "evt2", "2.0": "evt2", "20": "evt2", "2.1": "evt21", "21": "evt21",
             "3": "evt3", "3.0": "evt3", "30": "evt3"}
    if key not in table:
        raise EventFormatError(f"unknown EVT format {fmt!r}; expected one of evt2, evt21, evt3",
                               source=source)
    return table[key]


def _split_header(head: bytes) -> tuple[list[str], int]:
    """Header lines (without '% ') and the byte offset where binary data starts.

    A header line is '%', optionally ' ' + printable ASCII, then a newline; the header ends
    at ``% end`` or at the first bytes that are not such a line (binary data may itself
    start with '%').
    """
    lines: list[str] = []
    pos = 0
    while pos < len(head) and head[pos:pos + 1] == b"%":
        m = _HEADER_LINE.match(head, pos)
        if m is None:
            break
        text = m.group(0)[1:].decode("ascii").strip()
        pos = m.end()
        if text == "end":
            break
        lines.append(text)
    return lines, pos


def _parse_fields(lines: list[str]) -> dict[str, str]:
    """'key value...' lines -> {key: value}; the first occurrence of a key wins."""
    out: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if key and key not in out:
            out[key] = value.strip()
    return out


def _format_params(value: str) -> tuple[str, dict[str, str]]:
    """'EVT3;height=720;width=1280' -> ('EVT3', {'height': '720', 'width': '1280'})."""
    name, *params = [p.strip() for p in value.split(";")]
    kv = {}
    for p in params:
        k, _, v = p.partition("=")
        kv[k.strip().lower()] = v.strip()
    return name, kv


def _format_from_fields(f: dict[str, str], source: str) -> str | None:
    if "format" in f:
        return normalize_format(_format_params(f["format"])[0], source=source)
    if "evt" in f:
        return normalize_format(f["evt"], source=source)
    return None


def _geometry_from_fields(f: dict[str, str], source: str) -> SensorGeometry | None:
    """From ``% geometry WxH``, ``% format ...;height=H;width=W`` or the plugin name."""
    try:
        if "geometry" in f:
            m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", f["geometry"])
            if m is None:
                raise ValueError(f"bad geometry {f['geometry']!r}")
            return checked_geometry(int(m.group(1)), int(m.group(2)), source=source,
                                    what="header field '% geometry'")
        if "format" in f:
            kv = _format_params(f["format"])[1]
            if "width" in kv and "height" in kv:
                return checked_geometry(int(kv["width"]), int(kv["height"]), source=source,
                                        what="header field '% format ...;width=;height='")
        if "width" in f and "height" in f:
            return checked_geometry(int(f["width"]), int(f["height"]), source=source,
                                    what="header fields '% width' and '% height'")
    except EventFormatError:
        raise
    except ValueError as exc:
        raise EventFormatError(f"header geometry is not valid: {exc}", source=source) from exc
    names = " ".join(f.get(k, "") for k in ("plugin_name", "sensor_name", "sensor_generation"))
    names = names.lower()
    for sub, w, h in _PLUGIN_GEOMETRY:
        if sub in names:
            return SensorGeometry(w, h)
    return None


def read_raw_header(
    path_or_file: str | os.PathLike[str] | BinaryIO,
    *,
    source: str = "",
    fmt: str | None = None,
    geometry: SensorGeometry | None = None,
) -> RawHeader:
    """Parse the ``%`` header of a Prophesee ``.raw`` file.

    ``fmt`` / ``geometry`` override what the header says (or supply what it lacks: old
    headers only carry a plugin name, which is mapped to the sensor size, e.g. gen3 -> 640x480,
    gen41/imx636 -> 1280x720, genx320 -> 320x320). A file object is read from its current
    position, which must be the start of the file (``data_offset`` is relative to it).
    Raises FileNotFoundError for a missing file and EventFormatError (naming the file) when
    the format or geometry is unknown and not given.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        source = source or str(path_or_file)
        with open(path_or_file, "rb") as f:
            head = _read_head(f)
    else:
        source = source or str(getattr(path_or_file, "name", "") or "<file>")
        head = _read_head(path_or_file)
    lines, offset = _split_header(head)
    if offset >= _MAX_HEADER_BYTES:
        raise EventFormatError(f"header longer than {_MAX_HEADER_BYTES} bytes", source=source,
                               offset=offset)
    flds = _parse_fields(lines)
    fmt_n = normalize_format(fmt, source=source) if fmt else _format_from_fields(flds, source)
    geo = geometry if geometry is not None else _geometry_from_fields(flds, source)
    if not lines and (fmt is None or geometry is None):
        raise EventFormatError("no '%' header: pass the format and the geometry explicitly",
                               source=source, offset=0)
    if fmt_n is None:
        raise EventFormatError("the header does not give the EVT format ('% evt 3.0' or "
                               "'% format EVT3'); pass fmt=...", source=source)
    if geo is None:
        raise EventFormatError("the header does not give the sensor geometry ('% geometry WxH',"
                               " '% format ...;height=H;width=W' or a known plugin name); "
                               "pass geometry=...", source=source)
    return RawHeader(fmt_n, geo, offset, flds)


def _read_head(f: BinaryIO) -> bytes:
    """Read enough of the file to hold the header (grows until a non-header line is seen)."""
    head = b""
    while True:
        chunk = f.read(1 << 16)
        head += chunk
        _, offset = _split_header(head)
        if not chunk or offset < len(head) - _MAX_HEADER_LINE or offset >= _MAX_HEADER_BYTES:
            return head


# -------------------------------------------------------------------------------------
# state layout and counters
# -------------------------------------------------------------------------------------

# decoder state (int64 array); indices shared by every kernel
S_TIME_SET = 0   # 1 once the first time-high word has been seen
S_BASE = 1       # unrolled time base (µs): time-high part including loops
S_NOW = 2        # current time (µs): base + low of the last word that carried time
S_HIGH = 3       # last raw time-high value (loop detection)
S_LOW = 4        # EVT 3.0 time low (12 bits)
S_Y = 5          # EVT 3.0 current y (_NO_COORD until an EVT_ADDR_Y word)
S_BASE_X = 6     # EVT 3.0 vector base x (_NO_COORD until a VECT_BASE_X word)
S_POL = 7        # EVT 3.0 vector polarity
# cumulative counters
C_WORDS = 8
C_EVENTS = 9
C_OOB = 10
C_UNKNOWN = 11
C_TRIGGERS = 12
C_OTHERS = 13
C_BEFORE_TIME = 14
C_ORPHANS = 15
C_TIME_HIGH = 16
C_LOOPS = 17
STATE_SIZE = 18
_NO_COORD = 1 << 40  # EVT 3.0 y / base x before any address word: fails every bounds check


@dataclass
class DecoderCounters:
    """Cumulative decoder accounting (all counts since the decoder was created).

    words: complete words decoded; events: CD events output; out_of_bounds: CD events
    outside the sensor (never output); unknown_words: words of a reserved/unknown type;
    triggers: external trigger events; others: IMU/ERC/OTHERS/CONTINUED words skipped;
    before_time: words skipped because no time-high word had been seen yet; orphans: EVT 3.0
    events with no y address / vector base yet (dropped); time_high: time-high words;
    loops: time-counter wraps unrolled; trailing_bytes: bytes of an incomplete last word
    (set by ``EvtDecoder.finish``).
    """

    words: int = 0
    events: int = 0
    out_of_bounds: int = 0
    unknown_words: int = 0
    triggers: int = 0
    others: int = 0
    before_time: int = 0
    orphans: int = 0
    time_high: int = 0
    loops: int = 0
    trailing_bytes: int = 0

    @property
    def malformed(self) -> int:
        """Words that could not be decoded: unknown types plus an incomplete last word."""
        return self.unknown_words + (1 if self.trailing_bytes else 0)


def _counters_from_state(state: np.ndarray, trailing: int) -> DecoderCounters:
    return DecoderCounters(
        words=int(state[C_WORDS]), events=int(state[C_EVENTS]),
        out_of_bounds=int(state[C_OOB]), unknown_words=int(state[C_UNKNOWN]),
        triggers=int(state[C_TRIGGERS]), others=int(state[C_OTHERS]),
        before_time=int(state[C_BEFORE_TIME]), orphans=int(state[C_ORPHANS]),
        time_high=int(state[C_TIME_HIGH]), loops=int(state[C_LOOPS]), trailing_bytes=trailing,
    )


def new_state() -> np.ndarray:
    """A fresh decoder state array (int64, shape (STATE_SIZE,))."""
    s = np.zeros(STATE_SIZE, dtype=np.int64)
    s[S_Y] = _NO_COORD
    s[S_BASE_X] = _NO_COORD
    return s


# -------------------------------------------------------------------------------------
# numba kernels
# -------------------------------------------------------------------------------------
# Each kernel decodes words[start:stop] (a uint16 / uint32 view of little-endian words),
# writes CD events into ``out`` (EVENT_DTYPE) and triggers into ``trig`` (TRIGGER_DTYPE,
# which the caller sizes to at least stop - start), updates ``state`` in place and returns
# (events written, triggers written, next word index). A kernel stops early only when the
# next word might overflow ``out``; the inner loops carry no other exits, which keeps them
# tight.

_EVT3_LOOP_US = 1 << 24
_EVT2_LOOP_US = 1 << 34
_EVT2_MAX_BASE_US = ((1 << 28) - 1) << 6
_EVT2_LOOP_THRESHOLD_US = _EVT2_MAX_BASE_US - 10_000


@njit(cache=True, nogil=True)
def _evt3_time_high(h, time_set, base, high, low):
    """EVT 3.0 time-high word h (12 bits) -> (base µs, low, loop detected?).

    base = loops·2²⁴ + h·2¹²; a loop is counted when h is at least 2¹¹ below the previous
    time high (OpenEB); the low part restarts at 0 when the time high changes.
    """
    if time_set == 0:
        return h << 12, 0, 0
    looped = 1 if high >= 2048 + h else 0
    loops_us = (base >> 24 << 24) + looped * _EVT3_LOOP_US
    return loops_us | (h << 12), (low if h == high else 0), looped


@njit(cache=True, nogil=True)
def _evt3_kernel(words, start, stop, out, trig, state, width, height):
    """Decode EVT 3.0 16-bit words (at most 12 events per word)."""
    time_set = state[S_TIME_SET]
    high = state[S_HIGH]
    low = state[S_LOW]
    base = state[S_BASE]
    y = state[S_Y]
    base_x = state[S_BASE_X]
    pol = state[S_POL]
    n_out = 0
    n_trig = 0
    n_oob = 0
    n_unknown = 0
    n_others = 0
    n_before = 0
    n_orphans = 0
    n_th = 0
    n_loops = 0
    cap = out.shape[0]
    i = start
    if time_set == 0:  # words before the first time high carry no usable time: skip them
        while i < stop and (words[i] >> 12) != 0x8:
            n_before += 1
            i += 1
    t = base + low
    while i < stop:
        room = (cap - n_out) // 12  # words that fit whatever they hold
        if room == 0:
            break
        end = min(stop, i + room)
        for j in range(i, end):
            w = np.int64(words[j])
            typ = w >> 12
            if typ == 0x2:  # EVT_ADDR_X: one event
                x = w & 0x7FF
                if x < width and y < height:
                    e = out[n_out]
                    e.t = t
                    e.x = x
                    e.y = y
                    e.p = (w >> 11) & 1
                    n_out += 1
                elif y == _NO_COORD:
                    n_orphans += 1
                else:
                    n_oob += 1
            elif typ == 0x0:  # EVT_ADDR_Y
                y = w & 0x7FF
            elif typ == 0x6:  # EVT_TIME_LOW
                low = w & 0xFFF
                t = base + low
            elif typ == 0x4 or typ == 0x5:  # VECT_12 / VECT_8
                # (spelled out: a variable shift width here costs ~40% of the kernel's speed)
                mask = w & 0xFFF if typ == 0x4 else w & 0xFF
                x = base_x
                while mask:
                    if mask & 1:
                        if x < width and y < height:
                            e = out[n_out]
                            e.t = t
                            e.x = x
                            e.y = y
                            e.p = pol
                            n_out += 1
                        elif y == _NO_COORD or base_x >= _NO_COORD:
                            n_orphans += 1
                        else:
                            n_oob += 1
                    mask >>= 1
                    x += 1
                base_x += 12 if typ == 0x4 else 8
            elif typ == 0x3:  # VECT_BASE_X
                base_x = w & 0x7FF
                pol = (w >> 11) & 1
            elif typ == 0x8:  # EVT_TIME_HIGH
                h = w & 0xFFF
                base, low, looped = _evt3_time_high(h, time_set, base, high, low)
                n_loops += looped
                time_set = 1
                high = h
                t = base + low
                n_th += 1
            elif typ == 0xA:  # EXT_TRIGGER
                r = trig[n_trig]
                r.t = t
                r.id = (w >> 8) & 0xF
                r.p = w & 1
                n_trig += 1
            elif typ == 0x7 or typ == 0xD or typ == 0xE or typ == 0xF:
                n_others += 1  # CONTINUED_4, IMU, OTHERS (ERC counters...), CONTINUED_12
            else:
                n_unknown += 1
        i = end
    state[S_TIME_SET] = time_set
    state[S_HIGH] = high
    state[S_LOW] = low
    state[S_BASE] = base
    state[S_NOW] = t
    state[S_Y] = y
    state[S_BASE_X] = base_x
    state[S_POL] = pol
    state[C_WORDS] += i - start
    state[C_EVENTS] += n_out
    state[C_OOB] += n_oob
    state[C_UNKNOWN] += n_unknown
    state[C_TRIGGERS] += n_trig
    state[C_OTHERS] += n_others
    state[C_BEFORE_TIME] += n_before
    state[C_ORPHANS] += n_orphans
    state[C_TIME_HIGH] += n_th
    state[C_LOOPS] += n_loops
    return n_out, n_trig, i


@njit(cache=True, nogil=True)
def _evt2_time_high(raw, time_set, base):
    """EVT 2.x time-high word (raw = bits 33..6 of t) -> (base µs, loop detected?).

    A loop (2³⁴ µs) is counted when the new base is below the old one by at least
    2³⁴ − 64 − 10 000 µs (OpenEB's EVT 2.0 rule).
    """
    if time_set == 0:
        return raw << 6, 0
    new_base = (base >> 34 << 34) | (raw << 6)
    if new_base < base and base - new_base >= _EVT2_LOOP_THRESHOLD_US:
        return new_base + _EVT2_LOOP_US, 1
    return new_base, 0


@njit(cache=True, nogil=True)
def _evt2_kernel(words, start, stop, out, trig, state, width, height):
    """Decode EVT 2.0 32-bit words (at most 1 event per word; ``out`` holds stop - start)."""
    time_set = state[S_TIME_SET]
    base = state[S_BASE]
    now = state[S_NOW]
    n_out = 0
    n_trig = 0
    n_oob = 0
    n_unknown = 0
    n_others = 0
    n_before = 0
    n_th = 0
    n_loops = 0
    i = start
    if time_set == 0:  # words before the first time high carry no usable time: skip them
        while i < stop and (words[i] >> 28) != 0x8:
            n_before += 1
            i += 1
    for j in range(i, stop):
        w = np.int64(words[j])
        typ = w >> 28
        if typ <= 1:  # CD_OFF / CD_ON
            x = (w >> 11) & 0x7FF
            y = w & 0x7FF
            now = base + ((w >> 22) & 0x3F)
            if x < width and y < height:
                e = out[n_out]
                e.t = now
                e.x = x
                e.y = y
                e.p = typ
                n_out += 1
            else:
                n_oob += 1
        elif typ == 0x8:  # EV_TIME_HIGH
            new_base, looped = _evt2_time_high(w & 0xFFFFFFF, time_set, base)
            n_loops += looped
            if time_set == 0 or new_base != base:
                now = new_base
            time_set = 1
            base = new_base
            n_th += 1
        elif typ == 0xA:  # EXT_TRIGGER
            now = base + ((w >> 22) & 0x3F)
            r = trig[n_trig]
            r.t = now
            r.id = (w >> 8) & 0x1F
            r.p = w & 1
            n_trig += 1
        elif typ == 0xE or typ == 0xF:
            n_others += 1  # OTHERS (ERC counters...), CONTINUED
        else:
            n_unknown += 1
    state[S_TIME_SET] = time_set
    state[S_BASE] = base
    state[S_NOW] = now
    state[C_WORDS] += stop - start
    state[C_EVENTS] += n_out
    state[C_OOB] += n_oob
    state[C_UNKNOWN] += n_unknown
    state[C_TRIGGERS] += n_trig
    state[C_OTHERS] += n_others
    state[C_BEFORE_TIME] += n_before
    state[C_TIME_HIGH] += n_th
    state[C_LOOPS] += n_loops
    return n_out, n_trig, stop


@njit(cache=True, nogil=True)
def _evt21_kernel(words, start, stop, out, trig, state, width, height, legacy):
    """Decode EVT 2.1 64-bit words given as uint32 pairs (at most 32 events per word).

    ``start``/``stop`` count 64-bit words. The header half (type, time low, x, y) is the
    high half of a little-endian 64-bit word, or the first half when ``legacy``; the other
    half is the valid mask (events at x + bit).
    """
    time_set = state[S_TIME_SET]
    base = state[S_BASE]
    now = state[S_NOW]
    n_out = 0
    n_trig = 0
    n_oob = 0
    n_unknown = 0
    n_others = 0
    n_before = 0
    n_th = 0
    n_loops = 0
    cap = out.shape[0]
    hoff = 0 if legacy else 1
    i = start
    if time_set == 0:  # words before the first time high carry no usable time: skip them
        while i < stop and (words[2 * i + hoff] >> 28) != 0x8:
            n_before += 1
            i += 1
    while i < stop:
        room = (cap - n_out) // 32
        if room == 0:
            break
        end = min(stop, i + room)
        for j in range(i, end):
            w = np.int64(words[2 * j + hoff])
            typ = w >> 28
            if typ <= 1:  # EVT_NEG / EVT_POS
                now = base + ((w >> 22) & 0x3F)
                x = (w >> 11) & 0x7FF
                y = w & 0x7FF
                mask = np.int64(words[2 * j + 1 - hoff])
                while mask:
                    if mask & 1:
                        if x < width and y < height:
                            e = out[n_out]
                            e.t = now
                            e.x = x
                            e.y = y
                            e.p = typ
                            n_out += 1
                        else:
                            n_oob += 1
                    mask >>= 1
                    x += 1
            elif typ == 0x8:  # EVT_TIME_HIGH
                new_base, looped = _evt2_time_high(w & 0xFFFFFFF, time_set, base)
                n_loops += looped
                if time_set == 0 or new_base != base:
                    now = new_base
                time_set = 1
                base = new_base
                n_th += 1
            elif typ == 0xA:  # EXT_TRIGGER
                now = base + ((w >> 22) & 0x3F)
                r = trig[n_trig]
                r.t = now
                r.id = (w >> 8) & 0x1F
                r.p = w & 1
                n_trig += 1
            elif typ == 0xE or typ == 0xF:
                n_others += 1  # OTHERS (ERC counters...), CONTINUED
            else:
                n_unknown += 1
        i = end
    state[S_TIME_SET] = time_set
    state[S_BASE] = base
    state[S_NOW] = now
    state[C_WORDS] += i - start
    state[C_EVENTS] += n_out
    state[C_OOB] += n_oob
    state[C_UNKNOWN] += n_unknown
    state[C_TRIGGERS] += n_trig
    state[C_OTHERS] += n_others
    state[C_BEFORE_TIME] += n_before
    state[C_TIME_HIGH] += n_th
    state[C_LOOPS] += n_loops
    return n_out, n_trig, i


# -------------------------------------------------------------------------------------
# streaming decoder
# -------------------------------------------------------------------------------------

_MAX_WORDS_PER_CALL = 1 << 21  # words per kernel call (bounds the output temporaries)


def _as_bytes(buf: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """A flat uint8 view of any contiguous buffer (no copy when possible)."""
    if isinstance(buf, np.ndarray):
        return np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    return np.frombuffer(buf, dtype=np.uint8)


class EvtDecoder:
    """Streaming decoder for one EVT 2.0 / 2.1 / 3.0 stream (state carried across buffers).

    ``decode(buf)`` accepts buffers of any size, including sizes that split a word: the
    leftover bytes are kept for the next call. Events are EVENT_DTYPE with absolute sensor
    time (µs, wraps unrolled), in stream order; events outside ``geometry`` are counted,
    never output. ``counters`` are cumulative; ``time_us`` is the sensor time reached (None
    until the first time-high word); ``triggers`` holds the external triggers
    (TRIGGER_DTYPE: t µs, id, p) decoded by the last ``decode`` call.
    """

    def __init__(self, fmt: str, geometry: SensorGeometry, *, source: str = "",
                 evt21_legacy: bool = False) -> None:
        self.format = normalize_format(fmt, source=source)
        self.geometry = geometry
        self.source = source
        self.evt21_legacy = bool(evt21_legacy)
        self.word_bytes = WORD_BYTES[self.format]
        self.state = new_state()
        self.triggers = np.zeros(0, dtype=TRIGGER_DTYPE)
        self._carry = b""
        self._finished = False

    @property
    def counters(self) -> DecoderCounters:
        """Cumulative counters (a snapshot)."""
        return _counters_from_state(self.state, len(self._carry) if self._finished else 0)

    @property
    def time_us(self) -> int | None:
        """Sensor time (µs) the stream has reached, or None before the first time-high word."""
        return int(self.state[S_NOW]) if self.state[S_TIME_SET] else None

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete word held for the next ``decode`` call."""
        return len(self._carry)

    def finish(self) -> int:
        """Mark the end of the stream; returns the bytes of an incomplete last word.

        They are reported as ``counters.trailing_bytes`` (and one malformed word).
        """
        self._finished = True
        return len(self._carry)

    def decode(self, buf: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
        """Decode the next piece of the stream -> EVENT_DTYPE events (n,)."""
        data = _as_bytes(buf)
        wb = self.word_bytes
        parts: list[np.ndarray] = []
        trig_parts: list[np.ndarray] = []
        if self._carry:
            need = wb - len(self._carry)
            head = np.frombuffer(self._carry + data[:need].tobytes(), dtype=np.uint8)
            data = data[need:]
            self._carry = b""
            if head.size < wb:
                self._carry = head.tobytes()
            else:
                self._run(head, wb, parts, trig_parts)
        stop = data.size - data.size % wb
        if stop:
            self._run(data[:stop], stop, parts, trig_parts)
        if stop < data.size:
            self._carry += data[stop:].tobytes()
        self.triggers = concat_records(trig_parts, TRIGGER_DTYPE)
        return concat_records(parts)

    def _run(self, data: np.ndarray, stop: int, parts: list[np.ndarray],
             trig_parts: list[np.ndarray]) -> None:
        """Call the kernel until the words in data[:stop] are consumed, collecting output."""
        wb = self.word_bytes
        words = data[:stop].view("<u2" if wb == 2 else "<u4")
        if not words.flags.aligned:
            words = words.copy()  # kernels are compiled for aligned views only
        words.flags.writeable = False  # one compiled variant for bytes and bytearray input
        n_words = stop // wb
        per_word = MAX_EVENTS_PER_WORD[self.format]
        w, h = self.geometry.width, self.geometry.height
        pos = 0
        while pos < n_words:
            # bounded pieces keep the temporaries small whatever the buffer size
            stop_w = min(n_words, pos + _MAX_WORDS_PER_CALL)
            left = stop_w - pos
            # EVT 2.0 never overflows; vector formats get a typical-density buffer (the
            # kernel stops before overflowing it and we go round again)
            cap = left if per_word == 1 else left + 4096
            out = np.empty(cap, dtype=EVENT_DTYPE)
            trig = np.empty(left, dtype=TRIGGER_DTYPE)  # untouched pages cost nothing
            if self.format == "evt3":
                n, nt, pos = _evt3_kernel(words, pos, stop_w, out, trig, self.state, w, h)
            elif self.format == "evt2":
                n, nt, pos = _evt2_kernel(words, pos, stop_w, out, trig, self.state, w, h)
            else:
                n, nt, pos = _evt21_kernel(words, pos, stop_w, out, trig, self.state, w, h,
                                           self.evt21_legacy)
            if n:
                # keep the buffer when it is mostly used, else copy out the used part
                parts.append(out[:n] if 4 * n >= 3 * cap else copy_records(out[:n]))
            if nt:
                trig_parts.append(copy_records(trig[:nt]))


def decode_raw_file(
    path: str | os.PathLike[str],
    *,
    chunk_bytes: int = 1 << 22,
    fmt: str | None = None,
    geometry: SensorGeometry | None = None,
) -> tuple[RawHeader, np.ndarray]:
    """Decode a whole ``.raw`` file -> (header, EVENT_DTYPE events in file order).

    Reads ``chunk_bytes`` at a time through one ``EvtDecoder``; ``fmt``/``geometry`` override
    the header. An incomplete last word is ignored. Raises FileNotFoundError for a missing
    file and EventFormatError (naming the file) for an unknown format or geometry.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes}")
    source = str(path)
    with open(path, "rb") as f:
        header = read_raw_header(f, source=source, fmt=fmt, geometry=geometry)
        f.seek(header.data_offset)
        dec = EvtDecoder(header.format, header.geometry, source=source,
                         evt21_legacy=header.evt21_legacy)
        size = max(os.fstat(f.fileno()).st_size - header.data_offset, 0)
        buf = bytearray(min(size, chunk_bytes) or 1)
        view = memoryview(buf)
        parts = []
        while True:
            n = f.readinto(buf)
            if not n:
                break
            parts.append(dec.decode(view[:n]))
    dec.finish()
    return header, concat_records(parts)


__all__ = [
    "FORMATS",
    "FORMAT_NAMES",
    "TRIGGER_DTYPE",
    "DecoderCounters",
    "EvtDecoder",
    "RawHeader",
    "concat_records",
    "copy_records",
    "decode_raw_file",
    "normalize_format",
    "read_raw_header",
]
