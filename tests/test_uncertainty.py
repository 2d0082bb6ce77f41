"""tools/experiments/uncertainty.py --quick: the published count distribution is calibrated,
the Bayesian weight-variance term is negligible beside it, and surprise detects a shift."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from augury.model.countdist import randomized_pit
from tools.experiments.uncertainty import LEVELS, reliability

REPO = Path(__file__).resolve().parents[1]
ROTDISK = REPO.parent / "shared" / "data" / "inivation" / "davis240c_rotdisk.aedat"


def test_reliability_of_a_calibrated_forecast_is_the_diagonal() -> None:
    rng = np.random.default_rng(3)
    mean = rng.gamma(1.0, 3.0, 50_000)
    n = rng.poisson(mean)
    rel = reliability(randomized_pit(n, mean, mean, rng))
    np.testing.assert_allclose(rel, LEVELS, atol=0.01)
    # a forecast twice too wide puts too many outcomes in every central interval
    wide = reliability(randomized_pit(n, mean, mean * (1 + mean), rng))
    assert np.all(wide[:-1] > np.array(LEVELS[:-1]) + 0.02)


@pytest.mark.skipif(not ROTDISK.exists(), reason="../shared/data is missing")
def test_quick_run_is_calibrated_and_detects_the_polarity_flip(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tools.experiments.uncertainty", "--quick"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.87 <= out["rotdisk_coverage90"] <= 0.93
    assert 0.85 <= out["rotdisk_coverage90_busy"] <= 0.95
    # the features rebuilt outside the kernels reproduce the shared forecaster's output
    assert out["rotdisk_feature_mismatch"] < 0.05
    # the weight-variance term does not improve the log score (it is ~1e-5 of the variance)
    assert out["rotdisk_wvar_gain"] < 0.001
    assert out["polarity_delay_ms"] is not None and out["polarity_delay_ms"] <= 100
