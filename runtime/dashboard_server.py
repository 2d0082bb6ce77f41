"""``augury dashboard``: a loopback web page that shows a running daemon live.

Three parts, each in its own thread so that none can hold up another:

* a subscriber thread (``augury.client.Subscriber``) hands every message to a
  ``DashboardState``, which keeps only the newest frame per topic (a slow page drops frames,
  nothing queues);
* a control thread asks the daemon's control socket for ``status`` every ``control_period_s``
  (the page greys its buttons out while nothing answers);
* an aiohttp server (its own asyncio loop) serves the page, pushes an update over a
  websocket to each page at most ``push_hz`` times per second (built from the newest state
  at send time), and forwards button clicks to the control socket.

Why aiohttp: one well-kept dependency that has both the HTTP server and websockets built in
(starlette would need uvicorn and a websocket library besides). Known drawback: one more
event loop next to the zmq threads; the threads only share ``DashboardState`` (one lock).
aiohttp is imported lazily; without it the command names the extra to install.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

from augury.dashboard_state import DashboardState

log = logging.getLogger("augury.dashboard")

CONTROL_COMMANDS = ("status", "pause_learning", "resume_learning", "snapshot", "reset")
"""Control commands the page may send (``set`` is not exposed)."""
STATIC_FILES = {"index.html": "text/html", "dashboard.js": "application/javascript",
                "dashboard.css": "text/css"}


def _aiohttp() -> Any:
    try:
        import aiohttp.web
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the dashboard needs aiohttp: pip install 'augury[dashboard]'") \
            from exc
    return aiohttp


def static_text(name: str) -> str:
    """The text of one of the page's files (``STATIC_FILES``), from the package."""
    if name not in STATIC_FILES:
        raise KeyError(name)
    return resources.files("augury").joinpath("dashboard_static", name).read_text("utf-8")


@dataclass(frozen=True)
class DashboardOptions:
    """daemon: the daemon's PUB endpoint; control: its control endpoint (None: no buttons);
    host/port: where to serve (port 0: any free port); stall_s: quiet seconds before the page
    shows "stalled"; push_hz: most updates per second per page; control_period_s: seconds
    between two ``status`` polls; control_timeout_ms: wait for a control reply (ms)."""

    daemon: str = "tcp://127.0.0.1:5556"
    control: str | None = "tcp://127.0.0.1:5557"
    host: str = "127.0.0.1"
    port: int = 8765
    stall_s: float = 3.0
    push_hz: float = 10.0
    control_period_s: float = 1.0
    control_timeout_ms: int = 500


