"""Numba kernels of the read-out: what ``Network.readout`` publishes, from the state.

The same equations as the NumPy twin ``network.compute_readout_numpy`` (docs/model.md §1,
§4), as loops whose inner loop runs over contiguous memory, skipping work on silent
columns where its result is known (zero residual, zero beliefs):

    z_jd(t) = z1_jd · exp(−(t − t_j)/τ) on active columns, 0 on silent ones    (events)
    e_jd = z_jd − x̂_jd,  surprise_j = Σ_d ½ π_jd e_jd²,  F ∋ Σ_active −½ ln π
    σ²_jk = 1/(prior_jk + Σ_d W_dk² π_jd)                                     (Laplace)
    x'_jd = max(0, g_jd Σ_k W_dk μ'_jk + ρ_jd z_jd + Σ_o R_{p,o} z_{(y,x)+o, p})
    λ = x'/τ (events/s),  var λ = (v_F + g_jd² Σ_k W_dk² σ²_jk)/τ²  ((events/s)²)

Layout: layer-1 column j = R·cols1 + C holds channel d = (a·column + b)·2 + p for the
pooled cell (y, x) = (R·column + a, C·column + b) and polarity p. The traces z are also
kept as a padded map (rows1·column + 2, (cols1·column + 2)·2), zero outside the column
grid as in the twin, so that the lateral sum over the 8 neighbouring cells is a stencil
along contiguous rows (cells of edge columns beyond the sensor take part; cells
outside the pooled grid are never written to the maps). A layer-2 column P = R2·cols2 + C2
reads child (2R2 + qy, 2C2 + qx) in slots (qy·2 + qx)·k1 + k (off-grid children: 0).
Weights come in transposed, (nW, K, D), so that dot products and updates run along D.

Every kernel is ``@njit(cache=True, nogil=True)`` (the reader thread keeps decoding while
the engine reads out) with the fast-math flags that only reassociate and fuse
(``reassoc``, ``contract``: results differ from the twin in the last bits; NaN and Inf
keep their IEEE meaning). The step kernels take State arrays and fill caller-allocated
outputs; ``readout_arrays`` chains them in one call (one dispatch and one release of the
GIL per read-out: ~30 separate calls cost 25 % more at 640×480) and returns fresh arrays,
which the caller may keep or publish. Sums are float64, published arrays are cast to
float32 when written. Silent columns' traces and predictions are not read (the engine
keeps them at 0). A NaN or Inf in any other state array the twin reads still reaches some
published number (the daemon's roll-back relies on it): a skipped product is replaced by
a 0·x term where x could be non-finite and is not read elsewhere.

Measured on the 2-core VM (both read-outs on the same states, default spec, recording fed
in 1 ms batches, interleaved, median of best-of-5): Prophesee evt2_sample 640×480 0.13 ms
against 1.27 ms for the twin; evt3_sample 1280×720 0.45 ms against 3.4 ms.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_kernel = njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
"""Decorator of every read-out kernel (module-level, arrays in/out, GIL released)."""

_LOG_LO = 1e-100
_LOG_HI = 1e100


@_kernel
def log_sum(values: np.ndarray, row: int) -> float:
    """Σ ln v over row ``row`` of a 2-D array of positive values, one log per ~200 decades.

    ln Π v is exact up to the product's rounding (≈ n ulp): the running product is flushed
    into the sum before it leaves [1e-100, 1e100], and values outside that range are
    logged directly. A value ≤ 0 or NaN gives NaN (``np.log`` would give NaN or −inf: the
    free energy is non-finite either way).
    """
    acc = 0.0
    prod = 1.0
    for i in range(values.shape[1]):
        v = values[row, i]
        if not v > 0.0:
            return math.nan
        if v < _LOG_LO or v > _LOG_HI:
            acc += math.log(v)
            continue
        prod *= v
        if prod < _LOG_LO or prod > _LOG_HI:
            acc += math.log(prod)
            prod = 1.0
    return acc + math.log(prod)


@_kernel
def layer1_errors(z1: np.ndarray, tcol: np.ndarray, active: np.ndarray, xhat1: np.ndarray,
                  pi1: np.ndarray, t_us: int, tau_us: float, column: int,
                  emap: np.ndarray, s_col: np.ndarray) -> tuple[float, float]:
    """Layer-1 residuals at t_us and their surprise; returns (Σ_j s_col_j, Σ_active −½ ln π).

    e_jd = z_jd − x̂_jd, z_jd = z1_jd · exp(−max(t_us − tcol_j, 0)/τ) on active columns; z
    is written into ``emap`` (rows1·column + 2, (cols1·column + 2)·2) float64: the padded
    trace map,
    cell (y, x) polarity p at [y + 1, 2(x + 1) + p], zero on entry (silent columns stay 0);
    s_col_j = ½ Σ_d π_jd e_jd² (float32, (n1,)), 0 for silent columns.
    Shapes: z1, xhat1, pi1 (n1, D1); tcol int64 µs, active uint8 (n1,); τ in µs.
    """
    n1, d1 = z1.shape
    c1 = (emap.shape[1] // 2 - 2) // column
    e = np.empty(d1)
    zz = np.empty(d1)
    total = 0.0
    logs = 0.0
    for j in range(n1):
        if active[j] == 0:
            s_col[j] = 0.0
            continue
        f = math.exp(-float(max(t_us - tcol[j], 0)) / tau_us)
        s = 0.0
        for d in range(d1):
            zv = z1[j, d] * f
            zz[d] = zv
            v = zv - xhat1[j, d]
            e[d] = v
            s += pi1[j, d] * v * v
        s *= 0.5
        s_col[j] = s
        total += s
        logs += log_sum(pi1, j)
        y0 = (j // c1) * column + 1
        x0 = ((j % c1) * column + 1) * 2
        for a in range(column):
            base = a * column * 2
            for i in range(2 * column):
                emap[y0 + a, x0 + i] = zz[base + i]
    return total, -0.5 * logs


@_kernel
def layer2_errors(mus1: np.ndarray, pred2: np.ndarray, pi2: np.ndarray, nact2: np.ndarray,
                  rows1: int, cols1: int, cols2: int) -> tuple[float, float]:
    """(Σ_active ½ π2 e2², Σ_active −½ ln π2) with e2 = μ̂1 (children, 0 off-grid) − pred2.

    Shapes: mus1 (n1, K1); pred2, pi2 (n2, 4·K1); nact2 (n2,) active children.
    """
    n2 = pred2.shape[0]
    k1 = mus1.shape[1]
    total = 0.0
    logs = 0.0
    for big in range(n2):
        if nact2[big] == 0:
            continue
        for quad in range(4):
            cy = 2 * (big // cols2) + quad // 2
            cx = 2 * (big % cols2) + quad % 2
            inside = cy < rows1 and cx < cols1
            child = cy * cols1 + cx
            for k in range(k1):
                s = quad * k1 + k
                x = mus1[child, k] if inside else 0.0
                ev = x - pred2[big, s]
                total += 0.5 * pi2[big, s] * ev * ev
        logs += log_sum(pi2, big)
    return total, -0.5 * logs


@_kernel
def belief_variances_1(w1sq_t: np.ndarray, pi1: np.ndarray, pi2: np.ndarray, pi_prior: float,
                       layers: int, cols1: int, cols2: int, var1: np.ndarray,
                       sigma1: np.ndarray) -> None:
    """σ²_jk = 1/(prior_jk + Σ_d W1_dk² π1_jd) into var1 (float64) and σ into sigma1 (float32).

    prior = π_prior with one layer, else the precision π2 of the layer-2 error unit that
    reads μ1_jk. Shapes: w1sq_t (nW1, K1, D1) squared transposed weights, nW1 ∈ {1, n1};
    pi1 (n1, D1); pi2 (n2, 4·K1); var1, sigma1 (n1, K1).
    """
    n1, d1 = pi1.shape
    k1 = w1sq_t.shape[1]
    for j in range(n1):
        w = 0 if w1sq_t.shape[0] == 1 else j
        cy = j // cols1
        cx = j % cols1
        big = (cy // 2) * cols2 + cx // 2
        slot = ((cy % 2) * 2 + cx % 2) * k1
        for k in range(k1):
            acc = 0.0
            for d in range(d1):
                acc += w1sq_t[w, k, d] * pi1[j, d]
            prior = pi_prior if layers == 1 else pi2[big, slot + k]
            v = 1.0 / (prior + acc)
            var1[j, k] = v
            sigma1[j, k] = math.sqrt(v)


@_kernel
def belief_variances_2(w2sq_t: np.ndarray, pi2: np.ndarray, pi_prior: float,
                       sigma2: np.ndarray) -> None:
    """σ_Pk = (π_prior + Σ_s W2_sk² π2_Ps)^(−½) into sigma2 (float32, (n2, K2)).

    Shapes: w2sq_t (nW2, K2, 4·K1) squared transposed weights, nW2 ∈ {1, n2}; pi2 (n2, 4·K1).
    """
    n2, d2 = pi2.shape
    k2 = w2sq_t.shape[1]
    for big in range(n2):
        w = 0 if w2sq_t.shape[0] == 1 else big
        for k in range(k2):
            acc = 0.0
            for s in range(d2):
                acc += w2sq_t[w, k, s] * pi2[big, s]
            sigma2[big, k] = math.sqrt(1.0 / (pi_prior + acc))


@_kernel
def layer2_forecast(w2_t: np.ndarray, a: np.ndarray, mu2: np.ndarray,
                    dpred: np.ndarray) -> None:
    """Change of the layer-2 predictions over the horizon: dpred_P = W2 (A μ2_P − μ2_P).

    Shapes: w2_t (nW2, K2, 4·K1) transposed weights; a (nA, K2, K2) with nA ∈ {1, n2};
    mu2 (n2, K2); dpred (n2, 4·K1) float64, filled.
    """
    n2, k2 = mu2.shape
    d2 = w2_t.shape[2]
    for big in range(n2):
        wa = 0 if a.shape[0] == 1 else big
        ww = 0 if w2_t.shape[0] == 1 else big
        for s in range(d2):
            dpred[big, s] = 0.0
        for k in range(k2):
            acc = 0.0
            for m in range(k2):
                acc += a[wa, k, m] * mu2[big, m]
            dm = acc - mu2[big, k]
            for s in range(d2):
                dpred[big, s] += w2_t[ww, k, s] * dm


@_kernel
def forecast_columns(w1_t: np.ndarray, w1sq_t: np.ndarray, mu1: np.ndarray, a1: np.ndarray,
                     dpred: np.ndarray, v_f: np.ndarray, g_h: np.ndarray, var1: np.ndarray,
                     layers: int, cols1: int, cols2: int, wmu: np.ndarray,
                     pvar: np.ndarray) -> None:
    """Per column: wmu_j = g_j ⊙ W1 μ'_j and pvar_j = v_F,j + g_j² ⊙ W1² σ²_j, (n1, D1).

    g_h (n1, D1) is each forecast unit's gain on the hierarchy's forecast.

    μ'_j = A μ1_j (one layer; a1 (nA, K1, K1)) or max(0, μ1_j + dpred[parent, slot])
    (two layers; dpred from ``layer2_forecast``). Where μ' = 0 the product is 0 (W1 is
    also read by the variances, so a non-finite W1 still shows). Shapes: w1_t, w1sq_t
    (nW1, K1, D1) transposed weights and their squares; mu1, var1 (n1, K1); v_f (n1, D1).
    """
    n1, k1 = mu1.shape
    d1 = w1_t.shape[2]
    mup = np.empty(k1)
    for j in range(n1):
        w = 0 if w1_t.shape[0] == 1 else j
        any_mu = False
        if layers == 1:
            wa = 0 if a1.shape[0] == 1 else j
            for k in range(k1):
                acc = 0.0
                for m in range(k1):
                    acc += a1[wa, k, m] * mu1[j, m]
                mup[k] = acc
                any_mu = any_mu or acc != 0.0
        else:
            cy = j // cols1
            cx = j % cols1
            big = (cy // 2) * cols2 + cx // 2
            slot = ((cy % 2) * 2 + cx % 2) * k1
            for k in range(k1):
                v = mu1[j, k] + dpred[big, slot + k]
                v = v if v > 0.0 or v != v else 0.0  # max(v, 0) keeping NaN
                mup[k] = v
                any_mu = any_mu or v != 0.0
        for d in range(d1):
            wmu[j, d] = 0.0
            pvar[j, d] = 0.0
        if any_mu:
            for k in range(k1):
                m = mup[k]
                for d in range(d1):
                    wmu[j, d] += w1_t[w, k, d] * m
        for k in range(k1):
            s2 = var1[j, k]
            for d in range(d1):
                pvar[j, d] += w1sq_t[w, k, d] * s2
        for d in range(d1):
            g = g_h[j, d]
            wmu[j, d] *= g
            pvar[j, d] = g * g * pvar[j, d] + v_f[j, d]


@_kernel
def forecast_maps(wmu: np.ndarray, pvar: np.ndarray, rho: np.ndarray, r_lat: np.ndarray,
                  emap: np.ndarray, active: np.ndarray, column: int, tau_s: float,
                  rate_hz: np.ndarray, rate_var: np.ndarray) -> None:
    """Rate map λ = max(0, wmu + ρ z + Σ_o R_{p,o} z_{·+o})/τ and var λ = pvar/τ².

    Writes rate_hz, rate_var (Hp, 2·Wp) float32 (cell x, polarity p at 2x + p; channel 0
    OFF, 1 ON), one row of cells at a time; the lateral stencil runs only on rows of
    columns with an active column within one column-row (elsewhere every trace it reads
    is 0: the term is 0·ΣR). Shapes: wmu, pvar, rho (n1, D1); r_lat (2, 8) lateral weights
    [polarity, offset (dy, dx) row-major without the centre]; emap from ``layer1_errors``;
    τ in s.
    """
    hp, wp = rate_hz.shape[0], rate_hz.shape[1] // 2
    rows1 = (emap.shape[0] - 2) // column
    cols1 = (emap.shape[1] // 2 - 2) // column
    inv_tau = 1.0 / tau_s  # multiplying by it differs from dividing by ≤ 1 ulp (float64)
    inv_tau2 = 1.0 / (tau_s * tau_s)
    lat_zero = 0.0 * (np.sum(r_lat[0]) + np.sum(r_lat[1]))
    row_active = np.zeros(rows1, np.bool_)
    for j in range(active.shape[0]):
        if active[j] != 0:
            row_active[j // cols1] = True
    rw = np.empty((8, 2 * wp))  # lateral weight of offset o for flat index 2x + p
    for o in range(8):
        for i in range(2 * wp):
            rw[o, i] = r_lat[i & 1, o]
    lat = np.empty(2 * wp)
    for y in range(hp):
        rr = y // column
        a = y - rr * column
        near = row_active[rr] or (rr > 0 and row_active[rr - 1]) or (
            rr + 1 < rows1 and row_active[rr + 1])
        if near:
            lat[:] = 0.0
            o = 0
            for dy in range(3):
                for dx in range(3):
                    if dy == 1 and dx == 1:
                        continue
                    for i in range(2 * wp):
                        lat[i] += rw[o, i] * emap[y + dy, i + 2 * dx]
                    o += 1
        else:
            lat[:] = lat_zero
        base = a * column * 2
        for cc in range(cols1):
            j = rr * cols1 + cc
            x0 = 2 * cc * column
            n = min(2 * column, 2 * wp - x0)
            for i in range(n):
                xi = x0 + i
                xp = wmu[j, base + i] + rho[j, base + i] * emap[y + 1, xi + 2] + lat[xi]
                xp = xp if xp > 0.0 or xp != xp else 0.0  # max(xp, 0) keeping NaN
                rate_hz[y, xi] = xp * inv_tau
                rate_var[y, xi] = pvar[j, base + i] * inv_tau2


@_kernel
def belief_sums(mu1: np.ndarray, mu2: np.ndarray, layers: int) -> tuple[float, float]:
    """(Σ over layers of Σ μ, Σ μ_top²): the sparsity and prior terms of F; μ (n, K)."""
    s = 0.0
    q = 0.0
    for v in mu1.ravel():
        s += v
        q += v * v
    if layers == 1:
        return s, q
    q = 0.0
    for v in mu2.ravel():
        s += v
        q += v * v
    return s, q


@_kernel
def transposed(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Wᵀ, (Wᵀ)²) per weight set: (nW, D, K) → two fresh (nW, K, D) float64 arrays."""
    nw, d, k = w.shape
    w_t = np.empty((nw, k, d))
    wsq_t = np.empty((nw, k, d))
    for i in range(nw):
        for dd in range(d):
            for kk in range(k):
                v = w[i, dd, kk]
                w_t[i, kk, dd] = v
                wsq_t[i, kk, dd] = v * v
    return w_t, wsq_t


