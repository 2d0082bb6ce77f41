"""Seeded synthetic event scenes with ground truth: moving bars, dots and gratings.

The embedded default source (``synthetic://bars``). A scene is a log-intensity image
L(t, x, y) (natural log, background level 0) of moving objects, rendered every ``dt_us`` µs;
a DVS pixel model turns it into events:

* each pixel keeps a reference level L_ref; whenever L crosses L_ref ± k·C (C the contrast
  threshold, per pixel C·(1 + σ·N(0, 1)) when ``threshold_sigma`` > 0) it emits one event per
  crossing (ON when rising, OFF when falling) and L_ref moves to the last crossed level;
* L is taken as linear in time inside a step, so the k-th crossing happens at
  t = t_prev + dt·(L_ref ± k·C − L_prev) / (L_new − L_prev) (floored to integer µs; exact
  to 1 µs where L really is linear over the step, within one step where an edge's coverage
  saturates inside it); a change of exactly k·C counts as k crossings (relative tolerance
  1e-9 against round-off);
* at t0 every pixel's reference is the initial image, so pixels under an object's edge at
  t0 stay off the background's level lattice (they give one event fewer per edge), as a
  real sensor that was switched on while looking at the scene;
* after an event a pixel is blind for ``refractory_us`` (crossings inside are lost, L_ref
  still follows), as in real DVS pixels;
* background activity: Poisson events at ``noise_rate_hz`` per pixel with random polarity;
  ``hot_pixels`` pixels fire Poisson events at ``hot_rate_hz`` each.

Objects (pixel centres at integer coordinates, x right, y down, direction 0° = +x, 90° = +y):

* ``bars``: infinite bars of width ``bar_width_px`` perpendicular to their velocity, wrapping
  around after leaving the sensor (period W·|cos θ| + H·|sin θ| + width + 2 px along θ), so an
  endless scene never runs empty; position = the bar's point nearest the sensor centre;
* ``dots``: discs of radius ``dot_radius_px`` on a torus (leaving one side, entering the
  opposite one); position = disc centre in [0, W) × [0, H);
* ``gratings``: one sinusoidal grating L = (contrast/2)·cos(2π(u·(x − c) − s)/period) moving
  along u; position = c + s·u, the crest nearest the sensor centre on the motion axis,
  s ∈ [0, period).

Object edges are anti-aliased (1 px box filter of the coverage, blended in log intensity), so
sub-pixel motion produces events gradually. Motion is analytic in time, so ground truth is
exact at any time and windowed rendering needs only the per-pixel DVS state.

Determinism: every random draw comes from ``np.random.default_rng([seed, stream, ...])``
(scene layout, pixel thresholds and hot pixels at construction; noise per fixed 100 ms block
of stream time), never from global state, so the events do not depend on the rendering
window: an endless source gives exactly the events of ``render_scene`` on the same finite
config. Rendering and the DVS model are numba kernels; Python only orchestrates windows.
Bars and dots are rendered only on the pixels they cover now or covered at the previous step
(the band of a bar is solved per row), so the cost of a step scales with the objects' area,
not with the sensor's; gratings change every pixel and are rendered in full.

>>> from augury.adapters import open_source
>>> src = open_source("synthetic://bars?width=64&height=48&n_objects=1&duration_us=100000")
>>> batch = next(src.batches(batch_us=10_000))
>>> batch.t_start_us, batch.t_end_us, len(batch) > 0
(0, 10000, True)
>>> src.ground_truth(0).velocities.tolist()  # px/s
[[200.0, 0.0]]
>>> events, truth = render_scene(src.cfg)
>>> truth.positions.shape  # one sample per 200 µs step, one object, (x, y)
(500, 1, 2)
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, NamedTuple
from urllib.parse import urlencode

import numpy as np
from numba import njit

from augury.adapters.base import Chunk, EventSource
from augury.events import Counters, SensorGeometry, empty_events, make_events

KINDS: tuple[str, ...] = ("bars", "dots", "gratings")
_KIND_CODE = {"bars": 0, "dots": 1, "gratings": 2}
NOISE_BLOCK_US = 100_000
"""Noise is drawn per block of this many µs of stream time (fixed, so windows don't matter)."""
_STREAM_SCENE, _STREAM_PIXELS, _STREAM_HOT, _STREAM_NOISE = 0, 1, 2, 3
_NEVER_US = -(1 << 62)
_CROSS_EPS = 1e-9
"""Relative tolerance of a threshold crossing: reaching a level within rounding error counts,
so a contrast of exactly k thresholds gives k events, not k − 1 after float round-off."""


@dataclass(frozen=True)
class SceneConfig:
    """Parameters of a synthetic scene (sizes in px, times in µs, rates in events/s).

    ``velocities_px_s`` (one (vx, vy) pair per object, px/s) overrides ``speed_px_s`` /
    ``direction_deg``; otherwise object k moves at ``speed_px_s`` along ``direction_deg`` plus
    a uniform jitter in ±``direction_spread_deg``/2. Gratings always have one object.
    ``object_log_contrast`` is ln I_object − ln I_background (negative: darker objects; for
    gratings the peak-to-peak amplitude). ``threshold_sigma`` is the relative per-pixel
    threshold mismatch (std). ``duration_us`` None makes an endless (live-like) scene.
    """

    kind: str = "bars"
    width: int = 128
    height: int = 96
    duration_us: int | None = 2_000_000
    seed: int = 0
    speed_px_s: float = 200.0
    direction_deg: float = 0.0
    n_objects: int = 2
    bar_width_px: float = 8.0
    dot_radius_px: float = 4.0
    spatial_period_px: float = 32.0
    contrast_threshold: float = 0.2
    noise_rate_hz: float = 0.0
    hot_pixels: int = 0
    hot_rate_hz: float = 1000.0
    dt_us: int = 200
    t0_us: int = 0
    object_log_contrast: float = 1.0
    direction_spread_deg: float = 0.0
    velocities_px_s: tuple[tuple[float, float], ...] = ()
    threshold_sigma: float = 0.0
    refractory_us: int = 0

    def __post_init__(self) -> None:
        checks: tuple[tuple[str, bool, str], ...] = (
            ("kind", self.kind in KINDS, f"one of {', '.join(KINDS)}"),
            ("width", 0 < self.width <= 65535, "in 1..65535"),
            ("height", 0 < self.height <= 65535, "in 1..65535"),
            ("duration_us", self.duration_us is None or self.duration_us > 0, "> 0 or None"),
            ("seed", self.seed >= 0, ">= 0"),
            ("speed_px_s", math.isfinite(self.speed_px_s) and self.speed_px_s >= 0, ">= 0"),
            ("direction_deg", math.isfinite(self.direction_deg), "finite"),
            ("n_objects", 0 <= self.n_objects <= 1000, "in 0..1000"),
            ("bar_width_px", 0 < self.bar_width_px < 1e6, "> 0"),
            ("dot_radius_px", 0 < self.dot_radius_px < 1e6, "> 0"),
            ("spatial_period_px", 1 <= self.spatial_period_px < 1e6, ">= 1"),
            ("contrast_threshold", 0 < self.contrast_threshold < 1e3, "> 0"),
            ("noise_rate_hz", 0 <= self.noise_rate_hz < 1e6, "in [0, 1e6)"),
            ("hot_pixels", 0 <= self.hot_pixels <= self.width * self.height,
             "in 0..width*height"),
            ("hot_rate_hz", 0 <= self.hot_rate_hz < 1e7, "in [0, 1e7)"),
            ("dt_us", 0 < self.dt_us <= 1_000_000, "in 1..1000000"),
            ("t0_us", self.t0_us >= 0, ">= 0"),
            ("object_log_contrast", abs(self.object_log_contrast) < 1e3, "finite"),
            ("direction_spread_deg", 0 <= self.direction_spread_deg <= 360, "in [0, 360]"),
            ("velocities_px_s", not self.velocities_px_s
             or len(self.velocities_px_s) == self.n_objects_effective,
             "empty or one (vx, vy) pair per object"),
            ("threshold_sigma", 0 <= self.threshold_sigma < 1, "in [0, 1)"),
            ("refractory_us", self.refractory_us >= 0, ">= 0"),
        )
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"SceneConfig.{name} = {getattr(self, name)!r}: must be {what}")
        for pair in self.velocities_px_s:
            if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
                raise ValueError(f"SceneConfig.velocities_px_s = {self.velocities_px_s!r}: "
                                 f"each entry must be a finite (vx, vy) pair")

    @property
    def n_objects_effective(self) -> int:
        """Number of moving objects: n_objects, or 1 for gratings."""
        return 1 if self.kind == "gratings" else self.n_objects


