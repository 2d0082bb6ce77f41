"""Where the model's time goes: kernel-only throughput and the cost of each kind of tick.

Usage::

    python -m tools.bench.model_phases [--quick] [--spec key=value ...]

Complements ``tools.bench.model`` (which times the public ``Network.step``, input checks and
read-out included) with the numba kernel alone, on the same two real recordings:

* ``*_kernel_learn_mev_s`` / ``*_kernel_frozen_mev_s``: ``kernels.run_batch`` over the
  replay in 10 ms batches, best of R (learning frozen from the start: random weights);
* ``burst_events_only_mev_s``: the per-event path alone (a spec whose ticks fall after
  the 40 ms replay: same per-event work, no clocked work);
* ``*_tick_ms`` / ``*_learn_tick_ms`` / ``*_horizon_tick_ms``: one ordinary tick, one
  learning-epoch tick and one horizon tick (which is also a learning epoch by default),
  each run on a copy of the state reached halfway through the replay after that
  millisecond's events, best of R, minus the cost of calling a kernel with the state;
* ``*_events_per_ms`` and ``*_active_columns`` there, and the split of 10 ms of stream
  into per-event work, ordinary ticks and the extra cost of learning and horizon ticks.

Inputs: ``evt3_sample.raw`` looped (1280×720, a 25 Mev/s burst, pool 8) and the DAVIS240C
rotating disk (0.12 Mev/s, pool 4). Last output line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
from numba import njit

from augury.events import EventBatch
from augury.model import kernels
from augury.model.network import Network
from augury.model.spec import ModelSpec
from augury.model.state import K_NEXT, K_STARTED, State
from tools.bench.model import EVT3, ROTDISK, batches, load, looped
from tools.spec_args import add_spec_argument, spec_overrides


@njit(cache=True)
def _touch(st: State) -> int:
    """A kernel that only receives the state: the fixed cost of a call (argument checks)."""
    return int(st.active[0])


def _fields(ev: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(ev[f]) for f in ("t", "x", "y", "p")]


def _start(net: Network, t0_us: int) -> None:
    tick = net.spec.tick_us
    net.state.clock[K_NEXT] = -(-t0_us // tick) * tick
    net.state.clock[K_STARTED] = 1


def kernel_seconds(spec: ModelSpec, bs: list[EventBatch], learn: bool) -> tuple[float, Network]:
    """Seconds in ``kernels.run_batch`` over the batches, from a fresh network."""
    net = Network(spec)
    _start(net, bs[0].t_start_us)
    spent = 0.0
    for b in bs:
        f = _fields(b.events)
        t = time.perf_counter()
        kernels.run_batch(net.state, net._scratch, net.params, *f, b.t_end_us, learn)
        spent += time.perf_counter() - t
    return spent, net


def _clone(net: Network) -> Network:
    out = Network(net.spec)
    out.load_state_dict(net.state_dict())
    kernels._transpose_w1(out.state, out._scratch)
    kernels._thresholds(out.state, out._scratch, out.params)
    return out


def _best(net: Network, fn: Callable[[Network], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        c = _clone(net)
        t = time.perf_counter()
        fn(c)
        best = min(best, time.perf_counter() - t)
    return best


def events_only(ev: np.ndarray, w: int, h: int, pool: int, overrides: dict[str, object],
                repeats: int) -> float:
    """Mev/s of the per-event path alone: one spec whose ticks fall after the replay (which
    must span < 65 ms, so that every decay factor still comes from the table)."""
    span = int(ev["t"][-1]) + 1
    if span > 65_000:
        raise ValueError(f"events_only needs a replay shorter than 65 ms, got {span} µs")
    tick = -(-span // 1_000) * 1_000
    spec = ModelSpec(width=w, height=h, **{"pool": pool, **overrides, "tick_us": tick,
                                            "learn_us": tick, "horizon_us": tick,
                                            "tau_us": 20_000})
    best = float("inf")
    f = _fields(ev)
    for _ in range(repeats):
        net = Network(spec)
        _start(net, 0)
        t = time.perf_counter()
        kernels.run_batch(net.state, net._scratch, net.params, *f, span - 1, False)
        best = min(best, time.perf_counter() - t)
    return ev.size / best / 1e6


def phases(name: str, ev: np.ndarray, w: int, h: int, pool: int, overrides: dict[str, object],
           repeats: int, per_event_mev_s: float) -> dict[str, float]:
    """Kernel-only throughput and tick costs on one replay; ``per_event_mev_s`` is the
    per-event path's speed (``events_only``) used to split 10 ms of stream into parts."""
    spec = ModelSpec(width=w, height=h, **{"pool": pool, **overrides})
    out: dict[str, float] = {}
    bs10 = batches(ev, 10_000)
    kernel_seconds(spec, bs10[:2], True)  # compile / load the cache outside the timing
    for learn, key in ((True, "learn"), (False, "frozen")):
        secs = min(kernel_seconds(spec, bs10, learn)[0] for _ in range(repeats))
        out[f"{name}_kernel_{key}_mev_s"] = ev.size / secs / 1e6
    # the ticks, on the state halfway through the replay
    bs1 = batches(ev, spec.tick_us)
    mid = len(bs1) // 2
    mid -= mid % (spec.horizon_us // spec.tick_us)
    if mid == 0 or mid + spec.horizon_us // spec.tick_us > len(bs1):
        raise ValueError(f"{name}: the replay must last at least two horizons "
                         f"({2 * spec.horizon_us} µs) to time its ticks")
    _, net = kernel_seconds(spec, bs1[:mid], True)
    overhead = _best(net, lambda c: _touch(c.state), repeats)
    kinds: dict[str, list[float]] = {"tick": [], "learn_tick": [], "horizon_tick": []}
    n_ev = []
    for b in bs1[mid:mid + spec.horizon_us // spec.tick_us]:
        kernels.run_batch(net.state, net._scratch, net.params, *_fields(b.events),
                          b.t_end_us - 1, True)
        tt = b.t_end_us
        secs = _best(net, lambda c, tt=tt: kernels._tick(c.state, c._scratch, c.params, tt,
                                                          True), repeats) - overhead
        kind = ("horizon_tick" if tt % spec.horizon_us == 0 else
                "learn_tick" if tt % spec.learn_us == 0 else "tick")
        kinds[kind].append(secs)
        n_ev.append(b.events.size)
        kernels._tick(net.state, net._scratch, net.params, tt, True)
        net.state.clock[K_NEXT] = tt + spec.tick_us
    out[f"{name}_active_columns"] = float(net.state.clock[3])
    out[f"{name}_events_per_ms"] = float(np.mean(n_ev)) * 1_000 / spec.tick_us
    for k, v in kinds.items():
        if v:
            out[f"{name}_{k}_ms"] = float(np.median(v)) * 1e3
    # 10 ms of stream: per-event work, ordinary ticks, extra of learning and horizon ticks
    per10 = 10_000 // spec.tick_us
    ev_ms = out[f"{name}_events_per_ms"] * 10 / per_event_mev_s / 1e3
    tick_ms = out.get(f"{name}_tick_ms", 0.0)
    ticks = per10 * tick_ms
    extra = sum(len(kinds[k]) * (out.get(f"{name}_{k}_ms", 0.0) - tick_ms)
                for k in ("learn_tick", "horizon_tick")) * per10 / max(len(n_ev), 1)
    total = ev_ms + ticks + extra
    out[f"{name}_share_events"] = ev_ms / total
    out[f"{name}_share_ticks"] = ticks / total
    out[f"{name}_share_learn_horizon_extra"] = extra / total
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer events and repeats (< 1 min)")
    add_spec_argument(ap)
    args = ap.parse_args(argv)
    if not EVT3.exists():
        raise SystemExit(f"{EVT3} is missing (the shared data directory is needed)")
    overrides = spec_overrides(args.spec)
    repeats = 2 if args.quick else 5
    ev0, w, h = load(EVT3)
    burst = looped(ev0, 600_000 if args.quick else 1_000_000)
    per_event = events_only(burst, w, h, 8, overrides, repeats)
    res = {"burst_events_only_mev_s": per_event}
    res.update(phases("burst", burst, w, h, 8, overrides, repeats, per_event))
    rot, rw, rh = load(ROTDISK)
    if args.quick:
        rot = rot[rot["t"] < 1_000_000]
    # the per-event path does not depend on the scene: the burst's figure splits both
    res.update(phases("rotdisk", rot, rw, rh, 4, overrides, repeats, per_event))
    for k, v in res.items():
        print(f"{k}: {v:.4g}")
    print(json.dumps({k: round(v, 4) for k, v in res.items()}))


if __name__ == "__main__":
    main()
