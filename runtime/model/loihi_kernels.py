"""Numba kernels of the integer twin (``ModelSpec.arithmetic = "loihi"``): layer-1 inference
in Loihi's integer semantics, the rest of the network (learning, forecast, read-out) as in
``kernels.py``.

The semantics and Q formats are those of ``loihi_int`` (its docstring has the table; its
``tick`` is the NumPy oracle these kernels are tested against, exact integer equality). The
float ``State`` is kept as the only storage: every layer-1 inference variable is an exact
multiple of its format's step, converted to int64 where it is used (``_q``) and written
back exactly (``_f``), so learning, the forecast units, the read-out and checkpoints read it
unchanged. The host-written parameters are quantised from the float State where they are
used, by the same rules as ``loihi_int`` (weights to 8 bits in steps of 1/64, π and κ/h to
8-bit mantissa gains, thresholds floored in ε's format): learning stays float.

Only what the twin needs is here; the spec guarantees ``layers = 1``, ``clocked_input`` and
``settle = 0`` (``ModelSpec`` refuses anything else with ``arithmetic = "loihi"``), so every
active column decays, sweeps and relaxes at every tick. Accumulation order inside a tick
does not matter in integers: u and x̂ take the exact sum of a relaxation step's spikes and
saturate once per step, as Lava's Dense and the receiving ProcessModel do.
"""

from __future__ import annotations

import math

import numpy as np

from augury.model.kernels import (
    Params,
    _activate,
    _catch_up,
    _curv1,
    _inline,
    _kernel,
    _learn,
    _thresholds,
    _tick_tail,
    _transpose_w1,
)
from augury.model.loihi_int import (
    DECAY_BITS,
    EPS_FRAC,
    MU_FRAC,
    Q_MAX,
    Q_MIN,
    U_FRAC,
    W_FRAC,
    W_MAX_Q,
    XHAT_FRAC,
    Z_FRAC,
    LoihiConsts,
)
from augury.model.state import (
    C_DOWN,
    C_EVENTS,
    C_SYNOPS,
    C_TICKS,
    C_UP,
    K_NACTIVE,
    K_NEXT,
    K_TNOW,
    Scratch,
    State,
)

_WS = float(1 << W_FRAC)
_ZS = float(1 << Z_FRAC)
_XS = float(1 << XHAT_FRAC)
_ES = float(1 << EPS_FRAC)
_US = float(1 << U_FRAC)
_MS = float(1 << MU_FRAC)


@_inline
def _q(v: float, scale: float) -> int:
    """A float on the grid 1/scale → its integer (round half up: exact on the grid)."""
    return np.int64(math.floor(v * scale + 0.5))


@_inline
def _sat(x: int) -> int:
    return min(max(x, Q_MIN), Q_MAX)


@_inline
def _gain(x: int, m: int, s: int) -> int:
    """(x·m) >> s (floor), or << −s."""
    p = x * m
    return p >> s if s >= 0 else p << (-s)


@_inline
def _qgain(c: float) -> tuple[int, int]:
    """``loihi_int.quant_gain``: (m, s), m in 128 … 255, m·2^−s ≈ c; (0, 0) for c ≤ 0."""
    if not c > 0.0:
        return np.int64(0), np.int64(0)
    f, e = math.frexp(c)
    m = np.int64(math.floor(f * 256.0 + 0.5))
    if m == 256:
        m = np.int64(128)
        e += 1
    return m, np.int64(8 - e)


@_inline
def _wq(w: float) -> int:
    """8-bit weight in steps of 1/64 (round to nearest, clip to 0 … 255)."""
    return min(max(_q(w, _WS), 0), W_MAX_Q)


