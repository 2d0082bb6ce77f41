"""Is the published uncertainty worth having? Calibration, a variance ablation, shift detection
(issue 13, *Uncertainty*).

Usage::

    python -m tools.experiments.uncertainty [--quick] [--write-docs] [--seeds 0 1 2]
        [--spec key=value ...]

**Calibration.** On each real recording (and the synthetic still scene) the network runs over
10 ms windows as in ``forecast_eval`` (first third of each stream is warm-up) and the
published count distribution of every pooled channel (``count_mean``, ``count_var`` read as
the negative binomial of ``augury.model.countdist``) is scored on the next window's count:

* the **PIT histogram**: randomised PIT values in 10 bins (flat at 0.10 when calibrated);
* the **reliability curve**: the share of outcomes inside the central interval of nominal
  level q, for q = 0.1 … 0.9, 0.95 (on the diagonal when calibrated);
* the **log score**: mean log predictive probability of the observed counts, nats per event
  (a proper score: it rewards sharpness and calibration together).

**Variance ablation.** The published variance is the experts' Poisson mixture widened by the
measured overdispersion c·m² (``augury.model.mixture``): it is *empirical*, no Bayesian
weight variance enters it. Scored side by side on the same windows:

* ``published``: mixture + c·m²;
* ``mixture only``: without the empirical term c·m²;
* ``Poisson``: the mean alone (variance = mean);
* ``+ weight variance``: published + w_sh · σ² xᵀΛ⁻¹x, the predictive variance that the
  shared linear forecaster's Bayesian posterior over its weights adds (x its features,
  Λ its posterior precision ``State.Lsh``, σ² its residual variance per polarity measured
  online, w_sh the expert's mixture weight). The features are rebuilt here from the state
  and checked against the forecaster's own output (``feature_mismatch``: the share of
  channels, at worst over the windows, where they do not reproduce it).

**Shift detection.** The shifts of ``tools.experiments.shifts`` (rotating disk A → shifted B →
A) and a control run with no shift (A → more A → A). An alarm is raised when the sensor-wide
surprise z (``Readout.surprise_z``) exceeds a threshold z*; **detection delay** is the time
from the shift to the first alarm within 500 ms (ms of stream time; "missed" if none),
**false alarms** are alarm onsets (z crossing z* upwards) per minute of the no-shift control
after its first second.

Output: Markdown tables, with ``--write-docs`` written into docs/results.md between
``uncertainty`` markers with a figure (``docs/figures/uncertainty.png``), and one JSON object
last. ``--quick``: the rotating disk (1.5 s) and the polarity flip, one seed (< 1 min).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from augury.events import EventBatch
from augury.model.countdist import nb_params, randomized_pit
from augury.model.mixture import expert_weights, overdispersion
from augury.model.network import Network, column_to_map
from augury.model.scoring import window_counts
from augury.model.spec import ModelSpec
from augury.model.state import NF
from tools.experiments.docs_block import write_block
from tools.experiments.forecast_eval import load_stream, warmup_windows, whole_windows
from tools.experiments.shifts import SHIFTS, crop, run_one, segment, shifted
from tools.experiments.shifts import _read as read_recording
from tools.spec_args import add_spec_argument, spec_overrides

STREAMS = ("rotdisk", "dvxplorer", "nmnist10", "static")
VARIANTS = ("published", "mixture only", "Poisson", "+ weight variance")
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
Z_THRESHOLDS = (3.0, 5.0)
DETECT_WITHIN_US = 500_000
FIG = Path(__file__).resolve().parents[2] / "docs" / "figures" / "uncertainty.png"


def shared_features(spec: ModelSpec, net: Network) -> np.ndarray:
    """The shared forecaster's features of every channel on the full column grid,
    (ncy·c, ncx·c, 2, NF): a vectorised ``augury.model.reference.features`` (one call per
    channel there, too slow for every window of every stream; the test checks they agree),
    as the kernels build them at a horizon tick: own trace, 8 neighbours' traces and the
    hierarchy's forecast (× Δ/τ), last window's count and the sum of its 8 neighbours', 1.
    Channels of silent columns: (0, …, 0, 1)."""
    st = net.state
    r1, c1 = spec.grid1
    c = spec.column

    def full(a: np.ndarray) -> np.ndarray:
        m = np.asarray(a, np.float64).reshape(r1, c1, c, c, 2).transpose(0, 2, 1, 3, 4)
        return m.reshape(r1 * c, c1 * c, 2)

    act = np.repeat(st.active[:, None] != 0, spec.d1, axis=1)
    s = spec.horizon_us / spec.tau_us
    z = full(st.z1)  # every column's traces, as the kernels' map of neighbours holds them
    h = full(st.hprev)
    n = full(st.nlast)
    zp, npad = np.pad(z, ((1, 1), (1, 1), (0, 0))), np.pad(n, ((1, 1), (1, 1), (0, 0)))
    hh, ww = z.shape[:2]
    x = np.zeros((hh, ww, 2, NF))
    x[..., 0] = s * z
    o = 1
    cn = np.zeros_like(z)
    for oo in range(9):
        if oo == 4:
            continue
        dy, dx = oo // 3, oo % 3
        x[..., o] = s * zp[dy:dy + hh, dx:dx + ww]
        cn += npad[dy:dy + hh, dx:dx + ww]
        o += 1
    x[..., 9] = s * h
    x[..., 10] = n
    x[..., 11] = cn
    x[..., 12] = 1.0
    silent = ~full(act).astype(bool)
    x[silent] = 0.0
    x[silent, NF - 1] = 1.0
    return x


def weight_variance_map(spec: ModelSpec, net: Network, sigma2: np.ndarray
                        ) -> tuple[np.ndarray, float]:
    """(w_sh σ² xᵀΛ⁻¹x on the pooled map (Hp, Wp, 2), the share of channels where
    max(0, w·x) differs from the forecaster's own forecast by more than 10⁻⁶: a check of the
    rebuilt features)."""
    st = net.state
    hp, wp = spec.pooled_shape
    x = shared_features(spec, net)
    quad = np.empty(x.shape[:3])
    pred = np.empty(x.shape[:3])
    for pol in range(2):
        lam = st.Lsh[pol] + 1e-6 * np.eye(NF)
        xi = x[:, :, pol, :]
        quad[:, :, pol] = np.einsum("hwf,hwf->hw", xi, np.linalg.solve(lam, xi.reshape(-1, NF).T)
                                    .T.reshape(xi.shape))
        pred[:, :, pol] = np.maximum(xi @ st.Wsh[pol], 0.0)
    own = column_to_map(spec, st.mprev[:, :, -1])
    err = float(np.mean(np.abs(pred[:hp, :wp] - own) > 1e-6)) if own.size else 0.0
    w_sh = column_to_map(spec, expert_weights(spec, st)[:, :, -1])
    return w_sh * sigma2[None, None, :] * quad[:hp, :wp], err


@dataclass
class Scores:
    """Per variant: PIT values, log scores per window (nats), events per window."""

    pit: dict[str, list[np.ndarray]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    pit_busy: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {v: [] for v in VARIANTS})
    logs: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    events: list[int] = field(default_factory=list)
    feature_error: float = 0.0
    wvar_share: list[float] = field(default_factory=list)


def log_score(n: np.ndarray, mean: np.ndarray, var: np.ndarray) -> float:
    """Σ ln P(N = n) under the negative binomial (Poisson where var ≤ mean), nats."""
    m = np.maximum(mean, 1e-9)
    r, p = nb_params(m, var)
    nb = np.isfinite(r)
    out = np.where(nb, stats.nbinom.logpmf(n, np.where(nb, r, 1.0), np.where(nb, p, 0.5)),
                   stats.poisson.logpmf(n, m))
    return float(out.sum())


def calibrate(name: str, seed: int, overrides: dict[str, object],
              duration_us: int | None) -> Scores:
    """Replay one stream and score every variance variant on every scored window."""
    ev, w, h = load_stream(name, duration_us)
    spec = ModelSpec.from_dict({"width": w, "height": h, "pool": 0, **overrides, "seed": seed})
    net = Network(spec)
    d = spec.horizon_us
    nwin = whole_windows(ev, d)
    cuts = np.searchsorted(ev["t"], np.arange(nwin + 1, dtype=np.int64) * d)
    warm = warmup_windows(nwin)
    rng = np.random.default_rng(seed)
    sc = Scores()
    sig_num, sig_den = np.zeros(2), np.zeros(2)
    prev: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    prev_msh: np.ndarray | None = None
    for i in range(nwin):
        b = EventBatch(ev[cuts[i]:cuts[i + 1]], i * d, (i + 1) * d, i)
        n = window_counts(spec, b.events).astype(np.int64)
        if prev is not None:
            mean, var, c_m2, wv = prev
            if i >= warm:
                variants = {"published": var, "mixture only": np.maximum(var - c_m2, mean),
                            "Poisson": mean, "+ weight variance": var + wv}
                for v, vv in variants.items():
                    u = randomized_pit(n, mean, vv, rng)
                    sc.pit[v].append(u.ravel())
                    sc.pit_busy[v].append(u[mean >= 1.0])
                    sc.logs[v].append(log_score(n, mean, vv))
                sc.events.append(int(n.sum()))
                sc.wvar_share.append(float(wv.sum() / max(var.sum(), 1e-12)))
        r = net.step(b)
        mean = r.count_mean.astype(np.float64)
        var = r.count_var.astype(np.float64)
        # residual variance of the shared forecaster per polarity, from the windows seen
        m_sh = column_to_map(spec, net.state.mprev[:, :, -1])
        if prev_msh is not None:
            res2 = (n - prev_msh) ** 2
            busy = (n + prev_msh) > 0
            for pol in range(2):
                sig_num[pol] += res2[..., pol][busy[..., pol]].sum()
                sig_den[pol] += busy[..., pol].sum()
        prev_msh = m_sh
        sigma2 = np.where(sig_den > 0, sig_num / np.maximum(sig_den, 1), 1.0)
        wv, err = weight_variance_map(spec, net, sigma2)
        sc.feature_error = max(sc.feature_error, err)
        cpol = overdispersion(net.state)
        prev = (mean, var, cpol[None, None, :] * mean * mean, wv)
    return sc


def pit_hist(u: np.ndarray) -> np.ndarray:
    """Shares of PIT values in 10 equal bins."""
    return np.histogram(u, bins=10, range=(0.0, 1.0))[0] / max(u.size, 1)


def reliability(u: np.ndarray) -> np.ndarray:
    """Share of outcomes in the central interval of each nominal level of LEVELS."""
    return np.array([np.mean(np.abs(u - 0.5) <= q / 2) for q in LEVELS])


def summarise_calibration(runs: list[Scores]) -> dict[str, dict[str, object]]:
    """Per variant: PIT histogram, reliability, 90 % coverage, max |reliability − nominal|,
    log score per event relative to published (mean, 95 % bootstrap CI over windows)."""
    out: dict[str, dict[str, object]] = {}
    ev = np.concatenate([np.asarray(r.events, float) for r in runs])
    base = np.concatenate([np.asarray(r.logs["published"]) for r in runs])
    for v in VARIANTS:
        u = np.concatenate([x for r in runs for x in r.pit[v]])
        rel = reliability(u)
        ub = np.concatenate([x for r in runs for x in r.pit_busy[v]])
        rel_b = reliability(ub) if ub.size else np.full(len(LEVELS), np.nan)
        ls = np.concatenate([np.asarray(r.logs[v]) for r in runs])
        diff = (ls - base)
        rng = np.random.default_rng(0)
        idx = rng.integers(0, diff.size, (2000, diff.size))
        boots = diff[idx].sum(axis=1) / np.maximum(ev[idx].sum(axis=1), 1)
        out[v] = {"hist": pit_hist(u).round(4).tolist(), "reliability": rel.round(4).tolist(),
                  "coverage90": float(rel[LEVELS.index(0.9)]),
                  "max_rel_error": float(np.max(np.abs(rel - np.array(LEVELS)))),
                  "reliability_busy": rel_b.round(4).tolist(),
                  "coverage90_busy": float(rel_b[LEVELS.index(0.9)]),
                  "max_rel_error_busy": float(np.max(np.abs(rel_b - np.array(LEVELS)))),
                  "log_score": float(ls.sum() / max(ev.sum(), 1)),
                  "vs_published": float(diff.sum() / max(ev.sum(), 1)),
                  "ci": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]}
    out["_"] = {"feature_error": max(r.feature_error for r in runs),
                "wvar_share": float(np.mean([np.mean(r.wvar_share) for r in runs]))}
    return out


def detection(shifts: list[str], seeds: list[int], warm_s: float, dur_s: float,
              overrides: dict[str, object]) -> dict[str, object]:
    """Detection delay (ms) per shift and threshold, false alarms per minute without shift."""
    a = crop(read_recording(Path(__file__).resolve().parents[2].parent / "shared" / "data"
                            / "inivation" / "davis240c_rotdisk.aedat"))
    warm, dur = int(warm_s * 1e6), int(dur_s * 1e6)
    delays: dict[str, dict[float, list[float]]] = {}
    false_per_min: dict[float, list[float]] = {zt: [] for zt in Z_THRESHOLDS}
    window_us = 10_000
    for seed in seeds:
        over = {**overrides, "seed": seed}
        ctrl = [segment(a, 0, warm), segment(a, warm, dur), segment(a, warm + dur, dur)]
        _, zc, _, _ = run_one(ctrl, over, False)
        skip = 1_000_000 // window_us
        minutes = (zc.size - skip) * window_us / 60e6
        for zt in Z_THRESHOLDS:
            above = zc[skip:] > zt
            onsets = int(np.sum(above[1:] & ~above[:-1]) + int(above[0]))
            false_per_min[zt].append(onsets / minutes)
        for name in shifts:
            phases = [segment(a, 0, warm), shifted(name, a, warm, dur, seed),
                      segment(a, warm, dur)]
            _, z, _, starts = run_one(phases, over, False)
            s1 = starts[1]
            for zt in Z_THRESHOLDS:
                hit = np.flatnonzero(z[s1:s1 + DETECT_WITHIN_US // window_us] > zt)
                delay = (int(hit[0]) + 1) * window_us / 1000 if hit.size else np.nan
                delays.setdefault(name, {}).setdefault(zt, []).append(delay)
            print("detection", name, seed, {zt: delays[name][zt][-1] for zt in Z_THRESHOLDS},
                  flush=True)
    return {"delays": delays, "false_per_min": false_per_min}


def tables(cal: dict[str, dict[str, dict[str, object]]], det: dict[str, object],
           seeds: list[int]) -> str:
    lines = ["| stream | variance | 90 % coverage (all / m ≥ 1) | max reliability error "
             "(all / m ≥ 1) | log score (nats/event) | vs published | weight-variance share |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for s, res in cal.items():
        for v in VARIANTS:
            r = res[v]
            ci = r["ci"]
            vs = ("—" if v == "published"
                  else f"{r['vs_published']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]")
            share = f"{res['_']['wvar_share']:.1e}" if v == "+ weight variance" else ""
            lines.append(f"| {s} | {v} | {r['coverage90']:.3f} / {r['coverage90_busy']:.3f} | "
                         f"{r['max_rel_error']:.3f} / {r['max_rel_error_busy']:.3f} | "
                         f"{r['log_score']:.4f} | {vs} | {share} |")
    lines += ["", "| shift | " + " | ".join(f"delay at z* = {zt:g} (ms)" for zt in Z_THRESHOLDS)
              + " |", "|---|" + "---:|" * len(Z_THRESHOLDS)]
    delays = det["delays"]
    assert isinstance(delays, dict)
    for name, by in delays.items():
        cells = []
        for zt in Z_THRESHOLDS:
            v = np.array(by[zt], float)
            miss = int(np.isnan(v).sum())
            cells.append(("missed" if miss == v.size else f"{np.nanmean(v):.0f}")
                         + (f" ({miss} of {v.size} missed)" if 0 < miss else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    fp = det["false_per_min"]
    assert isinstance(fp, dict)
    lines.append("| no shift: false alarms per minute | "
                 + " | ".join(f"{np.mean(fp[zt]):.1f}" for zt in Z_THRESHOLDS) + " |")
    lines.append(f"\n({len(seeds)} seed(s); detection within {DETECT_WITHIN_US // 1000} ms)")
    return "\n".join(lines)


def figure(cal: dict[str, dict[str, dict[str, object]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(cal), figsize=(3.2 * len(cal), 6), squeeze=False)
    for k, (s, res) in enumerate(cal.items()):
        ax = axes[0, k]
        for v in ("published", "Poisson"):
            ax.stairs(res[v]["hist"], np.linspace(0.0, 1.0, 11), label=v)
        ax.axhline(0.1, color="k", lw=0.5)
        ax.set_title(f"{s}: PIT histogram", fontsize=9)
        ax.set_xlabel("randomised PIT value")
        ax.set_ylabel("share")
        ax = axes[1, k]
        for v in VARIANTS:
            ax.plot(LEVELS, res[v]["reliability_busy"], marker=".", label=v)
        ax.plot([0, 1], [0, 1], "k", lw=0.5)
        ax.set_title(f"{s}: reliability, cells m ≥ 1", fontsize=9)
        ax.set_xlabel("nominal central interval")
        ax.set_ylabel("observed share inside")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def headline(cal: dict[str, dict[str, dict[str, object]]], det: dict[str, object]
             ) -> dict[str, object]:
    out: dict[str, object] = {}
    for s, res in cal.items():
        out[f"{s}_coverage90"] = round(float(res["published"]["coverage90"]), 4)
        out[f"{s}_coverage90_busy"] = round(float(res["published"]["coverage90_busy"]), 4)
        out[f"{s}_poisson_coverage90_busy"] = round(float(res["Poisson"]["coverage90_busy"]), 4)
        out[f"{s}_wvar_gain"] = round(float(res["+ weight variance"]["vs_published"]), 5)
        out[f"{s}_mixture_only_gain"] = round(float(res["mixture only"]["vs_published"]), 5)
        out[f"{s}_feature_mismatch"] = round(float(res["_"]["feature_error"]), 4)
    delays = det["delays"]
    assert isinstance(delays, dict)
    for name, by in delays.items():
        v = np.array(by[Z_THRESHOLDS[0]], float)
        out[f"{name.replace(' ', '_')}_delay_ms"] = (None if np.all(np.isnan(v))
                                                     else round(float(np.nanmean(v)), 1))
    fp = det["false_per_min"]
    assert isinstance(fp, dict)
    out["false_alarms_per_min"] = round(float(np.mean(fp[Z_THRESHOLDS[0]])), 2)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="rotating disk 1.5 s, polarity flip")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    add_spec_argument(ap)
    a = ap.parse_args(argv)
    seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
    over = spec_overrides(a.spec)
    streams = ["rotdisk"] if a.quick else list(STREAMS)
    t0 = time.time()
    cal = {}
    for s in streams:
        runs = [calibrate(s, seed, over, 1_500_000 if a.quick else None) for seed in seeds]
        cal[s] = summarise_calibration(runs)
        print(s, json.dumps({v: round(cal[s][v]["coverage90"], 4) for v in VARIANTS}),
              flush=True)
    shifts = ["polarity"] if a.quick else list(SHIFTS)
    det = detection(shifts, seeds, 3.0 if a.quick else 6.0, 1.0 if a.quick else 2.0, over)
    text = tables(cal, det, seeds) + f" ({time.time() - t0:.0f} s)"
    print(text)
    if a.write_docs:
        figure(cal, FIG)
        write_block("uncertainty", "Is the published uncertainty worth having?", text,
                    "python -m tools.experiments.uncertainty" + (" --quick" if a.quick else ""),
                    figure="figures/uncertainty.png")
    print(json.dumps(headline(cal, det)))


if __name__ == "__main__":
    main()