@dataclass(frozen=True)
class GroundTruth:
    """Exact object motion at sample times.

    t_us: (n,) int64 µs; positions: (n, n_objects, 2) float64 x, y px (see the module doc for
    what "position" means per kind); velocities: (n_objects, 2) px/s; hot_pixels: (n_hot, 2)
    int64 x, y; noise_rate_hz: background activity per pixel (events/s).
    """

    t_us: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    hot_pixels: np.ndarray
    noise_rate_hz: float


class _Scene(NamedTuple):
    """Everything fixed for a scene: motion parameters and per-pixel arrays (read-only)."""

    cfg: SceneConfig
    kind_code: int
    unit: np.ndarray  # (n_obj, 2) motion direction
    velocity: np.ndarray  # (n_obj, 2) px/s
    start: np.ndarray  # (n_obj, 2): bars/gratings (s0, 0) px along unit; dots (x0, y0)
    period_px: np.ndarray  # (n_obj,) wrap period along unit (bars, gratings)
    xs: np.ndarray  # (n_pix,) pixel x minus sensor centre
    ys: np.ndarray  # (n_pix,) pixel y minus sensor centre
    cos_a: np.ndarray  # (n_pix,) grating cos(2π u·(p − c)/period)
    sin_a: np.ndarray  # (n_pix,)
    threshold: np.ndarray  # (n_pix,) contrast threshold per pixel
    hot_index: np.ndarray  # (n_hot,) flat pixel indices


def _rng(cfg: SceneConfig, *stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, *stream])


