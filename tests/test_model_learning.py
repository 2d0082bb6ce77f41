"""Learning works: free energy falls, predictions beat persistence and EMA, σ is calibrated."""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import DATA, noise, windows

from augury.model.countdist import randomized_pit
from augury.model.network import Network, traces_at
from augury.model.scoring import ScoreBoard, poisson_loglik, window_counts
from augury.model.spec import ModelSpec

ROTDISK = DATA / "inivation" / "davis240c_rotdisk.aedat"


def _bars(duration_us: int, noise_rate_hz: float = 1.0, seed: int = 1) -> np.ndarray:
    from augury.adapters.synthetic import SceneConfig, render_scene

    cfg = SceneConfig(kind="bars", width=128, height=96, duration_us=duration_us, seed=seed,
                      noise_rate_hz=noise_rate_hz, speed_px_s=300.0)
    ev, _ = render_scene(cfg)
    return ev


def _score(spec: ModelSpec, ev: np.ndarray, t1_us: int, warmup_us: int) -> tuple[Network, dict]:
    net = Network(spec)
    board = ScoreBoard(spec, spec.horizon_us, warmup_us=warmup_us)
    for b in windows(ev, 0, t1_us, spec.horizon_us):
        board.observe(b, net.step(b).rate_hz)
    return net, board.per_event()


def test_poisson_loglik_matches_definition() -> None:
    m = np.array([0.5, 2.0, 0.0])
    n = np.array([1, 3, 0])
    want = sum(k * np.log(x + 0.01) - (x + 0.01) - np.log(float(np.prod(range(1, k + 1))))
               for x, k in zip(m, n, strict=True))
    assert poisson_loglik(m, n, 0.01) == pytest.approx(want)


