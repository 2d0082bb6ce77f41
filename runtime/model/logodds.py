"""Log-odds belief units (Denève 2008) on the layer-1 columns, an alternative to Gaussian units.

Each layer-1 column j (same pooling and tiling as ``ModelSpec``: D = column²·2 pooled ON/OFF
channels, K = k1 units) holds K binary hidden causes x_jk ∈ {0, 1}. Generative model
(per column, weights a, b shared by all columns like the default W1):

    x_k: a two-state Markov chain, 0 → 1 at r_on, 1 → 0 at r_off (Hz);
    input events of channel d: Poisson with rate λ_d = b_d + Σ_k a_dk x_k   (events/s).

Unit k's membrane u_k (nats) is the log-odds that its cause is present, u = ln p/(1 − p),
p = σ(u). Denève's filter ("Bayesian spiking neurons I", Neural Comput. 20, 2008):

    du/dt = r_on (1 + e^{−u}) − r_off (1 + e^{u}) − θ_k + Σ_d w_dk Σ_events δ(t − t_d),

with θ_k = Σ_d (q_on,dk − q_off,dk) = Σ_d a_dk and w_dk = ln(q_on,dk / q_off,dk) (the prior
term follows from dp/dt = r_on(1 − p) − r_off p with u = ln p/(1 − p); it is 1 + e^{−u},
not 1 − e^{−u}). Mapping: Denève's q_on, q_off are b_d + a_dk and b_d here. Between
events the drift is solved in closed form, in p it is a Riccati equation

    dp/dt = θ (p − p₁)(p − p₂),  p₁ ∈ (0, 1) its stable root (the silent log-odds), p₂ > 1,
    R = (p − p₁)/(p − p₂),  R(t + s) = R(t) e^{−√disc · s},  p = (p₁ − p₂ R)/(1 − R),

so inference costs O(K) per event and nothing in silence (no clock; only the learning
epochs below advance every column, O(n1·K) per epoch). At an event in channel d the
ratio q_on/q_off is taken with the other units' expected contribution (mean field; this
is where explaining-away enters; ``explain_away=False`` gives Denève's independent units,
q_off = b_d):

    λ_d = b_d + Σ_l a_dl p_l,   w_dk = ln(1 + a_dk / max(λ_d − a_dk p_k, b_d)),   u_k += w_dk.

Spike: s_k = 1[u_k > 0] (the MAP decision); up/down crossings are counted. u ∈ [−l_max,
l_max]. Published prediction (rate for the next horizon Δ, events/s): the same λ with each
p replaced by its mean over the next Δ under the Markov prior (no future evidence):
p̄ = p∞ + (p − p∞)(1 − e^{−rΔ})/(rΔ), r = r_on + r_off, p∞ = r_on/r.

Learning (local, Poisson likelihood of each channel; an online EM as in Denève's part II):
the log-likelihood of channel d is Σ_events ln λ_d − ∫ λ_d dt, whose gradient in a_dk is
Σ_events p_k/λ_d − ∫ p_k dt. Its EM fixed point a_dk = Σ_events (a_dk p_k/λ_d) / ∫ p_k dt
is kept as two running sums with forgetting ρ per learning epoch (``learn_us``):
N_dk += a_dk p_k / λ_d at each event of channel d (synapse: presynaptic event × the unit's
p × the channel's own rate λ_d), T_k += ∫ p_jk dt over all columns (postsynaptic only,
closed form of the Riccati drift); likewise N_b,d += b_d/λ_d and T_b += n1 · epoch. At each
epoch a = N/T, b = N_b/T_b (≥ b_min), then every sum ×(1 − ρ); θ and w follow from a, b
(w is not a free weight: it is tied to the generative weights as in Denève's derivation).
All factors of a synapse's update are its own pre event, its unit's p and its channel's
rate: local. Epochs fall at absolute stream times (multiples of ``learn_us``), so any
split of a stream into batches gives the same state.

Bound: a ≤ a_max. Without it the EM sums run away on real and synthetic DVS data: events
come in tight bursts (far from Poisson), so a unit that is on only inside bursts has
a tiny ∫p and a large N, a = N/T grows, θ = Σ_d a_dk grows with it, the unit turns off even
faster after each event (du/dt ≈ −θ when p ≈ 1) and ∫p shrinks further (1 s of bars: θ
from 2·10⁴ to 7·10⁵ Hz, prediction gain over EMA +1.3 instead of +2.5 nats/event).
Defaults (a_max 300 Hz, 100 ms correlation time) come from a small sweep on the first 1.5 s
of the moving bars and the rotating disk (a_max ∈ {300, 1000, 3000}, r_on + r_off ∈ {10,
50, 200} Hz, ρ ∈ {0.005, 0.02}).

Not used: the rule Δw ∝ (s − σ(u))·pre with s = 1[u > 0]; s − σ(u) has the sign of u, so
it only pushes each unit further toward its current decision (no likelihood it ascends).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from augury.model.spec import ModelSpec

# Kernels are compiled with NRT (reference counting) off: they never allocate, and passing
# the state tuple through per-event calls with NRT on cost ~30 % on the moving bars.
C_EVENTS, C_UP, C_DOWN = range(3)
K_STARTED, K_NEXT, K_TNOW = range(3)


@dataclass(frozen=True)
class LogOddsSpec:
    """Hyper-parameters (rates in Hz = events/s or transitions/s, times in µs, u in nats)."""

    r_on_hz: float = 0.5  # prior switching rates: p∞ = 5 %, correlation time 100 ms
    r_off_hz: float = 9.5
    l_max: float = 20.0  # |u| bound
    rho: float = 0.02  # forgetting of the EM sums per learning epoch
    learn_us: int = 5_000
    a_init_hz: float = 200.0  # a ~ U(0.5, 1.5) · a_init
    a_max_hz: float = 300.0  # bound on a (see "Bound" in the module docstring)
    b_init_hz: float = 10.0
    b_min_hz: float = 0.01
    prior_s: float = 0.05  # pseudo-time of the initial a, b in the EM sums (s)
    explain_away: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("r_on_hz", "r_off_hz", "l_max", "a_init_hz", "a_max_hz", "b_init_hz",
                     "b_min_hz",
                     "prior_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LogOddsSpec.{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.rho < 1:
            raise ValueError(f"LogOddsSpec.rho must be in (0, 1), got {self.rho}")
        if self.learn_us < 1:
            raise ValueError(f"LogOddsSpec.learn_us must be >= 1, got {self.learn_us}")


class Params(NamedTuple):
    """Scalars of the kernels."""

    r_on: float
    r_off: float
    l_max: float
    rho: float
    learn_us: int
    b_min: float
    explain_away: bool
    a_max: float


class LoState(NamedTuple):
    """State (float64, times int64 µs). Shapes: n1 columns, D channels, K units.

    u (n1, K) log-odds; tcol (n1,) time u was last advanced to; a (D, K), b (D,) rates (Hz);
    na (D, K), tk (K,), nb (D,), tb (1,) the EM sums (events, s); p1, p2m1, disc, theta (K,)
    the drift constants of each unit (p₁, p₂ − 1, √disc in Hz, θ in Hz); jx, jy, dx, dy the
    pixel → column and channel tables; clock [started, next_epoch_us, t_now_us]; counters [events,
    up-crossings, down-crossings]; pbuf (K,) scratch of the kernels (p = σ(u)
    of the column being updated; the reference twin does not use it).
    """

    u: np.ndarray
    tcol: np.ndarray
    a: np.ndarray
    b: np.ndarray
    na: np.ndarray
    tk: np.ndarray
    nb: np.ndarray
    tb: np.ndarray
    p1: np.ndarray
    p2m1: np.ndarray
    disc: np.ndarray
    theta: np.ndarray
    jx: np.ndarray
    jy: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    clock: np.ndarray
    counters: np.ndarray
    pbuf: np.ndarray


def make_params(lo: LogOddsSpec) -> Params:
    return Params(lo.r_on_hz, lo.r_off_hz, lo.l_max, lo.rho, lo.learn_us, lo.b_min_hz,
                  lo.explain_away, lo.a_max_hz)


def drift_constants(theta: np.ndarray, r_on: float, r_off: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Roots of θp² − (r_on + r_off + θ)p + r_on: (p₁, p₂ − 1, √disc), θ > 0 (Hz)."""
    big = r_on + r_off + theta
    disc = np.sqrt(big * big - 4.0 * theta * r_on)
    p1 = 2.0 * r_on / (big + disc)
    p2m1 = (r_on + r_off - theta + disc) / (2.0 * theta)
    return p1, p2m1, disc


