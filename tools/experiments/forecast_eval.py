"""Forecast evaluation against the strongest simple baselines, with confidence intervals.

Usage::

    python -m tools.experiments.forecast_eval [--quick] [--write-docs] [--seeds 0 1 2]
        [--streams NAME ...] [--no-ablations] [--spec key=value ...]

What is scored: the count forecast the daemon publishes (``Readout.count_mean``, the mean of
the ``prediction`` topic's count distribution) for the next horizon window Δ, per pooled
cell and polarity, against the counts that arrive, by the Poisson log-likelihood with the
same floor m₀ = 0.01 for every predictor (``scoring.poisson_loglik``); nats per scored
event. Streams are replayed in Δ-long batches through ``Network.step`` with the spec the
daemon would use (pooling from the sensor size, ``spec.default_pool``). Only whole windows
are replayed and scored: window k = [kΔ, (k + 1)Δ) counts if the stream's events reach to
within 1 % of its end ((k + 1)Δ ≤ t_last + 1 + Δ/100, t from the first event), so that a
recording ending inside a window does not add a half-empty window that every predictor
over-forecasts. The first third of each stream is a warm-up: windows starting before
(stream length)/3 are not scored.

Baselines (all causal and online, updated after each scored window):

* persistence: the last window's counts;
* EMA: the exponential moving average of the counts, m ← (1 − β) m + β n, β = 1 − e^{−Δ/τ},
  bias-corrected at the start: after windows n_1 … n_k, m = Σ_j w_j n_j / Σ_j w_j with
  w_j = (1 − β)^{k−j} (the running mean while k ≪ τ/Δ; starting at the first window's counts
  instead would leave a long-τ EMA dominated by that one window for τ/Δ windows, which cost
  0.05 nats/event on the still scene and 0.12 on the bars), for τ ∈ {5, 10, 20, 50, 100,
  200, 500, 1000, 2000} ms; the **best τ in hindsight** per stream (highest total
  log-likelihood over the scored windows) is the baseline, so it is tuned on the very
  windows it is scored on;
* RLS 3×3: a linear predictor of each cell's next count from the 3 × 3 neighbourhood of the
  last window's counts (same polarity, zero outside the grid) and a bias, weights shared by
  all cells (one per polarity, 10 weights), fitted by recursive least squares over all cells
  with forgetting 0.999 per window (information matrix started at 0.01 I, i.e. P = 100 I),
  clipped at 0: per polarity, P⁻¹ ← 0.999 P⁻¹ + XᵀX, b ← 0.999 b + Xᵀy, w = (P⁻¹)⁻¹ b, X the
  (cells × 10) features of the previous window, y this window's counts.

Statistics: the model's per-window log-likelihood is averaged over network seeds
(``--seeds``, default 0 1 2); gains (model − baseline, nats per scored event) have 95 %
confidence intervals from a paired moving-block bootstrap over windows (block length max(1,
windows // 20), 2000 resamples, fixed RNG); no CI is given for a stream with fewer than
``MIN_WINDOWS_CI`` (10) scored windows, where a bootstrap over windows means nothing. The
RLS baseline's own gain over persistence is reported too (a check that the baseline is a
real one). Coverage: the randomised PIT of every cell's count under the published
distribution read as a negative binomial (``augury.model.countdist``), share inside the
central 90 % (0.90 when calibrated), over all cells (and, as a diagnostic, over cells whose
forecast mean is ≥ 1: selected by the forecast, not by the outcome; selecting by the
outcome, e.g. m + n ≥ 1, drops the n = 0 outcomes of the low-mean cells and reads 0.67 for a
calibrated forecast of sparse counts, ``tests/test_forecast_eval.py``). Ablations (one seed
each, gains vs the best EMA and vs the full model; its gain over another baseline is about
the model's plus its change vs the full model, seed 0): no hierarchy term in the forecast
unit and the shared forecaster (``forecast_hier=false``), a second belief layer
(``layers=2``; the default is one), no lateral weights in the forecast unit
(``forecast_lateral=false``), no averaging experts (``mix_taus_us=[]``), no shared linear
forecaster (``mix_shared=false``), the shared forecaster fitted by plain least squares
instead of its Poisson maximum-likelihood fit (``shared_fit="squares"``, the default before
session 6), and the forecast unit alone (both off: what was published before the mixture).

The real recordings are every one in ``../shared/data`` that is not reserved, plus 10
N-MNIST training digits back to back; ``evt3_sample.raw`` (8.8 ms) is shorter than one
window and is listed as too short. Synthetic: a static scene with background activity and
hot pixels, and moving bars. Prints one line per stream, a Markdown table, and a JSON object
last.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from augury.events import EventBatch
from augury.model.countdist import coverage90, randomized_pit
from augury.model.network import Network
from augury.model.scoring import FLOOR_COUNT, log_factorial, window_counts
from augury.model.spec import ModelSpec
from tools.spec_args import add_spec_argument, spec_overrides

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
EMA_TAUS_MS = (5, 10, 20, 50, 100, 200, 500, 1000, 2000)
REAL = {
    "rotdisk": DATA / "inivation" / "davis240c_rotdisk.aedat",
    "dvxplorer": DATA / "inivation" / "dvxplorer_sample.aedat4",
    "evt2": DATA / "prophesee" / "evt2_sample.raw",
    "pedestrians": DATA / "prophesee" / "pedestrians_evt3_small.raw",
    "ncars_obj": DATA / "prophesee" / "NCARS_obj_004397_td.dat",
    "ncars_sample": DATA / "prophesee" / "sample_ncars.dat",
    "nmnist10": DATA / "nmnist" / "samples",
    "evt3_burst": DATA / "prophesee" / "evt3_sample.raw",
}
HELD_OUT = {
    "sparklers (held out)": DATA / "prophesee" / "sparklers_evt2_v1.raw",
    "translboxes (held out)": DATA / "inivation" / "davis240c_translboxes.aedat",
}
"""Reserved by ../shared/data/README.md to check that results generalise: evaluated with
``--held-out`` once the defaults are fixed, never used to choose anything."""
SYNTHETIC = ("static", "bars")
ABLATIONS = {
    "no hierarchy term": {"forecast_hier": False},
    "two belief layers": {"layers": 2},
    "no lateral weights R in the forecast unit": {"forecast_lateral": False},
    "no averaging experts": {"mix_taus_us": []},
    "no shared linear forecaster": {"mix_shared": False},
    "shared forecaster fitted by least squares (before session 6)": {"shared_fit": "squares"},
    "forecast unit alone (the forecast published before)": {"mix_taus_us": [],
                                                             "mix_shared": False},
}
QUICK = {"rotdisk": 1_500_000, "dvxplorer": None, "static": 1_500_000}
MIN_WINDOWS_CI = 10
"""Fewest scored windows for which a bootstrap CI is reported."""
END_TOLERANCE = 0.01
"""A window is whole if the stream's events reach to within this fraction of Δ of its end."""
DOC = Path(__file__).resolve().parents[2] / "docs"


