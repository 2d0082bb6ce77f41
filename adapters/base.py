"""The EventSource protocol, time-window / count batching, and ``open_source(uri)`` dispatch.

A source produces *chunks* (whatever its decoder hands out: arrays of EVENT_DTYPE plus
counters and how far sensor time is known to have advanced); this module validates them
(nothing invalid reaches the network) and cuts them into ``EventBatch``es that tile time
with half-open spans, following the stream contract in ``augury.events``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from augury.events import (
    EVENT_DTYPE,
    Counters,
    EventBatch,
    SensorGeometry,
    concat_records,
    empty_events,
    take_events,
    validate_events,
)


@dataclass
class Chunk:
    """One piece of decoded input.

    events: EVENT_DTYPE (n,), nominally sorted by t (validation drops/reorders the rest);
    counters: read/dropped/malformed while decoding this piece;
    t_known_us: sensor time known to have been reached (e.g. a time-high word with no
    events), or None; lets empty spans be emitted while the sensor is silent;
    restart: the stream's clock restarts with this chunk (a new sender session, a
    reconnected camera): its times are not compared with earlier ones, and batching starts
    afresh at its first event.
    """

    events: np.ndarray
    counters: Counters = field(default_factory=Counters)
    t_known_us: int | None = None
    restart: bool = False


class EventSource:
    """Base class of every source: subclasses implement ``chunks()``.

    Attributes set by subclasses: ``uri`` (str), ``geometry`` (SensorGeometry),
    ``format`` (human-readable name such as "EVT 3.0"). ``totals`` accumulates counters over
    everything batched so far. Sources are context managers; ``close()`` releases files,
    sockets and threads and is idempotent.
    """

    uri: str = ""
    geometry: SensorGeometry
    format: str = ""
    reorder_window_us: int = 0

    def __init__(self) -> None:
        self.totals = Counters()

    # -- to implement -------------------------------------------------------------------
    def chunks(self) -> Iterator[Chunk]:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (default: nothing)."""

    # -- provided -----------------------------------------------------------------------
    def __enter__(self) -> EventSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def batches(
        self, *, batch_us: int | None = None, batch_events: int | None = None
    ) -> Iterator[EventBatch]:
        """Validated batches of ``batch_us`` µs of sensor time, or of ~``batch_events`` events.

        At most one of batch_us / batch_events may be set (default: 10 ms windows).
        Time-window batches start at the first event's time (floored to a multiple of
        batch_us) and tile time without gaps, including empty windows. Count batches hold
        at most batch_events events, except that events sharing the last timestamp are kept
        together.
        """
        if batch_us is not None and batch_events is not None:
            raise ValueError("set at most one of batch_us and batch_events")
        if batch_us is None and batch_events is None:
            batch_us = 10_000
        if batch_us is not None and batch_us <= 0:
            raise ValueError(f"batch_us must be > 0, got {batch_us}")
        if batch_events is not None and batch_events <= 0:
            raise ValueError(f"batch_events must be > 0, got {batch_events}")
        validated = self._validated()
        if batch_us is not None:
            yield from _window_batches(validated, int(batch_us))
        else:
            yield from _count_batches(validated, int(batch_events))  # type: ignore[arg-type]

    def read_all(self) -> np.ndarray:
        """Every valid event of the source as one EVENT_DTYPE array (finite sources only)."""
        return concat_records([c.events for c in self._validated()])

    def _validated(self) -> Iterator[Chunk]:
        """Validated chunks, sorted across chunk boundaries.

        With a reorder window W > 0, an event may still be preceded by a later one that is
        up to W µs older, so events newer than (latest t − W) are held back and merged with
        the next chunk; ``t_known_us`` is capped accordingly. With W = 0 nothing is held.
        """
        floor: int | None = None
        window = self.reorder_window_us
        held = empty_events()
        for chunk in self.chunks():
            if chunk.restart:  # what is held belongs to the old clock: hand it out first
                if held.size:
                    yield Chunk(held, Counters(), None)
                    held = empty_events()
                floor = None
            res = validate_events(chunk.events, self.geometry, t_floor_us=floor,
                                  reorder_window_us=window)
            c = Counters(chunk.counters.read, chunk.counters.dropped + res.dropped,
                         chunk.counters.malformed)
            self.totals.add(c)
            ev = res.events
            if ev.size:
                last = int(ev["t"][-1]) if window == 0 else int(ev["t"].max())
                floor = last if floor is None else max(floor, last)
            known = chunk.t_known_us
            if window > 0:
                ev = concat_records([held, ev])
                if ev.size > 1 and held.size:
                    ev = take_events(ev, np.argsort(ev["t"], kind="stable"))
                if floor is not None:
                    safe = floor - window
                    cut = int(np.searchsorted(ev["t"], safe, side="right"))
                    ev, held = ev[:cut], ev[cut:]
                    if held.size:
                        known = safe if known is None else min(known, safe)
            yield Chunk(ev, c, known, chunk.restart)
        if held.size:
            yield Chunk(held, Counters(), None)


