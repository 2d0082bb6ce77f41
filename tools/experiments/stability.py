"""Stability map of online learning on looped real data (issue 13, *Stability*).

Usage::

    python -m tools.experiments.stability [--quick] [--write-docs] [--events N]
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

Two maps: the learning rate of the precisions α × the weights' drift q (5 × 5, factor 2
apart, centred on the defaults), and the error threshold θ_e × the belief step κ (3 × 3).
The headline is the width of the stable region along α and along q through the default
(the ratio of the largest to the smallest stable value on the default's row/column, as long
as the stable values are contiguous). Output: the maps as Markdown tables, a PNG
(``docs/figures/stability.png``), with ``--write-docs`` the tables in docs/results.md between
``stability`` markers; the last line is one JSON object. ``--quick``: a 3 × 3 α × q map over
three loops (< 1 min).
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


def classify(dw: list[float], spikes: list[float], mu_max: float, finite: bool) -> str:
    """stable / oscillating / divergent (see module doc)."""
    if not finite or mu_max > BELIEF_LIMIT or spikes[-1] > SPIKE_BLOWUP * max(spikes[0], 1e-9):
        return "divergent"
    third = max(1, len(dw) // 3)
    if np.mean(dw[-third:]) >= 0.5 * np.mean(dw[:third]):
        return "oscillating"
    return "stable"


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
            cells.append(f"{x.label} (ΔW {x.dw[-1]:.2g}, max W {x.w_max:.2f})"
                         if x.finite and x.dw else x.label)
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
    add_spec_argument(ap)
    a = ap.parse_args(argv)
    if not RECORDINGS["rotdisk"].exists():
        raise SystemExit(f"{RECORDINGS['rotdisk']} is missing (../shared/data is needed)")
    base = spec_overrides(a.spec)
    n_events = a.events or (3 * 374_296 if a.quick else 10_000_000)
    ev, w, h, period = load("rotdisk", n_events)
    assert period is not None
    alphas = ALPHAS[1:4] if a.quick else ALPHAS
    qs = QS[1:4] if a.quick else QS
    t0 = time.time()
    maps: dict[str, tuple[list[float], list[float], dict]] = {}
    aq: dict[tuple[float, float], Run] = {}
    for al in alphas:
        for q in qs:
            aq[(al, q)] = run_setting(ev, w, h, period, {**base, "alpha": al, "q": q})
            print(f"alpha={al:g} q={q:g}: {aq[(al, q)].label}", flush=True)
    maps["α (rows) × q (columns)"] = (alphas, qs, aq)
    tk: dict[tuple[float, float], Run] = {}
    if not a.quick:
        for th in THETAS:
            for k in KAPPAS:
                tk[(th, k)] = run_setting(ev, w, h, period, {**base, "theta_e": th, "kappa": k})
                print(f"theta_e={th:g} kappa={k:g}: {tk[(th, k)].label}", flush=True)
        maps["θ_e (rows) × κ (columns)"] = (THETAS, KAPPAS, tk)
    col = [aq[(al, DEFAULT.q)].label for al in alphas]
    row = [aq[(DEFAULT.alpha, q)].label for q in qs]
    head = {"default": aq[(DEFAULT.alpha, DEFAULT.q)].label,
            "stable_width_alpha": stable_width(alphas, col, DEFAULT.alpha),
            "stable_width_q": stable_width(qs, row, DEFAULT.q),
            "settings": len(aq) + len(tk),
            "stable": sum(r.label == "stable" for r in [*aq.values(), *tk.values()]),
            "events_per_setting": int(ev.size)}
    text = grid_table("α", alphas, "q", qs, aq)
    if tk:
        text += "\n\n" + grid_table("θ_e", THETAS, "κ", KAPPAS, tk)
    text += (f"\n\nStable width through the default: α {head['stable_width_alpha']:g}×, "
             f"q {head['stable_width_q']:g}× ({ev.size:,} events per setting, "
             f"{time.time() - t0:.0f} s).")
    print(text)
    if a.write_docs:
        figure(maps, DOC / "figures" / "stability.png")
        write_docs(text, "python -m tools.experiments.stability" + (" --quick" if a.quick
                                                                     else ""))
    print(json.dumps(head))


if __name__ == "__main__":
    main()