def _build_scene(cfg: SceneConfig) -> _Scene:
    """Draw the scene layout, pixel thresholds and hot pixels from the seed."""
    n = cfg.n_objects_effective
    w, h = cfg.width, cfg.height
    rng = _rng(cfg, _STREAM_SCENE)
    jitter = rng.uniform(-0.5, 0.5, n) * cfg.direction_spread_deg
    theta = np.deg2rad(cfg.direction_deg + jitter)
    if cfg.velocities_px_s:
        velocity = np.array(cfg.velocities_px_s, dtype=np.float64).reshape(n, 2)
        speed = np.hypot(velocity[:, 0], velocity[:, 1])
        unit = np.where(speed[:, None] > 0, velocity / np.maximum(speed, 1e-300)[:, None],
                        np.stack([np.cos(theta), np.sin(theta)], axis=1))
    else:
        unit = np.stack([np.cos(theta), np.sin(theta)], axis=1).reshape(n, 2)
        velocity = unit * cfg.speed_px_s
    start = np.zeros((n, 2))
    if cfg.kind == "bars":
        period = w * np.abs(unit[:, 0]) + h * np.abs(unit[:, 1]) + cfg.bar_width_px + 2.0
        phase = rng.uniform(0.0, 1.0)
        frac = (phase + np.arange(n) / max(n, 1)) % 1.0
        start[:, 0] = (frac - 0.5) * period
    elif cfg.kind == "dots":
        period = np.zeros(n)
        start[:, 0] = rng.uniform(0.0, w, n)
        start[:, 1] = rng.uniform(0.0, h, n)
    else:
        period = np.full(n, cfg.spatial_period_px)
        start[:, 0] = rng.uniform(0.0, cfg.spatial_period_px, n)
    yy, xx = np.mgrid[0:h, 0:w]
    xs = (xx.ravel() - (w - 1) / 2.0).astype(np.float64)
    ys = (yy.ravel() - (h - 1) / 2.0).astype(np.float64)
    angle = 2.0 * np.pi * (xs * unit[0, 0] + ys * unit[0, 1]) / cfg.spatial_period_px \
        if cfg.kind == "gratings" else np.zeros(0)
    n_pix = w * h
    mismatch = _rng(cfg, _STREAM_PIXELS).standard_normal(n_pix) * cfg.threshold_sigma
    threshold = cfg.contrast_threshold * np.maximum(1.0 + mismatch, 0.05)
    hot_index = np.sort(_rng(cfg, _STREAM_HOT).choice(n_pix, size=cfg.hot_pixels,
                                                      replace=False)).astype(np.int64)
    return _Scene(cfg, _KIND_CODE[cfg.kind], unit, velocity, start, period, xs, ys,
                  np.cos(angle), np.sin(angle), threshold, hot_index)


def _seconds(scene: _Scene, t_us: np.ndarray) -> np.ndarray:
    return (np.asarray(t_us, dtype=np.int64) - scene.cfg.t0_us) / 1e6


def _offsets_px(scene: _Scene, t_us: np.ndarray) -> np.ndarray:
    """Bars/gratings: (n_t, n_obj) offset s along the unit vector, wrapped to its period."""
    speed = np.hypot(scene.velocity[:, 0], scene.velocity[:, 1])
    s = scene.start[None, :, 0] + _seconds(scene, t_us)[:, None] * speed[None, :]
    if scene.cfg.kind == "bars":
        return np.mod(s + scene.period_px / 2.0, scene.period_px) - scene.period_px / 2.0
    return np.mod(s, scene.period_px)


def _dot_centres(scene: _Scene, t_us: np.ndarray) -> np.ndarray:
    """Dots: (n_t, n_obj, 2) centres on the torus [0, W) × [0, H)."""
    p = scene.start[None] + _seconds(scene, t_us)[:, None, None] * scene.velocity[None]
    size = np.array([scene.cfg.width, scene.cfg.height], dtype=np.float64)
    return np.mod(p, size)


def _object_positions(scene: _Scene, t_us: np.ndarray) -> np.ndarray:
    """Ground-truth positions (n_t, n_obj, 2) px at times t_us (µs)."""
    if scene.cfg.kind == "dots":
        return _dot_centres(scene, t_us)
    centre = np.array([(scene.cfg.width - 1) / 2.0, (scene.cfg.height - 1) / 2.0])
    s = _offsets_px(scene, t_us)
    return centre[None, None, :] + s[:, :, None] * scene.unit[None, :, :]


def _frames(scene: _Scene, t_us: np.ndarray) -> np.ndarray:
    """Kernel input per step (n_t, n_obj, 2): bars (s, 0); dots (x, y); gratings (cos φ, sin φ)."""
    n_obj = scene.unit.shape[0]
    out = np.zeros((len(t_us), n_obj, 2))
    if scene.cfg.kind == "dots":
        out[:] = _dot_centres(scene, t_us)
    elif scene.cfg.kind == "bars":
        out[:, :, 0] = _offsets_px(scene, t_us)
    else:
        phi = 2.0 * np.pi * _offsets_px(scene, t_us) / scene.period_px
        out[:, :, 0] = np.cos(phi)
        out[:, :, 1] = np.sin(phi)
    return out


