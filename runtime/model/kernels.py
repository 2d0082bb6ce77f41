"""Numba kernels: the event-driven step of the predictive-coding network over a batch.

Everything here is a module-level ``@njit(cache=True, nogil=True)`` function (``_kernel``)
over the arrays of ``State`` (see state.py) and the scalars of ``Params``; ``reference.py``
holds the same equations in plain NumPy, and docs/model.md derives them. The GIL is released
while a batch runs (other threads, e.g. a reader decoding the next chunk, keep going); a
``Network`` itself must be used from one thread at a time (the daemon confines it, and the
control requests that touch it, to its engine thread). Per input event (t µs, pooled
channel d of column j) only the trace and that channel's error unit are touched:

    z_jd ← z_jd + e^{(t − t_j)/τ}     (traces anchored at t_j, the column's last tick: lazy)
    ε = π_jd (z_jd e^{−(t − t_j)/τ} − x̂_jd);
    if |ε − ε̂_jd| > θ_e √π_jd:  u_j += W[d,:] (ε − ε̂_jd), ε̂_jd = ε

(the whole column is decayed, z_j ← z_j e^{−(T − t_j)/τ}, t_j ← T, only at its ticks T)

At absolute stream times T = m · tick_us (a tick runs after every event with t < T and
before every event with t ≥ T, so any split of a stream into batches gives the same
state) every active column is decayed and swept, then busy columns take up to
relax_steps belief steps

    μ_jk ← max(0, μ_jk + κ (u_jk − ε_own,jk − λ) / h_jk),
    if |μ_jk − μ̂_jk| > θ_μ:  x̂_j += W[:,k] (μ_jk − μ̂_jk), μ̂_jk = μ_jk      (top-down spike)

with the same one level up (ε2 = π2 (μ̂1 − W2 μ̂2)). Every learn_us the precisions and
weights learn (Bayesian synapse, ``_bayes_update``); every horizon_us the temporal
weights (A, g, ρ, R), the Δ-ahead forecast and its error variance, and the surprise baseline.

The kernels never allocate; they are compiled with NRT (reference counting) off and the
per-event helpers inlined at the Numba-IR level, because passing the 40-array state tuple
through ordinary calls cost ~2 µs per event in reference-count traffic and struct copies
(measured: 2.5 µs → 0.3 µs per event).

Cheaper forms of the same arithmetic (every one leaves the state bit-identical; the parity
tests compare against ``reference.py``): geometry comes from tables built once in
``Scratch`` (pixel → column and channel, layer-1 → layer-2 column, layer-2 → children)
instead of integer divisions per event and per spike; the decay factor exp(−Δt/τ) comes
from a table over Δt ≤ tick_us filled with the same libm exp; the layer-2 thresholds
θ_e √π2 are kept in ``sc.thr2`` like the layer-1 ones; the relaxation runs layer-2 block
by block (``_relax_block``), which is the same computation because no spike leaves a
block; the horizon tick reads neighbours' traces from a zero-padded map of the pooled
grid (``_to_map``) instead of recomputing neighbour indices; spike counters are summed in
locals and added once per column step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from augury.model.linsolve import solve_into
from augury.model.spec import ModelSpec
from augury.model.state import (
    C_DOWN,
    C_EVENTS,
    C_SYNOPS,
    C_TICKS,
    C_UP,
    K_NACTIVE,
    K_NEXT,
    K_TNOW,
    NF,
    Scratch,
    State,
)

MIX_FLOOR = 0.01
"""Count floor m₀ (events per channel and window) of the rate experts' log-likelihoods: the
same as ``scoring.FLOOR_COUNT``, with which predictions are scored."""

SH_FORGET = 0.999
"""Per-window forgetting of the shared linear forecaster's information (memory ≈ 10 s)."""
SH_RIDGE = 1e-6
"""Ridge added to its information matrix in the solve (numerical safety only)."""
SH_IRLS_AFTER = 8
"""``shared_fit = "poisson"``: windows of least squares before the Poisson reweighting starts
(a young fit's predictions are poor weights; measured on the sub-0.1 s clips)."""

_solve = njit(_nrt=False, cache=True, nogil=True)(solve_into)

OD_RATE = 0.05
"""Per-horizon-tick rate of the overdispersion statistics ``odisp`` (≈ 20 horizons of memory:
the forecast's error variance changes with the scene's motion, faster than its precisions)."""

_kernel = njit(_nrt=False, cache=True, nogil=True)
"""Decorator of every kernel (no allocation inside, so no reference counting needed)."""
_inline = njit(_nrt=False, cache=True, nogil=True, inline="always")
"""Decorator of the small per-event helpers (inlined at the Numba-IR level)."""


class Params(NamedTuple):
    """Scalars read by the kernels (built from a ModelSpec by ``make_params``)."""

    pool: int
    column: int
    ncx: int  # layer-1 columns per row
    ncy: int
    n2x: int  # layer-2 columns per row
    k1: int
    k2: int
    d1: int
    d2: int
    layers: int
    tau_us: float
    tick_us: int
    horizon_us: int
    theta_e: float
    theta_mu: float
    kappa: float
    sparsity: float
    pi_prior: float
    q: float
    alpha: float
    v0: float
    pi_min: float
    pi_max: float
    w_max: float
    a_q: float
    z_off: float
    beta: float
    qs: float  # fixed-point scale (0: float)
    per_col: bool
    settle: float
    clocked: bool  # events take their tick's start time (``ModelSpec.clocked_input``)
    curv_mix: float
    sr: bool  # stochastic rounding of learned weights (fixed point only)
    seed: int
    homeo_rate: float
    homeo_eta: float
    relax_steps: int
    learn_us: int
    fc_hier: bool  # the forecast units' gain g on the hierarchy's forecast learns
    fc_lat: bool  # their lateral weights R learn
    ns: int  # number of rate experts' traces (len(mix_taus_us))
    mix_gamma: float  # per-horizon discount of the experts' log-evidence, exp(−Δ/memory)
    mix_share: float
    m0: float  # count floor of the experts' Poisson log-likelihoods (scoring.FLOOR_COUNT)
    od_rate: float  # rate of the overdispersion statistics per horizon tick
    mix_kmax: int  # silent windows the rate experts still process in one silence
    msh: bool  # the shared linear forecaster is an expert
    sh_forget: float  # its per-window forgetting factor (recursive least squares)
    sh_c: float  # > 0: Poisson weights 1 / (w·x + sh_c) after SH_IRLS_AFTER windows; 0: none
    plain_rate: float  # > 0: W1, W2 learn at this plain rate (Bayesian synapse off)
    w_soft: bool  # W1, W2: soft bounds (updates scaled by the distance to the bound)
    w_norm: float  # Euclidean norm every dictionary atom is scaled to after learning (0: off)


