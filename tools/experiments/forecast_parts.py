"""Decompose the network's Δ-ahead rate forecast: score each part against the next window.

Usage::

    python -m tools.experiments.forecast_parts [--quick] [--streams ...] [--spec key=value ...]

Each stream is replayed in Δ-long batches through a learning ``Network`` (as in
``model_loglik``); at every window boundary the following rate maps (events/s per pooled
cell and polarity) are built from the state and scored by the Poisson log-likelihood of
the next window's counts (nats per scored event, first third of the stream not scored),
reported as gains over the EMA-of-counts baseline:

* ``model``: the published ``rate_hz`` (x' / τ);
* ``trace``: z / τ, persistence of the input trace (what EMA approximates);
* ``hier``: h / τ = W1 μ1' / τ, the belief hierarchy's forecast alone (A included);
* ``recon``: x̂ / τ = W1 μ̂1 / τ, today's reconstruction (no A);
* ``no_lat``: (g h + ρ z) / τ, the published forecast without its lateral term;
* ``no_hier``: (ρ z + Σ_o R_o z_{c+o}) / τ, the published forecast without the hierarchy;
* ``gain_g``: g · z / τ for a few gains g (is the rate mapping biased?);
* ``blur_a``: ((1 − a) z + a · mean of the 8 neighbours' z) / τ (spatial hedging);
* ``delta_g``: max(0, x' + g · W1 (μ1' − μ1)) / τ for a few gains g: the published forecast
  plus the *change* the hierarchy predicts (its level h duplicates the trace; does the
  transition A carry anything when read as a change?).

Also reports, after the run, how far the top-layer temporal weights A are from the
identity, the mean learned g and ρ and the sums of R. Prints one line per stream and a
JSON object last.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from augury.events import EventBatch
from augury.model.network import (
    Network,
    _w,
    column_to_map,
    forecast_beliefs,
    lateral,
    traces_at,
)
from augury.model.scoring import FLOOR_COUNT, poisson_loglik, window_counts
from augury.model.spec import ModelSpec
from tools.experiments.model_loglik import STREAMS, load_spec
from tools.spec_args import add_spec_argument, spec_overrides

GAINS = (0.8, 0.9, 1.1, 1.25)
BLURS = (0.1, 0.2, 0.35)
DELTAS = (0.5, 1.0, 2.0, 4.0)


def _neigh_mean(m: np.ndarray) -> np.ndarray:
    """Mean of the 8 neighbouring cells (same polarity, zero outside), (Hp, Wp, 2)."""
    pad = np.pad(m, ((1, 1), (1, 1), (0, 0)))
    hp, wp = m.shape[:2]
    out = np.zeros_like(m)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                out += pad[1 + dy:1 + dy + hp, 1 + dx:1 + dx + wp]
    return out / 8.0


def parts(spec: ModelSpec, net: Network, rate_hz: np.ndarray) -> dict[str, np.ndarray]:
    """Rate maps (events/s, (Hp, Wp, 2)) of every forecast part at the current time."""
    st = net.state
    tau_s = spec.tau_us * 1e-6
    z = traces_at(spec, st, net.t_us)
    act = (st.active != 0)[:, None]
    za = z * act
    w1 = _w(st.W1, spec.n1)
    mu1p = forecast_beliefs(spec, st)
    hier = np.einsum("cdk,ck->cd", w1, mu1p)
    dhier = np.einsum("cdk,ck->cd", w1, mu1p - st.mu1)
    lat = lateral(spec, st.R[0], za)

    def m(a: np.ndarray) -> np.ndarray:
        return column_to_map(spec, np.maximum(a, 0.0) / tau_s)

    out = {
        "model": np.asarray(rate_hz, np.float64),
        "trace": m(z),
        "hier": m(hier),
        "recon": m(st.xhat1 * act),
        "no_lat": m(st.gh * hier + st.rho * za),
        "no_hier": m(st.rho * za + lat),
    }
    zt = out["trace"]
    for g in GAINS:
        out[f"gain_{g}"] = g * zt
    dh = column_to_map(spec, dhier) / tau_s
    for g in DELTAS:
        out[f"delta_{g}"] = np.maximum(out["model"] + g * dh, 0.0)
    nb = _neigh_mean(zt)
    for a in BLURS:
        out[f"blur_{a}"] = (1.0 - a) * zt + a * nb
    return out


def run(spec: ModelSpec, ev: np.ndarray) -> dict[str, float]:
    """Gains over EMA (nats/event) of every part, plus A, ρ and R statistics."""
    net = Network(spec)
    dt = spec.horizon_us
    t1 = int(ev["t"][-1]) // dt * dt
    warm = t1 // 3
    edges = np.arange(0, t1 + 1, dt)
    cuts = np.searchsorted(ev["t"], edges)
    beta = 1.0 - np.exp(-dt / spec.tau_us)
    ll: dict[str, float] = {}
    ema = last = pend = None
    nev = 0
    for i in range(len(edges) - 1):
        b = EventBatch(ev[cuts[i]:cuts[i + 1]], int(edges[i]), int(edges[i + 1]), i)
        r = net.step(b)
        n = window_counts(spec, b.events)
        if pend is not None and ema is not None and b.t_start_us >= warm:
            nev += int(n.sum())
            for k, v in pend.items():
                ll[k] = ll.get(k, 0.0) + poisson_loglik(v * dt * 1e-6, n, FLOOR_COUNT)
            ll["ema"] = ll.get("ema", 0.0) + poisson_loglik(ema, n, FLOOR_COUNT)
            ll["persistence"] = ll.get("persistence", 0.0) + poisson_loglik(last, n,
                                                                             FLOOR_COUNT)
        ema = n.astype(np.float64) if ema is None else (1 - beta) * ema + beta * n
        last = n
        pend = parts(spec, net, r.rate_hz)
    nev = max(nev, 1)
    out = {f"{k}_vs_ema": (v - ll["ema"]) / nev for k, v in ll.items() if k != "ema"}
    st = net.state
    eye = np.eye(st.A.shape[1])
    out["A_offdiag_max"] = float(np.abs(st.A[0] - np.diag(np.diag(st.A[0]))).max())
    out["A_diag_mean"] = float(np.diag(st.A[0]).mean())
    out["A_minus_I_fro"] = float(np.linalg.norm(st.A[0] - eye))
    seen = st.srho < spec.s2_init * 0.999  # channels whose ρ ever learned
    out["rho_mean_learned"] = float(st.rho[seen].mean()) if seen.any() else 0.0
    seen = st.sgh < spec.s2_init * 0.999
    out["g_mean_learned"] = float(st.gh[seen].mean()) if seen.any() else 0.0
    out["R_sum_off"] = float(st.R[0, 0].sum())
    out["R_sum_on"] = float(st.R[0, 1].sum())
    out["scored_events"] = float(nev)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_spec_argument(ap)
    ap.add_argument("--streams", nargs="*", default=None)
    ap.add_argument("--quick", action="store_true", help="bars and the rotating disk only")
    args = ap.parse_args(argv)
    if args.streams is None:
        args.streams = ["bars", "rotdisk"] if args.quick else [
            s for s in STREAMS if s != "evt3_looped"]
    overrides = spec_overrides(args.spec)
    results = {}
    for name in args.streams:
        ev, spec = load_spec(name, overrides)
        results[name] = run(spec, ev)
        print(name, {k: round(v, 4) for k, v in results[name].items()})
    print(json.dumps({k: {a: round(b, 4) for a, b in v.items()} for k, v in results.items()}))


if __name__ == "__main__":
    main()