def init_state(spec: ModelSpec, lo: LogOddsSpec) -> LoState:
    """Fresh state at the prior: u = ln p₁/(1 − p₁), random a (seeded), b = b_init."""
    rng = np.random.default_rng(lo.seed)
    d, k = spec.d1, spec.k1
    a = lo.a_init_hz * rng.uniform(0.5, 1.5, (d, k))
    b = np.full(d, lo.b_init_hz)
    theta = np.maximum(a.sum(0), 1e-6)
    p1, p2m1, disc = drift_constants(theta, lo.r_on_hz, lo.r_off_hz)
    r1, c1 = spec.grid1
    cells_x = np.arange(spec.width) // spec.pool
    cells_y = np.arange(spec.height) // spec.pool
    c = spec.column
    return LoState(
        u=np.tile(np.log(p1 / (1.0 - p1)), (r1 * c1, 1)), tcol=np.zeros(r1 * c1, np.int64),
        a=a, b=b, na=a * lo.prior_s, tk=np.full(k, lo.prior_s), nb=b * lo.prior_s * r1 * c1,
        tb=np.array([lo.prior_s * r1 * c1]), p1=p1, p2m1=p2m1, disc=disc, theta=theta,
        jx=(cells_x // c).astype(np.int64), jy=((cells_y // c) * c1).astype(np.int64),
        dx=((cells_x % c) * 2).astype(np.int64), dy=((cells_y % c) * c * 2).astype(np.int64),
        clock=np.zeros(3, np.int64), counters=np.zeros(3, np.int64), pbuf=np.zeros(k))


@njit(cache=True, inline="always")
def _drift(u: float, p1: float, p2m1: float, disc: float, theta: float, dt_s: float
           ) -> tuple[float, float, float]:
    """u after dt_s s without events (closed-form Riccati), ∫ p dt over that time (s), new p."""
    e = math.exp(-u)
    p0 = 1.0 / (1.0 + e)
    q0 = e / (1.0 + e)
    r0 = (p0 - p1) / (-p2m1 - q0)
    r = r0 * math.exp(-disc * dt_s)
    p = (p1 - (1.0 + p2m1) * r) / (1.0 - r)
    q = ((1.0 - p1) + p2m1 * r) / (1.0 - r)
    ip = p1 * dt_s - (math.log1p(-r) - math.log1p(-r0)) / theta
    return math.log(p) - math.log(q), ip, p


@njit(cache=True, _nrt=False)
def _advance(st: LoState, p: Params, j: int, t: int, learn: bool) -> None:
    """Drift column j's units from tcol[j] to t µs (accumulating ∫p into T_k if learning);
    leaves p = σ(u) of the column's units in ``pbuf``."""
    dt = t - st.tcol[j]
    if dt <= 0:
        for k in range(st.u.shape[1]):
            st.pbuf[k] = 1.0 / (1.0 + math.exp(-st.u[j, k]))
        return
    for k in range(st.u.shape[1]):
        old = st.u[j, k]
        new, ip, pk = _drift(old, st.p1[k], st.p2m1[k], st.disc[k], st.theta[k], dt * 1e-6)
        st.u[j, k] = new
        st.pbuf[k] = pk
        if learn:
            st.tk[k] += ip
        if old > 0.0 >= new:
            st.counters[C_DOWN] += 1
    st.tcol[j] = t


@njit(cache=True, _nrt=False)
def _epoch(st: LoState, p: Params, t: int) -> None:
    """Learning epoch at t µs: every column advanced to t, then a = N/T, b = N_b/T_b, forget."""
    n1, nk = st.u.shape
    for j in range(n1):
        _advance(st, p, j, t, True)
    st.tb[0] += n1 * p.learn_us * 1e-6
    for k in range(nk):
        th = 0.0
        for d in range(st.a.shape[0]):
            st.a[d, k] = min(st.na[d, k] / st.tk[k], p.a_max)
            st.na[d, k] *= 1.0 - p.rho
            th += st.a[d, k]
        st.tk[k] *= 1.0 - p.rho
        th = max(th, 1e-6)
        big = p.r_on + p.r_off + th
        disc = math.sqrt(big * big - 4.0 * th * p.r_on)
        st.theta[k] = th
        st.disc[k] = disc
        st.p1[k] = 2.0 * p.r_on / (big + disc)
        st.p2m1[k] = (p.r_on + p.r_off - th + disc) / (2.0 * th)
    for d in range(st.b.shape[0]):
        st.b[d] = max(st.nb[d] / st.tb[0], p.b_min)
        st.nb[d] *= 1.0 - p.rho
    st.tb[0] *= 1.0 - p.rho


@njit(cache=True, _nrt=False)
def _event(st: LoState, p: Params, t: int, x: int, y: int, pol: int, learn: bool) -> None:
    """One input event: drift the column to t, then u_k += w_dk (and the EM sums)."""
    j = st.jy[y] + st.jx[x]
    d = st.dy[y] + st.dx[x] + pol
    _advance(st, p, j, t, learn)
    nk = st.u.shape[1]
    lam = st.b[d]
    for k in range(nk):
        lam += st.a[d, k] * st.pbuf[k]
    for k in range(nk):
        pk = st.pbuf[k]
        off = max(lam - st.a[d, k] * pk, st.b[d]) if p.explain_away else st.b[d]
        old = st.u[j, k]
        new = min(old + math.log1p(st.a[d, k] / off), p.l_max)
        st.u[j, k] = new
        if old <= 0.0 < new:
            st.counters[C_UP] += 1
        if learn:
            st.na[d, k] += st.a[d, k] * pk / lam
    if learn:
        st.nb[d] += st.b[d] / lam
    st.counters[C_EVENTS] += 1


@njit(cache=True, _nrt=False)
def run_batch(st: LoState, p: Params, t: np.ndarray, x: np.ndarray, y: np.ndarray,
              pol: np.ndarray, t_end_us: int, learn: bool) -> None:
    """Feed sorted events (t µs, pixel x, y, polarity) and run the epochs T ≤ t_end_us."""
    for i in range(t.shape[0]):
        while st.clock[K_NEXT] <= t[i]:
            if learn:
                _epoch(st, p, st.clock[K_NEXT])
            st.clock[K_NEXT] += p.learn_us
        _event(st, p, t[i], x[i], y[i], pol[i], learn)
    while st.clock[K_NEXT] <= t_end_us:
        if learn:
            _epoch(st, p, st.clock[K_NEXT])
        st.clock[K_NEXT] += p.learn_us


@njit(cache=True, _nrt=False)
def predict(st: LoState, p: Params, t_us: int, horizon_us: int, out: np.ndarray) -> None:
    """out (n1, D) ← λ for the next horizon (events/s) at t_us, state unchanged."""
    r = p.r_on + p.r_off
    pinf = p.r_on / r
    phi = -math.expm1(-r * horizon_us * 1e-6) / (r * horizon_us * 1e-6)
    n1, nk = st.u.shape
    for j in range(n1):
        for d in range(st.a.shape[0]):
            out[j, d] = st.b[d]
        dt_s = max(t_us - st.tcol[j], 0) * 1e-6
        for k in range(nk):
            u = _drift(st.u[j, k], st.p1[k], st.p2m1[k], st.disc[k], st.theta[k], dt_s)[0]
            pk = pinf + (1.0 / (1.0 + math.exp(-u)) - pinf) * phi
            for d in range(st.a.shape[0]):
                out[j, d] += st.a[d, k] * pk


# -- reference twin: the same equations in NumPy, vectorized over the K units ---------------
def _drift_np(st: LoState, j: int, t: int, learn: bool) -> None:
    dt_s = (t - st.tcol[j]) * 1e-6
    if dt_s <= 0:
        return
    u = st.u[j]
    p0, q0 = 1.0 / (1.0 + np.exp(-u)), 1.0 / (1.0 + np.exp(u))
    r0 = (p0 - st.p1) / (-st.p2m1 - q0)
    r = r0 * np.exp(-st.disc * dt_s)
    new = (np.log((st.p1 - (1.0 + st.p2m1) * r) / (1.0 - r))
           - np.log(((1.0 - st.p1) + st.p2m1 * r) / (1.0 - r)))
    if learn:
        st.tk[:] += st.p1 * dt_s - (np.log1p(-r) - np.log1p(-r0)) / st.theta
    st.counters[C_DOWN] += int(np.sum((u > 0) & (new <= 0)))
    st.u[j] = new
    st.tcol[j] = t


def _epoch_np(st: LoState, p: Params, t: int) -> None:
    for j in range(st.u.shape[0]):
        _drift_np(st, j, t, True)
    st.tb[0] += st.u.shape[0] * p.learn_us * 1e-6
    st.a[:] = np.minimum(st.na / st.tk, p.a_max)
    st.na[:] *= 1.0 - p.rho
    st.tk[:] *= 1.0 - p.rho
    st.theta[:] = np.maximum(st.a.sum(0), 1e-6)
    st.p1[:], st.p2m1[:], st.disc[:] = drift_constants(st.theta, p.r_on, p.r_off)
    st.b[:] = np.maximum(st.nb / st.tb[0], p.b_min)
    st.nb[:] *= 1.0 - p.rho
    st.tb[0] *= 1.0 - p.rho


def run_batch_reference(st: LoState, p: Params, t: np.ndarray, x: np.ndarray, y: np.ndarray,
                        pol: np.ndarray, t_end_us: int, learn: bool) -> None:
    """NumPy twin of ``run_batch`` (slow: for parity tests on small streams)."""
    for i in range(t.shape[0]):
        while st.clock[K_NEXT] <= t[i]:
            if learn:
                _epoch_np(st, p, int(st.clock[K_NEXT]))
            st.clock[K_NEXT] += p.learn_us
        j, d = st.jy[y[i]] + st.jx[x[i]], st.dy[y[i]] + st.dx[x[i]] + pol[i]
        _drift_np(st, j, int(t[i]), learn)
        old = st.u[j].copy()
        pk = 1.0 / (1.0 + np.exp(-old))
        lam = st.b[d] + np.sum(st.a[d] * pk)
        off = np.maximum(lam - st.a[d] * pk, st.b[d]) if p.explain_away else st.b[d]
        st.u[j] = np.minimum(old + np.log1p(st.a[d] / off), p.l_max)
        st.counters[C_UP] += int(np.sum((old <= 0) & (st.u[j] > 0)))
        if learn:
            st.na[d] += st.a[d] * pk / lam
            st.nb[d] += st.b[d] / lam
        st.counters[C_EVENTS] += 1
    while st.clock[K_NEXT] <= t_end_us:
        if learn:
            _epoch_np(st, p, int(st.clock[K_NEXT]))
        st.clock[K_NEXT] += p.learn_us


class LogOddsLayer:
    """Wraps the kernels: ``advance(events, t_end_us)`` then ``rate_map(t_us)`` (Hp, Wp, 2)."""

    def __init__(self, spec: ModelSpec, lo: LogOddsSpec | None = None, *,
                 backend: str = "numba") -> None:
        if backend not in ("numba", "reference"):
            raise ValueError(f"backend must be 'numba' or 'reference', got {backend!r}")
        self.spec, self.lo = spec, lo or LogOddsSpec()
        self.params = make_params(self.lo)
        self.state = init_state(spec, self.lo)
        self.backend = backend
        self.learning = True

    def advance(self, events: np.ndarray, t_start_us: int, t_end_us: int) -> None:
        """Feed one batch of EVENT_DTYPE events inside [t_start_us, t_end_us), sorted.

        Raises EventFormatError naming the first bad event (dtype, coordinates, polarity,
        time outside the span or going backwards, batch before the time already reached).
        """
        self._check(events, t_start_us, t_end_us)
        st = self.state
        if not st.clock[K_STARTED]:
            lu = self.lo.learn_us
            st.clock[K_NEXT] = -(-t_start_us // lu) * lu
            st.clock[K_STARTED] = 1
            st.tcol[:] = t_start_us
        fn = run_batch if self.backend == "numba" else run_batch_reference
        fn(st, self.params, np.ascontiguousarray(events["t"]),
           np.ascontiguousarray(events["x"]).astype(np.int64),
           np.ascontiguousarray(events["y"]).astype(np.int64),
           np.ascontiguousarray(events["p"]).astype(np.int64), int(t_end_us),
           bool(self.learning))
        st.clock[K_TNOW] = t_end_us

    def _check(self, ev: np.ndarray, t_start_us: int, t_end_us: int) -> None:
        from augury.events import EVENT_DTYPE, EventFormatError

        if ev.dtype != EVENT_DTYPE:
            raise EventFormatError(f"events dtype is {ev.dtype}, expected EVENT_DTYPE")
        if t_end_us < t_start_us or (self.state.clock[K_STARTED]
                                     and t_start_us < self.state.clock[K_TNOW]):
            raise EventFormatError(f"batch [{t_start_us}, {t_end_us}) µs is reversed or starts "
                                   f"before the time reached ({int(self.state.clock[K_TNOW])})")
        t = ev["t"]
        bad = ((ev["x"] >= self.spec.width) | (ev["y"] >= self.spec.height) | (ev["p"] > 1)
               | (t < t_start_us) | (t >= t_end_us))
        if t.size > 1:
            bad[1:] |= t[1:] < t[:-1]
        if bad.any():
            i = int(np.argmax(bad))
            raise EventFormatError(f"event {i} (t={int(t[i])}, x={int(ev['x'][i])}, "
                                   f"y={int(ev['y'][i])}, p={int(ev['p'][i])}): outside the "
                                   f"sensor or the batch span, or time going backwards")

    def rates(self, t_us: int) -> np.ndarray:
        """Predicted λ (events/s) for the next horizon per column channel, (n1, D)."""
        out = np.empty((self.state.u.shape[0], self.spec.d1))
        predict(self.state, self.params, int(t_us), self.spec.horizon_us, out)
        return out

    def rate_map(self, t_us: int) -> np.ndarray:
        """The same on the pooled grid, (Hp, Wp, 2) events/s (channel 0 OFF, 1 ON)."""
        from augury.model.network import column_to_map

        return column_to_map(self.spec, self.rates(t_us))
