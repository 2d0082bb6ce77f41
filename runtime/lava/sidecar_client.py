"""Client of the Lava sidecar (``augury.lava.sidecar``): NumPy and pyzmq only, no Lava.

This is what the daemon (any Python ≥ 3.10) would use to serve layer 1 through a Python
3.10 sidecar. ``start_sidecar`` launches one with ``subprocess`` (fork + exec, so no
forked copy of the daemon's threads) and reads its endpoint.
"""

from __future__ import annotations

import io
import json
import selectors
import subprocess
import sys
import time
from typing import Any

import numpy as np

from augury.events import EVENT_DTYPE
from augury.model.spec import ModelSpec
from augury.model.state import State, load_npz, save_npz


class SidecarError(RuntimeError):
    """The sidecar answered with an error, did not answer in time, or did not start."""


def start_sidecar(python: str = sys.executable, *, timeout_s: float = 60.0,
                  env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``python -m augury.cli lava-serve`` on a free loopback port; returns the process
    and its endpoint. ``python`` must be an interpreter with lava-nc (Python 3.10)."""
    proc = subprocess.Popen([python, "-m", "augury.cli", "lava-serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout_s):
            proc.kill()
            raise SidecarError(f"the Lava sidecar did not start within {timeout_s} s")
        line = proc.stdout.readline()
    finally:
        sel.close()
    if not line:
        err = proc.communicate(timeout=10)[1]
        raise SidecarError(f"the Lava sidecar exited ({proc.returncode}): {err.strip()}")
    return proc, json.loads(line)["endpoint"]


class SidecarClient:
    """REQ socket to one sidecar; every receive has a timeout (``timeout_s``)."""

    def __init__(self, endpoint: str, *, timeout_s: float = 30.0) -> None:
        import zmq

        self._zmq = zmq
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.REQ)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self.timeout_s = float(timeout_s)

    def _call(self, header: dict[str, Any], *frames: bytes) -> tuple[dict[str, Any],
                                                                     list[bytes]]:
        self._sock.send_multipart([json.dumps(header).encode(), *frames])
        t = time.monotonic()
        if not self._sock.poll(int(self.timeout_s * 1000)):
            raise SidecarError(f"no reply to {header.get('cmd')!r} within {self.timeout_s} s "
                               f"({time.monotonic() - t:.1f} s)")
        msg = self._sock.recv_multipart()
        reply = json.loads(msg[0])
        if not reply.get("ok"):
            raise SidecarError(f"{header.get('cmd')}: {reply.get('error')}")
        return reply, msg[1:]

    def load(self, spec: ModelSpec, st: State, *, chunk_ticks: int = 50) -> int:
        """Serve ``st`` (a numba State ending on a tick); returns the next tick's time (µs)."""
        buf = io.BytesIO()
        save_npz(buf, spec, st)
        reply, _ = self._call({"cmd": "load", "chunk_ticks": chunk_ticks}, buf.getvalue())
        return int(reply["t_next_us"])

    def feed(self, events: np.ndarray, t_end_us: int, seq: int = 0) -> tuple[int, np.ndarray]:
        """Feed one batch; returns (ticks run, beliefs μ of shape (n1, K1))."""
        ev = np.ascontiguousarray(events, EVENT_DTYPE)
        reply, frames = self._call({"cmd": "feed", "seq": seq, "t_end_us": int(t_end_us)},
                                   ev.tobytes())
        mu = np.frombuffer(frames[0], np.float64).reshape(reply["shape"])
        return int(reply["ticks"]), mu

    def state(self) -> tuple[ModelSpec, State]:
        """The served network's State (a checkpoint the numba engine can continue from)."""
        _, frames = self._call({"cmd": "state"})
        return load_npz(io.BytesIO(frames[0]))

    def close(self, *, stop: bool = True) -> None:
        """Ask the sidecar to exit (``stop``), then close the socket."""
        try:
            if stop:
                self._call({"cmd": "close"})
        finally:
            self._sock.close(0)
            self._ctx.term()
