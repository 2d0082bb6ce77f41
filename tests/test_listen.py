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


def test_render_shows_the_observed_counts_when_sent(tmp_path: Path) -> None:
    """--render adds a panel for count_observed when a daemon sends it (older ones don't)."""
    pytest.importorskip("matplotlib", reason="rendering needs the tools extra (matplotlib)")
    import numpy as np

    from augury.render import render_snapshot

    pred = {"rate_hz": np.ones((6, 8, 2), np.float32), "rate_var": np.ones((6, 8, 2), np.float32)}
    widths = []
    for arrays in (pred, {**pred, "count_observed": np.zeros((6, 8, 2), np.float32)}):
        png = render_snapshot(tmp_path / f"{len(arrays)}.png", {"prediction": arrays})
        widths.append(int.from_bytes(png.read_bytes()[16:20], "big"))  # PNG IHDR width
    assert widths[1] == round(widths[0] * 3 / 2)  # 2 panels -> 3 panels of 3.2 in each
