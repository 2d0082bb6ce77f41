"""Adaptation to controlled shifts of real event data (issue 13, *Adaptation*).

Usage::

    python -m tools.experiments.shifts [--quick] [--write-docs] [--seeds 0 1 2]
        [--spec key=value ...]

Scene A is the DAVIS240C rotating disk (real, looped), cropped to 180 × 180 px so that a 90°
rotation keeps the geometry. A network learns on A for ``--warm`` seconds of stream time, then
the input shifts for ``--shift`` seconds, then A returns for ``--back`` seconds (A → B → A).
Shifts (B):

* ``recording``: another real recording, the DVXplorer sample cropped to 180 × 180;
* ``polarity``: A with every polarity flipped;
* ``rotation``: A rotated by 90°;
* ``speed x2`` / ``speed x0.5``: A played twice as fast / half as fast;
* ``hot pixels``: A plus 20 hot pixels firing at 200 Hz each.

Per 10 ms window the published forecast (``count_mean``) is scored on the next window's counts
(Poisson log-likelihood per event, nats) and the surprise z-score is read out. Reported per
shift and setting:

* **surprise peak**: the largest surprise z within 100 ms after the shift;
* **recovery time**: after the shift, the time until the log-likelihood per event (a 50 ms
  running mean) has come back 90 % of the way from its post-shift minimum to its level over
  the last second of the shifted phase (ms of stream time; the shifted scene has its own
  level, so recovery is measured against it, not against A's);
* **forgetting**: the log-likelihood per event over the first second back on A, minus that
  of a control run of the same setting and seed that saw more of A instead of B and then
  the very same return events (nats/event; negative = the shift cost something on A).

Settings: the default (learning on), no drift (``q = 0``: the Bayesian synapse's variance can
only shrink), the Bayesian synapse off (``plain_rate``: W¹ learns at a fixed rate, no weight
variance), and learning frozen at the shift. Mean and range over ``--seeds``. Output: a
Markdown table, with ``--write-docs`` into docs/results.md between ``shifts`` markers, and one
JSON object last. ``--quick``: the polarity flip only, one seed, short phases (< 1 min).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from augury.events import EventBatch
from augury.model.network import Network
from augury.model.scoring import poisson_loglik, window_counts
from augury.model.spec import ModelSpec
from tools.bench.model import looped
from tools.experiments.convergence import RECORDINGS, WINDOW_US
from tools.experiments.docs_block import write_block
from tools.spec_args import add_spec_argument, spec_overrides

SIDE = 180
"""Crop (px) of every stream: square, so that a 90° rotation keeps the geometry."""
PLAIN_RATE = 1.5e-4
"""The plain learning rate of the Bayesian-synapse-off control, chosen near the median weight
variance s² of W¹ that the Bayesian synapse reaches after the 6 s of A (1.5·10⁻⁴ when
measured once with seed 0, outside this script), so that both learn at about the same
typical rate and differ in the per-weight uncertainty."""
SETTINGS: dict[str, dict[str, object]] = {
    "learning": {}, "no drift (q = 0)": {"q": 0.0},
    "Bayesian synapse off (plain rate)": {"plain_rate": PLAIN_RATE},
    "frozen at the shift": {}}
PEAK_WINDOW_US = 100_000
SMOOTH_WINDOWS = 5


def _read(path: Path) -> np.ndarray:
    from augury.adapters import open_source

    with open_source(path) as src:
        ev = src.read_all().copy()
    ev["t"] -= ev["t"][0]
    return ev


def crop(ev: np.ndarray) -> np.ndarray:
    """Events inside the SIDE × SIDE top-left square."""
    return ev[(ev["x"] < SIDE) & (ev["y"] < SIDE)].copy()


def segment(ev: np.ndarray, t0_us: int, dur_us: int) -> np.ndarray:
    """[t0, t0 + dur) of a looped stream, times from 0."""
    span = int(ev["t"][-1]) + 1
    loops = -(-(t0_us + dur_us) // span) + 1
    lv = looped(ev, loops * ev.size)
    out = lv[(lv["t"] >= t0_us) & (lv["t"] < t0_us + dur_us)].copy()
    out["t"] -= t0_us
    return out


def shifted(name: str, a: np.ndarray, t0_us: int, dur_us: int, seed: int) -> np.ndarray:
    """The shifted phase B: ``dur_us`` of stream, times from 0."""
    if name == "recording":
        return segment(crop(_read(RECORDINGS["dvxplorer"])), 0, dur_us)
    if name == "speed x2":
        b = segment(a, t0_us, 2 * dur_us)
        b["t"] //= 2
        return b
    if name == "speed x0.5":
        b = segment(a, t0_us, dur_us // 2)
        b["t"] *= 2
        return b
    b = segment(a, t0_us, dur_us)
    if name == "polarity":
        b["p"] ^= 1
    elif name == "rotation":
        x = b["x"].copy()
        b["x"] = SIDE - 1 - b["y"]
        b["y"] = x
    elif name == "hot pixels":
        rng = np.random.default_rng(seed + 1000)
        hot = []
        for _ in range(20):
            n = rng.poisson(200.0 * dur_us * 1e-6)
            h = np.zeros(n, b.dtype)
            h["t"] = np.sort(rng.integers(0, dur_us, n))
            h["x"], h["y"], h["p"] = rng.integers(0, SIDE), rng.integers(0, SIDE), 1
            hot.append(h)
        b = np.concatenate([b, *hot])
        b = b[np.argsort(b["t"], kind="stable")]
    else:
        raise ValueError(f"unknown shift {name!r}")
    return b


SHIFTS = ("recording", "polarity", "rotation", "speed x2", "speed x0.5", "hot pixels")


def run_one(phases: list[np.ndarray], spec_over: dict[str, object],
            freeze_at_shift: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Per window: log-lik per event of the published forecast (NaN when empty), surprise z,
    events; and the first window index of each phase."""
    spec = ModelSpec.from_dict({"width": SIDE, "height": SIDE, "pool": 0, **spec_over})
    net = Network(spec)
    ll, zs, ns, starts = [], [], [], []
    t0 = 0
    pred = None
    k = 0
    for ph_i, ev in enumerate(phases):
        dur = -(-(int(ev["t"][-1]) + 1 if ev.size else 0) // WINDOW_US) * WINDOW_US
        e = ev.copy()
        e["t"] += t0
        starts.append(k)
        if ph_i == 1 and freeze_at_shift:
            net.freeze_learning()
        edges = np.searchsorted(e["t"], np.arange(t0, t0 + dur + 1, WINDOW_US))
        for i in range(len(edges) - 1):
            part = e[edges[i]:edges[i + 1]]
            n = window_counts(spec, part)
            tot = int(n.sum())
            ll.append(poisson_loglik(pred, n) / tot if pred is not None and tot else np.nan)
            ns.append(tot)
            r = net.step(EventBatch(part, t0 + i * WINDOW_US, t0 + (i + 1) * WINDOW_US, k))
            zs.append(r.surprise_z)
            pred = r.count_mean
            k += 1
        t0 += dur
    return np.array(ll), np.array(zs), np.array(ns), starts


def measures(ll: np.ndarray, z: np.ndarray, starts: list[int],
             ll_control: np.ndarray) -> dict[str, float]:
    """Surprise peak, recovery time (ms) and forgetting (nats/event); see module doc.
    ``ll_control``: the per-window log-likelihoods of the control run (same windows)."""
    s1, s2 = starts[1], starts[2]
    sec = 1_000_000 // WINDOW_US
    pre = np.nanmean(ll[max(0, s1 - sec):s1])
    peak = float(np.nanmax(z[s1:s1 + PEAK_WINDOW_US // WINDOW_US]))
    sm = np.convolve(np.nan_to_num(ll[s1:s2], nan=np.nanmean(ll[s1:s2])),
                     np.ones(SMOOTH_WINDOWS) / SMOOTH_WINDOWS, mode="valid")
    level = float(np.mean(sm[-sec:])) if sm.size > sec else float(np.mean(sm[-5:]))
    i_min = int(np.argmin(sm[: max(1, sm.size // 2)]))
    target = sm[i_min] + 0.9 * (level - sm[i_min])
    after = np.flatnonzero(sm[i_min:] >= target)
    rec = (i_min + int(after[0]) + SMOOTH_WINDOWS) * WINDOW_US / 1000 if after.size else np.nan
    back = np.nanmean(ll[s2:s2 + sec]) - np.nanmean(ll_control[s2:s2 + sec])
    return {"surprise_peak_z": peak, "recovery_ms": float(rec),
            "forgetting": float(back), "pre_loglik": float(pre),
            "shift_drop": float(sm[i_min] - pre)}


def run(shifts: list[str], seeds: list[int], warm_s: float, shift_s: float, back_s: float,
        overrides: dict[str, object]) -> dict[str, dict[str, list[dict[str, float]]]]:
    a = crop(_read(RECORDINGS["rotdisk"]))
    warm, dur, back = (int(x * 1e6) for x in (warm_s, shift_s, back_s))
    res: dict[str, dict[str, list[dict[str, float]]]] = {}
    controls: dict[tuple[str, int], np.ndarray] = {}
    for name in shifts:
        for seed in seeds:
            phases = [segment(a, 0, warm), shifted(name, a, warm, dur, seed),
                      segment(a, warm, back)]
            for setting, extra in SETTINGS.items():
                t0 = time.time()
                over = {**overrides, **extra, "seed": seed}
                frozen = setting.startswith("frozen")
                if (setting, seed) not in controls:  # A instead of B, then the same return
                    ctrl = [phases[0], segment(a, warm + back, dur), phases[2]]
                    controls[(setting, seed)] = run_one(ctrl, over, frozen)[0]
                ll, z, _, starts = run_one(phases, over, freeze_at_shift=frozen)
                m = measures(ll, z, starts, controls[(setting, seed)])
                res.setdefault(name, {}).setdefault(setting, []).append(m)
                print(name, setting, seed, json.dumps({k: round(v, 4) for k, v in m.items()}),
                      f"({time.time() - t0:.0f} s)", flush=True)
    return res


def table(res: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    def fmt(v: list[float], d: int) -> str:
        x = np.array(v, float)
        if np.all(np.isnan(x)):
            return "—"
        return f"{np.nanmean(x):.{d}f} [{np.nanmin(x):.{d}f}, {np.nanmax(x):.{d}f}]"

    lines = ["| shift | setting | surprise peak (z) | recovery (ms) | forgetting on return "
             "(nats/event) | drop at the shift (nats/event) |", "|---|---|---:|---:|---:|---:|"]
    for name, by in res.items():
        for setting, runs in by.items():
            g = {k: [r[k] for r in runs] for k in runs[0]}
            lines.append(f"| {name} | {setting} | {fmt(g['surprise_peak_z'], 1)} | "
                         f"{fmt(g['recovery_ms'], 0)} | {fmt(g['forgetting'], 3)} | "
                         f"{fmt(g['shift_drop'], 3)} |")
    return "\n".join(lines)


def write_docs(text: str, command: str) -> None:
    write_block("shifts", "Adaptation to controlled shifts of real data", text, command)


def headline(res: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, by in res.items():
        for setting, runs in by.items():
            tag = {"learning": "learn", "no drift (q = 0)": "q0",
                   "Bayesian synapse off (plain rate)": "plain"}.get(setting, "frozen")
            for key in ("recovery_ms", "forgetting", "surprise_peak_z"):
                v = np.array([r[key] for r in runs], float)
                out[f"{name.replace(' ', '_')}_{tag}_{key}"] = (
                    None if np.all(np.isnan(v)) else round(float(np.nanmean(v)), 4))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="polarity flip, 1 seed, short phases")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--shifts", nargs="+", default=None, choices=SHIFTS)
    add_spec_argument(ap)
    a = ap.parse_args(argv)
    for p in RECORDINGS.values():
        if not p.exists():
            raise SystemExit(f"{p} is missing (../shared/data is needed)")
    shifts = a.shifts or (["polarity"] if a.quick else list(SHIFTS))
    seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
    warm, dur, back = (3.0, 1.5, 1.5) if a.quick else (6.0, 3.0, 3.0)
    t0 = time.time()
    res = run(shifts, seeds, warm, dur, back, spec_overrides(a.spec))
    text = table(res) + (f"\n\n({len(seeds)} seeds; phases A {warm:g} s → B {dur:g} s → A "
                         f"{back:g} s; {time.time() - t0:.0f} s)")
    print(text)
    if a.write_docs:
        write_docs(text, "python -m tools.experiments.shifts" + (" --quick" if a.quick else ""))
    print(json.dumps(headline(res)))


if __name__ == "__main__":
    main()
