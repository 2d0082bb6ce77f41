"""Log-likelihood of the model's Δ-ahead rate maps vs persistence and EMA on several streams.

Usage::

    python -m tools.experiments.model_loglik [--quick] [--write-docs] [--spec key=value ...]
    python -m tools.experiments.model_loglik --held-out [--write-docs]

Streams: synthetic moving bars, and the real recordings that are not held out
(DAVIS240C rotating disk, DVXplorer indoor, Prophesee EVT 2.0 busy scene, the looped
Prophesee EVT 3.0 burst). Each is replayed in Δ-long batches through ``Network.step``;
windows before the first third of the stream are not scored. Also reports the frozen
untrained network (random weights) as a control, and the 90 % coverage of the published count
distribution (randomised PIT, ``augury.model.countdist``; all cells). The stronger evaluation,
with the best EMA in hindsight, an RLS predictor and confidence intervals, is
``tools.experiments.forecast_eval``.
Prints one line per stream and a JSON object last.

``--held-out`` scores the two recordings that ``../shared/data/README.md`` reserves for
checking that results generalise (Prophesee "sparklers" EVT 2.0, DAVIS240C translating
boxes) instead; hyper-parameters are never tuned on them, and ``--write-docs`` puts them in
their own table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from augury.events import EventBatch
from augury.model.countdist import coverage90, randomized_pit
from augury.model.network import Network
from augury.model.scoring import ScoreBoard, window_counts
from augury.model.spec import ModelSpec
from tools.spec_args import add_spec_argument, spec_overrides

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
STREAMS = {
    "bars": None,
    "rotdisk": DATA / "inivation" / "davis240c_rotdisk.aedat",
    "dvxplorer": DATA / "inivation" / "dvxplorer_sample.aedat4",
    "evt2": DATA / "prophesee" / "evt2_sample.raw",
    "evt3_looped": DATA / "prophesee" / "evt3_sample.raw",
}
HELD_OUT = {
    "sparklers (held out)": DATA / "prophesee" / "sparklers_evt2_v1.raw",
    "translboxes (held out)": DATA / "inivation" / "davis240c_translboxes.aedat",
}


def load(name: str) -> tuple[np.ndarray, int, int]:
    """Events (t from 0) and geometry of a named stream."""
    if name == "bars":
        from augury.adapters.synthetic import SceneConfig, render_scene

        ev, _ = render_scene(SceneConfig(kind="bars", width=128, height=96,
                                         duration_us=3_000_000, seed=1, noise_rate_hz=1.0,
                                         speed_px_s=300.0))
        return ev.copy(), 128, 96
    from augury.adapters import open_source

    with open_source({**STREAMS, **HELD_OUT}[name]) as src:
        ev = src.read_all().copy()
        w, h = src.geometry.width, src.geometry.height
    ev["t"] -= ev["t"][0]
    if name == "evt3_looped":
        span = int(ev["t"][-1]) + 1
        loops = 20
        ev = np.concatenate([ev] * loops)
        ev["t"] += np.repeat(np.arange(loops, dtype=np.int64) * span, ev.size // loops)
    return ev, w, h


def load_spec(name: str, overrides: dict[str, object] | None = None
              ) -> tuple[np.ndarray, ModelSpec]:
    """A named stream's events (t from 0) and the spec the experiments run it with: the
    default ModelSpec for its sensor, pooled by 8 from 640 px wide and by 4 below, plus
    ``overrides`` (ModelSpec fields)."""
    ev, w, h = load(name)
    pool = 8 if w >= 640 else 4
    return ev, ModelSpec.from_dict({"width": w, "height": h, "pool": pool,
                                    **(overrides or {})})


def evaluate(spec: ModelSpec, ev: np.ndarray, *, learn: bool = True) -> dict[str, float]:
    """Log-likelihood gains (nats/event) and 90 % interval coverage over one stream."""
    net = Network(spec)
    if not learn:
        net.freeze_learning()
    dt = spec.horizon_us
    t1 = int(ev["t"][-1]) // dt * dt
    board = ScoreBoard(spec, dt, warmup_us=t1 // 3)
    edges = np.arange(0, t1 + 1, dt)
    cuts = np.searchsorted(ev["t"], edges)
    rng = np.random.default_rng(0)
    pits: list[np.ndarray] = []
    prev = None
    for i in range(len(edges) - 1):
        b = EventBatch(ev[cuts[i]:cuts[i + 1]], int(edges[i]), int(edges[i + 1]), i)
        if prev is not None and b.t_start_us >= t1 // 3:
            pits.append(randomized_pit(window_counts(spec, b.events), *prev, rng).ravel())
        r = net.step(b)
        board.observe(b, r.rate_hz)
        prev = (r.count_mean.astype(np.float64), r.count_var.astype(np.float64))
    out = board.per_event()
    out["coverage90"] = coverage90(np.concatenate(pits)) if pits else float("nan")
    return out


RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results.md"


def write_results(results: dict[str, dict[str, float]], command: str, *,
                  marker: str = "loglik",
                  heading: str = "Next-window prediction vs persistence and EMA") -> None:
    """Replace the block between the ``marker`` markers in docs/results.md with this table
    (appended under ``heading`` when the markers are absent)."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    rows = "\n".join(
        f"| {name} | {r['gain_vs_persistence']:+.3f} | {r['gain_vs_ema']:+.3f} | "
        f"{r['untrained_gain_vs_ema']:+.3f} | {100 * r['coverage90']:.0f} % | "
        f"{int(r['windows'])} | {int(r['events_scored']):,} |" for name, r in results.items())
    block = (f"{begin}\nCommand: `{command}`\n\n| stream | gain vs persistence | gain vs EMA "
             f"| untrained net vs EMA | 90 % interval coverage | windows | events scored |\n"
             f"|---|---:|---:|---:|---:|---:|---:|\n{rows}\n\nGains in nats per scored event "
             f"(next Δ window, Poisson log-likelihood); windows in the first third of each "
             f"stream are not scored.\n{end}")
    doc = RESULTS.read_text() if RESULTS.exists() else "# Results\n"
    if begin in doc and end in doc:
        head, _, rest = doc.partition(begin)
        doc = head + block + rest.partition(end)[2]
    else:
        doc = doc.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    RESULTS.write_text(doc)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_spec_argument(ap)
    ap.add_argument("--streams", nargs="*", default=None)
    ap.add_argument("--quick", action="store_true",
                    help="only the synthetic bars and the rotating disk (< 1 min)")
    ap.add_argument("--write-docs", action="store_true",
                    help="write the table into docs/results.md")
    ap.add_argument("--held-out", action="store_true",
                    help="score the held-out recordings (evaluation only, never for tuning)")
    args = ap.parse_args(argv)
    if args.held_out:
        args.streams = list(HELD_OUT)
    elif args.streams is None:
        args.streams = ["bars", "rotdisk"] if args.quick else list(STREAMS)
    overrides = spec_overrides(args.spec)
    results = {}
    for name in args.streams:
        ev, spec = load_spec(name, overrides)
        learned = evaluate(spec, ev)
        frozen = evaluate(spec, ev, learn=False)
        results[name] = {
            "gain_vs_persistence": learned["gain_vs_persistence"],
            "gain_vs_ema": learned["gain_vs_ema"],
            "untrained_gain_vs_ema": frozen["gain_vs_ema"],
            "coverage90": learned["coverage90"],
            "events_scored": learned["events"],
            "windows": learned["windows"],
        }
        print(name, {k: round(v, 4) for k, v in results[name].items()})
    if args.write_docs and args.held_out:
        write_results(results, "python -m tools.experiments.model_loglik --held-out "
                      "--write-docs", marker="heldout",
                      heading="Held-out recordings (evaluation only)")
    elif args.write_docs:
        cmd = "python -m tools.experiments.model_loglik" + (" --quick" if args.quick else "")
        write_results(results, cmd + " --write-docs")
    print(json.dumps({k: {a: round(b, 4) for a, b in v.items()} for k, v in results.items()}))


if __name__ == "__main__":
    main()
