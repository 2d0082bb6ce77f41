"""Shared helpers for the model tests: small synthetic scenes, batching, real-data loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from augury.events import EVENT_DTYPE, EventBatch, to_events

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def bars(width: int, height: int, duration_us: int, *, seed: int = 0,
         speed_px_s: float = 600.0, noise_rate_hz: float = 0.0, n_objects: int = 2) -> np.ndarray:
    """Moving bars from ``augury.adapters.synthetic`` (EVENT_DTYPE, sorted, t from 0)."""
    from augury.adapters.synthetic import SceneConfig, render_scene

    ev, _ = render_scene(SceneConfig(kind="bars", width=width, height=height,
                                     duration_us=duration_us, seed=seed,
                                     speed_px_s=speed_px_s, noise_rate_hz=noise_rate_hz,
                                     n_objects=n_objects))
    return ev


def noise(width: int, height: int, duration_us: int, rate_hz: float, *, seed: int = 0,
          t0_us: int = 0) -> np.ndarray:
    """Uniform Poisson noise at rate_hz per pixel (both polarities), sorted."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate_hz * width * height * duration_us * 1e-6)
    ev = np.empty(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(t0_us, t0_us + duration_us, n))
    ev["x"] = rng.integers(0, width, n)
    ev["y"] = rng.integers(0, height, n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


def batches(events: np.ndarray, t0_us: int, t1_us: int, cuts: list[int]) -> list[EventBatch]:
    """Split sorted events into batches tiling [t0_us, t1_us) at the given cut times."""
    edges = [t0_us, *sorted(c for c in set(cuts) if t0_us < c < t1_us), t1_us]
    out = []
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        lo, hi = np.searchsorted(events["t"], [a, b], side="left")
        out.append(EventBatch(events[lo:hi], a, b, i))
    return out


def windows(events: np.ndarray, t0_us: int, t1_us: int, window_us: int) -> list[EventBatch]:
    """Consecutive batches of window_us µs."""
    return batches(events, t0_us, t1_us, list(range(t0_us + window_us, t1_us, window_us)))


def real_events(name: str = "evt3_sample") -> np.ndarray | None:
    """Decoded events of a Prophesee reference file (1280×720), t shifted to start at 0."""
    path = DATA / "prophesee" / f"{name}.reference.npy"
    if not path.exists():
        return None
    ev = to_events(np.load(path), source=str(path)).copy()
    ev["t"] -= ev["t"][0]
    return ev
