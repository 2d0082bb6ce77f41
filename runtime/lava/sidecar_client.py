"""Client of the Lava sidecar (``augury.lava.sidecar``): NumPy and pyzmq only, no Lava.

The daemon (any Python ≥ 3.10) serves layer 1 through a Python 3.10 sidecar with this.
``start_sidecar`` launches one with ``subprocess`` (fork + exec, so no forked copy of the
daemon's threads) and reads its endpoint. ``SidecarClient`` times out every receive and,
when it was given the sidecar's process, checks every ``liveness_s`` while it waits that
the process is still alive: a dead sidecar is a ``SidecarError`` naming its exit code and
the end of its stderr within ``liveness_s``, never a hang.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

import numpy as np

from augury.events import EVENT_DTYPE
from augury.model.spec import ModelSpec
from augury.model.state import State, load_npz, save_npz


class SidecarError(RuntimeError):
    """The sidecar answered with an error, did not answer in time, died or did not start."""


def lava_python(configured: str | None = None) -> str:
    """The interpreter that runs the sidecar: ``configured`` (``--lava-python``) if given,
    else this interpreter if it can import lava-nc (checked without importing it).

    Raises SidecarError naming the ``lava`` extra and the option otherwise.
    """
    if configured:
        return configured
    if importlib.util.find_spec("lava") is not None and \
            importlib.util.find_spec("lava.magma") is not None:
        return sys.executable
    from augury.lava import INSTALL_HINT

    raise SidecarError(f"--backend lava: lava-nc is not installed for {sys.executable} "
                       f"(Python {sys.version_info.major}.{sys.version_info.minor}); "
                       f"{INSTALL_HINT}, then pass that venv's interpreter as --lava-python "
                       "PATH (or run the daemon from it)")


def _tail(f: IO[bytes] | None, n: int = 2_000) -> str:
    """The last n bytes of a (temporary) log file, decoded."""
    if f is None:
        return ""
    try:
        f.flush()
        f.seek(0, io.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - n))
        return f.read().decode(errors="replace").strip()
    except (OSError, ValueError):
        return ""


def start_sidecar(python: str = sys.executable, *, timeout_s: float = 60.0,
                  env: dict[str, str] | None = None,
                  stderr: IO[bytes] | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``python -m augury.cli lava-serve`` on a free loopback port; returns the process
    and its endpoint. ``python`` must be an interpreter with lava-nc (Python 3.10).

    The sidecar's stderr goes to ``stderr`` (a binary file; default: a temporary file kept
    as ``proc.stderr_log``, whose tail a SidecarError quotes), never to an unread pipe.
    """
    log = stderr if stderr is not None else tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen([python, "-m", "augury.cli", "lava-serve"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                env=env)
    except OSError as exc:
        raise SidecarError(f"cannot start the Lava sidecar with {python!r}: {exc}") from exc
    proc.stderr_log = log  # type: ignore[attr-defined]
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout_s):
            proc.kill()
            proc.wait()
            raise SidecarError(f"the Lava sidecar did not start within {timeout_s} s: "
                               f"{_tail(log)}")
        line = proc.stdout.readline()
    finally:
        sel.close()
        proc.stdout.close()
    if not line:
        proc.wait(timeout=10)
        raise SidecarError(f"the Lava sidecar ({python}) exited with code {proc.returncode}: "
                           f"{_tail(log)}")
    return proc, json.loads(line)["endpoint"]


