"""``augury demo adaptation``: a daemon on a scene that shifts on a schedule, the dashboard on
it, and a report of surprise peaks, recovery times and forgetting.

Steps: render the shift scene (``augury.demo_scene``) into ``OUT/scene.npz``; build the daemon
in-process (real-time replay, forecast published every horizon so that each forecast is scored
on the window that follows, PUB and control on free loopback ports); serve the dashboard;
record surprise z and forecast surprisal with a subscriber; write ``adaptation.png``,
``summary.md`` and ``result.json`` into OUT (``augury.demo_report``). ``--quick``: 3 s phases
(18 s of stream, under a minute with start-up).
"""

from __future__ import annotations

import threading
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from augury.dashboard_state import ForecastScorer, polarity_sum
from augury.demo_report import Recording, write_report
from augury.demo_scene import PHASES, ShiftScene, write_shift_scene

SNAPSHOT_AFTER_S = 0.15
"""Map thumbnails are taken this long after each phase starts (s) and just before it ends."""


@dataclass(frozen=True)
class DemoOptions:
    """quick: 3 s phases instead of 10 s; out_dir: where the report goes; open_browser: open
    the dashboard page; dashboard: serve it at all; port: its port (0: any free port);
    phase_s: override the phase length (s of stream time)."""

    quick: bool = False
    out_dir: Path = Path("augury-demo")
    open_browser: bool = True
    dashboard: bool = True
    port: int = 8765
    phase_s: float | None = None


class Recorder:
    """Subscriber thread that turns the daemon's messages into a ``Recording``."""

    def __init__(self, endpoint: str, snapshot_times: dict[str, float]) -> None:
        self.endpoint = endpoint
        self.rec = Recording()
        self.stop_event = threading.Event()
        self.subscribed = threading.Event()
        self._pending = dict(sorted(snapshot_times.items(), key=lambda kv: kv[1]))
        self._scorer = ForecastScorer()
        self._thread = threading.Thread(target=self._run, name="demo-recorder", daemon=True)
        self.missed = 0

    def start(self) -> None:
        self._thread.start()
        self.subscribed.wait(10)

    def _take(self, msg: Any) -> None:
        t_s = msg.stream_time_us / 1e6
        if msg.topic == "surprise":
            z = msg.meta.get("zscore")
            if isinstance(z, (int, float)):
                self.rec.z_t.append(t_s)
                self.rec.z.append(float(z))
            return
        a, meta = msg.arrays, msg.meta
        mean = polarity_sum(a["count_mean"])
        observed = polarity_sum(a["count_observed"])
        score = self._scorer.update(msg.stream_time_us, mean, observed,
                                    meta.get("observed_t_start_us"),
                                    meta.get("observed_t_end_us"))
        if score is not None:
            self.rec.ll_t.append(score.t_us / 1e6)
            self.rec.surprisal.append(-score.model)
            self.rec.persistence.append(-score.persistence)
        for label, at in list(self._pending.items()):
            if t_s >= at:
                self.rec.snapshots[label] = {"observed": np.array(observed, np.float32),
                                             "predicted": np.array(mean, np.float32)}
                del self._pending[label]

    def _run(self) -> None:
        from augury.client import Subscriber

        with Subscriber(self.endpoint, topics=("prediction", "surprise"), hwm=100_000) as sub:
            self.subscribed.set()
            while not self.stop_event.is_set():
                msg = sub.recv(timeout_ms=200)
                if msg is not None:
                    self.missed += msg.gap
                    self._take(msg)
            while (msg := sub.recv(timeout_ms=300)) is not None:  # drain what is queued
                self._take(msg)

    def stop(self) -> Recording:
        self.stop_event.set()
        self._thread.join(30)
        return self.rec


def run_demo(opts: DemoOptions, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo to the end of the scene; the result object (also in result.json)."""
    from augury.config import load_config
    from augury.daemon import build_daemon

    phase_s = opts.phase_s if opts.phase_s is not None else (3.0 if opts.quick else 10.0)
    scene = ShiftScene(phase_us=int(phase_s * 1e6))
    out = Path(opts.out_dir)
    started = time.monotonic()
    echo(f"demo: rendering the scene ({len(PHASES)} phases of {phase_s:g} s: "
         f"{', '.join(PHASES)})")
    path = write_shift_scene(scene, out / "scene.npz")
    cfg = load_config(None, {"source.uri": str(path), "source.pace": "realtime",
                             "publish.endpoint": "tcp://127.0.0.1:*",
                             "control.endpoint": "tcp://127.0.0.1:*",
                             "publish.hwm": 10_000})
    daemon = build_daemon(cfg, wait_subscriber_s=30.0)
    horizon_ms = daemon.pipeline.network.spec.horizon_us / 1e3
    daemon.pipeline.publish_every_us = int(daemon.pipeline.network.spec.horizon_us)
    pub = daemon.publisher.bound_endpoint
    ctl = daemon.control.bound_endpoint if daemon.control is not None else None
    shifts = [(PHASES[k], k * phase_s) for k in range(1, len(PHASES) - 1)]
    return_to_a = (PHASES[-1], (len(PHASES) - 1) * phase_s)
    snaps: dict[str, float] = {}
    for k, name in enumerate(PHASES):
        snaps[f"{name}\n+{SNAPSHOT_AFTER_S:g} s"] = k * phase_s + SNAPSHOT_AFTER_S
        snaps[f"{name}\nend"] = (k + 1) * phase_s - 0.05
    recorder = Recorder(pub, snaps)
    server = None
    try:
        if opts.dashboard:
            from augury.dashboard_server import DashboardOptions, DashboardServer

            server = DashboardServer(DashboardOptions(daemon=pub, control=ctl, port=opts.port))
            url = server.start()
            echo(f"demo: dashboard at {url}")
            echo("demo: where to look: the 'Surprise z' panel jumps at each shift (grey "
                 "alarm marks), the 'Forecast log-likelihood' drops and climbs back as the "
                 "network learns; 'Predicted events' catches up with 'Observed events'.")
            if opts.open_browser:
                webbrowser.open(url)
        echo("demo: shifts at " + ", ".join(f"{t:g} s {n}" for n, t in shifts)
             + f"; back to A at {return_to_a[1]:g} s")
        recorder.start()
        daemon.pipeline.run()  # to the scene's end; an engine error propagates after cleanup
        rec = recorder.stop()
    finally:
        recorder.stop_event.set()
        if server is not None:
            server.stop()
        daemon.pipeline.stop_event.set()
        daemon.close()
    meta = {"scene": f"synthetic bars {scene.width}×{scene.height} px at "
                     f"{scene.speed_px_s:g} px/s, {scene.direction_deg:g}°",
            "phase_s": phase_s, "horizon_ms": horizon_ms, "out": str(out),
            "messages_missed": recorder.missed,
            "wall_s": round(time.monotonic() - started, 1)}
    result = write_report(out, rec, shifts, phase_s, return_to_a, meta)
    for r in result["shifts"]:
        echo(f"demo: {r['shift']:<20} at {r['t_s']:5.1f} s: surprise z peak "
             f"{_fmt(r['z_peak'], '.1f')}, surprisal peak {_fmt(r.get('surprisal_peak'), '.2f')}"
             f" nats/event, detected {'yes' if r['detected'] else 'NO'}, recovery "
             f"{_fmt(r['recovery_ms'], 'd')} ms")
    echo(f"demo: forgetting on the return to A: "
         f"{_fmt(result['forgetting_nats_per_event'], '+.3f')} nats/event")
    echo(f"demo: wrote {result['png']} and {result['summary']}")
    return result


def _fmt(v: Any, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)