# -- numba kernels ------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _bar_coverage(x: float, y: float, ux: float, uy: float, s: float, period_px: float,
                  half_width_px: float) -> float:
    """clip(w/2 + ½ − |wrap(u·(x, y) − s)|, 0, 1): (x, y) relative to the sensor centre, the
    distance wrapped to [−period/2, period/2)."""
    d = x * ux + y * uy - s
    if d >= 0.5 * period_px:
        d -= period_px
    elif d < -0.5 * period_px:
        d += period_px
    return min(max(half_width_px + 0.5 - abs(d), 0.0), 1.0)


@njit(cache=True, nogil=True)
def _bar_support(frame: np.ndarray, width: int, height: int, unit: np.ndarray,
                 period_px: np.ndarray, half_width_px: float, cov: np.ndarray,
                 idx: np.ndarray) -> int:
    """Coverage of the bars (cov, flat (n_pix,), zero on entry) on the pixels they touch.

    Bar k covers |u_k·(p − c) − s_k| < w/2 + ½ (wrapped); that band is solved per row (or per
    column when the bar is closer to horizontal) for each of the images s_k, s_k ± period, so
    only touched pixels are visited. Writes their flat indices to idx; returns their number.
    """
    cx0 = 0.5 * (width - 1)
    cy0 = 0.5 * (height - 1)
    reach = half_width_px + 0.5
    n_idx = 0
    for k in range(frame.shape[0]):
        ux = unit[k, 0]
        uy = unit[k, 1]
        per = period_px[k]
        by_rows = abs(ux) >= abs(uy)
        n_lines = height if by_rows else width
        n_along = width if by_rows else height
        u_along = ux if by_rows else uy
        u_across = uy if by_rows else ux
        c_along = cx0 if by_rows else cy0
        c_across = cy0 if by_rows else cx0
        for image in (-1.0, 0.0, 1.0):
            s = frame[k, 0] + image * per
            for line in range(n_lines):
                across = line - c_across
                a = c_along + (s - across * u_across - reach) / u_along
                b = c_along + (s - across * u_across + reach) / u_along
                lo = max(int(math.floor(min(a, b))) - 1, 0)
                hi = min(int(math.ceil(max(a, b))) + 1, n_along - 1)
                for j in range(lo, hi + 1):
                    x = j if by_rows else line
                    y = line if by_rows else j
                    c = _bar_coverage(x - cx0, y - cy0, ux, uy, frame[k, 0], per,
                                      half_width_px)
                    if c > 0.0:
                        i = y * width + x
                        if cov[i] == 0.0:
                            idx[n_idx] = i
                            n_idx += 1
                        if c > cov[i]:
                            cov[i] = c
    return n_idx


@njit(cache=True, nogil=True)
def _torus(d: float, size: int) -> float:
    """The offset d (px) wrapped to [−size/2, size/2): the shortest way round the torus."""
    if d >= 0.5 * size:
        return d - size
    if d < -0.5 * size:
        return d + size
    return d


@njit(cache=True, nogil=True)
def _dot_support(frame: np.ndarray, width: int, height: int, radius_px: float,
                 cov: np.ndarray, idx: np.ndarray) -> int:
    """Coverage max_k clip(r + ½ − |p − c_k|, 0, 1) of the dots (torus distances) on the
    pixels of their bounding boxes (cov zero on entry); touched flat indices to idx, count."""
    span = int(math.ceil(radius_px + 1.0))
    nx = min(2 * span + 2, width)
    ny = min(2 * span + 2, height)
    n_idx = 0
    for k in range(frame.shape[0]):
        cx = frame[k, 0]
        cy = frame[k, 1]
        x_lo = int(math.floor(cx)) - span
        y_lo = int(math.floor(cy)) - span
        for jy in range(ny):
            yy = y_lo + jy
            dy = _torus(yy - cy, height)
            row = (yy % height) * width
            for jx in range(nx):
                xx = x_lo + jx
                dx = _torus(xx - cx, width)
                c = min(max(radius_px + 0.5 - math.sqrt(dx * dx + dy * dy), 0.0), 1.0)
                if c > 0.0:
                    i = row + xx % width
                    if cov[i] == 0.0:
                        idx[n_idx] = i
                        n_idx += 1
                    if c > cov[i]:
                        cov[i] = c
    return n_idx


@njit(cache=True, nogil=True)
def _render_grating(frame: np.ndarray, cos_a: np.ndarray, sin_a: np.ndarray, amplitude: float,
                    out: np.ndarray) -> None:
    """out = A·cos(a − φ) = A·(cos a·cos φ + sin a·sin φ), frame[0] = (cos φ, sin φ)."""
    c = frame[0, 0]
    s = frame[0, 1]
    for i in range(out.shape[0]):
        out[i] = amplitude * (cos_a[i] * c + sin_a[i] * s)


