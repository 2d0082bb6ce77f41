"""The JSON control channel: dispatch, error replies, no wedging, timeouts, CURVE."""

from __future__ import annotations

import json
import re
import threading

import pytest
import zmq

from augury.control import (
    ControlClient,
    ControlServer,
    create_curve_keys,
    handle_request,
    load_curve_keys,
    server_curve_keys,
)


class FakeDaemon:
    """Handlers over a tiny state, as the daemon will register them."""

    def __init__(self) -> None:
        self.learning = True
        self.settings: dict[str, object] = {}

    def handlers(self):
        return {
            "status": lambda args: {"learning": self.learning, "settings": self.settings},
            "pause_learning": self.pause,
            "resume_learning": self.resume,
            "set": self.set,
            "reset": lambda args: 1 / 0,  # a handler bug
            "snapshot": lambda args: ["not", "a", "mapping"],
        }

    def pause(self, args):
        self.learning = False
        return {"learning": False}

    def resume(self, args):
        self.learning = True
        return None

    def set(self, args):
        self.settings[args["key"]] = args["value"]
        return {args["key"]: args["value"]}


# --- pure dispatch ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        (b"\xff\xfe\x00garbage", "not UTF-8 JSON"),
        (b"{not json", "not UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (b'{"command": "status"}', 'lacks a string "cmd"'),
        (b'{"cmd": 3}', 'lacks a string "cmd"'),
        (b'{"cmd": "staus"}', "unknown command 'staus' \\(did you mean 'status'\\?\\)"),
        (b'{"cmd": "reset"}', "reset: ZeroDivisionError"),
        (b'{"cmd": "set"}', "set: KeyError"),
        (b'{"cmd": "snapshot"}', "handler returned list, not a mapping"),
    ],
)
def test_bad_requests_get_error_replies(raw: bytes, pattern: str) -> None:
    reply = handle_request(raw, FakeDaemon().handlers())
    assert reply["ok"] is False
    assert re.search(pattern, reply["error"]), reply["error"]


def test_good_requests_dispatch_with_arguments() -> None:
    d = FakeDaemon()
    h = d.handlers()
    assert handle_request(b'{"cmd": "pause_learning"}', h) == {"ok": True, "learning": False}
    assert d.learning is False
    assert handle_request(b'{"cmd": "resume_learning"}', h) == {"ok": True}
    assert d.learning is True
    reply = handle_request(b'{"cmd": "set", "key": "eta", "value": 0.5}', h)
    assert reply == {"ok": True, "eta": 0.5} and d.settings == {"eta": 0.5}


# --- sockets ----------------------------------------------------------------------------


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _serve_in_thread(server: ControlServer, n: int) -> threading.Thread:
    t = threading.Thread(target=lambda: [server.poll(2000) for _ in range(n)], daemon=True)
    t.start()
    return t


def test_server_survives_garbage_and_keeps_answering(ctx) -> None:
    d = FakeDaemon()
    with ControlServer("tcp://127.0.0.1:*", d.handlers(), context=ctx) as server:
        server.start()
        try:
            raw = ctx.socket(zmq.REQ)
            raw.linger = 0
            raw.rcvtimeo = 2000
            raw.connect(server.bound_endpoint)
            for junk in (b"\x00\x01\x02", b"", b'{"cmd": "reset"}', b"null"):
                raw.send(junk)
                assert json.loads(raw.recv())["ok"] is False
            raw.send_multipart([b'{"cmd": "status"}', b"extra"])
            assert "one frame, got 2" in json.loads(raw.recv())["error"]
            raw.close(linger=0)
            with ControlClient(server.bound_endpoint, timeout_ms=2000, context=ctx) as client:
                assert client.call("pause_learning") == {"ok": True, "learning": False}
                assert client.call("status") == {"ok": True, "learning": False, "settings": {}}
                assert client.call("set", key="speed", value=2)["speed"] == 2
                assert client.call("nope")["ok"] is False
        finally:
            server.stop()
        assert server.handled == 9 and server.errors == 6


def test_poll_without_requests_returns_immediately(ctx) -> None:
    with ControlServer("tcp://127.0.0.1:*", {}, context=ctx) as server:
        assert server.poll(0) == 0
        server.start()
        with pytest.raises(RuntimeError, match="server thread is running"):
            server.poll(0)
        server.stop()
        assert server.poll(0) == 0


def test_polled_server_handles_all_pending_requests(ctx) -> None:
    with ControlServer("tcp://127.0.0.1:*", FakeDaemon().handlers(), context=ctx) as server:
        results = []
        clients = [ControlClient(server.bound_endpoint, timeout_ms=3000, context=ctx)
                   for _ in range(3)]
        threads = [threading.Thread(target=lambda c=c: results.append(c.call("status")))
                   for c in clients]
        for t in threads:
            t.start()
        handled = 0
        while handled < 3:
            n = server.poll(3000)
            assert n > 0, "a request went unanswered"
            handled += n
        for t in threads:
            t.join(5)
        assert [r["ok"] for r in results] == [True] * 3
        for c in clients:
            c.close()


