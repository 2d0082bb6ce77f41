"""Loihi integer arithmetic of layer-1 inference: Q formats, quantisers and the NumPy oracle.

``ModelSpec.arithmetic = "loihi"`` runs layer-1 inference (traces, error units, belief
units, the synaptic sums) in the integer semantics below; ``loihi_kernels.py`` is the numba
engine, the ``fixed_pt`` Lava ProcessModels (``augury.lava.procs.fixed``) the Lava side, and
this module the plain NumPy oracle both are tested against (``tick``, one 1 ms tick of the
whole layer, vectorised over columns). Learning stays in float on the host: the float
``State`` holds every inference variable as an exact multiple of its format's step
(value = q / 2^F), and the host-written parameters are quantised from it
(``quantise_params``) whenever they are used.

Q formats (value = integer / 2^F; every state and message saturates at 24 bits signed,
|q| ≤ 2^23 − 1, products and sums are exact in int64 before that):

| variable | symbol | F | range (24 bits) | note |
|---|---|---|---|---|
| weight | w | 6 (``W_FRAC``) | 0 … 255/64 | 8 bits unsigned, round to nearest from float W |
| trace | z | 12 (``Z_FRAC``) | < 2048 events | +4096 per event; 12-bit decay |
| belief, sent belief | μ, μ̂ | 12 (``MU_FRAC``) | < 2048 | |
| prediction x̂ = Σ w μ̂ | x̂ | 18 (``XHAT_FRAC``) | < 32 events | no shift after the sum |
| error, sent error | ε, ε̂ | 10 (``EPS_FRAC``) | < 8192 | |
| drive u = Σ w ε̂ | u | 16 (``U_FRAC``) | < 128 | no shift after the sum |
| thresholds θ_e g √π, θ_μ | | 10, 12 | | floor: \\|Δ\\| > θ ⇔ \\|Δ_q\\| > ⌊θ 2^F⌋ |
| λ | | 16 | | round to nearest |

Gains are an 8-bit mantissa m (128 … 255) and a shift s: ``gain(x, m, s) = (x·m) >> s``
(arithmetic right shift = floor; a left shift when s < 0), from ``quant_gain(c)``, c the
factor between the integer formats. ε = gain((z ≪ 6) − x̂, π); the belief step
κ(u − π_prior μ − λ)/h is gain(g, κ/h) with g in Q.16 and π_prior μ = gain(μ, π_prior).
The trace decays as z ← (z · (4096 − δ)) >> 12, δ = round(4096 (1 − e^{−tick/τ})) (200 for
τ = 20 ms: τ_eff = 19.98 ms). The only floor shifts are inside a gain or the decay, never
after a synaptic sum.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from augury.model.spec import ModelSpec

W_FRAC = 6
Z_FRAC = 12
MU_FRAC = 12
EPS_FRAC = 10
XHAT_FRAC = W_FRAC + MU_FRAC
U_FRAC = W_FRAC + EPS_FRAC
W_MAX_Q = 255
DECAY_BITS = 12
Q_MAX = (1 << 23) - 1
Q_MIN = -(1 << 23)
MANT_BITS = 8


class LoihiConsts(NamedTuple):
    """Spec-wide integer constants (host-written, from ``consts``)."""

    decay_keep: int  # 4096 − δ: z ← (z · decay_keep) >> 12 per tick
    lam: int  # λ in Q.16
    thmu: int  # ⌊θ_μ 2^12⌋
    prior_m: int  # π_prior as a gain Q.12 → Q.16
    prior_s: int
    z_off: int  # a column is silenced when every z_q < z_off (= ⌈z_off 2^12⌉)


def quant_gain(c: float) -> tuple[int, int]:
    """(m, s) with m·2^−s ≈ c, m an 8-bit mantissa in 128 … 255 (round to nearest); (0, 0)
    for c ≤ 0."""
    if not c > 0.0:
        return 0, 0
    f, e = math.frexp(c)  # c = f · 2^e, 0.5 ≤ f < 1
    m = math.floor(f * 256.0 + 0.5)
    if m == 256:
        m, e = 128, e + 1
    return int(m), MANT_BITS - e


def quant_gains(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``quant_gain`` elementwise: (m, s) int64 arrays of c's shape."""
    c = np.asarray(c, np.float64)
    f, e = np.frexp(np.where(c > 0.0, c, 1.0))
    m = np.floor(f * 256.0 + 0.5).astype(np.int64)
    e = e.astype(np.int64) + (m == 256)
    m = np.where(m == 256, 128, m)
    pos = c > 0.0
    return np.where(pos, m, 0), np.where(pos, MANT_BITS - e, 0)


