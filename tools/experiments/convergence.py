"""Convergence of online learning on real event streams (issue 13, *Convergence*).

Usage::

    python -m tools.experiments.convergence [--quick] [--write-docs] [--seeds 0 1 2]
        [--events N] [--streams rotdisk dvxplorer nmnist] [--spec key=value ...]

Each stream (a real recording looped until ``--events`` events, each loop shifted by its
span; or N-MNIST training digits back to back, 20 ms apart) is fed in 10 ms batches through
``Network.step`` with learning on, from a fresh network. Every ``block`` of stream time the
script records, over that block:

Streams: the rotating disk and the DVXplorer sample (``RECORDINGS``), the N-MNIST training
digits, and the short clips of ``CLIPS`` (EVT 2.0, EVT 3.0 burst, pedestrians, two N-CARS;
first seed only): every recording of ``../shared/data`` that is not reserved. Blocks: one
loop of a looped recording (every block then holds the same events, so the curves show
learning, not the scene changing), or a 40th of the N-MNIST stream.

* the published forecast's Poisson log-likelihood per event (``count_mean`` read out at
  each window end, scored on the next window's counts; nats/event);
* the free energy F of the read-outs (mean over the block's read-outs), and its parts per
  layer (``layer_free_energies``): F₁ = Σ [½ π¹ e¹² − ½ ln π¹] over layer 1's active error
  units (the sensory prediction errors), F₂ the same over layer 2's, and the priors
  (sparsity λ Σ μ and ½ π_prior Σ μ_top²); F = F₁ + F₂ + priors;
* the weight change per learning epoch, ‖W¹(end) − W¹(start)‖_F / epochs in the block;
* the distance of the weights to their final value, ‖W¹ − W¹_final‖_F / ‖W¹_final‖_F.

Time to within 5 %: the first events-seen count after which the quantity stays within 5 %
of its final value (the mean of the last three blocks; for the weights, within 5 % of the
final weights). Each setting runs with ``--seeds`` (3 by default); the table gives mean and
range over seeds. Three settings: the default curvature mix γ = ``curv_mix`` (0.25), the
majorize-minimize guarantee γ = 1, and two belief layers (``layers = 2``, default γ), whose
per-layer free energies show whether the second layer settles too.

Output: one line per run, a Markdown table, a PNG (``docs/figures/convergence.png``) and, with
``--write-docs``, the table in docs/results.md between ``convergence`` markers; the last line
is one JSON object. ``--quick``: the rotating disk looped 8 times (3 M events), one seed
(< 1 min).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augury.events import EventBatch
from augury.model.network import (
    Network,
    free_energy_parts,
    prediction_errors,
    traces_at,
)
from augury.model.scoring import poisson_loglik, window_counts
from augury.model.spec import ModelSpec
from augury.model.state import State
from tools.bench.model import looped
from tools.experiments.docs_block import write_block
from tools.spec_args import add_spec_argument, spec_overrides

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DOC = Path(__file__).resolve().parents[2] / "docs"
RECORDINGS = {
    "rotdisk": DATA / "inivation" / "davis240c_rotdisk.aedat",
    "dvxplorer": DATA / "inivation" / "dvxplorer_sample.aedat4",
}
CLIPS = {
    "evt2": DATA / "prophesee" / "evt2_sample.raw",
    "evt3_burst": DATA / "prophesee" / "evt3_sample.raw",
    "pedestrians": DATA / "prophesee" / "pedestrians_evt3_small.raw",
    "ncars_obj": DATA / "prophesee" / "NCARS_obj_004397_td.dat",
    "ncars_sample": DATA / "prophesee" / "sample_ncars.dat",
}
"""The other real recordings that are not reserved: clips of 9–100 ms, looped like the others
but run with the first seed only (a loop of them is one block: 100 to 2,000 blocks)."""
WINDOW_US = 10_000
"""Batch span and scoring window (µs): the default horizon Δ."""
NMNIST_GAP_US = 20_000
TOLERANCE = 0.05
QUICK_EVENTS = 8 * 374_296
"""--quick: eight loops of the rotating disk (374,296 events each)."""
SETTINGS = {"default γ = 0.25": {}, "γ = 1 (majorize-minimize)": {"curv_mix": 1.0},
            "two belief layers": {"layers": 2}}


@dataclass
class Curve:
    """Per block: events seen so far, log-likelihood per event, mean F, weight change per
    epoch, relative distance of W¹ to its final value."""

    events: np.ndarray
    loglik: np.ndarray
    free_energy: np.ndarray
    dw_per_epoch: np.ndarray
    w_distance: np.ndarray
    f_layers: np.ndarray
    """(blocks, 3): mean F₁, F₂ (0 with one layer) and the priors' part per read-out."""


