"""Online adaptation: the scene changes under the network; surprise jumps, then learning
brings it back down, and a network whose learning was frozen at the switch does worse.

Usage::

    python -m tools.experiments.adaptation [--quick] [--write-docs]

Scene: synthetic moving bars (128×96, 300 px/s, sensor noise 1 event/s/px), moving right
(0°) for the first phase, then, from ``switch`` on, bars of the other orientation moving down
(90°): a pattern the layer-1 dictionary has not seen. Two networks with the same seed see the
same events in Δ-long batches: one keeps learning, the other is frozen at the switch (the
control). Per window we record the surprise (Σ ½ π e², nats), its z-score, and the Poisson
log-likelihood of the next window's counts under the model's Δ-ahead rate map and under an
EMA of counts. Prints a table, optionally writes docs/figures/adaptation.png and the table
into docs/results.md, and prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augury.adapters.synthetic import SceneConfig, render_scene
from augury.events import EventBatch, concat_records
from augury.model.network import Network
from augury.model.scoring import ScoreBoard
from augury.model.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
FIGURE = ROOT / "docs" / "figures" / "adaptation.png"
RESULTS = ROOT / "docs" / "results.md"


@dataclass(frozen=True)
class Trace:
    """Per-window series of one run: window start (µs), surprise, z, log-lik gain vs EMA."""

    t_us: np.ndarray
    surprise: np.ndarray
    zscore: np.ndarray
    gain_vs_ema: np.ndarray  # nats per event of the window (model − EMA)
    events: np.ndarray


def scene(phase_us: int, seed: int = 1) -> np.ndarray:
    """Bars moving right for phase_us, then orthogonal bars moving down for phase_us."""
    common = dict(kind="bars", width=128, height=96, duration_us=phase_us, seed=seed,
                  noise_rate_hz=1.0, speed_px_s=300.0)
    a, _ = render_scene(SceneConfig(direction_deg=0.0, **common))  # type: ignore[arg-type]
    b, _ = render_scene(SceneConfig(direction_deg=90.0, t0_us=phase_us,  # type: ignore[arg-type]
                                    **{**common, "seed": seed + 1}))
    return concat_records([a, b])


def run(events: np.ndarray, spec: ModelSpec, freeze_at_us: int | None) -> Trace:
    """Feed Δ-long batches; freeze learning at ``freeze_at_us`` (None: never)."""
    net = Network(spec)
    board = ScoreBoard(spec, spec.horizon_us)
    dt = spec.horizon_us
    t = events["t"]
    end = int(t[-1]) + 1
    starts = np.arange(0, end, dt)
    cuts = np.searchsorted(t, np.append(starts, end), side="left")
    s, z = [], []
    for i, t0 in enumerate(starts):
        if freeze_at_us is not None and t0 >= freeze_at_us and net.learning:
            net.freeze_learning()
        batch = EventBatch(events[cuts[i]:cuts[i + 1]], int(t0), int(t0) + dt, i)
        r = net.step(batch)
        board.observe(batch, r.rate_hz)
        s.append(r.surprise_total)
        z.append(r.surprise_z)
    log = np.array(board._log, dtype=np.float64)  # (t_start, ll_model, ll_pers, ll_ema, n)
    n = np.maximum(log[:, 4], 1.0)
    gain = np.full(starts.size, np.nan)
    idx = (log[:, 0] // dt).astype(np.int64)
    gain[idx] = (log[:, 1] - log[:, 3]) / n
    counts = np.zeros(starts.size)
    counts[idx] = log[:, 4]
    return Trace(starts, np.array(s), np.array(z), gain, counts)


def phase_stats(tr: Trace, lo_us: int, hi_us: int) -> dict[str, float]:
    """Mean surprise per window and event-weighted gain vs EMA over [lo, hi) µs."""
    m = (tr.t_us >= lo_us) & (tr.t_us < hi_us)
    ok = m & np.isfinite(tr.gain_vs_ema)
    w = tr.events[ok]
    gain = float(np.sum(tr.gain_vs_ema[ok] * w) / max(w.sum(), 1.0))
    return {"surprise": float(np.mean(tr.surprise[m])), "gain_vs_ema": gain}


def summarise(learn: Trace, frozen: Trace, phase_us: int) -> dict[str, float]:
    late_a = (phase_us - phase_us // 4, phase_us)
    early_b = (phase_us, phase_us + phase_us // 10)
    late_b = (2 * phase_us - phase_us // 4, 2 * phase_us)
    la, eb, lb = (phase_stats(learn, *w) for w in (late_a, early_b, late_b))
    fb = phase_stats(frozen, *late_b)
    return {
        "surprise_late_a": la["surprise"], "surprise_early_b": eb["surprise"],
        "surprise_late_b": lb["surprise"], "surprise_late_b_frozen": fb["surprise"],
        "surprise_jump": eb["surprise"] / max(la["surprise"], 1e-12),
        "recovery": lb["surprise"] / max(eb["surprise"], 1e-12),
        "gain_vs_ema_late_b": lb["gain_vs_ema"],
        "gain_vs_ema_late_b_frozen": fb["gain_vs_ema"],
    }


def figure(learn: Trace, frozen: Trace, phase_us: int, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install 'augury[tools]'): no figure")
        return None
    fig, ax = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    k = 10  # smooth over 10 windows for the plot only
    ker = np.ones(k) / k
    for tr, name in ((learn, "learning on"), (frozen, "frozen at the switch")):
        ts = tr.t_us / 1e6
        ax[0].plot(ts, np.convolve(tr.surprise, ker, "same"), label=name)
        g = np.nan_to_num(tr.gain_vs_ema)
        ax[1].plot(ts, np.convolve(g, ker, "same"), label=name)
    for a in ax:
        a.axvline(phase_us / 1e6, color="k", lw=0.8, ls="--")
    ax[0].set_ylabel("surprise Σ½πe² (nats)")
    ax[1].set_ylabel("log-lik gain vs EMA\n(nats/event)")
    ax[1].set_xlabel("stream time (s)")
    ax[0].legend(fontsize=8)
    ax[0].set_title("bars change orientation and direction at the dashed line", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_results(summary: dict[str, float], command: str) -> None:
    begin, end = "<!-- adaptation:begin -->", "<!-- adaptation:end -->"
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in summary.items())
    block = (f"{begin}\nCommand: `{command}`\n\n![adaptation](figures/adaptation.png)\n\n"
             f"| quantity | value |\n|---|---:|\n{rows}\n{end}")
    doc = RESULTS.read_text() if RESULTS.exists() else "# Results\n"
    if begin in doc and end in doc:
        head, _, rest = doc.partition(begin)
        doc = head + block + rest.partition(end)[2]
    else:
        doc = doc.rstrip() + "\n\n## Online adaptation to a changed scene\n\n" + block + "\n"
    RESULTS.write_text(doc)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1.5 s phases instead of 4 s")
    ap.add_argument("--write-docs", action="store_true",
                    help="write docs/figures/adaptation.png and the table in docs/results.md")
    args = ap.parse_args(argv)
    phase_us = 1_500_000 if args.quick else 4_000_000
    spec = ModelSpec(width=128, height=96)
    events = scene(phase_us)
    learn = run(events, spec, None)
    frozen = run(events, spec, phase_us)
    summary = {k: round(v, 5) for k, v in summarise(learn, frozen, phase_us).items()}
    for k, v in summary.items():
        print(f"{k:28s} {v:10.4f}")
    if args.write_docs:
        figure(learn, frozen, phase_us, FIGURE)
        cmd = "python -m tools.experiments.adaptation" + (" --quick" if args.quick else "")
        write_results(summary, cmd + " --write-docs")
    print(json.dumps({**summary, "phase_s": phase_us / 1e6, "events": int(events.size)}))


if __name__ == "__main__":
    main()
