"""Replay pacing: hand out event batches as fast as possible, or in real time × speed.

Real time maps stream time to wall time from the first batch on:

    due(batch) = wall0 + (batch.t_end_us − t0_us) / 1e6 / speed        (seconds)

where wall0 is the clock when the first batch arrives and t0_us its ``t_start_us``. A batch
is handed out no earlier than its due time (its span is complete only at its end). The
schedule is absolute, so sleeping never drifts and falling behind never accumulates sleeps:
a late batch goes out at once and its lateness is reported in ``stats``. With ``max_lag_s``
set, a lag beyond it re-anchors the schedule at the late batch (the backlog is not replayed
in a burst, as a live camera would not either); the number of re-anchors is counted.
The clock and the sleep function are arguments, so tests run on a fake clock.

>>> from augury.events import EventBatch, empty_events
>>> batches = [EventBatch(empty_events(), i * 10_000, (i + 1) * 10_000, i) for i in range(3)]
>>> slept = []
>>> it = paced(batches, pace="realtime", speed=2.0, clock=lambda: sum(slept),
...            sleep=slept.append)
>>> [b.seq for b in it], [round(s, 6) for s in slept]  # 10 ms windows held 5 ms at 2×
([0, 1, 2], [0.005, 0.005, 0.005])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from augury.events import EventBatch

PACES: tuple[str, ...] = ("asap", "realtime")


@dataclass
class PaceStats:
    """What pacing did so far (times in seconds of the given clock).

    batches: handed out; sleeps / slept_s: calls to sleep and their total; late_batches:
    batches due before they arrived; lag_s: lateness of the latest batch (0 when on time);
    max_lag_s: the largest lateness seen; resyncs: schedule re-anchors (``max_lag_s``).
    """

    batches: int = 0
    sleeps: int = 0
    slept_s: float = 0.0
    late_batches: int = 0
    lag_s: float = 0.0
    max_lag_s: float = 0.0
    resyncs: int = 0


class Paced(Iterator[EventBatch]):
    """Iterator over batches paced as in :func:`paced`; ``stats`` reports sleeps and lag."""

    def __init__(self, batches: Iterable[EventBatch], *, pace: str, speed: float,
                 clock: Callable[[], float], sleep: Callable[[float], None],
                 max_lag_s: float | None) -> None:
        if pace not in PACES:
            raise ValueError(f"pace must be one of {', '.join(PACES)}, got {pace!r}")
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a finite number > 0, got {speed!r}")
        if max_lag_s is not None and not max_lag_s >= 0:
            raise ValueError(f"max_lag_s must be >= 0 or None, got {max_lag_s!r}")
        self.pace = pace
        self.speed = float(speed)
        self.max_lag_s = max_lag_s
        self.stats = PaceStats()
        self._it = iter(batches)
        self._clock = clock
        self._sleep = sleep
        self._wall0: float | None = None
        self._t0_us = 0

    def __iter__(self) -> Paced:
        return self

    def __next__(self) -> EventBatch:
        batch = next(self._it)
        self.stats.batches += 1
        if self.pace == "realtime":
            self._wait_for(batch)
        return batch

    def due_s(self, t_us: int) -> float:
        """Wall time (clock seconds) at which stream time t_us is due; needs a first batch."""
        if self._wall0 is None:
            raise RuntimeError("no batch has been paced yet")
        return self._wall0 + (t_us - self._t0_us) / 1e6 / self.speed

    def _wait_for(self, batch: EventBatch) -> None:
        now = self._clock()
        if self._wall0 is None or batch.restart:  # a restarted clock is paced from now
            self._wall0, self._t0_us = now, batch.t_start_us
        wait_s = self.due_s(batch.t_end_us) - now
        st = self.stats
        if wait_s > 0:
            self._sleep(wait_s)
            st.sleeps += 1
            st.slept_s += wait_s
            st.lag_s = 0.0
            return
        st.lag_s = -wait_s
        st.max_lag_s = max(st.max_lag_s, st.lag_s)
        if st.lag_s > 0:
            st.late_batches += 1
        if self.max_lag_s is not None and st.lag_s > self.max_lag_s:
            self._wall0 += st.lag_s  # re-anchor: this batch becomes due now
            st.resyncs += 1

    def close(self) -> None:
        """Close the underlying iterator if it can be closed (e.g. a generator)."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def paced(batches: Iterable[EventBatch], *, pace: str = "asap", speed: float = 1.0,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep,
          max_lag_s: float | None = None) -> Paced:
    """Pace batches: "asap" passes them through; "realtime" holds each until it is due.

    due = wall0 + (t_end_us − t0_us) / 1e6 / speed seconds (see the module doc); ``clock``
    returns seconds, ``sleep`` waits seconds. The returned iterator's ``stats``
    (:class:`PaceStats`) reports sleeps and lag. Raises ValueError for an unknown pace or a
    speed that is not a finite number > 0.
    """
    return Paced(batches, pace=pace, speed=speed, clock=clock, sleep=sleep, max_lag_s=max_lag_s)
