"""Seeded, time-bounded fuzz of the control socket of a running daemon (issue 10).

One `augury run` subprocess on the endless synthetic scene, learning paused, receives a few
hundred hostile requests: raw bytes from a plain TCP client, random bytes and truncated
JSON as a request frame, deeply nested JSON, frames over the request and frame size limits,
requests without the delimiter frame or with extra frames, and a wrong type for every field
of every command. Invariants: the daemon never exits, every request that reaches the
parser gets an error reply (none is accepted), a valid ``status`` is answered afterwards,
and the learned arrays of a snapshot after the fuzz equal those before it, bit for bit
(a wrongly accepted ``set learning`` or ``reset`` would change them).

The counts are printed past the output capture (so every run shows them) and recorded in
the test's report (``user_properties``) and the junit XML (``--junitxml``).
``AUGURY_FUZZ_SCALE=10`` runs ten times as many cases in ten times the budget (long mode).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from test_daemon import _endpoints, _finish, _spawn

from augury.checkpoint import load_latest
from augury.control import MAX_FRAME_BYTES, MAX_JSON_DEPTH, MAX_REQUEST_BYTES
from augury.model.spec import ModelSpec
from augury.model.state import LEARNED, init_state

SEED = 20261204
SCALE = max(1, int(os.environ.get("AUGURY_FUZZ_SCALE", "1")))
BUDGET_S = 30.0 * SCALE
"""Wall-clock budget of the cases; the run stops generating cases when it is spent."""
REPLY_TIMEOUT_MS = 5000

# Wrong values per field: none of them may be accepted.
NOT_A_STRING: list[Any] = [None, True, False, 0, -1, 1.5, 1e308, [], {}, ["beliefs"],
                           {"what": "all"}]
NOT_A_BOOL: list[Any] = [None, 0, 1, -1, 0.0, 1.0, "false", "true", "False", "", "0", [],
                         {}, [False], {"value": True}]
NOT_A_PERIOD: list[Any] = [None, True, False, 0, 99, -1, 3_600_000_001, 10**30, 20000.0,
                           1e4, "20000", "", [], {}, [20000], {"us": 20000}]
BAD_SCOPES: list[Any] = [*NOT_A_STRING, 123, "", "Beliefs", "ALL", "weights", "learned",
                         "beliefs ", "all\u0000", "x" * 300]
BAD_KEYS: list[Any] = [*NOT_A_STRING, "", "tau_us", "Learning", "learning ", "cmd", "key",
                       "x" * 300]
BAD_CMDS: list[Any] = [None, True, 0, 1.5, [], {}, ["status"], {"cmd": "status"}, "",
                       "STATUS", "status ", "stat", "reset\u0000", "x" * 300]


def wrong_type_requests() -> list[dict[str, Any]]:
    """A wrong value for every field of every command (each request must be refused)."""
    reqs: list[dict[str, Any]] = [{"cmd": c} for c in BAD_CMDS]
    reqs += [{"no_cmd": "status"}, {}]
    for cmd in ("status", "pause_learning", "resume_learning", "snapshot"):
        reqs += [{"cmd": cmd, "x": v} for v in (1, None, "", [], {})]
    reqs += [{"cmd": "reset", "what": v} for v in BAD_SCOPES]
    reqs += [{"cmd": "reset", "scope": "beliefs"}, {"cmd": "reset", "what": "beliefs", "x": 1}]
    reqs += [{"cmd": "set", "learning": v} for v in NOT_A_BOOL]
    reqs += [{"cmd": "set", "publish_every_us": v} for v in NOT_A_PERIOD]
    reqs += [{"cmd": "set", "key": "learning", "value": v} for v in NOT_A_BOOL]
    reqs += [{"cmd": "set", "key": "publish_every_us", "value": v} for v in NOT_A_PERIOD]
    reqs += [{"cmd": "set", "key": k, "value": True} for k in BAD_KEYS]
    reqs += [{"cmd": "set"}, {"cmd": "set", "key": "learning"}, {"cmd": "set", "value": False},
             {"cmd": "set", "key": "learning", "value": False, "learning": False},
             {"cmd": "set", "learning": False, "publish_every_us": "1"},
             {"cmd": "set", "tau_us": 5}]
    return reqs


def deep_json(rng: random.Random) -> bytes:
    """A request whose argument nests arrays/objects deeper than the limit."""
    depth = rng.choice([MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 100, 1100, 5000, 30_000])
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}"), ('[{"b":', "}]")])
    return ('{"cmd": "status", "x": ' + opener * depth + "1" + closer * depth + "}").encode()


def random_frame(rng: random.Random) -> bytes:
    """Random bytes, sometimes starting like JSON, sometimes a truncated valid request."""
    kind = rng.randrange(3)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 3000))
    valid = json.dumps({"cmd": rng.choice(["status", "reset", "set"]), "what": "all",
                        "key": "learning", "value": True}).encode()
    if kind == 1:
        return valid[:rng.randrange(0, len(valid))]  # truncated: never complete JSON
    data = bytearray(b'{"cmd": ' + rng.randbytes(rng.randrange(1, 200)))
    return bytes(data)


def connect(ctx: zmq.Context, kind: int, endpoint: str, timeout_ms: int) -> zmq.Socket:
    """A socket of ``kind`` connected to ``endpoint``, every send and receive timed out."""
    s = ctx.socket(kind)
    s.linger = 0
    s.rcvtimeo = timeout_ms
    s.sndtimeo = timeout_ms
    s.connect(endpoint)
    return s


class Fuzzer:
    """Sends fuzz cases to the daemon's control endpoint and keeps the counts."""

    def __init__(self, ctx: zmq.Context, endpoint: str, proc: Any) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.proc = proc
        self.counts: Counter[str] = Counter()
        self.accepted: list[bytes] = []

    def _socket(self, kind: int, timeout_ms: int) -> zmq.Socket:
        return connect(self.ctx, kind, self.endpoint, timeout_ms)

    def alive(self) -> None:
        """Raise (counting a crash) if the daemon has exited, with the end of its log."""
        if self.proc.poll() is not None:
            self.counts["crashes"] += 1
            log = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"daemon exited with {self.proc.returncode} after "
                                 f"{self.counts['cases']} cases: {dict(self.counts)}\n"
                                 f"{log[-2000:]}")

    def expect_error(self, frames: list[bytes], *, dealer: bool = False) -> None:
        """Send one request; it must get an ``ok: false`` reply within the timeout."""
        self.counts["cases"] += 1
        s = self._socket(zmq.DEALER if dealer else zmq.REQ, REPLY_TIMEOUT_MS)
        try:
            s.send_multipart(frames)
            try:
                reply_frames = s.recv_multipart()
            except zmq.Again:
                try:  # a daemon that stopped answering may be on its way out
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                self.alive()
                raise AssertionError(f"no reply within {REPLY_TIMEOUT_MS} ms to "
                                     f"{frames[0][:80]!r}...") from None
        finally:
            s.close(linger=0)
        reply = json.loads(reply_frames[-1])
        if reply.get("ok") is not False or not reply.get("error"):
            self.accepted.append(b"".join(frames)[:200])
        else:
            self.counts["errors_replied"] += 1

    def expect_no_reply(self, frames: list[bytes], wait_ms: int = 300) -> None:
        """Send one request libzmq must refuse (oversized frame): no reply, no crash."""
        self.counts["cases"] += 1
        s = self._socket(zmq.REQ, wait_ms)
        try:
            s.send_multipart(frames)
            with pytest.raises(zmq.Again):
                s.recv_multipart()
        finally:
            s.close(linger=0)
        self.counts["dropped_by_libzmq"] += 1
        self.alive()

    def raw_tcp(self, data: bytes) -> None:
        """Send bytes from a plain TCP client (no ZeroMQ handshake at all)."""
        self.counts["cases"] += 1
        port = int(self.endpoint.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            try:
                s.sendall(data)
            except OSError:  # the daemon may close the connection mid-send: that is fine
                pass
        self.counts["raw_tcp"] += 1


def _learned(state_dir: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The learned arrays of the newest snapshot, and the same arrays at initialisation."""
    found = load_latest(state_dir)
    assert found is not None, "no snapshot written"
    initial = init_state(ModelSpec.from_dict(json.loads(str(found.meta["spec"]))))._asdict()
    names = [k for k in LEARNED if k in found.arrays]
    return ({k: np.asarray(found.arrays[k]).tobytes() for k in names},
            {k: np.asarray(initial[k]).tobytes() for k in names})


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Any, str, Path]]:
    """A running daemon (synthetic scene, real time) with a control endpoint and state dir."""
    state = tmp_path / "state"
    proc = _spawn("synthetic://bars?duration_us=none&width=64&height=48", "--control",
                  "tcp://127.0.0.1:*", "--state-dir", str(state), "--rate-ms", "10",
                  "--set", "checkpoint.every_s=3600")
    _, ctl = _endpoints(proc)
    yield proc, ctl, state
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    code, _, err = _finish(proc)
    assert code == 0, err[-3000:]


def test_fuzz_control_socket(daemon: tuple[Any, str, Path], request: pytest.FixtureRequest,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """The fuzz run (see the module docstring); counts printed and recorded."""
    proc, ctl, state = daemon
    rng = random.Random(SEED)
    ctx = zmq.Context()
    fz = Fuzzer(ctx, ctl, proc)
    call = connect(ctx, zmq.REQ, ctl, 30_000)

    def ask(req: dict[str, Any]) -> dict[str, Any]:
        call.send_json(req)
        return call.recv_json()

    try:
        deadline = time.monotonic() + 120
        while ask({"cmd": "status"})["events_processed"] < 20_000:  # let it learn a little
            assert time.monotonic() < deadline, "the daemon processed too few events"
            call.poll(100)  # a bounded wait between status requests, nothing to receive
        assert ask({"cmd": "pause_learning"}) == {"ok": True, "learning": False}
        snap = ask({"cmd": "snapshot"})
        assert snap["ok"], snap
        before, initial = _learned(state)
        assert before, "the snapshot holds no learned arrays"
        # not vacuous: a wrongly accepted reset "all" would show
        assert before["W1"] != initial["W1"], "nothing learned before the fuzz"

        # (how, frames): "req"/"dealer" expect an error reply, "drop" no reply, "tcp" raw bytes
        cases: list[tuple[str, list[bytes]]] = []
        cases += [("req", [json.dumps(r).encode()]) for r in wrong_type_requests() * SCALE]
        cases += [("req", [random_frame(rng)]) for _ in range(80 * SCALE)]
        cases += [("req", [deep_json(rng)]) for _ in range(40 * SCALE)]
        cases += [("tcp", [rng.randbytes(rng.randrange(1, 4000))]) for _ in range(40 * SCALE)]
        zmtp3 = b"\xff" + bytes(8) + b"\x7f"  # a valid ZMTP 3 signature, then garbage
        cases += [("tcp", [zmtp3 + rng.randbytes(rng.randrange(0, 2000))])
                  for _ in range(20 * SCALE)]
        for _ in range(10 * SCALE):
            size = rng.randrange(MAX_REQUEST_BYTES + 1, MAX_FRAME_BYTES - 100)
            cases.append(("req", [b'{"cmd": "status", "x": "' + b"a" * size + b'"}']))
        for _ in range(3 * SCALE):
            cases.append(("drop", [b"{" * (MAX_FRAME_BYTES + rng.randrange(1, 1 << 16))]))
        for _ in range(10 * SCALE):
            cases.append(("req", [b'{"cmd": "status"}'] * rng.randrange(2, 40)))
            cases.append(("dealer", [b"x"] * rng.randrange(1, 40)))
        rng.shuffle(cases)

        t0 = time.monotonic()
        for i, (how, frames) in enumerate(cases):
            if time.monotonic() - t0 > BUDGET_S:
                fz.counts["skipped_over_budget"] = len(cases) - i
                break
            if how == "tcp":
                fz.raw_tcp(frames[0])
            elif how == "drop":
                fz.expect_no_reply(frames)
            else:
                fz.expect_error(frames, dealer=how == "dealer")
            if i % 25 == 0:
                fz.alive()
        elapsed = time.monotonic() - t0
        fz.alive()

        status = ask({"cmd": "status"})
        assert status["ok"] and status["learning"] is False, status
        control = status["control"]
        # every refusal the fuzzer saw was counted by the daemon (raw TCP ones may add more)
        assert control["errors"] >= fz.counts["errors_replied"], control
        # a valid reset of the beliefs keeps what was learned, like every refused request
        assert ask({"cmd": "reset", "what": "beliefs"}) == {"ok": True, "reset": "beliefs"}
        assert ask({"cmd": "snapshot"})["ok"]
        after, _ = _learned(state)
        call.close(linger=0)
    finally:
        ctx.destroy(linger=0)

    summary = (f"control fuzz: seed {SEED}, {fz.counts['cases']} cases in {elapsed:.1f} s, "
               f"errors replied {fz.counts['errors_replied']}, dropped by libzmq "
               f"{fz.counts['dropped_by_libzmq']}, raw TCP {fz.counts['raw_tcp']}, "
               f"accepted {len(fz.accepted)}, crashes {fz.counts['crashes']}, "
               f"daemon counters {control}")
    with capsys.disabled():  # shown in every run, with or without -s
        print(f"\n{summary}")
    props = {f"fuzz_{k}": fz.counts[k] for k in ("cases", "errors_replied",
                                                   "dropped_by_libzmq", "raw_tcp", "crashes")}
    props["fuzz_accepted"] = len(fz.accepted)
    request.node.user_properties.extend(props.items())  # the report and --junitxml

    assert fz.accepted == [], f"requests that should have been refused: {fz.accepted[:5]}"
    assert fz.counts["crashes"] == 0 and proc.poll() is None
    assert fz.counts["skipped_over_budget"] == 0, "the fuzz did not finish within its budget"
    assert fz.counts["cases"] >= 300
    assert after == before, [k for k in before if after.get(k) != before[k]]