@njit(cache=True, nogil=True)
def _changed_pixels(kind: int, frame: np.ndarray, width: int, height: int, unit: np.ndarray,
                    period_px: np.ndarray, half_width_px: float, radius_px: float,
                    cos_a: np.ndarray, sin_a: np.ndarray, dl: float, cov: np.ndarray,
                    cur_idx: np.ndarray, prev_idx: np.ndarray, n_prev: int,
                    work_idx: np.ndarray, work_l: np.ndarray) -> tuple[int, int]:
    """Pixels whose log intensity may have changed and their new values; returns (n_work,
    n_cur).

    Gratings: every pixel, L = (dl/2)·cos(a − φ). Bars and dots: the pixels the objects cover
    now (cur_idx[:n_cur], L = dl·coverage, coverage left in cov) followed by those they
    covered at the previous step only (prev_idx[:n_prev], L = 0, the background); all other
    pixels stay at the background.
    """
    if kind == 2:
        n = cos_a.shape[0]
        _render_grating(frame, cos_a, sin_a, 0.5 * dl, work_l[:n])
        for i in range(n):
            work_idx[i] = i
        return n, 0
    if kind == 0:
        n_cur = _bar_support(frame, width, height, unit, period_px, half_width_px, cov, cur_idx)
    else:
        n_cur = _dot_support(frame, width, height, radius_px, cov, cur_idx)
    for j in range(n_cur):
        work_idx[j] = cur_idx[j]
        work_l[j] = dl * cov[cur_idx[j]]
    n = n_cur
    for j in range(n_prev):
        i = prev_idx[j]
        if cov[i] == 0.0:
            work_idx[n] = i
            work_l[n] = 0.0
            n += 1
    return n, n_cur


@njit(cache=True, nogil=True)
def _n_crossings(a: float, thr: float) -> int:
    """floor(a / C + ε): levels crossed by a change |L − L_ref| = a (ε = _CROSS_EPS)."""
    if a < thr * (1.0 - _CROSS_EPS):
        return 0
    return int(a / thr + _CROSS_EPS)


@njit(cache=True, nogil=True)
def _emit_crossings(work_idx: np.ndarray, work_l: np.ndarray, n_work: int,
                    l_prev: np.ndarray, l_ref: np.ndarray, last_t: np.ndarray,
                    threshold: np.ndarray, t_prev_us: int, dt_us: int, refractory_us: int,
                    out_t: np.ndarray, out_pix: np.ndarray, out_p: np.ndarray, n: int) -> int:
    """One event per threshold crossing of the listed pixels in [t_prev, t_prev + dt); new n.

    Pixel i = work_idx[j] goes from L_prev to L_new = work_l[j] and crosses
    m = floor(|L_new − L_ref| / C_i + ε) levels; crossing k (level L_ref ± k·C_i) is at
    t = t_prev + floor(dt·(level − L_prev)/(L_new − L_prev)) µs, dropped if within
    refractory_us of the pixel's last event. Then L_ref moves to the last crossed level,
    last_t (µs) to the last emitted event and L_prev to L_new. out_* must have room.
    """
    for j in range(n_work):
        i = work_idx[j]
        l_new = work_l[j]
        d = l_new - l_ref[i]
        thr = threshold[i]
        m = _n_crossings(abs(d), thr)
        if m > 0:
            sign = 1.0 if d > 0 else -1.0
            pol = 1 if d > 0 else 0
            slope = l_new - l_prev[i]
            for k in range(1, m + 1):
                frac = 1.0
                if slope != 0.0:
                    frac = min(max((l_ref[i] + sign * k * thr - l_prev[i]) / slope, 0.0), 1.0)
                t = t_prev_us + min(int(frac * dt_us), dt_us - 1)
                if refractory_us > 0 and t - last_t[i] < refractory_us:
                    continue
                out_t[n] = t
                out_pix[n] = i
                out_p[n] = pol
                last_t[i] = t
                n += 1
            l_ref[i] += sign * m * thr
        l_prev[i] = l_new
    return n


@njit(cache=True, nogil=True)
def _simulate_steps(kind: int, frames: np.ndarray, step0: int, n0: int, t_first_us: int,
                    dt_us: int, width: int, height: int, unit: np.ndarray,
                    period_px: np.ndarray, half_width_px: float, radius_px: float,
                    cos_a: np.ndarray, sin_a: np.ndarray, dl: float, threshold: np.ndarray,
                    refractory_us: int, l_ref: np.ndarray, l_prev: np.ndarray,
                    last_t: np.ndarray, prev_idx: np.ndarray, n_prev: np.ndarray,
                    cov: np.ndarray, cur_idx: np.ndarray, work_idx: np.ndarray,
                    work_l: np.ndarray, out_t: np.ndarray, out_pix: np.ndarray,
                    out_p: np.ndarray) -> tuple[int, int]:
    """Run DVS steps step0.. of a window; step s renders frames[s] at t_first + (s + 1)·dt.

    Events of step s lie in [t_first + s·dt, t_first + (s + 1)·dt). Before a step whose
    events would not fit in out_*, stops and returns (events written, that step) with the
    state as it was, so the caller can grow the buffers and resume; returns (n, n_steps)
    when done. State: l_ref, l_prev, last_t (n_pix,), prev_idx[:n_prev[0]] the pixels the
    objects covered at the last step; cov is all zero between steps.
    """
    n = n0
    cap = out_t.shape[0]
    for s in range(step0, frames.shape[0]):
        n_work, n_cur = _changed_pixels(kind, frames[s], width, height, unit, period_px,
                                        half_width_px, radius_px, cos_a, sin_a, dl, cov,
                                        cur_idx, prev_idx, n_prev[0], work_idx, work_l)
        need = 0
        for j in range(n_work):
            i = work_idx[j]
            need += _n_crossings(abs(work_l[j] - l_ref[i]), threshold[i])
        if n + need > cap:
            for j in range(n_cur):
                cov[cur_idx[j]] = 0.0
            return n, s
        n = _emit_crossings(work_idx, work_l, n_work, l_prev, l_ref, last_t, threshold,
                            t_first_us + s * dt_us, dt_us, refractory_us, out_t, out_pix,
                            out_p, n)
        for j in range(n_cur):
            cov[cur_idx[j]] = 0.0
            prev_idx[j] = cur_idx[j]
        n_prev[0] = n_cur
    return n, frames.shape[0]


