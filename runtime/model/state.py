"""All learned and fast state of the network as plain arrays; save/load as .npz (no pickle).

Shapes use n1/n2 (layer-1/2 columns), D1 = column²·2, D2 = 4·k1, K1 = k1, K2 = k2,
nW1 = 1 (shared weights) or n1 (per-column weights), likewise nW2; the top layer (layer
``layers``) has nT columns of KT beliefs and temporal weights A of shape (nA, KT, KT).
Every float array is float64; times are int64 µs.

Layer 1 (sensor side):   z1 traces (events) at time tcol[j]; xhat1 = W1·mus1 predictions;
  eps1 last *sent* precision-weighted errors; v1, pi1 running error variance and precision;
  u1 = W1ᵀ·eps1 bottom-up drive; mu1 beliefs, mus1 last *sent* beliefs; h1 majorized
  curvature (inverse step size) of each belief; active[j] column flag; busy1[j] set while
  the column's beliefs still move (cleared when they settle, set again by input spikes);
  gain1[j] homeostatic gain of the column's error thresholds, nsp1[j] its error spikes
  since the last learning epoch.
Layer 2: pred2 = W2·mus2; eps2, v2, pi2, u2, mu2, mus2, h2 as above; nact2[P] number of
  active children; busy2 as busy1.
Temporal (top layer): A, SA weights and their variances; vA error variance; muprev the top
  beliefs at the previous horizon tick. Temporal (layer-1 forecast error units, one per
  channel): gh, sgh the gain on the hierarchy's forecast h = W1 μ1' and its variance; rho,
  srho the weight on the channel's own trace and its variance; R, SR (1, 2, 8) the shared
  lateral weights from the 8 neighbouring cells' traces (same polarity, order (dy, dx)
  row-major without the centre) and their variances; zprev the trace z and hprev the
  hierarchy forecast h at the previous horizon tick, all (n1, D1). Forecast: fprev the
  trace forecast x'_{T+Δ} made at the last horizon tick T, vF the running variance of its
  error, (n1, D1).
clock: [t_now_us, next_tick_us, started, n_active]; counters: [events, spikes_up,
spikes_down, synops, ticks]; baseline: [mean, variance] of the surprise at horizon ticks;
sbase1 (n1, 2): [mean, variance] of each layer-1 column's own surprise Σ_d ½ π e² at the
horizon ticks when it was active (the per-column z-score's running baseline).
Rate experts (NS = len(mix_taus_us) averaging experts per channel, NE = NS + 1 with the
forecast unit as expert 0): zk (n1, D1, NS) the experts' exponential moving averages of the
channel's counts per horizon window (events per window, time constant τ_i); ncnt (n1, D1)
events since the last horizon tick;
mprev (n1, D1, NE) each expert's count forecast for the current horizon window; Lmix
(n1, D1, NE) each channel's discounted log-evidence of the experts; Lglob (2, NE) the
sensor-wide one per polarity (mean over channels); odisp (2, 5) per polarity the running
means of (n − m)² − v and m² over active channels (m, v the mixture's forecast mean and
variance), whose ratio is the overdispersion c added to the published variance (c m²), and
of n and the forecast unit's uncalibrated count forecast, whose ratio is its calibration κ,
and the number of updates (the first ones are plain averages);
mixage (3,) int64: K, the number of windows the averaging experts have seen since the stream
(re)started, the number of windows in a row they have seen with no active column (at most
``mix_kmax`` are processed in one silence), and the time from which silent windows are
pending (−1: none; processed when a column wakes or at the end of the batch); their
forecasts are bias-corrected, zk / (1 − (1 − β_i)^K), so that a new stream is forecast from
its first window on (as an average started at the first count). Shared linear forecaster
(the last expert when ``mix_shared``): Wsh (2, NF) its weights per polarity, Lsh (2, NF, NF)
their information matrix and Bsh (2, NF) the information vector (Λ w = b, recursive least
squares with forgetting: a Kalman filter of weights that drift); nlast (n1, D1) each
channel's count in the last completed window (one of its features).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from augury.model.spec import ModelSpec

C_EVENTS, C_UP, C_DOWN, C_SYNOPS, C_TICKS = range(5)
K_TNOW, K_NEXT, K_STARTED, K_NACTIVE = range(4)


class State(NamedTuple):
    """Every array the kernels read or write (see the module docstring for shapes)."""

    z1: np.ndarray
    tcol: np.ndarray
    active: np.ndarray
    busy1: np.ndarray
    xhat1: np.ndarray
    eps1: np.ndarray
    v1: np.ndarray
    pi1: np.ndarray
    u1: np.ndarray
    mu1: np.ndarray
    mus1: np.ndarray
    h1: np.ndarray
    gain1: np.ndarray
    nsp1: np.ndarray
    W1: np.ndarray
    S1: np.ndarray
    pred2: np.ndarray
    eps2: np.ndarray
    v2: np.ndarray
    pi2: np.ndarray
    u2: np.ndarray
    mu2: np.ndarray
    mus2: np.ndarray
    h2: np.ndarray
    nact2: np.ndarray
    busy2: np.ndarray
    W2: np.ndarray
    S2: np.ndarray
    A: np.ndarray
    SA: np.ndarray
    vA: np.ndarray
    muprev: np.ndarray
    gh: np.ndarray
    sgh: np.ndarray
    rho: np.ndarray
    srho: np.ndarray
    R: np.ndarray
    SR: np.ndarray
    zprev: np.ndarray
    hprev: np.ndarray
    fprev: np.ndarray
    vF: np.ndarray
    clock: np.ndarray
    counters: np.ndarray
    baseline: np.ndarray
    sbase1: np.ndarray
    zk: np.ndarray
    ncnt: np.ndarray
    mprev: np.ndarray
    Lmix: np.ndarray
    Lglob: np.ndarray
    odisp: np.ndarray
    mixage: np.ndarray
    Wsh: np.ndarray
    Lsh: np.ndarray
    Bsh: np.ndarray
    nlast: np.ndarray


class Scratch(NamedTuple):
    """Per-tick accumulators and lookup tables (rebuilt by ``init_scratch``, never saved).

    The tables depend on the spec only (geometry, τ, tick_us); thr1, thr2 and W1T are
    recomputed from the state at the start of every ``run_batch``.
    """

    G1: np.ndarray
    I1: np.ndarray
    G2: np.ndarray
    I2: np.ndarray
    GA: np.ndarray
    IA: np.ndarray
    rs: np.ndarray  # row sums, length max(D1, D2, KT)
    m1: np.ndarray  # forecast beliefs, (k1,)
    m2: np.ndarray  # forecast change of layer-2 beliefs, (k2,)
    xdirty: np.ndarray  # column's x̂ changed during this tick's relaxation step, (n1,)
    W1T: np.ndarray  # W1 transposed, (nW1, K1, D1): contiguous rows for top-down spikes
    thr1: np.ndarray  # θ_e √π1, the error units' thresholds, (n1, D1)
    GR: np.ndarray  # lateral forecast weight accumulators, (2, 8)
    IR: np.ndarray
    thr2: np.ndarray  # θ_e √π2, the layer-2 error units' thresholds, (n2, D2)
    emap: np.ndarray  # traces on the zero-padded pooled grid, (rows1·c + 2, cols1·c + 2, 2)
    zero1: np.ndarray  # zeros, (n1, D1)
    decay: np.ndarray  # decay[dt] = exp(−dt/τ) for dt = 0 .. min(learn_us, horizon_us, 65536)
    grow: np.ndarray  # grow[dt] = exp(+dt/τ), same range: an event's weight in anchored traces
    jx: np.ndarray  # column index of pixel x (its part cx), (width,)
    jy: np.ndarray  # column index part of pixel y (cy · ncx), (height,)
    dx: np.ndarray  # channel index part of pixel x (2 · (px % column)), (width,)
    dy: np.ndarray  # channel index part of pixel y (2 · column · (py % column)), (height,)
    big1: np.ndarray  # layer-2 column above each layer-1 column, (n1,)
    slot1: np.ndarray  # its first input slot there, (n1,)
    kids: np.ndarray  # the 4 layer-1 columns under each layer-2 column (−1 off the grid), (n2, 4)
    betak: np.ndarray  # the rate experts' EMA rates β_i = 1 − exp(−Δ/τ_i) per window, (NS,)
    corrk: np.ndarray  # their bias corrections 1 − (1 − β_i)^K at the current window, (NS,)
    odacc: np.ndarray  # per polarity [Σ (n − m)² − v, Σ m², Σ n, Σ m_0/κ], active channels, (2, 4)
    kap: np.ndarray  # κ per polarity at the start of the tick, (2,)
    sxx: np.ndarray  # the shared forecaster's Σ x xᵀ per polarity at a horizon tick, (2, NF, NF)
    sxy: np.ndarray  # and Σ x n, (2, NF)
    xs: np.ndarray  # one channel's features, (NF,)
    work: np.ndarray  # the linear solve's scratch, (NF, NF + 1)
    cmap: np.ndarray  # last window's counts on the zero-padded pooled grid, like emap
    mixg: np.ndarray  # per-polarity sums of the experts' log-likelihoods at a horizon tick, (2, NE)


NF = 13
"""Features of the shared linear forecaster: own trace, 8 neighbours' traces, the hierarchy's
forecast (all × Δ/τ, in counts per window), the channel's count in the last window, the sum
of its 8 neighbours' counts there, and a bias 1."""