def load(name: str, n_events: int) -> tuple[np.ndarray, int, int, int | None]:
    """Events (t from 0, µs, sorted), geometry and loop span (µs; None for N-MNIST, whose
    digits do not repeat) of a stream of about n_events events."""
    from augury.adapters import open_source

    if name == "nmnist":
        from tools.experiments.nmnist_probe import labels, load_digit

        parts, t0 = [], 0
        for sample, _ in labels("train1K"):
            e = load_digit(sample)
            e["t"] += t0
            t0 = int(e["t"][-1]) + NMNIST_GAP_US
            parts.append(e)
            if sum(p.size for p in parts) >= n_events:
                break
        ev = np.concatenate(parts)
        return looped(ev, n_events), 34, 34, None
    with open_source({**RECORDINGS, **CLIPS}[name]) as src:
        ev = src.read_all().copy()
        w, h = src.geometry.width, src.geometry.height
    ev["t"] -= ev["t"][0]
    return looped(ev, n_events), w, h, int(ev["t"][-1]) + 1


def layer_free_energies(spec: ModelSpec, st: State, t_us: int) -> tuple[float, float, float]:
    """(F₁, F₂, priors) of the state at t_us (nats): ``network.free_energy_parts`` of the
    errors at that time; their sum is ``Readout.free_energy``."""
    return free_energy_parts(spec, st, *prediction_errors(spec, st, traces_at(spec, st, t_us)))


def _entry(bad: np.ndarray, events: np.ndarray) -> float:
    """Events seen at the first block after the last bad one; NaN when that is one of the
    last three blocks (the final value is their mean: entering there shows nothing)."""
    first_ok = int(bad[-1]) + 1 if bad.size else 0
    return float(events[first_ok]) if first_ok < events.size - 3 else float("nan")


def within(values: np.ndarray, final: float, events: np.ndarray) -> float:
    """Events seen when ``values`` enter and stay within TOLERANCE·|final| of final."""
    ok = np.abs(values - final) <= TOLERANCE * max(abs(final), 1e-12)
    return _entry(np.flatnonzero(~ok), events)


