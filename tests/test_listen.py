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
    lines = res.stdout.strip().splitlines()  # one line per message on stdout
    assert len(lines) == 16
    topics = {line.split()[0] for line in lines}
    assert {"beliefs", "prediction", "surprise", "stats"} <= topics
    assert any("mu_l1=" in line for line in lines)
    assert res.stderr.count("legend:") == 1 and "stream time" in res.stderr  # once, first
    seen = [line for line in lines if line.startswith("prediction") and " | seen [" in line]
    assert seen, lines  # the observed counts of the last window reach the line
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_listen_without_daemon_fails_clearly() -> None:
    res = CliRunner().invoke(main, ["listen", "tcp://127.0.0.1:1", "--timeout-s", "0.3"])
    assert res.exit_code != 0 and "no message" in res.output


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_listen_says_when_nothing_arrives_and_that_no_daemon_answers() -> None:
    """Nothing on the endpoint: listen names it and finds no daemon on the control port."""
    port = _free_port()  # nobody publishes nor answers there
    endpoint = f"tcp://127.0.0.1:{port}"
    res = CliRunner().invoke(main, ["listen", endpoint, "--timeout-s", "2",
                                    "--warn-after-s", "0.3", "--no-legend"])
    assert res.exit_code != 0
    assert f"nothing from {endpoint}" in res.stderr
    assert f"no answer to `status` on tcp://127.0.0.1:{port + 1}" in res.stderr
    assert "no daemon seems to be running" in res.stderr
    assert res.stderr.count("nothing from") == 1  # said once per silence, not every poll
    assert "legend:" not in res.stderr


def test_listen_says_a_daemon_runs_when_its_control_socket_answers() -> None:
    """A daemon that answers ``status`` but publishes nothing where listen listens."""
    cfg = load_config(None, {"source.uri": "synthetic://bars?duration_us=none&width=64&height=48",
                             "publish.endpoint": "tcp://127.0.0.1:*",
                             "control.endpoint": "tcp://127.0.0.1:*"})
    daemon = build_daemon(cfg)  # the engine is not started: nothing is published
    assert daemon.control is not None
    daemon.control.start()
    control = daemon.control.bound_endpoint
    silent = f"tcp://127.0.0.1:{_free_port()}"
    try:
        res = CliRunner().invoke(main, ["listen", silent, "--timeout-s", "1.5",
                                        "--warn-after-s", "0.3", "--control", control])
    finally:
        daemon.close()
    assert res.exit_code != 0
    assert f"nothing from {silent}" in res.stderr
    assert f"a daemon answers on {control}" in res.stderr
    assert "source synthetic://bars" in res.stderr and "0 read-outs published" in res.stderr


def _stats(seq: int, uptime_s: float, events: int, dropped: int, t_us: int):
    from augury.client import Message

    meta = {"uptime_s": uptime_s, "events_in": events, "events_processed": events,
            "queue_dropped_events": dropped, "t_us": t_us, "learning": True,
            "events_per_s_in": 1e9, "events_per_s_processed": 1e9,  # averages: not shown
            "latency_p50_ms": 0.5, "latency_p99_ms": 2.0}
    return Message("stats", {"meta": meta}, {}, seq, t_us, 0)


def test_stats_lines_show_rates_over_the_last_interval() -> None:
    """Rates are differences of the counters between two stats messages over the uptime
    between them, not the daemon's averages since start; the first line has none."""
    from augury.cli import MessageLines

    lines = MessageLines()
    first = lines.line(_stats(0, 10.0, 1_000_000, 5, 10_000_000))
    assert "in -- proc --" in first and "drop 5 (+0)" in first
    second = lines.line(_stats(1, 12.0, 1_500_000, 9, 11_000_000))
    assert "in 250.0 kev/s proc 250.0 kev/s speed 0.50x" in second, second
    assert "drop 9 (+4)" in second and "p50/p99 0.50/2.00 ms" in second
    assert "t=   11.000s" in second
    third = lines.line(_stats(2, 13.0, 4_500_000, 9, 12_000_000))
    assert "in 3.00 Mev/s" in third and "speed 1.00x" in third


def test_prediction_line_shows_forecast_and_observed_window() -> None:
    import numpy as np

    from augury.cli import MessageLines
    from augury.client import Message

    arrays = {"rate_hz": np.zeros((2, 2, 2), np.float32),
              "count_mean": np.full((2, 2, 2), 1.5, np.float32),
              "count_var": np.full((2, 2, 2), 2.0, np.float32),
              "count_observed": np.arange(8, dtype=np.float32).reshape(2, 2, 2)}
    meta = {"horizon_ms": 10.0, "observed_t_start_us": 1_230_000,
            "observed_t_end_us": 1_240_000}
    line = MessageLines().line(Message("prediction", {"meta": meta}, arrays, 3, 1_234_567, 0))
    assert "next 10 ms: 12 ± 4 ev (1.2 kev/s) peak 1.50 ev/cell" in line, line
    assert "seen [1.230, 1.240) s: 28 ev" in line


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
