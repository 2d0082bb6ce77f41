"""Seeded, time-bounded fuzz of the UDP source (issue 10: "no packet can kill the daemon").

Each case sends a valid augury stream (one sender session, random geometry, random
datagram sizes, time increasing, ending with END) over loopback with garbage datagrams
interleaved at random places: random bytes, zero-length, max-size (65,507 B), bad magic,
truncated headers and bodies, wrong version or header size, END carrying events, absurd
coordinates or polarity, absurd timestamps, a wrong / zero / oversized geometry, and valid
datagrams of another sender session. Invariants, per case:

* no crash: nothing raises, the receiver thread is alive until closed;
* no hang: the case ends within CASE_LIMIT_S (every wait is bounded);
* every event handed on lies inside the geometry and time never goes backwards;
* every valid datagram's events are processed: exactly the events sent, in order;
* every garbage datagram is counted: malformed ones by their exact reason
  (``source_stats()["malformed_by_reason"]``), the other sender's in ``other_session``.

One more case runs ``augury run udp://…`` as a subprocess and checks the same through its
final summary. About 200 cases in ~15 s on 2 cores; ``AUGURY_FUZZ_LONG=1`` runs ten times as
many. The run prints one line: cases, counted, crashes, hangs.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest

from augury.adapters.udp import FLAG_END, HEADER, MAGIC, UdpSender, UdpSource, open_udp
from augury.events import EVENT_DTYPE, EventBatch, SensorGeometry, make_events

SCALE = 10 if os.environ.get("AUGURY_FUZZ_LONG") else 1
CASES = 200 * SCALE
CASE_LIMIT_S = 10.0
"""Longest a single in-process case may take (s); a normal case takes ~50 ms."""
SEED = 20261204
BATCH_US = 5_000


@dataclass
class Tally:
    """Outcome counts of the fuzz run (cases, garbage datagrams sent and counted)."""

    cases: int = 0
    garbage: int = 0
    counted: int = 0
    valid_datagrams: int = 0
    events: int = 0
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def line(self, name: str, seconds: float) -> str:
        return (f"fuzz {name}: cases={self.cases} garbage={self.garbage} "
                f"counted={self.counted} valid_datagrams={self.valid_datagrams} "
                f"events={self.events} crashes={len(self.crashes)} hangs={len(self.hangs)} "
                f"violations={len(self.violations)} ({seconds:.1f} s)")


# -- the stream and the garbage --------------------------------------------------------------


@dataclass
class Case:
    """One case: datagrams in sending order, the valid events, what must be counted."""

    geometry: SensorGeometry
    datagrams: list[bytes]
    events: np.ndarray
    expected: Counter[str]  # malformed reason (or "other_session") -> datagrams
    n_valid: int


def _valid_stream(rng: np.random.Generator, geometry: SensorGeometry, session: int
                  ) -> tuple[list[bytes], np.ndarray]:
    """Datagrams of a valid augury stream (END last) and its events (µs, increasing)."""
    n = int(rng.integers(1, 3000))
    t0 = int(rng.integers(0, 1 << 40))
    t = t0 + np.sort(rng.integers(0, int(rng.integers(1, 200_000)), n))
    ev = make_events(t, rng.integers(0, geometry.width, n), rng.integers(0, geometry.height, n),
                     rng.integers(0, 2, n))
    with UdpSender("127.0.0.1", 9, geometry=geometry, session_id=session,
                   max_events_per_packet=int(rng.integers(1, 400))) as tx:
        datagrams = [b"".join(bytes(p) for p in d) for d in tx.encode(ev)]
        end = HEADER.pack(MAGIC, 1, FLAG_END, 32, session, tx.seq, int(t[-1]) + 1,
                          geometry.width, geometry.height, 0)
    return [*datagrams, end], ev


def _with_header(d: bytes, **fields: int) -> bytes:
    """``d`` with some header fields replaced (names as in the documented layout)."""
    names = ("magic", "version", "flags", "header_bytes", "session", "seq", "base_t_us",
             "width", "height", "count")
    values = dict(zip(names, HEADER.unpack_from(d), strict=True))
    values.update(fields)
    return HEADER.pack(*values.values()) + d[HEADER.size:]


def _garbage(rng: np.random.Generator, good: list[bytes], geometry: SensorGeometry,
             session: int) -> tuple[bytes, str]:
    """One garbage datagram and the counter it must land in."""
    src = good[int(rng.integers(0, len(good)))]  # a datagram with events (not the END)
    kind = int(rng.integers(0, 15))
    if kind == 0:
        d = rng.bytes(int(rng.integers(1, 2000)))
        d = (b"XX" + d[2:]) if d[:4] == MAGIC else d
        return d, "short" if len(d) < 32 else "bad_magic"
    if kind == 1:
        return b"", "short"
    if kind == 2:  # the largest UDP payload: random, or an augury header with a wrong count
        if rng.integers(0, 2):
            return b"\x00" + rng.bytes(65_506), "bad_magic"
        return _with_header(src, count=5)[:32] + rng.bytes(65_507 - 32), "bad_length"
    if kind == 3:
        return b"AUGX" + src[4:], "bad_magic"
    if kind == 4:
        return src[:int(rng.integers(1, 32))], "short"
    if kind == 5:
        return src[:int(rng.integers(33, len(src)))] if len(src) > 33 else src[:20], \
            "bad_length" if len(src) > 33 else "short"
    if kind == 6:
        return _with_header(src, version=int(rng.choice([0, 2, 9, 255]))), "bad_version"
    if kind == 7:
        return _with_header(src, header_bytes=int(rng.choice([0, 16, 64]))), "bad_version"
    if kind == 8:  # END carrying events
        return _with_header(src, flags=FLAG_END), "bad_length"
    if kind == 9:  # an event outside the declared geometry, or a polarity of 2+
        b = bytearray(src)
        r = 32 + 9 * int(rng.integers(0, (len(b) - 32) // 9))
        choice = int(rng.integers(0, 3))
        if choice == 0:
            struct.pack_into("<H", b, r + 4, geometry.width + int(rng.integers(0, 60_000)))
        elif choice == 1:
            struct.pack_into("<H", b, r + 6, geometry.height + int(rng.integers(0, 60_000)))
        else:
            b[r + 8] = int(rng.integers(2, 256))
        return bytes(b), "bad_event"
    if kind == 10:  # absurd times
        base = int(rng.choice([-1, -(1 << 62), 1 << 62, (1 << 63) - 1]))
        return _with_header(src, base_t_us=base), "bad_time"
    if kind == 11:  # another geometry (events fit inside it), or one above MAX_SENSOR_SIDE
        w, h = [(geometry.width + 1, geometry.height), (65_535, 65_535),
                (geometry.width, geometry.height + 7)][int(rng.integers(0, 3))]
        return _with_header(src, width=w, height=h), "bad_geometry"
    if kind == 12:  # a heartbeat with a zero geometry
        return HEADER.pack(MAGIC, 1, 0, 32, session, 0, 5, 0, geometry.height, 0), \
            "bad_geometry"
    if kind == 13:  # a valid datagram of another sender session, on its own clock
        return _with_header(src, session=session ^ 0x5A5A5A5A, seq=int(rng.integers(0, 9)),
                            base_t_us=int(rng.integers(0, 1 << 50))), "other_session"
    return bytes(rng.integers(0, 256, 32, dtype=np.uint8)) + b"\x01", \
        "bad_magic"  # 33 random bytes (AUGY excluded below)


def make_case(rng: np.random.Generator) -> Case:
    """A valid stream with garbage interleaved at random places (never after the END)."""
    geometry = SensorGeometry(int(rng.integers(2, 1281)), int(rng.integers(2, 721)))
    session = int(rng.integers(1, 1 << 32))
    valid, ev = _valid_stream(rng, geometry, session)
    expected: Counter[str] = Counter()
    out: list[bytes] = []
    n_big = 0
    for d in valid[:-1]:
        out.append(d)
        for _ in range(int(rng.poisson(0.7))):
            g, reason = _garbage(rng, valid[:-1], geometry, session)
            if len(g) > 60_000:
                n_big += 1
                if n_big > 2:  # a few max-size datagrams per case: no loss on loopback
                    continue
            if g[:4] == MAGIC and reason == "bad_magic":
                continue
            out.append(g)
            expected[reason] += 1
    out.append(valid[-1])
    return Case(geometry, out, ev, expected, len(valid))


# -- running a case --------------------------------------------------------------------------


class _BatchReader:
    """The source's batches read by one thread; ``until`` waits (bounded) for n events."""

    def __init__(self, src: UdpSource) -> None:
        self.batches: list[EventBatch] = []
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._src = src
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for b in self._src.batches(batch_us=BATCH_US):
                with self._cond:
                    self.batches.append(b)
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - a crash, reported by the case
            self.error = exc
        with self._cond:
            self._cond.notify_all()

    def until(self, n_events: int, timeout_s: float) -> list[EventBatch]:
        with self._cond:
            self._cond.wait_for(lambda: self.error is not None or not self._thread.is_alive()
                                or sum(len(b) for b in self.batches) >= n_events, timeout_s)
            return list(self.batches)


