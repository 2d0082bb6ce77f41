"""ModelSpec + State ⇄ the parameters and variables of the Lava layer-1 processes (NumPy only).

Flat layout: channel d of layer-1 column j is error unit j·D1 + d; belief k of column j is
belief unit j·K1 + k. The connections are block diagonal (``block_diag``): W, (n1·D1, n1·K1),
carries x̂ += W Δμ̂ and Wᵀ, (n1·K1, n1·D1), carries u += Wᵀ Δε̂.

The Lava side runs inference only (learning frozen): W, π, the thresholds θ_e g √π and the
curvatures h are taken from a State the numba engine produced (and its own kernels compute
the curvature of columns that wake up), so a checkpoint learned in numba is served as is.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from augury.model import kernels, loihi_int
from augury.model.spec import ModelSpec, lava_layer1_gaps
from augury.model.state import K_NACTIVE, K_NEXT, K_STARTED, K_TNOW, State, init_scratch


class LavaSpecError(ValueError):
    """The spec uses something the Lava backend does not implement (yet)."""


class Layer1Params(NamedTuple):
    """Everything the Lava layer-1 network is built from (float64 unless said).

    Shapes: n = n1·D1 error units, m = n1·K1 belief units.
    """

    z: np.ndarray  # (n,) traces at the last tick, events
    xhat: np.ndarray  # (n,) predictions W μ̂, events
    eps: np.ndarray  # (n,) sent errors ε̂ = π (z − x̂)
    pi: np.ndarray  # (n,) precisions π, events⁻²
    thr: np.ndarray  # (n,) error thresholds θ_e g √π
    active: np.ndarray  # (n1,) 1.0 for an active column
    u: np.ndarray  # (m,) drives Wᵀ ε̂
    mu: np.ndarray  # (m,) beliefs μ
    mus: np.ndarray  # (m,) sent beliefs μ̂
    h: np.ndarray  # (m,) curvatures of the active columns
    h_wake: np.ndarray  # (m,) curvatures a column gets when it wakes
    w_blocks: np.ndarray  # (n1, D1, K1) each column's W (a view of the shared W by default)
    decay: float  # exp(−tick_us/τ), the numba table's value
    t_first_us: int  # stream time of the first tick the Lava network runs, µs
    steps_per_tick: int  # 2 · relax_steps Lava steps per tick


def check_spec(spec: ModelSpec) -> None:
    """Raise LavaSpecError naming the setting if ``spec`` is outside what the Lava backend
    implements: one layer, ``clocked_input = True``, ``settle = 0``, float arithmetic."""
    bad = lava_layer1_gaps(spec)
    if bad:
        raise LavaSpecError("the Lava backend does not support " + "; ".join(bad))


def layer1_params(spec: ModelSpec, st: State) -> Layer1Params:
    """The Lava layer-1 parameters and initial variables for a numba State.

    The State must end on a tick boundary (``clock[K_TNOW]`` a multiple of ``tick_us``:
    that tick has run), so that every active column's traces are anchored there.
    """
    check_spec(spec)
    tick = spec.tick_us
    t_now = int(st.clock[K_TNOW])
    if not st.clock[K_STARTED]:
        raise LavaSpecError("the State has not started (feed one batch to the numba engine "
                            "first: the clock is anchored by the first batch)")
    if t_now % tick:
        raise LavaSpecError(f"the State ends at {t_now} µs, not on a tick (tick_us={tick})")
    act = st.active.astype(bool)
    stale = np.flatnonzero(act & (st.tcol != t_now))
    if stale.size:
        raise LavaSpecError(f"active columns {stale[:5].tolist()} are anchored at "
                            f"{st.tcol[stale[:5]].tolist()} µs, not at {t_now} µs")
    p = kernels.make_params(spec)
    sc = init_scratch(spec)
    kernels._thresholds(st, sc, p)
    thr = sc.thr1.copy()
    wake = State(*[a.copy() for a in st])  # the numba kernel computes a waking column's h
    for j in range(spec.n1):
        kernels._curv1(wake, sc, p, j)
    h = np.where(act[:, None], st.h1, wake.h1)
    n1 = spec.n1
    w = st.W1 if spec.per_column_weights else np.broadcast_to(st.W1, (n1,) + st.W1.shape[1:])
    decay = float(sc.decay[tick]) if tick < sc.decay.shape[0] else math.exp(-tick / spec.tau_us)
    return Layer1Params(
        z=st.z1.ravel().copy(), xhat=st.xhat1.ravel().copy(), eps=st.eps1.ravel().copy(),
        pi=st.pi1.ravel().copy(), thr=thr.ravel(), active=act.astype(np.float64),
        u=st.u1.ravel().copy(), mu=st.mu1.ravel().copy(), mus=st.mus1.ravel().copy(),
        h=h.ravel().copy(), h_wake=wake.h1.ravel().copy(), w_blocks=w.copy(), decay=decay,
        t_first_us=t_now + tick, steps_per_tick=2 * spec.relax_steps)


def block_diag(w: np.ndarray, *, sparse: bool = False) -> object:
    """(n, D, K) blocks → the (n·D, n·K) block-diagonal matrix: a dense ndarray, or a SciPy
    CSR matrix (``sparse``; SciPy comes with Lava) holding only the n·D·K block entries."""
    n, d, k = w.shape
    if sparse:
        from scipy.sparse import csr_matrix

        rows = np.repeat(np.arange(n * d), k)
        cols = (np.arange(n)[:, None, None] * k + np.arange(k)[None, None, :]
                + np.zeros((1, d, 1), np.int64)).ravel()
        return csr_matrix((w.ravel(), (rows, cols)), shape=(n * d, n * k))
    out = np.zeros((n * d, n * k))
    for j in range(n):
        out[j * d:(j + 1) * d, j * k:(j + 1) * k] = w[j]
    return out


def tick_counts(spec: ModelSpec, events: np.ndarray, t_first_us: int,
                n_ticks: int) -> np.ndarray:
    """Input events per error unit and tick, shape (n1·D1, n_ticks), float64.

    Tick i of the Lava run (stream time t_first_us + i·tick_us) takes the events in
    [t_first_us + (i − 1)·tick_us, t_first_us + i·tick_us): with ``clocked_input`` they all
    count at that interval's start, as in the numba engine. Raises ValueError for events
    outside the n_ticks ticks or outside the sensor.
    """
    out = np.zeros((spec.n1 * spec.d1, n_ticks))
    if events.size == 0:
        return out
    t = events["t"].astype(np.int64)
    x = events["x"].astype(np.int64)
    y = events["y"].astype(np.int64)
    if x.max() >= spec.width or y.max() >= spec.height:
        raise ValueError(f"events outside the {spec.width}×{spec.height} sensor")
    i = (t - (t_first_us - spec.tick_us)) // spec.tick_us
    if i.min() < 0 or i.max() >= n_ticks:
        raise ValueError(f"events from {t.min()} to {t.max()} µs fall outside the {n_ticks} "
                         f"ticks from {t_first_us} µs")
    px, py = x // spec.pool, y // spec.pool
    _, ncx = spec.grid1
    c = spec.column
    j = (py // c) * ncx + px // c
    d = ((py % c) * c + px % c) * 2 + events["p"].astype(np.int64)
    np.add.at(out, (j * spec.d1 + d, i), 1.0)
    return out


def to_state(spec: ModelSpec, template: State, *, z: np.ndarray, xhat: np.ndarray,
             eps: np.ndarray, active: np.ndarray, pending: np.ndarray, u: np.ndarray,
             mu: np.ndarray, mus: np.ndarray, h: np.ndarray, h_wake: np.ndarray,
             t_now_us: int) -> State:
    """A copy of ``template`` with the layer-1 inference variables read back from Lava at
    the end of the tick at ``t_now_us`` (x̂ must include the increments still in the Dense
    buffer). Columns marked ``pending`` are silenced, as numba does at that tick's end.

    Only the inference state is replaced (z, x̂, ε̂, u, μ, μ̂, h, active, busy, anchors,
    clock); learned arrays come from the template, and the forecast units' and read-out
    statistics are not maintained by the Lava side (see docs/lava.md).
    """
    st = State(*[a.copy() for a in template])
    n1, d1, k1 = spec.n1, spec.d1, spec.k1
    sil = np.asarray(pending).reshape(n1) > 0
    act = (np.asarray(active).reshape(n1) > 0) & ~sil
    blocks = {"z1": (z, d1), "xhat1": (xhat, d1), "eps1": (eps, d1), "u1": (u, k1),
              "mu1": (mu, k1), "mus1": (mus, k1)}
    for name, (v, width) in blocks.items():
        a = np.asarray(v, np.float64).reshape(n1, width).copy()
        a[sil] = 0.0
        getattr(st, name)[...] = a
    hh = np.asarray(h, np.float64).reshape(n1, k1)
    st.h1[...] = np.where(sil[:, None], np.asarray(h_wake).reshape(n1, k1), hh)
    st.active[...] = act
    st.busy1[...] = act
    st.tcol[act] = t_now_us
    st.clock[K_TNOW] = t_now_us
    st.clock[K_NEXT] = t_now_us + spec.tick_us
    st.clock[K_NACTIVE] = int(act.sum())
    return st


class LoihiLayer1(NamedTuple):
    """The integer twin's view of a State (``loihi_int``): constants, host-written
    parameters and the inference state in Q formats, for the fixed_pt processes."""

    consts: loihi_int.LoihiConsts
    params: loihi_int.QParams
    state: loihi_int.QState
    t_first_us: int  # stream time of the first tick to run, µs
    steps_per_tick: int


def loihi_layer1(spec: ModelSpec, st: State) -> LoihiLayer1:
    """``layer1_params`` quantised as the numba twin quantises it (``arithmetic = "loihi"``):
    weights to 8 bits, π and κ/h to mantissa gains, thresholds floored in ε's format."""
    if spec.arithmetic != "loihi":
        raise LavaSpecError("the fixed_pt backend needs arithmetic='loihi' (the numba integer "
                            f"twin it matches), got arithmetic={spec.arithmetic!r}")
    p = layer1_params(spec, st)
    n1, d1, k1 = spec.n1, spec.d1, spec.k1
    qp = loihi_int.quantise_params(spec, p.w_blocks, p.pi.reshape(n1, d1),
                                   p.thr.reshape(n1, d1), p.h_wake.reshape(n1, k1))
    qs = loihi_int.quantise_state(
        spec, p.z.reshape(n1, d1), p.xhat.reshape(n1, d1), p.eps.reshape(n1, d1),
        p.u.reshape(n1, k1), p.mu.reshape(n1, k1), p.mus.reshape(n1, k1),
        p.h.reshape(n1, k1), p.active)
    return LoihiLayer1(loihi_int.consts(spec), qp, qs, p.t_first_us, p.steps_per_tick)


def from_loihi(spec: ModelSpec, template: State, qs: loihi_int.QState, h: np.ndarray,
               h_wake: np.ndarray, t_now_us: int) -> State:
    """A numba State (``to_state``) from an integer layer-1 state at the end of a tick
    (no column pending: ``loihi_int.tick`` and the caller silence at the tick's end)."""
    F = loihi_int
    return to_state(spec, template, z=F.from_q(qs.z, F.Z_FRAC),
                    xhat=F.from_q(qs.xhat, F.XHAT_FRAC), eps=F.from_q(qs.eps, F.EPS_FRAC),
                    active=qs.active.astype(np.float64), pending=np.zeros(spec.n1),
                    u=F.from_q(qs.u, F.U_FRAC), mu=F.from_q(qs.mu, F.MU_FRAC),
                    mus=F.from_q(qs.mus, F.MU_FRAC), h=h, h_wake=h_wake, t_now_us=t_now_us)