def run_curve(ev: np.ndarray, w: int, h: int, spec_over: dict[str, object],
              block_us: int) -> Curve:
    """Feed the stream once with learning on; measure every block of ``block_us`` stream
    time (one loop of a looped recording, so that every block holds the same events)."""
    spec = ModelSpec.from_dict({"width": w, "height": h, "pool": 0, **spec_over})
    net = Network(spec)
    t_end = int(ev["t"][-1]) + 1
    n_win = -(-t_end // WINDOW_US)
    edges = np.searchsorted(ev["t"], np.arange(n_win + 1) * WINDOW_US)
    block_of = ((np.arange(n_win) + 1) * WINDOW_US - 1) // block_us  # block of each window
    rows: list[tuple[float, float, float, float]] = []
    parts: list[np.ndarray] = []
    snapshots: list[np.ndarray] = []
    f_parts = np.zeros(3)
    ll = f_sum = 0.0
    n_ev = n_read = 0
    pred: np.ndarray | None = None
    w_start = net.state.W1.copy()
    seen = 0
    for i in range(n_win):
        part = ev[edges[i]:edges[i + 1]]
        b = EventBatch(part, i * WINDOW_US, (i + 1) * WINDOW_US, i)
        n = window_counts(spec, part)
        if pred is not None:
            ll += poisson_loglik(pred, n)
            n_ev += int(n.sum())
        r = net.step(b)
        pred = r.count_mean
        f_sum += r.free_energy
        f_parts += layer_free_energies(spec, net.state, (i + 1) * WINDOW_US)
        n_read += 1
        seen += part.size
        if i == n_win - 1 or block_of[i + 1] != block_of[i]:
            epochs = max(1, block_us // spec.learn_us)
            dw = float(np.linalg.norm(net.state.W1 - w_start)) / epochs
            rows.append((seen, ll / max(n_ev, 1), f_sum / max(n_read, 1), dw))
            parts.append(f_parts / max(n_read, 1))
            snapshots.append(net.state.W1.copy())
            w_start = net.state.W1.copy()
            f_parts = np.zeros(3)
            ll = f_sum = 0.0
            n_ev = n_read = 0
    if len(rows) > 1 and rows[-1][0] - rows[-2][0] < 0.5 * (rows[-2][0] - (
            rows[-3][0] if len(rows) > 2 else 0)):
        rows, snapshots = rows[:-1], snapshots[:-1]  # a sliver left by window rounding
        parts = parts[:-1]
    a = np.array(rows)
    final = snapshots[-1]
    dist = np.array([np.linalg.norm(s - final) / max(np.linalg.norm(final), 1e-12)
                     for s in snapshots])
    return Curve(a[:, 0], a[:, 1], a[:, 2], a[:, 3], dist, np.array(parts))


def summarise(c: Curve) -> dict[str, float]:
    """Final values and times (events seen) to within 5 % of them."""
    tail = slice(-3, None)
    fin_ll, fin_f = float(c.loglik[tail].mean()), float(c.free_energy[tail].mean())
    return {
        "final_loglik": fin_ll, "first_loglik": float(c.loglik[0]),
        "events_to_5pct_loglik": within(c.loglik, fin_ll, c.events),
        "final_free_energy": fin_f,
        "events_to_5pct_free_energy": within(c.free_energy, fin_f, c.events),
        "dw_first": float(c.dw_per_epoch[0]), "dw_last": float(c.dw_per_epoch[-1]),
        "final_f1": float(c.f_layers[tail, 0].mean()),
        "final_f2": float(c.f_layers[tail, 1].mean()),
        "events_to_5pct_f1": within(c.f_layers[:, 0], float(c.f_layers[tail, 0].mean()),
                                    c.events),
        "events_to_5pct_f2": within(c.f_layers[:, 1], float(c.f_layers[tail, 1].mean()),
                                    c.events) if np.any(c.f_layers[:, 1]) else float("nan"),
        "events_to_5pct_weights": _weights_within(c),
    }


def _weights_within(c: Curve) -> float:
    """Events seen when W¹ enters and stays within 5 % (relative) of its final value."""
    return _entry(np.flatnonzero(c.w_distance > TOLERANCE), c.events)


def table(res: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    """Markdown: per stream and setting, mean [min, max] over seeds."""
    def fmt(vals: list[float], scale: float = 1.0, digits: int = 3) -> str:
        v = np.array(vals) / scale
        if np.all(np.isnan(v)):
            return "not before the end"
        return (f"{np.nanmean(v):.{digits}f} [{np.nanmin(v):.{digits}f}, "
                f"{np.nanmax(v):.{digits}f}]")

    lines = ["| stream | setting | log-lik/event first → final | events to 5 % (log-lik), M "
             "| events to 5 % (F), M | F₁ / F₂ per read-out, final | events to 5 % (F₁ / F₂), M "
             "| events to 5 % (W¹), M | ΔW/epoch first → last |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for stream, by_setting in res.items():
        for setting, runs in by_setting.items():
            g = {k: [r[k] for r in runs] for k in runs[0]}
            two = setting == "two belief layers"
            f2 = f"{np.mean(g['final_f2']):.4g}" if two else "—"
            lines.append(
                f"| {stream} | {setting} | {np.mean(g['first_loglik']):+.3f} → "
                f"{np.mean(g['final_loglik']):+.3f} | {fmt(g['events_to_5pct_loglik'], 1e6, 2)} | "
                f"{fmt(g['events_to_5pct_free_energy'], 1e6, 2)} | "
                f"{np.mean(g['final_f1']):.4g} / "
                f"{f2} | "
                f"{fmt(g['events_to_5pct_f1'], 1e6, 2)} / "
                f"{fmt(g['events_to_5pct_f2'], 1e6, 2) if two else '—'}"
                f" | {fmt(g['events_to_5pct_weights'], 1e6, 2)} | "
                f"{np.mean(g['dw_first']):.2e} → {np.mean(g['dw_last']):.2e} |")
    return "\n".join(lines)


def figure(curves: dict[str, dict[str, list[Curve]]], path: Path) -> None:
    """Per stream: log-likelihood per event, weight distance to final, and the free energy
    per read-out by layer (F₁ solid, F₂ of the two-layer setting dotted), against events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(curves), figsize=(3.1 * len(curves), 8), squeeze=False)
    colours = dict(zip(SETTINGS, ("C0", "C1", "C2"), strict=True))
    for col, (stream, by_setting) in enumerate(curves.items()):
        for setting, cs in by_setting.items():
            for k, c in enumerate(cs):
                lab = setting if k == 0 else None
                kw = {"color": colours[setting], "lw": 1}
                axes[0, col].plot(c.events / 1e6, c.loglik, label=lab, **kw)
                axes[1, col].semilogy(c.events / 1e6, np.maximum(c.w_distance, 1e-6),
                                      label=lab, **kw)
                axes[2, col].plot(c.events / 1e6, c.f_layers[:, 0], label=lab, **kw)
                if np.any(c.f_layers[:, 1]):
                    axes[2, col].plot(c.events / 1e6, c.f_layers[:, 1], ":",
                                      label="F₂, " + setting if k == 0 else None, **kw)
        axes[0, col].set_title(stream, fontsize=9)
        axes[0, col].set_ylabel("forecast log-lik (nats/event)", fontsize=8)
        axes[1, col].set_ylabel("‖W¹ − W¹_final‖ / ‖W¹_final‖", fontsize=8)
        axes[1, col].axhline(TOLERANCE, color="grey", lw=0.5)
        axes[2, col].set_ylabel("free energy per read-out, F₁ (F₂ dotted)", fontsize=8)
        axes[2, col].set_xlabel("events seen (M)")
    axes[0, 0].legend(fontsize=6)
    axes[2, 0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_docs(text: str, command: str) -> None:
    write_block("convergence", "Convergence of online learning", text, command,
                "figures/convergence.png")


def run(*, streams: list[str], seeds: list[int], n_events: int, n_blocks: int,
        overrides: dict[str, object]) -> tuple[dict, dict]:
    res: dict[str, dict[str, list[dict[str, float]]]] = {}
    curves: dict[str, dict[str, list[Curve]]] = {}
    for stream in streams:
        ev, w, h, period = load(stream, n_events)
        block_us = period or -(-(int(ev["t"][-1]) + 1) // n_blocks)
        for setting, extra in SETTINGS.items():
            for seed in (seeds[:1] if stream in CLIPS else seeds):
                t0 = time.time()
                c = run_curve(ev, w, h, {**overrides, **extra, "seed": seed}, block_us)
                s = summarise(c)
                res.setdefault(stream, {}).setdefault(setting, []).append(s)
                curves.setdefault(stream, {}).setdefault(setting, []).append(c)
                print(stream, setting, seed, json.dumps({k: round(v, 4) for k, v in s.items()}),
                      f"({time.time() - t0:.0f} s)", flush=True)
    return res, curves


def headline(res: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for stream, by_setting in res.items():
        for setting, runs in by_setting.items():
            tag = ("gamma1" if "γ = 1" in setting else "layers2" if "two" in setting
                   else "default")
            for key in ("events_to_5pct_loglik", "events_to_5pct_weights", "final_loglik"):
                vals = [r[key] for r in runs]
                out[f"{stream}_{tag}_{key}"] = (None if np.all(np.isnan(vals))  # type: ignore
                                                else round(float(np.nanmean(vals)), 4))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="rotating disk × 8 loops, 1 seed")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--events", type=int, default=None, help="events per stream (default 10 M)")
    ap.add_argument("--streams", nargs="+", default=None,
                    choices=[*RECORDINGS, "nmnist", *CLIPS])
    add_spec_argument(ap)
    a = ap.parse_args(argv)
    streams = a.streams or (["rotdisk"] if a.quick else [*RECORDINGS, "nmnist", *CLIPS])
    seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
    n_events = a.events or (QUICK_EVENTS if a.quick else 10_000_000)
    t0 = time.time()
    res, curves = run(streams=streams, seeds=seeds, n_events=n_events,
                      n_blocks=40, overrides=spec_overrides(a.spec))
    text = table(res)
    print(text)
    if a.write_docs:
        figure(curves, DOC / "figures" / "convergence.png")
        cmd = "python -m tools.experiments.convergence" + (" --quick" if a.quick else "")
        write_docs(text + f"\n\n({len(seeds)} seeds, the clips one; {n_events:,} events per "
                   f"stream; {time.time() - t0:.0f} s)", cmd)
    print(json.dumps(headline(res)))


if __name__ == "__main__":
    main()
