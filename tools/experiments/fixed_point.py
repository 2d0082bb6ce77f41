"""How many fraction bits the fixed-point emulation needs to learn like the float model.

Usage::

    python -m tools.experiments.fixed_point [--quick] [--bits 20 16 12]

Runs the same synthetic moving bars (128×96, pool 4, seed 2) through the float network and
through ``fixed_point=True`` networks with each number of fraction bits, and reports per
bit width: the mean absolute difference of the learned dictionary W1 to the float run,
relative to the float run's mean weight (``w_rel``; the untrained weights score
``w_rel_untrained``), the relative L1 difference of the final predicted rate maps
(``rate_rel``), and the next-window Poisson log-likelihood per event of both (``loglik``,
``loglik_float``; scored after the first third), each with round-half-up and with
stochastic rounding of the learned weights (``stochastic_rounding=True``, keys ``*_sr``).
``--quick`` uses 0.3 s of stream instead of 0.6 s. Last output line: one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from augury.adapters.synthetic import SceneConfig, render_scene
from augury.events import EventBatch
from augury.model.network import Network, Readout
from augury.model.scoring import ScoreBoard
from augury.model.spec import ModelSpec


def run(spec: ModelSpec, ev: np.ndarray, t1_us: int) -> tuple[Network, Readout, float]:
    """Step the network over [0, t1_us) in Δ windows; (network, last read-out, log-lik)."""
    net = Network(spec)
    board = ScoreBoard(spec, spec.horizon_us, warmup_us=t1_us // 3)
    dt = spec.horizon_us
    edges = np.arange(0, t1_us + 1, dt)
    cuts = np.searchsorted(ev["t"], edges)
    r = None
    for i in range(len(edges) - 1):
        b = EventBatch(ev[cuts[i]:cuts[i + 1]], int(edges[i]), int(edges[i + 1]), i)
        r = net.step(b)
        board.observe(b, r.rate_hz)
    assert r is not None
    return net, r, board.per_event()["model"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="0.3 s of stream instead of 0.6 s")
    ap.add_argument("--bits", type=int, nargs="*", default=[20, 16, 12])
    args = ap.parse_args(argv)
    t1 = 300_000 if args.quick else 600_000
    ev, _ = render_scene(SceneConfig(kind="bars", width=128, height=96, duration_us=t1,
                                     seed=2, speed_px_s=300.0))
    base = {"width": 128, "height": 96, "pool": 4}
    ref, r0, l0 = run(ModelSpec(**base), ev, t1)
    w0 = Network(ModelSpec(**base)).state.W1
    scale = float(ref.state.W1.mean())
    out: dict[str, float] = {
        "loglik_float": l0,
        "w_rel_untrained": float(np.abs(w0 - ref.state.W1).mean()) / scale,
    }
    for bits in args.bits:
        for sr, tag in ((False, ""), (True, "_sr")):
            spec = ModelSpec(**base, fixed_point=True, frac_bits=bits, stochastic_rounding=sr)
            net, r, ll = run(spec, ev, t1)
            key = f"{bits}{tag}"
            out[f"w_rel_{key}"] = float(np.abs(net.state.W1 - ref.state.W1).mean()) / scale
            out[f"rate_rel_{key}"] = float(np.abs(r.rate_hz - r0.rate_hz).sum()
                                           / r0.rate_hz.sum())
            out[f"loglik_{key}"] = ll
            print(f"{bits} fraction bits{' stochastic' if sr else ''}: W1 "
                  f"{out[f'w_rel_{key}']:.3f} off (untrained {out['w_rel_untrained']:.3f}), "
                  f"rate map {out[f'rate_rel_{key}']:.3f} off, log-likelihood {ll:.4f} vs "
                  f"float {l0:.4f} nats/event")
    print(json.dumps({k: round(v, 4) for k, v in out.items()}))


if __name__ == "__main__":
    main()
