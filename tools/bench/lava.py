"""Lava floating_pt vs numba: steps/s and events/s of layer 1 on the same input, one run.

Usage (in the Python 3.10 venv with the ``lava`` extra, e.g. ``.venv-lava`` of
``make lava-test``)::

    python -m tools.bench.lava [--quick] [--serve-ms MS] [--read extractor|var] [--learn]
        [--spec key=value ...]

Input: the DAVIS240C rotating disk (``davis240c_rotdisk.aedat``), the whole 240×180 sensor
(pool from the sensor size, Lava ``Sparse`` connections), or with ``--quick`` a 32×32 px
crop (x 64–95, y 96–127, pool 4, 4 columns, Dense; the Lava tests' crop). The spec is what
the Lava backend needs (one layer, ``clocked_input``, ``settle = 0``). The numba engine
learns on the first ``--train-ms`` of the recording (10 ms batches), learning is then
frozen, and the next ``--serve-ms`` are replayed in 10 ms batches through:

* numba: ``Network.advance`` (layer 1 and the clocked work: forecast units, rate experts);
* Lava layer 1 alone: ``LavaLayer1.feed`` (Injector in; state read back at the end of each
  batch through Extractors, or with ``--read var`` through ``Var.get``), one chunk a batch;
* the Lava backend as the daemon runs it: ``LavaNetwork`` with an in-process Lava layer 1,
  synced at every clocked tick (learn_us, horizon_us), plus a read-out every batch.

With ``--learn`` numba and the backend keep learning while they serve (the backend learns on
the host and writes the new parameters into Lava every epoch: ``backend_writes``); Lava
layer 1 alone is the same inference run either way.

Reported: lava_steps_s (Lava steps per second of layer 1 alone; a tick is 2·relax_steps
steps), lava_events_s, numba_events_s, numba_ticks_s, numba_over_lava (numba events/s ÷
Lava layer-1 events/s), realtime_factor (stream seconds ÷ wall seconds of Lava layer 1
alone; 1 is real time), backend_events_s, backend_realtime_factor, numba_over_backend,
startup_s (building, compiling and the first chunk of Lava, not in the rates), and
max_abs_dmu (|μ| difference between numba and the Lava backend at the end). Wall times are
single runs on a shared machine. The last output line is one JSON object with these keys.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from augury.events import EventBatch
from augury.model.network import Network
from augury.model.spec import ModelSpec, default_pool
from tools.bench.model import ROTDISK, batches, load
from tools.spec_args import add_spec_argument, spec_overrides

CROP = (64, 96, 32, 32)  # x0, y0, width, height (px): the Lava tests' crop
BATCH_US = 10_000


def crop(ev: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Events inside box (x0, y0, w, h), coordinates relative to its corner."""
    x0, y0, w, h = box
    m = (ev["x"] >= x0) & (ev["x"] < x0 + w) & (ev["y"] >= y0) & (ev["y"] < y0 + h)
    out = ev[m].copy()
    out["x"] -= x0
    out["y"] -= y0
    return out


def trained(spec: ModelSpec, ev: np.ndarray, train_us: int) -> Network:
    """The numba engine after learning on [0, train_us), learning then frozen."""
    net = Network(spec)
    for b in batches(ev[ev["t"] < train_us], BATCH_US):
        if b.t_end_us > train_us:
            break
        net.advance(b)
    net.freeze_learning()
    return net


def served(ev: np.ndarray, t0_us: int, t1_us: int) -> list[EventBatch]:
    """10 ms batches tiling [t0_us, t1_us)."""
    sel = ev[(ev["t"] >= t0_us) & (ev["t"] < t1_us)]
    edges = np.arange(t0_us, t1_us + 1, BATCH_US)
    cuts = np.searchsorted(sel["t"], edges)
    return [EventBatch(sel[cuts[i]:cuts[i + 1]], int(edges[i]), int(edges[i + 1]), i)
            for i in range(len(edges) - 1)]


def copy_of(net: Network) -> Network:
    out = Network(net.spec)
    out.load_state_dict(net.state_dict())
    return out