MAX_EMPTY_WINDOWS = 1000
"""A silence longer than this many windows is sent as one empty batch (see below)."""


def _skip_empty_gap(buf: np.ndarray, start: int, known: int, batch_us: int) -> int:
    """Start of the window holding the next event (or the known time) when more than
    MAX_EMPTY_WINDOWS windows in between are all empty; ``start`` otherwise. One empty batch
    then covers a long silence (or a corrupt far-future timestamp) instead of millions of
    empty windows."""
    nxt = int(buf["t"][0]) if buf.size else known
    jump = (min(nxt, known) // batch_us) * batch_us
    return jump if jump > start + MAX_EMPTY_WINDOWS * batch_us else start


def _window_batches(chunks: Iterator[Chunk], batch_us: int) -> Iterator[EventBatch]:
    """Cut validated chunks into consecutive [start, start + batch_us) windows.

    Windows tile time; a run of more than MAX_EMPTY_WINDOWS empty windows is merged into a
    single empty batch (its span is then a multiple of batch_us). A window is emitted once
    the known sensor time (latest event or ``t_known_us``) reaches its end; at the end of
    the stream, up to the window holding the last event.
    """
    seq = 0
    start: int | None = None
    pending: list[np.ndarray] = []
    counters = Counters()
    restart = False  # the next batch is the first after a restart of the clock

    def emit_until(known: int) -> Iterator[EventBatch]:
        nonlocal seq, start, pending, counters, restart
        assert start is not None  # set before the first call (not input validation)
        while start + batch_us <= known:
            buf = concat_records(pending)
            end = _skip_empty_gap(buf, start, known, batch_us)
            if end == start:
                end = start + batch_us
            cut = int(np.searchsorted(buf["t"], end, side="left"))
            yield EventBatch(buf[:cut], start, end, seq, counters, restart)
            counters = Counters()
            restart = False
            seq += 1
            pending = [buf[cut:]] if cut < buf.size else []
            start = end

    last_t: int | None = None
    for chunk in chunks:
        if chunk.restart and start is not None:  # close the old clock's windows, start anew
            if last_t is not None:
                yield from emit_until((last_t // batch_us + 1) * batch_us)
            start, last_t, pending, restart = None, None, [], True
        counters.add(chunk.counters)
        ev = chunk.events
        known = chunk.t_known_us
        if ev.size:
            pending.append(ev)
            last_t = int(ev["t"][-1])
            known = last_t if known is None else max(known, last_t)
        if known is None:
            continue
        if start is None:
            first = int(pending[0]["t"][0]) if pending else known
            start = (first // batch_us) * batch_us
        yield from emit_until(known)
    if start is not None and last_t is not None:
        yield from emit_until((last_t // batch_us + 1) * batch_us)


def _count_batches(chunks: Iterator[Chunk], n: int) -> Iterator[EventBatch]:
    """Cut validated chunks into batches of at most n events (ties kept together)."""
    seq = 0
    start: int | None = None
    buf = empty_events()
    counters = Counters()
    restart = False  # the next batch is the first after a restart of the clock
    for chunk in chunks:
        if chunk.restart and start is not None:  # the old clock's last batch, then anew
            if buf.size:
                yield EventBatch(buf, start, int(buf["t"][-1]) + 1, seq, counters)
                counters = Counters()
                seq += 1
            buf, start, restart = empty_events(), None, True
        counters.add(chunk.counters)
        if chunk.events.size:
            buf = concat_records([buf, chunk.events])
            if start is None:
                start = int(buf["t"][0])
        while buf.size > n:
            t_cut = int(buf["t"][n])
            cut = int(np.searchsorted(buf["t"], t_cut, side="left"))
            if cut == 0:  # more than n events share one timestamp: keep them together
                cut = int(np.searchsorted(buf["t"], t_cut, side="right"))
                if cut >= buf.size:
                    break
                t_cut = int(buf["t"][cut])
            yield EventBatch(buf[:cut], start, t_cut, seq, counters,  # type: ignore[arg-type]
                             restart)
            counters = Counters()
            restart = False
            seq += 1
            start = t_cut
            buf = buf[cut:]
    if buf.size:
        yield EventBatch(buf, start, int(buf["t"][-1]) + 1, seq, counters,  # type: ignore[arg-type]
                         restart)


class ArraySource(EventSource):
    """A source over an in-memory EVENT_DTYPE array, handed out in chunks of ``chunk_events``."""

    def __init__(self, events: np.ndarray, geometry: SensorGeometry, *, uri: str = "memory://",
                 format: str = "array", chunk_events: int = 1 << 16) -> None:
        super().__init__()
        if events.dtype != EVENT_DTYPE:
            raise TypeError(f"ArraySource needs EVENT_DTYPE, got {events.dtype}")
        self.events = events
        self.geometry = geometry
        self.uri = uri
        self.format = format
        self.chunk_events = chunk_events

    def chunks(self) -> Iterator[Chunk]:
        for i in range(0, self.events.size, self.chunk_events):
            ev = self.events[i:i + self.chunk_events]
            yield Chunk(ev, Counters(read=int(ev.size)))


# Where each scheme lives; modules are imported only when their scheme is used, so optional
# dependencies (cameras, dv-processing) never load unless asked for.
_SCHEMES: dict[str, str] = {
    "synthetic": "augury.adapters.synthetic:open_synthetic",
    "file": "augury.adapters.files:open_file",
    "udp": "augury.adapters.udp:open_udp",
    "tail": "augury.adapters.tail:open_tail",
    "faery": "augury.adapters.live:open_faery",
    "dv": "augury.adapters.live:open_dv",
    "metavision": "augury.adapters.live:open_metavision",
}


def _resolve(target: str) -> Any:
    mod, _, name = target.partition(":")
    return getattr(importlib.import_module(mod), name)


def parse_uri(uri: str) -> tuple[str, str, dict[str, str]]:
    """Split a source URI into (scheme, location, query options).

    A plain path (no ``scheme://``) is scheme "file". ``synthetic://bars?seed=3`` gives
    ("synthetic", "bars", {"seed": "3"}).
    """
    if "://" not in uri:
        return "file", uri, {}
    parts = urlsplit(uri)
    location = parts.netloc + parts.path
    return parts.scheme.lower(), location, dict(parse_qsl(parts.query))


def open_source(uri: str | Path, **options: Any) -> EventSource:
    """Open any event source by URI or path.

    Schemes: ``synthetic://KIND?opts``, ``udp://host:port``, ``tail://PATH`` (a .raw file
    still being written), ``faery://[inivation|prophesee]``, ``dv://camera[/SERIAL]``,
    ``dv://HOST:PORT`` (DV network stream), ``metavision://[SERIAL]`` (OpenEB),
    ``file://PATH`` or a plain path (dispatched by suffix: .raw, .dat,
    .aedat, .aedat4, .bin, .bs2, .npy, .npz, .csv, .txt). Keyword options override URI
    query options. Raises ValueError for an unknown scheme, FileNotFoundError for a missing
    file and EventFormatError for an unreadable one.
    """
    scheme, location, query = parse_uri(str(uri))
    if scheme not in _SCHEMES:
        raise ValueError(f"unknown source scheme {scheme!r} in {uri!r}; "
                         f"known: {', '.join(sorted(_SCHEMES))}")
    opener = _resolve(_SCHEMES[scheme])
    return opener(location, **{**query, **options})