@_kernel
def readout_arrays(z1: np.ndarray, tcol: np.ndarray, active: np.ndarray, xhat1: np.ndarray,
                   pi1: np.ndarray, mu1: np.ndarray, mus1: np.ndarray, w1: np.ndarray,
                   g_h: np.ndarray, rho: np.ndarray, r_lat: np.ndarray, v_f: np.ndarray,
                   pred2: np.ndarray,
                   pi2: np.ndarray, nact2: np.ndarray, mu2: np.ndarray, w2: np.ndarray,
                   a: np.ndarray, t_us: int, tau_us: float, column: int, rows1: int,
                   cols1: int, cols2: int, hp: int, wp: int, layers: int,
                   pi_prior: float) -> tuple:
    """The whole read-out in one call (one dispatch, the GIL released once).

    Returns fresh arrays (rate_hz, rate_var (Hp, 2·Wp), surprise_map (n1,), sigma1 (n1, K1),
    sigma2 (n2, K2) (empty with one layer), mu1 (n1, K1), mu2 (n2, K2), all float32) and the
    float64 sums (Σ ½ π e² over both layers, Σ_active −½ ln π over both layers, Σ μ over
    the layers, Σ μ_top²); see the kernels above for each quantity. Arguments are the State
    arrays (r_lat = R[0], (2, 8)), t_us and τ in µs, the geometry of the spec.
    """
    n1, k1 = mu1.shape
    n2, k2 = mu2.shape
    emap = np.zeros((rows1 * column + 2, (cols1 * column + 2) * 2))
    s_col = np.empty(n1, np.float32)
    total, logs = layer1_errors(z1, tcol, active, xhat1, pi1, t_us, tau_us, column, emap,
                                s_col)
    if layers == 2:
        total2, logs2 = layer2_errors(mus1, pred2, pi2, nact2, rows1, cols1, cols2)
        total += total2
        logs += logs2
    mu_sum, top_sq = belief_sums(mu1, mu2, layers)
    w1_t, w1sq_t = transposed(w1)
    var1 = np.empty((n1, k1))
    sigma1 = np.empty((n1, k1), np.float32)
    belief_variances_1(w1sq_t, pi1, pi2, pi_prior, layers, cols1, cols2, var1, sigma1)
    if layers == 2:
        w2_t, w2sq_t = transposed(w2)
        sigma2 = np.empty((n2, k2), np.float32)
        belief_variances_2(w2sq_t, pi2, pi_prior, sigma2)
        dpred = np.empty(pred2.shape)
        layer2_forecast(w2_t, a, mu2, dpred)
    else:
        sigma2 = np.empty((0, k2), np.float32)
        dpred = np.zeros((1, 1))
    wmu = np.empty(v_f.shape)
    pvar = np.empty(v_f.shape)
    forecast_columns(w1_t, w1sq_t, mu1, a, dpred, v_f, g_h, var1, layers, cols1, cols2, wmu,
                     pvar)
    rate_hz = np.empty((hp, 2 * wp), np.float32)
    rate_var = np.empty((hp, 2 * wp), np.float32)
    forecast_maps(wmu, pvar, rho, r_lat, emap, active, column, tau_us * 1e-6, rate_hz,
                  rate_var)
    return (rate_hz, rate_var, s_col, sigma1, sigma2, mu1.astype(np.float32),
            mu2.astype(np.float32), total, logs, mu_sum, top_sq)


