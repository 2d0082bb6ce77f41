"""``Network``: step(batch) -> Readout, the public API of the predictive-coding model.

The class only wraps the pure step (``kernels.run_batch`` or ``reference.run_batch``) over
a ``State`` it owns, checks its input, and computes the published ``Readout`` (beliefs,
their uncertainty, the predicted event-rate map for the horizon, surprise) from the state
with the numba kernels of ``readout_kernels`` (``compute_readout``; its NumPy twin is
``compute_readout_numpy``). The readout is a pure function of the state and t_end_us, so it
too is independent of how the stream was split into batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augury import event_kernels as ek
from augury.events import EVENT_DTYPE, EventBatch, EventFormatError
from augury.model import kernels, loihi_int, loihi_kernels, reference
from augury.model import readout_kernels as rk
from augury.model.mixture import count_forecast
from augury.model.spec import ModelSpec
from augury.model.state import (
    C_DOWN,
    C_EVENTS,
    C_SYNOPS,
    C_UP,
    K_NEXT,
    K_STARTED,
    K_TNOW,
    LEARNED,
    State,
    init_scratch,
    init_state,
    load_npz,
    save_npz,
    state_from_dict,
    state_to_dict,
)

BACKENDS = ("numba", "reference")


@dataclass
class Readout:
    """What the network publishes after a step (all arrays float32).

    t_us: stream time of the readout (the batch's t_end_us, µs).
    mu, sigma: per layer, posterior mean and standard deviation of the beliefs,
      shapes (rows1, cols1, k1) and, with two layers, (rows2, cols2, k2).
    count_mean: expected number of events in the next horizon window (t, t + Δ] per pooled
      cell and polarity, shape (Hp, Wp, 2) (channel 0 OFF, 1 ON): the mean of the mixture of
      rate experts (``augury.model.mixture``).
    count_var: predictive variance of that count (events²), same shape; the count
      distribution is the experts' Poisson mixture (variance ≥ mean).
    rate_hz: count_mean / Δ in events/s (the predicted event rate), same shape.
    rate_var: (count_var − count_mean) / Δ², (events/s)²: the variance of the rate in the
      Poisson-Gamma reading (count ~ Poisson(λΔ), λ with this variance), kept from schema 1.
    count_observed: the events the network processed in the last whole horizon window
      [obs_t_start_us, obs_t_end_us) per pooled cell and polarity, shape (Hp, Wp, 2), the
      layout of count_mean (integers, exact in float32 below 2²⁴): what the rate experts
      counted (``State.nlast``), not a second count. ``observed_window`` defines the window.
    obs_t_start_us, obs_t_end_us: that window in stream µs, obs_t_end_us = ⌊t_us/Δ⌋·Δ and
      obs_t_start_us = obs_t_end_us − Δ; both None (and count_observed all 0) while no
      window has ended since the stream (re)started.
    surprise_map: Σ ½ π e² of layer-1 errors per column, shape (rows1, cols1);
    surprise_zmap: each active column's surprise as a z-score against its own running
    baseline (mean and variance at horizon ticks), 0 in silent columns, shape (rows1, cols1);
    surprise_total: the same summed, plus layer-2 errors; surprise_z: its z-score against
    the running baseline; free_energy: F = Σ [½ π e² − ½ ln π] over active units
    + λ Σ μ + ½ π_prior Σ μ_top².
    spikes_up / spikes_down / synops / events: counts during this step.
    """

    t_us: int
    mu: list[np.ndarray]
    sigma: list[np.ndarray]
    rate_hz: np.ndarray
    rate_var: np.ndarray
    count_mean: np.ndarray
    count_var: np.ndarray
    count_observed: np.ndarray
    obs_t_start_us: int | None
    obs_t_end_us: int | None
    surprise_map: np.ndarray
    surprise_zmap: np.ndarray
    surprise_total: float
    surprise_z: float
    free_energy: float
    spikes_up: int
    spikes_down: int
    synops: int
    events: int


@dataclass(frozen=True)
class StepCounts:
    """What one step did: input events, graded spikes up/down, synaptic operations."""

    events: int
    spikes_up: int
    spikes_down: int
    synops: int


class Network:
    """The spiking Bayesian predictive-coding network over one sensor's event stream."""

    def __init__(self, spec: ModelSpec, *, backend: str = "numba") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.spec = spec
        self.backend = backend
        if spec.arithmetic == "loihi" and backend != "numba":
            raise ValueError("arithmetic='loihi' runs on the numba backend only (its NumPy "
                             "oracle is augury.model.loihi_int.tick)")
        self.params = kernels.make_params(spec)
        self._qc = loihi_int.consts(spec)
        self.learning = True
        self.state: State = init_state(spec)
        self._scratch = init_scratch(spec)
        self._last_counts_base = self.state.counters.copy()

    # -- learning switch ------------------------------------------------------------------
    def freeze_learning(self) -> None:
        """Inference only: precisions, weights and temporal weights stay unchanged."""
        self.learning = False

    def resume_learning(self) -> None:
        self.learning = True

    # -- stepping -------------------------------------------------------------------------
    @property
    def t_us(self) -> int:
        """Stream time reached (the last batch's t_end_us), µs."""
        return int(self.state.clock[K_TNOW])

    def step(self, batch: EventBatch) -> Readout:
        """Feed one batch (events sorted, inside [t_start_us, t_end_us)) and read out at t_end.

        Raises EventFormatError naming the batch field or event index if the batch breaks
        the stream contract (dtype, order, span, coordinates, time going backwards).
        """
        self.advance(batch)
        return self.readout()

    def advance(self, batch: EventBatch) -> StepCounts:
        """Feed one batch like ``step`` but skip the read-out (a daemon reads out only when
        it publishes); returns the counts of this step."""
        t, x, y, p = self._check(batch)
        st = self.state
        if not st.clock[K_STARTED]:
            tick = self.spec.tick_us
            st.clock[K_NEXT] = -(-batch.t_start_us // tick) * tick
            st.clock[K_STARTED] = 1
            st.clock[K_TNOW] = batch.t_start_us
        self._last_counts_base = st.counters.copy()
        if self.spec.arithmetic == "loihi":  # the integer twin (numba only)
            loihi_kernels.run_batch(st, self._scratch, self.params, self._qc, t, x, y, p,
                                    int(batch.t_end_us), bool(self.learning))
            return self.last_counts()
        run = kernels.run_batch if self.backend == "numba" else reference.run_batch
        run(st, self._scratch, self.params, t, x, y, p, int(batch.t_end_us),
            bool(self.learning))
        return self.last_counts()

    def last_counts(self) -> StepCounts:
        """Events, spikes (up, down) and synaptic operations of the last step."""
        c = self.state.counters
        last = self._last_counts_base
        return StepCounts(events=int(c[C_EVENTS] - last[C_EVENTS]),
                          spikes_up=int(c[C_UP] - last[C_UP]),
                          spikes_down=int(c[C_DOWN] - last[C_DOWN]),
                          synops=int(c[C_SYNOPS] - last[C_SYNOPS]))

    def _check(self, batch: EventBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                  np.ndarray]:
        """The batch's fields as contiguous columns (t, x, y, p), after checking the stream
        contract in one compiled pass; EventFormatError names the batch, the first bad
        event's index and the field."""
        src = f"batch {batch.seq}"
        ev = batch.events
        if ev.dtype != EVENT_DTYPE:
            raise EventFormatError(f"events dtype is {ev.dtype}, expected EVENT_DTYPE",
                                   source=src)
        if batch.t_end_us < batch.t_start_us:
            raise EventFormatError(f"t_end_us={batch.t_end_us} < t_start_us="
                                   f"{batch.t_start_us}", source=src)
        st = self.state
        if st.clock[K_STARTED] and batch.t_start_us < st.clock[K_TNOW]:
            raise EventFormatError(f"t_start_us={batch.t_start_us} is before the time already "
                                   f"reached ({int(st.clock[K_TNOW])} µs)", source=src)
        n = ev.size
        cols = (np.empty(n, np.int64), np.empty(n, np.uint16), np.empty(n, np.uint16),
                np.empty(n, np.uint8))
        if n == 0:
            return cols
        i, code = ek.split_checked_kernel(np.ascontiguousarray(ev), self.spec.width,
                                          self.spec.height, int(batch.t_start_us),
                                          int(batch.t_end_us), *cols)
        if code != ek.SPLIT_OK:
            what = {ek.SPLIT_X: f"x outside 0..{self.spec.width - 1}",
                    ek.SPLIT_Y: f"y outside 0..{self.spec.height - 1}",
                    ek.SPLIT_P: "p not in {0, 1}",
                    ek.SPLIT_T_RANGE: f"t outside [{batch.t_start_us}, {batch.t_end_us}) µs",
                    ek.SPLIT_T_BACK: "field t goes backwards"}[code]
            raise EventFormatError(f"event {i}: {what}", source=src)
        return cols

    # -- readout --------------------------------------------------------------------------
    def readout(self) -> Readout:
        """The published quantities at the current stream time (pure function of the state);
        the counts are those of the last ``step``. The numba backend reads out with the
        numba kernels, the reference backend with their NumPy twin."""
        read = compute_readout if self.backend == "numba" else compute_readout_numpy
        r = read(self.spec, self.state, self.t_us)
        n = self.last_counts()
        r.spikes_up, r.spikes_down, r.synops, r.events = (n.spikes_up, n.spikes_down,
                                                          n.synops, n.events)
        return r

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every state array (learned and fast), keyed by name."""
        d = state_to_dict(self.state)
        d["__learning__"] = np.array([1 if self.learning else 0], np.int64)
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` returned (bit-exact); shapes are checked."""
        d = dict(d)
        flag = d.pop("__learning__", None)
        self.state = state_from_dict(self.spec, d)
        self._scratch = init_scratch(self.spec)
        self._last_counts_base = self.state.counters.copy()
        if flag is not None:
            self.learning = bool(np.asarray(flag).ravel()[0])

    def learned_arrays(self) -> dict[str, np.ndarray]:
        """Copies of the arrays that only learning changes (for freeze checks)."""
        return {k: getattr(self.state, k).copy() for k in LEARNED}

    def save(self, path: str | Path) -> None:
        """Write spec (JSON) and state to an .npz file (no pickle)."""
        save_npz(path, self.spec, self.state)

    @classmethod
    def load(cls, path: str | Path, *, backend: str = "numba") -> Network:
        spec, st = load_npz(path)
        net = cls(spec, backend=backend)
        net.state = st
        net._last_counts_base = st.counters.copy()
        return net

    def reset(self) -> None:
        """Back to the initial state of the spec (seeded weights, empty traces)."""
        self.state = init_state(self.spec)
        self._scratch = init_scratch(self.spec)
        self._last_counts_base = self.state.counters.copy()

    def spec_json(self) -> str:
        return json.dumps(self.spec.to_dict(), sort_keys=True)


# -- readout maths: the numba read-out, its NumPy twin and helpers --------------------------
def traces_at(spec: ModelSpec, st: State, t_us: int) -> np.ndarray:
    """Layer-1 traces decayed in closed form to t_us, (n1, D1); silent columns are 0."""
    dt = np.maximum(t_us - st.tcol, 0).astype(np.float64)
    f = np.exp(-dt / spec.tau_us) * (st.active != 0)
    return st.z1 * f[:, None]


def column_to_map(spec: ModelSpec, a: np.ndarray) -> np.ndarray:
    """(n1, D1) per-column channel values → (Hp, Wp, 2) pooled map."""
    r1, c1 = spec.grid1
    c = spec.column
    hp, wp = spec.pooled_shape
    m = a.reshape(r1, c1, c, c, 2).transpose(0, 2, 1, 3, 4).reshape(r1 * c, c1 * c, 2)
    return m[:hp, :wp]


def map_to_column(spec: ModelSpec, m: np.ndarray) -> np.ndarray:
    """(Hp, Wp, 2) pooled map → (n1, D1) per-column channels (zero-padded at the edges)."""
    r1, c1 = spec.grid1
    c = spec.column
    full = np.zeros((r1 * c, c1 * c, 2), dtype=m.dtype)
    full[: m.shape[0], : m.shape[1]] = m
    return full.reshape(r1, c, c1, c, 2).transpose(0, 2, 1, 3, 4).reshape(r1 * c1, spec.d1)


def _w(w: np.ndarray, n: int) -> np.ndarray:
    """Broadcast shared weights (1, a, b) to (n, a, b) views."""
    return np.broadcast_to(w, (n, *w.shape[1:])) if w.shape[0] == 1 else w


def l2_inputs(spec: ModelSpec, st: State) -> np.ndarray:
    """Layer-1 sent beliefs arranged as layer-2 inputs, (n2, 4·k1)."""
    r1, c1 = spec.grid1
    r2, c2 = spec.grid2
    m = np.zeros((r2 * 2, c2 * 2, spec.k1))
    m[:r1, :c1] = st.mus1.reshape(r1, c1, spec.k1)
    return m.reshape(r2, 2, c2, 2, spec.k1).transpose(0, 2, 1, 3, 4).reshape(r2 * c2, -1)


def l2_to_l1(spec: ModelSpec, a: np.ndarray) -> np.ndarray:
    """(n2, 4·k1) layer-2 slot values → (n1, k1) per layer-1 column."""
    r1, c1 = spec.grid1
    r2, c2 = spec.grid2
    m = a.reshape(r2, c2, 2, 2, spec.k1).transpose(0, 2, 1, 3, 4).reshape(r2 * 2, c2 * 2, -1)
    return m[:r1, :c1].reshape(r1 * c1, spec.k1)


def forecast_beliefs(spec: ModelSpec, st: State) -> np.ndarray:
    """μ1' = max(0, μ1 + W2 (A μ2 − μ2)) with two layers, A μ1 with one: the layer-1 beliefs
    the hierarchy expects one horizon ahead, (n1, K1)."""
    n1 = spec.n1
    if spec.layers == 1:
        return np.einsum("ckl,cl->ck", _w(st.A, n1), st.mu1)
    n2 = spec.n2
    mu2p = np.einsum("ckl,cl->ck", _w(st.A, n2), st.mu2)
    dpred = np.einsum("csk,ck->cs", _w(st.W2, n2), mu2p - st.mu2)
    return np.maximum(st.mu1 + l2_to_l1(spec, dpred), 0.0)


def predicted_traces(spec: ModelSpec, st: State, z: np.ndarray) -> np.ndarray:
    """x'_{t+Δ} = max(0, g ⊙ W1 μ1' + ρ ⊙ z + Σ_o R_o z_{·+o}), (n1, D1).

    μ1' from ``forecast_beliefs``; z are the traces now (0 on silent columns); g, ρ, R are
    the forecast units' learned weights on the hierarchy's forecast, the channel's own
    trace and its 8 neighbours' traces.
    """
    w1 = _w(st.W1, spec.n1)
    za = z * (st.active != 0)[:, None]
    return np.maximum(st.gh * np.einsum("cdk,ck->cd", w1, forecast_beliefs(spec, st))
                      + st.rho * za + lateral(spec, st.R[0], za), 0.0)


def lateral(spec: ModelSpec, r: np.ndarray, resid: np.ndarray) -> np.ndarray:
    """Σ_o R[pol, o] x_{c+o}: values x of the 8 neighbouring cells (same polarity), (n1, D1).

    Computed on the padded pooled grid (rows1·column × cols1·column), zero outside it.
    """
    r1, c1 = spec.grid1
    c = spec.column
    full = resid.reshape(r1, c1, c, c, 2).transpose(0, 2, 1, 3, 4).reshape(r1 * c, c1 * c, 2)
    pad = np.pad(full, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros_like(full)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for o, (dy, dx) in enumerate(offsets):
        out += r[:, o] * pad[1 + dy:1 + dy + r1 * c, 1 + dx:1 + dx + c1 * c]
    return out.reshape(r1, c, c1, c, 2).transpose(0, 2, 1, 3, 4).reshape(r1 * c1, spec.d1)


def belief_variances(spec: ModelSpec, st: State) -> list[np.ndarray]:
    """Laplace variances σ² = 1/(π_prior + Σ_i W_ij² π_i) per layer, (n, K)."""
    n1 = spec.n1
    w1 = _w(st.W1, n1)
    prior1 = np.full((n1, spec.k1), spec.pi_prior) if spec.layers == 1 else l2_to_l1(
        spec, st.pi2)
    s1 = 1.0 / (prior1 + np.einsum("cdk,cd->ck", w1 * w1, st.pi1))
    if spec.layers == 1:
        return [s1]
    w2 = _w(st.W2, spec.n2)
    s2 = 1.0 / (spec.pi_prior + np.einsum("csk,cs->ck", w2 * w2, st.pi2))
    return [s1, s2]


def compute_readout(spec: ModelSpec, st: State, t_us: int) -> Readout:
    """Readout at t_us from the state with the numba kernels of ``readout_kernels``.

    The same quantities as ``compute_readout_numpy`` (its reference twin; equal to float
    tolerance, tested), several times faster: no transposes or broadcasts, silent columns
    skipped where their contribution is known (zero residual, zero beliefs). Every returned
    array is freshly allocated (safe to hand to the publisher or keep). Counts are left at 0;
    ``Network.readout`` fills them.
    """
    r1, c1 = spec.grid1
    r2, c2 = spec.grid2
    hp, wp = spec.pooled_shape
    (rate_hz, rate_var, s_col, sigma1, sigma2, mu1, mu2, total, fe, mu_sum,
     top_sq) = rk.readout_arrays(
        st.z1, st.tcol, st.active, st.xhat1, st.pi1, st.mu1, st.mus1, st.W1, st.gh, st.rho,
        st.R[0],
        st.vF, st.pred2, st.pi2, st.nact2, st.mu2, st.W2, st.A, int(t_us), float(spec.tau_us),
        spec.column, r1, c1, c2, hp, wp, spec.layers, float(spec.pi_prior))
    fe += total + spec.sparsity * mu_sum + 0.5 * spec.pi_prior * top_sq
    mu = [mu1.reshape(r1, c1, spec.k1)]
    sigma = [sigma1.reshape(r1, c1, spec.k1)]
    if spec.layers == 2:
        mu.append(mu2.reshape(r2, c2, spec.k2))
        sigma.append(sigma2.reshape(r2, c2, spec.k2))
    count_mean = np.empty_like(rate_hz)
    count_var = np.empty_like(rate_hz)
    rk.mixture_maps(rate_hz, st.Lmix, st.Lglob, st.mprev, st.odisp, float(spec.mix_share),
                    spec.column, c1, spec.horizon_us * 1e-6, rate_var, count_mean, count_var)
    count_obs = np.zeros_like(rate_hz)
    rk.observed_map(st.nlast, spec.column, c1, count_obs)
    counts = {name: a.reshape(hp, wp, 2) for name, a in (
        ("rate_hz", rate_hz), ("rate_var", rate_var), ("count_mean", count_mean),
        ("count_var", count_var), ("count_observed", count_obs))}
    s_map = s_col.reshape(r1, c1)
    mean, bvar = float(st.baseline[0]), float(st.baseline[1])
    return Readout(
        t_us=int(t_us), mu=mu, sigma=sigma, **counts,
        **observed_window(spec, st, t_us), surprise_map=s_map,
        surprise_zmap=column_zscores(spec, st, s_col),
        surprise_total=float(total),
        surprise_z=(total - mean) / float(np.sqrt(bvar + 1e-12)), free_energy=float(fe),
        spikes_up=0, spikes_down=0, synops=0, events=0,
    )


def _count_maps(spec: ModelSpec, st: State, t_us: int,
                x_fore: np.ndarray) -> dict[str, np.ndarray]:
    """count_mean, count_var, rate_hz, rate_var maps (Hp, Wp, 2) float32 from the mixture of
    rate experts, given the forecast units' trace forecast x_fore (n1, D1) at t_us."""
    mean, var = count_forecast(spec, st, x_fore)
    dt_s = spec.horizon_us * 1e-6
    return {"rate_hz": column_to_map(spec, mean / dt_s).astype(np.float32),
            "rate_var": column_to_map(spec, (var - mean) / dt_s**2).astype(np.float32),
            "count_mean": column_to_map(spec, mean).astype(np.float32),
            "count_var": column_to_map(spec, var).astype(np.float32)}


def observed_window(spec: ModelSpec, st: State, t_us: int) -> dict[str, int | None]:
    """The window whose counts ``State.nlast`` holds at stream time t_us (µs), as
    {"obs_t_start_us": T − Δ, "obs_t_end_us": T} with T = ⌊t_us/Δ⌋·Δ, Δ = horizon_us.

    Why it is that window: a horizon tick T runs once every event with t < T has been seen
    and before any event at t ≥ T (``kernels.run_batch`` runs the ticks T ≤ t_end at the end
    of a batch, and an event at t = T after tick T), and the rate experts then move the
    window's count ``ncnt`` into ``nlast``: nlast holds the events with T − Δ ≤ t < T of
    the last tick T ≤ t_us. Silent windows after the stream falls silent are processed at
    the end of the batch (``kernels._catch_up``); beyond ``mix_kmax`` of them no tick runs,
    but nlast is then already 0, the true count of every later window. The read-out
    times need not align with window ends: between two ticks the counts stay those of the
    window that ended last. The first window after a (re)start of the stream can begin
    before the stream did; it then holds only the events from the stream's start on. Both
    values are None while no horizon tick has run since the (re)start (``mixage[0]`` = 0).
    """
    if st.mixage[0] == 0:
        return {"obs_t_start_us": None, "obs_t_end_us": None}
    h = spec.horizon_us
    end = (int(t_us) // h) * h
    return {"obs_t_start_us": end - h, "obs_t_end_us": end}


def column_zscores(spec: ModelSpec, st: State, s_col: np.ndarray) -> np.ndarray:
    """(s_j − m_j) / √v_j per layer-1 column against its own baseline (``st.sbase1``), 0 where
    the column is silent; s_col (n1,) is each column's surprise Σ ½ π e² (nats). Returns a
    fresh float32 array of shape (rows1, cols1)."""
    z = (np.asarray(s_col, np.float64) - st.sbase1[:, 0]) / np.sqrt(st.sbase1[:, 1] + 1e-12)
    return np.where(st.active != 0, z, 0.0).reshape(spec.grid1).astype(np.float32)


def prediction_errors(spec: ModelSpec, st: State,
                      z: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Error units' prediction errors: layer 1's z − x̂ (n1, D1) from the traces z (events,
    ``traces_at``) and layer 2's inputs − predictions (n2, D2), None with one layer; 0 in
    inactive columns."""
    e1 = (z - st.xhat1) * (st.active != 0)[:, None]
    if spec.layers == 1:
        return e1, None
    return e1, (l2_inputs(spec, st) - st.pred2) * (st.nact2 != 0)[:, None]


def free_energy_parts(spec: ModelSpec, st: State, e1: np.ndarray,
                      e2: np.ndarray | None) -> tuple[float, float, float]:
    """(F₁, F₂, priors), nats, whose sum is ``Readout.free_energy``: F_ℓ = Σ over layer ℓ's
    active error units of ½ π e² − ½ ln π (errors from ``prediction_errors``), priors =
    λ Σ μ over every layer + ½ π_prior Σ μ_top². F₂ = 0 with one layer."""
    act1 = st.active != 0
    f1 = float(np.sum(0.5 * st.pi1 * e1 * e1) - 0.5 * np.sum(np.log(st.pi1[act1])))
    mus = [st.mu1]
    f2 = 0.0
    if e2 is not None:
        act2 = st.nact2 != 0
        f2 = float(np.sum(0.5 * st.pi2 * e2 * e2) - 0.5 * np.sum(np.log(st.pi2[act2])))
        mus.append(st.mu2)
    top = mus[-1]
    prior = spec.sparsity * float(sum(m.sum() for m in mus)) + 0.5 * spec.pi_prior * float(
        np.sum(top * top))
    return f1, f2, prior


def compute_readout_numpy(spec: ModelSpec, st: State, t_us: int) -> Readout:
    """Readout at t_us from the state with vectorised NumPy: the reference twin of
    ``compute_readout`` (obvious, slower; the oracle of tests/test_model_readout.py)."""
    z = traces_at(spec, st, t_us)
    e1, e2 = prediction_errors(spec, st, z)
    s_col = 0.5 * np.sum(st.pi1 * e1 * e1, axis=1)
    total = float(s_col.sum())
    if e2 is not None:
        total += float(np.sum(0.5 * st.pi2 * e2 * e2))
    fe = float(sum(free_energy_parts(spec, st, e1, e2)))
    var = belief_variances(spec, st)
    shapes = [spec.grid1 + (spec.k1,)]
    mus = [st.mu1]
    if spec.layers == 2:
        shapes.append(spec.grid2 + (spec.k2,))
        mus.append(st.mu2)
    xp = predicted_traces(spec, st, z)
    mean, bvar = float(st.baseline[0]), float(st.baseline[1])
    return Readout(
        t_us=int(t_us),
        mu=[m.reshape(s).astype(np.float32) for m, s in zip(mus, shapes, strict=True)],
        sigma=[np.sqrt(v).reshape(s).astype(np.float32) for v, s in zip(var, shapes,
                                                                          strict=True)],
        **_count_maps(spec, st, t_us, xp),
        count_observed=column_to_map(spec, st.nlast).astype(np.float32),
        **observed_window(spec, st, t_us),
        surprise_map=s_col.reshape(spec.grid1).astype(np.float32),
        surprise_zmap=column_zscores(spec, st, s_col),
        surprise_total=total,
        surprise_z=(total - mean) / float(np.sqrt(bvar + 1e-12)),
        free_energy=fe,
        spikes_up=0, spikes_down=0, synops=0, events=0,
    )