class DashboardServer:
    """The dashboard's threads; ``start()`` returns once the page is served (its URL is
    ``url``), ``stop()`` ends everything. Usable as a context manager."""

    def __init__(self, options: DashboardOptions, state: DashboardState | None = None) -> None:
        self.options = options
        self.state = state if state is not None else DashboardState(stall_s=options.stall_s)
        self.stop_event = threading.Event()
        self.url: str | None = None
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- zmq threads --------------------------------------------------------------------
    def _subscribe(self) -> None:
        from augury.client import SchemaVersionError, Subscriber

        with Subscriber(self.options.daemon, topics=None, hwm=20) as sub:
            while not self.stop_event.is_set():
                try:
                    msg = sub.recv(timeout_ms=200)
                except SchemaVersionError as exc:
                    log.error("%s", exc)
                    continue
                if msg is not None:
                    self.state.ingest(msg)

    def _poll_control(self) -> None:
        from augury.client import control_status

        endpoint = self.options.control
        while endpoint is not None and not self.stop_event.is_set():
            reply = control_status(endpoint, timeout_ms=self.options.control_timeout_ms)
            ok = reply is not None and bool(reply.get("ok", False))
            self.state.set_control(ok, reply if ok else None)
            self.stop_event.wait(self.options.control_period_s)

    def control(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        """Forward one command to the daemon's control socket; its reply (or an error)."""
        from augury.control import ControlClient

        if cmd not in CONTROL_COMMANDS:
            return {"ok": False, "error": f"command {cmd!r} is not offered by the dashboard; "
                                          f"allowed: {', '.join(CONTROL_COMMANDS)}"}
        if self.options.control is None:
            return {"ok": False, "error": "no control endpoint (--control none)"}
        with ControlClient(self.options.control,
                           timeout_ms=self.options.control_timeout_ms * 2) as client:
            try:
                reply = client.call(cmd, **args)
            except (TimeoutError, ValueError) as exc:
                return {"ok": False, "error": str(exc)}
        if cmd in ("pause_learning", "resume_learning") and reply.get("ok"):
            status = client_status(self.options.control, self.options.control_timeout_ms)
            self.state.set_control(status is not None, status)
        return reply

    # -- web ----------------------------------------------------------------------------
    def _app(self) -> Any:
        web = _aiohttp().web

        async def page(request: Any) -> Any:
            name = request.match_info.get("name", "index.html")
            if name not in STATIC_FILES:
                raise web.HTTPNotFound()
            return web.Response(text=static_text(name), content_type=STATIC_FILES[name],
                                headers={"Cache-Control": "no-store"})

        async def state(request: Any) -> Any:
            return web.json_response(self.state.payload(), dumps=_dumps)

        async def control(request: Any) -> Any:
            try:
                body = await request.json()
                cmd = str(body.get("cmd", ""))
                args = body.get("args") or {}
                if not isinstance(args, dict):
                    raise ValueError("args must be an object")
            except (ValueError, AttributeError) as exc:
                return web.json_response({"ok": False, "error": f"bad request: {exc}"},
                                         status=400)
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(None, self.control, cmd, args)
            return web.json_response(reply, dumps=_dumps)

        async def websocket(request: Any) -> Any:
            ws = web.WebSocketResponse(heartbeat=10.0)
            await ws.prepare(request)
            await ws.send_str(_dumps({"type": "hello", "daemon": self.options.daemon,
                                      "control": self.options.control,
                                      "stall_s": self.options.stall_s}))
            cursor, maps_version, dict_version, seen = -1, -1, -1, -1
            period = 1.0 / self.options.push_hz
            idle = 0.0
            while not ws.closed and not self.stop_event.is_set():
                await asyncio.sleep(period)
                idle += period
                # push on news, and at least every 0.5 s so that "stalled" shows up
                if self.state.version == seen and idle < 0.5:
                    continue
                seen, idle = self.state.version, 0.0
                update = self.state.payload(cursor, maps_version, dict_version)
                cursor, maps_version = update["cursor"], update["maps_version"]
                dict_version = update["dictionary_version"]
                try:
                    await ws.send_str(_dumps(update))
                except (ConnectionError, RuntimeError):
                    break
            return ws

        app = web.Application()
        app.router.add_get("/", page)
        app.router.add_get("/static/{name}", page)
        app.router.add_get("/api/state", state)
        app.router.add_post("/api/control", control)
        app.router.add_get("/ws", websocket)
        return app

    def _serve(self) -> None:
        web = _aiohttp().web
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = web.AppRunner(self._app(), handle_signals=False)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.options.host, self.options.port)
            loop.run_until_complete(site.start())
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}/"
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._error = exc
            self._ready.set()
            loop.run_until_complete(runner.cleanup())
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_until_complete(self._wait_stop())
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _wait_stop(self) -> None:
        while not self.stop_event.is_set():
            await asyncio.sleep(0.1)

    def start(self) -> str:
        """Start the threads; the page's URL once it is served. Raises OSError if the port
        cannot be bound."""
        for name, target in (("dashboard-sub", self._subscribe),
                             ("dashboard-control", self._poll_control),
                             ("dashboard-web", self._serve)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self._ready.wait(30)
        if self._error is not None:
            self.stop()
            raise OSError(f"cannot serve the dashboard on {self.options.host}:"
                          f"{self.options.port}: {self._error}")
        if self.url is None:
            self.stop()
            raise OSError("the dashboard did not start within 30 s")
        return self.url

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every thread (idempotent)."""
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout_s)
        self._threads.clear()

    def __enter__(self) -> DashboardServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client_status(endpoint: str, timeout_ms: int) -> dict[str, Any] | None:
    """The daemon's ``status`` reply if it answers with ok, else None."""
    from augury.client import control_status

    reply = control_status(endpoint, timeout_ms=timeout_ms)
    return reply if reply is not None and reply.get("ok", False) else None


def _dumps(obj: Any) -> str:
    from augury.publish import jsonable

    return json.dumps(jsonable(obj), allow_nan=False, separators=(",", ":"))
