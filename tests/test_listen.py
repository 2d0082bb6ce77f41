"""`augury listen` against a running daemon: one line per message, and the rendered PNG."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from augury.cli import main
from augury.config import load_config
from augury.daemon import build_daemon


def test_listen_prints_lines_and_renders(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="rendering needs the tools extra (matplotlib)")
    cfg = load_config(None, {"source.uri": "synthetic://bars?duration_us=none&width=64&height=48",
                             "source.pace": "realtime", "source.speed": 2.0,
                             "publish.rate_ms": 20.0, "publish.endpoint": "tcp://127.0.0.1:*",
                             "control.endpoint": "none"})
    daemon = build_daemon(cfg)
    engine = threading.Thread(target=daemon.pipeline.run, daemon=True)
    engine.start()
    png = tmp_path / "view.png"
    try:
        res = CliRunner().invoke(main, ["listen", daemon.publisher.bound_endpoint,
                                        "--count", "16", "--timeout-s", "60",
                                        "--render", str(png), "--render-every", "8"])
    finally:
        daemon.pipeline.stop_event.set()
        engine.join(timeout=30)
        daemon.close()
    assert not engine.is_alive()
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 16
    topics = {line.split()[0] for line in lines}
    assert {"beliefs", "prediction", "surprise", "stats"} <= topics
    assert any("mu_l1=" in line for line in lines)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_listen_without_daemon_fails_clearly() -> None:
    res = CliRunner().invoke(main, ["listen", "tcp://127.0.0.1:1", "--timeout-s", "0.3"])
    assert res.exit_code != 0 and "no message" in res.output
