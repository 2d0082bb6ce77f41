"""What the integer twin (``arithmetic = "loihi"``) costs reconstruction and forecast.

Usage::

    python -m tools.experiments.integer_twin [--quick] [--streams NAME ...] [--seeds 0 1]

Each stream is replayed twice through ``Network.step`` in Δ-long windows (``horizon_us``),
learning on, with the spec the Lava backend runs (one belief layer, ``clocked_input``,
``settle = 0``, the daemon's pooling for the sensor) in float (``arithmetic = "float"``)
and in the integer twin (``"loihi"``), same seed. Scored after the first third of the
stream (``forecast_eval.warmup_windows``), at the end of every window:

* reconstruction: the relative error energy Σ(z − x̂)² / Σz² over the active columns'
  error units (the measure LAVA.md's prototype reported), and the free energy the engine
  reports (``Readout.free_energy``, nats, mean per window);
* forecast: the Poisson log-likelihood per event of the published count forecast for the
  next window, scored with ``forecast_eval``'s own functions (``window_counts``,
  ``loglik_map``, whole windows only, same floor);
* context: with several seeds, the spread (max − min) of the float arm's log-likelihood and
  reconstruction over seeds, a yardstick for the differences;
* range: the share of error units whose trace exceeds what x̂ can hold (Q.18 in 24 bits:
  32 events), where the twin's prediction saturates.

``--quick``: the first 1.5 s of the rotating disk and the whole DVXplorer sample (0.59 s),
seed 0 (≈ 4 s on this machine with numba's cache warm, ≈ 50 s when the kernels compile).
Without it: the whole rotating disk, the DVXplorer sample and 10 N-MNIST digits, seeds 0,
1 and 2. Never the reserved recordings. Prints one line per stream and arm, a Markdown
table, and one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np

from augury.events import EventBatch
from augury.model import loihi_int
from augury.model.network import Network
from augury.model.scoring import log_factorial, window_counts
from augury.model.spec import ModelSpec
from tools.experiments import forecast_eval as fe

QUICK = {"rotdisk": 1_500_000, "dvxplorer": None}
FULL = {"rotdisk": None, "dvxplorer": None, "nmnist10": None}
XHAT_RANGE = (loihi_int.Q_MAX + 1) / 2.0**loihi_int.XHAT_FRAC
"""Largest prediction x̂ the twin holds (events): 2^23 / 2^18 = 32."""


@dataclass
class Score:
    """One replay's scores (sums over the scored windows)."""

    loglik: float = 0.0  # nats
    events: int = 0
    err2: float = 0.0  # Σ (z − x̂)², events²
    z2: float = 0.0  # Σ z²
    free_energy: float = 0.0  # Σ over windows, nats
    over_range: int = 0  # error units with z ≥ XHAT_RANGE
    units: int = 0  # active error units seen
    windows: int = 0


def spec_for(w: int, h: int, arithmetic: str, seed: int) -> ModelSpec:
    """The Lava backend's spec for a w × h sensor (pooling as the daemon chooses it)."""
    return ModelSpec(width=w, height=h, pool=0, layers=1, clocked_input=True, settle=0.0,
                     arithmetic=arithmetic, seed=seed)


def replay(ev: np.ndarray, spec: ModelSpec) -> Score:
    """Run the stream's whole Δ windows through a fresh network; score after the warm-up."""
    net = Network(spec)
    d = spec.horizon_us
    nwin = fe.whole_windows(ev, d)
    edges = np.arange(nwin + 1, dtype=np.int64) * d
    cuts = np.searchsorted(ev["t"], edges)
    warm = fe.warmup_windows(nwin)
    sc = Score()
    pred = None
    for i in range(nwin):
        b = EventBatch(ev[cuts[i]:cuts[i + 1]], int(edges[i]), int(edges[i + 1]), i)
        n = window_counts(spec, b.events)
        if pred is not None and i >= warm:
            sc.loglik += fe.loglik_map(pred, n, log_factorial(n))
            sc.events += int(n.sum())
        r = net.step(b)
        pred = r.count_mean.astype(np.float64)
        if i >= warm:
            st = net.state
            act = st.active != 0
            z, x = st.z1[act], st.xhat1[act]
            sc.err2 += float(((z - x) ** 2).sum())
            sc.z2 += float((z ** 2).sum())
            sc.free_energy += float(r.free_energy)
            sc.over_range += int((z >= XHAT_RANGE).sum())
            sc.units += int(z.size)
            sc.windows += 1
    return sc