# -- orchestration ------------------------------------------------------------------------------

class _PixelState(NamedTuple):
    """Per-pixel DVS state, mutated in place by the kernels (see _simulate_steps)."""

    l_ref: np.ndarray  # (n_pix,) reference log intensity
    l_prev: np.ndarray  # (n_pix,) log intensity at the last rendered step
    last_t: np.ndarray  # (n_pix,) int64 µs of the last event (refractory)
    prev_idx: np.ndarray  # (n_pix,) int64: pixels covered by objects at the last step …
    n_prev: np.ndarray  # (1,) int64: … how many


class _Scratch(NamedTuple):
    """Work arrays of the kernels, reused across steps and windows."""

    cov: np.ndarray  # (n_pix,) coverage, zero between steps
    cur_idx: np.ndarray  # (n_pix,) int64
    work_idx: np.ndarray  # (2·n_pix,) int64
    work_l: np.ndarray  # (2·n_pix,)


def _kernel_args(scene: _Scene) -> tuple:
    cfg = scene.cfg
    return (cfg.width, cfg.height, scene.unit, scene.period_px, cfg.bar_width_px / 2.0,
            cfg.dot_radius_px, scene.cos_a, scene.sin_a, cfg.object_log_contrast)


def _initial_state(scene: _Scene, scratch: _Scratch) -> _PixelState:
    """Pixel state at t0: reference = the image at t0 (no events for the initial image)."""
    n_pix = scene.xs.shape[0]
    frame = _frames(scene, np.array([scene.cfg.t0_us]))[0]
    prev_idx = np.zeros(n_pix, dtype=np.int64)
    n_work, n_cur = _changed_pixels(scene.kind_code, frame, *_kernel_args(scene), scratch.cov,
                                    scratch.cur_idx, prev_idx, 0, scratch.work_idx,
                                    scratch.work_l)
    l0 = np.zeros(n_pix)
    l0[scratch.work_idx[:n_work]] = scratch.work_l[:n_work]
    prev_idx[:n_cur] = scratch.cur_idx[:n_cur]
    scratch.cov[:] = 0.0
    return _PixelState(l0.copy(), l0, np.full(n_pix, _NEVER_US, dtype=np.int64), prev_idx,
                       np.array([n_cur], dtype=np.int64))


def _new_scratch(n_pix: int) -> _Scratch:
    return _Scratch(np.zeros(n_pix), np.zeros(n_pix, np.int64), np.zeros(2 * n_pix, np.int64),
                    np.zeros(2 * n_pix))