def test_client_times_out_then_recovers(ctx) -> None:
    with ControlServer("tcp://127.0.0.1:*", FakeDaemon().handlers(), context=ctx) as server:
        client = ControlClient(server.bound_endpoint, timeout_ms=200, context=ctx)
        with pytest.raises(TimeoutError, match="no reply to 'status'"):
            client.call("status")  # nobody polls the server
        server.poll(0)  # answers the stale request; its reply goes to the closed socket
        t = _serve_in_thread(server, 1)
        client.timeout_ms = 3000
        assert client.call("status")["ok"] is True  # the same client, a fresh socket
        t.join(5)
        client.close()


def test_oversized_request_drops_that_peer_only(ctx) -> None:
    with ControlServer("tcp://127.0.0.1:*", FakeDaemon().handlers(), context=ctx,
                       max_request_bytes=1024) as server:
        server.start()
        try:
            with ControlClient(server.bound_endpoint, timeout_ms=300, context=ctx) as client, \
                    pytest.raises(TimeoutError):
                client.call("set", key="blob", value="x" * 4096)
            with ControlClient(server.bound_endpoint, timeout_ms=3000, context=ctx) as client:
                assert client.call("status")["ok"] is True
        finally:
            server.stop()


def test_reply_that_json_cannot_carry_becomes_an_error(ctx) -> None:
    handlers = {"status": lambda args: {"when": object()}}
    with ControlServer("tcp://127.0.0.1:*", handlers, context=ctx) as server:
        t = _serve_in_thread(server, 1)
        with ControlClient(server.bound_endpoint, timeout_ms=3000, context=ctx) as client:
            reply = client.call("status")
        t.join(5)
    assert reply["ok"] is False and "not JSON-serialisable" in reply["error"]


needs_curve = pytest.mark.skipif(not zmq.has("curve"),
                                 reason="libzmq built without CURVE (libsodium) support")


@needs_curve
def test_curve_keys_are_created_once_and_reloaded(tmp_path) -> None:
    keys = server_curve_keys(tmp_path / "keys")
    assert len(keys.public) == 40 and keys.secret is not None
    assert (tmp_path / "keys" / "server.key_secret").stat().st_mode & 0o777 == 0o600
    assert server_curve_keys(tmp_path / "keys") == keys
    assert load_curve_keys(tmp_path / "keys" / "server.key") == type(keys)(keys.public, None)
    with pytest.raises(ValueError, match="cannot read CURVE certificate"):
        load_curve_keys(tmp_path / "missing.key")


@needs_curve
def test_curve_encrypted_control_on_loopback(tmp_path, ctx) -> None:
    server_keys = server_curve_keys(tmp_path / "keys")
    wrong = create_curve_keys(tmp_path / "other", "server")
    with ControlServer("tcp://127.0.0.1:*", FakeDaemon().handlers(), curve=server_keys,
                       context=ctx) as server:
        server.start()
        try:
            with ControlClient(server.bound_endpoint, timeout_ms=3000, context=ctx,
                               server_key=server_keys.public) as client:
                assert client.call("status")["ok"] is True
            with ControlClient(server.bound_endpoint, timeout_ms=300, context=ctx,
                               server_key=wrong.public) as client, \
                    pytest.raises(TimeoutError):
                client.call("status")  # handshake fails: wrong server key
            with ControlClient(server.bound_endpoint, timeout_ms=300,
                               context=ctx) as client, pytest.raises(TimeoutError):
                client.call("status")  # plain text client
        finally:
            server.stop()


@needs_curve
def test_curve_admits_only_authorised_clients(tmp_path, ctx) -> None:
    server_keys = server_curve_keys(tmp_path / "keys")
    allowed_dir = tmp_path / "clients"
    robot = create_curve_keys(allowed_dir, "robot")  # its public robot.key is in the dir
    stranger = create_curve_keys(tmp_path / "elsewhere", "stranger")
    (allowed_dir / "robot.key_secret").unlink()  # the server keeps public keys only
    with ControlServer("tcp://127.0.0.1:*", FakeDaemon().handlers(), curve=server_keys,
                       curve_clients_dir=allowed_dir, context=ctx) as server:
        server.start()
        try:
            with ControlClient(server.bound_endpoint, timeout_ms=3000, context=ctx,
                               server_key=server_keys.public, client_keys=robot) as client:
                assert client.call("status")["ok"] is True
            with ControlClient(server.bound_endpoint, timeout_ms=300, context=ctx,
                               server_key=server_keys.public,
                               client_keys=stranger) as client, pytest.raises(TimeoutError):
                client.call("status")
        finally:
            server.stop()
