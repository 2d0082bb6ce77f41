"""How well the beliefs explain the input for each belief-step curvature and step count.

Usage::

    python -m tools.experiments.relaxation [--quick] [--spec key=value ...]

Synthetic moving bars (128×96, pool 4, 1 Hz/px noise, 300 px/s, seed 1; the scene of
``tests/test_model_learning.py``) for 1.5 s through the network with ``curv_mix`` γ ∈
{1, 0.25, 0} and ``relax_steps`` ∈ {2, 3, 4, 8}. Reported per pair: the relative
prediction-error energy Σ(z − x̂)²/Σz² of the layer-1 traces, mean over the last 50
windows of 10 ms (``recon_g{γ}_s{steps}``, lower is better), and the same for the
untrained network (frozen random weights, default γ and steps). ``--quick``: γ ∈
{1, 0.25} and steps ∈ {2, 8}. ``--spec`` adds ModelSpec overrides to every run (e.g.
``theta_e=0.2``). Last output line: one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from augury.adapters.synthetic import SceneConfig, render_scene
from augury.events import EventBatch
from augury.model.network import Network, traces_at
from augury.model.spec import ModelSpec
from tools.spec_args import add_spec_argument, spec_overrides

T1_US = 1_500_000


def reconstruction(net: Network, ev: np.ndarray, t1_us: int = T1_US) -> float:
    """Mean over the last 50 windows of 10 ms of Σ(z − x̂)²/Σz² (layer-1 traces)."""
    edges = np.arange(0, t1_us + 1, 10_000)
    cuts = np.searchsorted(ev["t"], edges)
    rel = []
    for i in range(len(edges) - 1):
        b = EventBatch(ev[cuts[i]:cuts[i + 1]], int(edges[i]), int(edges[i + 1]), i)
        r = net.step(b)
        z = traces_at(net.spec, net.state, r.t_us)
        rel.append(float(np.sum((z - net.state.xhat1) ** 2) / max(np.sum(z * z), 1e-9)))
    return float(np.mean(rel[-50:]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="γ ∈ {1, 0.25}, steps ∈ {2, 8}")
    add_spec_argument(ap)
    args = ap.parse_args(argv)
    extra = spec_overrides(args.spec)
    ev, _ = render_scene(SceneConfig(kind="bars", width=128, height=96, duration_us=T1_US,
                                     seed=1, noise_rate_hz=1.0, speed_px_s=300.0))
    base = {"width": 128, "height": 96, "pool": 4, **extra}
    gammas = (1.0, 0.25) if args.quick else (1.0, 0.25, 0.0)
    steps = (2, 8) if args.quick else (2, 3, 4, 8)
    frozen = Network(ModelSpec(**base))
    frozen.freeze_learning()
    out = {"recon_untrained": reconstruction(frozen, ev)}
    for g in gammas:
        for s in steps:
            net = Network(ModelSpec(**{**base, "curv_mix": g, "relax_steps": s}))
            out[f"recon_g{g}_s{s}"] = reconstruction(net, ev)
            print(f"curv_mix {g}, relax_steps {s}: Σ(z − x̂)²/Σz² = {out[f'recon_g{g}_s{s}']:.3f}"
                  f" (untrained {out['recon_untrained']:.3f})")
    print(json.dumps({k: round(v, 4) for k, v in out.items()}))


if __name__ == "__main__":
    main()
