"""ZeroMQ publishing of network read-outs, wire schema v2 (see docs/protocol.md).

A message is **one** ZeroMQ frame (never a multipart message)::

    topic UTF-8 | 0x00 | header, UTF-8 JSON object (strict RFC 8259) | 0x00
    | zero padding up to the next multiple of 8 bytes | data section

The data section holds the arrays, C order, little-endian, in ``header["arrays"]`` order; array
``i`` starts at byte ``offset`` of the data section (0 for the first, then the end of the
previous one rounded up to a multiple of 8) and the frame ends where the last array ends.
SUB sockets filter on the frame's first bytes, so subscribing to ``topic + b"\\x00"`` matches
one topic exactly.

Header (schema 2)::

    {"schema": 2, "topic": str, "seq": int (per topic, from 0),
     "stream_time_us": int, "sensor_time_us": int | null, "wall_time_ns": int,
     "arrays": [{"name": str, "dtype": str, "shape": [int, ...], "offset": int}, ...],
     "meta": {...}}

Why one frame: libzmq 4.3.5 aborts the whole process (assertion in ``session_base.cpp``,
``clean_pipes``, libzmq #3442) when a subscriber's connection fails while the publisher's
socket is closing and that connection's engine holds part of a multipart message, which a
stalled subscriber's connection nearly always does. A single-frame message is never partly
held, so the publisher can close next to any subscriber
(``tests/test_publish.py::test_closing_as_a_stalled_subscriber_disconnects_never_aborts``
runs the race in child processes). Schema 1 was a multipart layout of the same header.

``encode_message`` / ``decode_message`` are pure functions shared by the publisher and
``augury.client`` so the round trip can be tested without sockets.

Slow subscribers are isolated by default (``isolate_slow_subscribers=True``): libzmq drops
per subscriber, so a subscriber whose queue (``hwm`` messages) is full loses messages, seen as
gaps in its sequence numbers, while every other subscriber keeps receiving everything. Known
drawback: the publisher cannot count those drops (``Publisher.dropped`` stays empty; only
the subscribers' gaps show them). ``isolate_slow_subscribers=False`` selects ``XPUB_NODROP``
instead: a full send queue of some subscriber of a topic makes the non-blocking send fail,
the message is dropped for every subscriber of the topic and counted in
``Publisher.dropped[topic]`` (its sequence number is still consumed, so subscribers see a
gap). Its drawback made it unfit as the default: one stalled subscriber holds every
subscriber of the same topic to its pace (a subscriber that never reads starves them all).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

SCHEMA_VERSION = 2
"""Wire schema version written in every header; bumped only on incompatible changes."""

TOPIC_BELIEFS = "beliefs"
TOPIC_PREDICTION = "prediction"
TOPIC_SURPRISE = "surprise"
TOPIC_STATS = "stats"
TOPIC_DICTIONARY = "dictionary"
TOPICS: tuple[str, ...] = (TOPIC_BELIEFS, TOPIC_PREDICTION, TOPIC_SURPRISE, TOPIC_STATS,
                           TOPIC_DICTIONARY)
"""The topics the daemon publishes (``dictionary``, the layer-1 weights, only every few
seconds of wall time); any other non-empty topic name is allowed too."""

DEFAULT_PUB_ENDPOINT = "tcp://127.0.0.1:5556"

_ALLOWED_KINDS = frozenset("biufc")  # bool, int, uint, float, complex
_HEADER_KEYS = ("schema", "topic", "seq", "stream_time_us", "sensor_time_us", "wall_time_ns",
                "arrays", "meta")


class MessageError(ValueError):
    """A received message does not follow schema v2; the text names the byte offset or field."""


class SchemaVersionError(MessageError):
    """A message carries a schema version this code does not understand."""


@dataclass
class Message:
    """One decoded schema-v2 message.

    ``arrays`` maps names to NumPy arrays (read-only views on the received frame when they
    are aligned, else aligned copies); ``gap`` is the number of messages of this topic missed
    since the previously received one (0 for the first, and after a publisher restart).
    """

    topic: str
    header: dict[str, Any]
    arrays: dict[str, np.ndarray]
    seq: int
    stream_time_us: int
    wall_time_ns: int
    sensor_time_us: int | None = None
    gap: int = 0

    @property
    def meta(self) -> dict[str, Any]:
        """The header's free ``meta`` object (scalar statistics, layer names, ...)."""
        return self.header["meta"]


def jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can encode.

    NumPy scalars become Python scalars, small arrays and tuples become lists, non-finite
    floats (NaN, ±inf) become ``None`` (JSON has no such numbers) and mapping keys become
    strings. Raises TypeError naming the offending type for anything else.
    """
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    raise TypeError(f"cannot encode a {type(obj).__name__} as JSON")


def _wire_array(name: str, arr: np.ndarray) -> np.ndarray:
    """The C-contiguous little-endian array sent for ``arr`` (no copy when it already is)."""
    if not isinstance(arr, np.ndarray):
        arr = np.asarray(arr)
    dt = arr.dtype
    if dt.names is not None or dt.kind not in _ALLOWED_KINDS:
        raise ValueError(f"array {name!r}: dtype {dt} is not a plain numeric dtype "
                         "(bool, int, uint, float, complex)")
    if dt.byteorder == ">" or (dt.byteorder == "=" and not np.little_endian):
        arr = arr.astype(dt.newbyteorder("<"))
    # not np.ascontiguousarray: it turns 0-d arrays into shape (1,)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _align8(n: int) -> int:
    return (n + 7) & ~7


def encode_message(
    topic: str,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None,
    *,
    seq: int,
    stream_time_us: int,
    sensor_time_us: int | None,
    wall_time_ns: int,
) -> bytes:
    """The single frame of one schema-v2 message (layout in the module docstring).

    Raises ValueError for an empty topic or one containing a NUL byte, a non-numeric dtype,
    or meta that JSON cannot carry.
    """
    if not topic or "\x00" in topic:
        raise ValueError(f"topic must be a non-empty string without NUL bytes, got {topic!r}")
    wire = [_wire_array(name, a) for name, a in arrays.items()]
    try:
        meta_json = jsonable(dict(meta or {}))
    except TypeError as exc:
        raise ValueError(f"meta of topic {topic!r}: {exc}") from exc
    specs = []
    offset = 0
    for name, a in zip(arrays, wire, strict=True):
        offset = _align8(offset)
        specs.append({"name": str(name), "dtype": a.dtype.str, "shape": list(a.shape),
                      "offset": offset})
        offset += a.nbytes
    header = {
        "schema": SCHEMA_VERSION,
        "topic": topic,
        "seq": int(seq),
        "stream_time_us": int(stream_time_us),
        "sensor_time_us": None if sensor_time_us is None else int(sensor_time_us),
        "wall_time_ns": int(wall_time_ns),
        "arrays": specs,
        "meta": meta_json,
    }
    head = topic.encode() + b"\x00" + json.dumps(
        header, allow_nan=False, separators=(",", ":")).encode() + b"\x00"
    parts: list[Any] = [head, bytes(_align8(len(head)) - len(head))]
    end = 0
    for spec, a in zip(specs, wire, strict=True):
        parts.append(bytes(spec["offset"] - end))
        parts.append(a.reshape(-1).view(np.uint8))
        end = spec["offset"] + a.nbytes
    return b"".join(parts)


def _as_bytes_view(frame: Any) -> memoryview:
    if isinstance(frame, np.ndarray):
        return memoryview(frame.reshape(-1).view(np.uint8))
    if isinstance(frame, zmq.Frame):
        return frame.buffer
    return memoryview(frame).cast("B")


def _check_int(header: Mapping[str, Any], key: str, *, nullable: bool = False) -> None:
    value = header.get(key)
    if value is None and nullable:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise MessageError(f"header field {key!r} must be an integer, got {value!r}")


def _decode_dtype(desc: Any, i: int) -> np.dtype:
    if not isinstance(desc, str):
        raise MessageError(f"header arrays[{i}].dtype must be a string, got {desc!r}")
    try:
        dt = np.dtype(desc)
    except TypeError as exc:
        raise MessageError(f"header arrays[{i}].dtype {desc!r} is not a NumPy dtype") from exc
    if dt.names is not None or dt.kind not in _ALLOWED_KINDS or dt.byteorder == ">":
        raise MessageError(f"header arrays[{i}].dtype {desc!r} is not a little-endian "
                           "numeric dtype")
    return dt


def _decode_array(spec: Any, data: memoryview, i: int, expected_offset: int
                  ) -> tuple[str, np.ndarray, int]:
    """Array ``i`` of the data section; returns (name, array, its end offset in bytes)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise MessageError(f"header arrays[{i}] must be an object with a string 'name'")
    dt = _decode_dtype(spec.get("dtype"), i)
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise MessageError(f"header arrays[{i}].shape must be a list of non-negative "
                           f"integers, got {shape!r}")
    offset = spec.get("offset")
    if offset != expected_offset or isinstance(offset, bool):
        raise MessageError(f"header arrays[{i}].offset ({spec['name']!r}) is {offset!r}, "
                           f"expected {expected_offset} (the previous array's end rounded up "
                           "to a multiple of 8)")
    count = math.prod(shape)
    end = offset + count * dt.itemsize
    if end > data.nbytes:
        raise MessageError(f"array {i} ({spec['name']!r}, {dt.str} {tuple(shape)}) needs data "
                           f"bytes {offset}..{end} but the data section has {data.nbytes}")
    if count == 0:
        return spec["name"], np.empty(tuple(shape), dtype=dt), end
    arr = np.frombuffer(data, dtype=dt, count=count, offset=offset).reshape(tuple(shape))
    if not arr.flags.aligned:
        arr = arr.copy()
    arr.flags.writeable = False  # a view on the received frame, or a copy of it: read-only
    return spec["name"], arr, end


