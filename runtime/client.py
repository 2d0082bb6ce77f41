"""Subscriber helper for robot software: receive schema-v2 messages as NumPy arrays.

Example::

    from augury.client import Subscriber

    with Subscriber("tcp://127.0.0.1:5556", topics=("prediction",)) as sub:
        for msg in sub:                      # ends when nothing arrives for timeout_ms
            rate_hz = msg.arrays["rate_hz"]  # (H, W, 2) float32, events/s
            if msg.gap:
                print(f"missed {msg.gap} prediction messages")

Malformed messages are counted (``malformed``) and skipped; a message of an unknown schema
version raises SchemaVersionError, because it means the client is too old for the daemon.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import zmq

from augury.publish import (
    DEFAULT_PUB_ENDPOINT,
    TOPICS,
    Message,
    MessageError,
    SchemaVersionError,
    decode_message,
    encode_message,
)

__all__ = ["Message", "MessageError", "SchemaVersionError", "Subscriber", "control_status",
           "decode_message", "encode_message"]

log = logging.getLogger(__name__)


class Subscriber:
    """ZeroMQ SUB socket that decodes schema-v2 messages and tracks per-topic gaps.

    ``topics``: exact topic names to receive (None: every topic). ``timeout_ms``: default
    wait of ``recv`` and of iteration. ``hwm``: receive queue length in messages; when it is
    full, newer messages are dropped by ZeroMQ and show up as gaps.
    Counters: ``received``, ``malformed``, ``missed[topic]`` (sum of gaps), ``restarts``
    (sequence went backwards: the publisher restarted).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_PUB_ENDPOINT,
        topics: Iterable[str] | None = TOPICS,
        *,
        timeout_ms: int = 1000,
        hwm: int = 100,
        context: zmq.Context | None = None,
    ) -> None:
        self.timeout_ms = timeout_ms
        self._topics = None if topics is None else frozenset(topics)
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        # a frame starts with topic + NUL: subscribing to that prefix matches one topic exactly
        for t in [b""] if self._topics is None else sorted(t.encode() + b"\x00"
                                                          for t in self._topics):
            self._socket.setsockopt(zmq.SUBSCRIBE, t)
        self._socket.connect(endpoint)
        self._last_seq: dict[str, int] = {}
        self.received = 0
        self.malformed = 0
        self.restarts = 0
        self.missed: dict[str, int] = {}
        self.last_error: str | None = None
        self._closed = False

    def _accept(self, frames: list[Any]) -> Message | None:
        try:
            msg = decode_message(frames)
        except SchemaVersionError as exc:
            self.malformed += 1
            self.last_error = str(exc)
            raise
        except MessageError as exc:
            self.malformed += 1
            self.last_error = str(exc)
            log.warning("skipping malformed message: %s", exc)
            return None
        if self._topics is not None and msg.topic not in self._topics:
            return None  # a longer topic that shares a subscribed prefix
        last = self._last_seq.get(msg.topic)
        if last is not None and msg.seq <= last:
            self.restarts += 1
        elif last is not None:
            msg.gap = msg.seq - last - 1
            self.missed[msg.topic] = self.missed.get(msg.topic, 0) + msg.gap
        self._last_seq[msg.topic] = msg.seq
        self.received += 1
        return msg

    def recv(self, timeout_ms: int | None = None) -> Message | None:
        """The next valid message, or None if none arrives within ``timeout_ms`` (ms).

        Array values are read-only views on the received buffers (copy them to modify).
        Raises SchemaVersionError if the publisher speaks another schema version.
        """
        if self._closed:
            raise RuntimeError("recv() on a closed Subscriber")
        wait_ms = self.timeout_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + wait_ms / 1000.0
        while True:
            left_ms = max(0, round((deadline - time.monotonic()) * 1000.0))
            if not self._socket.poll(left_ms, zmq.POLLIN):
                return None
            frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            msg = self._accept(frames)
            if msg is not None:
                return msg

    def __iter__(self) -> Iterator[Message]:
        """Messages as they arrive; stops when none arrives within ``timeout_ms``."""
        while (msg := self.recv()) is not None:
            yield msg

    def close(self, linger: int = 0) -> None:
        """Close the socket (and its private context); idempotent."""
        if not self._closed:
            self._closed = True
            self._socket.close(linger=linger)
            if self._own_context:
                self._context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def control_status(endpoint: str, *, timeout_ms: int = 500,
                   context: zmq.Context | None = None) -> dict[str, Any] | None:
    """Ask a daemon's control socket for ``status``; its reply, or None without one.

    endpoint: the control endpoint (``tcp://host:port``); timeout_ms: how long to wait for
    the reply, ms. None means nothing answered within timeout_ms (no daemon there, a daemon
    without a control socket, or one that requires CURVE keys this client does not hold);
    a reply that is not a JSON object also gives None. The socket is closed with linger 0.
    """
    ctx = zmq.Context() if context is None else context
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(b'{"cmd": "status"}')
        if not sock.poll(timeout_ms, zmq.POLLIN):
            return None
        try:
            reply = json.loads(sock.recv().decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        return reply if isinstance(reply, dict) else None
    except zmq.ZMQError:
        return None
    finally:
        sock.close(linger=0)
        if context is None:
            ctx.term()