@_inline
def _check_q(st: State, sc: Scratch, p: Params, j: int, d: int) -> int:
    """Error unit (j, d): ε = gain((z ≪ 6) − x̂, π); if |ε − ε̂| > θ send Δε̂ (saturated):
    ε̂ += Δε̂ and u_j += w[d,:] Δε̂ (exact; u saturates at the next belief step). Returns 1
    if it fired."""
    diff = (_q(st.z1[j, d], _ZS) << (XHAT_FRAC - Z_FRAC)) - _q(st.xhat1[j, d], _XS)
    m, s = _qgain(st.pi1[j, d] * 2.0 ** (EPS_FRAC - XHAT_FRAC))
    e = _sat(_gain(diff, m, s))
    eq = _q(st.eps1[j, d], _ES)
    delta = e - eq
    thr = np.int64(math.floor(sc.thr1[j, d] * _ES))
    if abs(delta) > thr:
        msg = _sat(delta)
        st.eps1[j, d] = (eq + msg) / _ES
        w = j if p.per_col else 0
        for k in range(p.k1):
            st.u1[j, k] = (_q(st.u1[j, k], _US) + _wq(st.W1[w, d, k]) * msg) / _US
        return 1
    return 0


@_kernel
def _sweep_q(st: State, sc: Scratch, p: Params, j: int) -> None:
    """Every error unit of column j (``_check_q``)."""
    n = 0
    for d in range(p.d1):
        n += _check_q(st, sc, p, j, d)
    if n:
        st.nsp1[j] += n
    st.counters[C_UP] += n
    st.counters[C_SYNOPS] += n * p.k1


@_kernel
def _decay_q(st: State, p: Params, qc: LoihiConsts, j: int, t: int) -> None:
    """z ← (z · (4096 − δ)) >> 12 once per tick from the column's anchor to t."""
    n = (t - st.tcol[j]) // p.tick_us
    if n > 0:
        for d in range(p.d1):
            z = _q(st.z1[j, d], _ZS)
            for _ in range(n):
                z = (z * qc.decay_keep) >> DECAY_BITS
            st.z1[j, d] = z / _ZS
    st.tcol[j] = t


@_kernel
def _relax_q(st: State, p: Params, qc: LoihiConsts, j: int) -> None:
    """One belief step of column j: u saturates, μ ← max(0, μ + gain(u − π_prior μ − λ, κ/h)),
    Δμ̂ where |μ − μ̂| > θ_μ, x̂ += Σ w Δμ̂ (exact, then saturated)."""
    w = j if p.per_col else 0
    for k in range(p.k1):
        u = _sat(_q(st.u1[j, k], _US))
        st.u1[j, k] = u / _US
        mu = _q(st.mu1[j, k], _MS)
        g = u - _gain(mu, qc.prior_m, qc.prior_s) - qc.lam
        m, s = _qgain(p.kappa / st.h1[j, k] * 2.0 ** (MU_FRAC - U_FRAC))
        st.mu1[j, k] = max(_sat(mu + _gain(g, m, s)), 0) / _MS
    nd = 0
    for k in range(p.k1):
        mu = _q(st.mu1[j, k], _MS)
        mus = _q(st.mus1[j, k], _MS)
        delta = mu - mus
        if abs(delta) > qc.thmu:
            st.mus1[j, k] = st.mu1[j, k]
            for d in range(p.d1):
                st.xhat1[j, d] = (_q(st.xhat1[j, d], _XS) + _wq(st.W1[w, d, k]) * delta) / _XS
            nd += 1
    if nd:
        for d in range(p.d1):
            st.xhat1[j, d] = _sat(_q(st.xhat1[j, d], _XS)) / _XS
        st.counters[C_DOWN] += nd
        st.counters[C_SYNOPS] += nd * p.d1
    st.busy1[j] = 1  # settle = 0: an active column always relaxes


