"""Stability map of online learning on looped real data (issue 13, *Stability*).

Usage::

    python -m tools.experiments.stability [--quick] [--write-docs] [--events N] [--seeds 0 1 2]
        [--spec key=value ...]

Each setting learns from a fresh network on the DAVIS240C rotating disk looped until
``--events`` events (10 M by default; each loop shifted by its span), in 10 ms batches
through ``Network.step``, and is measured once per loop (every loop holds the same events):

* bounds: the largest |W¹|, the precision range, the largest belief and the error spikes
  per input event over the loop;
* the weight change per loop, ‖W¹(end) − W¹(start)‖_F.

Classification of a setting:

* **divergent**: a non-finite value in the state, or in the last loop the spikes per event
  exceed ``SPIKE_BLOWUP`` (10) × the first loop's, or beliefs exceed ``BELIEF_LIMIT``;
* **oscillating**: the weights keep moving: the mean change per loop over the last third of
  the loops is at least half that over the first third (a converging learner's change falls
  loop after loop on a repeated input);
* **stable** otherwise.

Each cell runs every network seed of ``--seeds`` (0 1 2): it is stable only if every seed is;
otherwise it shows the worst class and how many seeds had it.

Two maps: the learning rate of the precisions α × the weights' drift q (5 × 5, factor 2
apart, centred on the defaults), and the error threshold θ_e × the belief step κ (3 × 3).
The headline is the width of the stable region along α and along q through the default
(the ratio of the largest to the smallest stable value on the default's row/column, as long
as the stable values are contiguous). Output: the maps as Markdown tables, a PNG
(``docs/figures/stability.png``), with ``--write-docs`` the tables in docs/results.md between
``stability`` markers; the last line is one JSON object. ``--quick``: a 3 × 3 α × q map over
three loops (< 1 min).

``--long N``: instead of the maps, one run of the default spec over N events (10⁸ for the
issue's long run) of the rotating disk looped with fresh noise in every loop (``NOISE_SHARE``
of extra events, uniform in space, time and polarity), streamed loop by loop so that memory
stays that of one loop; per loop it records the weight change, the largest |W¹|, the precision
range, the largest belief and the error spikes per input event, writes
``docs/figures/stability_long.png`` with ``--write-docs`` (block ``stability_long``) and
classifies the run like a map cell.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augury.events import EventBatch
from augury.model.network import Network
from augury.model.spec import ModelSpec
from tools.experiments.convergence import RECORDINGS, WINDOW_US, load
from tools.experiments.docs_block import write_block
from tools.spec_args import add_spec_argument, spec_overrides

DOC = Path(__file__).resolve().parents[2] / "docs"
SPIKE_BLOWUP = 10.0
BELIEF_LIMIT = 1e3
DEFAULT = ModelSpec(width=8, height=8)
ALPHAS = [DEFAULT.alpha * f for f in (0.25, 0.5, 1.0, 2.0, 4.0)]
QS = [DEFAULT.q * f for f in (0.25, 0.5, 1.0, 2.0, 4.0)]
THETAS = [DEFAULT.theta_e * f for f in (0.5, 1.0, 2.0)]
KAPPAS = [DEFAULT.kappa * f for f in (0.25, 0.5, 1.0)]


@dataclass
class Run:
    """One setting's outcome: its class and what it was decided on."""

    label: str
    dw: list[float]
    spikes_per_event: list[float]
    w_max: float
    pi_range: tuple[float, float]
    mu_max: float
    finite: bool
    seeds: int = 1
    """Seeds combined into this result (``combine``)."""
    seeds_worst: int = 1
    """How many of them had ``label`` (the worst class among them)."""


