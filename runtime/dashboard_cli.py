"""The blocking front of ``augury dashboard``: start the server, print where, wait for Ctrl-C."""

from __future__ import annotations

import signal
import sys
import threading
import webbrowser

from augury.dashboard_server import DashboardOptions, DashboardServer


def serve_until_interrupted(daemon: str, control: str | None, *, host: str = "127.0.0.1",
                            port: int = 8765, stall_s: float = 3.0,
                            open_browser: bool = False) -> None:
    """Serve the dashboard of the daemon publishing on ``daemon`` until SIGINT/SIGTERM.

    control: the daemon's control endpoint (None: buttons off); host/port: where the page is
    served (port 0: any free port); stall_s: quiet seconds before the page shows "stalled".
    Raises OSError when the port cannot be bound.
    """
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"dashboard: serving on {host}, not loopback: anyone who reaches this address "
              "can pause learning and reset the model", file=sys.stderr)
    opts = DashboardOptions(daemon=daemon, control=control, host=host, port=port,
                            stall_s=stall_s)
    server = DashboardServer(opts)
    url = server.start()
    print(f"dashboard: {url}  (daemon {daemon}, control {control or 'none'}; Ctrl-C stops)",
          file=sys.stderr, flush=True)
    if open_browser:
        webbrowser.open(url)
    done = threading.Event()
    old = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not done.wait(0.5):
            pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        server.stop()
