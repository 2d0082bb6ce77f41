"""The one event dtype at every boundary, event batches, validation and dtype converters.

Stream contract (every source follows it):

* events are ``EVENT_DTYPE`` records: ``t`` int64 µs (absolute sensor time, wraps already
  unrolled), ``x``/``y`` uint16 pixel coordinates (0 ≤ x < width, 0 ≤ y < height),
  ``p`` uint8 polarity (0 = OFF, 1 = ON);
* inside a batch, events are sorted by ``t`` (non-decreasing);
* a batch covers the half-open time span ``[t_start_us, t_end_us)``: every event has
  ``t_start_us <= t < t_end_us``; consecutive batches tile time without gaps, so an
  **empty batch** means "nothing happened in this span", and time advances on empty input;
* the sensor geometry comes from the source (header, driver, config), never from the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from augury.event_kernels import INT64_MIN, validate_kernel

EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])
"""Packed structured dtype (13 bytes/event): t µs int64, x, y uint16, p uint8 (0 OFF, 1 ON)."""


class EventFormatError(ValueError):
    """Malformed event data; the message names the source (file, stream) and the offset."""

    def __init__(self, message: str, *, source: str = "", offset: int | None = None) -> None:
        where = source or "<stream>"
        if offset is not None:
            where = f"{where} at byte offset {offset}"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.offset = offset


@dataclass(frozen=True)
class SensorGeometry:
    """Sensor size in pixels (width × height)."""

    width: int
    height: int

    def __post_init__(self) -> None:
        if not (0 < self.width <= 65535 and 0 < self.height <= 65535):
            raise ValueError(f"sensor geometry {self.width}x{self.height} is outside 1..65535")

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width), the NumPy image shape."""
        return (self.height, self.width)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass
class Counters:
    """Event accounting for one batch or, accumulated, for a whole source.

    read: events decoded from the input; dropped: decoded events removed by validation
    (outside the sensor, time going backwards beyond the reorder window, bad polarity) or by
    a full buffer; malformed: input units (words, records, datagrams) that could not be
    decoded at all and were skipped.
    """

    read: int = 0
    dropped: int = 0
    malformed: int = 0

    def add(self, other: Counters) -> None:
        self.read += other.read
        self.dropped += other.dropped
        self.malformed += other.malformed


@dataclass(frozen=True)
class EventBatch:
    """Events sorted by t covering the half-open span [t_start_us, t_end_us) (µs).

    ``events`` has dtype EVENT_DTYPE and shape (n,); ``seq`` numbers batches from 0 per
    source; ``counters`` counts what happened while this batch was produced; ``restart``:
    the source's clock restarted with this batch (a new sender session, a reconnected
    camera), so it may start before the previous batch ended.
    """

    events: np.ndarray
    t_start_us: int
    t_end_us: int
    seq: int
    counters: Counters = field(default_factory=Counters)
    restart: bool = False

    def __len__(self) -> int:
        return int(self.events.shape[0])

    @property
    def duration_us(self) -> int:
        return self.t_end_us - self.t_start_us


def empty_events(n: int = 0) -> np.ndarray:
    """A zeroed EVENT_DTYPE array of length n."""
    return np.zeros(n, dtype=EVENT_DTYPE)


def make_events(
    t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray
) -> np.ndarray:
    """Pack four equal-length columns into an EVENT_DTYPE array (no validation)."""
    n = len(t)
    if not (len(x) == len(y) == len(p) == n):
        raise ValueError(f"column lengths differ: t={n} x={len(x)} y={len(y)} p={len(p)}")
    out = np.empty(n, dtype=EVENT_DTYPE)
    out["t"] = t
    out["x"] = x
    out["y"] = y
    out["p"] = p
    return out


_T_NAMES = ("t", "ts", "timestamp")
_P_NAMES = ("p", "on", "polarity", "pol")


def _field(arr: np.ndarray, names: tuple[str, ...], what: str) -> np.ndarray:
    fields = arr.dtype.names or ()
    for n in names:
        if n in fields:
            return arr[n]
    raise ValueError(f"cannot find the {what} field: expected one of {names}, got {fields}")


def to_events(arr: np.ndarray, *, source: str = "") -> np.ndarray:
    """Convert another library's structured event array to EVENT_DTYPE.

    Accepts the dtypes of tonic (t, x, y, p), Metavision (x, y, p, t with int16 p),
    dv-processing (timestamp, x, y, polarity), expelliarmus (t, x, y, p), faery
    (t, x, y, on) and Event-Camera-Dataset float seconds (``t`` float → µs).
    Polarity values ≤ 0 map to 0 (OFF) and > 0 to 1 (ON), so {-1, 1} and {0, 1} both work.
    Raises EventFormatError if a value does not fit (negative time, coordinates > 65535).
    """
    if arr.dtype == EVENT_DTYPE:
        return arr
    if arr.dtype.names is None:
        raise EventFormatError(f"expected a structured event array, got dtype {arr.dtype}",
                               source=source)
    t = _field(arr, _T_NAMES, "time")
    x = _field(arr, ("x",), "x")
    y = _field(arr, ("y",), "y")
    p = _field(arr, _P_NAMES, "polarity")
    if np.issubdtype(t.dtype, np.floating):
        t = np.round(t * 1e6).astype(np.int64)
    for name, col, hi in (("x", x, 65535), ("y", y, 65535)):
        if col.size and (col.min() < 0 or col.max() > hi):
            raise EventFormatError(f"field {name} has values outside 0..{hi}", source=source)
    if t.size and np.asarray(t).min() < 0:
        raise EventFormatError("field t has negative timestamps", source=source)
    pv = (np.asarray(p).astype(np.int64) > 0).astype(np.uint8)
    return make_events(t.astype(np.int64), x, y, pv)