def gain(x: np.ndarray, m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(x·m) >> s, floor (arithmetic shift); (x·m) << −s where s < 0. int64 throughout."""
    p = np.asarray(x, np.int64) * np.asarray(m, np.int64)
    s = np.asarray(s, np.int64)
    return np.where(s >= 0, p >> np.maximum(s, 0), p << np.maximum(-s, 0))


def sat(x: np.ndarray) -> np.ndarray:
    """Saturate to 24 bits signed."""
    return np.clip(x, Q_MIN, Q_MAX)


def to_q(v: np.ndarray, frac: int) -> np.ndarray:
    """Float value(s) → integers in Q.frac (round half up; exact for values on the grid)."""
    return np.floor(np.asarray(v, np.float64) * float(1 << frac) + 0.5).astype(np.int64)


def from_q(q: np.ndarray, frac: int) -> np.ndarray:
    """Integers in Q.frac → float64 values (exact)."""
    return np.asarray(q, np.float64) / float(1 << frac)


def quant_weights(w: np.ndarray) -> np.ndarray:
    """Float weights → 8-bit unsigned integers in steps of 1/64 (round to nearest, clip)."""
    return np.clip(to_q(w, W_FRAC), 0, W_MAX_Q)


def quant_thresholds(thr: np.ndarray, frac: int) -> np.ndarray:
    """θ → ⌊θ 2^frac⌋, so that |Δ_q| > result ⇔ |Δ| > θ for integer Δ_q."""
    return np.floor(np.asarray(thr, np.float64) * float(1 << frac)).astype(np.int64)


def pi_gains(pi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """π (events⁻²) as gains from the Q.18 difference z − x̂ to ε in Q.10."""
    return quant_gains(np.asarray(pi, np.float64) * 2.0 ** (EPS_FRAC - XHAT_FRAC))


def step_gains(kappa: float, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """κ/h as gains from g in Q.16 to the belief step in Q.12 (the float division is the
    host's, as numba's ``kappa * g / h`` is not: the gain is the quantised quotient)."""
    return quant_gains(kappa / np.asarray(h, np.float64) * 2.0 ** (MU_FRAC - U_FRAC))


def decay_keep(spec: ModelSpec) -> int:
    """4096 − δ, δ = round(4096 (1 − exp(−tick_us/τ)))."""
    d = math.floor(4096.0 * (1.0 - math.exp(-spec.tick_us / spec.tau_us)) + 0.5)
    return (1 << DECAY_BITS) - min(max(d, 0), 1 << DECAY_BITS)


def consts(spec: ModelSpec) -> LoihiConsts:
    """The spec-wide integer constants of the twin."""
    pm, ps = quant_gain(spec.pi_prior * 2.0 ** (U_FRAC - MU_FRAC))
    return LoihiConsts(
        decay_keep=decay_keep(spec),
        lam=int(math.floor(spec.sparsity * 2.0**U_FRAC + 0.5)),
        thmu=int(math.floor(spec.theta_mu * 2.0**MU_FRAC)),
        prior_m=pm, prior_s=ps,
        z_off=int(math.ceil(spec.z_off * 2.0**Z_FRAC)),
    )


class QParams(NamedTuple):
    """Host-written per-unit parameters (int64). Shapes: n1 columns, D1 channels, K1 beliefs."""

    w: np.ndarray  # (n1, D1, K1) weights, Q.6
    pi_m: np.ndarray  # (n1, D1) π gain mantissa
    pi_s: np.ndarray  # (n1, D1) π gain shift
    thr: np.ndarray  # (n1, D1) θ_e g √π in Q.10
    kh_wake_m: np.ndarray  # (n1, K1) κ/h gain of a waking column
    kh_wake_s: np.ndarray


class QState(NamedTuple):
    """Layer-1 inference state in its Q formats (int64 arrays; flags bool)."""

    z: np.ndarray  # (n1, D1) Q.12
    xhat: np.ndarray  # (n1, D1) Q.18
    eps: np.ndarray  # (n1, D1) Q.10
    u: np.ndarray  # (n1, K1) Q.16
    mu: np.ndarray  # (n1, K1) Q.12
    mus: np.ndarray  # (n1, K1) Q.12
    kh_m: np.ndarray  # (n1, K1) κ/h gain of each column (h changes when a column wakes)
    kh_s: np.ndarray
    active: np.ndarray  # (n1,) bool


def quantise_params(spec: ModelSpec, w: np.ndarray, pi: np.ndarray, thr: np.ndarray,
                    h_wake: np.ndarray) -> QParams:
    """QParams from float ones: w (n1, D1, K1), π (n1, D1), thresholds θ_e g √π (n1, D1),
    waking curvature h (n1, K1)."""
    pm, ps = pi_gains(pi)
    km, ks = step_gains(spec.kappa, h_wake)
    return QParams(w=quant_weights(w), pi_m=pm, pi_s=ps,
                   thr=quant_thresholds(thr, EPS_FRAC), kh_wake_m=km, kh_wake_s=ks)


def quantise_state(spec: ModelSpec, z: np.ndarray, xhat: np.ndarray, eps: np.ndarray,
                   u: np.ndarray, mu: np.ndarray, mus: np.ndarray, h: np.ndarray,
                   active: np.ndarray) -> QState:
    """QState from the float State's layer-1 arrays (on the grid when the State was run with
    ``arithmetic = "loihi"``; rounded half up otherwise)."""
    km, ks = step_gains(spec.kappa, h)
    return QState(z=to_q(z, Z_FRAC), xhat=to_q(xhat, XHAT_FRAC), eps=to_q(eps, EPS_FRAC),
                  u=to_q(u, U_FRAC), mu=to_q(mu, MU_FRAC), mus=to_q(mus, MU_FRAC),
                  kh_m=km, kh_s=ks, active=np.asarray(active) != 0)


def _sweep(s: QState, qp: QParams, idx: np.ndarray) -> np.ndarray:
    """Error units ``idx`` (bool (n1, D1)): ε = π (z − x̂); send Δε̂ (saturated) where
    |ε − ε̂| > θ. Updates s.eps in place; returns the messages (n1, D1), 0 elsewhere."""
    diff = (s.z << (XHAT_FRAC - Z_FRAC)) - s.xhat
    e = sat(gain(diff, qp.pi_m, qp.pi_s))
    delta = e - s.eps
    fire = idx & (np.abs(delta) > qp.thr)
    msg = np.where(fire, sat(delta), 0)
    s.eps[...] = s.eps + msg
    return msg


def _synsum(w: np.ndarray, msg: np.ndarray, *, up: bool) -> np.ndarray:
    """Σ_d w[d,k] msg[d] (up: (n1, K1) from (n1, D1)) or Σ_k w[d,k] msg[k] (down), exact."""
    return np.einsum("jdk,jd->jk" if up else "jdk,jk->jd", w, msg)


def tick(spec: ModelSpec, qc: LoihiConsts, qp: QParams, s: QState, counts: np.ndarray,
         tt_us: int) -> QState:
    """One tick at stream time ``tt_us`` (a copy of ``s`` is returned; ``s`` is unchanged).

    counts (n1, D1) int: the events of [tt − tick, tt), all at that interval's start. Order:
    per channel the events one at a time (z += 2^12, that channel's error unit checked);
    decay; sweep; then ``relax_steps`` times: u += Σ w Δε̂ (saturated), one belief step
    μ ← max(0, μ + gain(u − π_prior μ − λ, κ/h)), Δμ̂ where |μ − μ̂| > θ_μ, x̂ += Σ w Δμ̂
    (saturated), and a re-sweep before every step but the first. At learning epochs and
    horizon ticks, an active column whose traces are all below z_off is reset (μ = 0; its
    κ/h becomes the waking one).
    """
    s = QState(*[a.copy() for a in s])
    counts = np.asarray(counts, np.int64)
    w = qp.w
    woke = ~s.active & (counts.max(axis=1) > 0)
    s.kh_m[woke] = qp.kh_wake_m[woke]
    s.kh_s[woke] = qp.kh_wake_s[woke]
    s.active[...] = s.active | woke
    uacc = np.zeros_like(s.u)
    for i in range(int(counts.max(initial=0))):
        hit = counts > i
        s.z[...] = np.where(hit, sat(s.z + (1 << Z_FRAC)), s.z)
        uacc += _synsum(w, _sweep(s, qp, hit), up=True)
    s.z[...] = (s.z * qc.decay_keep) >> DECAY_BITS
    act = np.broadcast_to(s.active[:, None], s.z.shape)
    uacc += _synsum(w, _sweep(s, qp, act), up=True)
    for r in range(spec.relax_steps):
        if r:
            uacc = _synsum(w, _sweep(s, qp, act), up=True)
        s.u[...] = sat(s.u + uacc)
        g = s.u - gain(s.mu, qc.prior_m, qc.prior_s) - qc.lam
        s.mu[...] = np.maximum(sat(s.mu + gain(g, s.kh_m, s.kh_s)), 0)
        delta = s.mu - s.mus
        fire = (np.abs(delta) > qc.thmu) & s.active[:, None]
        dmu = np.where(fire, delta, 0)
        s.mus[...] = s.mus + dmu
        s.xhat[...] = sat(s.xhat + _synsum(w, dmu, up=False))
    if tt_us % spec.learn_us == 0 or tt_us % spec.horizon_us == 0:
        off = s.active & (s.z.max(axis=1) < qc.z_off)
        for a in (s.z, s.xhat, s.eps, s.u, s.mu, s.mus):
            a[off] = 0
        s.kh_m[off] = qp.kh_wake_m[off]
        s.kh_s[off] = qp.kh_wake_s[off]
        s.active[off] = False
    return s


def refresh(spec: ModelSpec, qp: QParams, s: QState, h: np.ndarray) -> QState:
    """After the host learned (a learning epoch): with the newly quantised parameters ``qp``
    and curvatures h (n1, K1), every active column's x̂ = Σ w μ̂ and u = Σ w ε̂ are recomputed
    exactly (saturated) and its κ/h gain rewritten (numba's ``_refresh_q``). Returns a copy."""
    s = QState(*[a.copy() for a in s])
    act = s.active
    km, ks = step_gains(spec.kappa, h)
    s.xhat[act] = sat(_synsum(qp.w, s.mus, up=False))[act]
    s.u[act] = sat(_synsum(qp.w, s.eps, up=True))[act]
    s.kh_m[act] = km[act]
    s.kh_s[act] = ks[act]
    return s