SH_PRIOR = 0.01
"""Initial information (precision) of each of its weights: a weak zero-mean prior."""


def n_experts(spec: ModelSpec) -> int:
    """NE: the forecast unit, one averaging expert per τ_i, and the shared forecaster."""
    return 1 + len(spec.mix_taus_us) + (1 if spec.mix_shared else 0)


LEARNED = ("W1", "S1", "W2", "S2", "A", "SA", "v1", "pi1", "v2", "pi2", "vA", "gh", "sgh",
           "rho", "srho", "R", "SR", "vF", "gain1", "Lmix", "Lglob",
           "odisp", "Wsh", "Lsh", "Bsh")
"""Arrays changed only by learning (frozen by ``Network.freeze_learning``)."""


def top_shape(spec: ModelSpec) -> tuple[int, int]:
    """(nT, KT): columns and beliefs of the top layer."""
    return (spec.n1, spec.k1) if spec.layers == 1 else (spec.n2, spec.k2)


def init_state(spec: ModelSpec) -> State:
    """A fresh state: weights ~ U(0, w_init) from ``spec.seed``, A = I, π = 1/(1 + v0);
    the forecast starts as persistence of the trace (g = 0, ρ = 1, R = 0)."""
    rng = np.random.default_rng(spec.seed)
    n1, n2, d1, d2, k1, k2 = spec.n1, spec.n2, spec.d1, spec.d2, spec.k1, spec.k2
    nw1 = n1 if spec.per_column_weights else 1
    nw2 = n2 if spec.per_column_weights else 1
    nt, kt = top_shape(spec)
    na = nt if spec.per_column_weights else 1
    f8 = np.float64
    pi0 = min(max(1.0 / (1.0 + spec.v0), spec.pi_min), spec.pi_max)
    ns = len(spec.mix_taus_us)
    ne = n_experts(spec)
    w1 = rng.uniform(0.0, spec.w_init, size=(nw1, d1, k1))
    if spec.w_norm > 0.0:
        w1 *= spec.w_norm / np.maximum(np.sqrt(np.einsum("wdk,wdk->wk", w1, w1)), 1e-300)[:, None]
    w2 = rng.uniform(0.0, spec.w_init, size=(nw2, d2, k2))
    st = State(
        z1=np.zeros((n1, d1), f8), tcol=np.zeros(n1, np.int64), active=np.zeros(n1, np.uint8),
        busy1=np.zeros(n1, np.uint8),
        xhat1=np.zeros((n1, d1), f8), eps1=np.zeros((n1, d1), f8),
        v1=np.ones((n1, d1), f8), pi1=np.full((n1, d1), pi0),
        u1=np.zeros((n1, k1), f8), mu1=np.zeros((n1, k1), f8), mus1=np.zeros((n1, k1), f8),
        h1=np.ones((n1, k1), f8), gain1=np.ones(n1, f8), nsp1=np.zeros(n1, np.int64),
        W1=w1, S1=np.full((nw1, d1, k1), spec.s2_init),
        pred2=np.zeros((n2, d2), f8), eps2=np.zeros((n2, d2), f8),
        v2=np.ones((n2, d2), f8), pi2=np.full((n2, d2), pi0),
        u2=np.zeros((n2, k2), f8), mu2=np.zeros((n2, k2), f8), mus2=np.zeros((n2, k2), f8),
        h2=np.ones((n2, k2), f8), nact2=np.zeros(n2, np.int64), busy2=np.zeros(n2, np.uint8),
        W2=w2, S2=np.full((nw2, d2, k2), spec.s2_init),
        A=np.repeat(np.eye(kt)[None], na, axis=0), SA=np.full((na, kt, kt), spec.a_s2_init),
        vA=np.ones((nt, kt), f8), muprev=np.zeros((nt, kt), f8),
        gh=np.zeros((n1, d1), f8), sgh=np.full((n1, d1), spec.s2_init),
        rho=np.ones((n1, d1), f8), srho=np.full((n1, d1), spec.s2_init),
        R=np.zeros((1, 2, 8), f8), SR=np.full((1, 2, 8), spec.s2_init),
        zprev=np.zeros((n1, d1), f8), hprev=np.zeros((n1, d1), f8),
        fprev=np.zeros((n1, d1), f8),
        vF=np.ones((n1, d1), f8),
        clock=np.zeros(4, np.int64), counters=np.zeros(5, np.int64),
        baseline=np.array([0.0, 1.0], f8),
        sbase1=np.repeat(np.array([[0.0, 1.0]], f8), n1, axis=0),
        zk=np.zeros((n1, d1, ns), f8), ncnt=np.zeros((n1, d1), np.int32),
        mprev=np.zeros((n1, d1, ne), f8), Lmix=np.zeros((n1, d1, ne), f8),
        Lglob=np.zeros((2, ne), f8), odisp=np.zeros((2, 5), f8),
        mixage=np.array([0, 0, -1], np.int64),
        Wsh=np.zeros((2, NF), f8), Lsh=np.repeat((SH_PRIOR * np.eye(NF))[None], 2, axis=0),
        Bsh=np.zeros((2, NF), f8), nlast=np.zeros((n1, d1), f8),
    )
    if spec.fixed_point:
        s = spec.q_scale
        st = State(*[np.floor(a * s + 0.5) / s if a.dtype == f8 else a for a in st])
    return st