def make_params(spec: ModelSpec) -> Params:
    r1, c1 = spec.grid1
    _, c2 = spec.grid2
    return Params(
        pool=spec.pool, column=spec.column, ncx=c1, ncy=r1, n2x=c2, k1=spec.k1, k2=spec.k2,
        d1=spec.d1, d2=spec.d2, layers=spec.layers, tau_us=float(spec.tau_us),
        tick_us=spec.tick_us, horizon_us=spec.horizon_us, theta_e=spec.theta_e,
        theta_mu=spec.theta_mu, kappa=spec.kappa, sparsity=spec.sparsity,
        pi_prior=spec.pi_prior, q=spec.q, alpha=spec.alpha, v0=spec.v0, pi_min=spec.pi_min,
        pi_max=spec.pi_max, w_max=spec.w_max, a_q=spec.a_q, z_off=spec.z_off,
        beta=spec.baseline_beta, qs=spec.q_scale, per_col=spec.per_column_weights,
        relax_steps=spec.relax_steps, learn_us=spec.learn_us, settle=spec.settle,
        clocked=spec.clocked_input,
        curv_mix=spec.curv_mix, homeo_rate=spec.homeo_rate, homeo_eta=spec.homeo_eta,
        sr=spec.stochastic_rounding and spec.fixed_point, seed=spec.seed,
        fc_hier=spec.forecast_hier, fc_lat=spec.forecast_lateral, ns=len(spec.mix_taus_us),
        mix_gamma=math.exp(-spec.horizon_us / spec.mix_memory_us), mix_share=spec.mix_share,
        m0=MIX_FLOOR, od_rate=OD_RATE,
        mix_kmax=-(-4 * max(spec.mix_taus_us, default=0) // spec.horizon_us),
        msh=spec.mix_shared, sh_forget=SH_FORGET, w_norm=spec.w_norm,
        sh_c=spec.shared_floor if spec.shared_fit == "poisson" else 0.0,
        w_soft=spec.w_soft_bounds, plain_rate=spec.plain_rate,
    )


@_inline
def qz(x: float, qs: float) -> float:
    """Round to the Q-format grid 1/qs (round half up) when qs > 0, else identity."""
    if qs > 0.0:
        return math.floor(x * qs + 0.5) / qs
    return x


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@_inline
def _mix64(x: np.uint64) -> np.uint64:
    """SplitMix64 finaliser: a well-mixed 64-bit hash of x (wrapping uint64 arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@_inline
def _salt(p: Params, ticks: int, arr: int) -> int:
    """Random stream of one weight array's update at one tick (≥ 0), or −1 without
    stochastic rounding. A hash of (seed, ticks run, array id): the same for any split of
    the stream into batches."""
    if not (p.sr and p.qs > 0.0):
        return -1
    k = _mix64(np.uint64(ticks) * np.uint64(8) + np.uint64(arr))
    return np.int64(_mix64(np.uint64(p.seed) ^ k) >> np.uint64(1))


@_inline
def qsr(x: float, qs: float, salt: int, n: int) -> float:
    """Round x to the grid 1/qs stochastically (up with probability equal to the remainder,
    so unbiased) using the n-th number of stream ``salt``; round half up if salt < 0."""
    if salt < 0:
        return qz(x, qs)
    y = x * qs
    f = math.floor(y)
    z = _mix64(np.uint64(salt) ^ _mix64(np.uint64(n)))
    u = np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    return (f + 1.0) / qs if u < y - f else f / qs


@_inline
def _child(p: Params, big: int, slot: int) -> int:
    """Layer-1 column feeding layer-2 input ``slot`` of column ``big`` (−1 if off-grid)."""
    quad = slot // p.k1
    cy = 2 * (big // p.n2x) + quad // 2
    cx = 2 * (big % p.n2x) + quad % 2
    if cx >= p.ncx or cy >= p.ncy:
        return -1
    return cy * p.ncx + cx


@_inline
def _parent(p: Params, j: int) -> tuple[int, int]:
    """(layer-2 column, first slot) of layer-1 column j."""
    cy = j // p.ncx
    cx = j % p.ncx
    big = (cy // 2) * p.n2x + cx // 2
    return big, ((cy % 2) * 2 + cx % 2) * p.k1


@_inline
def _decay(st: State, sc: Scratch, p: Params, j: int, t: int) -> None:
    """z_j ← z_j · exp(−(t − t_j)/τ), closed form from the column's last update time.

    An active column is decayed whenever it is polled (every tick while it gets input or
    relaxes, at every learning epoch and horizon tick otherwise), so t − t_j ≤
    min(learn_us, horizon_us) and the factor comes from the table ``sc.decay`` (filled
    with the same libm exp: bit-identical).
    """
    z1 = st.z1
    tcol = st.tcol
    dt = t - tcol[j]
    if dt > 0:
        if dt < sc.decay.shape[0]:
            f = sc.decay[dt]
        else:
            f = math.exp(-dt / p.tau_us)
        if p.qs > 0.0:
            for d in range(p.d1):
                z1[j, d] = qz(z1[j, d] * f, p.qs)
        else:
            for d in range(p.d1):
                z1[j, d] = z1[j, d] * f
        tcol[j] = t


@_kernel
def _curv1(st: State, sc: Scratch, p: Params, j: int) -> None:
    """h_jk = prior_k + Σ_d π_jd W_dk ((1 − γ) W_dk + γ Σ_l W_dl), γ = curv_mix.

    γ = 1 is the classic diagonal majorizer of the belief Hessian (every step descends);
    γ = 0 the Hessian diagonal itself (Jacobi, which over-steps when beliefs overlap).
    """
    w = j if p.per_col else 0
    for d in range(p.d1):
        s = 0.0
        for k in range(p.k1):
            s += st.W1[w, d, k]
        sc.rs[d] = s
    big = sc.big1[j]
    slot = sc.slot1[j]
    h1 = st.h1
    for k in range(p.k1):
        h1[j, k] = p.pi_prior if p.layers == 1 else st.pi2[big, slot + k]
    g = p.curv_mix
    for d in range(p.d1):  # loops interchanged: each h_k still sums over d in order
        for k in range(p.k1):
            wk = st.W1[w, d, k]
            h1[j, k] += st.pi1[j, d] * wk * ((1.0 - g) * wk + g * sc.rs[d])


@_kernel
def _curv2(st: State, sc: Scratch, p: Params, big: int) -> None:
    """h2_k = π_prior + Σ_s π2_s W2_sk ((1 − γ) W2_sk + γ Σ_l W2_sl), as ``_curv1``."""
    w = big if p.per_col else 0
    for s in range(p.d2):
        r = 0.0
        for k in range(p.k2):
            r += st.W2[w, s, k]
        sc.rs[s] = r
    g = p.curv_mix
    for k in range(p.k2):
        h = p.pi_prior
        for s in range(p.d2):
            wk = st.W2[w, s, k]
            h += st.pi2[big, s] * wk * ((1.0 - g) * wk + g * sc.rs[s])
        st.h2[big, k] = h


@_inline
def _check2(st: State, sc: Scratch, p: Params, big: int, slot: int) -> None:
    """Sigma-delta layer-2 error unit: ε2 = π2 (μ̂1 − pred2); spike if it moved > θ_e."""
    j = _child(p, big, slot)
    x = st.mus1[j, slot % p.k1] if j >= 0 else 0.0
    n = _check2x(st, sc, p, big, slot, j, x)
    st.counters[C_UP] += n
    st.counters[C_SYNOPS] += n * p.k2


@_inline
def _check2x(st: State, sc: Scratch, p: Params, big: int, slot: int, j: int,
             x: float) -> int:
    """``_check2`` with its input known: x = μ̂1 of child j (−1: off the grid, x = 0).

    Returns 1 if the unit spiked (the caller counts it: counters stay out of the loops).
    """
    eps2 = st.eps2
    u2 = st.u2
    W2 = st.W2
    e = qz(st.pi2[big, slot] * (x - st.pred2[big, slot]), p.qs)
    delta = e - eps2[big, slot]
    if abs(delta) > sc.thr2[big, slot]:
        eps2[big, slot] = e
        w = big if p.per_col else 0
        for k in range(p.k2):
            u2[big, k] = qz(u2[big, k] + W2[w, slot, k] * delta, p.qs)
        st.busy2[big] = 1
        if j >= 0:
            st.busy1[j] = 1  # the child's own-error input changed
        return 1
    return 0


@_inline
def _check1(st: State, sc: Scratch, p: Params, j: int, d: int, z: float) -> None:
    """Sigma-delta error unit d of column j with its trace now z: ε = π (z − x̂); spike if it
    moved > θ_e √π."""
    e = qz(st.pi1[j, d] * (z - st.xhat1[j, d]), p.qs)
    delta = e - st.eps1[j, d]
    if abs(delta) > sc.thr1[j, d]:
        st.eps1[j, d] = e
        w = j if p.per_col else 0
        for k in range(p.k1):
            st.u1[j, k] = qz(st.u1[j, k] + st.W1[w, d, k] * delta, p.qs)
        st.counters[C_UP] += 1
        st.counters[C_SYNOPS] += p.k1
        st.busy1[j] = 1
        st.nsp1[j] += 1


@_inline
def _sweep1(st: State, sc: Scratch, p: Params, j: int) -> None:
    """Sigma-delta error units of column j: ε = π (z − x̂), spike on change > θ_e √π."""
    thr1 = sc.thr1
    pi1 = st.pi1
    z1 = st.z1
    xhat1 = st.xhat1
    eps1 = st.eps1
    u1 = st.u1
    W1 = st.W1
    w = j if p.per_col else 0
    n = 0
    for d in range(p.d1):
        e = qz(pi1[j, d] * (z1[j, d] - xhat1[j, d]), p.qs)
        delta = e - eps1[j, d]
        if abs(delta) > thr1[j, d]:
            eps1[j, d] = e
            if p.qs > 0.0:
                for k in range(p.k1):
                    u1[j, k] = qz(u1[j, k] + W1[w, d, k] * delta, p.qs)
            else:
                for k in range(p.k1):
                    u1[j, k] = u1[j, k] + W1[w, d, k] * delta
            n += 1
    if n:
        st.busy1[j] = 1
        st.nsp1[j] += n
    st.counters[C_UP] += n
    st.counters[C_SYNOPS] += n * p.k1


@_inline
def _relax1(st: State, sc: Scratch, p: Params, j: int) -> None:
    """One belief step in column j, then top-down sigma-delta spikes of changed beliefs.

    The column stays busy while any belief moved by ≥ settle; otherwise it rests until an
    incoming spike (or a weight change) wakes it.
    """
    mu1 = st.mu1
    mus1 = st.mus1
    u1 = st.u1
    h1 = st.h1
    eps2 = st.eps2
    xhat1 = st.xhat1
    big = sc.big1[j]
    slot = sc.slot1[j]
    moved = 0.0
    for k in range(p.k1):
        if p.layers == 1:
            own = p.pi_prior * mu1[j, k]
        else:
            own = eps2[big, slot + k]
        g = u1[j, k] - own - p.sparsity
        m = qz(max(mu1[j, k] + p.kappa * g / h1[j, k], 0.0), p.qs)
        moved = max(moved, abs(m - mu1[j, k]))
        mu1[j, k] = m
    st.busy1[j] = 1 if moved >= p.settle else 0
    w = j if p.per_col else 0
    W1T = sc.W1T
    nd = 0
    nu = 0
    for k in range(p.k1):
        delta = mu1[j, k] - mus1[j, k]
        if abs(delta) > p.theta_mu:
            mus1[j, k] = mu1[j, k]
            if p.qs > 0.0:
                for d in range(p.d1):
                    xhat1[j, d] = qz(xhat1[j, d] + W1T[w, k, d] * delta, p.qs)
            else:
                for d in range(p.d1):
                    xhat1[j, d] = xhat1[j, d] + W1T[w, k, d] * delta
            nd += 1
            if p.layers == 2:
                nu += _check2x(st, sc, p, big, slot + k, j, mus1[j, k])
    if nd:
        sc.xdirty[j] = 1
        st.counters[C_DOWN] += nd
        st.counters[C_UP] += nu
        st.counters[C_SYNOPS] += nd * p.d1 + nu * p.k2


@_inline
def _relax2(st: State, sc: Scratch, p: Params, big: int) -> None:
    """One layer-2 belief step; top-down spikes update pred2 and re-check its error units."""
    mu2 = st.mu2
    mus2 = st.mus2
    u2 = st.u2
    h2 = st.h2
    pred2 = st.pred2
    W2 = st.W2
    moved = 0.0
    for k in range(p.k2):
        g = u2[big, k] - p.pi_prior * mu2[big, k] - p.sparsity
        m = qz(max(mu2[big, k] + p.kappa * g / h2[big, k], 0.0), p.qs)
        moved = max(moved, abs(m - mu2[big, k]))
        mu2[big, k] = m
    st.busy2[big] = 1 if moved >= p.settle else 0
    w = big if p.per_col else 0
    nd = 0
    for k in range(p.k2):
        delta = mu2[big, k] - mus2[big, k]
        if abs(delta) > p.theta_mu:
            mus2[big, k] = mu2[big, k]
            for s in range(p.d2):
                pred2[big, s] = qz(pred2[big, s] + W2[w, s, k] * delta, p.qs)
            nd += 1
    if nd:
        nu = 0
        for quad in range(4):
            j = sc.kids[big, quad]
            for k in range(p.k1):
                x = st.mus1[j, k] if j >= 0 else 0.0
                nu += _check2x(st, sc, p, big, quad * p.k1 + k, j, x)
        st.counters[C_DOWN] += nd
        st.counters[C_UP] += nu
        st.counters[C_SYNOPS] += nd * p.d2 + nu * p.k2


@_inline
def _relax_column(st: State, sc: Scratch, p: Params, j: int, step: int) -> None:
    """Relaxation step ``step`` of busy column j: re-sweep its errors if x̂ moved, then step."""
    if step > 0 and sc.xdirty[j]:  # else z and x̂ are unchanged: a no-op
        _sweep1(st, sc, p, j)
    sc.xdirty[j] = 0
    _relax1(st, sc, p, j)


@_kernel
def _relax_block(st: State, sc: Scratch, p: Params, big: int) -> None:
    """The relax_steps steps of layer-2 column ``big`` and its ≤ 4 children, block by block.

    Within a step, children (in increasing column index) go before their parent, as in a
    sweep over the whole grid: every spike of the relaxation stays inside one such block
    (children only feed their own parent, which only feeds back its children), so running
    the blocks one after another gives the same state bit for bit as running each step
    over the whole grid, while the block's arrays stay in cache for all its steps.
    """
    kids = sc.kids
    for step in range(p.relax_steps):
        any_busy = False
        for quad in range(4):
            j = kids[big, quad]
            if j >= 0 and st.active[j] and st.busy1[j]:
                any_busy = True
                _relax_column(st, sc, p, j, step)
        if st.busy2[big]:
            any_busy = True
            _relax2(st, sc, p, big)
        if not any_busy:
            break


@_kernel
def _activate(st: State, sc: Scratch, p: Params, j: int, t: int, learn: bool) -> None:
    """Column j wakes at t µs (before its event counts): if the whole sensor was silent,
    the rate experts first see the silent windows end up to t (``_catch_up``)."""
    if st.clock[K_NACTIVE] == 0:
        _catch_up(st, sc, p, t, learn, False)
    st.active[j] = 1
    st.busy1[j] = 1
    st.tcol[j] = t
    st.clock[K_NACTIVE] += 1
    if p.layers == 2:
        big, _ = _parent(p, j)
        st.nact2[big] += 1
        _curv2(st, sc, p, big)
    _curv1(st, sc, p, j)


@_inline
def _event(st: State, sc: Scratch, p: Params, t: int, x: int, y: int, pol: int,
           learn: bool) -> None:
    """Process one input event at t µs, pixel (x, y), polarity pol.

    The column's traces stay anchored at t_j (its last tick, or its activation): only the
    event's own channel is touched, z_jd ← z_jd + e^{(t − t_j)/τ}, and its error unit reads
    the decayed value z_jd e^{−(t − t_j)/τ}. O(1) per event instead of O(D1).
    """
    j = sc.jy[y] + sc.jx[x]
    d = sc.dy[y] + sc.dx[x] + pol
    if st.active[j] == 0:
        _activate(st, sc, p, j, t, learn)
    st.busy1[j] = 1
    dt = t - st.tcol[j]
    if dt < sc.decay.shape[0]:
        g = sc.grow[dt]
        f = sc.decay[dt]
    else:  # not reached: a column is polled at least every min(learn_us, horizon_us)
        g = math.exp(dt / p.tau_us)
        f = math.exp(-dt / p.tau_us)
    zs = qz(st.z1[j, d] + g, p.qs)
    st.z1[j, d] = zs
    st.ncnt[j, d] += 1  # the window's count, for the rate experts (``_mix``)
    _check1(st, sc, p, j, d, qz(zs * f, p.qs))


@_kernel
def _bayes_update(W: np.ndarray, S: np.ndarray, G: np.ndarray, Ic: np.ndarray, w: int,
                  q: float, lo: float, hi: float, qs: float, salt: int,
                  soft: bool = True, plain: float = 0.0) -> None:
    """Bayesian synapse (diagonal Kalman filter) with soft bounds [lo, hi].

    ``plain`` > 0 switches the Bayesian synapse off (a control for experiments): every
    weight then learns at that plain rate (ΔW = plain · G) and S is left as it is.

    s² ← 1/(1/(s² + q) + I);  ΔW = s² G · (hi − W)/(hi − lo) if G > 0 else (W − lo)/(hi − lo)
    where G = Σ ε_post · r_pre and I = Σ π_post · r_pre · Σ r (majorized information).
    In fixed point, s² and W are rounded stochastically when salt ≥ 0 (``_salt``), the
    numbers indexed by each weight's flat index, else half up.
    """
    span = hi - lo
    for a in range(W.shape[1]):
        for b in range(W.shape[2]):
            n = 2 * ((w * W.shape[1] + a) * W.shape[2] + b)
            if plain > 0.0:
                s2 = plain
            else:
                s2 = 1.0 / (1.0 / (S[w, a, b] + q) + Ic[a, b])
                S[w, a, b] = qsr(s2, qs, salt, n)
            dw = s2 * G[a, b]
            wv = W[w, a, b]
            if not soft:
                pass
            elif dw > 0.0:
                dw *= (hi - wv) / span
            else:
                dw *= (wv - lo) / span
            W[w, a, b] = qsr(min(max(wv + dw, lo), hi), qs, salt, n + 1)


@_inline
def _norm_atoms(W: np.ndarray, w: int, target: float, qs: float) -> None:
    """Scale every atom W[w, :, k] to Euclidean norm ``target`` (synaptic scaling of belief
    unit k's outgoing weights); atoms that are all zero stay zero."""
    for k in range(W.shape[2]):
        s = 0.0
        for d in range(W.shape[1]):
            s += W[w, d, k] * W[w, d, k]
        if s > 0.0:
            f = target / math.sqrt(s)
            for d in range(W.shape[1]):
                W[w, d, k] = qz(W[w, d, k] * f, qs)


@_inline
def _clip_pi(v: float, p: Params) -> float:
    return min(max(1.0 / (v + p.v0), p.pi_min), p.pi_max)


@_kernel
def _learn(st: State, sc: Scratch, p: Params) -> None:
    """Clocked learning over active columns: precisions, then W1 and W2 (Bayesian synapse)."""
    a = p.alpha
    for j in range(st.active.shape[0]):
        if st.active[j] == 0:
            continue
        for d in range(p.d1):
            e = st.z1[j, d] - st.xhat1[j, d]
            st.v1[j, d] = qz((1.0 - a) * st.v1[j, d] + a * e * e, p.qs)
            st.pi1[j, d] = qz(_clip_pi(st.v1[j, d], p), p.qs)
            sc.thr1[j, d] = p.theta_e * st.gain1[j] * math.sqrt(st.pi1[j, d])
    if p.layers == 2:
        for big in range(st.nact2.shape[0]):
            if st.nact2[big] == 0:
                continue
            for s in range(p.d2):
                j = _child(p, big, s)
                x = st.mus1[j, s % p.k1] if j >= 0 else 0.0
                e = x - st.pred2[big, s]
                st.v2[big, s] = qz((1.0 - a) * st.v2[big, s] + a * e * e, p.qs)
                st.pi2[big, s] = qz(_clip_pi(st.v2[big, s], p), p.qs)
                sc.thr2[big, s] = p.theta_e * math.sqrt(st.pi2[big, s])
    # W1: post = error unit ε_jd (fresh), pre = sent belief μ̂_jk
    sc.G1[:, :] = 0.0
    sc.I1[:, :] = 0.0
    for j in range(st.active.shape[0]):
        if st.active[j] == 0:
            continue
        rsum = 0.0
        for k in range(p.k1):
            rsum += st.mus1[j, k]
        if rsum > 0.0:
            for d in range(p.d1):
                eps = st.pi1[j, d] * (st.z1[j, d] - st.xhat1[j, d])
                for k in range(p.k1):
                    r = st.mus1[j, k]
                    sc.G1[d, k] += eps * r
                    sc.I1[d, k] += st.pi1[j, d] * (r * rsum)
        if p.per_col:
            _bayes_update(st.W1, st.S1, sc.G1, sc.I1, j, p.q, 0.0, p.w_max, p.qs,
                          _salt(p, st.counters[C_TICKS], 1), p.w_soft, p.plain_rate)
            if p.w_norm > 0.0:
                _norm_atoms(st.W1, j, p.w_norm, p.qs)
            sc.G1[:, :] = 0.0
            sc.I1[:, :] = 0.0
    if not p.per_col:
        _bayes_update(st.W1, st.S1, sc.G1, sc.I1, 0, p.q, 0.0, p.w_max, p.qs,
                      _salt(p, st.counters[C_TICKS], 1), p.w_soft, p.plain_rate)
        if p.w_norm > 0.0:
            _norm_atoms(st.W1, 0, p.w_norm, p.qs)
    _transpose_w1(st, sc)
    if p.layers == 2:
        sc.G2[:, :] = 0.0
        sc.I2[:, :] = 0.0
        for big in range(st.nact2.shape[0]):
            if st.nact2[big] == 0:
                continue
            rsum = 0.0
            for k in range(p.k2):
                rsum += st.mus2[big, k]
            if rsum > 0.0:
                for s in range(p.d2):
                    j = _child(p, big, s)
                    x = st.mus1[j, s % p.k1] if j >= 0 else 0.0
                    eps = st.pi2[big, s] * (x - st.pred2[big, s])
                    for k in range(p.k2):
                        r = st.mus2[big, k]
                        sc.G2[s, k] += eps * r
                        sc.I2[s, k] += st.pi2[big, s] * (r * rsum)
            if p.per_col:
                _bayes_update(st.W2, st.S2, sc.G2, sc.I2, big, p.q, 0.0, p.w_max, p.qs,
                              _salt(p, st.counters[C_TICKS], 2), p.w_soft, p.plain_rate)
                sc.G2[:, :] = 0.0
                sc.I2[:, :] = 0.0
        if not p.per_col:
            _bayes_update(st.W2, st.S2, sc.G2, sc.I2, 0, p.q, 0.0, p.w_max, p.qs,
                          _salt(p, st.counters[C_TICKS], 2), p.w_soft, p.plain_rate)


@_kernel
def _refresh(st: State, sc: Scratch, p: Params) -> None:
    """After a weight change: x̂ = W μ̂, u = Wᵀ ε̂ and curvatures h for every active column."""
    for j in range(st.active.shape[0]):
        if st.active[j] == 0:
            continue
        w = j if p.per_col else 0
        # loops interchanged so that the inner one runs over contiguous memory; every sum
        # is still accumulated in the same order (x̂_d over k, u_k over d), bit for bit
        xhat1 = st.xhat1
        u1 = st.u1
        for d in range(p.d1):
            xhat1[j, d] = 0.0
        for k in range(p.k1):
            m = st.mus1[j, k]
            for d in range(p.d1):
                xhat1[j, d] += sc.W1T[w, k, d] * m
        for k in range(p.k1):
            u1[j, k] = 0.0
        for d in range(p.d1):
            e = st.eps1[j, d]
            for k in range(p.k1):
                u1[j, k] += st.W1[w, d, k] * e
        if p.qs > 0.0:
            for d in range(p.d1):
                xhat1[j, d] = qz(xhat1[j, d], p.qs)
            for k in range(p.k1):
                u1[j, k] = qz(u1[j, k], p.qs)
        _curv1(st, sc, p, j)
        st.busy1[j] = 1
    if p.layers == 2:
        for big in range(st.nact2.shape[0]):
            if st.nact2[big] == 0:
                continue
            w = big if p.per_col else 0
            for s in range(p.d2):
                acc = 0.0
                for k in range(p.k2):
                    acc += st.W2[w, s, k] * st.mus2[big, k]
                st.pred2[big, s] = qz(acc, p.qs)
            for k in range(p.k2):
                acc = 0.0
                for s in range(p.d2):
                    acc += st.W2[w, s, k] * st.eps2[big, s]
                st.u2[big, k] = qz(acc, p.qs)
            _curv2(st, sc, p, big)
            st.busy2[big] = 1


@_kernel
def _top_active(st: State, p: Params, c: int) -> bool:
    return st.active[c] != 0 if p.layers == 1 else st.nact2[c] != 0


@_kernel
def _learn_temporal(st: State, sc: Scratch, p: Params) -> None:
    """A: top beliefs predict themselves one horizon ahead, μ(T) ≈ A μ(T − Δ); same rule."""
    mu = st.mu1 if p.layers == 1 else st.mu2
    kt = mu.shape[1]
    a = p.alpha
    sc.GA[:, :] = 0.0
    sc.IA[:, :] = 0.0
    for c in range(mu.shape[0]):
        if not _top_active(st, p, c):
            continue
        w = c if p.per_col else 0
        rsum = 0.0
        for l in range(kt):
            rsum += st.muprev[c, l]
        for k in range(kt):
            pred = 0.0
            for l in range(kt):
                pred += st.A[w, k, l] * st.muprev[c, l]
            e = mu[c, k] - pred
            st.vA[c, k] = qz((1.0 - a) * st.vA[c, k] + a * e * e, p.qs)
            pik = _clip_pi(st.vA[c, k], p)
            if rsum > 0.0:
                for l in range(kt):
                    sc.GA[k, l] += (pik * e) * st.muprev[c, l]
                    sc.IA[k, l] += pik * (st.muprev[c, l] * rsum)
        if p.per_col:
            _bayes_update(st.A, st.SA, sc.GA, sc.IA, c, p.a_q, 0.0, p.w_max, p.qs,
                          _salt(p, st.counters[C_TICKS], 3))
            sc.GA[:, :] = 0.0
            sc.IA[:, :] = 0.0
    if not p.per_col:
        _bayes_update(st.A, st.SA, sc.GA, sc.IA, 0, p.a_q, 0.0, p.w_max, p.qs,
                      _salt(p, st.counters[C_TICKS], 3))


@_kernel
def _to_map(emap: np.ndarray, p: Params, a: np.ndarray, b: np.ndarray) -> None:
    """emap[1 + py, 1 + px, pol] = a − b of every channel on the pooled grid (ncy·c, ncx·c).

    The one-cell border of ``emap`` stays 0, so the 8 neighbours of any channel are read
    without bounds checks or divisions (off-grid neighbours contribute R_o · 0).
    """
    c = p.column
    for j in range(a.shape[0]):
        y0 = (j // p.ncx) * c + 1
        x0 = (j % p.ncx) * c + 1
        for r in range(c):
            for cc in range(c):
                for pol in range(2):
                    d = (r * c + cc) * 2 + pol
                    emap[y0 + r, x0 + cc, pol] = a[j, d] - b[j, d]


@_kernel
def _learn_residual(st: State, sc: Scratch, p: Params) -> None:
    """Forecast error units learn to predict their own trace one horizon ahead:

    z_c(T) ≈ x'_c(T − Δ) = g_c h_c(T − Δ) + ρ_c z_c(T − Δ) + Σ_o R_o z_{c+o}(T − Δ)
    (h = W1 μ1' the hierarchy's forecast, g and ρ per channel, R shared; o runs over the
    3×3 cells round c row-major without the centre, same polarity). The post error is the
    unit's whole forecast error z_c(T) − x'_c (``fprev``), its precision π_F = 1/(v_F + v0);
    Bayesian synapse with majorized information π_F x_i Σ_l x_l on every input x_i ≥ 0.
    """
    sc.GR[:, :] = 0.0
    sc.IR[:, :] = 0.0
    emap = sc.emap
    _to_map(emap, p, st.zprev, sc.zero1)
    if p.msh:
        _learn_shared(st, sc, p)
    c = p.column
    for j in range(st.active.shape[0]):
        if st.active[j] == 0:
            continue
        y0 = (j // p.ncx) * c + 1
        x0 = (j % p.ncx) * c + 1
        for r in range(c):
            for cc in range(c):
                for pol in range(2):
                    d = (r * c + cc) * 2 + pol
                    py = y0 + r
                    px = x0 + cc
                    zp = st.zprev[j, d]
                    hp = st.hprev[j, d]
                    asum = zp + hp if p.fc_hier else zp
                    if p.fc_lat:
                        for oo in range(9):
                            if oo != 4:
                                asum += emap[py + oo // 3 - 1, px + oo % 3 - 1, pol]
                    err = st.z1[j, d] - st.fprev[j, d]
                    pi = _clip_pi(st.vF[j, d], p)
                    s2 = 1.0 / (1.0 / (st.srho[j, d] + p.q) + pi * zp * asum)
                    st.srho[j, d] = qz(s2, p.qs)
                    rr = st.rho[j, d] + s2 * pi * err * zp
                    st.rho[j, d] = qz(min(max(rr, 0.0), 1.0), p.qs)
                    if p.fc_hier:
                        s2 = 1.0 / (1.0 / (st.sgh[j, d] + p.q) + pi * hp * asum)
                        st.sgh[j, d] = qz(s2, p.qs)
                        gg = st.gh[j, d] + s2 * pi * err * hp
                        st.gh[j, d] = qz(min(max(gg, 0.0), 1.0), p.qs)
                    for oo in range(9):
                        if oo != 4 and p.fc_lat:
                            x = emap[py + oo // 3 - 1, px + oo % 3 - 1, pol]
                            o = (oo - 1 if oo > 4 else oo)
                            sc.GR[pol, o] += pi * err * x
                            sc.IR[pol, o] += pi * x * asum
    if p.fc_lat:
        _bayes_update(st.R, st.SR, sc.GR, sc.IR, 0, p.q, 0.0, 1.0, p.qs,
                      _salt(p, st.counters[C_TICKS], 4))


@_inline
def _features(st: State, sc: Scratch, p: Params, z: np.ndarray, h: np.ndarray, j: int,
              d: int) -> None:
    """sc.xs ← the shared forecaster's features of channel (j, d): its trace, its 8
    neighbours' traces (``sc.emap``, filled from the same traces z), the hierarchy's forecast
    h, all × Δ/τ (counts per window), its count in the last window and the sum of its 8
    neighbours' (``nlast``, ``sc.cmap``), and 1."""
    s = p.horizon_us / p.tau_us
    c = p.column
    r = (d // 2) // c
    cc = (d // 2) % c
    pol = d % 2
    py = (j // p.ncx) * c + 1 + r
    px = (j % p.ncx) * c + 1 + cc
    sc.xs[0] = s * z[j, d]
    o = 1
    cn = 0.0
    for oo in range(9):
        if oo != 4:
            sc.xs[o] = s * sc.emap[py + oo // 3 - 1, px + oo % 3 - 1, pol]
            cn += sc.cmap[py + oo // 3 - 1, px + oo % 3 - 1, pol]
            o += 1
    sc.xs[9] = s * h[j, d]
    sc.xs[10] = st.nlast[j, d]
    sc.xs[11] = cn
    sc.xs[12] = 1.0


@_kernel
def _learn_shared(st: State, sc: Scratch, p: Params) -> None:
    """The shared linear forecaster learns (at a horizon tick, ``sc.emap`` holding the traces
    of the previous tick): per polarity, its weights w predict a channel's count n in the
    window just ended from the features x of the tick before (``_features`` on zprev,
    hprev); Bayesian linear regression with forgetting λ (a Kalman filter of drifting
    weights): Λ ← λ Λ + Σ ω x xᵀ, b ← λ b + Σ ω x n, w = Λ⁻¹ b, over a rotating quarter of
    the channels at each tick (thousands of samples for NF weights; a quarter of the cost) —
    those of silent columns have features (0, …, 0, 1) and n = 0, added in closed form.
    ω = 1 (``shared_fit = "squares"``), or (``shared_fit = "poisson"``, the default, ``p.sh_c``
    = c > 0) least squares for the stream's first ``SH_IRLS_AFTER`` windows and then
    ω = 1 / (max(0, w·x) + c), the Poisson (Fisher) weights at the current fit: one step of
    iteratively reweighted least squares per window, so that the forecaster converges to the
    Poisson maximum-likelihood fit, the likelihood it is scored with. Each window's weights
    are scaled to mean 1 over its samples, so that a window adds as many samples' worth as
    under least squares and the forgetting λ keeps its meaning however the weights move.
    """
    sc.sxx[:, :, :] = 0.0
    sc.sxy[:, :] = 0.0
    _to_map(sc.cmap, p, st.nlast, sc.zero1)
    quiet0 = 0.0
    quiet1 = 0.0
    sw0 = 0.0  # Σ ω over the active samples of each polarity, and their number
    sw1 = 0.0
    ns0 = 0.0
    ns1 = 0.0
    k = st.mixage[0]
    irls = p.sh_c > 0.0 and k >= SH_IRLS_AFTER
    for j in range(st.active.shape[0]):
        for d in range(p.d1):
            if ((j + d + k) & 3) != 0:  # a rotating quarter of the channels at each tick
                continue
            if st.active[j] == 0:
                if d % 2 == 0:
                    quiet0 += 1.0
                else:
                    quiet1 += 1.0
                continue
            pol = d % 2
            _features(st, sc, p, st.zprev, st.hprev, j, d)
            y = float(st.ncnt[j, d])
            om = 1.0
            if irls:
                mu = 0.0
                for a in range(NF):
                    mu += st.Wsh[pol, a] * sc.xs[a]
                om = 1.0 / (max(mu, 0.0) + p.sh_c)
            if pol == 0:
                sw0 += om
                ns0 += 1.0
            else:
                sw1 += om
                ns1 += 1.0
            for a in range(NF):  # upper triangle of x xᵀ (mirrored below), zeros skipped
                xa = sc.xs[a]
                if xa == 0.0:
                    continue
                xw = xa * om
                sc.sxy[pol, a] += xw * y
                for b in range(a, NF):
                    sc.sxx[pol, a, b] += xw * sc.xs[b]
    for pol in range(2):
        # silent columns: features (0, …, 0, 1), so w·x is the bias
        om = 1.0 / (max(st.Wsh[pol, NF - 1], 0.0) + p.sh_c) if irls else 1.0
        nq = quiet0 if pol == 0 else quiet1
        sc.sxx[pol, NF - 1, NF - 1] += om * nq
        tot = (sw0 if pol == 0 else sw1) + om * nq
        if irls and tot > 0.0:  # the window's weights scaled to mean 1 over its samples
            f = ((ns0 if pol == 0 else ns1) + nq) / tot  # (none this window: nothing to do)
            for a in range(NF):
                sc.sxy[pol, a] *= f
                for b in range(a, NF):
                    sc.sxx[pol, a, b] *= f
        for a in range(NF):
            for b in range(a + 1, NF):
                sc.sxx[pol, b, a] = sc.sxx[pol, a, b]
        for a in range(NF):
            st.Bsh[pol, a] = qz(p.sh_forget * st.Bsh[pol, a] + sc.sxy[pol, a], p.qs)
            for b in range(NF):
                st.Lsh[pol, a, b] = qz(p.sh_forget * st.Lsh[pol, a, b] + sc.sxx[pol, a, b],
                                       p.qs)
        _solve(st.Lsh[pol], st.Bsh[pol], SH_RIDGE, sc.work, sc.xs)
        for a in range(NF):
            st.Wsh[pol, a] = qz(sc.xs[a], p.qs)


@_kernel
def _forecast(st: State, sc: Scratch, p: Params, j: int) -> None:
    """hprev_j ← h = W1 μ1';  fprev_j ← x' = max(0, g ⊙ h + ρ ⊙ z + Σ_o R_o z_{·+o}), column j.

    μ1' = A μ1 (one layer) or max(0, μ1 + W2 (A μ2 − μ2)) (two layers); the neighbours'
    traces z are read from ``sc.emap`` (filled by ``_to_map`` at this horizon tick).
    """
    w1 = j if p.per_col else 0
    if p.layers == 1:
        wa = j if p.per_col else 0
        for k in range(p.k1):
            acc = 0.0
            for l in range(p.k1):
                acc += st.A[wa, k, l] * st.mu1[j, l]
            sc.m1[k] = acc
    else:
        big = sc.big1[j]
        slot = sc.slot1[j]
        wa = big if p.per_col else 0
        w2 = big if p.per_col else 0
        for k in range(p.k2):
            acc = 0.0
            for l in range(p.k2):
                acc += st.A[wa, k, l] * st.mu2[big, l]
            sc.m2[k] = acc - st.mu2[big, k]
        for k in range(p.k1):
            acc = 0.0
            for l in range(p.k2):
                acc += st.W2[w2, slot + k, l] * sc.m2[l]
            sc.m1[k] = max(st.mu1[j, k] + acc, 0.0)
    c = p.column
    emap = sc.emap
    y0 = (j // p.ncx) * c + 1
    x0 = (j % p.ncx) * c + 1
    for r in range(c):
        for cc in range(c):
            for pol in range(2):
                d = (r * c + cc) * 2 + pol
                h = 0.0
                for k in range(p.k1):
                    h += st.W1[w1, d, k] * sc.m1[k]
                st.hprev[j, d] = qz(h, p.qs)
                acc = st.gh[j, d] * h + st.rho[j, d] * st.z1[j, d]
                for oo in range(9):
                    if oo != 4:
                        acc += st.R[0, pol, (oo - 1 if oo > 4 else oo)] * emap[y0 + r + oo // 3 - 1,
                                                                   x0 + cc + oo % 3 - 1, pol]
                st.fprev[j, d] = qz(max(acc, 0.0), p.qs)


@_inline
def _gain(odisp: np.ndarray, pol: int) -> float:
    """κ of polarity pol: the forecast unit's count calibration, Σ n / Σ m_0 over active
    channels (running sums in odisp[pol, 2:4]), clamped to [1/4, 4]; 1 before any data."""
    if odisp[pol, 3] <= 0.0:
        return 1.0
    return min(max(odisp[pol, 2] / odisp[pol, 3], 0.25), 4.0)


@_kernel
def _mix(st: State, sc: Scratch, p: Params, tt: int, learn: bool) -> None:
    """The rate experts at horizon tick tt (after the forecast units' ``_forecast``).

    Every channel c (silent columns too) scores each expert's count forecast m_i for the
    window just ended against its count n (``ncnt``): ℓ_i = n ln(m_i + m₀) − (m_i + m₀)
    (the Poisson log-likelihood without the ln n! that all experts share). With learning
    on, L_ci ← γ L_ci + ℓ_i and the per-polarity sensor-wide L_g ← γ L_g + mean_c ℓ_i
    (γ = exp(−Δ/mix_memory_us)), and the overdispersion statistics of active channels move
    (rate max(``OD_RATE``, 1/updates)): odisp[pol] ← running means of Σ (n − m)² − v and
    Σ m² (m, v the
    mixture's mean and variance forecast), and so do the count calibration sums of the
    forecast unit, odisp[pol, 2:4] ← running means of Σ n and Σ m_0/κ (its uncalibrated
    forecast). Then each expert i ≥ 1 updates its exponential
    moving average of the window counts, zk_ci ← (1 − β_i) zk_ci + β_i n with
    β_i = 1 − exp(−Δ/τ_i), the count is reset, and the experts forecast the next window:
    expert 0 the forecast unit, m_0 = κ x'_c Δ/τ (0 in silent columns; κ = ``_gain`` as of
    the start of this tick), expert i ≥ 1 its
    bias-corrected average, m_i = zk_ci / (1 − (1 − β_i)^K), K the windows seen since the
    stream (re)started (``mixage``).
    """
    ne = st.Lmix.shape[2]
    for pol in range(2):
        for i in range(ne):
            sc.mixg[pol, i] = 0.0
        for k in range(4):
            sc.odacc[pol, k] = 0.0
        sc.kap[pol] = _gain(st.odisp, pol)
    scale0 = p.horizon_us / p.tau_us
    st.mixage[0] += 1
    for i in range(p.ns):  # bias correction of the averages started at 0, K windows ago
        sc.corrk[i] = 1.0 - (1.0 - sc.betak[i]) ** st.mixage[0]
    for j in range(st.active.shape[0]):
        act = st.active[j] != 0
        for d in range(p.d1):
            n = float(st.ncnt[j, d])
            pol = d % 2
            if act and learn:
                sc.odacc[pol, 2] += n
                sc.odacc[pol, 3] += st.mprev[j, d, 0] / sc.kap[pol]
            if act and learn and ((j + d + st.mixage[0]) & 3) == 0:
                # the mixture's forecast for the window just ended, on a rotating quarter
                # of the channels (a sample is enough for the dispersion's two means)
                top = -math.inf
                for i in range(ne):
                    top = max(top, st.Lmix[j, d, i] + p.mix_share * st.Lglob[pol, i])
                wsum = 0.0
                mean = 0.0
                second = 0.0
                for i in range(ne):
                    w = math.exp(st.Lmix[j, d, i] + p.mix_share * st.Lglob[pol, i] - top)
                    m = st.mprev[j, d, i]
                    wsum += w
                    mean += w * m
                    second += w * (m + m * m)
                mean /= wsum
                var = max(second / wsum - mean * mean, mean)
                sc.odacc[pol, 0] += (n - mean) * (n - mean) - var
                sc.odacc[pol, 1] += mean * mean
            if learn:  # evidence (not needed when frozen: L and L_g stay)
                for i in range(ne):
                    m = st.mprev[j, d, i] + p.m0
                    ll = -m
                    if n > 0.0:
                        ll += n * math.log(m)
                    sc.mixg[pol, i] += ll
                    st.Lmix[j, d, i] = qz(st.Lmix[j, d, i] * p.mix_gamma + ll, p.qs)
            st.ncnt[j, d] = 0
            st.mprev[j, d, 0] = qz(sc.kap[pol] * st.fprev[j, d] * scale0, p.qs) if act else 0.0
            for i in range(p.ns):
                b = sc.betak[i]
                zz = qz((1.0 - b) * st.zk[j, d, i] + b * n, p.qs)
                st.zk[j, d, i] = zz
                st.mprev[j, d, i + 1] = qz(zz / sc.corrk[i], p.qs)
            st.nlast[j, d] = n
    if p.msh:  # the shared linear forecaster (features of this tick; silent: its bias)
        _to_map(sc.cmap, p, st.nlast, sc.zero1)
        for j in range(st.active.shape[0]):
            act = st.active[j] != 0
            for d in range(p.d1):
                pol = d % 2
                if act:
                    _features(st, sc, p, st.z1, st.hprev, j, d)
                    acc = 0.0
                    for a in range(NF):
                        acc += st.Wsh[pol, a] * sc.xs[a]
                else:
                    acc = st.Wsh[pol, NF - 1]
                st.mprev[j, d, ne - 1] = qz(max(acc, 0.0), p.qs)
    if learn:
        half = st.active.shape[0] * p.d1 // 2
        a = p.od_rate
        for pol in range(2):
            for i in range(ne):
                st.Lglob[pol, i] = qz(st.Lglob[pol, i] * p.mix_gamma + sc.mixg[pol, i] / half,
                                      p.qs)
            if sc.odacc[pol, 3] > 0.0:  # running means, the first ones plain averages
                st.odisp[pol, 4] += 1.0
                r = max(a, 1.0 / st.odisp[pol, 4])
                for k in range(4):
                    st.odisp[pol, k] = qz((1.0 - r) * st.odisp[pol, k] + r * sc.odacc[pol, k],
                                          p.qs)


@_kernel
def _surprise(st: State, p: Params) -> float:
    """Σ over active columns of ½ π (z − x̂)² (layer 1) + ½ π2 (μ̂1 − pred2)² (layer 2)."""
    f = 0.0
    for j in range(st.active.shape[0]):
        if st.active[j] == 0:
            continue
        for d in range(p.d1):
            e = st.z1[j, d] - st.xhat1[j, d]
            f += 0.5 * st.pi1[j, d] * e * e
    if p.layers == 2:
        for big in range(st.nact2.shape[0]):
            if st.nact2[big] == 0:
                continue
            for s in range(p.d2):
                j = _child(p, big, s)
                x = st.mus1[j, s % p.k1] if j >= 0 else 0.0
                e = x - st.pred2[big, s]
                f += 0.5 * st.pi2[big, s] * e * e
    return f


@_kernel
def _column_baselines(st: State, p: Params) -> None:
    """Per-column surprise baselines at a horizon tick: s_j = Σ_d ½ π_jd e_jd² of each active
    column, m_j ← m_j + β (s_j − m_j), v_j ← (1 − β)(v_j + β (s_j − m_j)²) (the total's rule)."""
    for j in range(st.active.shape[0]):
        if st.active[j] == 0:
            continue
        s = 0.0
        for d in range(p.d1):
            e = st.z1[j, d] - st.xhat1[j, d]
            s += 0.5 * st.pi1[j, d] * e * e
        m = st.sbase1[j, 0]
        dv = s - m
        st.sbase1[j, 0] = m + p.beta * dv
        st.sbase1[j, 1] = (1.0 - p.beta) * (st.sbase1[j, 1] + p.beta * dv * dv)


@_kernel
def _silence(st: State, sc: Scratch, p: Params, j: int) -> None:
    """Reset column j whose traces all fell below z_off: μ = 0 is then the exact posterior."""
    st.active[j] = 0
    st.busy1[j] = 0
    st.clock[K_NACTIVE] -= 1
    big, slot = _parent(p, j)
    for d in range(p.d1):
        st.z1[j, d] = 0.0
        st.xhat1[j, d] = 0.0
        st.eps1[j, d] = 0.0
        st.zprev[j, d] = 0.0
        st.hprev[j, d] = 0.0
        st.fprev[j, d] = 0.0
    for k in range(p.k1):
        st.u1[j, k] = 0.0
        st.mu1[j, k] = 0.0
        st.mus1[j, k] = 0.0
        if p.layers == 1:
            st.muprev[j, k] = 0.0
    if p.layers == 2:
        st.nact2[big] -= 1
        if st.nact2[big] == 0:
            for s in range(p.d2):
                st.pred2[big, s] = 0.0
                st.eps2[big, s] = 0.0
            for k in range(p.k2):
                st.u2[big, k] = 0.0
                st.mu2[big, k] = 0.0
                st.mus2[big, k] = 0.0
                st.muprev[big, k] = 0.0
            st.busy2[big] = 0
        else:
            for k in range(p.k1):
                _check2(st, sc, p, big, slot + k)


@_kernel
def _tick(st: State, sc: Scratch, p: Params, tt: int, learn: bool) -> None:
    """Clocked sweep at absolute time tt (a multiple of tick_us) over active columns: the
    layers' inference (``_tick_layers``), then the clocked work (``_tick_clocked``)."""
    _tick_layers(st, sc, p, tt)
    _tick_clocked(st, sc, p, tt, learn)


@_kernel
def _tick_layers(st: State, sc: Scratch, p: Params, tt: int) -> None:
    """The inference part of the tick at tt µs.

    Error units are polled (decay, sigma-delta sweep) in columns that got input since the
    last tick or are still relaxing (``busy1``), and in every active column at learning
    epochs and horizon ticks; a quiet column's traces decay lazily in between. Then the
    belief units relax.
    """
    st.counters[C_TICKS] += 1
    n1 = st.active.shape[0]
    epoch = tt % p.learn_us == 0 or tt % p.horizon_us == 0
    for j in range(n1):
        if st.active[j] and (epoch or st.busy1[j]):
            _decay(st, sc, p, j, tt)
            _sweep1(st, sc, p, j)
    if p.layers == 2:
        for big in range(st.nact2.shape[0]):
            if st.nact2[big]:
                _relax_block(st, sc, p, big)
    else:
        for j in range(n1):
            if st.active[j]:
                for step in range(p.relax_steps):
                    if not st.busy1[j]:
                        break
                    _relax_column(st, sc, p, j, step)


@_kernel
def _tick_clocked(st: State, sc: Scratch, p: Params, tt: int, learn: bool) -> None:
    """The clocked work of the tick at tt µs, after the layers' inference: learning and
    homeostasis at learning epochs; temporal learning, forecast units, rate experts and
    surprise baselines at horizon ticks; silencing of quiet columns at both. (The Lava
    backend runs layer 1's inference in Lava and calls this on the host.)"""
    if learn and tt % p.learn_us == 0:
        _learn(st, sc, p)
        _refresh(st, sc, p)
    _tick_tail(st, sc, p, tt, learn)


@_kernel
def _tick_tail(st: State, sc: Scratch, p: Params, tt: int, learn: bool) -> None:
    """The clocked work of a tick after inference and learning (shared with the integer
    twin, ``loihi_kernels``): homeostasis at learning epochs; at horizon ticks the temporal
    learning, the forecast and the surprise baseline; then, at learning epochs and horizon
    ticks, the silencing of every active column whose traces all fell below z_off."""
    n1 = st.active.shape[0]
    epoch = tt % p.learn_us == 0 or tt % p.horizon_us == 0
    if tt % p.learn_us == 0:
        _homeostasis(st, sc, p, learn)
    if tt % p.horizon_us == 0:
        if learn:
            _learn_temporal(st, sc, p)
            _learn_residual(st, sc, p)
            a = p.alpha
            for j in range(n1):
                if st.active[j]:
                    for d in range(p.d1):
                        fe = st.z1[j, d] - st.fprev[j, d]
                        st.vF[j, d] = qz((1.0 - a) * st.vF[j, d] + a * fe * fe, p.qs)
        mu = st.mu1 if p.layers == 1 else st.mu2
        for c in range(mu.shape[0]):
            for k in range(mu.shape[1]):
                st.muprev[c, k] = mu[c, k]
        _to_map(sc.emap, p, st.z1, sc.zero1)
        for j in range(n1):
            if st.active[j]:
                for d in range(p.d1):
                    st.zprev[j, d] = st.z1[j, d]
                _forecast(st, sc, p, j)
        _mix(st, sc, p, tt, learn)
        st.mixage[1] = 0
        f = _surprise(st, p)
        m = st.baseline[0]
        dv = f - m
        st.baseline[0] = m + p.beta * dv
        st.baseline[1] = (1.0 - p.beta) * (st.baseline[1] + p.beta * dv * dv)
        _column_baselines(st, p)
    for j in range(n1):
        if epoch and st.active[j]:
            zmax = 0.0
            for d in range(p.d1):
                zmax = max(zmax, st.z1[j, d])
            if zmax < p.z_off:
                _silence(st, sc, p, j)


@_inline
def _advance(st: State, sc: Scratch, p: Params, t: int, learn: bool) -> None:
    """Run every tick T ≤ t not yet run; with no active column all of them are no-ops."""
    while st.clock[K_NEXT] <= t:
        if st.clock[K_NACTIVE] == 0:
            if st.mixage[2] < 0:  # silent windows pending from here (``_catch_up``)
                st.mixage[2] = st.clock[K_NEXT]
            st.clock[K_NEXT] = (t // p.tick_us + 1) * p.tick_us
            break
        _tick(st, sc, p, st.clock[K_NEXT], learn)
        st.clock[K_NEXT] += p.tick_us


@_kernel
def _catch_up(st: State, sc: Scratch, p: Params, t: int, learn: bool, still: bool) -> None:
    """Process the silent windows pending since the clock jumped (``mixage[2]``) up to t µs;
    ``still``: the silence goes on (more may follow from the next horizon time on). Called
    when the first column wakes after a silence (before its event counts) and at the end of
    a batch, not in the per-event path (a call there slowed every event by ~13 %)."""
    if st.mixage[2] < 0:
        return
    _silent_windows(st, sc, p, st.mixage[2], t, learn)
    st.mixage[2] = (t // p.horizon_us + 1) * p.horizon_us if still else -1


@_kernel
def _silent_windows(st: State, sc: Scratch, p: Params, t0: int, t: int, learn: bool) -> None:
    """Horizon ticks in [t0, t] while no column is active: the rate experts still see their
    windows end with no event (their averages decay, experts expecting events lose
    evidence), for up to ``mix_kmax`` windows of one silence (then every average has
    decayed by e⁻⁴ or more and the forecast is ~0: the clock jumps as before)."""
    h = p.horizon_us
    tt = -(-t0 // h) * h
    while tt <= t and st.mixage[1] < p.mix_kmax:
        _mix(st, sc, p, tt, learn)
        st.mixage[1] += 1
        tt += h


@_kernel
def _thresholds(st: State, sc: Scratch, p: Params) -> None:
    """sc.thr1 = θ_e √π1 (kept in step with π1 after every change)."""
    for j in range(st.pi1.shape[0]):
        for d in range(st.pi1.shape[1]):
            sc.thr1[j, d] = p.theta_e * st.gain1[j] * math.sqrt(st.pi1[j, d])
    for big in range(st.pi2.shape[0]):
        for s in range(st.pi2.shape[1]):
            sc.thr2[big, s] = p.theta_e * math.sqrt(st.pi2[big, s])


@_kernel
def _homeostasis(st: State, sc: Scratch, p: Params, learn: bool) -> None:
    """Each learning epoch: g_j ← clip(g_j exp(η (r_j − r*)/r*), 1/4, 16), r_j the column's
    error spikes per tick in the epoch, r* = homeo_rate; thresholds θ_e g_j √π follow."""
    ticks = p.learn_us // p.tick_us
    for j in range(st.active.shape[0]):
        if learn and p.homeo_rate > 0.0 and st.active[j]:
            r = st.nsp1[j] / ticks
            g = st.gain1[j] * math.exp(p.homeo_eta * (r - p.homeo_rate) / p.homeo_rate)
            st.gain1[j] = qz(min(max(g, 0.25), 16.0), p.qs)
            for d in range(p.d1):
                sc.thr1[j, d] = p.theta_e * st.gain1[j] * math.sqrt(st.pi1[j, d])
        st.nsp1[j] = 0


@_kernel
def _transpose_w1(st: State, sc: Scratch) -> None:
    """sc.W1T[w, k, d] = W1[w, d, k] (kept in step with W1 after every change)."""
    for w in range(st.W1.shape[0]):
        for d in range(st.W1.shape[1]):
            for k in range(st.W1.shape[2]):
                sc.W1T[w, k, d] = st.W1[w, d, k]


@_kernel
def run_batch(st: State, sc: Scratch, p: Params, t: np.ndarray, x: np.ndarray, y: np.ndarray,
              pol: np.ndarray, t_end: int, learn: bool) -> None:
    """Step the network over sorted events (t µs, x, y px, pol 0/1), then up to t_end µs.

    Ticks at T ≤ t_end are run at the end (every event with t < T has been seen).
    """
    _transpose_w1(st, sc)
    _thresholds(st, sc, p)
    for i in range(t.shape[0]):
        ti = t[i]
        if p.clocked:  # the event counts as if it came at its tick's start
            ti = (ti // p.tick_us) * p.tick_us
        _advance(st, sc, p, ti, learn)
        _event(st, sc, p, ti, x[i], y[i], pol[i], learn)
    st.counters[C_EVENTS] += t.shape[0]
    _advance(st, sc, p, t_end, learn)
    _catch_up(st, sc, p, t_end, learn, True)
    st.clock[K_TNOW] = t_end
