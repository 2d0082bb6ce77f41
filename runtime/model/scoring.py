"""Scoring predicted event rates: Poisson log-likelihood of the next window, and baselines.

For a window of Δ µs and a predicted rate λ_c (events/s) per pooled channel c, the
expected count is m_c = λ_c Δ·10⁻⁶ + m₀ (m₀: a small floor, the same for every
predictor, so that a zero prediction does not score −∞), and the log-likelihood of the
observed counts n_c is

    ℓ = Σ_c [n_c ln m_c − m_c − ln n_c!]      (nats; reported per event: ℓ / Σ_c n_c).

Baselines: persistence (m_c = last window's count n_c) and an exponential moving average
of counts with the model's own trace time constant, m ← (1 − β) m + β n with
β = 1 − exp(−Δ/τ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from augury.events import EventBatch
from augury.model.spec import ModelSpec

FLOOR_COUNT = 0.01
"""Default m₀: expected events per channel and window added to every prediction."""


def log_factorial(n: np.ndarray) -> np.ndarray:
    """ln n! for non-negative integer counts (exact table up to max(n))."""
    n = np.asarray(n, dtype=np.int64)
    top = int(n.max()) if n.size else 0
    table = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, top + 1, dtype=np.float64)))])
    return table[n]


def poisson_loglik(expected: np.ndarray, counts: np.ndarray,
                   floor: float = FLOOR_COUNT) -> float:
    """Σ_c [n_c ln m_c − m_c − ln n_c!] with m = expected + floor (nats)."""
    m = np.asarray(expected, dtype=np.float64) + floor
    n = np.asarray(counts, dtype=np.int64)
    return float(np.sum(n * np.log(m) - m - log_factorial(n)))


def window_counts(spec: ModelSpec, events: np.ndarray) -> np.ndarray:
    """Event counts per pooled cell and polarity, shape (Hp, Wp, 2) int64."""
    hp, wp = spec.pooled_shape
    idx = ((events["y"].astype(np.int64) // spec.pool) * wp
           + events["x"].astype(np.int64) // spec.pool) * 2 + events["p"].astype(np.int64)
    return np.bincount(idx, minlength=hp * wp * 2).reshape(hp, wp, 2)


@dataclass
class ScoreBoard:
    """Accumulated log-likelihoods (nats) of model and baselines over scored windows.

    ``observe(batch, rate_hz)`` scores the model's rate map published at the *previous*
    window boundary against this window's counts, scores the baselines likewise, then
    updates the baselines. Windows before ``warmup_us`` (stream time) are not scored.
    """

    spec: ModelSpec
    window_us: int
    warmup_us: int = 0
    floor: float = FLOOR_COUNT
    ll_model: float = 0.0
    ll_persistence: float = 0.0
    ll_ema: float = 0.0
    events: int = 0
    windows: int = 0
    _last: np.ndarray | None = None
    _ema: np.ndarray | None = None
    _pred: np.ndarray | None = None
    _log: list[tuple[int, float, float, float, int]] = field(default_factory=list)

    @property
    def beta(self) -> float:
        return 1.0 - math.exp(-self.window_us / self.spec.tau_us)

    def observe(self, batch: EventBatch, rate_hz: np.ndarray) -> None:
        """Score the pending prediction on ``batch`` (one window), then store ``rate_hz``."""
        n = window_counts(self.spec, batch.events)
        if (self._pred is not None and self._last is not None
                and batch.t_start_us >= self.warmup_us):
            expected = self._pred.astype(np.float64) * self.window_us * 1e-6
            lm = poisson_loglik(expected, n, self.floor)
            lp = poisson_loglik(self._last, n, self.floor)
            le = poisson_loglik(self._ema, n, self.floor)
            self.ll_model += lm
            self.ll_persistence += lp
            self.ll_ema += le
            self.events += int(n.sum())
            self.windows += 1
            self._log.append((batch.t_start_us, lm, lp, le, int(n.sum())))
        self._ema = n.astype(np.float64) if self._ema is None else (
            (1.0 - self.beta) * self._ema + self.beta * n)
        self._last = n
        self._pred = np.asarray(rate_hz)

    def per_event(self) -> dict[str, float]:
        """Mean log-likelihood per scored event and the model's gains (nats/event)."""
        n = max(self.events, 1)
        return {
            "model": self.ll_model / n,
            "persistence": self.ll_persistence / n,
            "ema": self.ll_ema / n,
            "gain_vs_persistence": (self.ll_model - self.ll_persistence) / n,
            "gain_vs_ema": (self.ll_model - self.ll_ema) / n,
            "events": float(self.events),
            "windows": float(self.windows),
        }