@dataclass(frozen=True)
class ValidationResult:
    """Events that passed validation and counts of what was removed, by reason."""

    events: np.ndarray
    out_of_bounds: int
    bad_polarity: int
    time_backwards: int

    @property
    def dropped(self) -> int:
        return self.out_of_bounds + self.bad_polarity + self.time_backwards


def validate_events(
    events: np.ndarray,
    geometry: SensorGeometry,
    *,
    t_floor_us: int | None = None,
    reorder_window_us: int = 0,
) -> ValidationResult:
    """Keep only events that may reach the network.

    Removes events outside the sensor, with polarity not in {0, 1}, or older than
    ``max(t_floor_us, latest kept t) - reorder_window_us`` (time going backwards). Events out
    of order by at most ``reorder_window_us`` are re-sorted (stable). ``events`` must have
    dtype EVENT_DTYPE, shape (n,). When nothing is removed or reordered the input array
    itself is returned (no copy: validation costs one pass, ~ns per event).
    """
    if events.dtype != EVENT_DTYPE:
        raise TypeError(f"validate_events needs EVENT_DTYPE, got {events.dtype}")
    if events.size == 0:
        return ValidationResult(events, 0, 0, 0)
    keep = np.empty(events.shape[0], dtype=np.bool_)
    floor = INT64_MIN if t_floor_us is None else int(t_floor_us)
    n_oob, n_badp, n_back, needs_sort = validate_kernel(
        events["t"], events["x"], events["y"], events["p"], geometry.width, geometry.height,
        floor, int(reorder_window_us), keep)
    ev = events
    if n_oob or n_badp or n_back:
        ev = take_events(events, keep)
    if needs_sort:
        ev = take_events(ev, np.argsort(ev["t"], kind="stable"))
    return ValidationResult(ev, int(n_oob), int(n_badp), int(n_back))


def _rows(a: np.ndarray) -> np.ndarray:
    """(n, itemsize) uint8 view of a contiguous structured array."""
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(a.shape[0], a.dtype.itemsize)


def take_events(events: np.ndarray, index: np.ndarray) -> np.ndarray:
    """events[index] (bool mask or integer indices) at memcpy speed.

    NumPy copies packed structured arrays field by field (tens of times slower than
    memcpy); indexing rows of a uint8 view moves whole records instead.
    """
    return np.ascontiguousarray(_rows(events)[index]).view(events.dtype).reshape(-1)


def concat_records(parts: list[np.ndarray], dtype: np.dtype = EVENT_DTYPE) -> np.ndarray:
    """Concatenate contiguous structured arrays of one packed dtype at memcpy speed."""
    parts = [p for p in parts if p.size]
    if not parts:
        return np.zeros(0, dtype=dtype)
    if len(parts) == 1:
        return parts[0]
    raw = np.concatenate([np.ascontiguousarray(p).view(np.uint8) for p in parts])
    return raw.view(dtype)


def copy_records(a: np.ndarray) -> np.ndarray:
    """A contiguous copy of a structured array at memcpy speed (see ``take_events``)."""
    out = np.empty(a.shape[0], dtype=a.dtype)
    out.view(np.uint8)[:] = np.ascontiguousarray(a).view(np.uint8)
    return out


def check_events(events: np.ndarray, geometry: SensorGeometry, *, source: str = "") -> None:
    """Raise EventFormatError naming the first invalid event (index and field), if any."""
    if events.dtype != EVENT_DTYPE:
        raise EventFormatError(f"dtype is {events.dtype}, expected EVENT_DTYPE", source=source)
    checks = (
        ("x", events["x"] >= geometry.width, f"x outside 0..{geometry.width - 1}"),
        ("y", events["y"] >= geometry.height, f"y outside 0..{geometry.height - 1}"),
        ("p", events["p"] > 1, "polarity not in {0, 1}"),
    )
    for _name, bad, what in checks:
        if np.any(bad):
            i = int(np.argmax(bad))
            raise EventFormatError(f"event {i}: {what}", source=source)
    if events.size > 1:
        back = np.diff(events["t"]) < 0
        if np.any(back):
            i = int(np.argmax(back)) + 1
            raise EventFormatError(f"event {i}: t goes backwards "
                                   f"({events['t'][i - 1]} -> {events['t'][i]} µs)", source=source)