_MAX_HEAD_BYTES = 1 << 20
"""Longest topic + header accepted (bytes); a frame with no header end within it is refused."""


def _find_nul(buf: memoryview, start: int) -> int:
    """Index of the first 0x00 byte at or after ``start`` within the first 1 MiB, or -1."""
    window = 4096
    limit = min(buf.nbytes, _MAX_HEAD_BYTES)
    while True:
        stop = min(start + window, limit)
        found = bytes(buf[start:stop]).find(b"\x00")
        if found >= 0:
            return start + found
        if stop >= limit:
            return -1
        start, window = stop, window * 4


def _split_frame(frame: Any) -> tuple[str, bytes, memoryview]:
    """(topic, header bytes, data section) of one schema-v2 frame."""
    buf = _as_bytes_view(frame)
    topic_end = _find_nul(buf, 0)
    if topic_end <= 0:
        raise MessageError(f"frame of {buf.nbytes} bytes does not start with a topic ended by "
                           f"a NUL byte ({'empty topic' if topic_end == 0 else 'no NUL'})")
    head_end = _find_nul(buf, topic_end + 1)
    if head_end < 0:
        raise MessageError(f"no NUL byte ends the header (from byte {topic_end + 1}) within "
                           f"{min(buf.nbytes, _MAX_HEAD_BYTES)} bytes")
    try:
        topic = bytes(buf[:topic_end]).decode()
    except UnicodeDecodeError as exc:
        raise MessageError(f"topic (bytes 0..{topic_end}) is not UTF-8: {exc}") from exc
    data_start = _align8(head_end + 1)
    if data_start > buf.nbytes:
        raise MessageError(f"frame of {buf.nbytes} bytes ends inside the padding after the "
                           f"header (data section expected at byte {data_start})")
    return topic, bytes(buf[topic_end + 1:head_end]), buf[data_start:]


