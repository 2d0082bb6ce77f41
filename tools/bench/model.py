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
  equations (1 ms ticks, every column every tick) on the same 200 k / 1 M events;
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
def dense_run(spec: ModelSpec, ev: np.ndarray, t1_us: int) -> None:
    """The same equations, clocked: every tick, every column, full (not sigma-delta) messages.

    Per tick_us: z ← z e^{−Δt/τ} + counts; then ``relax_steps`` times: ε = π (z − x̂),
    μ1 ← max(0, μ1 + κ (W1ᵀ ε − π_prior μ1 − λ)/h1), x̂ = W1 μ1 (one layer); every
    learn_us: precisions and W1 by the same Kalman rule. Vectorised NumPy over all n1
    columns, so its cost scales with sensor area × time, not with events.
    """
    n1, d1, k1 = spec.n1, spec.d1, spec.k1
    hp, wp = spec.pooled_shape
    r1, c1 = spec.grid1
    rng = np.random.default_rng(spec.seed)
    w1 = rng.uniform(0, spec.w_init, (d1, k1))
    s1 = np.full((d1, k1), spec.s2_init)
    z = np.zeros((n1, d1))
    mu = np.zeros((n1, k1))
    v = np.ones((n1, d1))
    pi = np.full((n1, d1), 1.0 / (1.0 + spec.v0))
    tick = spec.tick_us
    f = math.exp(-tick / spec.tau_us)
    c = spec.column
    edges = np.arange(0, t1_us + tick, tick)
    cuts = np.searchsorted(ev["t"], edges)
    for i in range(len(edges) - 1):
        e = ev[cuts[i]:cuts[i + 1]]
        cnt = np.zeros((r1 * c, c1 * c, 2))
        cnt[:hp, :wp] = window_counts(spec, e)
        z = z * f + cnt.reshape(r1, c, c1, c, 2).transpose(0, 2, 1, 3, 4).reshape(n1, d1)
        h = spec.pi_prior + (pi * w1.sum(axis=1)[None, :]) @ w1
        for _ in range(spec.relax_steps):
            eps = pi * (z - mu @ w1.T)
            g = eps @ w1 - spec.pi_prior * mu - spec.sparsity
            mu = np.maximum(mu + spec.kappa * g / h, 0.0)
        if int(edges[i + 1]) % spec.learn_us == 0:
            err = z - mu @ w1.T
            v = (1 - spec.alpha) * v + spec.alpha * err * err
            pi = np.clip(1.0 / (v + spec.v0), spec.pi_min, spec.pi_max)
            grad = (pi * err).T @ mu
            info = pi.T @ (mu * mu.sum(axis=1, keepdims=True))
            s1 = 1.0 / (1.0 / (s1 + spec.q) + info)
            dw = s1 * grad
            dw = np.where(dw > 0, dw * (spec.w_max - w1) / spec.w_max, dw * w1 / spec.w_max)
            w1 = np.clip(w1 + dw, 0.0, spec.w_max)


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
    ap.add_argument("--spec", nargs="*", default=[],
                    help="ModelSpec overrides key=value (JSON values), e.g. relax_steps=8")
    args = ap.parse_args(argv)
    if not EVT3.exists():
        raise SystemExit(f"{EVT3} is missing (the shared data directory is needed)")
    try:
        overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.spec)}
    except ValueError as e:
        raise SystemExit(f"--spec expects key=value with a JSON value: {e}") from None
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
