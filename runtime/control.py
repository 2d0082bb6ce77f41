"""ZeroMQ ROUTER control channel: JSON commands in, JSON replies out (see docs/protocol.md).

Request: one frame, a UTF-8 JSON object ``{"cmd": "<name>", ...arguments}``, sent from a REQ
socket (or a DEALER that sends the empty delimiter frame first, as REQ does).
Reply: one frame, ``{"ok": true, ...result}`` or ``{"ok": false, "error": "<text>"}``.

The server answers whatever arrives (garbage bytes, bad JSON, JSON nested too deep, a request
over ``max_request_bytes``, extra frames, a missing delimiter, an unknown command, wrong
argument types, a handler that raises) with an error reply when the peer can be addressed,
counts it, and goes on: no request can stop the loop. It is a ROUTER, not a REP socket, so
it has no send/receive state machine a misbehaving peer could wedge, and it addresses each
reply to its peer explicitly (a reply to a peer that has gone is counted, never waited for).
Frames over ``max_frame_bytes`` (libzmq's ``ZMQ_MAXMSGSIZE``) make libzmq drop that peer's
connection before anything is read; failed handshakes (e.g. raw bytes from a plain TCP
client) are counted from the socket's monitor. Commands the daemon registers: ``status``,
``pause_learning``, ``resume_learning``, ``snapshot``, ``reset``, ``set``. The server is
either polled by its owner's loop (``poll``) or runs in its own thread (``start``/``stop``);
in the latter case handlers run in that thread.

Optional CURVE security (libzmq built with libsodium, ``zmq.has("curve")``): the server holds
a key pair (``server.key`` + ``server.key_secret`` in a keys directory, ZeroMQ certificate
format from ``zmq.auth``); clients must know the server's public key; if a directory of
authorised client public keys is given, only those clients are let in (ZAP authenticator).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from augury.publish import jsonable

log = logging.getLogger(__name__)

DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5557"
COMMANDS: tuple[str, ...] = ("status", "pause_learning", "resume_learning", "snapshot",
                             "reset", "set")
"""Commands the daemon registers."""

MAX_REQUEST_BYTES = 64 * 1024
"""Default largest request (bytes) the server parses; a larger one gets an error reply."""
MAX_FRAME_BYTES = 1 << 20
"""Default ``ZMQ_MAXMSGSIZE``: a larger frame makes libzmq drop the connection (no reply)."""
MAX_JSON_DEPTH = 16
"""Default deepest nesting of arrays/objects in a request (the request object is depth 1)."""
MAX_ENVELOPE_FRAMES = 16
"""Routing frames a request may carry before its empty delimiter (REQ sends none)."""

Handler = Callable[[dict[str, Any]], Mapping[str, Any] | None]


class RequestError(ValueError):
    """A request the server refuses; the text names the field, the value and what is allowed.

    Handlers raise it for bad arguments; the reply is ``"<cmd>: <text>"`` (no type name).
    """


def describe(value: Any, limit: int = 40) -> str:
    """A short description of a JSON value for an error message: type name and repr."""
    text = repr(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(value).__name__} {text}"


def check_args(cmd: str, args: Mapping[str, Any], allowed: tuple[str, ...] = ()) -> None:
    """Raise RequestError if ``args`` has a key outside ``allowed`` (naming key and allowed)."""
    extra = sorted(k for k in args if k not in allowed)
    if extra:
        takes = f"takes only {list(allowed)}" if allowed else "takes no arguments"
        raise RequestError(f"{cmd} {takes}; got {extra}")


_JSON_TOKENS = re.compile(r'\\.|"|[\[\]{}]', re.S)


def json_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in JSON text, strings skipped, without recursion.

    Linear in the text (a regular-expression scan of fixed-width tokens), so it is safe to
    run on untrusted text before ``json.loads``, whose C scanner recurses. Brackets after an
    unterminated string are not counted (the text is then not JSON anyway).
    """
    depth = deepest = 0
    in_string = False
    for m in _JSON_TOKENS.finditer(text):
        tok = m.group()
        if tok == '"':
            in_string = not in_string
        elif in_string or len(tok) == 2:
            continue  # a bracket inside a string, or an escape (meaningless outside one)
        elif tok in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


@dataclass(frozen=True)
class CurveKeys:
    """A CURVE key pair in Z85 text (40 bytes each); ``secret`` is None for a public key only."""

    public: bytes
    secret: bytes | None = None


