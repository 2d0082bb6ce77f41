"""The network's equations in slow, obvious NumPy: the oracle the numba kernels are tested on.

Same State, same Params, same order of operations as ``kernels.py``, written with NumPy
vector operations over one column at a time and a Python loop over events and ticks.
Symbols: z traces, x̂ predictions, ε̂ sent errors, u drives, μ beliefs, μ̂ sent beliefs,
h curvatures, π precisions, W weights, S weight variances (see docs/model.md).
"""

from __future__ import annotations

import math

import numpy as np

from augury.model.kernels import SH_IRLS_AFTER, SH_RIDGE, Params
from augury.model.linsolve import solve_into
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


def q(x: np.ndarray | float, qs: float) -> np.ndarray | float:
    """Round to multiples of 1/qs (half up) when qs > 0."""
    if qs > 0.0:
        return np.floor(np.asarray(x) * qs + 0.5) / qs
    return x


_M64 = (1 << 64) - 1


def mix64(x: int) -> int:
    """SplitMix64 finaliser on Python ints modulo 2⁶⁴ (the kernels' ``_mix64``)."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def salt(p: Params, ticks: int, arr: int) -> int:
    """The random stream of one weight array's update at one tick, −1 without stochastic
    rounding (hash of seed, ticks run and array id, as the kernels)."""
    if not (p.sr and p.qs > 0.0):
        return -1
    return mix64((p.seed & _M64) ^ mix64((int(ticks) * 8 + arr) & _M64)) >> 1


def qsr(x: np.ndarray, qs: float, s: int, n: np.ndarray) -> np.ndarray:
    """Stochastic rounding of each x[i] to the grid 1/qs with number n[i] of stream s: up
    with probability equal to the remainder; half up when s < 0."""
    if s < 0:
        return q(x, qs)
    x = np.asarray(x, np.float64)
    y = x * qs
    f = np.floor(y)
    u = np.array([(mix64(s ^ mix64(int(k))) >> 11) * (1.0 / 9007199254740992.0)
                  for k in np.ravel(n)]).reshape(x.shape)
    return np.where(u < y - f, (f + 1.0) / qs, f / qs)


def _wi(p: Params, i: int) -> int:
    return i if p.per_col else 0


def seqsum(v: np.ndarray) -> float:
    """Left-to-right sum (the kernels' order, so that results agree bit for bit)."""
    s = 0.0
    for a in v:
        s += float(a)
    return s


def matvec(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """w @ v accumulated left to right over v's index: Σ_k w[:, k] v[k]."""
    acc = np.zeros(w.shape[0])
    for k in range(w.shape[1]):
        acc += w[:, k] * v[k]
    return acc


def rowsum(w: np.ndarray) -> np.ndarray:
    """Σ_k w[:, k], left to right."""
    return matvec(w, np.ones(w.shape[1]))


def child(p: Params, big: int, slot: int) -> int:
    """Layer-1 column feeding layer-2 input slot (−1 when off the grid)."""
    quad = slot // p.k1
    cy = 2 * (big // p.n2x) + quad // 2
    cx = 2 * (big % p.n2x) + quad % 2
    return cy * p.ncx + cx if (cx < p.ncx and cy < p.ncy) else -1


def parent(p: Params, j: int) -> tuple[int, int]:
    cy, cx = divmod(j, p.ncx)
    return (cy // 2) * p.n2x + cx // 2, ((cy % 2) * 2 + cx % 2) * p.k1


def l2_input(st: State, p: Params, big: int) -> np.ndarray:
    """The sent beliefs μ̂1 of the four children of layer-2 column ``big``, shape (D2,)."""
    x = np.zeros(p.d2)
    for s in range(p.d2):
        j = child(p, big, s)
        if j >= 0:
            x[s] = st.mus1[j, s % p.k1]
    return x


def curv1(st: State, p: Params, j: int) -> None:
    w = st.W1[_wi(p, j)]
    big, slot = parent(p, j)
    prior = np.full(p.k1, p.pi_prior) if p.layers == 1 else st.pi2[big, slot:slot + p.k1]
    rs = rowsum(w)
    h = prior.astype(np.float64, copy=True)
    g = p.curv_mix  # γ = 1: diagonal majorizer; γ = 0: Hessian diagonal
    for d in range(p.d1):
        h += st.pi1[j, d] * w[d] * ((1.0 - g) * w[d] + g * rs[d])
    st.h1[j] = h


def curv2(st: State, p: Params, big: int) -> None:
    w = st.W2[_wi(p, big)]
    rs = rowsum(w)
    h = np.full(p.k2, p.pi_prior)
    g = p.curv_mix
    for s in range(p.d2):
        h += st.pi2[big, s] * w[s] * ((1.0 - g) * w[s] + g * rs[s])
    st.h2[big] = h


def check2(st: State, sc: Scratch, p: Params, big: int, slot: int) -> None:
    j = child(p, big, slot)
    x = st.mus1[j, slot % p.k1] if j >= 0 else 0.0
    e = q(st.pi2[big, slot] * (x - st.pred2[big, slot]), p.qs)
    delta = e - st.eps2[big, slot]
    if abs(delta) > p.theta_e * math.sqrt(st.pi2[big, slot]):
        st.eps2[big, slot] = e
        st.u2[big] = q(st.u2[big] + st.W2[_wi(p, big), slot] * delta, p.qs)
        st.counters[C_UP] += 1
        st.counters[C_SYNOPS] += p.k2
        st.busy2[big] = 1
        if j >= 0:
            st.busy1[j] = 1


def sweep1(st: State, p: Params, j: int) -> None:
    e = q(st.pi1[j] * (st.z1[j] - st.xhat1[j]), p.qs)
    delta = e - st.eps1[j]
    fired = np.flatnonzero(np.abs(delta) > p.theta_e * st.gain1[j] * np.sqrt(st.pi1[j]))
    for d in fired:
        st.eps1[j, d] = e[d]
        st.u1[j] = q(st.u1[j] + st.W1[_wi(p, j), d] * delta[d], p.qs)
        st.counters[C_UP] += 1
        st.counters[C_SYNOPS] += p.k1
    if fired.size:
        st.busy1[j] = 1
        st.nsp1[j] += fired.size


def relax1(st: State, sc: Scratch, p: Params, j: int) -> None:
    big, slot = parent(p, j)
    own = p.pi_prior * st.mu1[j] if p.layers == 1 else st.eps2[big, slot:slot + p.k1]
    g = st.u1[j] - own - p.sparsity
    new = q(np.maximum(st.mu1[j] + p.kappa * g / st.h1[j], 0.0), p.qs)
    st.busy1[j] = 1 if np.max(np.abs(new - st.mu1[j])) >= p.settle else 0
    st.mu1[j] = new
    for k in range(p.k1):
        delta = st.mu1[j, k] - st.mus1[j, k]
        if abs(delta) > p.theta_mu:
            st.mus1[j, k] = st.mu1[j, k]
            st.xhat1[j] = q(st.xhat1[j] + st.W1[_wi(p, j), :, k] * delta, p.qs)
            st.counters[C_DOWN] += 1
            st.counters[C_SYNOPS] += p.d1
            if p.layers == 2:
                check2(st, sc, p, big, slot + k)


def relax2(st: State, sc: Scratch, p: Params, big: int) -> None:
    g = st.u2[big] - p.pi_prior * st.mu2[big] - p.sparsity
    new = q(np.maximum(st.mu2[big] + p.kappa * g / st.h2[big], 0.0), p.qs)
    st.busy2[big] = 1 if np.max(np.abs(new - st.mu2[big])) >= p.settle else 0
    st.mu2[big] = new
    spiked = False
    for k in range(p.k2):
        delta = st.mu2[big, k] - st.mus2[big, k]
        if abs(delta) > p.theta_mu:
            st.mus2[big, k] = st.mu2[big, k]
            st.pred2[big] = q(st.pred2[big] + st.W2[_wi(p, big), :, k] * delta, p.qs)
            st.counters[C_DOWN] += 1
            st.counters[C_SYNOPS] += p.d2
            spiked = True
    if spiked:
        for s in range(p.d2):
            check2(st, sc, p, big, s)


def decay(st: State, sc: Scratch, p: Params, j: int, t: int) -> None:
    dt = t - int(st.tcol[j])
    if dt > 0:
        st.z1[j] = q(st.z1[j] * math.exp(-dt / p.tau_us), p.qs)
        st.tcol[j] = t


def event(st: State, sc: Scratch, p: Params, t: int, x: int, y: int, pol: int,
          learning: bool) -> None:
    px, py = x // p.pool, y // p.pool
    j = (py // p.column) * p.ncx + px // p.column
    d = ((py % p.column) * p.column + px % p.column) * 2 + pol
    if not st.active[j]:
        if st.clock[K_NACTIVE] == 0:  # the experts first see the silent windows end
            catch_up(st, sc, p, t, learning, False)
        st.active[j] = 1
        st.busy1[j] = 1
        st.tcol[j] = t
        st.clock[K_NACTIVE] += 1
        if p.layers == 2:
            big, _ = parent(p, j)
            st.nact2[big] += 1
            curv2(st, p, big)
        curv1(st, p, j)
    # traces stay anchored at tcol (the last tick): the event adds e^{(t − t_j)/τ} to its
    # own channel and the error unit reads that channel decayed to t; z_j(t) is the same
    # as decaying the whole column to t and adding 1, up to rounding
    st.busy1[j] = 1  # an input event is news: the column's error units are polled next tick
    dt = t - int(st.tcol[j])
    st.z1[j, d] = q(st.z1[j, d] + math.exp(dt / p.tau_us), p.qs)
    st.ncnt[j, d] += 1
    z = q(st.z1[j, d] * math.exp(-dt / p.tau_us), p.qs)
    e = q(st.pi1[j, d] * (z - st.xhat1[j, d]), p.qs)
    delta = e - st.eps1[j, d]
    if abs(delta) > p.theta_e * st.gain1[j] * math.sqrt(st.pi1[j, d]):  # beliefs move at ticks
        st.busy1[j] = 1
        st.nsp1[j] += 1
        st.eps1[j, d] = e
        st.u1[j] = q(st.u1[j] + st.W1[_wi(p, j), d] * delta, p.qs)
        st.counters[C_UP] += 1
        st.counters[C_SYNOPS] += p.k1


def bayes_update(W: np.ndarray, S: np.ndarray, G: np.ndarray, info: np.ndarray, w: int,
                 qdrift: float, hi: float, qs: float, s: int = -1, soft: bool = True,
                 plain: float = 0.0) -> None:
    """s² ← 1/(1/(s² + q) + I); W ← clip(W + s² G · soft-bound factor, 0, hi); in fixed
    point rounded stochastically with stream s ≥ 0 (numbers 2·flat and 2·flat + 1 of each
    weight's flat index in W), else half up."""
    n = 2 * (w * W[w].size + np.arange(W[w].size).reshape(W[w].shape))
    if plain > 0.0:  # the Bayesian synapse off: a plain learning rate, S untouched
        dw = plain * G
    else:
        s2 = 1.0 / (1.0 / (S[w] + qdrift) + info)
        S[w] = qsr(s2, qs, s, n)
        dw = s2 * G
    if soft:
        dw = np.where(dw > 0.0, dw * (hi - W[w]) / hi, dw * W[w] / hi)
    W[w] = qsr(np.clip(W[w] + dw, 0.0, hi), qs, s, n + 1)


def norm_atoms(W: np.ndarray, w: int, target: float, qs: float) -> None:
    """Scale every non-zero atom W[w, :, k] to Euclidean norm ``target`` (sums in d order)."""
    for k in range(W.shape[2]):
        s = 0.0
        for d in range(W.shape[1]):
            s += W[w, d, k] * W[w, d, k]
        if s > 0.0:
            W[w, :, k] = q(W[w, :, k] * (target / math.sqrt(s)), qs)


def clip_pi(v: np.ndarray, p: Params) -> np.ndarray:
    return np.clip(1.0 / (v + p.v0), p.pi_min, p.pi_max)


def learn(st: State, sc: Scratch, p: Params) -> None:
    a = p.alpha
    act1 = np.flatnonzero(st.active)
    act2 = np.flatnonzero(st.nact2) if p.layers == 2 else np.zeros(0, np.int64)
    for j in act1:
        e = st.z1[j] - st.xhat1[j]
        st.v1[j] = q((1.0 - a) * st.v1[j] + a * e * e, p.qs)
        st.pi1[j] = q(clip_pi(st.v1[j], p), p.qs)
    for big in act2:
        e = l2_input(st, p, big) - st.pred2[big]
        st.v2[big] = q((1.0 - a) * st.v2[big] + a * e * e, p.qs)
        st.pi2[big] = q(clip_pi(st.v2[big], p), p.qs)
    G = np.zeros((p.d1, p.k1))
    info = np.zeros((p.d1, p.k1))
    for j in act1:
        r = st.mus1[j]
        rsum = seqsum(r)
        if rsum > 0.0:
            eps = st.pi1[j] * (st.z1[j] - st.xhat1[j])
            G += np.outer(eps, r)
            info += np.outer(st.pi1[j], r * rsum)
        if p.per_col:
            bayes_update(st.W1, st.S1, G, info, j, p.q, p.w_max, p.qs,
                     salt(p, st.counters[C_TICKS], 1), p.w_soft, p.plain_rate)
            if p.w_norm > 0.0:
                norm_atoms(st.W1, j, p.w_norm, p.qs)
            G[:] = 0.0
            info[:] = 0.0
    if not p.per_col:
        bayes_update(st.W1, st.S1, G, info, 0, p.q, p.w_max, p.qs,
                     salt(p, st.counters[C_TICKS], 1), p.w_soft, p.plain_rate)
        if p.w_norm > 0.0:
            norm_atoms(st.W1, 0, p.w_norm, p.qs)
    if p.layers == 2:
        G = np.zeros((p.d2, p.k2))
        info = np.zeros((p.d2, p.k2))
        for big in act2:
            r = st.mus2[big]
            rsum = seqsum(r)
            if rsum > 0.0:
                eps = st.pi2[big] * (l2_input(st, p, big) - st.pred2[big])
                G += np.outer(eps, r)
                info += np.outer(st.pi2[big], r * rsum)
            if p.per_col:
                bayes_update(st.W2, st.S2, G, info, big, p.q, p.w_max, p.qs,
                     salt(p, st.counters[C_TICKS], 2), p.w_soft, p.plain_rate)
                G[:] = 0.0
                info[:] = 0.0
        if not p.per_col:
            bayes_update(st.W2, st.S2, G, info, 0, p.q, p.w_max, p.qs,
                     salt(p, st.counters[C_TICKS], 2), p.w_soft, p.plain_rate)


def refresh(st: State, p: Params) -> None:
    for j in np.flatnonzero(st.active):
        w = st.W1[_wi(p, j)]
        st.xhat1[j] = q(matvec(w, st.mus1[j]), p.qs)
        st.u1[j] = q(matvec(w.T, st.eps1[j]), p.qs)
        curv1(st, p, j)
        st.busy1[j] = 1
    if p.layers == 2:
        for big in np.flatnonzero(st.nact2):
            w = st.W2[_wi(p, big)]
            st.pred2[big] = q(matvec(w, st.mus2[big]), p.qs)
            st.u2[big] = q(matvec(w.T, st.eps2[big]), p.qs)
            curv2(st, p, big)
            st.busy2[big] = 1


def homeostasis(st: State, p: Params, learning: bool) -> None:
    """g_j ← clip(g_j exp(η (r_j − r*)/r*), 1/4, 16) per learning epoch; counters reset."""
    if learning and p.homeo_rate > 0.0:
        for j in np.flatnonzero(st.active):
            r = st.nsp1[j] / (p.learn_us // p.tick_us)
            g = st.gain1[j] * math.exp(p.homeo_eta * (r - p.homeo_rate) / p.homeo_rate)
            st.gain1[j] = q(min(max(g, 0.25), 16.0), p.qs)
    st.nsp1[:] = 0


def top(st: State, p: Params) -> tuple[np.ndarray, np.ndarray]:
    """(top beliefs, active mask of top columns)."""
    if p.layers == 1:
        return st.mu1, st.active != 0
    return st.mu2, st.nact2 != 0


def learn_temporal(st: State, p: Params) -> None:
    mu, act = top(st, p)
    kt = mu.shape[1]
    G = np.zeros((kt, kt))
    info = np.zeros((kt, kt))
    for c in np.flatnonzero(act):
        w = _wi(p, c)
        prev = st.muprev[c]
        e = mu[c] - matvec(st.A[w], prev)
        st.vA[c] = q((1.0 - p.alpha) * st.vA[c] + p.alpha * e * e, p.qs)
        pik = clip_pi(st.vA[c], p)
        psum = seqsum(prev)
        if psum > 0.0:
            G += np.outer(pik * e, prev)
            info += np.outer(pik, prev * psum)
        if p.per_col:
            bayes_update(st.A, st.SA, G, info, c, p.a_q, p.w_max, p.qs,
                     salt(p, st.counters[C_TICKS], 3))
            G[:] = 0.0
            info[:] = 0.0
    if not p.per_col:
        bayes_update(st.A, st.SA, G, info, 0, p.a_q, p.w_max, p.qs,
                     salt(p, st.counters[C_TICKS], 3))


def nbr(p: Params, j: int, d: int, o: int) -> tuple[int, int]:
    """(column, index) of neighbour o of channel (j, d), or (−1, 0) off the padded grid."""
    c = p.column
    oo = o if o < 4 else o + 1
    cell = d // 2
    py = (j // p.ncx) * c + cell // c + oo // 3 - 1
    px = (j % p.ncx) * c + cell % c + oo % 3 - 1
    if py < 0 or px < 0 or py >= p.ncy * c or px >= p.ncx * c:
        return -1, 0
    return (py // c) * p.ncx + px // c, ((py % c) * c + px % c) * 2 + d % 2


def features(st: State, p: Params, z: np.ndarray, h: np.ndarray, j: int, d: int) -> np.ndarray:
    """The shared forecaster's features of channel (j, d): [z_c, z of the 8 neighbours, h_c]
    × Δ/τ, its last window's count, the sum of its 8 neighbours' counts there, and 1, (NF,)."""
    s = p.horizon_us / p.tau_us
    x = np.zeros(NF)
    x[0] = s * z[j, d]
    cn = 0.0
    for o in range(8):
        j2, d2 = nbr(p, j, d, o)
        x[1 + o] = s * z[j2, d2] if j2 >= 0 else 0.0
        cn += float(st.nlast[j2, d2]) if j2 >= 0 else 0.0
    x[9] = s * h[j, d]
    x[10] = st.nlast[j, d]
    x[11] = cn
    x[12] = 1.0
    return x


def learn_shared(st: State, p: Params) -> None:
    """Bayesian linear regression with forgetting of the shared forecaster's weights on
    (features of the previous tick, this window's count), a rotating quarter of the channels
    (silent columns: features (0, …, 0, 1), count 0). With ``p.sh_c`` = c > 0, after
    ``SH_IRLS_AFTER`` windows each sample is weighted 1 / (max(0, w·x) + c) (Poisson weights
    at the current fit) and the window's weights are scaled to mean 1."""
    sxx = np.zeros((2, NF, NF))
    sxy = np.zeros((2, NF))
    quiet = [0.0, 0.0]
    sw = [0.0, 0.0]
    ns = [0.0, 0.0]
    k = int(st.mixage[0])
    irls = p.sh_c > 0.0 and k >= SH_IRLS_AFTER
    for j in range(st.active.shape[0]):
        for d in range(p.d1):
            if (j + d + k) % 4 != 0:  # a rotating quarter of the channels
                continue
            if not st.active[j]:
                quiet[d % 2] += 1.0
                continue
            x = features(st, p, st.zprev, st.hprev, j, d)
            y = float(st.ncnt[j, d])
            om = 1.0 / (max(float(np.dot(st.Wsh[d % 2], x)), 0.0) + p.sh_c) if irls else 1.0
            sw[d % 2] += om
            ns[d % 2] += 1.0
            for a in range(NF):  # upper triangle, mirrored below
                if x[a] == 0.0:
                    continue
                sxy[d % 2, a] += x[a] * om * y
                for b in range(a, NF):
                    sxx[d % 2, a, b] += x[a] * om * x[b]
    work = np.zeros((NF, NF + 1))
    out = np.zeros(NF)
    for pol in range(2):
        om = 1.0 / (max(float(st.Wsh[pol, NF - 1]), 0.0) + p.sh_c) if irls else 1.0
        sxx[pol, NF - 1, NF - 1] += om * quiet[pol]
        if irls and sw[pol] + om * quiet[pol] > 0.0:  # weights scaled to mean 1
            f = (ns[pol] + quiet[pol]) / (sw[pol] + om * quiet[pol])
            sxx[pol] *= f
            sxy[pol] *= f
        for a in range(NF):
            for b in range(a + 1, NF):
                sxx[pol, b, a] = sxx[pol, a, b]
        st.Bsh[pol] = q(p.sh_forget * st.Bsh[pol] + sxy[pol], p.qs)
        st.Lsh[pol] = q(p.sh_forget * st.Lsh[pol] + sxx[pol], p.qs)
        solve_into(st.Lsh[pol], st.Bsh[pol], SH_RIDGE, work, out)
        st.Wsh[pol] = q(out, p.qs)


def learn_residual(st: State, p: Params) -> None:
    """z_c(T) ≈ g_c h_c(T − Δ) + ρ_c z_c(T − Δ) + Σ_o R_o z_{c+o}(T − Δ), Bayesian synapse
    (majorized information) on the forecast error z_c(T) − x'_c (``fprev``)."""
    if p.msh:
        learn_shared(st, p)
    G = np.zeros((2, 8))
    info = np.zeros((2, 8))
    for j in np.flatnonzero(st.active):
        for d in range(p.d1):
            pol = d % 2
            zp = float(st.zprev[j, d])
            hp = float(st.hprev[j, d])
            xs = []
            for o in range(8):
                j2, d2 = nbr(p, j, d, o)
                xs.append(float(st.zprev[j2, d2]) if j2 >= 0 else 0.0)
            asum = zp + hp if p.fc_hier else zp
            if p.fc_lat:
                for x in xs:
                    asum += x
            err = st.z1[j, d] - st.fprev[j, d]
            pi = min(max(1.0 / (st.vF[j, d] + p.v0), p.pi_min), p.pi_max)
            s2 = 1.0 / (1.0 / (st.srho[j, d] + p.q) + pi * zp * asum)
            st.srho[j, d] = q(s2, p.qs)
            st.rho[j, d] = q(min(max(st.rho[j, d] + s2 * pi * err * zp, 0.0), 1.0), p.qs)
            if p.fc_hier:
                s2 = 1.0 / (1.0 / (st.sgh[j, d] + p.q) + pi * hp * asum)
                st.sgh[j, d] = q(s2, p.qs)
                st.gh[j, d] = q(min(max(st.gh[j, d] + s2 * pi * err * hp, 0.0), 1.0), p.qs)
            for o, x in enumerate(xs):
                G[pol, o] += pi * err * x
                info[pol, o] += pi * x * asum
    if p.fc_lat:
        bayes_update(st.R, st.SR, G, info, 0, p.q, 1.0, p.qs,
                     salt(p, st.counters[C_TICKS], 4))


def gain(st: State, pol: int) -> float:
    """κ: the forecast unit's count calibration Σ n / Σ m_0 of polarity pol, in [1/4, 4]."""
    if st.odisp[pol, 3] <= 0.0:
        return 1.0
    return min(max(float(st.odisp[pol, 2]) / float(st.odisp[pol, 3]), 0.25), 4.0)


def mix(st: State, sc: Scratch, p: Params, tt: int, learning: bool) -> None:
    """The rate experts at horizon tick tt: score each expert's count forecast on the window
    just ended (Poisson, floor m₀, without ln n!), discount and add to the per-channel and
    sensor-wide log-evidence (learning only), update the experts' EMAs of the counts, reset
    the counts, forecast the next window: m_0 = x' Δ/τ (forecast unit, 0 if silent),
    m_i = zk_i."""
    ne = st.Lmix.shape[2]
    g = np.zeros((2, ne))
    od = np.zeros((2, 4))
    kap = [gain(st, pol) for pol in range(2)]
    st.mixage[0] += 1
    corr = [1.0 - (1.0 - float(sc.betak[i])) ** int(st.mixage[0]) for i in range(p.ns)]
    for j in range(st.active.shape[0]):
        act = bool(st.active[j])
        for d in range(p.d1):
            n = float(st.ncnt[j, d])
            pol = d % 2
            if act and learning:
                od[pol, 2] += n
                od[pol, 3] += float(st.mprev[j, d, 0]) / kap[pol]
            if act and learning and (j + d + int(st.mixage[0])) % 4 == 0:
                # the mixture's forecast for the window just ended (a rotating quarter)
                logit = [float(st.Lmix[j, d, i]) + p.mix_share * float(st.Lglob[pol, i])
                         for i in range(ne)]
                top = max(logit)
                wsum = mean = second = 0.0
                for i in range(ne):
                    w = math.exp(logit[i] - top)
                    m = float(st.mprev[j, d, i])
                    wsum += w
                    mean += w * m
                    second += w * (m + m * m)
                mean /= wsum
                var = max(second / wsum - mean * mean, mean)
                od[pol, 0] += (n - mean) * (n - mean) - var
                od[pol, 1] += mean * mean
            if learning:
                for i in range(ne):
                    m = float(st.mprev[j, d, i]) + p.m0
                    ll = -m
                    if n > 0.0:
                        ll += n * math.log(m)
                    g[d % 2, i] += ll
                    st.Lmix[j, d, i] = q(st.Lmix[j, d, i] * p.mix_gamma + ll, p.qs)
            st.ncnt[j, d] = 0
            st.mprev[j, d, 0] = q(kap[pol] * st.fprev[j, d] * (p.horizon_us / p.tau_us), p.qs) \
                if act else 0.0
            for i in range(p.ns):  # EMAs of the window counts, β_i = 1 − exp(−Δ/τ_i)
                b = float(sc.betak[i])
                st.zk[j, d, i] = q((1.0 - b) * st.zk[j, d, i] + b * n, p.qs)
                st.mprev[j, d, i + 1] = q(st.zk[j, d, i] / corr[i], p.qs)
            st.nlast[j, d] = n
    if p.msh:  # the shared linear forecaster, on this tick's features; silent columns: bias
        for j in range(st.active.shape[0]):
            for d in range(p.d1):
                if st.active[j]:
                    x = features(st, p, st.z1, st.hprev, j, d)
                    acc = 0.0
                    for a in range(NF):
                        acc += float(st.Wsh[d % 2, a]) * x[a]
                else:
                    acc = float(st.Wsh[d % 2, NF - 1])
                st.mprev[j, d, ne - 1] = q(max(acc, 0.0), p.qs)
    if learning:
        half = st.active.shape[0] * p.d1 // 2
        a = p.od_rate
        for pol in range(2):
            for i in range(ne):
                st.Lglob[pol, i] = q(st.Lglob[pol, i] * p.mix_gamma + g[pol, i] / half, p.qs)
            if od[pol, 3] > 0.0:
                st.odisp[pol, 4] += 1.0
                r = max(a, 1.0 / st.odisp[pol, 4])
                for k in range(4):
                    st.odisp[pol, k] = q((1.0 - r) * st.odisp[pol, k] + r * od[pol, k], p.qs)


def forecast(st: State, p: Params, j: int) -> None:
    """hprev_j ← h = W1 μ1';  fprev_j ← max(0, g ⊙ h + ρ ⊙ z + Σ_o R_o z_{·+o}),
    μ1' = A μ1 or max(0, μ1 + W2 (A μ2 − μ2))."""
    if p.layers == 1:
        m1 = matvec(st.A[_wi(p, j)], st.mu1[j])
    else:
        big, slot = parent(p, j)
        m2 = matvec(st.A[_wi(p, big)], st.mu2[big]) - st.mu2[big]
        m1 = np.maximum(st.mu1[j] + matvec(st.W2[_wi(p, big), slot:slot + p.k1], m2), 0.0)
    h = matvec(st.W1[_wi(p, j)], m1)
    st.hprev[j] = q(h, p.qs)
    x = st.gh[j] * h + st.rho[j] * st.z1[j]
    for d in range(p.d1):
        for o in range(8):
            j2, d2 = nbr(p, j, d, o)
            if j2 >= 0:
                x[d] += st.R[0, d % 2, o] * st.z1[j2, d2]
    st.fprev[j] = q(np.maximum(x, 0.0), p.qs)


def surprise(st: State, p: Params) -> float:
    f = 0.0
    for j in np.flatnonzero(st.active):
        e = st.z1[j] - st.xhat1[j]
        f += float(np.sum(0.5 * st.pi1[j] * e * e))
    if p.layers == 2:
        for big in np.flatnonzero(st.nact2):
            e = l2_input(st, p, big) - st.pred2[big]
            f += float(np.sum(0.5 * st.pi2[big] * e * e))
    return f


def silence(st: State, sc: Scratch, p: Params, j: int) -> None:
    st.active[j] = 0
    st.busy1[j] = 0
    st.clock[K_NACTIVE] -= 1
    big, slot = parent(p, j)
    for a in (st.z1, st.xhat1, st.eps1, st.zprev, st.hprev, st.fprev, st.u1, st.mu1, st.mus1):
        a[j] = 0.0
    if p.layers == 1:
        st.muprev[j] = 0.0
        return
    st.nact2[big] -= 1
    if st.nact2[big] == 0:
        for a in (st.pred2, st.eps2, st.u2, st.mu2, st.mus2, st.muprev):
            a[big] = 0.0
        st.busy2[big] = 0
    else:
        for k in range(p.k1):
            check2(st, sc, p, big, slot + k)


def tick(st: State, sc: Scratch, p: Params, tt: int, learning: bool) -> None:
    st.counters[C_TICKS] += 1
    # error units are polled every tick only in columns that got input or are relaxing
    # (busy); every column at learning epochs and horizon ticks (traces stay anchored at
    # the column's last poll in between: decay is computed lazily, in closed form)
    epoch = tt % p.learn_us == 0 or tt % p.horizon_us == 0
    for j in np.flatnonzero(st.active):
        if epoch or st.busy1[j]:
            decay(st, sc, p, j, tt)
            sweep1(st, p, j)
    for step in range(p.relax_steps):  # only columns whose beliefs still move or got input
        for j in range(st.active.shape[0]):
            if st.active[j] and st.busy1[j]:
                if step > 0:
                    sweep1(st, p, j)
                relax1(st, sc, p, j)
        if p.layers == 2:
            for big in range(st.nact2.shape[0]):
                if st.nact2[big] and st.busy2[big]:
                    relax2(st, sc, p, big)
    if learning and tt % p.learn_us == 0:
        learn(st, sc, p)
        refresh(st, p)
    if tt % p.learn_us == 0:
        homeostasis(st, p, learning)
    if tt % p.horizon_us == 0:
        if learning:
            learn_temporal(st, p)
            learn_residual(st, p)
            for j in np.flatnonzero(st.active):
                fe = st.z1[j] - st.fprev[j]
                st.vF[j] = q((1.0 - p.alpha) * st.vF[j] + p.alpha * fe * fe, p.qs)
        mu, _ = top(st, p)
        st.muprev[:] = mu
        for j in np.flatnonzero(st.active):
            st.zprev[j] = st.z1[j]
            forecast(st, p, j)
        mix(st, sc, p, tt, learning)
        st.mixage[1] = 0
        f = surprise(st, p)
        m = st.baseline[0]
        st.baseline[0] = m + p.beta * (f - m)
        st.baseline[1] = (1.0 - p.beta) * (st.baseline[1] + p.beta * (f - m) ** 2)
        for j in np.flatnonzero(st.active):  # per-column baselines, same rule
            e = st.z1[j] - st.xhat1[j]
            s = 0.0
            for d in range(p.d1):
                s += 0.5 * st.pi1[j, d] * e[d] * e[d]
            m = st.sbase1[j, 0]
            st.sbase1[j, 0] = m + p.beta * (s - m)
            st.sbase1[j, 1] = (1.0 - p.beta) * (st.sbase1[j, 1] + p.beta * (s - m) ** 2)
    for j in np.flatnonzero(st.active):
        if epoch and st.z1[j].max() < p.z_off:
            silence(st, sc, p, j)


def catch_up(st: State, sc: Scratch, p: Params, t: int, learning: bool, still: bool) -> None:
    """The rate experts see the silent windows end that are pending since the clock jumped
    (mixage[2]) up to t (at most mix_kmax in a row); still: the silence goes on."""
    if st.mixage[2] < 0:
        return
    tt = -(-int(st.mixage[2]) // p.horizon_us) * p.horizon_us
    while tt <= t and st.mixage[1] < p.mix_kmax:
        mix(st, sc, p, tt, learning)
        st.mixage[1] += 1
        tt += p.horizon_us
    st.mixage[2] = (t // p.horizon_us + 1) * p.horizon_us if still else -1


def advance(st: State, sc: Scratch, p: Params, t: int, learning: bool) -> None:
    while st.clock[K_NEXT] <= t:
        if st.clock[K_NACTIVE] == 0:
            if st.mixage[2] < 0:  # silent windows pending from here (catch_up)
                st.mixage[2] = st.clock[K_NEXT]
            st.clock[K_NEXT] = (t // p.tick_us + 1) * p.tick_us
            break
        tick(st, sc, p, int(st.clock[K_NEXT]), learning)
        st.clock[K_NEXT] += p.tick_us


def run_batch(st: State, sc: Scratch, p: Params, t: np.ndarray, x: np.ndarray, y: np.ndarray,
              pol: np.ndarray, t_end: int, learning: bool) -> None:
    """Same contract as ``kernels.run_batch``."""
    for i in range(t.shape[0]):
        ti = int(t[i])
        if p.clocked:  # the event counts as if it came at its tick's start
            ti = (ti // p.tick_us) * p.tick_us
        advance(st, sc, p, ti, learning)
        event(st, sc, p, ti, int(x[i]), int(y[i]), int(pol[i]), learning)
    st.counters[C_EVENTS] += t.shape[0]
    advance(st, sc, p, t_end, learning)
    catch_up(st, sc, p, t_end, learning, True)
    st.clock[K_TNOW] = t_end
