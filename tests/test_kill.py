"""The kill test (issue 10): SIGKILL `augury run` at seeded random moments of a replay with
frequent checkpoints, several times in a row, then let the last run finish.

Every restart must resume from the newest valid checkpoint in the state directory, lose at
most one checkpoint interval of learning, and process the rest of the stream. A replayed
recording starts again from its beginning after a restart, so "the rest" is the whole
recording: the last, unkilled run processes every event of it as one stream restart (a
resume), with nothing skipped.

Learning is tracked with the network's cumulative event counter (``counters[C_EVENTS]``,
saved in every checkpoint and kept across stream restarts). The test polls ``status`` on the
control socket until the kill, so that it knows what the killed run had processed. Loss of
one kill, in seconds of the killed run's engine time: from the later of the used
checkpoint's state (``created_unix_s`` in its record) and the killed run's engine start,
to the kill. Bound: one checkpoint interval plus ``WRITE_SLACK_S`` (a kill while a due
checkpoint is being written loses that one, so the previous one is used).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from augury.checkpoint import load_latest
from augury.control import ControlClient
from augury.model.state import C_EVENTS

RECORDING = ("inivation", "davis240c_rotdisk.aedat")
RECORDING_EVENTS = 374_296
SEED = 20261204
KILLS = 6
EVERY_S = 0.3
"""Checkpoint period (s of wall clock)."""
WRITE_SLACK_S = 0.25
"""Allowed beyond one checkpoint interval (s): writing a 4.9 MB checkpoint, status lag."""
KILL_AFTER_S = (0.05, 2.8)
"""A kill lands uniformly this long after the run's engine started (s); the replay is paced
in real time (the recording spans 3.17 s), so that the kills spread over the whole of it
whatever the machine's speed (as fast as possible it takes 0.7 to 3 s)."""

ENDPOINT_RE = re.compile(r"control on (tcp://127\.0\.0\.1:\d+)")
RESUMED_RE = re.compile(r"resumed from (\S+\.npz)")


