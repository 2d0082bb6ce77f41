"""Bounded, thread-safe hand-over of event chunks from a reader thread to the engine.

``EventRing`` is a FIFO of items (EVENT_DTYPE arrays, or ``Chunk``-like objects with an
``events`` array and optional ``counters``) whose total size is bounded in *events*
(``capacity_events``) and in items (``max_items``, so that empty heartbeat chunks cannot
grow without bound either). When it is full, ``overflow`` decides:

* ``"drop_oldest"`` (default): evict the oldest items until the new one fits; the engine
  always sees the freshest data, which is what a live sensor wants;
* ``"drop_newest"``: refuse the new item (``put`` returns False);
* ``"block"``: ``put`` waits (up to its timeout) for room; nothing is ever dropped.

Every event and item dropped is counted (``dropped_events``, ``dropped_chunks``), and the
counters of dropped chunks (events read, malformed units) are accumulated so that a
consumer can fold them into its own accounting with ``take_dropped()``: a loss is never
silent. ``close()`` wakes every waiter; ``get`` then drains what is left and returns None.

``ThreadedSource`` runs any producer of chunks (an ``EventSource`` or a callable taking a
stop ``threading.Event`` and returning an iterator of chunks) in a reader thread that fills
an ``EventRing``; its ``chunks()`` drains the ring, folds ring drops into the chunk
counters and re-raises in the consumer any exception raised by the reader thread.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from augury.adapters.base import Chunk, EventSource
from augury.events import Counters, SensorGeometry, empty_events

OVERFLOW_POLICIES = ("drop_oldest", "drop_newest", "block")

Producer = Callable[[threading.Event], Iterator[Chunk]]
"""A chunk producer: called once in the reader thread with a stop event it should poll."""


def item_events(item: Any) -> int:
    """Number of events carried by a ring item: an array's length, an object's ``.events``
    length, else 0 (such items are bounded by ``max_items`` only)."""
    events = item if isinstance(item, np.ndarray) else getattr(item, "events", None)
    return int(events.shape[0]) if isinstance(events, np.ndarray) and events.ndim else 0


def _item_counters(item: Any, n: int) -> Counters:
    """The item's own counters; a bare array of n events counts as n events read."""
    c = getattr(item, "counters", None)
    return c if isinstance(c, Counters) else Counters(read=n)


def _keep_newest(item: Any, n: int) -> Any:
    """The item restricted to its last n events (same type: array or dataclass copy)."""
    if isinstance(item, np.ndarray):
        return item[-n:] if n else item[:0]
    events = item.events[-n:] if n else item.events[:0]
    return dataclasses.replace(item, events=events)


