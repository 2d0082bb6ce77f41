"""The published count distribution read as a negative binomial, and its calibration check.

The ``prediction`` topic gives, per pooled cell and polarity, the expected count m of the
next horizon window and its predictive variance v ≥ m (``count_mean``, ``count_var``). A
convenient reading is the negative binomial with that mean and variance,

    r = m² / (v − m),   p = m / v,   P(N = k) = C(k + r − 1, k) p^r (1 − p)^k,

which becomes Poisson(m) as v → m. ``count_cdf`` evaluates its CDF by the recursion
P(k + 1) = P(k) (k + r)(1 − p)/(k + 1), on logarithms (no special functions: NumPy only, so
that robot software and the tests need nothing more; it agrees with scipy.stats to 1e-13,
``tests/test_forecast_eval.py``), ``randomized_pit`` the randomised probability
integral transform of observed counts, uniform on [0, 1] when the forecast is calibrated
(so that 90 % of outcomes fall in the central 90 %, [0.05, 0.95]).
"""

from __future__ import annotations

import math

import numpy as np


def nb_params(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(r, p) of the negative binomial with this mean and variance; r = inf (Poisson) where
    var ≤ mean (1 + 1e-9) or mean ≤ 0 (a point mass at 0, whatever the variance says).
    Shapes broadcast; float64."""
    m = np.asarray(mean, np.float64)
    v = np.maximum(np.asarray(var, np.float64), m)
    over = (v > m * (1.0 + 1e-9)) & (m > 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(over, m * m / (v - m), np.inf)
        p = np.where(over, m / v, 1.0)
    return r, p


def count_cdf(n: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """P(N ≤ n) of the negative binomial (Poisson where var ≤ mean) with this mean and
    variance, elementwise; 0 where n < 0. The pmf recursion runs on ln P(k), so that a large
    mean (P(0) = e^{−m} below the float64 range from m ≈ 745) does not underflow the whole
    sum. Cost O(size · max(n))."""
    n = np.asarray(n, np.int64)
    m = np.maximum(np.asarray(mean, np.float64), 0.0)
    r, p = nb_params(m, var)
    n, m, r, p = np.broadcast_arrays(n, m, r, p)
    nb = np.isfinite(r)
    rr = np.where(nb, r, 0.0)
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        log_q = np.log1p(-np.where(nb, p, 0.0))  # ln(1 − p), 0 where Poisson
        log_m = np.log(m)
        log_pmf = np.where(nb, rr * np.log(np.where(nb, p, 1.0)), -m)
        cdf = np.where(n >= 0, np.exp(log_pmf), 0.0)
        for k in range(int(n.max(initial=0))):
            log_pmf = log_pmf + np.where(nb, np.log(k + rr) + log_q, log_m) - math.log(k + 1)
            cdf = cdf + np.where(n >= k + 1, np.exp(log_pmf), 0.0)
    return np.minimum(cdf, 1.0)


def randomized_pit(n: np.ndarray, mean: np.ndarray, var: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """u = F(n − 1) + V (F(n) − F(n − 1)), V ~ U(0, 1): uniform on [0, 1] for counts drawn
    from the forecast distribution (the randomised PIT of a discrete forecast)."""
    n = np.asarray(n, np.int64)
    lo = count_cdf(n - 1, mean, var)
    hi = count_cdf(n, mean, var)
    return lo + rng.random(np.shape(lo)) * (hi - lo)


def coverage90(u: np.ndarray) -> float:
    """Share of PIT values in the central 90 % interval [0.05, 0.95] (0.90 if calibrated)."""
    u = np.asarray(u)
    return float(np.mean((u >= 0.05) & (u <= 0.95))) if u.size else float("nan")
