"""The JSON control channel: dispatch, error replies, no wedging, timeouts, CURVE."""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time

import pytest
import zmq

from augury.control import (
    MAX_JSON_DEPTH,
    ControlClient,
    ControlServer,
    RequestError,
    check_args,
    create_curve_keys,
    handle_request,
    json_depth,
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


def test_one_poll_handles_at_most_max_per_poll_requests(ctx) -> None:
    """A flood of requests cannot hold the owner's loop (the daemon's engine) in one poll."""
    with ControlServer("tcp://127.0.0.1:*", FakeDaemon().handlers(), context=ctx,
                       max_per_poll=4) as server:
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.rcvtimeo = 3000
        dealer.connect(server.bound_endpoint)
        for _ in range(10):
            dealer.send_multipart([b"", b'{"cmd": "status"}'])
        handled: list[int] = []
        while sum(handled) < 10:
            n = server.poll(3000)
            assert n > 0, "a request went unanswered"
            handled.append(n)
        assert max(handled) <= 4 and len(handled) >= 3
        replies = [json.loads(dealer.recv_multipart()[-1]) for _ in range(10)]
        assert all(r["ok"] for r in replies)
        dealer.close(linger=0)


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


def test_frame_over_max_frame_bytes_drops_that_peer_only(ctx) -> None:
    with ControlServer("tcp://127.0.0.1:*", FakeDaemon().handlers(), context=ctx,
                       max_request_bytes=512, max_frame_bytes=1024) as server:
        server.start()
        try:
            with ControlClient(server.bound_endpoint, timeout_ms=300, context=ctx) as client, \
                    pytest.raises(TimeoutError):
                client.call("set", key="blob", value="x" * 4096)
            with ControlClient(server.bound_endpoint, timeout_ms=3000, context=ctx) as client:
                assert client.call("status")["ok"] is True
        finally:
            server.stop()


def test_request_over_max_request_bytes_gets_an_error_naming_the_limit(ctx) -> None:
    with ControlServer("tcp://127.0.0.1:*", FakeDaemon().handlers(), context=ctx,
                       max_request_bytes=1024, max_frame_bytes=8192) as server:
        server.start()
        try:
            with ControlClient(server.bound_endpoint, timeout_ms=3000, context=ctx) as client:
                reply = client.call("set", key="blob", value="x" * 4096)
                assert reply["ok"] is False
                assert re.search(r"request is \d+ bytes; the limit is 1024 bytes", reply["error"])
                assert client.call("status")["ok"] is True
        finally:
            server.stop()
        assert server.counters.errors == 1 and server.counters.handled == 2


# --- hardening regressions (issue 10) ------------------------------------------------


def test_raw_tcp_bytes_never_stop_a_polled_server(ctx) -> None:
    """Defect 1: random bytes from a plain TCP client made ``poll`` raise zmq.Again (the REP
    socket announced a message, then dropped it for its bad envelope), killing the daemon.
    Now every message is answered or counted, and a real client is served afterwards."""
    rng = random.Random(10)
    with ControlServer("tcp://127.0.0.1:*", FakeDaemon().handlers(), context=ctx) as server:
        port = int(server.bound_endpoint.rsplit(":", 1)[1])
        for _ in range(7):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(rng.randbytes(1200))
                deadline = time.monotonic() + 0.3
                while time.monotonic() < deadline:  # the owner's loop keeps polling
                    server.poll(20)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            server.poll(20)
        c = server.counters
        assert c.malformed + c.handshake_failures + c.recv_failures > 0, server.stats()
        assert c.malformed == c.errors  # every message that arrived was refused, none ran
        client = ControlClient(server.bound_endpoint, timeout_ms=3000, context=ctx)
        t = _serve_in_thread(server, 1)
        assert client.call("status")["ok"] is True
        t.join(5)
        client.close()


def test_dealer_without_delimiter_and_extra_frames_get_error_replies(ctx) -> None:
    with ControlServer("tcp://127.0.0.1:*", FakeDaemon().handlers(), context=ctx) as server:
        server.start()
        try:
            dealer = ctx.socket(zmq.DEALER)
            dealer.linger = 0
            dealer.rcvtimeo = 3000
            dealer.connect(server.bound_endpoint)
            dealer.send(b'{"cmd": "status"}')  # no empty delimiter frame
            assert "lacks the empty delimiter" in json.loads(dealer.recv())["error"]
            dealer.send_multipart([b"", b'{"cmd": "status"}'])  # as REQ sends it
            assert dealer.recv_multipart() == [b"", json.dumps(
                {"ok": True, "learning": True, "settings": {}}).encode()]
            dealer.send_multipart([b"x"] * 40)  # no delimiter within the routing limit
            assert "no empty delimiter frame" in json.loads(dealer.recv())["error"]
            dealer.close(linger=0)
        finally:
            server.stop()
        assert server.counters.malformed == 2 and server.counters.handled == 3


def _nested(depth: int) -> bytes:
    return b'{"cmd": "status", "x": ' + b"[" * depth + b"]" * depth + b"}"


def test_deeply_nested_json_gets_an_error_naming_the_depth() -> None:
    """Defect 2: 1,100 nested arrays (2.2 KB) raised RecursionError out of the server."""
    raw = _nested(1100)
    assert len(raw) < 2300
    reply = handle_request(raw, FakeDaemon().handlers())
    assert reply["ok"] is False
    assert f"1101 levels deep; the limit is {MAX_JSON_DEPTH}" in reply["error"]
    ok = handle_request(_nested(MAX_JSON_DEPTH - 1), FakeDaemon().handlers())
    assert ok == {"ok": True, "learning": True, "settings": {}}


def test_deep_json_over_the_socket_leaves_the_server_answering(ctx) -> None:
    with ControlServer("tcp://127.0.0.1:*", FakeDaemon().handlers(), context=ctx) as server:
        raw = ctx.socket(zmq.REQ)
        raw.linger = 0
        raw.rcvtimeo = 3000
        raw.connect(server.bound_endpoint)
        for depth in (1100, 30_000):  # 60 KB: under the size limit
            raw.send(_nested(depth))
            while not server.poll(100):
                pass
            assert "levels deep" in json.loads(raw.recv())["error"]
        raw.close(linger=0)
        assert server.counters.errors == 2


@pytest.mark.parametrize(
    ("text", "depth"),
    [("1", 0), ("{}", 1), ('{"a": [1, {"b": []}]}', 4), ('["[[[", "\\"", "]"]', 1),
     ('{"a": "\\\\"}', 1), ("[" * 50, 50), ('"[[[' , 0)],
)
def test_json_depth_skips_strings_and_escapes(text: str, depth: int) -> None:
    assert json_depth(text) == depth


def test_request_errors_name_the_command_without_a_type_name() -> None:
    def strict(args):
        check_args("status", args)
        return {}

    reply = handle_request(b'{"cmd": "status", "verbose": 1}', {"status": strict})
    assert reply == {"ok": False, "error": "status: status takes no arguments; got ['verbose']"}
    with pytest.raises(RequestError, match=r"takes only \['what'\]; got \['how'\]"):
        check_args("reset", {"how": 1}, ("what",))


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
