"""Layer 1 of a numba-trained network run as Lava floating_pt processes (inference only).

    events ──counts per tick──▶ ErrorUnits ──Δε̂──▶ Dense Wᵀ ──▶ BeliefUnits
                                   ▲  └──────── column reset ──────▲   │
                                   └──────── Dense W ◀────Δμ̂───────────┘

One tick of ``tick_us`` is ``2 · relax_steps`` Lava steps (each Dense hop delays by one step).
The network runs through ``GuardedRunner`` in chunks of at most ``chunk_ticks`` ticks. The
input counts go through a Lava ``Injector`` (blocking receive: one message per Lava step,
the tick's counts at phase 0 and zeros otherwise), sent right after a chunk starts into a
buffer sized for the whole chunk, so the host never blocks. (A ``Var.set`` per chunk was
the first design: Lava 0.10 transfers a Var element by element, ≈ 15 µs each.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from augury.events import EVENT_DTYPE
from augury.lava import LavaError, require_lava
from augury.lava.convert import (
    Layer1Params,
    block_diag,
    layer1_params,
    loihi_layer1,
    tick_counts,
    to_state,
)
from augury.model.spec import ModelSpec
from augury.model.state import State


class LavaLayer1:
    """Serve layer 1 of ``state`` (a numba State ending on a tick) with Lava processes.

    Args:
        spec: the network's spec (``layers = 1``, ``clocked_input``, ``settle = 0``).
        state: the numba State to start from (copied; learned arrays are frozen here).
        chunk_ticks: ticks per guarded Lava run (a run is ``chunk_ticks · 2R`` steps).
        poll_s: how often (s) the runner checks Lava's children during a chunk.
        connections: "dense" (Lava's Dense, block-diagonal matrices of (n1·D1)·(n1·K1)
            entries), "sparse" (Lava's Sparse, only the n1·D1·K1 block entries) or "auto"
            (sparse above ``DENSE_MAX_COLUMNS`` columns).
        extract: read the state back through two Lava ``Extractor`` s (the units' state
            after every step, drained after each chunk, the last one kept) instead of
            ``Var.get``, which Lava 0.10 moves element by element (≈ 15 µs each). Float
            processes only (ignored with arithmetic="loihi").
    """

    DENSE_MAX_COLUMNS = 16

    def __init__(self, spec: ModelSpec, state: State, *, chunk_ticks: int = 50,
                 poll_s: float = 0.05, connections: str = "auto",
                 extract: bool = True) -> None:
        require_lava()
        if connections not in ("auto", "dense", "sparse"):
            raise ValueError(f"connections must be auto, dense or sparse, got {connections!r}")
        self.sparse = (connections == "sparse" or
                       (connections == "auto" and spec.n1 > self.DENSE_MAX_COLUMNS))
        if isinstance(chunk_ticks, bool) or not isinstance(chunk_ticks, int) or chunk_ticks < 1:
            raise ValueError(f"chunk_ticks must be a positive int, got {chunk_ticks!r}")
        self.spec = spec
        self.params: Layer1Params = layer1_params(spec, state)
        # arithmetic="loihi": integer fixed_pt processes (augury.lava.integer)
        self.loihi = loihi_layer1(spec, state) if spec.arithmetic == "loihi" else None
        self.chunk_ticks = chunk_ticks
        self.poll_s = poll_s
        self.ticks_run = 0
        self._template = State(*[a.copy() for a in state])
        self._procs: dict[str, Any] = {}
        self._runner: Any = None
        self._held = np.zeros(0, EVENT_DTYPE)  # events of ticks not run yet (``feed``)
        self.extract = bool(extract) and self.loihi is None  # float processes only
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # extracted after a chunk

    # -- time -------------------------------------------------------------------------------
    @property
    def t_next_us(self) -> int:
        """Stream time of the next tick the Lava network will run (µs)."""
        return self.params.t_first_us + self.ticks_run * self.spec.tick_us

    @property
    def runner(self) -> Any:
        """The GuardedRunner (None before the first chunk)."""
        return self._runner

    # -- running ----------------------------------------------------------------------------
    def advance(self, events: np.ndarray, n_ticks: int) -> None:
        """Run the next ``n_ticks`` ticks on ``events`` (EVENT_DTYPE, all inside
        [t_next_us − tick_us, t_next_us + (n_ticks − 1)·tick_us))."""
        counts = tick_counts(self.spec, events, self.t_next_us, n_ticks)
        for i in range(0, n_ticks, self.chunk_ticks):
            self.run_counts(counts[:, i:i + self.chunk_ticks])

    def feed(self, events: np.ndarray, t_end_us: int) -> int:
        """Stream contract of ``Network.advance``: take a batch (EVENT_DTYPE, sorted, not
        before the events already fed) and run every tick T ≤ ``t_end_us``; returns the
        number of ticks run.

        Events at or after the last tick run wait for the next call: numba has already
        added them to its traces at ``t_end_us`` (at that tick's time, ``clocked_input``),
        Lava adds them at the next tick's phase 0. Both agree again once that tick has
        run; a read-out between the two lags by those events (less than one tick).
        """
        if events.size:
            if self._held.size and events["t"][0] < self._held["t"][-1]:
                raise ValueError("LavaLayer1.feed: events go back in time")
            if events["t"][0] < self.t_next_us - self.spec.tick_us:
                raise ValueError(f"LavaLayer1.feed: an event at {int(events['t'][0])} µs is "
                                 f"before the next tick's interval "
                                 f"[{self.t_next_us - self.spec.tick_us}, …) µs")
            self._held = np.concatenate([self._held, events])
        if t_end_us < self.t_next_us:
            return 0
        n = (t_end_us - self.t_next_us) // self.spec.tick_us + 1
        t_last = self.t_next_us + (n - 1) * self.spec.tick_us
        take = self._held["t"] < t_last
        self.advance(self._held[take], n)
        self._held = self._held[~take]
        return int(n)

    def run_counts(self, counts: np.ndarray) -> None:
        """Run one chunk of ``counts.shape[1]`` ≤ chunk_ticks ticks; counts: (n1·D1, ticks)."""
        n_in = self.params.z.shape[0]
        k = counts.shape[1] if counts.ndim == 2 else -1
        if counts.shape[0] != n_in or not 1 <= k <= self.chunk_ticks:
            raise ValueError(f"counts must have shape ({n_in}, 1..{self.chunk_ticks}), got "
                             f"{counts.shape}")
        if self._runner is None:
            self._build()
        inj = self._procs["inj"]
        zeros = np.zeros(n_in)
        spt = self.params.steps_per_tick

        def feed() -> None:
            for i in range(k):
                inj.send(np.ascontiguousarray(counts[:, i], np.float64))
                for _ in range(spt - 1):
                    inj.send(zeros)

        self._runner.run(k * spt, feed=feed)
        self.ticks_run += k
        if self.extract:  # drain every step's message (the buffers hold one chunk)
            last = []
            for name in ("ext_err", "ext_bel"):
                ext = self._procs[name]
                for _ in range(k * spt - 1):
                    ext.receive()
                last.append(ext.receive())
            self._last = (last[0], last[1])

    def _build(self) -> None:
        from lava.magma.core.run_configs import Loihi2SimCfg
        from lava.proc.dense.process import Dense
        from lava.proc.io.injector import Injector, PyLoihiInjectorModel
        from lava.proc.io.utils import ChannelConfig, ReceiveEmpty, ReceiveNotEmpty, SendFull
        from lava.proc.sparse.process import Sparse

        from augury.lava.runner import GuardedRunner

        p, s = self.params, self.spec
        if self.loihi is not None:
            from augury.lava.integer import make_units

            err, bel = make_units(s, self.loihi)
            w_blocks = self.loihi.params.w
        else:
            err, bel, w_blocks = self._float_units()
        conn = Sparse if self.sparse else Dense
        w_down_m = block_diag(w_blocks, sparse=self.sparse)
        w_up_m = w_down_m.T.tocsr() if self.sparse else np.ascontiguousarray(w_down_m.T)
        w_up = conn(weights=w_up_m, num_message_bits=24, name="w_up")
        w_down = conn(weights=w_down_m, num_message_bits=24, name="w_down")
        err.s_out.connect(w_up.s_in)
        w_up.a_out.connect(bel.a_in)
        bel.s_out.connect(w_down.s_in)
        w_down.a_out.connect(err.a_in)
        err.reset_out.connect(bel.reset_in)
        inj = Injector(shape=(p.z.shape[0],), buffer_size=self.chunk_ticks * p.steps_per_tick,
                       channel_config=ChannelConfig(send_full=SendFull.BLOCKING,
                                                    receive_empty=ReceiveEmpty.BLOCKING,
                                                    receive_not_empty=ReceiveNotEmpty.FIFO))
        inj.out_port.connect(err.cnt_in)
        self._procs = {"err": err, "bel": bel, "w_up": w_up, "w_down": w_down, "inj": inj}
        exceptions: dict[Any, Any] = {Injector: PyLoihiInjectorModel}
        if self.extract:
            from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel

            for name, port in (("ext_err", err.state_out), ("ext_bel", bel.state_out)):
                ext = Extractor(shape=port.shape,
                                buffer_size=self.chunk_ticks * p.steps_per_tick,
                                channel_config=ChannelConfig(
                                    send_full=SendFull.BLOCKING,
                                    receive_empty=ReceiveEmpty.BLOCKING,
                                    receive_not_empty=ReceiveNotEmpty.FIFO))
                port.connect(ext.in_port)
                self._procs[name] = ext
            exceptions[Extractor] = PyLoihiExtractorModel
        tag = "floating_pt" if self.loihi is None else "fixed_pt"
        cfg = Loihi2SimCfg(select_tag=tag,  # the Injector/Extractor are untagged
                           exception_proc_model_map=exceptions)
        self._runner = GuardedRunner(err, cfg, poll_s=self.poll_s)

    def _float_units(self) -> tuple[Any, Any, np.ndarray]:
        from augury.lava.procs.process import BeliefUnits, ErrorUnits

        p, s = self.params, self.spec
        err = ErrorUnits(z=p.z, xhat=p.xhat, eps=p.eps, pi=p.pi, thr=p.thr,
                         active=p.active, pending=np.zeros_like(p.active), decay=p.decay,
                         t_first_us=p.t_first_us, tick_us=s.tick_us, learn_us=s.learn_us,
                         horizon_us=s.horizon_us, z_off=s.z_off,
                         steps_per_tick=p.steps_per_tick)
        bel = BeliefUnits(u=p.u, mu=p.mu, mus=p.mus, h=p.h, h_wake=p.h_wake,
                          n_cols=s.n1, kappa=s.kappa, pi_prior=s.pi_prior,
                          sparsity=s.sparsity, theta_mu=s.theta_mu,
                          steps_per_tick=p.steps_per_tick)
        return err, bel, p.w_blocks

    def load(self, state: State) -> None:
        """Overwrite the running network's inference variables with those of a numba State
        that ends at the tick just run (``t_next_us − tick_us``), same spec and learned
        arrays (a restart from numba's state without rebuilding the network)."""
        if self.loihi is not None:
            raise LavaError("LavaLayer1.load is not implemented for arithmetic='loihi'")
        if self._runner is None:
            raise LavaError("LavaLayer1.load: run a chunk first (Lava 0.10 cannot set Vars "
                            "before the first run); build a new LavaLayer1 instead")
        for name in ("W1", "pi1", "gain1"):  # the Dense weights and thresholds stay as built
            if not np.array_equal(getattr(state, name), getattr(self._template, name)):
                raise LavaError(f"LavaLayer1.load: the State's {name} differs from the one the "
                                "network was built with; build a new LavaLayer1")
        p = layer1_params(self.spec, state)
        if p.t_first_us != self.t_next_us:
            raise LavaError(f"LavaLayer1.load: the State ends at {p.t_first_us - self.spec.tick_us}"
                            f" µs, the Lava network at {self.t_next_us - self.spec.tick_us} µs")
        s = self._runner.set
        e, b = self._procs["err"], self._procs["bel"]
        for var, v in ((e.z, p.z), (e.xhat, p.xhat), (e.eps, p.eps), (e.active, p.active),
                       (e.pending, np.zeros_like(p.active)), (b.u, p.u), (b.mu, p.mu),
                       (b.mus, p.mus), (b.h, p.h),
                       (self._procs["w_down"].a_buff, np.zeros_like(p.z)),
                       (self._procs["w_up"].a_buff, np.zeros_like(p.u))):
            s(var, v)
        self._template = State(*[a.copy() for a in state])
        self._last = None  # the extracted state is the old one: read Vars until a chunk runs

    def write_learned(self, state: State) -> None:
        """Write what a learning epoch on the host changed into the running network, between
        chunks: W1 (both connections), π1, the thresholds θ_e g √π, the curvatures h (and
        those of waking columns), and the refreshed x̂ = W μ̂, u = Wᵀ ε̂. ``state`` is the
        host's State at the tick just run, after ``kernels._tick_clocked`` learned on it.

        Every value goes through ``Var.set``, which Lava 0.10 moves element by element
        (≈ 15 µs each): the weights dominate (2 · n1·D1·K1 entries with Sparse, the whole
        block-diagonal matrices with Dense).
        """
        if self._runner is None or self.loihi is not None:
            raise LavaError("LavaLayer1.write_learned: float processes only, after a chunk")
        p = layer1_params(self.spec, state)
        if p.t_first_us != self.t_next_us:
            raise LavaError(f"LavaLayer1.write_learned: the State ends at "
                            f"{p.t_first_us - self.spec.tick_us} µs, the Lava network at "
                            f"{self.t_next_us - self.spec.tick_us} µs")
        w_down = block_diag(p.w_blocks, sparse=self.sparse)
        w_up = w_down.T.tocsr() if self.sparse else np.ascontiguousarray(w_down.T)
        e, b = self._procs["err"], self._procs["bel"]
        for var, v in ((e.pi, p.pi), (e.thr, p.thr), (e.xhat, p.xhat), (b.u, p.u),
                       (b.h, p.h), (b.h_wake, p.h_wake),
                       (self._procs["w_down"].weights, w_down),
                       (self._procs["w_up"].weights, w_up),
                       (self._procs["w_down"].a_buff, np.zeros_like(p.z)),
                       (self._procs["w_up"].a_buff, np.zeros_like(p.u))):
            self._runner.set(var, v)
        self.params = p._replace(t_first_us=self.params.t_first_us)  # t_next_us counts from it
        self._template = State(*[a.copy() for a in state])
        self._last = None  # the extracted state predates the write

    # -- reading ----------------------------------------------------------------------------
    def state(self) -> State:
        """The numba State at the end of the last tick run (learned arrays from the State
        this was built from)."""
        if self._runner is None:
            return State(*[a.copy() for a in self._template])
        if self.loihi is not None:
            from augury.lava.integer import to_numba_state

            return to_numba_state(self.spec, self._template, self.loihi, self.qstate(),
                                  self._runner.get(self._procs["bel"].woke), self.params.h,
                                  self.params.h_wake, self.t_next_us - self.spec.tick_us)
        return to_state(self.spec, self._template, **self.inference_arrays(),
                        t_now_us=self.t_next_us - self.spec.tick_us)

    def inference_arrays(self) -> dict[str, np.ndarray]:
        """Layer 1's inference variables at the end of the last tick run, flat float64:
        z, xhat (with the increments still in the Dense buffer), eps (n1·D1,); active,
        pending (n1,); u, mu, mus, h, h_wake (n1·K1,): the keyword arguments
        of ``convert.to_state`` (before the first chunk: the values it was built with).
        Float processes only (arithmetic="loihi" reads back with ``qstate``)."""
        if self.loihi is not None:
            raise LavaError("LavaLayer1.inference_arrays: float processes only; "
                            "arithmetic='loihi' reads back with qstate()")
        if self._runner is None:
            p = self.params
            return {"z": p.z, "xhat": p.xhat, "eps": p.eps, "active": p.active,
                    "pending": np.zeros_like(p.active), "u": p.u, "mu": p.mu, "mus": p.mus,
                    "h": p.h, "h_wake": p.h_wake}
        if self._last is not None:
            return self._unpack(*self._last)
        g = self._runner.get
        e, b = self._procs["err"], self._procs["bel"]
        out = {"z": g(e.z), "xhat": g(e.xhat) + g(self._procs["w_down"].a_buff),
               "eps": g(e.eps), "active": g(e.active), "pending": g(e.pending), "u": g(b.u),
               "mu": g(b.mu), "mus": g(b.mus), "h": g(b.h), "h_wake": g(b.h_wake)}
        return {k: np.array(v, np.float64).ravel() for k, v in out.items()}

    def _unpack(self, err: np.ndarray, bel: np.ndarray) -> dict[str, np.ndarray]:
        """``inference_arrays`` from the last step's extracted messages: [z, x̂, ε̂, active,
        pending] and [u, μ, μ̂, h, Δμ̂]; x̂ gets W Δμ̂ of the last relaxation (what Lava's
        Dense still holds), computed here per column block."""
        n, c, m = self.params.z.shape[0], self.spec.n1, self.params.u.shape[0]
        err = np.asarray(err, np.float64)
        bel = np.asarray(bel, np.float64)
        dmu = bel[4 * m:5 * m].reshape(c, -1)
        xhat = err[n:2 * n] + np.einsum("cdk,ck->cd", self.params.w_blocks, dmu).ravel()
        return {"z": err[:n].copy(), "xhat": xhat, "eps": err[2 * n:3 * n].copy(),
                "active": err[3 * n:3 * n + c].copy(), "pending": err[3 * n + c:].copy(),
                "u": bel[:m].copy(), "mu": bel[m:2 * m].copy(), "mus": bel[2 * m:3 * m].copy(),
                "h": bel[3 * m:4 * m].copy(), "h_wake": self.params.h_wake.copy()}

    def qstate(self) -> Any:
        """arithmetic="loihi": the integer layer-1 state (``loihi_int.QState``) at the end
        of the last tick run."""
        from augury.lava.integer import read_qstate

        if self.loihi is None or self._runner is None:
            raise LavaError("LavaLayer1.qstate: needs arithmetic='loihi' and a chunk run")
        return read_qstate(self.spec, self.loihi, self._runner.get, self._procs)

    def beliefs(self) -> np.ndarray:
        """μ at the end of the last tick run, shape (n1, K1) (columns being silenced read 0).

        Cheaper than ``state()``: Lava 0.10 reads a Var element by element (≈ 15 µs each),
        and this reads μ and one flag per column only.
        """
        if self._runner is None:
            return self._template.mu1.copy()
        if self.loihi is not None:
            from augury.model.loihi_int import MU_FRAC, from_q

            return from_q(self.qstate().mu, MU_FRAC)
        if self._last is not None:
            a = self._unpack(*self._last)
            mu = a["mu"].reshape(self.spec.n1, -1)
            mu[a["pending"] > 0] = 0.0
            return mu
        g = self._runner.get
        mu = np.asarray(g(self._procs["bel"].mu), np.float64).reshape(self.spec.n1, -1).copy()
        mu[np.asarray(g(self._procs["err"].pending)) > 0] = 0.0
        return mu

    def close(self) -> None:
        """Stop Lava and clean up (idempotent)."""
        if self._runner is not None:
            self._runner.close()

    def __enter__(self) -> LavaLayer1:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["LavaError", "LavaLayer1"]
