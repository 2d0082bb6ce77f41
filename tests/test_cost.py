"""tools/experiments/cost.py --quick: per-event counts are measured and the energy terms add up
in the documented order (synaptic ops + spikes < + active-column updates < + every neuron)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROTDISK = REPO.parent / "shared" / "data" / "inivation" / "davis240c_rotdisk.aedat"


@pytest.mark.skipif(not ROTDISK.exists(), reason="../shared/data is missing")
def test_quick_cost_counts_and_energy_terms() -> None:
    proc = subprocess.run([sys.executable, "-m", "tools.experiments.cost", "--quick"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rotdisk_spikes_up"] > 0 and out["rotdisk_spikes_down"] > 0
    # every up spike reaches K1 belief units at least
    assert out["rotdisk_synops"] >= 8 * out["rotdisk_spikes_up"]
    assert 0 < out["rotdisk_nj_ops"] < out["rotdisk_nj_active"] < out["rotdisk_nj_all"]
    # 23.6 pJ per synaptic op and 1.7 pJ per spike, nothing else, in the first term
    expect = (out["rotdisk_synops"] * 23.6e-3
              + (out["rotdisk_spikes_up"] + out["rotdisk_spikes_down"]) * 1.7e-3)
    assert out["rotdisk_nj_ops"] == pytest.approx(expect, rel=1e-3)
