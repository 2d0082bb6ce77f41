"""`augury demo adaptation` (issue 12): the shift scene, the measures, and the command itself."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from augury.demo_report import Recording, forgetting, running_mean, shift_measures
from augury.demo_scene import PHASES, ShiftScene, phase_configs, render_phase


def test_shift_scene_phases_are_sorted_inside_their_span_and_shift_as_named() -> None:
    scene = ShiftScene(phase_us=400_000, noise_rate_hz=0.0)
    phases = {name: render_phase(scene, k) for k, name in enumerate(PHASES)}
    for k, (name, ev) in enumerate(phases.items()):
        assert ev.size > 0, name
        assert np.all(np.diff(ev["t"]) >= 0), name
        assert ev["t"][0] >= k * scene.phase_us and ev["t"][-1] < (k + 1) * scene.phase_us
        assert ev["x"].max() < scene.width and ev["y"].max() < scene.height
    a = phases["A"]
    on_share = float(np.mean(a["p"]))
    assert float(np.mean(phases["polarity flip"]["p"])) == pytest.approx(1 - on_share, abs=0.02)
    # twice the speed: about twice the events per second (edges cross twice the pixels)
    assert phases["speed x2"].size / a.size == pytest.approx(2.0, rel=0.25)
    assert phases["new object"].size > 1.2 * a.size
    configs = {name: phase_configs(scene, k) for k, name in enumerate(PHASES)}
    (base,), flip = configs["A"]
    assert not flip and configs["polarity flip"][1]
    assert configs["direction reversal"][0][0].direction_deg == base.direction_deg + 180
    assert configs["speed x2"][0][0].speed_px_s == 2 * base.speed_px_s
    assert [c.kind for c in configs["new object"][0]] == ["bars", "dots"]
    assert configs["A again"] == ([replace(base, t0_us=5 * scene.phase_us)], False)
    assert scene.shift_times_us() == [k * 400_000 for k in range(1, 6)]


def test_measures_find_the_peak_the_recovery_and_the_forgetting() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(0, 6.0, 0.01)
    level = np.where(t < 3.0, 1.5, 1.7)  # the shifted scene has its own level
    bump = np.where(t >= 3.0, 1.5 * np.exp(-(t - 3.0) / 0.2), 0.0)  # surprise, then learning
    s = level + bump + 0.01 * rng.standard_normal(t.size)
    z = np.where((t >= 3.0) & (t < 3.05), 6.0, 0.2)
    rec = Recording(z_t=list(t), z=list(z), ll_t=list(t), surprisal=list(s),
                    persistence=list(s + 3))
    (row,) = shift_measures(rec, [("step", 3.0)], phase_s=3.0)
    assert row["detected"] and row["z_alarm"] and row["surprisal_rise"]
    assert row["z_peak"] == 6.0 and row["surprisal_peak"] > 2.5
    # 90 % of the way back from the (smoothed) peak: about 0.2 s · ln 10 ≈ 460 ms
    assert row["recovered"] and 350 <= row["recovery_ms"] <= 600
    assert forgetting(rec, 3.0, 4.0) == pytest.approx(np.mean(s[(t >= 4) & (t < 5)])
                                                      - np.mean(s[(t >= 2) & (t < 3)]))
    flat = Recording(z_t=list(t), z=[0.0] * t.size, ll_t=list(t),
                     surprisal=list(1.5 + 0.01 * rng.standard_normal(t.size)),
                     persistence=[4.0] * t.size)
    (none,) = shift_measures(flat, [("nothing", 3.0)], phase_s=3.0)
    assert not none["detected"]
    assert running_mean(np.array([1.0, 3.0, 5.0]), 2).tolist() == [1.0, 2.0, 4.0]


def test_demo_adaptation_quick_reports_a_peak_and_a_recovery_after_every_shift(
        tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "augury.cli", "demo", "adaptation", "--quick",
                           "--out", str(out), "--no-browser", "--port", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "dashboard at http://127.0.0.1:" in proc.stderr
    shifts = [r["shift"] for r in result["shifts"]]
    assert shifts == ["direction reversal", "polarity flip", "speed x2", "new object"]
    for r in result["shifts"]:
        assert r["detected"], r
        assert r["recovered"] and 0 < r["recovery_ms"] < 3000, r
    assert result["all_detected"] and result["all_recovered"]
    assert result["forgetting_nats_per_event"] is not None
    summary = (out / "summary.md").read_text()
    for name in shifts:
        assert f"| {name} |" in summary
    assert "Forgetting on the return to A" in summary
    png = (out / "adaptation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "result.json").read_text())["recovery_ms"] == result["recovery_ms"]
    assert result["wall_s"] < 60