def run(quick: bool, serve_ms: int, train_ms: int, overrides: dict[str, object],
        extract: bool = True, learn: bool = False) -> dict:
    from augury.lava.backend import LavaNetwork, LocalLayer1
    from augury.lava.layer1 import LavaLayer1

    ev, w, h = load(ROTDISK)
    if quick:
        ev = crop(ev, CROP)
        w, h, pool = CROP[2], CROP[3], 4
    else:
        pool = default_pool(w, h)
    spec = ModelSpec.from_dict({"width": w, "height": h, "pool": pool, "layers": 1,
                                "clocked_input": True, "settle": 0.0, **overrides})
    train_us = train_ms * 1000
    t1 = train_us + serve_ms * 1000
    net = trained(spec, ev, train_us)
    if learn:
        net.resume_learning()
    bs = served(ev, train_us, t1)
    n_ev = sum(b.events.size for b in bs)
    stream_s = serve_ms / 1000
    spt = 2 * spec.relax_steps
    ticks = serve_ms * 1000 // spec.tick_us

    ref = copy_of(net)  # the kernels are compiled (or loaded from numba's cache) by training
    t = time.perf_counter()
    for b in bs:
        ref.advance(b)
    numba_s = time.perf_counter() - t

    t = time.perf_counter()
    layer = LavaLayer1(spec, net.state, chunk_ticks=BATCH_US // spec.tick_us, extract=extract)
    try:
        layer.feed(bs[0].events, bs[0].t_end_us)  # build, compile, first chunk
        startup = time.perf_counter() - t
        ticks0 = layer.ticks_run
        t = time.perf_counter()
        for b in bs[1:]:
            layer.feed(b.events, b.t_end_us)
            layer.inference_arrays()  # what the backend reads back at a sync
        lava_s = time.perf_counter() - t
        lava_ticks = layer.ticks_run - ticks0
    finally:
        layer.close()
    lava_ev = n_ev - bs[0].events.size

    back = LavaNetwork.from_network(net, LocalLayer1(extract=extract))
    try:
        back.advance(bs[0])
        back.readout()
        t = time.perf_counter()
        for b in bs[1:]:
            back.advance(b)
            back.readout()
        back_s = time.perf_counter() - t
        dmu = float(np.abs(back.state.mu1 - ref.state.mu1).max())
        syncs, writes = back.syncs, back.writes
    finally:
        back.close()

    lava_events_s = lava_ev / lava_s
    numba_events_s = n_ev / numba_s
    backend_events_s = lava_ev / back_s
    rest_s = stream_s - (bs[0].t_end_us - bs[0].t_start_us) / 1e6
    return {
        "sensor": f"{w}x{h}", "pool": pool, "read": "extractor" if extract else "var",
        "columns": spec.n1, "neurons": spec.n1 * (spec.d1 + spec.k1), "events": n_ev,
        "serve_ms": serve_ms, "ticks": ticks,
        "lava_steps_s": lava_ticks * spt / lava_s,
        "lava_events_s": lava_events_s,
        "numba_events_s": numba_events_s,
        "numba_ticks_s": ticks / numba_s,
        "numba_over_lava": numba_events_s / lava_events_s,
        "realtime_factor": rest_s / lava_s,
        "backend_events_s": backend_events_s,
        "backend_realtime_factor": rest_s / back_s,
        "numba_over_backend": numba_events_s / backend_events_s,
        "backend_syncs": syncs, "learn": learn, "backend_writes": writes,
        "startup_s": startup,
        "max_abs_dmu": dmu,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="32×32 crop, 300 ms served (under a minute)")
    ap.add_argument("--serve-ms", type=int, default=None,
                    help="stream time replayed through each engine (default 500, quick 300)")
    ap.add_argument("--train-ms", type=int, default=1_500,
                    help="numba learns on the recording's first MS (default 1500)")
    ap.add_argument("--read", choices=("extractor", "var"), default="extractor",
                    help="how the state comes back from Lava (default: extractor)")
    ap.add_argument("--learn", action="store_true",
                    help="numba and the backend learn while serving (the layer alone: same)")
    add_spec_argument(ap)
    args = ap.parse_args(argv)
    if not ROTDISK.exists():
        raise SystemExit(f"{ROTDISK} is missing (the shared data directory is needed)")
    from augury.lava import LavaError, require_lava

    try:
        require_lava()
    except LavaError as exc:
        raise SystemExit(str(exc)) from exc
    serve_ms = args.serve_ms or (300 if args.quick else 500)
    res = run(args.quick, serve_ms, args.train_ms, spec_overrides(args.spec),
              extract=args.read == "extractor", learn=args.learn)
    for k, v in res.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
