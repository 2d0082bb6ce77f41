"""Render the latest beliefs, their uncertainty, the observed counts and the predicted rate
map to a PNG
(`augury listen --render FILE.png`). Needs matplotlib: ``pip install 'augury[tools]'``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("rendering needs matplotlib: pip install 'augury[tools]'") from exc
    return plt


def belief_energy(mu: np.ndarray) -> np.ndarray:
    """Per-column belief magnitude ‖μ‖₂ over the K units: (rows, cols, K) -> (rows, cols)."""
    return np.sqrt(np.sum(np.square(mu, dtype=np.float64), axis=-1))


def render_snapshot(path: str | Path, latest: dict[str, dict[str, np.ndarray]],
                    title: str = "") -> Path:
    """Write a figure of the most recent messages per topic.

    latest: topic -> arrays as received (``beliefs``: mu_l1, sigma_l1; ``prediction``:
    rate_hz (H, W, 2) events/s, rate_var, count_observed (H, W, 2) events of the last whole
    horizon window, when sent; ``surprise``: map). Panels for missing topics are left out.
    Returns the path written.
    """
    plt = _pyplot()
    panels: list[tuple[str, np.ndarray, str]] = []
    if "prediction" in latest:
        pred = latest["prediction"]
        if "count_observed" in pred:  # absent from daemons older than the field
            panels.append(("observed events ON+OFF, last window", pred["count_observed"]
                           .sum(axis=-1), "magma"))
        rate = pred["rate_hz"]
        panels.append(("predicted rate ON+OFF (events/s)", rate.sum(axis=-1), "magma"))
        panels.append(("predicted sd (events/s)",
                       np.sqrt(latest["prediction"]["rate_var"]).sum(axis=-1), "viridis"))
    if "beliefs" in latest:
        b = latest["beliefs"]
        panels.append(("layer-1 beliefs ‖μ‖", belief_energy(b["mu_l1"]), "cividis"))
        panels.append(("layer-1 mean σ", b["sigma_l1"].mean(axis=-1), "viridis"))
    if "surprise" in latest:
        panels.append(("surprise per column", latest["surprise"]["map"], "inferno"))
    if not panels:
        raise ValueError("nothing to render: no beliefs, prediction or surprise received")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0),
                             squeeze=False)
    for ax, (name, img, cmap) in zip(axes[0], panels, strict=True):
        im = ax.imshow(img, cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)  # viewers never see a half-written file
    return out