def create_curve_keys(keys_dir: str | os.PathLike[str], name: str = "server") -> CurveKeys:
    """Generate a key pair as ``<keys_dir>/<name>.key`` and ``<name>.key_secret`` (mode 0600)."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq has no CURVE support (built without libsodium)")
    Path(keys_dir).mkdir(parents=True, exist_ok=True)
    _, secret_file = zmq.auth.create_certificates(keys_dir, name)
    os.chmod(secret_file, 0o600)
    return load_curve_keys(secret_file)


def load_curve_keys(path: str | os.PathLike[str]) -> CurveKeys:
    """Read a ZeroMQ certificate file (``.key`` public or ``.key_secret`` with both keys)."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read CURVE certificate {path}: {exc}") from exc
    return CurveKeys(public=public, secret=secret)


def server_curve_keys(keys_dir: str | os.PathLike[str]) -> CurveKeys:
    """The server key pair of ``keys_dir`` (``server.key_secret``), created on first use."""
    secret_file = Path(keys_dir) / "server.key_secret"
    if secret_file.exists():
        return load_curve_keys(secret_file)
    return create_curve_keys(keys_dir, "server")


def _error(text: str) -> dict[str, Any]:
    return {"ok": False, "error": text}


def handle_request(raw: bytes, handlers: Mapping[str, Handler], *,
                   max_request_bytes: int = MAX_REQUEST_BYTES,
                   max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """The reply object for one raw request (pure apart from what the handler does).

    Never raises an Exception: every failure (size over ``max_request_bytes``, not UTF-8,
    not JSON, nesting deeper than ``max_depth``, not an object, no ``cmd``, unknown command,
    a handler that raises) becomes ``{"ok": false, "error": ...}`` naming what is wrong.
    """
    if len(raw) > max_request_bytes:
        return _error(f"request is {len(raw)} bytes; the limit is {max_request_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _error(f"request is not UTF-8 JSON: {exc}")
    depth = json_depth(text)
    if depth > max_depth:
        return _error(f"request nests JSON arrays/objects {depth} levels deep; the limit is "
                      f"{max_depth}")
    try:
        request = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return _error(f"request is not UTF-8 JSON: {exc}")
    if not isinstance(request, dict):
        return _error(f"request must be a JSON object, got {type(request).__name__}")
    cmd = request.pop("cmd", None)
    if not isinstance(cmd, str):
        return _error('request lacks a string "cmd" field')
    handler = handlers.get(cmd)
    if handler is None:
        close = difflib.get_close_matches(cmd, list(handlers), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return _error(f"unknown command {cmd[:64]!r}{hint}; known: {sorted(handlers)}")
    try:
        result = handler(request)
    except RequestError as exc:
        return _error(f"{cmd}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the channel
        log.exception("control command %r failed", cmd)
        return _error(f"{cmd}: {type(exc).__name__}: {exc}")
    if result is None:
        result = {}
    if not isinstance(result, Mapping):
        return _error(f"{cmd}: handler returned {type(result).__name__}, not a mapping")
    return {"ok": True, **result}


def encode_reply(reply: Mapping[str, Any]) -> bytes:
    """Strict JSON bytes of a reply; a reply JSON cannot carry becomes an error reply."""
    try:
        return json.dumps(jsonable(reply), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        return json.dumps(_error(f"reply is not JSON-serialisable: {exc}")).encode()


_HANDSHAKE_FAILED = 0
for _name in ("EVENT_HANDSHAKE_FAILED_NO_DETAIL", "EVENT_HANDSHAKE_FAILED_PROTOCOL",
              "EVENT_HANDSHAKE_FAILED_AUTH"):
    _HANDSHAKE_FAILED |= int(getattr(zmq, _name, 0))


@dataclass
class ControlCounters:
    """What the control server has seen since it started (reported by ``status``).

    ``handled``: requests answered or refused; ``errors``: of which refused with an error
    reply; ``malformed``: of which did not even form a request (no delimiter frame, several
    body frames, too many routing frames); ``unanswered``: replies libzmq could not deliver
    (the peer left or its queue was full); ``recv_failures``: receive calls that failed (a
    message announced by poll that was gone); ``handshake_failures``: connections refused
    during the ZeroMQ handshake (raw bytes from a plain TCP client, a wrong CURVE key).
    """

    handled: int = 0
    errors: int = 0
    malformed: int = 0
    unanswered: int = 0
    recv_failures: int = 0
    handshake_failures: int = 0


class ControlServer:
    """ROUTER server dispatching JSON commands to ``handlers`` (name -> callable(args) -> dict).

    ``curve``: server key pair to require CURVE encryption; ``curve_clients_dir``: directory
    of authorised client public keys (``*.key``); None lets any client that knows the server
    key in. ``max_request_bytes``: larger requests get an error reply; ``max_frame_bytes``:
    larger frames make libzmq drop the connection (no reply; it bounds memory); ``max_depth``:
    deepest JSON nesting parsed; ``max_per_poll``: most requests handled by one ``poll``.
    Counters: ``counters`` (also ``handled``, ``errors``).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_CONTROL_ENDPOINT,
        handlers: Mapping[str, Handler] | None = None,
        *,
        curve: CurveKeys | None = None,
        curve_clients_dir: str | os.PathLike[str] | None = None,
        context: zmq.Context | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        max_depth: int = MAX_JSON_DEPTH,
        max_per_poll: int = 64,
    ) -> None:
        if max_per_poll < 1:
            raise ValueError(f"max_per_poll must be >= 1, got {max_per_poll}")
        if not 0 < max_request_bytes <= max_frame_bytes:
            raise ValueError(f"need 0 < max_request_bytes ({max_request_bytes}) <= "
                             f"max_frame_bytes ({max_frame_bytes})")
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.counters = ControlCounters()
        self.max_request_bytes = max_request_bytes
        self.max_depth = max_depth
        self.max_per_poll = max_per_poll
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._auth = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = True
        self._monitor: zmq.Socket | None = None
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # undeliverable replies raise: counted
        try:
            if curve is not None:
                self._setup_curve(curve, curve_clients_dir)
            if _HANDSHAKE_FAILED:
                self._monitor = self._socket.get_monitor_socket(_HANDSHAKE_FAILED)
            self._socket.bind(endpoint)
        except (zmq.ZMQError, ValueError) as exc:
            self._teardown()
            raise OSError(f"cannot start control server on {endpoint}: {exc}") from exc
        self._closed = False

    @property
    def handled(self) -> int:
        """Requests answered or refused so far."""
        return self.counters.handled

    @property
    def errors(self) -> int:
        """Requests refused with an error reply so far."""
        return self.counters.errors

    def stats(self) -> dict[str, int]:
        """The counters as a plain dict (for ``status``)."""
        return dict(vars(self.counters))

    def _setup_curve(self, curve: CurveKeys, clients_dir: str | os.PathLike[str] | None) -> None:
        if not zmq.has("curve"):
            raise ValueError("CURVE requested but this libzmq has no CURVE support")
        if curve.secret is None:
            raise ValueError("the server needs its secret key for CURVE")
        if clients_dir is not None:
            from zmq.auth.thread import ThreadAuthenticator

            self._auth = ThreadAuthenticator(self._context, log=log)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(clients_dir))
        self._socket.curve_secretkey = curve.secret
        self._socket.curve_publickey = curve.public
        self._socket.curve_server = True

    @property
    def bound_endpoint(self) -> str:
        """The endpoint actually bound (the real port when bound to ``tcp://host:*``)."""
        return self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _drain_monitor(self) -> None:
        """Count the handshake failures the socket monitor reported (never blocks)."""
        if self._monitor is None:
            return
        while self._monitor.poll(0, zmq.POLLIN):
            try:
                self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            self.counters.handshake_failures += 1

    def _route_and_body(self, frames: list[bytes]) -> tuple[list[bytes], list[bytes], str]:
        """Split a ROUTER message into (reply route, body frames, envelope error or "").

        A REQ peer's message is ``[identity, b"", request]``; proxies may add routing frames
        before the delimiter. Without a delimiter (a DEALER or a raw ZMTP peer) the reply goes
        to the identity alone, so a DEALER still reads the error.
        """
        identity, rest = frames[:1], frames[1:]
        for i, frame in enumerate(rest[:MAX_ENVELOPE_FRAMES + 1]):
            if not frame:
                return identity + rest[:i + 1], rest[i + 1:], ""
        if len(rest) > MAX_ENVELOPE_FRAMES:
            return identity, [], (f"request has no empty delimiter frame within "
                                  f"{MAX_ENVELOPE_FRAMES} routing frames")
        return identity, rest, ("request lacks the empty delimiter frame (send from a REQ "
                                "socket, or a DEALER that sends an empty frame first)")

    def _answer(self, frames: list[bytes]) -> None:
        """Reply to one received ROUTER message; count it. Never raises an Exception."""
        route: list[bytes] = frames[:1]
        try:
            route, body, envelope_error = self._route_and_body(frames)
            if envelope_error:
                self.counters.malformed += 1
                reply = _error(envelope_error)
            elif len(body) != 1:
                self.counters.malformed += 1
                reply = _error(f"request must be one frame, got {len(body)}")
            else:
                reply = handle_request(body[0], self.handlers,
                                       max_request_bytes=self.max_request_bytes,
                                       max_depth=self.max_depth)
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any request
            log.exception("control request could not be handled")
            reply = _error(f"internal error: {type(exc).__name__}: {exc}")
        self.counters.handled += 1
        self.counters.errors += 0 if reply.get("ok") else 1
        try:
            self._socket.send_multipart([*route, encode_reply(reply)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # peer gone (EHOSTUNREACH) or its queue full (EAGAIN)
            self.counters.unanswered += 1
            log.debug("control reply not delivered: %s", exc)

    def _serve(self, timeout_ms: int) -> int:
        n = 0
        wait = timeout_ms
        self._drain_monitor()
        while n < self.max_per_poll and self._socket.poll(wait, zmq.POLLIN):
            wait = 0
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # announced by poll, gone by now: count, go on
                self.counters.recv_failures += 1
                log.debug("control receive failed: %s", exc)
                break
            self._answer(frames)
            n += 1
        self._drain_monitor()
        return n

    def poll(self, timeout_ms: int = 0) -> int:
        """Handle pending requests, at most ``max_per_poll`` (so a flood of requests cannot
        hold the owner's loop), waiting up to ``timeout_ms`` for the first; their count."""
        if self._thread is not None:
            raise RuntimeError("poll() while the server thread is running; call stop() first")
        return self._serve(timeout_ms)

    def start(self) -> None:
        """Serve requests in a daemon thread until ``stop``; handlers then run in it."""
        if self._thread is not None:
            raise RuntimeError("the control server thread is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="augury-control", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._serve(100)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the server thread (it notices within 100 ms); no-op if not running."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout_s)
            self._thread = None

    def _teardown(self) -> None:
        if self._monitor is not None:
            try:
                self._socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(linger=0)
            self._monitor = None
        self._socket.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if self._own_context:
            self._context.term()

    def close(self) -> None:
        """Stop the thread if running and close the socket; idempotent."""
        if not self._closed:
            self.stop()
            self._closed = True
            self._teardown()

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ControlClient:
    """REQ client: ``call(cmd, **args)`` sends one request and waits ``timeout_ms`` for a reply.

    After a timeout the REQ socket is closed and recreated (lazy-pirate pattern), so the next
    call works. ``server_key``: the server's CURVE public key to encrypt (and authenticate the
    server); ``client_keys``: this client's key pair (a fresh one if None).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_CONTROL_ENDPOINT,
        timeout_ms: int = 1000,
        *,
        server_key: bytes | None = None,
        client_keys: CurveKeys | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self._server_key = server_key
        if server_key is not None and client_keys is None:
            public, secret = zmq.curve_keypair()
            client_keys = CurveKeys(public=public, secret=secret)
        self._client_keys = client_keys
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._new_socket()
        self._closed = False

    def _new_socket(self) -> zmq.Socket:
        sock = self._context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        if self._server_key is not None and self._client_keys is not None:
            sock.curve_serverkey = self._server_key
            sock.curve_publickey = self._client_keys.public
            sock.curve_secretkey = self._client_keys.secret
        sock.connect(self.endpoint)
        return sock

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send ``{"cmd": cmd, **args}`` and return the reply object.

        Raises TimeoutError if no reply arrives within ``timeout_ms`` and ValueError if the
        reply is not a JSON object. A ``{"ok": false}`` reply is returned, not raised.
        """
        if self._closed:
            raise RuntimeError("call() on a closed ControlClient")
        request = json.dumps(jsonable({"cmd": cmd, **args}), allow_nan=False).encode()
        try:
            self._socket.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
            self._socket.send(request)
            raw = self._socket.recv()
        except zmq.Again as exc:
            self._socket.close(linger=0)
            self._socket = self._new_socket()
            raise TimeoutError(f"no reply to {cmd!r} from {self.endpoint} within "
                               f"{self.timeout_ms} ms") from exc
        try:
            reply = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"reply from {self.endpoint} is not UTF-8 JSON: {exc}") from exc
        if not isinstance(reply, dict):
            raise ValueError(f"reply from {self.endpoint} is not a JSON object: {reply!r}")
        return reply

    def close(self) -> None:
        """Close the socket (and its private context); idempotent."""
        if not self._closed:
            self._closed = True
            self._socket.close(linger=0)
            if self._own_context:
                self._context.term()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