class EventRing:
    """Thread-safe bounded FIFO of event chunks with counted drops.

    Memory bound: at most ``capacity_events`` events and ``max_items`` items are held, except
    that in ``"block"`` mode an item larger than the whole capacity is admitted once the ring
    is empty (so the bound is max(capacity, largest item)). In ``"drop_oldest"`` mode such an
    item is cut to its newest ``capacity_events`` events; in ``"drop_newest"`` it is refused.
    """

    def __init__(self, capacity_events: int, overflow: str = "drop_oldest", *,
                 max_items: int = 4096) -> None:
        if int(capacity_events) <= 0:
            raise ValueError(f"capacity_events must be > 0, got {capacity_events}")
        if int(max_items) <= 0:
            raise ValueError(f"max_items must be > 0, got {max_items}")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}")
        self.capacity_events = int(capacity_events)
        self.max_items = int(max_items)
        self.overflow = overflow
        self._items: deque[tuple[Any, int]] = deque()
        self._n_events = 0
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self.dropped_events = 0
        self.dropped_chunks = 0
        self.high_water_events = 0
        self._pending_drop = Counters()

    # -- state ------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def n_events(self) -> int:
        """Events currently held."""
        with self._lock:
            return self._n_events

    # -- producer side ----------------------------------------------------------------------
    def put(self, item: Any, timeout: float | None = None) -> bool:
        """Append an item; True if it was accepted (possibly after evicting older items).

        Returns False if the ring is closed, if the item was refused (``drop_newest``, counted
        as dropped) or if ``block`` waited ``timeout`` seconds without room (not counted: the
        caller still holds the item). ``timeout=None`` waits forever in ``block`` mode.
        """
        n = item_events(item)
        with self._lock:
            if self._closed:
                return False
            if n > self.capacity_events and self.overflow == "drop_oldest":
                cut = n - self.capacity_events
                item = _keep_newest(item, self.capacity_events)
                self._count_drop(Counters(dropped=cut), events=cut, chunks=0)
                n = self.capacity_events
            if not self._fits(n):
                if self.overflow == "drop_newest":
                    self._count_drop(self._lost_counters(item, n), events=n, chunks=1)
                    return False
                if self.overflow == "drop_oldest":
                    while self._items and not self._fits(n):
                        old, old_n = self._items.popleft()
                        self._n_events -= old_n
                        self._count_drop(self._lost_counters(old, old_n), events=old_n,
                                         chunks=1)
                else:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while not self._closed and not self._fits(n):
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            return False
                        self._not_full.wait(remaining)
                    if self._closed:
                        return False
            self._items.append((item, n))
            self._n_events += n
            self.high_water_events = max(self.high_water_events, self._n_events)
            self._not_empty.notify()
            return True

    def _fits(self, n: int) -> bool:
        if not self._items:  # only "block" admits an item larger than the whole ring
            return n <= self.capacity_events or self.overflow == "block"
        return (self._n_events + n <= self.capacity_events
                and len(self._items) < self.max_items)

    @staticmethod
    def _lost_counters(item: Any, n: int) -> Counters:
        c = _item_counters(item, n)
        return Counters(read=c.read, dropped=c.dropped + n, malformed=c.malformed)

    def _count_drop(self, lost: Counters, *, events: int, chunks: int) -> None:
        self.dropped_chunks += chunks
        self.dropped_events += events
        self._pending_drop.add(lost)

    # -- consumer side ----------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> Any | None:
        """Oldest item, waiting up to ``timeout`` s (None: forever); None on timeout or when
        the ring is closed and empty."""
        with self._lock:
            if not self._items and not self._closed:
                if timeout is None:
                    while not self._items and not self._closed:
                        self._not_empty.wait()
                else:
                    self._not_empty.wait_for(lambda: self._items or self._closed, timeout)
            if not self._items:
                return None
            item, n = self._items.popleft()
            self._n_events -= n
            self._not_full.notify_all()  # producers may wait for different amounts of room
            return item

    def take_dropped(self) -> Counters:
        """Counters of everything dropped since the last call (read, dropped, malformed)."""
        with self._lock:
            out, self._pending_drop = self._pending_drop, Counters()
            return out

    def close(self) -> None:
        """Refuse further puts and wake every waiting producer and consumer."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()


class ThreadedSource(EventSource):
    """An EventSource whose chunks are produced by a reader thread into an ``EventRing``.

    ``inner`` is an EventSource (its ``chunks()`` is iterated in the thread and it is closed
    with this source) or a ``Producer`` callable ``f(stop_event) -> Iterator[Chunk]`` that
    should return soon after ``stop_event`` is set. ``chunks()`` yields what the thread
    produced, in order; events dropped by the ring are added to the ``dropped`` counter
    (and their read/malformed counts to the next chunk), so totals stay honest. An exception
    in the reader thread is re-raised by ``chunks()`` once the items produced before it are
    consumed. ``idle_timeout_s`` ends ``chunks()`` after that long without any item.
    ``close()`` stops the thread and joins it (``join_timeout_s``); ``thread_alive`` tells
    whether it is still running after that.
    """

    def __init__(self, inner: EventSource | Producer, ring: EventRing, *,
                 geometry: SensorGeometry | None = None, uri: str = "",
                 format: str = "", idle_timeout_s: float | None = None,
                 poll_s: float = 0.05, join_timeout_s: float = 5.0,
                 start: bool = True) -> None:
        super().__init__()
        self._inner = inner
        self.ring = ring
        if geometry is None and isinstance(inner, EventSource):
            geometry = inner.geometry
        if geometry is not None:
            self.geometry = geometry
        self.uri = uri or getattr(inner, "uri", "")
        self.format = format or getattr(inner, "format", "")
        if isinstance(inner, EventSource):
            self.reorder_window_us = inner.reorder_window_us
        self.idle_timeout_s = idle_timeout_s
        self.poll_s = float(poll_s)
        self.join_timeout_s = float(join_timeout_s)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"augury-reader {self.uri}",
                                        daemon=True)
        if start:
            self._thread.start()

    def start(self) -> None:
        """Start the reader thread (only needed with ``start=False``)."""
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    @property
    def thread_alive(self) -> bool:
        return self._thread.is_alive()

    def _produce(self) -> Iterator[Chunk]:
        if isinstance(self._inner, EventSource):
            return self._inner.chunks()
        return self._inner(self._stop)

    def _run(self) -> None:
        it: Iterator[Chunk] | None = None
        try:
            it = self._produce()
            for chunk in it:
                while not (self._stop.is_set() or self.ring.closed):
                    if self.ring.put(chunk, timeout=self.poll_s) or self.ring.overflow != "block":
                        break
                if self._stop.is_set() or self.ring.closed:
                    break
        except BaseException as exc:  # handed to the consumer by chunks(), never swallowed
            self._error = exc
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # a failing generator cleanup is an error too
                    self._error = self._error or exc
            self.ring.close()

    def chunks(self) -> Iterator[Chunk]:
        idle_since = time.monotonic()
        while True:
            item = self.ring.get(timeout=self.poll_s)
            lost = self.ring.take_dropped()
            if item is None:
                if self.ring.closed and len(self.ring) == 0:
                    if lost.read or lost.dropped or lost.malformed:
                        yield Chunk(empty_events(), lost, None)
                    if self._error is not None:
                        err, self._error = self._error, None
                        raise err
                    return
                if lost.read or lost.dropped or lost.malformed:
                    yield Chunk(empty_events(), lost, None)
                if (self.idle_timeout_s is not None
                        and time.monotonic() - idle_since >= self.idle_timeout_s):
                    self.close()
                    return
                continue
            idle_since = time.monotonic()
            chunk = (item if isinstance(item, Chunk)
                     else Chunk(item, Counters(read=item_events(item))))
            if lost.read or lost.dropped or lost.malformed:
                c = Counters(chunk.counters.read, chunk.counters.dropped, chunk.counters.malformed)
                c.add(lost)
                chunk = dataclasses.replace(chunk, counters=c)  # keeps flags and subclass
            yield chunk

    def close(self) -> None:
        """Stop the reader thread, join it (bounded wait), then close the inner source."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.ring.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.join_timeout_s)
        if isinstance(self._inner, EventSource):
            self._inner.close()