def _dvs_window(scene: _Scene, state: _PixelState, scratch: _Scratch, step_a: int,
                step_b: int, buffers: list[np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DVS events (t, pixel, p) of steps step_a..step_b−1 (unsorted inside a step).

    ``buffers`` ([t, pixel, p] output arrays) is reused across windows and grown on demand.
    """
    cfg = scene.cfg
    t_step = cfg.t0_us + cfg.dt_us * np.arange(step_a + 1, step_b + 1, dtype=np.int64)
    frames = _frames(scene, t_step)
    n, done = 0, 0
    while True:
        n, done = _simulate_steps(
            scene.kind_code, frames, done, n, cfg.t0_us + step_a * cfg.dt_us, cfg.dt_us,
            *_kernel_args(scene), scene.threshold, cfg.refractory_us, state.l_ref,
            state.l_prev, state.last_t, state.prev_idx, state.n_prev, *scratch,
            buffers[0], buffers[1], buffers[2])
        if done == frames.shape[0]:
            break
        for j, b in enumerate(buffers):  # grow ×2, keeping the n events written so far
            grown = np.empty(2 * b.shape[0], dtype=b.dtype)
            grown[:n] = b[:n]
            buffers[j] = grown
    return buffers[0][:n].copy(), buffers[1][:n].copy(), buffers[2][:n].copy()


def _noise_block(scene: _Scene, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background and hot-pixel events (t, pixel, p) of one noise block, generation order.

    Block b covers [t0 + b·B, t0 + (b + 1)·B), B = NOISE_BLOCK_US; counts are Poisson
    (n_pix·rate·B and hot_rate·B per hot pixel), times and pixels uniform, polarity fair.
    """
    cfg = scene.cfg
    rng = _rng(cfg, _STREAM_NOISE, block)
    t_a = cfg.t0_us + block * NOISE_BLOCK_US
    n_pix = scene.xs.shape[0]
    n_bg = int(rng.poisson(n_pix * cfg.noise_rate_hz * NOISE_BLOCK_US / 1e6))
    t_bg = t_a + rng.integers(0, NOISE_BLOCK_US, n_bg)
    pix_bg = rng.integers(0, n_pix, n_bg)
    n_hot = rng.poisson(cfg.hot_rate_hz * NOISE_BLOCK_US / 1e6, scene.hot_index.shape[0])
    t_hot = t_a + rng.integers(0, NOISE_BLOCK_US, int(n_hot.sum()))
    pix_hot = np.repeat(scene.hot_index, n_hot)
    p = rng.integers(0, 2, n_bg + t_hot.shape[0]).astype(np.uint8)
    return (np.concatenate([t_bg, t_hot]).astype(np.int64),
            np.concatenate([pix_bg, pix_hot]).astype(np.int64), p)


def _noise_window(scene: _Scene, t_a_us: int, t_b_us: int,
                  cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise events (t, pixel, p) in [t_a, t_b); ``cache`` keeps the current block only."""
    cfg = scene.cfg
    if (cfg.noise_rate_hz == 0 and (cfg.hot_pixels == 0 or cfg.hot_rate_hz == 0)) \
            or t_b_us <= t_a_us:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    first = (t_a_us - cfg.t0_us) // NOISE_BLOCK_US
    last = (t_b_us - 1 - cfg.t0_us) // NOISE_BLOCK_US
    parts = []
    for block in range(first, last + 1):
        if block not in cache:
            cache.clear()
            cache[block] = _noise_block(scene, block)
        t, pix, p = cache[block]
        keep = (t >= t_a_us) & (t < t_b_us)
        parts.append((t[keep], pix[keep], p[keep]))
    return tuple(np.concatenate(c) for c in zip(*parts, strict=True))  # type: ignore[return-value]


def _windows(scene: _Scene, window_steps: int) -> Iterator[tuple[np.ndarray, int]]:
    """(events sorted by t, window end µs) for consecutive windows of window_steps steps.

    Window j covers [t0 + j·window_steps·dt, …) clipped to the duration; endless if
    duration_us is None. Memory is bounded by one window (plus one noise block).
    """
    cfg = scene.cfg
    scratch = _new_scratch(scene.xs.shape[0])
    state = _initial_state(scene, scratch)
    t_stop = None if cfg.duration_us is None else cfg.t0_us + cfg.duration_us
    n_steps = None if cfg.duration_us is None else -(-cfg.duration_us // cfg.dt_us)
    buffers = [np.empty(1 << 15, np.int64), np.empty(1 << 15, np.int64),
               np.empty(1 << 15, np.uint8)]
    cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    step = 0
    while n_steps is None or step < n_steps:
        step_b = step + window_steps if n_steps is None else min(step + window_steps, n_steps)
        t_a = cfg.t0_us + step * cfg.dt_us
        t_b = cfg.t0_us + step_b * cfg.dt_us if t_stop is None else min(
            cfg.t0_us + step_b * cfg.dt_us, t_stop)
        d_t, d_pix, d_p = _dvs_window(scene, state, scratch, step, step_b, buffers)
        n_t, n_pix, n_p = _noise_window(scene, t_a, t_b, cache)
        t = np.concatenate([d_t, n_t])
        pix = np.concatenate([d_pix, n_pix])
        p = np.concatenate([d_p, n_p])
        order = np.argsort(t, kind="stable")
        if t_stop is not None:
            order = order[t[order] < t_stop]
        t, pix, p = t[order], pix[order], p[order]
        yield make_events(t, pix % cfg.width, pix // cfg.width, p), int(t_b)
        step = step_b


def _ground_truth(scene: _Scene, t_us: np.ndarray) -> GroundTruth:
    cfg = scene.cfg
    t = np.asarray(t_us, dtype=np.int64).reshape(-1)
    hot = np.stack([scene.hot_index % cfg.width, scene.hot_index // cfg.width], axis=1)
    return GroundTruth(t, _object_positions(scene, t), scene.velocity.copy(),
                       hot.astype(np.int64), float(cfg.noise_rate_hz))


def render_scene(cfg: SceneConfig, *, window_us: int = 100_000) -> tuple[np.ndarray, GroundTruth]:
    """All events (EVENT_DTYPE, sorted by t, in [t0, t0 + duration)) and the ground truth.

    Ground truth is sampled at every rendering step t0 + k·dt_us, k = 0..ceil(duration/dt)−1.
    ``window_us`` only bounds working memory; the events do not depend on it.
    """
    if cfg.duration_us is None:
        raise ValueError("render_scene needs a finite SceneConfig.duration_us; "
                         "use SyntheticSource for an endless scene")
    scene = _build_scene(cfg)
    parts = [ev for ev, _ in _windows(scene, _window_steps(cfg, window_us))]
    events = np.concatenate(parts) if parts else empty_events()
    n_steps = -(-cfg.duration_us // cfg.dt_us)
    t_gt = cfg.t0_us + cfg.dt_us * np.arange(n_steps, dtype=np.int64)
    return events, _ground_truth(scene, t_gt)


def _window_steps(cfg: SceneConfig, window_us: int) -> int:
    if window_us <= 0 or window_us % cfg.dt_us:
        raise ValueError(f"window_us = {window_us!r}: must be a positive multiple of "
                         f"dt_us = {cfg.dt_us}")
    return window_us // cfg.dt_us


def scene_uri(cfg: SceneConfig) -> str:
    """``synthetic://KIND?field=value…`` listing the fields that differ from the defaults."""
    default = SceneConfig()
    query = {}
    for f in fields(SceneConfig):
        value = getattr(cfg, f.name)
        if f.name != "kind" and value != getattr(default, f.name):
            query[f.name] = _format_value(value)
    return f"synthetic://{cfg.kind}" + (f"?{urlencode(query)}" if query else "")


class SyntheticSource(EventSource):
    """A synthetic scene as an event source, rendered lazily one window at a time.

    Each window of ``window_us`` µs (a multiple of dt_us; default: the multiple nearest to
    10 ms) is one chunk with ``t_known_us`` at its end, so empty spans still advance time.
    Endless when cfg.duration_us is None, with memory bounded by one window. Iterating again
    restarts the scene from t0.
    """

    def __init__(self, cfg: SceneConfig, *, window_us: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if window_us is None:
            window_us = max(1, round(10_000 / cfg.dt_us)) * cfg.dt_us
        self.window_us = window_us
        self._window_steps = _window_steps(cfg, window_us)
        self.geometry = SensorGeometry(cfg.width, cfg.height)
        self.format = "synthetic"
        self.uri = scene_uri(cfg)
        self._scene = _build_scene(cfg)

    def chunks(self) -> Iterator[Chunk]:
        # an empty first chunk at t0 so that time-window batches start at t0, not at the
        # first event (the scene may be silent at first)
        yield Chunk(empty_events(), Counters(), t_known_us=self.cfg.t0_us)
        for events, t_end_us in _windows(self._scene, self._window_steps):
            yield Chunk(events, Counters(read=int(events.shape[0])), t_known_us=t_end_us)

    def ground_truth(self, t_us: np.ndarray | int) -> GroundTruth:
        """Exact object positions (len(t_us), n_objects, 2) px at the given times (µs)."""
        return _ground_truth(self._scene, np.asarray(t_us))


# -- URI options --------------------------------------------------------------------------------

_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(SceneConfig)
_SOURCE_OPTIONS = ("window_us",)


def _format_value(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{vx!r}:{vy!r}" for vx, vy in value)  # type: ignore[misc]
    return "none" if value is None else str(value)


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        f = float(text)  # accepts "2e6"; refuses fractions below
        if not f.is_integer():
            raise ValueError(text) from None
        return int(f)


def _parse_velocities(text: str) -> tuple[tuple[float, float], ...]:
    if not text.strip():
        return ()
    pairs = []
    for item in text.split(","):
        vx, sep, vy = item.partition(":")
        if not sep:
            raise ValueError(item)
        pairs.append((float(vx), float(vy)))
    return tuple(pairs)


def _convert(key: str, value: object, hint: Any) -> object:
    """Convert a URI string (or a keyword value) to the type of SceneConfig field ``key``."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = hint
    if optional:
        base = next(a for a in typing.get_args(hint) if a is not type(None))
    try:
        if isinstance(value, str):
            if optional and value.strip().lower() in ("", "none", "null"):
                return None
            if base is int:
                return _parse_int(value)
            if base is float:
                return float(value)
            if base is str:
                return value
            return _parse_velocities(value)
        if value is None and optional:
            return None
        if base is int and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        if base is int and isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        if base is float and isinstance(value, (int, float, np.number)) \
                and not isinstance(value, bool):
            return float(value)
        if base is str and isinstance(value, str):
            return value
        if typing.get_origin(base) is tuple and isinstance(value, (tuple, list)):
            return tuple((float(vx), float(vy)) for vx, vy in value)
    except (ValueError, TypeError):
        pass
    raise ValueError(f"synthetic scene option {key}={value!r}: not a valid "
                     f"{getattr(hint, '__name__', hint)}")


def open_synthetic(location: str, **opts: object) -> SyntheticSource:
    """Open ``synthetic://KIND?opt=value…`` (KIND bars, dots or gratings; "" means bars).

    Options are SceneConfig fields plus ``window_us`` (rendering window, µs, a multiple of
    dt_us; default ≈ 10 ms); values may be strings (from the URI query: ints also as "2e6",
    None as "none", velocities as "vx:vy,vx:vy") or Python values. Raises ValueError naming
    an unknown key (with the allowed ones) or a key whose value is bad.
    """
    kind = location.strip("/") or "bars"
    if "kind" in opts:
        other = str(opts.pop("kind"))
        if location.strip("/") and other != kind:
            raise ValueError(f"synthetic scene kind given twice: {kind!r} and kind={other!r}")
        kind = other
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic scene kind {kind!r}; known: {', '.join(KINDS)}")
    allowed = sorted(set(_FIELD_TYPES) - {"kind"} | set(_SOURCE_OPTIONS))
    values: dict[str, Any] = {}
    for key, raw in opts.items():
        if key not in allowed:
            raise ValueError(f"unknown synthetic scene option {key!r}; "
                             f"allowed: {', '.join(allowed)}")
        values[key] = _convert(key, raw, int if key == "window_us" else _FIELD_TYPES[key])
    window_us = values.pop("window_us", None)
    try:
        cfg = SceneConfig(kind=kind, **values)
    except ValueError as exc:
        raise ValueError(f"synthetic scene: {exc}") from None
    return SyntheticSource(cfg, window_us=window_us)
