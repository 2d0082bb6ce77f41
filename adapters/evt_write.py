"""Spec-correct Prophesee ``.raw`` writers: EVT 3.0 and EVT 2.0.

File = header lines ``% evt 3.0`` / ``% format EVT3;height=H;width=W`` / ``% geometry WxH``
/ ``% end``, then little-endian words (layouts in ``augury.adapters.evt``):

* EVT 3.0: EVT_TIME_HIGH (t bits 23..12) and EVT_TIME_LOW (bits 11..0) when they change,
  EVT_ADDR_Y when y changes, then runs of ≥ 5 events with the same t, y, p and increasing x
  within 32 pixels as VECT_BASE_X + VECT_12 + VECT_12 + VECT_8 (the pattern sensors emit;
  OpenEB decodes VECT_12 as the head of that triplet), other events as EVT_ADDR_X. Event
  order is kept exactly.
* EVT 2.0: EV_TIME_HIGH (t bits 33..6) when it changes, then one CD_OFF/CD_ON word per
  event (time low = t bits 5..0, x, y).

Absolute time of any size is kept: the data start with a time-high word of 0, and the time
high then walks up to each event's time in steps that every decoder can unroll — EVT 3.0:
steps of at most 1024·4096 µs, and a wrap of the 24-bit counter is always written as time
high 4095 followed by 0 (OpenEB counts a loop when the time high falls by ≥ 2048, faery only
on 4095 → 0); EVT 2.0: a wrap of the 34-bit counter is written as time high 2²⁸−1 then 0.
The first data byte is therefore never '%', so header parsers cannot mistake it for a line.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
from numba import njit

from augury.adapters.evt import concat_records, copy_records
from augury.events import EVENT_DTYPE, EventFormatError, SensorGeometry, to_events

_EVT3_STEP = 1024          # max forward step of the EVT 3.0 time high (units of 4096 µs)
_EVT2_HIGH_MAX = (1 << 28) - 1
_MAX_SIDE = 2048           # x and y are 11-bit fields in both formats

# writer state (int64 array): unrolled time high written last, time low, y (EVT 3.0)
W_HIGH = 0
W_LOW = 1
W_Y = 2


def raw_header(geometry: SensorGeometry, fmt: str) -> bytes:
    """The header a writer puts first: evt version, format with size, geometry, end."""
    version, name = {"evt3": ("3.0", "EVT3"), "evt2": ("2.0", "EVT2")}[fmt]
    w, h = geometry.width, geometry.height
    return (f"% evt {version}\n% format {name};height={h};width={w}\n"
            f"% geometry {w}x{h}\n% end\n").encode("ascii")


@njit(cache=True)
def _evt3_emit_time_high(out, n, cur, target):
    """Append EVT_TIME_HIGH words walking the unrolled time high from cur to target (>= cur).

    Forward steps are at most _EVT3_STEP; crossing a 24-bit wrap writes 4095 then 0.
    """
    while cur < target:
        nxt = min(target, cur + _EVT3_STEP)
        if (nxt >> 12) != (cur >> 12):
            last = (cur >> 12 << 12) + 4095
            if cur != last:
                out[n] = 0x8000 | 4095
                n += 1
            nxt = last + 1
        out[n] = 0x8000 | (nxt & 0xFFF)
        n += 1
        cur = nxt
    return n


@njit(cache=True)
def _vector_run(events, i):
    """End of the run of events from i that one 32-pixel EVT 3.0 vector can carry.

    A run shares t, y and p, with x strictly increasing (input order = decoded order) and
    within 32 pixels of events[i].x.
    """
    e = events[i]
    x0 = np.int64(e.x)
    j = i + 1
    while j < events.shape[0]:
        f = events[j]
        if (f.t != e.t or f.y != e.y or f.p != e.p or np.int64(f.x) <= np.int64(events[j - 1].x)
                or np.int64(f.x) - x0 >= 32):
            break
        j += 1
    return j


@njit(cache=True)
def _encode_evt3(events, state, out):
    """Encode EVENT_DTYPE events (t non-decreasing, >= the state's time) as EVT 3.0 words.

    Runs of ≥ 5 events that one vector can carry (``_vector_run``) are written as
    VECT_BASE_X + VECT_12 + VECT_12 + VECT_8 (the 32-pixel pattern sensors emit and
    OpenEB's decoder expects), other events as EVT_ADDR_X. ``out`` (uint16) must hold the
    worst case (see ``_evt3_capacity``); ``state`` is updated. Returns the words written.
    """
    cur = state[W_HIGH]
    low = state[W_LOW]
    y_cur = state[W_Y]
    n = 0
    i = 0
    while i < events.shape[0]:
        e = events[i]
        t = np.int64(e.t)
        th = t >> 12
        tl = t & 0xFFF
        if th != cur:
            n = _evt3_emit_time_high(out, n, cur, th)
            cur = th
            out[n] = 0x6000 | tl
            n += 1
            low = tl
        elif tl != low:
            out[n] = 0x6000 | tl
            n += 1
            low = tl
        y = np.int64(e.y)
        if y != y_cur:
            out[n] = y  # EVT_ADDR_Y (type 0)
            n += 1
            y_cur = y
        x0 = np.int64(e.x)
        p = np.int64(e.p)
        j = _vector_run(events, i)
        if j - i >= 5:
            mask = 0
            for k in range(i, j):
                mask |= 1 << (np.int64(events[k].x) - x0)
            out[n] = 0x3000 | (p << 11) | x0
            out[n + 1] = 0x4000 | (mask & 0xFFF)
            out[n + 2] = 0x4000 | ((mask >> 12) & 0xFFF)
            out[n + 3] = 0x5000 | ((mask >> 24) & 0xFF)
            n += 4
            i = j
        else:
            out[n] = 0x2000 | (p << 11) | x0
            n += 1
            i += 1
    state[W_HIGH] = cur
    state[W_LOW] = low
    state[W_Y] = y_cur
    return n


@njit(cache=True)
def _encode_evt2(events, state, out):
    """Encode EVENT_DTYPE events (t non-decreasing, >= the state's time) as EVT 2.0 words.

    ``out`` (uint32) must hold the worst case (see ``_evt2_capacity``); ``state`` is updated.
    Returns the number of words written.
    """
    cur = state[W_HIGH]
    n = 0
    for i in range(events.shape[0]):
        e = events[i]
        t = np.int64(e.t)
        th = t >> 6
        if th != cur:
            while (cur >> 28) < (th >> 28):  # wrap of the 34-bit counter: max, then 0
                if (cur & _EVT2_HIGH_MAX) != _EVT2_HIGH_MAX:
                    out[n] = 0x80000000 | _EVT2_HIGH_MAX
                    n += 1
                cur = ((cur >> 28) + 1) << 28
                out[n] = 0x80000000
                n += 1
            if th != cur:
                out[n] = 0x80000000 | (th & _EVT2_HIGH_MAX)
                n += 1
                cur = th
        out[n] = ((np.int64(e.p) << 28) | ((t & 0x3F) << 22) | (np.int64(e.x) << 11)
                  | np.int64(e.y))
        n += 1
    state[W_HIGH] = cur
    return n


def _evt3_capacity(n_events: int, t_from_us: int, t_to_us: int) -> int:
    """Upper bound on the EVT 3.0 words for n events spanning [t_from_us, t_to_us]."""
    gap_high = (t_to_us >> 12) - (t_from_us >> 12)
    return 4 * n_events + gap_high // _EVT3_STEP + 2 * (gap_high >> 12) + 8


def _evt2_capacity(n_events: int, t_from_us: int, t_to_us: int) -> int:
    """Upper bound on the EVT 2.0 words for n events spanning [t_from_us, t_to_us]."""
    return 2 * n_events + 2 * ((t_to_us >> 34) - (t_from_us >> 34)) + 8


class RawWriter:
    """Streaming ``.raw`` writer (EVT 3.0 or EVT 2.0); a context manager.

    ``write(events)`` takes EVENT_DTYPE (or any dtype ``augury.events.to_events`` accepts)
    with t (µs, ≥ 0) non-decreasing across calls and coordinates inside ``geometry``;
    anything else raises EventFormatError naming the file and the event. Time is written
    absolute (see the module docstring), so readers get the same t back. Events at the
    latest timestamp are held back until the next ``write``, ``flush`` or ``close``: use
    the writer as a context manager.
    """

    def __init__(self, path: str | os.PathLike[str], geometry: SensorGeometry,
                 fmt: str = "evt3") -> None:
        fmt = fmt.lower().replace(" ", "").replace(".0", "")
        if fmt not in ("evt3", "evt2"):
            raise ValueError(f"RawWriter writes 'evt3' or 'evt2', not {fmt!r}")
        if geometry.width > _MAX_SIDE or geometry.height > _MAX_SIDE:
            raise ValueError(f"EVT words address at most {_MAX_SIDE}x{_MAX_SIDE} pixels, "
                             f"not {geometry}")
        self.path = os.fspath(path)
        self.geometry = geometry
        self.format = fmt
        self.events_written = 0
        self._state = np.zeros(3, dtype=np.int64)
        self._state[W_Y] = -1
        self._last_t: int = 0
        self._pending = np.zeros(0, dtype=EVENT_DTYPE)  # events at the last t (see write)
        self._file: BinaryIO | None = open(self.path, "wb")
        self._file.write(raw_header(geometry, fmt))
        # time high 0 first: decoders start their time base (and loop count) there
        first = np.array([0x8000], "<u2") if fmt == "evt3" else np.array([0x80000000], "<u4")
        self._file.write(first.tobytes())

    def write(self, events: np.ndarray) -> None:
        """Append events (sorted by t, t ≥ the last t written).

        Events at the latest timestamp are held back until a later write or ``close()``
        (they may join a vector with events still to come), so the file's bytes do not
        depend on how the events were split into calls.
        """
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        ev = to_events(np.asarray(events), source=self.path)
        if ev.size == 0:
            return
        self._check(ev)
        self._last_t = int(ev["t"][-1])
        self.events_written += int(ev.size)
        ev = concat_records([self._pending, ev])
        cut = int(np.searchsorted(ev["t"], ev["t"][-1], side="left"))
        self._encode(ev[:cut])
        self._pending = copy_records(ev[cut:])

    def _encode(self, ev: np.ndarray) -> None:
        """Encode and write events that no later event can join."""
        if ev.size == 0:
            return
        if not ev.flags.c_contiguous:
            ev = copy_records(ev)  # one kernel specialisation (contiguous records)
        t0 = int(self._state[W_HIGH]) << 12 if self.format == "evt3" else (
            int(self._state[W_HIGH]) << 6)
        t1 = int(ev["t"][-1])
        if self.format == "evt3":
            out = np.empty(_evt3_capacity(ev.size, t0, t1), dtype="<u2")
            n = _encode_evt3(ev, self._state, out)
        else:
            out = np.empty(_evt2_capacity(ev.size, t0, t1), dtype="<u4")
            n = _encode_evt2(ev, self._state, out)
        if self._file is not None:
            self._file.write(out[:n].tobytes())

    def _check(self, ev: np.ndarray) -> None:
        """Raise EventFormatError naming the first event the format cannot hold."""
        t = ev["t"]
        g = self.geometry
        checks = (
            (t < self._last_t if self.events_written else t < 0,
             f"t before the previous event's t ({self._last_t} µs)" if self.events_written
             else "negative t"),
            (np.concatenate([[False], np.diff(t) < 0]), "t decreases"),
            (ev["x"] >= g.width, f"x outside 0..{g.width - 1}"),
            (ev["y"] >= g.height, f"y outside 0..{g.height - 1}"),
            (ev["p"] > 1, "polarity not in {0, 1}"),
        )
        for bad, what in checks:
            if np.any(bad):
                i = int(np.argmax(bad))
                raise EventFormatError(f"event {i} (t={int(t[i])} µs): {what}",
                                       source=self.path)

    def flush(self) -> None:
        """Write every event accepted so far (held-back ones too) and flush the file.

        Later events at the same timestamp then start new vectors (still decoded exactly).
        """
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        self._encode(self._pending)
        self._pending = self._pending[:0]
        self._file.flush()

    def close(self) -> None:
        """Write the held-back events, then close the file (idempotent)."""
        if self._file is not None:
            try:
                self._encode(self._pending)
                self._pending = self._pending[:0]
            finally:
                self._file.close()
                self._file = None

    def __enter__(self) -> RawWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_raw(path: str | os.PathLike[str], events: np.ndarray, geometry: SensorGeometry,
              fmt: str = "evt3") -> None:
    """Write events (EVENT_DTYPE, sorted by t) to a ``.raw`` file in EVT 3.0 or EVT 2.0."""
    with RawWriter(path, geometry, fmt) as w:
        w.write(events)


__all__ = ["RawWriter", "raw_header", "write_raw"]
