"""Model throughput: the numba engine vs the NumPy reference and a clocked dense NumPy engine.

Usage::

    python -m tools.bench.model [--quick] [--events N] [--spec key=value ...]

Input: real Prophesee recordings replayed as fast as possible (``evt3_sample.raw``,
1280×720, a 25 Mev/s burst; looped with t shifted by the recording's span each loop), cut
into 10 ms batches and fed to ``Network.step`` (the public API: input checks, kernel and
readout included), default ModelSpec for the sensor. Reported:

* learn_mev_s / infer_mev_s: events per second with learning on / frozen (Mev/s, one core);
* synops_per_event, spikes_up/down_per_event; peak_rss_mb (process peak resident memory)
  and state_mb (the network state);
* ratio_vs_reference: numba events/s ÷ ``reference.py`` events/s on a smaller input
  (numba on its first 200 k / 1 M events, the reference on the first 10 k / 30 k of them);
* ratio_vs_dense: numba events/s ÷ a clocked dense NumPy implementation of the same
  equations (1 ms ticks, every column every tick, both layers and the forecast units) on
  the same 200 k / 1 M events;
  both ratios are given for the dense burst and for a sparse real recording (DAVIS
  rotating disk, 0.12 Mev/s), because the dense engine's cost scales with area × time;
* loglik_gain_vs_persistence / loglik_gain_vs_ema (nats/event) of the learned model's
  10 ms-ahead rate map on the replay (after a warm-up third), and on the rotating disk.

The last output line is one JSON object with these keys.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

import numpy as np

from augury.events import EventBatch
from augury.model.network import Network
from augury.model.scoring import ScoreBoard, window_counts
from augury.model.spec import ModelSpec
from tools.spec_args import add_spec_argument, spec_overrides

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
EVT3 = DATA / "prophesee" / "evt3_sample.raw"
ROTDISK = DATA / "inivation" / "davis240c_rotdisk.aedat"


def load(path: Path) -> tuple[np.ndarray, int, int]:
    """All events of a recording (t re-origined at 0) and its geometry."""
    from augury.adapters import open_source

    with open_source(path) as src:
        ev = src.read_all().copy()
        w, h = src.geometry.width, src.geometry.height
    ev["t"] -= ev["t"][0]
    return ev, w, h


def looped(ev: np.ndarray, n_events: int) -> np.ndarray:
    """Repeat a recording until n_events, each loop shifted by its span (µs)."""
    span = int(ev["t"][-1]) + 1
    loops = -(-n_events // ev.size)
    out = np.concatenate([ev] * loops)
    out["t"] += np.repeat(np.arange(loops, dtype=np.int64) * span, ev.size)
    return out[:n_events]


def batches(ev: np.ndarray, window_us: int, t0_us: int = 0) -> list[EventBatch]:
    """Consecutive window_us batches from t0_us (a multiple of window_us) past the last event."""
    t1 = (int(ev["t"][-1]) // window_us + 1) * window_us
    edges = np.arange(t0_us, t1 + 1, window_us)
    cuts = np.searchsorted(ev["t"], edges)
    return [EventBatch(ev[cuts[i]:cuts[i + 1]], int(edges[i]), int(edges[i + 1]), i)
            for i in range(len(edges) - 1)]


def timed_run(net: Network, bs: list[EventBatch], board: ScoreBoard | None = None) -> float:
    """Seconds spent in net.step over the batches (scoring excluded)."""
    spent = 0.0
    for b in bs:
        t = time.perf_counter()
        r = net.step(b)
        spent += time.perf_counter() - t
        if board is not None:
            board.observe(b, r.rate_hz)
    return spent


# -- the clocked dense engine -------------------------------------------------------------
def _blocks(spec: ModelSpec) -> np.ndarray:
    """(n2, 4) layer-1 column of each quadrant of every layer-2 column, −1 off the grid."""
    r1, c1 = spec.grid1
    r2, c2 = spec.grid2
    by, bx = np.divmod(np.arange(r2 * c2), c2)
    cy = 2 * by[:, None] + np.array([0, 0, 1, 1])[None, :]
    cx = 2 * bx[:, None] + np.array([0, 1, 0, 1])[None, :]
    return np.where((cy < r1) & (cx < c1), cy * c1 + cx, -1)


def _kalman(w: np.ndarray, s2: np.ndarray, grad: np.ndarray, info: np.ndarray, q: float,
            hi: float) -> tuple[np.ndarray, np.ndarray]:
    """The Bayesian-synapse step with soft bounds [0, hi] on a whole weight matrix."""
    s2 = 1.0 / (1.0 / (s2 + q) + info)
    dw = s2 * grad
    dw = np.where(dw > 0, dw * (hi - w) / hi, dw * w / hi)
    return np.clip(w + dw, 0.0, hi), s2


def dense_run(spec: ModelSpec, ev: np.ndarray, t1_us: int) -> dict[str, np.ndarray]:
    """The same equations, clocked: every tick, every column, full (not sigma-delta) messages.

    Per tick_us: z ← z e^{−Δt/τ} + counts; then ``relax_steps`` times, both layers:
    ε1 = π1 (z − W1 μ1), ε2 = π2 (μ1 of the 4 children − W2 μ2),
    μ1 ← max(0, μ1 + κ (W1ᵀ ε1 − ε2 − λ)/h1), μ2 ← max(0, μ2 + κ (W2ᵀ ε2 − π_prior μ2 − λ)/h2)
    with h from ``curv_mix``; every learn_us: precisions and W1, W2 by the Kalman rule; every
    Δ: the forecast units x' = g W1 μ1 + ρ z + Σ_o R_o z_{+o} and their learning on the
    forecast error (A stays at the identity here, which leaves the hierarchy's forecast at
    W1 μ1, and the forecast weights take the Bayesian step with their variance held at s²₀:
    the same operations, simpler bookkeeping). Vectorised NumPy over all columns, so its
    cost scales with sensor area × time, not with events. Returns the final beliefs ``mu1``
    (n1, K1), ``mu2`` (n2, K2) and forecast ``fprev`` (n1, D1).
    """
    n1, d1, k1 = spec.n1, spec.d1, spec.k1
    n2, d2, k2 = spec.n2, spec.d2, spec.k2
    hp, wp = spec.pooled_shape
    r1, c1 = spec.grid1
    c = spec.column
    rng = np.random.default_rng(spec.seed)
    w1 = rng.uniform(0, spec.w_init, (d1, k1))
    w2 = rng.uniform(0, spec.w_init, (d2, k2))
    s1 = np.full((d1, k1), spec.s2_init)
    s2w = np.full((d2, k2), spec.s2_init)
    z = np.zeros((n1, d1))
    mu = np.zeros((n1, k1))
    mu2 = np.zeros((n2, k2))
    pi0 = 1.0 / (1.0 + spec.v0)
    v, pi = np.ones((n1, d1)), np.full((n1, d1), pi0)
    v2, pi2 = np.ones((n2, d2)), np.full((n2, d2), pi0)
    rho, g, rr = np.ones((n1, d1)), np.zeros((n1, d1)), np.zeros((2, 8))
    vf = np.ones((n1, d1))
    fprev = np.zeros((n1, d1))
    kids = _blocks(spec)
    valid = (kids >= 0)[:, :, None]
    kid = np.where(kids >= 0, kids, 0)
    gam = spec.curv_mix
    tick = spec.tick_us
    f = math.exp(-tick / spec.tau_us)
    edges = np.arange(0, t1_us + tick, tick)
    cuts = np.searchsorted(ev["t"], edges)

    def curv(w: np.ndarray, p: np.ndarray, prior: np.ndarray | float) -> np.ndarray:
        mix = (1.0 - gam) * w + gam * w.sum(axis=1, keepdims=True)
        return prior + p @ (w * mix)

    def to_map(a: np.ndarray) -> np.ndarray:
        m = np.zeros((r1 * c + 2, c1 * c + 2, 2))
        m[1:-1, 1:-1] = a.reshape(r1, c1, c, c, 2).transpose(0, 2, 1, 3, 4).reshape(
            r1 * c, c1 * c, 2)
        return m

    def neighbours(a: np.ndarray) -> np.ndarray:
        """(8, n1, d1): each channel's 8 neighbouring cells' values, same polarity."""
        m = to_map(a)
        out = []
        for oy, ox in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
            sh = m[1 + oy:m.shape[0] - 1 + oy, 1 + ox:m.shape[1] - 1 + ox]
            out.append(sh.reshape(r1, c, c1, c, 2).transpose(0, 2, 1, 3, 4).reshape(n1, d1))
        return np.stack(out)

    for i in range(len(edges) - 1):
        e = ev[cuts[i]:cuts[i + 1]]
        cnt = np.zeros((r1 * c, c1 * c, 2))
        cnt[:hp, :wp] = window_counts(spec, e)
        z = z * f + cnt.reshape(r1, c, c1, c, 2).transpose(0, 2, 1, 3, 4).reshape(n1, d1)
        h2 = curv(w2, pi2, spec.pi_prior)
        for _ in range(spec.relax_steps):
            x2 = (mu[kid] * valid).reshape(n2, d2)
            eps2 = pi2 * (x2 - mu2 @ w2.T)
            own = np.zeros((n1, k1))
            np.add.at(own, kid[valid[:, :, 0]], eps2.reshape(n2, 4, k1)[valid[:, :, 0]])
            slot_pi = np.zeros((n1, k1))
            np.add.at(slot_pi, kid[valid[:, :, 0]], pi2.reshape(n2, 4, k1)[valid[:, :, 0]])
            h1 = curv(w1, pi, slot_pi)
            eps = pi * (z - mu @ w1.T)
            mu = np.maximum(mu + spec.kappa * (eps @ w1 - own - spec.sparsity) / h1, 0.0)
            g2 = eps2 @ w2 - spec.pi_prior * mu2 - spec.sparsity
            mu2 = np.maximum(mu2 + spec.kappa * g2 / h2, 0.0)
        t_now = int(edges[i + 1])
        if t_now % spec.learn_us == 0:
            err = z - mu @ w1.T
            v = (1 - spec.alpha) * v + spec.alpha * err * err
            pi = np.clip(1.0 / (v + spec.v0), spec.pi_min, spec.pi_max)
            w1, s1 = _kalman(w1, s1, (pi * err).T @ mu,
                             pi.T @ (mu * mu.sum(axis=1, keepdims=True)), spec.q, spec.w_max)
            x2 = (mu[kid] * valid).reshape(n2, d2)
            err2 = x2 - mu2 @ w2.T
            v2 = (1 - spec.alpha) * v2 + spec.alpha * err2 * err2
            pi2 = np.clip(1.0 / (v2 + spec.v0), spec.pi_min, spec.pi_max)
            w2, s2w = _kalman(w2, s2w, (pi2 * err2).T @ mu2,
                              pi2.T @ (mu2 * mu2.sum(axis=1, keepdims=True)), spec.q,
                              spec.w_max)
        if t_now % spec.horizon_us == 0:
            fe = z - fprev
            vf = (1 - spec.alpha) * vf + spec.alpha * fe * fe
            pif = np.clip(1.0 / (vf + spec.v0), spec.pi_min, spec.pi_max)
            hz = mu @ w1.T
            nb = neighbours(z)
            asum = z + hz + nb.sum(axis=0)
            rho = np.clip(rho + pif * fe * z / (1.0 / spec.s2_init + pif * z * asum), 0, 1)
            g = np.clip(g + pif * fe * hz / (1.0 / spec.s2_init + pif * hz * asum), 0, 1)
            pol = np.arange(d1) % 2
            for o in range(8):
                for q in (0, 1):
                    sel = pol == q
                    gr = float(np.sum(pif[:, sel] * fe[:, sel] * nb[o][:, sel]))
                    info = float(np.sum(pif[:, sel] * nb[o][:, sel] * asum[:, sel]))
                    rr[q, o] = min(max(rr[q, o] + gr / (1.0 / spec.s2_init + info), 0.0), 1.0)
            fprev = np.maximum(g * hz + rho * z + np.einsum("o,ond->nd", rr[0], nb)
                               * (pol == 0) + np.einsum("o,ond->nd", rr[1], nb) * (pol == 1),
                               0.0)
    return {"mu1": mu, "mu2": mu2, "fprev": fprev}


def throughput(ev: np.ndarray, w: int, h: int, *, learn: bool = True,
               overrides: dict[str, object] | None = None) -> tuple[float, Network]:
    spec = ModelSpec(width=w, height=h, **(overrides or {}))
    net = Network(spec)
    if not learn:
        net.freeze_learning()
    secs = timed_run(net, batches(ev, 10_000))
    return ev.size / secs, net


def ratios(ev: np.ndarray, w: int, h: int, n_small: int, n_ref: int,
           pool: int, overrides: dict[str, object]) -> dict[str, float]:
    """events/s of numba and dense on the first n_small events, of the reference on the
    first n_ref of them (its per-event cost is flat; it is too slow for more), learning on."""
    small = ev[:n_small]
    spec = ModelSpec(width=w, height=h, **{"pool": pool, **overrides})
    bs = batches(small, 10_000)
    Network(spec).step(bs[0])  # warm (compiled/cached)
    rates = {"numba": small.size / timed_run(Network(spec), bs)}
    ref_bs = batches(small[:n_ref], 10_000)
    rates["reference"] = n_ref / timed_run(Network(spec, backend="reference"), ref_bs)
    t = time.perf_counter()
    dense_run(spec, small, bs[-1].t_end_us)
    rates["dense"] = small.size / (time.perf_counter() - t)
    return {
        "numba_ev_s": rates["numba"], "reference_ev_s": rates["reference"],
        "dense_ev_s": rates["dense"],
        "ratio_vs_reference": rates["numba"] / rates["reference"],
        "ratio_vs_dense": rates["numba"] / rates["dense"],
    }


def loglik(ev: np.ndarray, w: int, h: int, pool: int,
           overrides: dict[str, object]) -> dict[str, float]:
    spec = ModelSpec(width=w, height=h, **{"pool": pool, **overrides})
    net = Network(spec)
    bs = batches(ev, spec.horizon_us)
    board = ScoreBoard(spec, spec.horizon_us, warmup_us=bs[-1].t_end_us // 3)
    timed_run(net, bs, board)
    return board.per_event()


def run(quick: bool, n_events: int | None,
        overrides: dict[str, object] | None = None) -> dict[str, object]:
    """All figures for the default spec, or the spec with ``overrides`` (ModelSpec fields)."""
    ov = overrides or {}
    ev0, w, h = load(EVT3)
    n = n_events or (1_000_000 if quick else 10_000_000)
    ev = looped(ev0, n)
    throughput(ev[:50_000], w, h, overrides=ov)  # compile / load the cache outside the timing
    learn_rate, net = throughput(ev, w, h, learn=True, overrides=ov)
    c = net.state.counters
    frozen = Network(net.spec)
    frozen.load_state_dict(net.state_dict())
    frozen.freeze_learning()
    ev2 = ev.copy()
    ev2["t"] += net.t_us  # the same replay again, continuing the stream
    infer_rate = ev2.size / timed_run(frozen, batches(ev2, 10_000, net.t_us))
    state_mb = sum(a.nbytes for a in net.state) / 2**20
    small_n, ref_n = (200_000, 10_000) if quick else (1_000_000, 30_000)
    burst = ratios(ev, w, h, small_n, ref_n, 8, ov)
    rot, rw, rh = load(ROTDISK)
    sparse = ratios(rot, rw, rh, min(small_n, rot.size), ref_n, 4, ov)
    ll_burst = loglik(looped(ev0, 2_000_000 if quick else 4_000_000), w, h, 8, ov)
    ll_rot = loglik(rot, rw, rh, 4, ov)
    return {
        "learn_mev_s": learn_rate / 1e6,
        "infer_mev_s": infer_rate / 1e6,
        "events": int(ev.size),
        "synops_per_event": float(c[3] / c[0]),
        "spikes_up_per_event": float(c[1] / c[0]),
        "spikes_down_per_event": float(c[2] / c[0]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "state_mb": state_mb,
        "ratio_vs_reference": burst["ratio_vs_reference"],
        "ratio_vs_dense": burst["ratio_vs_dense"],
        "burst_small": burst,
        "rotdisk_small": sparse,
        "loglik_gain_vs_persistence": ll_burst["gain_vs_persistence"],
        "loglik_gain_vs_ema": ll_burst["gain_vs_ema"],
        "loglik_burst": ll_burst,
        "loglik_rotdisk": ll_rot,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 M events, small ratios (< 1 min)")
    ap.add_argument("--events", type=int, default=None, help="events replayed (default 10 M)")
    add_spec_argument(ap)
    args = ap.parse_args(argv)
    if not EVT3.exists():
        raise SystemExit(f"{EVT3} is missing (the shared data directory is needed)")
    overrides = spec_overrides(args.spec)
    res = run(args.quick, args.events, overrides)
    for k, v in res.items():
        if isinstance(v, dict):
            print(f"{k}: " + ", ".join(f"{a}={b:.4g}" for a, b in v.items()))
        else:
            print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    flat = {k: v for k, v in res.items() if not isinstance(v, dict)}
    flat["loglik_gain_vs_ema_rotdisk"] = res["loglik_rotdisk"]["gain_vs_ema"]  # type: ignore[index]
    flat["loglik_gain_vs_persistence_rotdisk"] = res["loglik_rotdisk"][  # type: ignore[index]
        "gain_vs_persistence"]
    flat["ratio_vs_reference_rotdisk"] = res["rotdisk_small"]["ratio_vs_reference"]  # type: ignore[index]
    flat["ratio_vs_dense_rotdisk"] = res["rotdisk_small"]["ratio_vs_dense"]  # type: ignore[index]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in flat.items()}))


if __name__ == "__main__":
    main()
