"""Replay pacing on a fake clock: real time × speed, asap, lag without accumulated sleeps."""

from __future__ import annotations

import dataclasses

import pytest

from augury.adapters.replay import paced
from augury.events import EventBatch, empty_events


class FakeClock:
    """A clock in seconds that only moves when slept on or advanced by the test."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s
        self.sleeps: list[float] = []
        self.reads = 0

    def clock(self) -> float:
        self.reads += 1
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds


def windows(t0_us: int, batch_us: int, n: int) -> list[EventBatch]:
    return [EventBatch(empty_events(), t0_us + i * batch_us, t0_us + (i + 1) * batch_us, i)
            for i in range(n)]


@pytest.mark.parametrize("speed", [1.0, 2.0, 0.5])
def test_realtime_sleeps_until_each_batch_end_scaled_by_speed(speed: float) -> None:
    fc = FakeClock()
    out = []
    for batch in paced(windows(5_000_000, 10_000, 5), pace="realtime", speed=speed,
                       clock=fc.clock, sleep=fc.sleep):
        out.append((batch.seq, fc.now_s))
    assert [s for s, _ in out] == [0, 1, 2, 3, 4]
    # batch i is handed out when its end (i + 1) · 10 ms is due, scaled by 1 / speed
    for seq, wall in out:
        assert wall == pytest.approx(1000.0 + (seq + 1) * 0.010 / speed, abs=1e-12)
    assert fc.sleeps == pytest.approx([0.010 / speed] * 5)


def test_uneven_batches_follow_stream_time_not_batch_count() -> None:
    fc = FakeClock()
    spans = [(0, 1_000), (1_000, 31_000), (31_000, 31_500)]
    batches = [EventBatch(empty_events(), a, b, i) for i, (a, b) in enumerate(spans)]
    list(paced(batches, pace="realtime", clock=fc.clock, sleep=fc.sleep))
    assert fc.sleeps == pytest.approx([0.001, 0.030, 0.0005])


def test_asap_never_sleeps_nor_reads_the_clock() -> None:
    fc = FakeClock()
    it = paced(windows(0, 10_000, 50), pace="asap", clock=fc.clock, sleep=fc.sleep)
    assert len(list(it)) == 50
    assert fc.sleeps == [] and fc.reads == 0
    assert it.stats.batches == 50 and it.stats.sleeps == 0


def test_falling_behind_reports_lag_and_never_accumulates_sleeps() -> None:
    fc = FakeClock()
    it = paced(windows(0, 10_000, 10), pace="realtime", clock=fc.clock, sleep=fc.sleep)
    lags = []
    for batch in it:
        lags.append(it.stats.lag_s)
        if batch.seq == 2:
            fc.now_s += 0.100  # the consumer stalls for 100 ms after batch 2
    # batches 3..: due at 40, 50, ... ms but the clock is at 130 ms -> no sleeping until
    # the schedule catches up (batch 12 would be due at 130 ms); nothing is slept twice
    assert fc.sleeps == pytest.approx([0.010, 0.010, 0.010])
    assert lags[3] == pytest.approx(0.090)
    assert lags[9] == pytest.approx(0.030)
    assert it.stats.max_lag_s == pytest.approx(0.090)
    assert it.stats.late_batches == 7
    assert it.stats.slept_s == pytest.approx(0.030)


def test_max_lag_reanchors_schedule_instead_of_bursting() -> None:
    fc = FakeClock()
    it = paced(windows(0, 10_000, 6), pace="realtime", clock=fc.clock, sleep=fc.sleep,
               max_lag_s=0.050)
    for batch in it:
        if batch.seq == 1:
            fc.now_s += 0.200
    # batch 2 is 190 ms late -> re-anchored: batches 3.. are paced 10 ms apart again
    assert it.stats.resyncs == 1
    assert fc.sleeps == pytest.approx([0.010, 0.010, 0.010, 0.010, 0.010])


def test_stream_time_origin_is_the_first_batch_start() -> None:
    fc = FakeClock()
    it = paced(windows(123_456_789, 2_000, 3), pace="realtime", speed=4.0,
               clock=fc.clock, sleep=fc.sleep)
    list(it)
    assert it.due_s(123_456_789) == pytest.approx(1000.0)
    assert fc.now_s == pytest.approx(1000.0 + 0.006 / 4.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"pace": "fast"}, "pace"),
    ({"pace": "realtime", "speed": 0.0}, "speed"),
    ({"pace": "realtime", "speed": float("inf")}, "speed"),
    ({"pace": "realtime", "speed": -1.0}, "speed"),
])
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        paced([], **kwargs)


def test_paced_synthetic_source_end_to_end() -> None:
    from augury.adapters.synthetic import SceneConfig, SyntheticSource

    fc = FakeClock()
    src = SyntheticSource(SceneConfig(width=32, height=24, duration_us=None), window_us=5_000)
    it = paced(src.batches(batch_us=20_000), pace="realtime", speed=10.0,
               clock=fc.clock, sleep=fc.sleep)
    for batch in it:
        if batch.seq == 9:
            break
    it.close()
    # 10 endless-scene batches of 20 ms at 10× speed take 20 ms of (fake) wall time
    assert fc.now_s == pytest.approx(1000.0 + 10 * 0.020 / 10.0)


def test_a_restarted_clock_is_paced_from_the_restart() -> None:
    """After a batch marked ``restart`` (its source's clock started again) the replay is
    paced from that moment: the restarted stream is not replayed at full speed."""
    fc = FakeClock()
    first = windows(5_000_000, 10_000, 3)
    again = windows(0, 10_000, 3)
    again[0] = dataclasses.replace(again[0], restart=True)
    walls = [fc.now_s for _ in paced(first + again, pace="realtime", clock=fc.clock,
                                     sleep=fc.sleep)]
    steps = [b - a for a, b in zip([1000.0, *walls[:-1]], walls, strict=True)]
    assert steps == pytest.approx([0.010] * 6, abs=1e-12)
