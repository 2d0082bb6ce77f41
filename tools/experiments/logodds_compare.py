"""Log-odds belief units (``augury.model.logodds``) vs the Gaussian network on the same streams.

Usage::

    python -m tools.experiments.logodds_compare [--quick] [--write-docs] [--streams ...]

Streams (from ``model_loglik``): synthetic moving bars, the DAVIS240C rotating disk and the
DVXplorer recording. Both models see the same events in Δ-long batches (learning on, same
ModelSpec geometry: pool, column, k1); their Δ-ahead rate maps are scored with
``ScoreBoard`` exactly as in ``model_loglik`` (first third not scored), as gains in nats per
scored event over persistence and over the EMA of counts. Also scored: the Gaussian belief
units' own reconstruction x̂/τ (the part of the Gaussian network comparable to the log-odds
layer, which has no forecast units) and the untrained, frozen log-odds layer. What each
represents, over columns that received events in a window: the share of units "on"
(log-odds: s = 1[u > 0]; Gaussian: μ > 0) and the mean p = σ(u). Throughput: each model
fed the whole stream in one call, learning on, best of 3, events/s (after compilation).
Prints one line per stream and a JSON object last.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from augury.events import EventBatch
from augury.model.logodds import C_UP, LogOddsLayer, LogOddsSpec
from augury.model.network import Network, column_to_map, map_to_column
from augury.model.scoring import ScoreBoard, window_counts
from augury.model.spec import ModelSpec
from tools.experiments.model_loglik import load_spec

STREAM_NAMES = ("bars", "rotdisk", "dvxplorer")
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results.md"


def _active_columns(spec: ModelSpec, events: np.ndarray) -> np.ndarray:
    """Columns that received at least one event in this window, (n1,) bool."""
    return map_to_column(spec, window_counts(spec, events)).sum(1) > 0


def evaluate(spec: ModelSpec, ev: np.ndarray, lo: LogOddsSpec, t_end: int | None = None
             ) -> dict[str, float]:
    """Run both models over one stream in Δ windows; gains (nats/event) and sparsities."""
    dt = spec.horizon_us
    t1 = (t_end or int(ev["t"][-1])) // dt * dt
    net, layer, frozen = Network(spec), LogOddsLayer(spec, lo), LogOddsLayer(spec, lo)
    frozen.learning = False
    boards = {k: ScoreBoard(spec, dt, warmup_us=t1 // 3)
              for k in ("gauss", "gauss_recon", "logodds", "logodds_untrained")}
    edges = np.arange(0, t1 + 1, dt)
    cuts = np.searchsorted(ev["t"], edges)
    tau_s = spec.tau_us * 1e-6
    on_lo, on_g, mean_p, ncol = 0.0, 0.0, 0.0, 0
    for i in range(len(edges) - 1):
        e = ev[cuts[i]:cuts[i + 1]]
        b = EventBatch(e, int(edges[i]), int(edges[i + 1]), i)
        r = net.step(b)
        layer.advance(e, b.t_start_us, b.t_end_us)
        frozen.advance(e, b.t_start_us, b.t_end_us)
        boards["gauss"].observe(b, r.rate_hz)
        boards["gauss_recon"].observe(b, column_to_map(spec, net.state.xhat1) / tau_s)
        boards["logodds"].observe(b, layer.rate_map(b.t_end_us))
        boards["logodds_untrained"].observe(b, frozen.rate_map(b.t_end_us))
        if b.t_start_us >= t1 // 3:
            act = _active_columns(spec, e)
            if act.any():
                u = layer.state.u[act]  # as of each column's last event (≤ Δ ago)
                on_lo += float(np.sum(u > 0))
                mean_p += float(np.sum(1.0 / (1.0 + np.exp(-u))))
                on_g += float(np.sum(net.state.mu1[act] > 0))
                ncol += int(act.sum())
    out: dict[str, float] = {}
    for k, bd in boards.items():
        pe = bd.per_event()
        out[f"{k}_vs_persistence"] = pe["gain_vs_persistence"]
        out[f"{k}_vs_ema"] = pe["gain_vs_ema"]
    out["events_scored"] = boards["gauss"].per_event()["events"]
    units = max(ncol, 1) * spec.k1
    out["logodds_on_share"] = on_lo / units
    out["logodds_mean_p"] = mean_p / units
    out["gauss_on_share"] = on_g / units
    out["logodds_spikes_per_event"] = float(layer.state.counters[C_UP]) / max(ev.size, 1)
    return out


def throughput(spec: ModelSpec, ev: np.ndarray, lo: LogOddsSpec, reps: int = 3
               ) -> dict[str, float]:
    """Events/s of each model's step over the whole stream in one call (learning on)."""
    t_end = int(ev["t"][-1]) + 1
    best = {"gauss": np.inf, "logodds": np.inf}
    for _ in range(reps):
        net, layer = Network(spec), LogOddsLayer(spec, lo)
        t0 = time.perf_counter()
        net.advance(EventBatch(ev, 0, t_end, 0))
        best["gauss"] = min(best["gauss"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        layer.advance(ev, 0, t_end)
        best["logodds"] = min(best["logodds"], time.perf_counter() - t0)
    return {"gauss_ev_s": ev.size / best["gauss"], "logodds_ev_s": ev.size / best["logodds"],
            "speed_ratio": best["gauss"] / best["logodds"]}


def write_results(results: dict[str, dict[str, float]], command: str) -> None:
    """Replace the block between the logodds markers in docs/results.md with the tables."""
    begin, end = "<!-- logodds:begin -->", "<!-- logodds:end -->"
    rows = "\n".join(
        f"| {n} | {r['logodds_vs_persistence']:+.3f} | {r['logodds_vs_ema']:+.3f} | "
        f"{r['logodds_untrained_vs_ema']:+.3f} | {r['gauss_vs_persistence']:+.3f} | "
        f"{r['gauss_vs_ema']:+.3f} | {r['gauss_recon_vs_ema']:+.3f} | "
        f"{int(r['events_scored']):,} |" for n, r in results.items())
    rows2 = "\n".join(
        f"| {n} | {r['logodds_ev_s'] / 1e6:.2f} | {r['gauss_ev_s'] / 1e6:.2f} | "
        f"{r['speed_ratio']:.2f} | {100 * r['logodds_on_share']:.1f} % | "
        f"{r['logodds_mean_p']:.3f} | {r['logodds_spikes_per_event']:.3f} | "
        f"{100 * r['gauss_on_share']:.1f} % |" for n, r in results.items())
    block = (
        f"{begin}\nCommand: `{command}`\n\n"
        "| stream | log-odds vs persistence | log-odds vs EMA | untrained log-odds vs EMA "
        "| Gaussian net vs persistence | Gaussian net vs EMA | Gaussian x̂/τ vs EMA "
        "| events scored |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
        f"{rows}\n\n"
        "| stream | log-odds Mev/s | Gaussian Mev/s | ratio log-odds/Gaussian "
        "| log-odds units on (u > 0) | mean σ(u) | log-odds up-crossings per event "
        "| Gaussian units on (μ > 0) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
        f"{rows2}\n\n"
        "Gains in nats per scored event (next Δ = 10 ms window, Poisson log-likelihood, "
        "`ScoreBoard`); windows in the first third of each stream are not scored. Shares of "
        "units on are over the columns that received events in a scored window. Throughput: "
        "whole stream in one call, learning on, best of 3, same process.\n"
        f"{end}")
    doc = RESULTS.read_text()
    if begin in doc and end in doc:
        head, _, rest = doc.partition(begin)
        doc = head + block + rest.partition(end)[2]
    else:
        doc = (doc.rstrip() + "\n\n## Log-odds belief units vs Gaussian belief units\n\n"
               + block + "\n")
    RESULTS.write_text(doc)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", nargs="*", default=None, choices=STREAM_NAMES)
    ap.add_argument("--quick", action="store_true",
                    help="0.6 s of bars and 1 s of the rotating disk (< 1 min)")
    ap.add_argument("--write-docs", action="store_true",
                    help="write the tables into docs/results.md")
    args = ap.parse_args(argv)
    streams = args.streams or (["bars", "rotdisk"] if args.quick else list(STREAM_NAMES))
    lo = LogOddsSpec()
    results = {}
    for name in streams:
        ev, spec = load_spec(name)
        if args.quick:
            ev = ev[ev["t"] < (600_000 if name == "bars" else 1_000_000)]
        res = evaluate(spec, ev, lo)
        res.update(throughput(spec, ev, lo))
        results[name] = res
        print(name, {k: round(v, 4) for k, v in res.items()}, flush=True)
    if args.write_docs:
        cmd = "python -m tools.experiments.logodds_compare" + (" --quick" if args.quick else "")
        write_results(results, cmd + " --write-docs")
    print(json.dumps({k: {a: round(b, 4) for a, b in v.items()} for k, v in results.items()}))


if __name__ == "__main__":
    main()