def test_window_counts() -> None:
    spec = ModelSpec(width=64, height=48, pool=8)
    ev = noise(64, 48, 10_000, 100.0, seed=0)
    c = window_counts(spec, ev)
    assert c.shape == (6, 8, 2) and c.sum() == ev.size
    assert c[ev["y"][0] // 8, ev["x"][0] // 8, ev["p"][0]] >= 1


def _run_energies(net: Network, ev: np.ndarray,
                  t1_us: int) -> tuple[list[float], list[float], list[float]]:
    """Per 10 ms window: Σ (z − x̂)² / Σ z² (unit-precision prediction-error energy relative
    to the input's), the surprise Σ ½ π e² and the free energy F."""
    rel, surprise, free = [], [], []
    for b in windows(ev, 0, t1_us, 10_000):
        r = net.step(b)
        z = traces_at(net.spec, net.state, r.t_us)
        rel.append(float(np.sum((z - net.state.xhat1) ** 2) / max(np.sum(z * z), 1e-9)))
        surprise.append(r.surprise_total)
        free.append(r.free_energy)
    return rel, surprise, free


def test_free_energy_falls_on_moving_bars() -> None:
    spec = ModelSpec(width=128, height=96, pool=4)
    t1 = 1_500_000
    ev = _bars(t1)
    rel, surprise, free = _run_energies(Network(spec), ev, t1)
    # surprise (the data term of F) and F itself fall from their start
    assert np.mean(surprise[-50:]) < np.mean(surprise[:5]) / 4, (surprise[:5], surprise[-5:])
    assert np.mean(free[-50:]) < np.mean(free[:5]) / 1.5
    # and learning, not only precision adaptation, explains the input better: the same
    # stream through the network frozen at its random initial weights
    frozen = Network(spec)
    frozen.freeze_learning()
    rel0, _, _ = _run_energies(frozen, ev, t1)
    learned, untrained = np.mean(rel[-50:]), np.mean(rel0[-50:])
    assert learned < 0.7 * untrained, (learned, untrained)


def test_predictions_beat_baselines_on_synthetic_bars() -> None:
    spec = ModelSpec(width=128, height=96, pool=4)
    t1 = 2_000_000
    _, s = _score(spec, _bars(t1), t1, t1 // 3)
    assert s["events"] > 100_000
    assert s["gain_vs_persistence"] > 0.2, s
    assert s["gain_vs_ema"] > 0.2, s


@pytest.mark.skipif(not ROTDISK.exists(), reason="shared data directory ../shared/data is absent")
def test_predictions_on_real_rotating_disk() -> None:
    """DAVIS240C rotating disk, 3.2 s (not a held-out file)."""
    from augury.adapters import open_source

    with open_source(ROTDISK) as src:
        ev = src.read_all().copy()
        w, h = src.geometry.width, src.geometry.height
    ev["t"] -= ev["t"][0]
    spec = ModelSpec(width=w, height=h, pool=4)
    t1 = int(ev["t"][-1]) // spec.horizon_us * spec.horizon_us
    _, s = _score(spec, ev, t1, t1 // 3)
    assert s["gain_vs_persistence"] > 0.2, s
    assert s["gain_vs_ema"] > 0.04, s  # measured +0.079 (docs/results.md)


@pytest.mark.parametrize(("kind", "low"), [("noise", 0.85), ("bars", 0.70)])
def test_count_intervals_are_calibrated(kind: str, low: float) -> None:
    """The published count distribution (count_mean, count_var; read as a negative binomial)
    covers the next window's counts: the randomised PIT of every cell's count falls inside
    the central 90 % (exactly 90 % when calibrated) for 85–95 % of cells on noise (measured
    0.90). On these dense bars with 5 Hz/px noise at pool 4 it is 0.75: the shared linear
    forecaster, which carries the forecast there, is biased by level (it over-predicts cells
    it expects 3–10 events in), a known gap (docs/results.md); the real recordings are
    checked in tests/test_forecast_eval.py (0.87–0.93). Cells are not selected by their
    outcome (selecting "busy" cells by the observed count biases the PIT)."""
    spec = ModelSpec(width=128, height=96, pool=4)
    t1 = 2_000_000
    ev = noise(128, 96, t1, 20.0, seed=2) if kind == "noise" else _bars(t1, 5.0)
    net = Network(spec)
    rng = np.random.default_rng(0)
    prev = None
    inside = total = 0
    for i, b in enumerate(windows(ev, 0, t1, spec.horizon_us)):
        n = window_counts(spec, b.events)
        if prev is not None and i > 60:
            mean, var = prev
            u = randomized_pit(n, mean, var, rng)
            inside += int(np.sum((u >= 0.05) & (u <= 0.95)))
            total += int(u.size)
        r = net.step(b)
        prev = (r.count_mean.astype(np.float64), r.count_var.astype(np.float64))
    assert total > 10_000
    assert low <= inside / total <= 0.95, inside / total


def test_column_surprise_zscores_localise_a_novel_stimulus() -> None:
    """After 1.5 s of stationary noise, a 30 ms flash in one column stands out in the
    per-column z-scores while the other columns stay near their own baselines."""
    from augury.events import EVENT_DTYPE

    spec = ModelSpec(width=128, height=96, pool=4)
    t1, t2 = 1_500_000, 1_530_000
    background = noise(128, 96, t2, 20.0, seed=3)
    rng = np.random.default_rng(4)
    n = 8 * 8 * 2_000 * (t2 - t1) // 1_000_000  # 2 kHz per pixel on an 8 × 8 px square
    flash = np.empty(n, EVENT_DTYPE)
    flash["t"] = rng.integers(t1, t2, n)
    flash["x"] = rng.integers(40, 48, n)  # pooled cells 10–11: column (2, 2) of 4 × 4 cells
    flash["y"] = rng.integers(40, 48, n)
    flash["p"] = 1
    ev = np.concatenate([background, flash])
    ev = ev[np.argsort(ev["t"], kind="stable")]
    net = Network(spec)
    quiet = None
    for b in windows(ev, 0, t2, spec.horizon_us):
        r = net.step(b)
        if b.t_end_us == t1:
            quiet = r.surprise_zmap.copy()
    assert quiet is not None
    z = r.surprise_zmap
    assert z.shape == spec.grid1 and z.dtype == np.float32
    others = np.delete(z.ravel(), 2 * spec.grid1[1] + 2)
    assert z[2, 2] > 5.0, z
    assert np.median(np.abs(others)) < 2.0, z
    assert np.median(np.abs(quiet)) < 2.0, quiet  # before the flash nothing stands out


def test_forecast_decays_when_the_whole_sensor_falls_silent() -> None:
    """After 1 s of noise and 2 s with no event at all (no active column after ~80 ms: the
    clock jumps), the rate experts have still seen the silent windows end: the slowest
    average (τ = 10 s) has decayed by about e^(−2 s/τ) (not only over the ~80 ms that columns
    stayed active), and the published count forecast is below 5 % of what it was."""
    from augury.events import EventBatch

    spec = ModelSpec(width=64, height=48, pool=4)
    net = Network(spec)
    ev = noise(64, 48, 1_000_000, 20.0, seed=7)
    for b in windows(ev, 0, 1_000_000, spec.horizon_us):
        before = net.step(b).count_mean.sum()
    slow_before = net.state.zk[:, :, -1].sum()
    after = net.step(EventBatch(ev[:0], 1_000_000, 3_000_000, 10_000)).count_mean.sum()
    slow_after = net.state.zk[:, :, -1].sum()
    assert net.state.active.sum() == 0 and before > 10.0
    expect = np.exp(-2_000_000 / max(spec.mix_taus_us))  # 0.82 at τ = 10 s
    assert abs(slow_after / slow_before / expect - 1.0) < 0.05, (slow_before, slow_after, expect)
    assert after < 0.05 * before, (before, after)


NMNIST = DATA / "nmnist"


def _atom_cosine(soft: bool) -> float:
    """Mean pairwise cosine of the layer-1 atoms after 50 N-MNIST digits of learning."""
    from tools.experiments.nmnist_probe import atom_cosine, batches, labels, load_digit

    spec = ModelSpec(width=34, height=34, pool=2, k1=16, layers=1, sparsity=0.5, curv_mix=1.0,
                     w_soft_bounds=soft)
    net = Network(spec)
    t0 = 0
    for sample, _ in labels("train1K")[:50]:
        bs, t0 = batches(load_digit(sample), t0)
        for b in bs:
            net.step(b)
    return atom_cosine(net.state.W1[0])


@pytest.mark.skipif(not NMNIST.exists(), reason="shared data directory ../shared/data is absent")
def test_hard_weight_bounds_let_atoms_differentiate() -> None:
    """Soft bounds scale depression by W/w_max, so small weights can hardly fall: every atom
    stays a positive blur of the mean input (measured mean cosine 0.79 after 50 digits, 0.70
    after 100 at K1 = 32). Hard bounds let atoms specialise (0.07; docs/results.md)."""
    soft, hard = _atom_cosine(True), _atom_cosine(False)
    assert soft > 0.6, soft
    assert hard < 0.25, hard
