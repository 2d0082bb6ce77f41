"""The published count forecast: a Bayesian mixture of rate experts per channel.

Each pooled channel c (cell × polarity) has NE = 1 + NS (+ 1) experts forecasting its event
count in the next horizon window Δ:

* expert 0, the forecast unit: m_0 = κ x'_c Δ/τ (its own and neighbours' traces and the
  hierarchy's forecast, docs/model.md §1), κ a sensor-wide calibration per polarity
  (Σ n / Σ m_0 over active channels: the trace forecast over-predicts counts after a
  transient, because the trace still holds the events of the edge that just passed);
* expert i ≥ 1, an exponential moving average of the channel's counts per window with time
  constant τ_i (``ModelSpec.mix_taus_us``), updated at every horizon tick
  (zk ← (1 − β_i) zk + β_i n, β_i = 1 − exp(−Δ/τ_i)) and bias-corrected for its start at 0,
  m_i = zk_ci / (1 − (1 − β_i)^K): the channel's recent rate over τ_i;
* the last expert (``ModelSpec.mix_shared``), the shared linear forecaster:
  m = max(0, w_p · x_c), x_c = (own trace, the 8 neighbours' traces, the hierarchy's forecast
  h_c) × Δ/τ and 1, with one weight vector w_p per polarity shared by every channel and
  learned by Bayesian linear regression with forgetting on the counts themselves (kernels
  ``_learn_shared``): the forecast unit's inputs with a joint (not diagonal) posterior over
  its weights, fitted to the count it is scored on.

Their weights are the posterior probabilities of "expert i is the channel's best model",
from each expert's discounted Poisson log-evidence L_ci (the channel's own) plus
``mix_share`` × the sensor-wide L_g,i of its polarity (kernels ``_mix``):

    w_ci ∝ exp(L_ci + s · L_g,pol(c),i)

and the published count distribution is the mixture of the experts' Poisson forecasts,
widened by a measured overdispersion c (per polarity, sensor-wide):

    E[n_c] = Σ_i w_ci m_ci,      Var[n_c] = Σ_i w_ci (m_ci + m_ci²) − E[n_c]² + c E[n_c]²,

c = max(0, mean[(n − m)² − v]) / mean[m²] over active channels at horizon ticks (moment
matching of the squared forecast error; ``State.odisp``).

Shapes: per-column arrays are (n1, D1[, NE]); maps are (Hp, Wp, 2) (channel 0 OFF, 1 ON).
"""

from __future__ import annotations

import numpy as np

from augury.model.spec import ModelSpec
from augury.model.state import State


def expert_counts(spec: ModelSpec, st: State, x_fore: np.ndarray) -> np.ndarray:
    """Every expert's count forecast for the next window, (n1, D1, NE) events.

    x_fore: the forecast units' trace forecast x' at the read-out time, (n1, D1) events (0
    where silent). The other experts' forecasts are those made at the last horizon tick
    (``State.mprev``: they change only there).
    """
    kap = calibration(st)[np.arange(spec.d1) % 2]
    fast = np.asarray(x_fore, np.float64) * (spec.horizon_us / spec.tau_us) * kap[None, :]
    return np.concatenate([fast[:, :, None], st.mprev[:, :, 1:]], axis=2)


def expert_weights(spec: ModelSpec, st: State) -> np.ndarray:
    """w_ci ∝ exp(L_ci + mix_share · L_g,pol(c),i), normalised over i, (n1, D1, NE)."""
    pol = np.arange(spec.d1) % 2
    logits = st.Lmix + spec.mix_share * st.Lglob[pol][None, :, :]
    logits = logits - logits.max(axis=2, keepdims=True)
    w = np.exp(logits)
    return w / w.sum(axis=2, keepdims=True)


def mixture_moments(w: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the mixture Σ_i w_i Poisson(m_i) along the last axis.

    >>> mixture_moments(np.array([0.5, 0.5]), np.array([1.0, 3.0]))
    (np.float64(2.0), np.float64(3.0))
    """
    mean = np.sum(w * m, axis=-1)
    second = np.sum(w * (m + m * m), axis=-1)
    return mean, np.maximum(second - mean * mean, mean)


def calibration(st: State) -> np.ndarray:
    """κ per polarity, (2,): the running mean of the counts over the running mean of the
    forecast unit's uncalibrated count forecasts (active channels, kernels ``_mix``),
    clamped to [1/4, 4]; 1 before any data. Expert 0 forecasts κ x' Δ/τ."""
    num, den = st.odisp[:, 2], st.odisp[:, 3]
    return np.where(den > 0, np.clip(num / np.where(den > 0, den, 1.0), 0.25, 4.0), 1.0)


def overdispersion(st: State) -> np.ndarray:
    """c per polarity, (2,): the running mean of (n − m)² − v over the running mean of m²
    (active channels at horizon ticks, kernels ``_mix``), at least 0."""
    num, den = st.odisp[:, 0], st.odisp[:, 1]
    return np.where(den > 0, np.maximum(num, 0.0) / np.where(den > 0, den, 1.0), 0.0)


def count_forecast(spec: ModelSpec, st: State,
                   x_fore: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(count_mean, count_var) per channel for the next horizon window, (n1, D1) each:
    the mixture of the experts (module docstring), its variance widened by the measured
    overdispersion, var + c_pol m² (what the mixture of Poissons misses: the forecast's own
    error on moving edges)."""
    mean, var = mixture_moments(expert_weights(spec, st),
                                expert_counts(spec, st, x_fore))
    c = overdispersion(st)[np.arange(spec.d1) % 2]
    return mean, var + c[None, :] * mean * mean
