"""The negative-binomial reading of the published count distribution and its PIT."""

from __future__ import annotations

import numpy as np
import pytest

from augury.model.countdist import count_cdf, coverage90, nb_params, randomized_pit


def test_nb_params_round_trip_mean_and_variance() -> None:
    m = np.array([0.3, 2.0, 15.0])
    v = np.array([0.5, 7.0, 15.0])
    r, p = nb_params(m, v)
    nb = np.isfinite(r)
    r, p = r[nb], p[nb]
    np.testing.assert_allclose(r * (1 - p) / p, m[nb])
    np.testing.assert_allclose(r * (1 - p) / p**2, v[nb])
    assert not nb[2]  # var == mean: Poisson


def test_a_zero_mean_is_a_point_mass_at_zero_whatever_the_variance() -> None:
    """mean 0 with var > 0 (no valid negative binomial) gave NaN from count_cdf."""
    n = np.array([0, 1, 3])
    np.testing.assert_array_equal(count_cdf(n, np.zeros(3), np.array([0.0, 1e-22, 2.0])),
                                  [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(count_cdf(n - 1, np.zeros(3), np.full(3, 1e-3)), [0, 1, 1])


@pytest.mark.parametrize(("mean", "var"), [(0.2, 0.2), (3.0, 3.0), (3.0, 12.0), (40.0, 400.0)])
def test_cdf_matches_sampling(mean: float, var: float) -> None:
    rng = np.random.default_rng(1)
    r, p = nb_params(np.array(mean), np.array(var))
    x = rng.poisson(mean, 200_000) if not np.isfinite(r) else rng.negative_binomial(r, p, 200_000)
    ks = np.arange(0, int(mean * 3) + 3)
    emp = np.array([np.mean(x <= k) for k in ks])
    np.testing.assert_allclose(count_cdf(ks, mean, var), emp, atol=4e-3)
    assert count_cdf(np.array(-1), mean, var) == 0.0


def test_pit_of_a_calibrated_forecast_covers_ninety_percent() -> None:
    """Counts drawn from the very distributions forecast: PIT coverage 0.90 ± 0.01."""
    rng = np.random.default_rng(2)
    mean = rng.gamma(0.5, 4.0, 100_000)
    var = mean * (1 + rng.uniform(0, 2, mean.size) * mean)
    r, p = nb_params(mean, var)
    n = np.where(np.isfinite(r), rng.negative_binomial(np.where(np.isfinite(r), r, 1), p),
                 rng.poisson(mean))
    assert abs(coverage90(randomized_pit(n, mean, var, rng)) - 0.90) < 0.01
    # the same counts judged against a Poisson with the same mean: too narrow
    assert coverage90(randomized_pit(n, mean, mean, rng)) < 0.85