def _check_batches(batches: list[EventBatch], geometry: SensorGeometry) -> str:
    """"" if every event is inside the geometry and no time goes backwards, else why not."""
    last = -(1 << 63)
    for b in batches:
        ev = b.events
        if ev.dtype != EVENT_DTYPE:
            return f"dtype {ev.dtype}"
        if b.restart:
            return "a restart (only one sender session is valid)"
        if ev.size:
            if int(ev["x"].max()) >= geometry.width or int(ev["y"].max()) >= geometry.height:
                return "event outside the geometry"
            if int(ev["p"].max()) > 1:
                return "polarity above 1"
            t = ev["t"]
            if int(t[0]) < last or bool(np.any(np.diff(t) < 0)):
                return "time went backwards"
            if int(t[0]) < b.t_start_us or int(t[-1]) >= b.t_end_us:
                return "event outside its batch span"
            last = int(t[-1])
    return ""


def run_case(case: Case, idx: int, tally: Tally) -> None:
    """Send the case to a fresh UDP source and check every invariant (counted in tally)."""
    t_start = time.monotonic()
    learn = idx % 2 == 0  # half of the cases learn the geometry from the stream
    src = open_udp("127.0.0.1:0", geometry=None if learn else
                   f"{case.geometry.width}x{case.geometry.height}", session_idle_s=None,
                   wait_sender_s=CASE_LIMIT_S)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            datagrams = case.datagrams
            if learn:  # the first valid datagram first, so the geometry learned is right
                first = next(i for i, d in enumerate(datagrams) if len(d) >= 32 and
                             d[:4] == MAGIC and _is_valid(d, case))
                datagrams = [datagrams[first], *datagrams[:first], *datagrams[first + 1:]]
            reader = _BatchReader(src)
            for d in datagrams:
                tx.sendto(d, src.address)
            batches = reader.until(case.events.size, CASE_LIMIT_S)
            if reader.error is not None:
                raise reader.error
        got = np.concatenate([b.events for b in batches]) if batches else case.events[:0]
        stats = src.source_stats()
        counted = Counter({k: v for k, v in stats["malformed_by_reason"].items()})
        if stats["other_session"]:
            counted["other_session"] = stats["other_session"]
        alive = src.thread_alive
    except Exception:  # noqa: BLE001 - the invariant is "no crash": record and go on
        tally.crashes.append(f"case {idx}: {traceback.format_exc()[-1500:]}")
        return
    finally:
        src.close()
        tally.cases += 1
    elapsed = time.monotonic() - t_start
    if elapsed > CASE_LIMIT_S:
        tally.hangs.append(f"case {idx}: {elapsed:.1f} s")
    tally.garbage += sum(case.expected.values())
    tally.counted += sum(min(counted[k], v) for k, v in case.expected.items())
    tally.valid_datagrams += case.n_valid
    tally.events += int(got.size)
    problems = [p for p in (
        _check_batches(batches, case.geometry),
        "" if alive else "receiver thread died",
        "" if np.array_equal(got, case.events) else
        f"events processed {got.size} of {case.events.size}",
        "" if counted == case.expected else f"counted {dict(counted)} != {dict(case.expected)}",
    ) if p]
    if problems:
        tally.violations.append(f"case {idx} ({case.geometry}): {'; '.join(problems)}")


