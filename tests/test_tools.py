"""The benchmark scripts' pure helpers (their doctests) keep working."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["tools.bench.latency", "tools.spec_args"])
def test_doctests(module: str) -> None:
    mod = importlib.import_module(module)
    result = doctest.testmod(mod)
    assert result.attempted > 0 and result.failed == 0


def test_dense_engine_runs_both_layers_and_the_forecast() -> None:
    """The clocked dense engine of tools/bench/model.py (the speed baseline) infers beliefs
    in both layers and a forecast that follows the input, all finite."""
    import numpy as np
    from model_helpers import bars

    from augury.model.spec import ModelSpec
    from tools.bench.model import dense_run

    spec = ModelSpec(width=96, height=64, pool=4)
    ev = bars(96, 64, 200_000, seed=1, noise_rate_hz=2.0)
    out = dense_run(spec, ev, 200_000)
    assert all(np.isfinite(a).all() and (a >= 0).all() for a in out.values())
    assert out["mu1"].max() > 0 and out["mu2"].max() > 0
    from augury.model.network import map_to_column
    from augury.model.scoring import window_counts

    recent = map_to_column(spec, window_counts(spec, ev[ev["t"] >= 180_000]).astype(float))
    r = np.corrcoef(out["fprev"].ravel(), recent.ravel())[0, 1]
    assert r > 0.5, r  # the forecast follows where events just were
