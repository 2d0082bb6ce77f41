"""EventRing (bounded hand-over with counted drops) and ThreadedSource (reader thread)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from augury.adapters.base import ArraySource, Chunk
from augury.adapters.ring import EventRing, ThreadedSource
from augury.events import Counters, EventFormatError, SensorGeometry, make_events

GEOM = SensorGeometry(32, 24)
JOIN_S = 5.0


def _events(t0: int, n: int) -> np.ndarray:
    """n events with consecutive times from t0 (the time identifies the event)."""
    t = np.arange(t0, t0 + n, dtype=np.int64)
    return make_events(t, t % GEOM.width, t % GEOM.height, t % 2)


def _chunk(t0: int, n: int) -> Chunk:
    return Chunk(_events(t0, n), Counters(read=n))


def _run(target: object, *args: object) -> threading.Thread:
    th = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
    th.start()
    return th


def test_fifo_order_and_get_timeout() -> None:
    ring = EventRing(100)
    for k in range(3):
        assert ring.put(_events(10 * k, 5))
    got = [ring.get(timeout=1.0) for _ in range(3)]
    assert [int(g["t"][0]) for g in got] == [0, 10, 20]
    assert ring.get(timeout=0.01) is None
    assert ring.n_events == 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity_events"):
        EventRing(0)
    with pytest.raises(ValueError, match="overflow"):
        EventRing(10, "drop_random")


def test_drop_oldest_keeps_the_newest_and_counts_drops() -> None:
    ring = EventRing(100, "drop_oldest")
    for k in range(10):
        assert ring.put(_chunk(100 * k, 30))
    assert ring.n_events <= 100 and ring.high_water_events <= 100
    assert ring.dropped_chunks == 7 and ring.dropped_events == 210
    lost = ring.take_dropped()
    assert (lost.read, lost.dropped) == (210, 210)
    assert ring.take_dropped() == Counters()
    kept = [ring.get(timeout=1.0) for _ in range(3)]
    assert [int(c.events["t"][0]) for c in kept] == [700, 800, 900]


def test_dropped_bare_arrays_count_as_read_and_dropped() -> None:
    ring = EventRing(10, "drop_oldest")
    for k in range(3):
        ring.put(_events(10 * k, 10))
    assert ring.take_dropped() == Counters(read=20, dropped=20)


def test_drop_newest_refuses_and_counts() -> None:
    ring = EventRing(50, "drop_newest")
    assert ring.put(_chunk(0, 40))
    assert not ring.put(_chunk(100, 20))
    assert ring.put(_chunk(200, 10))
    assert (ring.dropped_chunks, ring.dropped_events) == (1, 20)
    assert [int(ring.get(1.0).events["t"][0]) for _ in range(2)] == [0, 200]


def test_item_count_is_bounded_too() -> None:
    ring = EventRing(1000, "drop_newest", max_items=2)
    assert ring.put(_chunk(0, 0)) and ring.put(_chunk(0, 0))
    assert not ring.put(_chunk(0, 0))
    assert ring.dropped_chunks == 1 and ring.dropped_events == 0


def test_oversize_item_per_policy() -> None:
    big = _chunk(0, 250)
    ring = EventRing(100, "drop_oldest")
    assert ring.put(big)
    got = ring.get(1.0)
    np.testing.assert_array_equal(got.events["t"], np.arange(150, 250))
    assert ring.dropped_events == 150 and ring.dropped_chunks == 0
    ring = EventRing(100, "drop_newest")
    ring.put(_chunk(0, 10))
    assert not ring.put(big)
    assert ring.dropped_events == 250
    ring = EventRing(100, "block")
    assert ring.put(big, timeout=0.5)  # an empty ring admits it whole: nothing is lost
    assert ring.get(1.0).events.size == 250


def test_block_waits_for_room_and_times_out_without_counting() -> None:
    ring = EventRing(10, "block")
    assert ring.put(_events(0, 10))
    assert not ring.put(_events(10, 5), timeout=0.02)
    assert ring.dropped_events == 0
    result: list[bool] = []
    th = _run(lambda: result.append(ring.put(_events(10, 5), timeout=JOIN_S)))
    assert ring.get(timeout=1.0) is not None  # frees room: the producer proceeds
    th.join(JOIN_S)
    assert not th.is_alive() and result == [True]
    assert int(ring.get(1.0)["t"][0]) == 10


def test_close_wakes_every_waiter() -> None:
    empty = EventRing(10, "block")
    full = EventRing(10, "block")
    full.put(_events(0, 10))
    results: list[object] = []
    consumers = [_run(lambda: results.append(empty.get(None))) for _ in range(2)]
    producers = [_run(lambda: results.append(full.put(_events(0, 5), None))) for _ in range(2)]
    empty.close()
    full.close()
    for th in consumers + producers:
        th.join(JOIN_S)
        assert not th.is_alive()
    assert sorted(map(str, results)) == ["False", "False", "None", "None"]
    assert not full.put(_events(0, 1)) and full.get(0.01) is not None  # drains what is left
    assert full.get(0.01) is None


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 80), max_size=40), capacity=st.integers(1, 100),
       policy=st.sampled_from(["drop_oldest", "drop_newest"]),
       gets=st.lists(st.booleans(), max_size=40))
def test_accounting_invariant(sizes: list[int], capacity: int, policy: str,
                              gets: list[bool]) -> None:
    """Every event put is either consumed, still held, or counted as dropped."""
    ring = EventRing(capacity, policy)
    consumed = 0
    for i, n in enumerate(sizes):
        ring.put(_chunk(1000 * i, n))
        assert ring.n_events <= capacity
        if i < len(gets) and gets[i]:
            item = ring.get(timeout=0)
            consumed += item.events.size if item is not None else 0
    assert consumed + ring.n_events + ring.dropped_events == sum(sizes)
    assert ring.take_dropped().dropped == ring.dropped_events


def test_fast_producer_slow_consumer_drops_bounded_no_deadlock() -> None:
    """The consumer starts only after the producer has produced everything."""
    done = threading.Event()
    n_chunks, size, capacity = 500, 100, 1000

    def produce(stop: threading.Event) -> Iterator[Chunk]:
        for k in range(n_chunks):
            yield _chunk(k * size, size)
        done.set()

    ring = EventRing(capacity, "drop_oldest")
    src = ThreadedSource(produce, ring, geometry=SensorGeometry(1 << 15, 1 << 15))
    assert done.wait(JOIN_S)
    got = list(src.chunks())
    src.close()
    assert not src.thread_alive
    events = np.concatenate([c.events for c in got if c.events.size])
    # exactly the newest `capacity` events survive, in order, and every loss is counted
    np.testing.assert_array_equal(events["t"], np.arange((n_chunks - 10) * size, n_chunks * size))
    assert ring.high_water_events <= capacity
    assert ring.dropped_events == n_chunks * size - capacity
    totals = Counters()
    for c in got:
        totals.add(c.counters)
    assert totals.read == n_chunks * size  # dropped chunks' reads are folded in, not lost
    assert totals.dropped == ring.dropped_events


def test_lossless_block_mode_over_an_array_source() -> None:
    ev = _events(0, 50_000)
    src = ThreadedSource(ArraySource(ev, SensorGeometry(1 << 15, 1 << 15), chunk_events=777),
                         EventRing(2000, "block"))
    out = src.read_all()
    src.close()
    assert not src.thread_alive
    np.testing.assert_array_equal(out, ev)
    assert src.ring.dropped_events == 0 and src.totals.read == ev.size


def test_reader_error_reaches_the_consumer_after_earlier_chunks() -> None:
    def produce(stop: threading.Event) -> Iterator[Chunk]:
        yield _chunk(0, 5)
        yield _chunk(5, 5)
        raise EventFormatError("bad word", source="cam.raw", offset=1234)

    src = ThreadedSource(produce, EventRing(100), geometry=GEOM)
    seen = []
    with pytest.raises(EventFormatError, match="cam.raw at byte offset 1234"):
        for c in src.chunks():
            seen.append(c.events.size)
    src.close()
    assert seen == [5, 5] and not src.thread_alive


def test_close_stops_an_endless_producer_even_when_blocked() -> None:
    def endless(stop: threading.Event) -> Iterator[Chunk]:
        k = 0
        while not stop.is_set():
            yield _chunk(k, 10)
            k += 10

    for policy in ("block", "drop_oldest"):
        src = ThreadedSource(endless, EventRing(50, policy), geometry=SensorGeometry(999, 999))
        it = src.chunks()
        first = [int(next(it).events["t"][0]) for _ in range(3)]
        src.close()
        assert not src.thread_alive
        if policy == "block":  # lossless: the consumer sees the very first chunks
            assert first == [0, 10, 20]
        else:
            assert first == sorted(first)
        src.close()  # idempotent


def test_idle_timeout_ends_the_stream_and_the_thread() -> None:
    def one_then_wait(stop: threading.Event) -> Iterator[Chunk]:
        yield _chunk(0, 3)
        stop.wait(JOIN_S)

    src = ThreadedSource(one_then_wait, EventRing(10), geometry=GEOM, idle_timeout_s=0.1)
    got = list(src.chunks())
    assert [c.events.size for c in got] == [3]
    assert not src.thread_alive


def test_a_restart_survives_the_folding_of_ring_drops() -> None:
    """The first chunk after dropped ones carries their counts; if it restarts the stream's
    clock (a new sender session), it must still say so, or the restart is lost."""
    import dataclasses

    done = threading.Event()
    size, capacity = 100, 1000

    def produce(stop: threading.Event) -> Iterator[Chunk]:
        for k in range(20):
            c = _chunk(k * size, size)
            yield dataclasses.replace(c, restart=True) if k == 10 else c
        done.set()

    ring = EventRing(capacity, "drop_oldest")
    src = ThreadedSource(produce, ring, geometry=SensorGeometry(1 << 15, 1 << 15))
    assert done.wait(JOIN_S)
    got = [c for c in src.chunks() if c.events.size]
    src.close()
    assert got[0].events["t"][0] == 10 * size and got[0].counters.dropped > 0
    assert got[0].restart and not any(c.restart for c in got[1:])
