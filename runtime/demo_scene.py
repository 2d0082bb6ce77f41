"""The adaptation demo's scene: synthetic moving bars that change on a schedule.

Phases of ``phase_us`` each (stream time, µs), every one rendered by
``augury.adapters.synthetic.render_scene`` at the same geometry:

0. ``A``: bars moving along ``direction_deg`` (60°: down-right) at ``speed_px_s``;
1. ``direction reversal``: the same bars moving the opposite way (+180°);
2. ``polarity flip``: scene A with every event's polarity inverted (ON ↔ OFF);
3. ``speed x2``: scene A at twice the speed;
4. ``new object``: scene A plus discs moving down-right, a shape the network has not seen;
5. ``A again``: scene A, to measure what was forgotten.

Each phase is rendered from its own start time (``t0_us``) with its own seed, so objects jump
at a shift, as when a camera is pointed elsewhere. Known drawback: the whole stream is
rendered up front (about 1 MB per second of stream at the default size), which keeps the
daemon's source an ordinary file (``.npz`` with its geometry) that replays in real time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from augury.adapters.synthetic import SceneConfig, render_scene
from augury.events import EVENT_DTYPE, concat_records

PHASES: tuple[str, ...] = ("A", "direction reversal", "polarity flip", "speed x2",
                           "new object", "A again")
"""Phase names in stream order; every phase after the first starts with a shift."""


@dataclass(frozen=True)
class ShiftScene:
    """width/height: sensor size (px); phase_us: length of each phase (µs);
    speed_px_s: speed of scene A (px/s); log_contrast: ln I_object − ln I_background of
    every object; direction_deg: direction of motion in scene A (°, 0 = +x, 90 = +y);
    noise_rate_hz: background events per pixel and s;
    seed: the seed of phase k is seed + k (phases A and "A again" share the layout)."""

    width: int = 96
    height: int = 72
    phase_us: int = 3_000_000
    speed_px_s: float = 200.0
    log_contrast: float = 0.6
    direction_deg: float = 60.0
    noise_rate_hz: float = 1.0
    seed: int = 1

    def shift_times_us(self) -> list[int]:
        """Stream times (µs) of the shifts: the starts of phases 1..5."""
        return [k * self.phase_us for k in range(1, len(PHASES))]

    @property
    def duration_us(self) -> int:
        """Total stream time (µs)."""
        return len(PHASES) * self.phase_us


def _merge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two time-sorted event arrays merged by time (stable: a first on ties)."""
    both = concat_records([a, b])
    return both[np.argsort(both["t"], kind="stable")]


def phase_configs(scene: ShiftScene, k: int) -> tuple[list[SceneConfig], bool]:
    """The synthetic scenes overlaid in phase k, and whether its polarities are inverted."""
    base = SceneConfig(kind="bars", width=scene.width, height=scene.height,
                       duration_us=scene.phase_us, seed=scene.seed, n_objects=2,
                       speed_px_s=scene.speed_px_s, direction_deg=scene.direction_deg,
                       noise_rate_hz=scene.noise_rate_hz, t0_us=k * scene.phase_us,
                       object_log_contrast=scene.log_contrast)
    name = PHASES[k]
    if name == "direction reversal":
        return [replace(base, direction_deg=180.0 + scene.direction_deg,
                        seed=scene.seed + k)], False
    if name == "speed x2":
        return [replace(base, speed_px_s=2 * scene.speed_px_s, seed=scene.seed + k)], False
    if name == "new object":
        dots = replace(base, kind="dots", n_objects=4, dot_radius_px=8.0, direction_deg=45.0,
                       noise_rate_hz=0.0, seed=scene.seed + k)
        return [base, dots], False
    return [base], name == "polarity flip"


def render_phase(scene: ShiftScene, k: int) -> np.ndarray:
    """Events of phase k (EVENT_DTYPE, sorted by t, t in [k·phase_us, (k+1)·phase_us))."""
    configs, flip = phase_configs(scene, k)
    parts = [render_scene(cfg)[0] for cfg in configs]
    ev = parts[0]
    for extra in parts[1:]:
        ev = _merge(ev, extra)
    ev = np.array(ev, dtype=EVENT_DTYPE)  # a copy: the flip below must not touch a cache
    if flip:
        ev["p"] ^= 1
    return ev


def render_shift_scene(scene: ShiftScene) -> np.ndarray:
    """Every phase's events in stream order (EVENT_DTYPE)."""
    return concat_records([render_phase(scene, k) for k in range(len(PHASES))])


def write_shift_scene(scene: ShiftScene, path: Path) -> Path:
    """Write the scene as an ``.npz`` (``events`` + ``width``/``height``) that
    ``augury run`` replays; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, events=render_shift_scene(scene), width=np.int64(scene.width),
             height=np.int64(scene.height))
    return path