def load_stream(name: str, duration_us: int | None = None) -> tuple[np.ndarray, int, int]:
    """Events (t from 0, µs) and sensor geometry of a named stream, cut at duration_us."""
    from augury.adapters import open_source

    if name in SYNTHETIC:
        from augury.adapters.synthetic import SceneConfig, render_scene

        cfg = (SceneConfig(kind="bars", width=128, height=96, n_objects=0,
                           duration_us=3_000_000, seed=5, noise_rate_hz=2.0, hot_pixels=20,
                           hot_rate_hz=100.0) if name == "static" else
               SceneConfig(kind="bars", width=128, height=96, duration_us=3_000_000, seed=1,
                           noise_rate_hz=1.0, speed_px_s=300.0))
        ev, _ = render_scene(cfg)
        ev, w, h = ev.copy(), 128, 96
    elif name == "nmnist10":
        ids = [int(line.split()[0]) for line in (DATA / "nmnist" / "train1K.txt").read_text()
               .splitlines() if line.strip() and not line.startswith("#")][:10]
        parts, t0 = [], 0
        for sid in ids:
            with open_source(REAL[name] / f"{sid}.bs2") as src:
                e = src.read_all().copy()
                w, h = src.geometry.width, src.geometry.height
            e["t"] += t0 - e["t"][0]
            t0 = int(e["t"][-1]) + 1
            parts.append(e)
        ev = np.concatenate(parts)
    else:
        with open_source({**REAL, **HELD_OUT}[name]) as src:
            ev = src.read_all().copy()
            w, h = src.geometry.width, src.geometry.height
    ev["t"] -= ev["t"][0]
    if duration_us is not None:
        ev = ev[ev["t"] < duration_us]
    return ev, w, h


