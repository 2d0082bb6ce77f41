"""What one event costs: spikes, synaptic operations and neuron updates per input event, and an
energy-per-event estimate for a Loihi-class chip (issue 13, *Cost*).

Usage::

    python -m tools.experiments.cost [--quick] [--write-docs] [--spec key=value ...]

The numba engine counts, per step, the up spikes (error units' graded spikes, bottom-up), the
down spikes (belief units' spikes, top-down) and the synaptic operations they cause
(``Readout.synops``: one per spike and target synapse). Run in 1 ms batches (one tick each),
every real recording of ``../shared/data`` that is not reserved gives, per input event:

* spikes up, spikes down, synaptic operations;
* neuron updates, two ways: **all** layer-1 neurons (error and belief units of every column,
  n1 · (D1 + K1)) updated at every Loihi time step (4 per 1 ms tick: two relaxation steps,
  each Dense hop adding a step of delay, ``../shared/LAVA.md``), which is what a clocked core
  does; or **active** columns only (the numba engine's event-driven polling: the columns with
  input or settling beliefs, sampled at every tick), which is what an event-driven mapping
  would pay.

Energy per event from the only published per-operation figures for a Loihi chip: Davies et al.,
"Loihi: a neuromorphic manycore processor with on-chip learning", IEEE Micro 38(1), 2018,
Table 2 — **pre-silicon** (SDF/SPICE simulation, 0.75 V, 14 nm Loihi 1): 23.6 pJ per synaptic
spike operation (a minimum), 1.7 pJ per spike within a tile (plus 3.0–4.0 pJ per tile hop, not
counted: it needs a placement), 81 pJ per active and 52 pJ per inactive neuron update. Intel
has published no such table for Loihi 2, so the estimate is Loihi-1 pricing of Augury's counts,
not a Loihi 2 measurement. Learning runs on the host (``../shared/LAVA.md``) and is not priced.

Output: a Markdown table, with ``--write-docs`` into docs/results.md between ``cost`` markers,
and one JSON object last. ``--quick``: the rotating disk, first 0.5 s (< 1 min).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from augury.events import EventBatch
from augury.model.network import Network
from augury.model.spec import ModelSpec
from tools.experiments.docs_block import write_block
from tools.experiments.forecast_eval import load_stream
from tools.spec_args import add_spec_argument, spec_overrides

STREAMS = ("rotdisk", "dvxplorer", "evt2", "ncars_obj", "nmnist10")
E_SYNOP_J = 23.6e-12
"""Energy per synaptic spike operation, J (Davies et al. 2018, Table 2, minimum, pre-silicon)."""
E_SPIKE_J = 1.7e-12
"""Energy per spike within a tile, J (same table)."""
E_NEURON_ACTIVE_J = 81e-12
E_NEURON_INACTIVE_J = 52e-12
"""Energy per neuron update, active / inactive, J (same table)."""
STEPS_PER_TICK = 4
"""Loihi time steps per 1 ms tick of the network (../shared/LAVA.md, mapping table)."""


def count(name: str, overrides: dict[str, object], duration_us: int | None,
          seed: int = 0) -> dict[str, float]:
    """Per-event counts and energies of one stream run in 1 ms batches."""
    ev, w, h = load_stream(name, duration_us)
    spec = ModelSpec.from_dict({"width": w, "height": h, "pool": 0, **overrides, "seed": seed})
    net = Network(spec)
    tick = spec.tick_us
    nb = -(-(int(ev["t"][-1]) + 1) // tick)
    cuts = np.searchsorted(ev["t"], np.arange(nb + 1, dtype=np.int64) * tick)
    up = down = synops = 0
    active = 0.0
    for i in range(nb):
        r = net.step(EventBatch(ev[cuts[i]:cuts[i + 1]], i * tick, (i + 1) * tick, i))
        up += r.spikes_up
        down += r.spikes_down
        synops += r.synops
        active += float(net.state.clock[3])
    n = max(int(ev.size), 1)
    per_col = spec.d1 + spec.k1
    steps = nb * STEPS_PER_TICK
    upd_all = spec.n1 * per_col * steps
    upd_active = active * per_col * STEPS_PER_TICK
    e_ops = synops * E_SYNOP_J + (up + down) * E_SPIKE_J
    e_active = e_ops + upd_active * E_NEURON_ACTIVE_J
    e_all = e_ops + upd_active * E_NEURON_ACTIVE_J + (upd_all - upd_active) * E_NEURON_INACTIVE_J
    seconds = nb * tick * 1e-6
    return {"events": float(ev.size), "seconds": seconds, "events_per_s": ev.size / seconds,
            "columns": float(spec.n1), "neurons": float(spec.n1 * per_col),
            "spikes_up": up / n, "spikes_down": down / n, "synops": synops / n,
            "active_columns": active / nb, "updates_active": upd_active / n,
            "updates_all": upd_all / n, "nj_ops": e_ops / n * 1e9,
            "nj_active": e_active / n * 1e9, "nj_all": e_all / n * 1e9,
            "mw_all": e_all / seconds * 1e3}


def table(res: dict[str, dict[str, float]]) -> str:
    lines = ["| stream | events/s | neurons (L1) | spikes up / down per event | synaptic ops "
             "per event | active columns (mean) | neuron updates per event (active / all) | "
             "energy per event, nJ: synops + spikes / + active updates / + every neuron | "
             "power, all neurons clocked (mW) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s, r in res.items():
        lines.append(f"| {s} | {r['events_per_s']:,.0f} | {r['neurons']:,.0f} | "
                     f"{r['spikes_up']:.2f} / {r['spikes_down']:.2f} | {r['synops']:.1f} | "
                     f"{r['active_columns']:.1f} of {r['columns']:.0f} | "
                     f"{r['updates_active']:.0f} / {r['updates_all']:.0f} | "
                     f"{r['nj_ops']:.2f} / {r['nj_active']:.1f} / {r['nj_all']:.1f} | "
                     f"{r['mw_all']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="rotating disk, first 0.5 s")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="network seeds (default 0 1 2; --quick 0): the table gives the mean, "
                         "and the largest relative spread of the per-event figures")
    add_spec_argument(ap)
    a = ap.parse_args(argv)
    over = spec_overrides(a.spec)
    t0 = time.time()
    streams = ["rotdisk"] if a.quick else list(STREAMS)
    seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
    res: dict[str, dict[str, float]] = {}
    spread = 0.0
    for s in streams:
        runs = [count(s, over, 500_000 if a.quick else None, sd) for sd in seeds]
        res[s] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        for k in ("synops", "nj_ops", "nj_active", "nj_all"):
            vals = np.array([r[k] for r in runs])
            spread = max(spread, float((vals.max() - vals.min()) / max(vals.mean(), 1e-12)))
    text = table(res) + (f"\n\n(default spec, learning on; mean of {len(seeds)} seed(s), the "
                         f"per-event figures within {spread:.1%} of each other across seeds; "
                         f"{time.time() - t0:.0f} s; energies priced with Loihi 1 pre-silicon "
                         "figures, see the script's docstring)")
    print(text)
    if a.write_docs:
        write_block("cost", "What one event costs", text,
                    "python -m tools.experiments.cost" + (" --quick" if a.quick else ""))
    head = {f"{s}_{k}": round(v, 4) for s, r in res.items()
            for k, v in r.items() if k in ("synops", "spikes_up", "spikes_down", "nj_ops",
                                           "nj_active", "nj_all", "updates_active")}
    print(json.dumps(head))


if __name__ == "__main__":
    main()