def classify(dw: list[float], spikes: list[float], mu_max: float, finite: bool) -> str:
    """stable / oscillating / divergent (see module doc)."""
    if not finite or mu_max > BELIEF_LIMIT or spikes[-1] > SPIKE_BLOWUP * max(spikes[0], 1e-9):
        return "divergent"
    third = max(1, len(dw) // 3)
    if np.mean(dw[-third:]) >= 0.5 * np.mean(dw[:third]):
        return "oscillating"
    return "stable"


_RANK = {"stable": 0, "oscillating": 1, "divergent": 2}


def combine(runs: list[Run]) -> Run:
    """One setting over several seeds: the worst class (divergent > oscillating > stable) and
    how many seeds had it; the last weight change averaged, the bounds the widest."""
    worst = max(runs, key=lambda r: _RANK[r.label]).label
    ok = [r for r in runs if r.finite and r.dw]
    dw = [float(np.mean([r.dw[-1] for r in ok]))] if ok else []
    return Run(worst, dw, runs[0].spikes_per_event,
               max((r.w_max for r in ok), default=float("nan")),
               (min((r.pi_range[0] for r in ok), default=float("nan")),
                max((r.pi_range[1] for r in ok), default=float("nan"))),
               max(r.mu_max for r in runs), all(r.finite for r in runs), len(runs),
               sum(r.label == worst for r in runs))


def run_setting(ev: np.ndarray, w: int, h: int, period: int,
                over: dict[str, object]) -> Run:
    """Learn over the looped stream; per loop, the weight change and spikes per event."""
    spec = ModelSpec.from_dict({"width": w, "height": h, "pool": 0, **over})
    net = Network(spec)
    n_win = -(-(int(ev["t"][-1]) + 1) // WINDOW_US)
    edges = np.searchsorted(ev["t"], np.arange(n_win + 1) * WINDOW_US)
    loop_of = ((np.arange(n_win) + 1) * WINDOW_US - 1) // period
    dw: list[float] = []
    spikes: list[float] = []
    sizes: list[int] = []
    w0 = net.state.W1.copy()
    sp = n_ev = 0
    mu_max = 0.0
    finite = True
    for i in range(n_win):
        part = ev[edges[i]:edges[i + 1]]
        r = net.step(EventBatch(part, i * WINDOW_US, (i + 1) * WINDOW_US, i))
        sp += r.spikes_up
        n_ev += part.size
        mu_max = max(mu_max, float(np.max(r.mu[0])) if r.mu[0].size else 0.0)
        if i == n_win - 1 or loop_of[i + 1] != loop_of[i]:
            finite = all(np.all(np.isfinite(a)) for a in net.state if a.dtype.kind == "f")
            if not finite:
                break
            dw.append(float(np.linalg.norm(net.state.W1 - w0)))
            spikes.append(sp / max(n_ev, 1))
            sizes.append(n_ev)
            w0 = net.state.W1.copy()
            sp = n_ev = 0
    if len(sizes) > 1 and sizes[-1] < 0.5 * sizes[-2]:  # a sliver left by window rounding
        dw, spikes = dw[:-1], spikes[:-1]
    st = net.state
    pi = (float(np.min(st.pi1)), float(np.max(st.pi1))) if finite else (np.nan, np.nan)
    w_max = float(np.max(np.abs(st.W1))) if finite else float("nan")
    label = classify(dw or [np.nan], spikes or [np.nan], mu_max, finite)
    return Run(label, dw, spikes, w_max, pi, mu_max, finite)


NOISE_SHARE = 0.05
"""Noise events added to every loop of the long run, as a share of the loop's events."""


@dataclass
class LongRun:
    """Per loop of the long run: events so far, weight change, bounds, spikes per event."""

    events: list[int]
    dw: list[float]
    w_max: list[float]
    pi_min: list[float]
    pi_max: list[float]
    mu_max: list[float]
    spikes_per_event: list[float]
    finite: bool
    seconds: float


def noisy_loop(base: np.ndarray, w: int, h: int, k: int, period: int,
               rng: np.random.Generator) -> np.ndarray:
    """Loop k of ``base`` (times shifted by k · period µs) with NOISE_SHARE fresh noise."""
    n = int(round(NOISE_SHARE * base.size))
    noise = np.zeros(n, base.dtype)
    noise["t"] = rng.integers(0, period, n)
    noise["x"], noise["y"], noise["p"] = rng.integers(0, w, n), rng.integers(0, h, n), \
        rng.integers(0, 2, n)
    out = np.concatenate([base, noise])
    out = out[np.argsort(out["t"], kind="stable")]
    out["t"] += k * period
    return out


def run_long(n_events: int, over: dict[str, object], seed: int = 0) -> LongRun:
    """The default spec over ``n_events`` events of the noisy looped rotating disk."""
    from augury.adapters import open_source

    with open_source(RECORDINGS["rotdisk"]) as src:
        base = src.read_all().copy()
        w, h = src.geometry.width, src.geometry.height
    base["t"] -= base["t"][0]
    period = -(-(int(base["t"][-1]) + 1) // WINDOW_US) * WINDOW_US  # whole windows per loop
    spec = ModelSpec.from_dict({"width": w, "height": h, "pool": 0, **over, "seed": seed})
    net = Network(spec)
    rng = np.random.default_rng(seed)
    out = LongRun([], [], [], [], [], [], [], True, 0.0)
    t0 = time.time()
    seen = 0
    k = 0
    per_loop = period // WINDOW_US
    while seen < n_events:
        ev = noisy_loop(base, w, h, k, period, rng)
        edges = np.searchsorted(ev["t"], k * period + np.arange(per_loop + 1) * WINDOW_US)
        w0 = net.state.W1.copy()
        sp = 0
        mu_max = 0.0
        for i in range(per_loop):
            part = ev[edges[i]:edges[i + 1]]
            r = net.step(EventBatch(part, k * period + i * WINDOW_US,
                                    k * period + (i + 1) * WINDOW_US, k * per_loop + i))
            sp += r.spikes_up
            if r.mu[0].size:
                mu_max = max(mu_max, float(np.max(r.mu[0])))
        seen += ev.size
        st = net.state
        out.finite = all(np.all(np.isfinite(a)) for a in st if a.dtype.kind == "f")
        if not out.finite:
            break
        out.events.append(seen)
        out.dw.append(float(np.linalg.norm(st.W1 - w0)))
        out.w_max.append(float(np.max(np.abs(st.W1))))
        out.pi_min.append(float(np.min(st.pi1)))
        out.pi_max.append(float(np.max(st.pi1)))
        out.mu_max.append(mu_max)
        out.spikes_per_event.append(sp / max(ev.size, 1))
        k += 1
        if k % 25 == 0:
            print(f"long run: {seen:,} events, {time.time() - t0:.0f} s, max W "
                  f"{out.w_max[-1]:.3f}, pi [{out.pi_min[-1]:.3g}, {out.pi_max[-1]:.3g}], "
                  f"spikes/event {out.spikes_per_event[-1]:.3f}", flush=True)
    out.seconds = time.time() - t0
    return out


def long_summary(r: LongRun) -> dict[str, object]:
    """Class and bounds of the long run (bounds over its second half and over all of it)."""
    half = len(r.events) // 2
    label = classify(r.dw or [np.nan], r.spikes_per_event or [np.nan],
                     max(r.mu_max, default=np.nan), r.finite)
    return {"class": label, "events": r.events[-1] if r.events else 0, "loops": len(r.events),
            "finite": r.finite, "w_max": max(r.w_max, default=np.nan),
            "pi_range": [min(r.pi_min, default=np.nan), max(r.pi_max, default=np.nan)],
            "mu_max": max(r.mu_max, default=np.nan),
            "spikes_per_event_first": r.spikes_per_event[0] if r.spikes_per_event else None,
            "spikes_per_event_second_half": [float(np.min(r.spikes_per_event[half:])),
                                             float(np.max(r.spikes_per_event[half:]))]
            if r.spikes_per_event else None,
            "dw_first_last": [r.dw[0], r.dw[-1]] if r.dw else None,
            "seconds": round(r.seconds)}


def long_figure(r: LongRun, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(r.events, float)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    axes[0].plot(x, r.dw)
    axes[0].set_ylabel("‖ΔW¹‖ per loop")
    axes[1].plot(x, r.w_max, label="max |W¹|")
    axes[1].plot(x, r.mu_max, label="max belief μ")
    axes[1].legend(fontsize=7)
    axes[2].semilogy(x, r.pi_min, label="min π")
    axes[2].semilogy(x, r.pi_max, label="max π")
    axes[2].legend(fontsize=7)
    axes[3].plot(x, r.spikes_per_event)
    axes[3].set_ylabel("error spikes per input event")
    for ax in axes:
        ax.set_xlabel("events seen")
    fig.suptitle("default spec, rotating disk looped with 5 % fresh noise per loop", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def stable_width(values: list[float], labels: list[str], default: float) -> float:
    """Largest / smallest value of the contiguous stable run through ``default`` (0 if the
    default itself is not stable)."""
    i = values.index(default)
    if labels[i] != "stable":
        return 0.0
    lo = hi = i
    while lo > 0 and labels[lo - 1] == "stable":
        lo -= 1
    while hi < len(values) - 1 and labels[hi + 1] == "stable":
        hi += 1
    return values[hi] / values[lo]


def grid_table(name_r: str, rows: list[float], name_c: str, cols: list[float],
               runs: dict[tuple[float, float], Run]) -> str:
    head = f"| {name_r} \\ {name_c} | " + " | ".join(f"{c:g}" for c in cols) + " |"
    lines = [head, "|---|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            x = runs[(r, c)]
            label = (f"{x.label} ({x.seeds_worst} of {x.seeds} seeds)"
                     if x.seeds > 1 and x.label != "stable" else x.label)
            cells.append(f"{label} (ΔW {x.dw[-1]:.2g}, max W {x.w_max:.2f})"
                         if x.finite and x.dw else label)
        lines.append(f"| {r:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(maps: dict[str, tuple[list[float], list[float], dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    code = {"stable": 0, "oscillating": 1, "divergent": 2}
    fig, axes = plt.subplots(1, len(maps), figsize=(4.5 * len(maps), 4), squeeze=False)
    for ax, (title, (rows, cols, runs)) in zip(axes[0], maps.items(), strict=True):
        z = np.array([[code[runs[(r, c)].label] for c in cols] for r in rows])
        ax.imshow(z, cmap="RdYlGn_r", vmin=0, vmax=2, origin="lower")
        ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols], rotation=45)
        ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows])
        ax.set_title(title + "\n(green stable, yellow oscillating, red divergent)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_docs(text: str, command: str) -> None:
    write_block("stability", "Stability of online learning", text, command, "figures/stability.png")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 × 3 α × q over 3 loops")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--events", type=int, default=None, help="events per setting (10 M)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="network seeds per map cell (default 0 1 2; --quick 0); a cell is "
                         "stable only if every seed is")
    ap.add_argument("--long", type=float, default=None, metavar="N",
                    help="one default run over N events with noise (1e8 for the issue)")
    add_spec_argument(ap)
    a = ap.parse_args(argv)
    if not RECORDINGS["rotdisk"].exists():
        raise SystemExit(f"{RECORDINGS['rotdisk']} is missing (../shared/data is needed)")
    base = spec_overrides(a.spec)
    if a.long:
        r = run_long(int(a.long), base)
        head = long_summary(r)
        text = (f"Long run: {head['events']:,} events ({head['loops']} loops of the rotating "
                f"disk, {NOISE_SHARE:.0%} fresh noise per loop), default spec: **{head['class']}**"
                f". max |W¹| {head['w_max']:.3f} (w_max 4), precisions in "
                f"[{head['pi_range'][0]:.3g}, {head['pi_range'][1]:.3g}], largest belief "
                f"{head['mu_max']:.3g}, error spikes per event "
                f"{head['spikes_per_event_first']:.3f} "
                f"in the first loop and {head['spikes_per_event_second_half'][0]:.3f}–"
                f"{head['spikes_per_event_second_half'][1]:.3f} over the second half, weight "
                f"change per loop {head['dw_first_last'][0]:.3g} → {head['dw_first_last'][1]:.3g}"
                f" ({head['seconds']} s).")
        print(text)
        if a.write_docs:
            long_figure(r, DOC / "figures" / "stability_long.png")
            n = f"{a.long:.0e}".replace("e+0", "e")
            write_block("stability_long", "Stability of online learning", text,
                        f"python -m tools.experiments.stability --long {n}",
                        "figures/stability_long.png")
        print(json.dumps(head))
        return
    n_events = a.events or (3 * 374_296 if a.quick else 10_000_000)
    ev, w, h, period = load("rotdisk", n_events)
    assert period is not None
    seeds = a.seeds or ([0] if a.quick else [0, 1, 2])

    def cell(over: dict[str, object]) -> Run:
        return combine([run_setting(ev, w, h, period, {**base, **over, "seed": sd})
                        for sd in seeds])

    alphas = ALPHAS[1:4] if a.quick else ALPHAS
    qs = QS[1:4] if a.quick else QS
    t0 = time.time()
    maps: dict[str, tuple[list[float], list[float], dict]] = {}
    aq: dict[tuple[float, float], Run] = {}
    for al in alphas:
        for q in qs:
            aq[(al, q)] = cell({"alpha": al, "q": q})
            print(f"alpha={al:g} q={q:g}: {aq[(al, q)].label}", flush=True)
    maps["α (rows) × q (columns)"] = (alphas, qs, aq)
    tk: dict[tuple[float, float], Run] = {}
    if not a.quick:
        for th in THETAS:
            for k in KAPPAS:
                tk[(th, k)] = cell({"theta_e": th, "kappa": k})
                print(f"theta_e={th:g} kappa={k:g}: {tk[(th, k)].label}", flush=True)
        maps["θ_e (rows) × κ (columns)"] = (THETAS, KAPPAS, tk)
    col = [aq[(al, DEFAULT.q)].label for al in alphas]
    row = [aq[(DEFAULT.alpha, q)].label for q in qs]
    head = {"default": aq[(DEFAULT.alpha, DEFAULT.q)].label,
            "stable_width_alpha": stable_width(alphas, col, DEFAULT.alpha),
            "stable_width_q": stable_width(qs, row, DEFAULT.q),
            "settings": len(aq) + len(tk),
            "stable": sum(r.label == "stable" for r in [*aq.values(), *tk.values()]),
            "events_per_setting": int(ev.size), "seeds": len(seeds)}
    text = grid_table("α", alphas, "q", qs, aq)
    if tk:
        text += "\n\n" + grid_table("θ_e", THETAS, "κ", KAPPAS, tk)
    text += (f"\n\nStable width through the default: α {head['stable_width_alpha']:g}×, "
             f"q {head['stable_width_q']:g}× ({ev.size:,} events per setting and seed, "
             f"{len(seeds)} seed(s), {time.time() - t0:.0f} s).")
    print(text)
    if a.write_docs:
        figure(maps, DOC / "figures" / "stability.png")
        write_docs(text, "python -m tools.experiments.stability" + (" --quick" if a.quick
                                                                     else ""))
    print(json.dumps(head))


if __name__ == "__main__":
    main()