def init_scratch(spec: ModelSpec) -> Scratch:
    """Zeroed accumulators plus the geometry tables the kernels index instead of dividing."""
    nt, kt = top_shape(spec)
    f8 = np.float64
    ns = len(spec.mix_taus_us)
    r1, c1 = spec.grid1
    _, c2 = spec.grid2
    c = spec.column
    px = np.arange(spec.width) // spec.pool
    py = np.arange(spec.height) // spec.pool
    cy, cx = np.divmod(np.arange(spec.n1), c1)
    return Scratch(
        G1=np.zeros((spec.d1, spec.k1), f8), I1=np.zeros((spec.d1, spec.k1), f8),
        G2=np.zeros((spec.d2, spec.k2), f8), I2=np.zeros((spec.d2, spec.k2), f8),
        GA=np.zeros((kt, kt), f8), IA=np.zeros((kt, kt), f8),
        rs=np.zeros(max(spec.d1, spec.d2, kt), f8),
        m1=np.zeros(spec.k1, f8), m2=np.zeros(spec.k2, f8),
        xdirty=np.zeros(spec.n1, np.uint8), thr1=np.zeros((spec.n1, spec.d1), f8),
        W1T=np.zeros((spec.n1 if spec.per_column_weights else 1, spec.k1, spec.d1), f8),
        GR=np.zeros((2, 8), f8), IR=np.zeros((2, 8), f8),
        thr2=np.zeros((spec.n2, spec.d2), f8),
        emap=np.zeros((r1 * c + 2, c1 * c + 2, 2), f8), zero1=np.zeros((spec.n1, spec.d1), f8),
        # math.exp (libm), as the kernels and reference.py call it: the table is bit-identical
        decay=np.array([math.exp(-dt / float(spec.tau_us))
                        for dt in range(_poll_gap(spec) + 1)], f8),
        grow=np.array([math.exp(dt / float(spec.tau_us))
                       for dt in range(_poll_gap(spec) + 1)], f8),
        jx=(px // c).astype(np.int64), jy=((py // c) * c1).astype(np.int64),
        dx=(2 * (px % c)).astype(np.int64), dy=(2 * c * (py % c)).astype(np.int64),
        big1=((cy // 2) * c2 + cx // 2).astype(np.int64),
        slot1=(((cy % 2) * 2 + cx % 2) * spec.k1).astype(np.int64),
        kids=_kids(spec),
        betak=np.array([1.0 - math.exp(-spec.horizon_us / float(tk))
                        for tk in spec.mix_taus_us], f8).reshape(ns),
        corrk=np.ones(ns, f8),
        mixg=np.zeros((2, n_experts(spec)), f8), odacc=np.zeros((2, 4), f8),
        sxx=np.zeros((2, NF, NF), f8), sxy=np.zeros((2, NF), f8), xs=np.zeros(NF, f8),
        work=np.zeros((NF, NF + 1), f8), cmap=np.zeros((r1 * c + 2, c1 * c + 2, 2), f8),
        kap=np.ones(2, f8),
    )


def _poll_gap(spec: ModelSpec) -> int:
    """Longest time between two polls of an active column (its trace anchor): every column is
    polled at learning epochs and horizon ticks, µs (tables are capped at 65,536 µs)."""
    return min(spec.learn_us, spec.horizon_us, 65_536)


def _kids(spec: ModelSpec) -> np.ndarray:
    """(n2, 4): layer-1 column of each quadrant (row-major 2 × 2) of every layer-2 column."""
    r1, c1 = spec.grid1
    r2, c2 = spec.grid2
    by, bx = np.divmod(np.arange(r2 * c2), c2)
    qy, qx = np.divmod(np.arange(4), 2)
    cy = 2 * by[:, None] + qy[None, :]
    cx = 2 * bx[:, None] + qx[None, :]
    return np.where((cy < r1) & (cx < c1), cy * c1 + cx, -1).astype(np.int64)


def state_to_dict(st: State) -> dict[str, np.ndarray]:
    """Copies of every state array, keyed by field name."""
    return {k: np.array(v, copy=True) for k, v in st._asdict().items()}


def state_from_dict(spec: ModelSpec, d: dict[str, np.ndarray]) -> State:
    """Rebuild a State, checking every field's presence, shape and dtype against ``spec``."""
    ref = init_state(spec)
    missing = [k for k in State._fields if k not in d]
    if missing:
        raise ValueError(f"state is missing array(s): {', '.join(missing)}")
    extra = sorted(set(d) - set(State._fields))
    if extra:
        raise ValueError(f"state has unknown array(s): {', '.join(extra)}")
    out = []
    for k in State._fields:
        a = np.asarray(d[k])
        r = getattr(ref, k)
        if a.shape != r.shape or a.dtype != r.dtype:
            raise ValueError(f"state array {k!r} has shape {a.shape} dtype {a.dtype}, "
                             f"expected {r.shape} {r.dtype} for this spec")
        out.append(np.array(a, copy=True))
    return State(*out)


def save_npz(path: str | Path, spec: ModelSpec, st: State) -> None:
    """Write spec (JSON, as a uint8 array) and every state array to an .npz file."""
    spec_json = np.frombuffer(json.dumps(spec.to_dict(), sort_keys=True).encode(), np.uint8)
    np.savez(path, __spec__=spec_json, **state_to_dict(st))


def load_npz(path: str | Path) -> tuple[ModelSpec, State]:
    """Read what ``save_npz`` wrote (allow_pickle=False); errors name the file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read model checkpoint: {exc}") from exc
    if "__spec__" not in arrays:
        raise ValueError(f"{path}: not a model checkpoint (no __spec__ entry)")
    try:
        spec = ModelSpec.from_dict(json.loads(arrays.pop("__spec__").tobytes().decode()))
        return spec, state_from_dict(spec, arrays)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
