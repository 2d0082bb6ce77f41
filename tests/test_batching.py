"""Batching in adapters/base.py: window and count batches tile time, keep every event, do not
depend on how a source chunks its output, and validation drops and counts bad events."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from augury.adapters.base import ArraySource, Chunk, EventSource
from augury.events import EVENT_DTYPE, Counters, EventBatch, SensorGeometry, make_events

GEOM = SensorGeometry(32, 24)


class ChunkedSource(EventSource):
    """Hands out given chunks as they are (events, counters, t_known_us)."""

    def __init__(self, chunks: list[Chunk], geometry: SensorGeometry = GEOM, *,
                 reorder_window_us: int = 0) -> None:
        super().__init__()
        self._chunks = chunks
        self.geometry = geometry
        self.uri = "test://chunked"
        self.format = "test"
        self.reorder_window_us = reorder_window_us

    def chunks(self) -> Iterator[Chunk]:
        yield from self._chunks


def split(events: np.ndarray, cuts: list[int], known: list[bool] | None = None) -> list[Chunk]:
    """Chunks of events cut at the given indices; t_known_us set to the next event's time on
    the chunks flagged in ``known`` (a promise that no earlier event follows)."""
    bounds = [0, *sorted({min(c, events.size) for c in cuts}), events.size]
    chunks = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        t_known = None
        if known is not None and known[i % len(known)] and b < events.size:
            t_known = int(events["t"][b])
        chunks.append(Chunk(events[a:b], Counters(read=b - a), t_known))
    return chunks


@st.composite
def sorted_events(draw: st.DrawFn, max_n: int = 300,
                  steps_us: tuple[int, ...] = (0, 0, 1, 3, 17, 250, 4_000, 60_000)
                  ) -> np.ndarray:
    """Sorted in-sensor events (ties included) starting anywhere in [0, 1e12] µs."""
    n = draw(st.integers(0, max_n))
    t0 = draw(st.integers(0, 10**12))
    steps = draw(st.lists(st.sampled_from(steps_us), min_size=n, max_size=n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return make_events(t0 + np.cumsum(np.array(steps, dtype=np.int64)),
                       rng.integers(0, GEOM.width, n), rng.integers(0, GEOM.height, n),
                       rng.integers(0, 2, n))


cuts_st = st.lists(st.integers(0, 300), max_size=12)
known_st = st.lists(st.booleans(), min_size=1, max_size=4)


def expected_windows(events: np.ndarray, batch_us: int) -> list[tuple[int, int, np.ndarray]]:
    """Reference: windows [k·b, (k + 1)·b) from the first event's window to the last one's."""
    if events.size == 0:
        return []
    first = int(events["t"][0]) // batch_us
    last = int(events["t"][-1]) // batch_us
    k = events["t"] // batch_us
    return [(w * batch_us, (w + 1) * batch_us, events[k == w]) for w in range(first, last + 1)]


def as_tuples(batches: list[EventBatch]) -> list[tuple[int, int, bytes]]:
    return [(b.t_start_us, b.t_end_us, b.events.tobytes()) for b in batches]


# -- time windows -------------------------------------------------------------------------------

# windows of 1 and 7 µs only over short spans, so that examples stay small (≤ ~20k windows)
@given(st.one_of(
    st.tuples(sorted_events(), st.sampled_from([10_000, 65_536, 1_000_000])),
    st.tuples(sorted_events(steps_us=(0, 0, 1, 3, 17, 50)), st.sampled_from([1, 7, 100]))),
    cuts_st, known_st)
@settings(max_examples=150, deadline=None)
def test_window_batches_tile_time_and_match_reference(
        events_batch: tuple[np.ndarray, int], cuts: list[int], known: list[bool]) -> None:
    events, batch_us = events_batch
    src = ChunkedSource(split(events, cuts, known))
    batches = list(src.batches(batch_us=batch_us))
    assert [b.seq for b in batches] == list(range(len(batches)))
    for a, b in zip(batches[:-1], batches[1:], strict=True):
        assert a.t_end_us == b.t_start_us
    for b in batches:
        assert b.t_end_us - b.t_start_us == batch_us
        assert b.events.dtype == EVENT_DTYPE
        if len(b):
            assert b.t_start_us <= b.events["t"].min() and b.events["t"].max() < b.t_end_us
    got = np.concatenate([b.events for b in batches]) if batches else events[:0]
    np.testing.assert_array_equal(got, events)
    want = expected_windows(events, batch_us)
    assert as_tuples(batches) == [(a, b, e.tobytes()) for a, b, e in want]
    assert sum(b.counters.read for b in batches) == src.totals.read == events.size


@given(sorted_events(steps_us=(0, 0, 1, 3, 17, 250, 4_000)), cuts_st, cuts_st,
       st.sampled_from([3_000, 10_000, 65_536]))
@settings(max_examples=100, deadline=None)
def test_window_batches_do_not_depend_on_chunking(events: np.ndarray, cuts_a: list[int],
                                                  cuts_b: list[int], batch_us: int) -> None:
    a = list(ChunkedSource(split(events, cuts_a)).batches(batch_us=batch_us))
    b = list(ChunkedSource(split(events, cuts_b)).batches(batch_us=batch_us))
    assert as_tuples(a) == as_tuples(b)


def test_time_advances_on_empty_input() -> None:
    ev = make_events(np.array([5]), np.array([1]), np.array([1]), np.array([1]))
    chunks = [Chunk(ev, Counters(read=1)), Chunk(ev[:0], t_known_us=35)]
    batches = list(ChunkedSource(chunks).batches(batch_us=10))
    assert [(b.t_start_us, b.t_end_us, len(b)) for b in batches] == [
        (0, 10, 1), (10, 20, 0), (20, 30, 0)]


def test_batch_arguments_are_checked() -> None:
    src = ArraySource(make_events(np.arange(3), np.zeros(3), np.zeros(3), np.ones(3)), GEOM)
    for kwargs in ({"batch_us": 0}, {"batch_events": -1}, {"batch_us": 5, "batch_events": 5}):
        with pytest.raises(ValueError):
            list(src.batches(**kwargs))


# -- event counts -------------------------------------------------------------------------------

@given(sorted_events(), cuts_st, cuts_st, st.integers(1, 40))
@settings(max_examples=150, deadline=None)
def test_count_batches_tile_time_keep_ties_and_ignore_chunking(
        events: np.ndarray, cuts_a: list[int], cuts_b: list[int], n: int) -> None:
    batches = list(ChunkedSource(split(events, cuts_a)).batches(batch_events=n))
    other = list(ChunkedSource(split(events, cuts_b)).batches(batch_events=n))
    assert as_tuples(batches) == as_tuples(other)
    assert as_tuples(batches) == as_tuples(
        list(ChunkedSource(split(events, [])).batches(batch_events=n)))
    got = np.concatenate([b.events for b in batches]) if batches else events[:0]
    np.testing.assert_array_equal(got, events)
    for a, b in zip(batches[:-1], batches[1:], strict=True):
        assert a.t_end_us == b.t_start_us
        assert a.events["t"][-1] < b.events["t"][0]  # a timestamp is never split
    for b in batches:
        assert len(b) > 0
        assert b.t_start_us <= b.events["t"][0] and b.events["t"][-1] < b.t_end_us
        if len(b) > n:  # only a run of events sharing one timestamp may exceed n
            assert b.events["t"][0] == b.events["t"][-1]
    if batches:
        # batches are as full as the ties allow: the next batch's first timestamp would
        # have overfilled this one
        for a, b in zip(batches[:-1], batches[1:], strict=True):
            if len(a) <= n:
                assert len(a) + np.count_nonzero(b.events["t"] == b.events["t"][0]) > n


# -- validation ---------------------------------------------------------------------------------

def reference_valid(events: np.ndarray, geometry: SensorGeometry) -> np.ndarray:
    """Keep events inside the sensor, p in {0, 1}, not older than the newest kept event."""
    keep = np.zeros(events.size, dtype=bool)
    newest = None
    for i, e in enumerate(events):
        if e["x"] >= geometry.width or e["y"] >= geometry.height or e["p"] > 1:
            continue
        if newest is not None and e["t"] < newest:
            continue
        keep[i] = True
        newest = e["t"]
    return events[keep]


@given(st.lists(st.tuples(st.integers(0, 5_000), st.integers(0, 40), st.integers(0, 30),
                          st.integers(0, 2)), max_size=200), cuts_st,
       st.sampled_from([None, 500, 7]))
@settings(max_examples=150, deadline=None)
def test_validation_drops_and_counts_out_of_sensor_and_backwards(
        rows: list[tuple[int, int, int, int]], cuts: list[int], batch: int | None) -> None:
    arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
    events = make_events(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])
    want = reference_valid(events, GEOM)
    src = ChunkedSource(split(events, cuts))
    batches = list(src.batches(batch_us=batch) if batch else src.batches(batch_events=5))
    got = np.concatenate([b.events for b in batches]) if batches else events[:0]
    np.testing.assert_array_equal(got, want)
    assert src.totals.read == events.size
    assert src.totals.dropped == events.size - want.size
    assert src.totals.malformed == 0
    if want.size:  # every chunk's counters are handed on in some batch
        assert sum(b.counters.read for b in batches) == events.size
        assert sum(b.counters.dropped for b in batches) == events.size - want.size
    # the same through read_all on a fresh source
    np.testing.assert_array_equal(ChunkedSource(split(events, cuts)).read_all(), want)


def test_validation_counts_land_in_batches_and_totals() -> None:
    # t = 15 goes backwards across the chunk cut; x = 99 is outside the 32-px-wide sensor
    ev = make_events(np.array([10, 20, 15, 30, 40]), np.array([1, 1, 1, 99, 3]),
                     np.array([1, 1, 1, 1, 1]), np.array([1, 0, 1, 0, 1]))
    src = ChunkedSource(split(ev, [2]))
    batches = list(src.batches(batch_us=100))
    assert len(batches) == 1
    np.testing.assert_array_equal(batches[0].events["t"], [10, 20, 40])
    assert batches[0].counters == Counters(read=5, dropped=2)
    assert src.totals == Counters(read=5, dropped=2)


def test_reordered_event_across_chunks_stays_in_its_window() -> None:
    t = np.array([0, 50, 100, 95, 120])
    ev = make_events(t, np.zeros(5), np.zeros(5), np.ones(5))
    src = ChunkedSource(split(ev, [3]), reorder_window_us=10)
    batches = list(src.batches(batch_us=10))
    for b in batches:
        if len(b):
            assert b.t_start_us <= b.events["t"].min() and b.events["t"].max() < b.t_end_us
            assert np.all(np.diff(b.events["t"]) >= 0)
    got = np.concatenate([b.events for b in batches])
    np.testing.assert_array_equal(np.sort(got["t"]), [0, 50, 95, 100, 120])


def test_far_future_timestamp_gives_one_long_empty_batch_not_millions() -> None:
    """A corrupt timestamp 10^12 µs ahead must not make the batcher emit 10^8 windows."""
    ev = make_events(np.array([0, 5, 10**12]), np.zeros(3), np.zeros(3), np.ones(3))
    batches = list(ChunkedSource(split(ev, [2])).batches(batch_us=10_000))
    assert len(batches) == 3
    gap = batches[1]
    assert len(gap) == 0 and gap.t_start_us == 10_000 and gap.t_end_us == 10**12
    assert [len(b) for b in batches] == [2, 0, 1]


@pytest.mark.parametrize("mode", ["window", "count"])
@pytest.mark.parametrize("window", [0, 2_000])
def test_a_restarted_clock_is_batched_afresh(mode: str, window: int) -> None:
    """A chunk marked ``restart`` (the source's clock started again) is not compared with
    earlier times: nothing is dropped, the old clock's events are handed out first, and the
    first batch of the new clock is marked ``restart``."""
    t_old = np.arange(100_000, 160_000, 1_000)
    t_new = np.arange(0, 40_000, 1_000)
    old = make_events(t_old, t_old % 32, np.zeros_like(t_old), np.ones_like(t_old))
    new = make_events(t_new, t_new % 32, np.ones_like(t_new), np.zeros_like(t_new))
    chunks = [Chunk(old[:30], Counters(read=30)), Chunk(old[30:], Counters(read=30)),
              Chunk(new[:20], Counters(read=20), restart=True),
              Chunk(new[20:], Counters(read=20))]
    src = ChunkedSource(chunks, reorder_window_us=window)
    bs = list(src.batches(batch_us=10_000) if mode == "window" else src.batches(batch_events=7))
    got = np.concatenate([b.events for b in bs])
    np.testing.assert_array_equal(got, np.concatenate([old, new]))
    assert src.totals.dropped == 0
    flagged = [i for i, b in enumerate(bs) if b.restart]
    assert len(flagged) == 1
    k = flagged[0]
    assert bs[k].t_start_us <= 0 < bs[k - 1].t_start_us  # the first batch on the new clock
    assert all(b.t_end_us > b.t_start_us for b in bs)