@dataclass
class Trace:
    """Per scored window: log-likelihoods (nats) of each predictor and the event count."""

    model: list[float] = field(default_factory=list)
    persistence: list[float] = field(default_factory=list)
    rls: list[float] = field(default_factory=list)
    ema: dict[int, list[float]] = field(default_factory=lambda: {t: [] for t in EMA_TAUS_MS})
    events: list[int] = field(default_factory=list)
    pit_all: list[np.ndarray] = field(default_factory=list)
    pit_busy: list[np.ndarray] = field(default_factory=list)
    pred_total: float = 0.0


def loglik_map(m: np.ndarray, n: np.ndarray, lf: np.ndarray) -> float:
    """Σ [n ln(m + m₀) − (m + m₀) − ln n!] (nats); lf = ln n! of n."""
    mm = np.asarray(m, np.float64) + FLOOR_COUNT
    return float(np.sum(n * np.log(mm) - mm - lf))


def neighbourhood(n: np.ndarray) -> np.ndarray:
    """(Hp·Wp, 2, 10) RLS features: the 3 × 3 neighbourhood of each cell's count (same
    polarity, 0 outside the grid, row-major) and a bias 1."""
    hp, wp, _ = n.shape
    pad = np.pad(n.astype(np.float64), ((1, 1), (1, 1), (0, 0)))
    feats = [pad[1 + dy:1 + dy + hp, 1 + dx:1 + dx + wp] for dy in (-1, 0, 1)
             for dx in (-1, 0, 1)]
    x = np.stack(feats + [np.ones_like(n, np.float64)], axis=-1)
    return x.reshape(hp * wp, 2, 10)


class Rls:
    """Shared-weight 3 × 3 linear predictor per polarity, recursive least squares."""

    def __init__(self, forget: float = 0.999, prior: float = 0.01) -> None:
        self.forget = forget
        self.info = np.repeat((prior * np.eye(10))[None], 2, axis=0)
        self.xty = np.zeros((2, 10))
        self.w = np.zeros((2, 10))

    def predict(self, n_last: np.ndarray) -> np.ndarray:
        x = neighbourhood(n_last)
        pred = np.einsum("cpf,pf->cp", x, self.w)
        return np.maximum(pred, 0.0).reshape(n_last.shape)

    def update(self, n_last: np.ndarray, n_new: np.ndarray) -> None:
        x = neighbourhood(n_last)
        y = n_new.reshape(-1, 2).astype(np.float64)
        for p in range(2):
            self.info[p] = self.forget * self.info[p] + x[:, p].T @ x[:, p]
            self.xty[p] = self.forget * self.xty[p] + x[:, p].T @ y[:, p]
            self.w[p] = np.linalg.solve(self.info[p], self.xty[p])


def ema_step(state: tuple[np.ndarray, float] | None, n: np.ndarray,
             beta: float) -> tuple[np.ndarray, float]:
    """One window of the bias-corrected EMA of counts: state (Σ_j w_j n_j, Σ_j w_j) with
    w_j = (1 − β)^{age of window j}; the forecast is ``ema_mean(state)``. n: counts of any
    shape."""
    if state is None:
        return n.astype(np.float64), 1.0
    return (1.0 - beta) * state[0] + n, (1.0 - beta) * state[1] + 1.0


def ema_mean(state: tuple[np.ndarray, float]) -> np.ndarray:
    """The EMA's forecast (expected count), same shape as the counts."""
    return state[0] / state[1]