@dataclass
class Run:
    """One `augury run` subprocess and what its log says (stderr is drained by a thread)."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    control: str | None = None
    resumed_from: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)

    def drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if m := RESUMED_RE.search(line):
                self.resumed_from = m.group(1)
            if m := ENDPOINT_RE.search(line):
                self.control = m.group(1)
                self.ready.set()
        self.ready.set()  # EOF: the process ended


_SPAWNED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _kill_leftover_daemons() -> Iterator[None]:
    """Whatever a test asserts, no daemon it started outlives it."""
    yield
    while _SPAWNED:
        proc = _SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def _spawn(src: Path, state: Path) -> Run:
    cmd = [sys.executable, "-m", "augury.cli", "run", str(src), "--pace", "realtime",
           "--publish", "tcp://127.0.0.1:*", "--control", "tcp://127.0.0.1:*",
           "--state-dir", str(state), "--set", f"checkpoint.every_s={EVERY_S}",
           "--set", "checkpoint.keep=3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _SPAWNED.append(proc)
    run = Run(proc)
    threading.Thread(target=run.drain, daemon=True).start()
    if not run.ready.wait(300.0) or run.control is None:  # a cold numba cache compiles
        proc.kill()
        raise AssertionError("daemon never said where its control socket is:\n"
                             + "".join(run.lines[-30:]))
    return run


def _created_unix_s(path: Path) -> float:
    """When the checkpoint's state was taken (its record's ``created_unix_s``, wall s)."""
    with np.load(path, allow_pickle=False) as z:
        return float(json.loads(bytes(z["__meta__"]).decode())["created_unix_s"])


def _newest_valid(state: Path) -> tuple[str | None, int, float]:
    """(path, cumulative events learned, state time in wall s) of the newest valid one."""
    found = load_latest(state, require_finite=True)
    if found is None:
        return None, 0, 0.0
    return (str(found.path), int(found.arrays["counters"][C_EVENTS]),
            _created_unix_s(found.path))


def test_sigkill_during_a_replay_resumes_from_the_newest_checkpoint(
        tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = shared_data.joinpath(*RECORDING)
    state = tmp_path / "state"
    rng = np.random.default_rng(SEED)
    t_test = time.monotonic()
    used: list[str | None] = []
    losses_s: list[float] = []
    lost_events: list[int] = []
    refed_events = 0
    kills = 0
    expected = _newest_valid(state)  # none yet
    while kills < KILLS:
        run = _spawn(src, state)
        assert run.resumed_from == expected[0], (run.resumed_from, expected[0])
        used.append(run.resumed_from)
        learned_at_resume = expected[1]
        delay_s = float(rng.uniform(*KILL_AFTER_S))
        last: dict[str, object] | None = None
        engine_start_unix_s: float | None = None
        with ControlClient(run.control, timeout_ms=2000) as client:
            while run.proc.poll() is None:
                try:
                    reply = client.call("status")
                except TimeoutError:  # the daemon may be finishing: its exit ends the loop
                    continue
                now = time.time()
                if not reply.get("ok"):
                    continue
                last = reply
                if engine_start_unix_s is None:
                    engine_start_unix_s = now - float(reply["uptime_s"])
                if now >= engine_start_unix_s + delay_s:
                    break
        if run.proc.poll() is not None or last is None:  # the replay ended before the kill
            pytest.fail(f"run ended before its kill at {delay_s:.2f} s (exit "
                        f"{run.proc.returncode}):\n" + "".join(run.lines[-20:]))
        kill_unix_s = time.time()
        os.kill(run.proc.pid, signal.SIGKILL)
        run.proc.communicate(timeout=30)
        kills += 1
        assert engine_start_unix_s is not None
        # the killed run so far: nothing skipped, a resume counted as a stream restart
        assert last["bad_batches"] == 0, last
        if run.resumed_from is not None and int(last["batches"]) > 0:  # type: ignore[call-overload]
            assert last["stream_restarts"] == 1, last
        learned_at_kill = learned_at_resume + int(last["events_processed"])  # type: ignore[call-overload]
        refed_events += int(last["events_processed"])  # type: ignore[call-overload]
        expected = _newest_valid(state)
        assert expected[1] <= learned_at_kill  # a checkpoint never holds more than was learned
        lost_events.append(learned_at_kill - expected[1])
        losses_s.append(kill_unix_s - max(expected[2], engine_start_unix_s))
        assert losses_s[-1] <= EVERY_S + WRITE_SLACK_S, (kills, losses_s, used)

    final = _spawn(src, state)  # the last run replays the whole recording undisturbed
    assert final.resumed_from == expected[0]
    used.append(final.resumed_from)
    out, _ = final.proc.communicate(timeout=120)
    assert final.proc.returncode == 0, "".join(final.lines[-30:])
    summary = json.loads(out.strip().splitlines()[-1])["summary"]
    assert summary["events_in"] == summary["events_processed"] == RECORDING_EVENTS
    assert summary["bad_batches"] == 0
    assert summary["stream_restarts"] == (1 if expected[0] is not None else 0)
    end = _newest_valid(state)
    assert end[1] == expected[1] + RECORDING_EVENTS  # everything learned since the resume kept
    restarts = sum(1 for u in used[1:] if u is not None)
    assert restarts >= KILLS - 1  # at most the first kill comes before any checkpoint
    max_intervals = max(losses_s) / EVERY_S
    with capsys.disabled():
        print(f"\nkill test: seed {SEED}, {kills} SIGKILLs, {restarts} resumes from "
              f"{len({u for u in used if u})} distinct checkpoints "
              f"({', '.join(Path(u).name if u else 'none' for u in used)}), checkpoint "
              f"every {EVERY_S} s; learning lost per kill {lost_events} events, "
              f"{[round(s, 3) for s in losses_s]} s; max loss {max_intervals:.2f} "
              f"checkpoint intervals; events re-fed after restarts {refed_events:,}; "
              f"last run processed {summary['events_processed']:,}/{RECORDING_EVENTS:,}; "
              f"{time.monotonic() - t_test:.1f} s")
