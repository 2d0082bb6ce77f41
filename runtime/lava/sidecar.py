"""The Lava sidecar (first cut): layer 1 in Lava behind a ZeroMQ REP socket on loopback.

Run with the Python 3.10 interpreter that has lava-nc (the daemon may run on 3.11):

    python -m augury.lava.sidecar --bind tcp://127.0.0.1:0

It prints one JSON line ``{"endpoint": ...}`` (the bound address) on stdout, then serves
requests until ``close`` or until its parent process goes away. Every request and reply is
multipart ``[header JSON, payload frames…]`` (schema ``lava-sidecar/0``):

* ``{"cmd": "load", "chunk_ticks": n}`` + a checkpoint (.npz bytes, ``save_npz``)
  → ``{"ok", "t_next_us"}``;
* ``{"cmd": "feed", "seq", "t_end_us"}`` + events (EVENT_DTYPE bytes)
  → ``{"ok", "seq", "ticks", "t_next_us", "shape", "shm"}`` + μ (float64 bytes, (n1, K1));
  with ``"reply": "layer1"`` → ``{"ok", "seq", "ticks", "t_next_us", "arrays": [names],
  "shm"}`` + one float64 frame per name (``LavaLayer1.inference_arrays``; none if no tick
  ran); ``shm``: the names of the Lava run's shared-memory segments in /dev/shm, which the
  client removes if the sidecar dies (nothing else could);
* ``{"cmd": "learned"}`` + the host's State after a learning epoch (.npz bytes) → ``{"ok"}``
  (``LavaLayer1.write_learned``);
* ``{"cmd": "state"}`` → ``{"ok"}`` + the State as a checkpoint (.npz bytes);
* ``{"cmd": "close"}`` → ``{"ok"}``, then the sidecar exits.

A failed request is answered ``{"ok": false, "error": message}`` (a Lava model's traceback
included); the sidecar keeps serving, except after a Lava failure, which closes the network
(``load`` starts a new one). The daemon side is ``augury.lava.backend.LavaNetwork``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import Any

import numpy as np

from augury.events import EVENT_DTYPE

SCHEMA = "lava-sidecar/0"


def _checkpoint_bytes(spec: Any, st: Any) -> bytes:
    from augury.model.state import save_npz

    buf = io.BytesIO()
    save_npz(buf, spec, st)  # np.savez takes a file object as well as a path
    return buf.getvalue()


def _handle(layer: Any, header: dict[str, Any], frames: list[bytes]) -> tuple[Any, list[Any]]:
    """One request → (the layer now served, reply frames)."""
    from augury.lava.layer1 import LavaLayer1
    from augury.model.state import load_npz

    cmd = header.get("cmd")
    if cmd == "load":
        if len(frames) != 1:
            raise ValueError("load needs one payload frame (the checkpoint)")
        spec, st = load_npz(io.BytesIO(frames[0]))
        if layer is not None:
            layer.close()
        layer = LavaLayer1(spec, st, chunk_ticks=int(header.get("chunk_ticks", 50)))
        return layer, [{"ok": True, "t_next_us": layer.t_next_us}]
    if layer is None:
        raise ValueError(f"{cmd!r} before load")
    if cmd == "feed":
        if len(frames) != 1 or len(frames[0]) % EVENT_DTYPE.itemsize:
            raise ValueError("feed needs one payload frame of EVENT_DTYPE records")
        ev = np.frombuffer(frames[0], EVENT_DTYPE)
        ticks = layer.feed(ev, int(header["t_end_us"]))
        # the Lava run's shared-memory segments: the client removes them if we die
        shm = layer.runner.shm_names if layer.runner is not None else []
        if header.get("reply") == "layer1":  # every inference variable, for the host engine
            arrays = layer.inference_arrays() if ticks else {}
            return layer, [{"ok": True, "seq": header.get("seq"), "ticks": ticks,
                            "t_next_us": layer.t_next_us, "arrays": list(arrays),
                            "shm": shm},
                           *(np.ascontiguousarray(a, np.float64) for a in arrays.values())]
        mu = np.ascontiguousarray(layer.beliefs())
        return layer, [{"ok": True, "seq": header.get("seq"), "ticks": ticks,
                        "t_next_us": layer.t_next_us, "shape": list(mu.shape), "shm": shm},
                       mu]
    if cmd == "learned":  # a learning epoch on the host: new W1, π1, thresholds, h, x̂, u
        if len(frames) != 1:
            raise ValueError("learned needs one payload frame (the checkpoint)")
        _, st = load_npz(io.BytesIO(frames[0]))
        layer.write_learned(st)
        return layer, [{"ok": True}]
    if cmd == "state":
        return layer, [{"ok": True}, _checkpoint_bytes(layer.spec, layer.state())]
    raise ValueError(f"unknown command {cmd!r} (load, feed, learned, state, close)")


def serve(bind: str, *, idle_poll_ms: int = 500) -> int:
    """Serve requests on ``bind`` until ``close`` or until the parent process exits."""
    import zmq

    from augury.lava import LavaError

    parent = os.getppid()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(bind)
    print(json.dumps({"endpoint": sock.getsockopt_string(zmq.LAST_ENDPOINT),
                      "schema": SCHEMA, "pid": os.getpid()}), flush=True)
    # nobody reads our stdout after this line: anything Lava prints goes to stderr instead,
    # so that a full pipe can never block the sidecar
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    layer = None
    try:
        while True:
            if not sock.poll(idle_poll_ms):
                if os.getppid() != parent:  # the daemon died: do not linger as an orphan
                    return 1
                continue
            msg = sock.recv_multipart()
            try:
                header = json.loads(msg[0])
                if header.get("cmd") == "close":
                    sock.send_multipart([json.dumps({"ok": True}).encode()])
                    return 0
                layer, reply = _handle(layer, header, msg[1:])
            except LavaError as exc:
                layer = None  # the runner has closed the failed network
                reply = [{"ok": False, "error": str(exc)}]
            except (ValueError, KeyError, TypeError) as exc:
                reply = [{"ok": False, "error": f"{type(exc).__name__}: {exc}"}]
            sock.send_multipart([json.dumps(reply[0]).encode()]
                                + [bytes(memoryview(f)) for f in reply[1:]])
    finally:
        if layer is not None:
            layer.close()
        sock.close(0)
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m augury.lava.sidecar",
                                 description="Serve Augury's layer 1 in Lava over ZeroMQ.")
    ap.add_argument("--bind", default="tcp://127.0.0.1:0",
                    help="ZeroMQ endpoint to bind (default: a free loopback port)")
    args = ap.parse_args(argv)
    from augury.lava import require_lava

    require_lava()
    return serve(args.bind)


if __name__ == "__main__":
    sys.exit(main())