class SidecarClient:
    """REQ socket to one sidecar; every receive has a timeout (``timeout_s``), and with
    ``proc`` the sidecar's liveness is checked every ``liveness_s`` while waiting."""

    def __init__(self, endpoint: str, *, timeout_s: float = 30.0,
                 proc: subprocess.Popen | None = None, liveness_s: float = 0.2) -> None:
        import zmq

        self._zmq = zmq
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.REQ)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self.timeout_s = float(timeout_s)
        self.liveness_s = float(liveness_s)
        self.proc = proc
        self._closed = False
        self._shm: list[str] = []  # the sidecar's Lava shared-memory segments (its replies)

    def _dead(self) -> str | None:
        """Why the sidecar is gone, or None while it runs (or is not ours to watch). A dead
        sidecar's shared-memory segments are removed here: nothing in it could."""
        if self.proc is None or self.proc.poll() is None:
            return None
        removed = self._remove_shm()
        return (f"the Lava sidecar (pid {self.proc.pid}) died with exit code "
                f"{self.proc.returncode}"
                + (f" (its {removed} shared-memory segments removed)" if removed else "")
                + f"; its last output: "
                f"{_tail(getattr(self.proc, 'stderr_log', None)) or '(none)'}")

    def _remove_shm(self) -> int:
        """Unlink the recorded /dev/shm segments of a dead sidecar; how many were there."""
        n = 0
        for name in self._shm:
            if "/" in name or not name:
                continue
            try:
                os.unlink(os.path.join("/dev/shm", name))
                n += 1
            except FileNotFoundError:
                pass
        self._shm = []
        return n

    def _call(self, header: dict[str, Any], *frames: bytes) -> tuple[dict[str, Any],
                                                                     list[bytes]]:
        if self._closed:
            raise SidecarError("the sidecar client is closed")
        why = self._dead()
        if why:
            raise SidecarError(why)
        self._sock.send_multipart([json.dumps(header).encode(), *frames])
        t0 = time.monotonic()
        while not self._sock.poll(int(self.liveness_s * 1000)):
            why = self._dead()
            if why:
                raise SidecarError(f"{header.get('cmd')}: {why}")
            if time.monotonic() - t0 > self.timeout_s:
                raise SidecarError(f"no reply to {header.get('cmd')!r} within "
                                   f"{self.timeout_s} s")
        msg = self._sock.recv_multipart()
        reply = json.loads(msg[0])
        if "shm" in reply:
            self._shm = [str(n) for n in reply["shm"]]
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

    def feed_layer1(self, events: np.ndarray, t_end_us: int,
                    seq: int = 0) -> tuple[int, dict[str, np.ndarray]]:
        """Feed one batch; returns (ticks run, layer 1's inference arrays at the last tick
        run: ``LavaLayer1.inference_arrays``, empty if no tick ran)."""
        ev = np.ascontiguousarray(events, EVENT_DTYPE)
        reply, frames = self._call({"cmd": "feed", "seq": seq, "t_end_us": int(t_end_us),
                                    "reply": "layer1"}, ev.tobytes())
        arrays = {name: np.frombuffer(f, np.float64)
                  for name, f in zip(reply["arrays"], frames, strict=True)}
        return int(reply["ticks"]), arrays

    def write_learned(self, spec: ModelSpec, st: State) -> None:
        """After a learning epoch on the host: write W1, π1, thresholds, h, x̂, u into Lava."""
        buf = io.BytesIO()
        save_npz(buf, spec, st)
        self._call({"cmd": "learned"}, buf.getvalue())

    def state(self) -> tuple[ModelSpec, State]:
        """The served network's State (a checkpoint the numba engine can continue from)."""
        _, frames = self._call({"cmd": "state"})
        return load_npz(io.BytesIO(frames[0]))

    def close(self, *, stop: bool = True, wait_s: float = 10.0) -> None:
        """Ask the sidecar to exit (``stop``), close the socket, and, with ``proc``, wait up
        to ``wait_s`` for it to end (then kill it); idempotent."""
        if self._closed:
            return
        try:
            if stop and self._dead() is None:
                try:
                    self._call({"cmd": "close"})
                except SidecarError:
                    pass
        finally:
            self._closed = True
            self._sock.close(0)
            self._ctx.term()
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                log = getattr(self.proc, "stderr_log", None)
                if log is not None:
                    log.close()
