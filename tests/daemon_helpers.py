"""Helpers for tests that run `augury run` as a child process."""

from __future__ import annotations

import re
import select
import subprocess
import time


def read_log_until(proc: subprocess.Popen[str], pattern: re.Pattern[str],
                   timeout_s: float = 120.0) -> re.Match[str]:
    """Read the daemon's log (stderr) until a line matches ``pattern``; a bounded wait (s).
    Kills the daemon and fails with the log read so far if it exits or the time runs out."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        line = proc.stderr.readline()
        if not line:  # EOF: the daemon exited
            break
        seen.append(line)
        m = pattern.search(line)
        if m:
            return m
    proc.kill()
    raise AssertionError(f"no {pattern.pattern!r} in the daemon's log:\n" + "".join(seen))