def whole_windows(ev: np.ndarray, d: int) -> int:
    """Number of whole Δ = d µs windows in a stream (t from 0): those ending at most
    ``END_TOLERANCE``·Δ after the last event."""
    if not ev.size:
        return 0
    return int((int(ev["t"][-1]) + 1 + END_TOLERANCE * d) // d)


def warmup_windows(nwin: int) -> int:
    """Windows not scored: those starting before a third of the stream, ceil(nwin / 3)."""
    return -(-nwin // 3)


def replay(ev: np.ndarray, spec: ModelSpec, *, baselines: bool, seed_rng: int = 0) -> Trace:
    """Run the network over the stream's whole Δ windows and score every predictor."""
    net = Network(spec)
    d = spec.horizon_us
    nwin = whole_windows(ev, d)
    edges = np.arange(nwin + 1, dtype=np.int64) * d
    cuts = np.searchsorted(ev["t"], edges)
    warm = warmup_windows(nwin)
    rng = np.random.default_rng(seed_rng)
    tr = Trace()
    emas: dict[int, tuple[np.ndarray, float]] = {}
    rls = Rls()
    last = pred = pvar = None
    for i in range(nwin):
        b = EventBatch(ev[cuts[i]:cuts[i + 1]], int(edges[i]), int(edges[i + 1]), i)
        n = window_counts(spec, b.events)
        if pred is not None and i >= warm:
            lf = log_factorial(n)
            tr.model.append(loglik_map(pred, n, lf))
            tr.events.append(int(n.sum()))
            tr.pred_total += float(pred.sum())
            u = randomized_pit(n, pred, pvar, rng)
            tr.pit_all.append(u.ravel())
            tr.pit_busy.append(u[pred >= 1.0])
            if baselines:
                tr.persistence.append(loglik_map(last, n, lf))
                tr.rls.append(loglik_map(rls.predict(last), n, lf))
                for tau in EMA_TAUS_MS:
                    tr.ema[tau].append(loglik_map(ema_mean(emas[tau]), n, lf))
        if baselines:
            if last is not None:
                rls.update(last, n)
            for tau in EMA_TAUS_MS:
                beta = 1.0 - math.exp(-d / (tau * 1000.0))
                emas[tau] = ema_step(emas.get(tau), n, beta)
        last = n
        r = net.step(b)
        pred = r.count_mean.astype(np.float64)
        pvar = r.count_var.astype(np.float64)
    return tr


def block_bootstrap(diff: np.ndarray, events: np.ndarray, *, n_boot: int = 2000,
                    seed: int = 0) -> tuple[float, float]:
    """95 % CI of Σ diff / Σ events by a moving-block bootstrap over windows (paired: diff is
    model − baseline per window). Block length max(1, len // 20); (nan, nan) below
    ``MIN_WINDOWS_CI`` windows."""
    n = diff.size
    if n < MIN_WINDOWS_CI:
        return (float("nan"), float("nan"))
    blk = max(1, n // 20)
    starts_max = n - blk + 1
    k = -(-n // blk)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, starts_max, size=(n_boot, k))
    idx = (starts[:, :, None] + np.arange(blk)[None, None, :]).reshape(n_boot, -1)[:, :n]
    stats = diff[idx].sum(axis=1) / np.maximum(events[idx].sum(axis=1), 1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def gain(model: np.ndarray, base: np.ndarray, events: np.ndarray) -> dict[str, float]:
    """Gain per event with its bootstrap CI."""
    diff = model - base
    lo, hi = block_bootstrap(diff, events)
    return {"gain": float(diff.sum() / max(events.sum(), 1)), "lo": lo, "hi": hi}


def evaluate_stream(name: str, *, seeds: list[int], overrides: dict[str, object],
                    duration_us: int | None, ablations: bool) -> dict[str, object]:
    """Every figure of one stream (see the module docstring)."""
    ev, w, h = load_stream(name, duration_us)
    spec0 = ModelSpec.from_dict({"width": w, "height": h, "pool": 0, **overrides})
    span_us = int(ev["t"][-1]) + 1 if ev.size else 0
    out: dict[str, object] = {"stream": name, "geometry": f"{w}x{h}", "pool": spec0.pool,
                              "span_s": span_us / 1e6, "events": int(ev.size)}
    if whole_windows(ev, spec0.horizon_us) < 3:
        out["too_short"] = True
        return out
    traces = [replay(ev, ModelSpec.from_dict({**spec0.to_dict(), "seed": s}),
                     baselines=(i == 0), seed_rng=s) for i, s in enumerate(seeds)]
    base = traces[0]
    events = np.array(base.events, np.float64)
    model = np.mean([t.model for t in traces], axis=0)
    ema_tot = {tau: float(np.sum(base.ema[tau])) for tau in EMA_TAUS_MS}
    best = max(EMA_TAUS_MS, key=lambda tau: ema_tot[tau])
    out.update({
        "windows": len(base.events), "events_scored": int(events.sum()),
        "best_ema_tau_ms": best,
        "vs_persistence": gain(model, np.array(base.persistence), events),
        "vs_best_ema": gain(model, np.array(base.ema[best]), events),
        "vs_rls": gain(model, np.array(base.rls), events),
        "rls_vs_persistence": gain(np.array(base.rls), np.array(base.persistence), events),
        "coverage90": float(np.mean([coverage90(np.concatenate(t.pit_all)) for t in traces])),
        "coverage90_busy": float(np.mean([coverage90(np.concatenate(t.pit_busy))
                                          for t in traces])),
        "pred_over_actual": float(np.mean([t.pred_total for t in traces]) /
                                  max(events.sum(), 1)),
        "seeds": len(seeds),
    })
    if ablations:
        abl = {}
        for label, extra in ABLATIONS.items():
            t = replay(ev, ModelSpec.from_dict({**spec0.to_dict(), **extra, "seed": seeds[0]}),
                       baselines=False, seed_rng=seeds[0])
            m1 = np.array(traces[0].model)
            abl[label] = {"vs_best_ema": gain(np.array(t.model), np.array(base.ema[best]),
                                              events),
                          "vs_full": gain(np.array(t.model), m1, events)}
        out["ablations"] = abl
    return out


def _ci(g: dict[str, float]) -> str:
    if math.isnan(g["lo"]):
        return f"{g['gain']:+.3f} (no CI)"
    return f"{g['gain']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}]"


def _num(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.3f}"


def table(results: list[dict[str, object]]) -> str:
    """The Markdown tables of a run."""
    rows = ["| stream | sensor, pool | windows | events scored | vs persistence "
            "| vs best EMA (τ) | vs RLS 3×3 | RLS vs persistence "
            "| 90 % coverage (all / m ≥ 1) | predicted/actual |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    abl_rows = ["| stream | ablation | vs best EMA | change vs full model |",
                "|---|---|---:|---:|"]
    for r in results:
        if r.get("too_short"):
            rows.append(f"| {r['stream']} | {r['geometry']}, {r['pool']} | — | — | too short "
                        f"({r['span_s'] * 1e3:.1f} ms < 3 windows) | | | | | |")
            continue
        rows.append(
            f"| {r['stream']} | {r['geometry']}, {r['pool']} | {r['windows']} | "
            f"{r['events_scored']:,} | {_ci(r['vs_persistence'])} | "
            f"{_ci(r['vs_best_ema'])} ({r['best_ema_tau_ms']} ms) | {_ci(r['vs_rls'])} | "
            f"{_ci(r['rls_vs_persistence'])} | "
            f"{_num(r['coverage90'])} / {_num(r['coverage90_busy'])} | "
            f"{r['pred_over_actual']:.3f} |")
        for label, a in r.get("ablations", {}).items():
            abl_rows.append(f"| {r['stream']} | {label} | {_ci(a['vs_best_ema'])} | "
                            f"{_ci(a['vs_full'])} |")
    text = "\n".join(rows)
    if len(abl_rows) > 2:
        text += "\n\n" + "\n".join(abl_rows)
    return text


def figure(results: list[dict[str, object]], path: Path) -> None:
    """Gains with 95 % CIs per stream against the three baselines (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [r for r in results if not r.get("too_short")]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for k, (key, label) in enumerate((("vs_persistence", "vs persistence"),
                                      ("vs_best_ema", "vs best EMA"),
                                      ("vs_rls", "vs RLS 3×3"))):
        x = np.arange(len(rs)) + (k - 1) * 0.25
        g = np.array([r[key]["gain"] for r in rs])
        lo = np.array([r[key]["lo"] for r in rs])
        hi = np.array([r[key]["hi"] for r in rs])
        err = np.nan_to_num(np.array([g - lo, hi - g]))  # no CI: a bare point
        ax.errorbar(x, g, yerr=err, fmt="o", capsize=3, label=label)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(rs)), [r["stream"] for r in rs], rotation=20)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylabel("gain (nats / event)")
    ax.legend(fontsize=8)
    ax.set_title("10 ms-ahead count forecast: gain over baselines, 95 % CI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(text: str, held_out: bool = False) -> None:
    """Put the table between the forecast_eval markers of docs/results.md (their own markers
    for the held-out recordings)."""
    path = DOC / "results.md"
    doc = path.read_text()
    tag = "forecast_eval_heldout" if held_out else "forecast_eval"
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    cmd = "forecast_eval --held-out --write-docs" if held_out else "forecast_eval --write-docs"
    fig = "" if held_out else "![forecast evaluation](figures/forecast_eval.png)\n\n"
    block = (f"{begin}\nCommand: `python -m tools.experiments.{cmd}`\n\n"
             f"{fig}{text}\n\nGains in nats "
             "per scored event with 95 % paired block-bootstrap CIs (none below "
             f"{MIN_WINDOWS_CI} scored windows); coverage is the share of randomised-PIT "
             "values in the central 90 %.\n" + end)
    if begin in doc:
        doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        title = ("Forecast evaluation on the held-out recordings" if held_out else
                 "Forecast evaluation against the strongest simple baselines")
        doc += f"\n## {title}\n\n" + block + "\n"
    path.write_text(doc)


def run(*, quick: bool, seeds: list[int], streams: list[str] | None,
        overrides: dict[str, object], ablations: bool) -> list[dict[str, object]]:
    names = streams or (list(QUICK) if quick else [*REAL, *SYNTHETIC])
    results = []
    for name in names:
        t = time.perf_counter()
        r = evaluate_stream(name, seeds=seeds, overrides=overrides,
                            duration_us=QUICK.get(name) if quick else None,
                            ablations=ablations)
        r["seconds"] = round(time.perf_counter() - t, 1)
        print(name, json.dumps({k: v for k, v in r.items() if k != "ablations"}), flush=True)
        results.append(r)
    return results


def _r4(x: float) -> float | None:
    """Rounded for the JSON line; None for nan (JSON has no NaN)."""
    return None if math.isnan(x) else round(float(x), 4)


def headline(results: list[dict[str, object]]) -> dict[str, object]:
    """Per stream: the gains, their CI bounds, the coverage and the best EMA's τ."""
    keys = ("vs_persistence", "vs_best_ema", "vs_rls")
    out: dict[str, object] = {}
    for r in results:
        if r.get("too_short"):
            out[str(r["stream"])] = "too_short"
            continue
        out[str(r["stream"])] = {
            **{k: _r4(r[k]["gain"]) for k in keys},
            **{f"{k}_lo": _r4(r[k]["lo"]) for k in keys},
            **{f"{k}_hi": _r4(r[k]["hi"]) for k in keys},
            "coverage90": _r4(r["coverage90"]),
            "coverage90_busy": _r4(r["coverage90_busy"]),
            "best_ema_tau_ms": r["best_ema_tau_ms"], "windows": r["windows"]}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three streams, one seed (< 1 min)")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--streams", nargs="+", default=None,
                    choices=[*REAL, *SYNTHETIC])
    ap.add_argument("--held-out", action="store_true",
                    help="only the two reserved recordings (evaluation only, never tuning)")
    ap.add_argument("--no-ablations", action="store_true")
    add_spec_argument(ap)
    a = ap.parse_args(argv)
    seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
    streams = list(HELD_OUT) if a.held_out else a.streams
    results = run(quick=a.quick, seeds=seeds, streams=streams,
                  overrides=spec_overrides(a.spec), ablations=not (a.quick or a.no_ablations))
    text = table(results)
    print(text)
    if a.write_docs:
        if not a.held_out:
            (DOC / "figures").mkdir(exist_ok=True)
            figure(results, DOC / "figures" / "forecast_eval.png")
        write_docs(text, held_out=a.held_out)
    print(json.dumps(headline(results)))


if __name__ == "__main__":
    main()