def _is_valid(d: bytes, case: Case) -> bool:
    """A datagram of the valid stream (it carries the stream's events)."""
    return d[4] == 1 and d[5] == 0 and struct.unpack_from("<H", d, 6)[0] == 32 and \
        struct.unpack_from("<HH", d, 24) == (case.geometry.width, case.geometry.height) and \
        len(d) == 32 + 9 * struct.unpack_from("<I", d, 28)[0] and len(d) > 32 and \
        struct.unpack_from("<q", d, 16)[0] >= 0 and \
        all(int(x) < case.geometry.width and int(y) < case.geometry.height and p <= 1
            for x, y, p in struct.iter_unpack("<4xHHB", d[32:]))


def test_fuzz_udp_source_garbage_interleaved_with_a_valid_stream(
        capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(SEED)
    tally = Tally()
    t0 = time.monotonic()
    for idx in range(CASES):
        case = make_case(rng)
        run_case(case, idx, tally)
        if tally.crashes or tally.violations or tally.hangs:
            break  # the first failure is reported in full below
    with capsys.disabled():
        print(f"\n{tally.line('udp source', time.monotonic() - t0)}")
    assert not tally.crashes, tally.crashes[:3]
    assert not tally.hangs, tally.hangs[:3]
    assert not tally.violations, tally.violations[:3]
    assert tally.cases == CASES and tally.counted == tally.garbage > CASES


# -- against a running daemon ----------------------------------------------------------------


def test_fuzz_augury_run_survives_garbage_and_counts_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`augury run udp://…` (subprocess) fed garbage interleaved with a valid stream: it
    processes every valid event, exits 0 at the END (until_end=1) and its final summary
    counts every garbage datagram by reason."""
    rng = np.random.default_rng(SEED + 1)
    cases = [make_case(rng) for _ in range(10)]
    case = max(cases, key=lambda c: sum(c.expected.values()))
    g = case.geometry
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "augury.cli", "run",
                             f"udp://127.0.0.1:{port}?format=augury&geometry={g.width}x"
                             f"{g.height}&until_end=1", "--publish", "tcp://127.0.0.1:*",
                             "--control", "none", "--pace", "asap",
                             "--batch-us", str(BATCH_US), "--set", "pipeline.overflow=block"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # bounded: the daemon logs this line or exits
            if "waiting for a sender" in line or "publishing on" in line:
                break
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for d in case.datagrams:
                tx.sendto(d, ("127.0.0.1", port))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    hang = time.monotonic() - t0 > 120
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    source = summary["source"]
    counted = Counter(source["malformed_by_reason"])
    if source["other_session"]:
        counted["other_session"] = source["other_session"]
    crashes = int(proc.returncode != 0)
    with capsys.disabled():
        print(f"\nfuzz augury run udp://: cases=1 garbage={sum(case.expected.values())} "
              f"counted={sum(counted.values())} events={summary['events_processed']} of "
              f"{case.events.size} crashes={crashes} hangs={int(hang)}")
    assert summary["events_processed"] == case.events.size
    assert counted == case.expected
    assert summary["summary"]["bad_batches"] == 0
