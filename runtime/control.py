"""ZeroMQ REP control channel: JSON commands in, JSON replies out (see docs/protocol.md).

Request: one frame, a UTF-8 JSON object ``{"cmd": "<name>", ...arguments}``.
Reply: one frame, ``{"ok": true, ...result}`` or ``{"ok": false, "error": "<text>"}``.

The server always replies, whatever arrives (garbage bytes, bad JSON, extra frames, an
unknown command, a handler that raises), so the REP socket can never be wedged. Commands the
daemon registers: ``status``, ``pause_learning``, ``resume_learning``, ``snapshot``,
``reset``, ``set``. The server is either polled by its owner's loop (``poll``) or runs in its
own thread (``start``/``stop``); in the latter case handlers run in that thread.

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

Handler = Callable[[dict[str, Any]], Mapping[str, Any] | None]


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


def handle_request(raw: bytes, handlers: Mapping[str, Handler]) -> dict[str, Any]:
    """The reply object for one raw request (pure apart from what the handler does).

    Never raises: every failure becomes ``{"ok": false, "error": ...}``.
    """
    try:
        request = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
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
        return _error(f"unknown command {cmd!r}{hint}; known: {sorted(handlers)}")
    try:
        result = handler(request)
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


class ControlServer:
    """REP server dispatching JSON commands to ``handlers`` (name -> callable(args) -> dict).

    ``curve``: server key pair to require CURVE encryption; ``curve_clients_dir``: directory
    of authorised client public keys (``*.key``); None lets any client that knows the server
    key in. ``max_request_bytes``: larger requests make libzmq drop the connection.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_CONTROL_ENDPOINT,
        handlers: Mapping[str, Handler] | None = None,
        *,
        curve: CurveKeys | None = None,
        curve_clients_dir: str | os.PathLike[str] | None = None,
        context: zmq.Context | None = None,
        max_request_bytes: int = 1 << 20,
    ) -> None:
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.handled = 0
        self.errors = 0
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._auth = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = True
        self._socket = self._context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_request_bytes)
        try:
            if curve is not None:
                self._setup_curve(curve, curve_clients_dir)
            self._socket.bind(endpoint)
        except (zmq.ZMQError, ValueError) as exc:
            self._teardown()
            raise OSError(f"cannot start control server on {endpoint}: {exc}") from exc
        self._closed = False

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

    def _serve(self, timeout_ms: int) -> int:
        n = 0
        wait = timeout_ms
        while self._socket.poll(wait, zmq.POLLIN):
            wait = 0
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
            reply = _error("interrupted")
            try:
                if len(frames) != 1:
                    reply = _error(f"request must be one frame, got {len(frames)}")
                else:
                    reply = handle_request(frames[0], self.handlers)
            finally:  # even on KeyboardInterrupt: a REP socket must answer before recv
                self._socket.send(encode_reply(reply))
            self.handled += 1
            self.errors += 0 if reply.get("ok") else 1
            n += 1
        return n

    def poll(self, timeout_ms: int = 0) -> int:
        """Handle every pending request, waiting up to ``timeout_ms`` for the first; count."""
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