@_kernel
def mixture_maps(rate_hz: np.ndarray, lmix: np.ndarray, lglob: np.ndarray, mprev: np.ndarray,
                 odisp: np.ndarray, mix_share: float, column: int, cols1: int,
                 horizon_s: float, rate_var: np.ndarray, count_mean: np.ndarray,
                 count_var: np.ndarray) -> None:
    """The published count forecast: the per-channel mixture of rate experts.

    In: rate_hz (Hp, 2·Wp) the forecast units' rate x'/τ (events/s); lmix (n1, D1, NE) and
    lglob (2, NE) the experts' log-evidence, mprev (n1, D1, NE) the experts' forecasts made
    at the last horizon tick (experts ≥ 1 are read from it), odisp (2, 5) the overdispersion and
    calibration statistics (``augury.model.mixture``, its NumPy twin). Writes (Hp, 2·Wp)
    float32: count_mean = Σ w m (m_0 = κ x'Δ/τ), count_var = Σ w (m + m²) − mean² + c mean²,
    rate_hz = count_mean/Δ (in place), rate_var = (count_var − count_mean)/Δ².
    """
    hp, w2 = rate_hz.shape
    ne = lmix.shape[2]
    c = np.zeros(2)
    kap = np.ones(2)
    for pol in range(2):
        if odisp[pol, 1] > 0.0:
            c[pol] = max(odisp[pol, 0], 0.0) / odisp[pol, 1]
        if odisp[pol, 3] > 0.0:
            kap[pol] = min(max(odisp[pol, 2] / odisp[pol, 3], 0.25), 4.0)
    logit = np.empty(ne)
    ms = np.empty(ne)
    wp = w2 // 2
    rows1 = -(-hp // column)
    for cy in range(rows1):  # column by column: no division per cell
        for r in range(column):
            y = cy * column + r
            if y >= hp:
                break
            for cx in range(cols1):
                j = cy * cols1 + cx
                for cc in range(column):
                    x = cx * column + cc
                    if x >= wp:
                        break
                    for pol in range(2):
                        d = (r * column + cc) * 2 + pol
                        xi = 2 * x + pol
                        mmax = 0.0
                        for i in range(ne):
                            m = kap[pol] * rate_hz[y, xi] * horizon_s if i == 0 else \
                                mprev[j, d, i]
                            ms[i] = m
                            mmax = max(mmax, m) if m == m else np.inf  # a NaN must show
                        if mmax <= 1e-12:  # no expert expects events: nor does the mixture
                            count_mean[y, xi] = 0.0
                            count_var[y, xi] = 0.0
                            rate_hz[y, xi] = 0.0
                            rate_var[y, xi] = 0.0
                            continue
                        top = -np.inf
                        for i in range(ne):
                            v = lmix[j, d, i] + mix_share * lglob[pol, i]
                            logit[i] = v
                            top = max(top, v)
                        wsum = 0.0
                        mean = 0.0
                        second = 0.0
                        for i in range(ne):
                            m = ms[i]
                            if logit[i] - top < -40.0 and math.isfinite(m):
                                continue  # weight < 5e-18 of the best (a NaN still shows)
                            w = math.exp(logit[i] - top)
                            wsum += w
                            mean += w * m
                            second += w * (m + m * m)
                        mean /= wsum
                        var = max(second / wsum - mean * mean, mean) + c[pol] * mean * mean
                        count_mean[y, xi] = mean
                        count_var[y, xi] = var
                        rate_hz[y, xi] = mean / horizon_s
                        rate_var[y, xi] = (var - mean) / (horizon_s * horizon_s)


@_kernel
def observed_map(nlast: np.ndarray, column: int, cols1: int, count_obs: np.ndarray) -> None:
    """The observed counts of the last whole horizon window on the published grid.

    In: nlast (n1, D1) float64, each channel's event count in the last completed window
    (``State.nlast``, set by the rate experts at every horizon tick). Writes count_obs
    (Hp, 2·Wp) float32: cell (y, x), polarity p at [y, 2x + p] (channel 0 OFF, 1 ON), the
    layout of ``count_mean``; cells of edge columns beyond the pooled grid are not written.
    The NumPy twin is ``network.column_to_map``.
    """
    hp, w2 = count_obs.shape
    wp = w2 // 2
    rows1 = -(-hp // column)
    for cy in range(rows1):
        for r in range(column):
            y = cy * column + r
            if y >= hp:
                break
            for cx in range(cols1):
                j = cy * cols1 + cx
                x0 = cx * column
                n = min(column, wp - x0)
                for i in range(2 * n):
                    count_obs[y, 2 * x0 + i] = nlast[j, r * column * 2 + i]
