"""Helpers of the Lava tests: the recording crop, its spec, numba training (no Lava here)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from augury.model.network import Network
from augury.model.spec import ModelSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # model_helpers
from model_helpers import DATA, windows  # noqa: E402

ROTDISK = DATA / "inivation" / "davis240c_rotdisk.aedat"
CROP = (64, 96, 32, 32)  # x0, y0, width, height (px) of the DAVIS240C recording
TICK_US = 1_000


def crop_spec(**kw: object) -> ModelSpec:
    """The Lava tests' spec: a 32×32 px crop, pool 4 → 2×2 columns of 32 channels."""
    base = dict(width=CROP[2], height=CROP[3], pool=4, layers=1, clocked_input=True,
                settle=0.0)
    base.update(kw)
    return ModelSpec(**base)


def load_crop() -> np.ndarray:
    """Events of a 32×32 px crop of the rotating disk, t from 0 µs (EVENT_DTYPE)."""
    from augury.adapters import open_source

    with open_source(ROTDISK) as src:
        ev = src.read_all()
    x0, y0, w, h = CROP
    m = (ev["x"] >= x0) & (ev["x"] < x0 + w) & (ev["y"] >= y0) & (ev["y"] < y0 + h)
    ev = ev[m].copy()
    ev["x"] -= x0
    ev["y"] -= y0
    ev["t"] -= ev["t"][0]
    return ev


def run_numba(net: Network, ev: np.ndarray, t0_us: int, t1_us: int) -> None:
    """Feed the events in [t0, t1) µs in 5 ms batches."""
    sel = ev[(ev["t"] >= t0_us) & (ev["t"] < t1_us)]
    for b in windows(sel, t0_us, t1_us, 5_000):
        net.advance(b)


def train(ev: np.ndarray, t1_us: int = 1_500_000) -> Network:
    """A network trained by the numba engine on the crop's first t1_us, learning then frozen."""
    net = Network(crop_spec())
    run_numba(net, ev, 0, t1_us)
    net.freeze_learning()
    return net