@_kernel
def _refresh_q(st: State, sc: Scratch, p: Params) -> None:
    """After learning: x̂ = Σ w μ̂ and u = Σ w ε̂ in the integer formats (the new quantised
    weights), curvatures h in float (host), for every active column."""
    for j in range(st.active.shape[0]):
        if st.active[j] == 0:
            continue
        w = j if p.per_col else 0
        for d in range(p.d1):
            acc = np.int64(0)
            for k in range(p.k1):
                acc += _wq(st.W1[w, d, k]) * _q(st.mus1[j, k], _MS)
            st.xhat1[j, d] = _sat(acc) / _XS
        for k in range(p.k1):
            acc = np.int64(0)
            for d in range(p.d1):
                acc += _wq(st.W1[w, d, k]) * _q(st.eps1[j, d], _ES)
            st.u1[j, k] = _sat(acc) / _US
        _curv1(st, sc, p, j)
        st.busy1[j] = 1


@_kernel
def _tick_q(st: State, sc: Scratch, p: Params, qc: LoihiConsts, tt: int,
            learn: bool) -> None:
    """One tick at tt: every active column decays, sweeps and takes relax_steps belief
    steps (re-sweeping before each but the first); then learning (float, on the host's
    side) and the clocked work shared with the float engine (``kernels._tick_tail``)."""
    st.counters[C_TICKS] += 1
    n1 = st.active.shape[0]
    for j in range(n1):
        if st.active[j]:
            _decay_q(st, p, qc, j, tt)
            _sweep_q(st, sc, p, j)
            for step in range(p.relax_steps):
                if step:
                    _sweep_q(st, sc, p, j)
                _relax_q(st, p, qc, j)
    if learn and tt % p.learn_us == 0:
        _learn(st, sc, p)
        _refresh_q(st, sc, p)
    _tick_tail(st, sc, p, tt, learn)


@_inline
def _event_q(st: State, sc: Scratch, p: Params, qc: LoihiConsts, t: int, x: int, y: int,
             pol: int, learn: bool) -> None:
    """One event at its tick's start t: z += 2^12 (saturated), then its error unit."""
    j = sc.jy[y] + sc.jx[x]
    d = sc.dy[y] + sc.dx[x] + pol
    if st.active[j] == 0:
        _activate(st, sc, p, j, t, learn)
    st.busy1[j] = 1
    if t > st.tcol[j]:  # not reached with settle = 0 (every active column ticks)
        _decay_q(st, p, qc, j, t)
    st.z1[j, d] = _sat(_q(st.z1[j, d], _ZS) + (1 << Z_FRAC)) / _ZS
    st.ncnt[j, d] += 1
    n = _check_q(st, sc, p, j, d)
    st.counters[C_UP] += n
    st.counters[C_SYNOPS] += n * p.k1
    st.nsp1[j] += n


@_inline
def _advance_q(st: State, sc: Scratch, p: Params, qc: LoihiConsts, t: int,
               learn: bool) -> None:
    """``kernels._advance`` with the integer tick."""
    while st.clock[K_NEXT] <= t:
        if st.clock[K_NACTIVE] == 0:
            if st.mixage[2] < 0:
                st.mixage[2] = st.clock[K_NEXT]
            st.clock[K_NEXT] = (t // p.tick_us + 1) * p.tick_us
            break
        _tick_q(st, sc, p, qc, st.clock[K_NEXT], learn)
        st.clock[K_NEXT] += p.tick_us


@_kernel
def run_batch(st: State, sc: Scratch, p: Params, qc: LoihiConsts, t: np.ndarray,
              x: np.ndarray, y: np.ndarray, pol: np.ndarray, t_end: int, learn: bool) -> None:
    """``kernels.run_batch`` in the integer twin: sorted events (t µs, x, y px, pol 0/1),
    each counted at its tick's start, then every tick T ≤ t_end."""
    _transpose_w1(st, sc)
    _thresholds(st, sc, p)
    for i in range(t.shape[0]):
        ti = (t[i] // p.tick_us) * p.tick_us
        _advance_q(st, sc, p, qc, ti, learn)
        _event_q(st, sc, p, qc, ti, x[i], y[i], pol[i], learn)
    st.counters[C_EVENTS] += t.shape[0]
    _advance_q(st, sc, p, qc, t_end, learn)
    _catch_up(st, sc, p, t_end, learn, True)
    st.clock[K_TNOW] = t_end