def evaluate(name: str, duration_us: int | None, seeds: list[int]) -> dict[str, object]:
    """Float and integer twin on one stream; per arm the scores summed over seeds."""
    ev, w, h = fe.load_stream(name, duration_us)
    out: dict[str, object] = {"stream": name, "events": int(ev.size),
                              "span_s": round(float(ev["t"][-1]) / 1e6, 3)}
    per_seed: dict[str, list[tuple[float, float]]] = {}
    for arm in ("float", "loihi"):
        tot = Score()
        t = time.perf_counter()
        for seed in seeds:
            s = replay(ev, spec_for(w, h, arm, seed))
            per_seed.setdefault(arm, []).append((s.loglik / max(s.events, 1),
                                                 s.err2 / max(s.z2, 1e-12)))
            for f in tot.__dataclass_fields__:
                setattr(tot, f, getattr(tot, f) + getattr(s, f))
        out[arm] = {
            "loglik_per_event": tot.loglik / max(tot.events, 1),
            "reconstruction": tot.err2 / max(tot.z2, 1e-12),
            "free_energy_per_window": tot.free_energy / max(tot.windows, 1),
            "over_xhat_range": tot.over_range / max(tot.units, 1),
            "seconds": time.perf_counter() - t,
        }
        a = out[arm]
        print(f"{name} {arm}: log-likelihood {a['loglik_per_event']:.4f} nats/event, "
              f"reconstruction {a['reconstruction']:.4f}, free energy "
              f"{a['free_energy_per_window']:.1f} nats/window, z ≥ {XHAT_RANGE:g} in "
              f"{a['over_xhat_range']:.2%} of units ({a['seconds']:.1f} s)", flush=True)
    f, q = out["float"], out["loihi"]
    out["d_loglik"] = q["loglik_per_event"] - f["loglik_per_event"]
    out["d_reconstruction"] = q["reconstruction"] - f["reconstruction"]
    fl = np.array(per_seed["float"])  # context: how far float runs of the seeds fall apart
    out["float_seed_spread"] = (float(np.ptp(fl[:, 0])), float(np.ptp(fl[:, 1])))
    return out


def table(results: list[dict[str, object]]) -> str:
    """Markdown table of the results."""
    rows = ["| stream | events | log-lik float | log-lik loihi | Δ | reconstruction float | "
            "loihi | Δ | float seed spread (log-lik, rec.) | free energy float / loihi "
            "(nats/window) | z ≥ 32 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        f, q = r["float"], r["loihi"]
        rows.append(
            f"| {r['stream']} | {r['events']:,} | {f['loglik_per_event']:.4f} | "
            f"{q['loglik_per_event']:.4f} | {r['d_loglik']:+.4f} | {f['reconstruction']:.4f} | "
            f"{q['reconstruction']:.4f} | {r['d_reconstruction']:+.4f} | "
            f"{r['float_seed_spread'][0]:.4f}, {r['float_seed_spread'][1]:.4f} | "
            f"{f['free_energy_per_window']:.1f} / {q['free_energy_per_window']:.1f} | "
            f"{q['over_xhat_range']:.2%} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--streams", nargs="*", default=None)
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    args = ap.parse_args(argv)
    plan = dict(QUICK if args.quick else FULL)
    if args.streams:
        plan = {s: plan.get(s) for s in args.streams}
    bad = [s for s in plan if s not in fe.REAL]
    if bad:
        raise SystemExit(f"unknown or reserved stream(s): {bad}; choose from {sorted(fe.REAL)}")
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    results = [evaluate(s, d, seeds) for s, d in plan.items()]
    print(table(results))
    print(json.dumps({
        "seeds": seeds,
        "streams": {r["stream"]: {
            "d_loglik": round(float(r["d_loglik"]), 4),
            "d_reconstruction": round(float(r["d_reconstruction"]), 4),
            "loglik_float": round(float(r["float"]["loglik_per_event"]), 4),
            "loglik_loihi": round(float(r["loihi"]["loglik_per_event"]), 4),
            "reconstruction_float": round(float(r["float"]["reconstruction"]), 4),
            "reconstruction_loihi": round(float(r["loihi"]["reconstruction"]), 4),
            "over_xhat_range": round(float(r["loihi"]["over_xhat_range"]), 5),
            "float_seed_spread": [round(v, 4) for v in r["float_seed_spread"]],
        } for r in results},
    }))


if __name__ == "__main__":
    main()
