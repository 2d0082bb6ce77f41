"""The dashboard (issue 12): its state aggregation, its server, and a real headless browser.

The browser tests drive Debian's ``chromium`` through Playwright (``executable_path``, never
Playwright's own downloaded browsers) against ``augury run`` subprocesses replaying the real
DAVIS240C rotating-disk recording. They skip, with the reason, only when chromium or the
playwright package is missing (``make test`` installs both; see .ci/run).
``AUGURY_WRITE_SCREENSHOT=1`` also writes the README's screenshot, docs/img/dashboard.png.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from augury.client import control_status
from augury.dashboard_server import DashboardOptions, DashboardServer
from augury.dashboard_state import DashboardState, ForecastScorer, downsample, encode_map
from augury.model.scoring import poisson_loglik
from augury.publish import decode_message, encode_message

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("AUGURY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
RECORDING = "inivation/davis240c_rotdisk.aedat"


# -- state aggregation (no sockets) ------------------------------------------------------------
def _msg(topic: str, seq: int, t_us: int, arrays: dict[str, np.ndarray],
         meta: dict[str, Any], wall_s: float = 0.0) -> Any:
    frames = encode_message(topic, arrays, meta, seq=seq, stream_time_us=t_us,
                            sensor_time_us=None, wall_time_ns=round(wall_s * 1e9))
    return decode_message(frames)


def _prediction(seq: int, t_us: int, mean: np.ndarray, observed: np.ndarray) -> Any:
    return _msg("prediction", seq, t_us,
                {"count_mean": mean, "count_var": mean, "count_observed": observed},
                {"observed_t_start_us": t_us - 10_000, "observed_t_end_us": t_us,
                 "horizon_ms": 10.0, "pool": 2})


def test_downsample_keeps_small_maps_and_block_averages_large_ones() -> None:
    small = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert downsample(small) is not None and np.array_equal(downsample(small), small)
    big = np.ones((400, 641), np.float32)
    out = downsample(big, max_cells=160 * 120)
    assert out.shape[0] * out.shape[1] <= 160 * 120
    assert np.allclose(out, 1.0)  # padding cells are ignored, not averaged in as zeros
    with pytest.raises(ValueError, match="2-D"):
        downsample(np.ones(5))


def test_encode_map_round_trips_float32_and_symmetric_scale() -> None:
    import base64

    a = np.array([[-2.0, 1.0], [0.5, 0.0]], np.float32)
    enc = encode_map(a, symmetric=True)
    back = np.frombuffer(base64.b64decode(enc["b64"]), "<f4").reshape(enc["rows"], enc["cols"])
    assert np.array_equal(back, a)
    assert (enc["lo"], enc["hi"]) == (-2.0, 2.0)


def test_forecast_scorer_scores_the_previous_forecast_on_the_window_that_follows() -> None:
    sc = ForecastScorer()
    m1 = np.full((2, 3), 2.0)
    o1 = np.full((2, 3), 1.0)
    assert sc.update(10_000, m1, o1, 0, 10_000) is None
    o2 = np.array([[2, 2, 3], [1, 2, 2]], np.float64)
    s = sc.update(20_000, m1, o2, 10_000, 20_000)
    assert s is not None and s.events == 12
    assert s.model == pytest.approx(poisson_loglik(m1, o2.astype(int)) / 12)
    assert s.persistence == pytest.approx(poisson_loglik(o1, o2.astype(int)) / 12)
    assert s.model > s.persistence  # the forecast of 2 per cell is nearer than persistence's 1
    # a publish period longer than the horizon: nothing scored, and the note says why
    assert sc.update(70_000, m1, o2, 60_000, 70_000) is None
    assert "publish period (50 ms)" in sc.note


def test_state_tracks_gaps_restarts_stall_and_instantaneous_rates() -> None:
    now = [100.0]
    st = DashboardState(stall_s=2.0, clock=lambda: now[0])
    assert st.link_status()["state"] == "waiting"
    mean = np.ones((4, 5, 2), np.float32)
    st.ingest(_prediction(0, 10_000, mean, mean))
    st.ingest(_prediction(3, 20_000, mean, mean))  # seq 1 and 2 missed
    p = st.payload()
    assert p["link"]["state"] == "live" and p["link"]["gaps"] == 2
    assert set(p["maps"]) == {"observed", "predicted", "difference", "uncertainty"}
    assert p["maps"]["observed"]["rows"] == 4 and p["maps"]["observed"]["cols"] == 5
    assert p["prediction"]["difference_matched"] is True
    assert "maps" not in st.payload(p["cursor"], p["maps_version"])  # nothing new: not resent
    stats = {"events_in": 1000, "events_processed": 900, "synops_per_s": 100.0, "uptime_s": 1.0,
             "source_dropped": 0, "queue_dropped_events": 0, "publish_dropped": {},
             "latency_p50_ms": 1.5, "latency_p99_ms": 4.0}
    st.ingest(_msg("stats", 0, 20_000, {}, stats, wall_s=10.0))
    # 0.1 s later (daemon clock): too soon to give a rate, no point
    st.ingest(_msg("stats", 1, 25_000, {}, {**stats, "events_in": 1500}, wall_s=10.1))
    assert len([q for q in st.payload()["points"] if q["kind"] == "stats"]) == 1
    now[0] += 0.5  # arrival time does not matter, the daemon's clock does
    st.ingest(_msg("stats", 2, 30_000, {}, {**stats, "events_in": 2000, "events_processed": 1900,
                                            "synops_per_s": 100.0, "uptime_s": 2.0,
                                            "queue_dropped_events": 50}, wall_s=10.5))
    rates = [q for q in st.payload()["points"] if q["kind"] == "stats"][-1]
    assert rates["in_hz"] == pytest.approx(2000.0) and rates["proc_hz"] == pytest.approx(2000.0)
    assert rates["drops_hz"] == pytest.approx(100.0)
    assert rates["synops_per_event"] == pytest.approx(0.1)
    assert rates["latency_p99_ms"] == 4.0
    now[0] += 2.5
    assert st.link_status()["state"] == "stalled"
    st.ingest(_prediction(0, 10_000, mean, mean))  # sequence went back: the daemon restarted
    assert st.link_status()["restarts"] == 1 and st.link_status()["state"] == "live"


def test_state_keeps_the_newest_dictionary_sends_it_once_and_reports_its_age() -> None:
    import base64

    now = [50.0]
    st = DashboardState(clock=lambda: now[0])
    p = st.payload()
    assert "dictionary" not in p and p["dictionary_age_s"] is None
    w = np.zeros((3, 4, 4, 2), np.float32)
    w[2, 1, 3, 1] = 2.5
    meta = {"k1": 3, "column": 4, "pool": 8, "shared": True, "columns": 1, "every_s": 5.0,
            "learning": True}
    st.ingest(_msg("dictionary", 0, 0, {"w_l1": w, "w_var_l1": np.full_like(w, 0.04)}, meta))
    now[0] += 2.0
    p = st.payload()
    d = p["dictionary"]
    back = np.frombuffer(base64.b64decode(d["b64"]), "<f4").reshape(3, 4, 4, 2)
    np.testing.assert_array_equal(back, w)
    assert (d["k1"], d["column"], d["lo"], d["hi"]) == (3, 4, 0.0, 2.5)
    assert d["sd_median"] == pytest.approx(0.2) and d["every_s"] == 5.0
    assert p["dictionary_age_s"] == pytest.approx(2.0)
    again = st.payload(p["cursor"], p["maps_version"], p["dictionary_version"])
    assert "dictionary" not in again and again["dictionary_age_s"] == pytest.approx(2.0)
    st.ingest(_msg("dictionary", 1, 5_000, {"w_l1": 2 * w}, meta))  # a newer one replaces it
    p = st.payload(p["cursor"], p["maps_version"], p["dictionary_version"])
    assert p["dictionary"]["hi"] == 5.0 and p["dictionary"]["sd_median"] is None
    assert p["dictionary_age_s"] == pytest.approx(0.0)


# -- a real daemon, the server and a real browser --------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """One ``augury run`` subprocess on fixed ports (so that it can be restarted on them)."""

    def __init__(self, source: str, *extra: str) -> None:
        self.pub = f"tcp://127.0.0.1:{_free_port()}"
        self.ctl = f"tcp://127.0.0.1:{_free_port()}"
        self.source, self.extra = source, extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 300.0) -> None:
        """Spawn it and wait until its control socket answers (numba may compile first)."""
        cmd = [sys.executable, "-m", "augury.cli", "run", self.source, "--publish", self.pub,
               "--control", self.ctl, *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while control_status(self.ctl, timeout_ms=300) is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"augury run exited with {self.proc.returncode}: {cmd}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no control reply from {self.ctl} within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@pytest.fixture
def spawn() -> Iterator[Any]:
    started: list[Daemon] = []

    def make(source: str, *extra: str) -> Daemon:
        d = Daemon(source, *extra)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium driven by Playwright; skips loudly when either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("BROWSER TESTS SKIPPED: the playwright package is not installed "
                    "(pip install 'augury[dashboard,test]'; make test does)")
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        pytest.skip(f"BROWSER TESTS SKIPPED: no chromium at {CHROMIUM} (apt-get install -y "
                    "chromium; .ci/run does)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists()
                               else shutil.which("chromium"), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def dashboard() -> Iterator[Any]:
    servers: list[DashboardServer] = []

    def make(daemon: Daemon, stall_s: float = 1.5) -> DashboardServer:
        s = DashboardServer(DashboardOptions(daemon=daemon.pub, control=daemon.ctl, port=0,
                                             stall_s=stall_s, control_period_s=0.3))
        s.start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _updates(page: Any) -> int:
    return int(page.evaluate("Number(document.body.dataset.updates || 0)"))


def test_page_draws_live_maps_and_pause_is_confirmed_by_status(
        browser: Any, spawn: Any, dashboard: Any, shared_data: Path, tmp_path: Path) -> None:
    daemon = spawn(str(shared_data / RECORDING), "--pace", "realtime", "--speed", "0.2",
                   "--rate-ms", "10", "--set", "publish.dictionary_s=1")
    daemon.start()
    server = dashboard(daemon)
    with urllib.request.urlopen(server.url, timeout=5) as r:  # the page is served
        assert b"Augury" in r.read()
    page = browser.new_page(viewport={"width": 1400, "height": 1150})
    page.goto(server.url)
    page.wait_for_selector("#status.live", timeout=30_000)
    page.wait_for_function("document.getElementById('scale-observed').textContent !== ''",
                           timeout=10_000)
    # the layer-1 dictionary arrives (every second here) and is drawn: non-blank tiles (before
    # the maps are compared: its panel's text grows when it arrives)
    page.wait_for_function(
        "document.getElementById('dictionary-age').textContent.startsWith('updated')",
        timeout=10_000)
    atoms = _pixels(page.locator("#map-dictionary").screenshot())
    blank = np.all(atoms == (238, 238, 238), axis=-1)  # the canvas background, #eee
    assert float(np.mean(~blank)) > 0.2, "the dictionary panel is (nearly) blank"
    assert len(np.unique(atoms[~blank].reshape(-1, 3), axis=0)) > 5  # not one flat colour
    maps = page.locator(".maps")
    first = _pixels(maps.screenshot())
    n = _updates(page)
    page.wait_for_function(f"Number(document.body.dataset.updates) >= {n + 5}", timeout=10_000)
    second = _pixels(maps.screenshot())
    changed = float(np.mean(np.any(first != second, axis=-1)))
    assert changed > 0.01, f"only {changed:.2%} of the map pixels changed between screenshots"
    # forecast scored live (rate = horizon): the log-likelihood panel has points
    page.wait_for_function("document.getElementById('forecast-note').textContent === ''",
                           timeout=10_000)
    shot = page.screenshot(full_page=True)
    (tmp_path / "dashboard.png").write_bytes(shot)
    if os.environ.get("AUGURY_WRITE_SCREENSHOT") == "1":
        out = ROOT / "docs" / "img" / "dashboard.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(shot)
    # pause learning from the page; the daemon's own status confirms it
    page.wait_for_selector("#btn-pause:not([disabled])", timeout=10_000)
    page.click("#btn-pause")
    page.wait_for_function("document.getElementById('learning').textContent.includes('paused')",
                           timeout=10_000)
    status = control_status(daemon.ctl, timeout_ms=1000)
    assert status is not None and status["learning"] is False
    page.click("#btn-resume")
    page.wait_for_function("document.getElementById('learning').textContent.includes('on')",
                           timeout=10_000)
    status = control_status(daemon.ctl, timeout_ms=1000)
    assert status is not None and status["learning"] is True
    page.close()


def test_page_shows_stalled_then_reconnects_after_a_daemon_restart(
        browser: Any, spawn: Any, dashboard: Any, shared_data: Path) -> None:
    daemon = spawn(str(shared_data / RECORDING), "--pace", "realtime", "--speed", "0.2")
    daemon.start()
    server = dashboard(daemon, stall_s=1.5)
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#status.live", timeout=30_000)
    daemon.stop()
    page.wait_for_selector("#status.stalled", timeout=10_000)
    # the control socket is polled on its own clock: wait for its verdict, not just the stall
    page.wait_for_function(
        "document.getElementById('status').textContent.includes('no daemon answers')",
        timeout=10_000)
    page.wait_for_selector("#btn-pause[disabled]", timeout=10_000)  # control gone: buttons off
    daemon.start()  # same endpoints: the SUB socket reconnects by itself
    page.wait_for_selector("#status.live", timeout=30_000)
    page.wait_for_function("document.getElementById('link').textContent.includes('restarts 1')",
                           timeout=10_000)
    page.wait_for_selector("#btn-pause:not([disabled])", timeout=10_000)
    page.close()


def test_page_shows_stalled_for_a_daemon_that_publishes_nothing(
        browser: Any, spawn: Any, dashboard: Any) -> None:
    port = _free_port()
    daemon = spawn(f"udp://127.0.0.1:{port}?format=spif&geometry=64x48")  # nobody sends
    daemon.start()
    server = dashboard(daemon, stall_s=1.0)
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector("#status.stalled", timeout=10_000)
    page.wait_for_function(
        "document.getElementById('status').textContent.includes('answers on its control')",
        timeout=10_000)
    state = json.loads(urllib.request.urlopen(server.url + "api/state", timeout=5).read())
    assert state["link"]["state"] == "stalled" and state["link"]["received"] == 0
    page.close()


# -- the server without a browser -------------------------------------------------------------
def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def test_server_serves_the_page_and_refuses_what_it_does_not_offer() -> None:
    opts = DashboardOptions(daemon=f"tcp://127.0.0.1:{_free_port()}", control=None, port=0)
    with DashboardServer(opts) as server:
        assert server.url is not None
        for name in ("", "static/dashboard.js", "static/dashboard.css"):
            with urllib.request.urlopen(server.url + name, timeout=5) as r:
                assert r.status == 200 and len(r.read()) > 500
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(server.url + "static/secret.py", timeout=5)
        assert err.value.code == 404
        reply = _post(server.url + "api/control", {"cmd": "pause_learning"})
        assert reply == {"ok": False, "error": "no control endpoint (--control none)"}
        reply = _post(server.url + "api/control", {"cmd": "set", "args": {"learning": False}})
        assert not reply["ok"] and "not offered" in reply["error"]
        state = json.loads(urllib.request.urlopen(server.url + "api/state", timeout=5).read())
        assert state["link"]["state"] == "waiting" and state["control"]["reachable"] is False


def test_dashboard_command_prints_its_url_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "augury.cli", "dashboard", "--daemon",
                             f"tcp://127.0.0.1:{_free_port()}", "--control", "none",
                             "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # blocks until the server is up (or the process died)
        assert line.startswith("dashboard: http://127.0.0.1:"), line
        url = line.split()[1]
        with urllib.request.urlopen(url, timeout=5) as r:
            assert b"Augury" in r.read()
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