def decode_message(frames: Any) -> Message:
    """Decode one schema-v2 message: its frame (bytes, memoryview, zmq.Frame, uint8 array) or
    a list holding that one frame, as ``recv_multipart`` returns it.

    Raises SchemaVersionError for another schema version (a multipart message is schema 1)
    and MessageError, naming the byte offset or header field, for anything else that does not
    follow schema v2. ``gap`` is left at 0 (it needs the subscriber's history).
    """
    if isinstance(frames, (list, tuple)):
        if len(frames) > 1:
            raise SchemaVersionError(
                f"a multipart message of {len(frames)} frames: schema 1 (augury before "
                f"schema {SCHEMA_VERSION}); this client understands schema {SCHEMA_VERSION} "
                "(one frame per message) only")
        if not frames:
            raise MessageError("empty message (no frame)")
        frames = frames[0]
    topic, head, data = _split_frame(frames)
    try:
        header = json.loads(head.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(f"header (bytes {len(topic) + 1}..{len(topic) + 1 + len(head)}) is "
                           f"not UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise MessageError(f"header must be a JSON object, got {type(header).__name__}")
    schema = header.get("schema")
    if schema != SCHEMA_VERSION:
        raise SchemaVersionError(f"message on topic {topic!r} has schema {schema!r}; this "
                                 f"client understands schema {SCHEMA_VERSION} only")
    missing = [k for k in _HEADER_KEYS if k not in header]
    if missing:
        raise MessageError(f"header lacks field(s) {missing}")
    if header["topic"] != topic:
        raise MessageError(f"header topic {header['topic']!r} differs from the frame's "
                           f"topic {topic!r}")
    for key in ("seq", "stream_time_us", "wall_time_ns"):
        _check_int(header, key)
    _check_int(header, "sensor_time_us", nullable=True)
    if not isinstance(header["meta"], dict):
        raise MessageError("header field 'meta' must be an object")
    specs = header["arrays"]
    if not isinstance(specs, list):
        raise MessageError(f"header field 'arrays' must be a list, got {specs!r}")
    arrays: dict[str, np.ndarray] = {}
    end = 0
    for i, spec in enumerate(specs):
        name, arr, end = _decode_array(spec, data, i, _align8(end) if i else 0)
        arrays[name] = arr
    if end != data.nbytes:
        raise MessageError(f"the data section has {data.nbytes} bytes but the arrays the "
                           f"header lists end at byte {end}")
    return Message(topic=topic, header=header, arrays=arrays, seq=header["seq"],
                   stream_time_us=header["stream_time_us"],
                   wall_time_ns=header["wall_time_ns"],
                   sensor_time_us=header["sensor_time_us"])


@dataclass
class PublishCounters:
    """Per-topic counts: ``sent`` messages queued, ``dropped`` refused by a full queue."""

    sent: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


class Publisher:
    """Non-blocking schema-v2 publisher on a ZeroMQ XPUB socket (one frame per message).

    ``publish`` never blocks: when a subscriber's queue holds ``hwm`` messages the message is
    dropped for that subscriber only (``isolate_slow_subscribers=True``, the default; not
    counted here) or for every subscriber of the topic and counted in ``dropped[topic]``
    (``False``; one stalled subscriber then starves the others). The frame is copied into
    libzmq's buffers at ``publish`` (``copy=True``): zero-copy sends leave Python memory
    referenced by messages queued for a stalled subscriber, and terminating the context with
    such messages pending aborted the process (SIGABRT in ``Context.term``, seen about one
    run in eight of the stalled-subscriber test). A copy of a map of 10⁵ floats costs tens
    of µs, far below the publish period.
    Not thread-safe: call it from one thread.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_PUB_ENDPOINT,
        *,
        hwm: int = 100,
        context: zmq.Context | None = None,
        isolate_slow_subscribers: bool = True,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if hwm < 1:
            raise ValueError(f"hwm must be >= 1 message, got {hwm}")
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.XPUB_NODROP, 0 if isolate_slow_subscribers else 1)
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscriber's subscribe
        self._clock_ns = clock_ns
        self._seq: dict[str, int] = {}
        self.counters = PublishCounters()
        self.subscriptions: set[str] = set()
        """Topic prefixes some subscriber currently subscribes to (XPUB notifications)."""
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._close_sockets(0)
            raise OSError(f"cannot bind publisher to {endpoint}: {exc}") from exc
        self._closed = False

    @property
    def bound_endpoint(self) -> str:
        """The endpoint actually bound (the real port when bound to ``tcp://host:*``)."""
        return self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    @property
    def dropped(self) -> dict[str, int]:
        """Messages dropped per topic because a subscriber queue was full."""
        return self.counters.dropped

    @property
    def sent(self) -> dict[str, int]:
        """Messages handed to ZeroMQ per topic."""
        return self.counters.sent

    def poll_subscriptions(self, timeout_ms: int = 0) -> list[tuple[bool, str]]:
        """Read pending (un)subscription notifications: [(subscribed, prefix), ...].

        Waits up to ``timeout_ms`` for the first one. Every subscribe is reported (one per
        subscriber and prefix); an unsubscribe only when the last subscriber of the prefix
        leaves. ``publish`` calls it with 0 so the notifications never pile up; tests use it
        to wait for a subscriber instead of sleeping.
        """
        events: list[tuple[bool, str]] = []
        wait = timeout_ms
        while self._socket.poll(wait, zmq.POLLIN):
            wait = 0
            raw = self._socket.recv(zmq.NOBLOCK)
            if not raw or raw[0] not in (0, 1):
                continue
            prefix = raw[1:].decode(errors="replace")
            subscribed = raw[0] == 1
            if subscribed:
                self.subscriptions.add(prefix)
            else:  # libzmq reports an unsubscription when the last subscriber leaves
                self.subscriptions.discard(prefix)
            events.append((subscribed, prefix))
        return events

    def publish(
        self,
        topic: str,
        arrays: Mapping[str, np.ndarray],
        meta: Mapping[str, Any] | None = None,
        *,
        stream_time_us: int,
        sensor_time_us: int | None = None,
    ) -> bool:
        """Send one message without blocking; True if queued, False if dropped (queue full).

        ``stream_time_us``: time of the read-out on the stream's clock (µs);
        ``sensor_time_us``: the sensor's own time stamp if it differs (µs) or None.
        Raises ValueError for bad input (empty topic, non-numeric dtype, meta not JSON-able)
        and RuntimeError after ``close``; a full queue never raises.
        """
        if self._closed:
            raise RuntimeError("publish() on a closed Publisher")
        seq = self._seq.get(topic, 0)
        frame = encode_message(topic, arrays, meta, seq=seq, stream_time_us=stream_time_us,
                                sensor_time_us=sensor_time_us, wall_time_ns=self._clock_ns())
        self._seq[topic] = seq + 1
        self.poll_subscriptions(0)
        try:
            self._socket.send(frame, flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:
            self.counters.dropped[topic] = self.counters.dropped.get(topic, 0) + 1
            return False
        self.counters.sent[topic] = self.counters.sent.get(topic, 0) + 1
        return True

    def _close_sockets(self, linger: int) -> None:
        self._socket.close(linger=linger)
        if self._own_context:
            self._context.term()

    def close(self, linger: int = 0) -> None:
        """Close the socket (dropping unsent messages after ``linger`` ms); idempotent."""
        if not getattr(self, "_closed", True):
            self._closed = True
            self._close_sockets(linger)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
