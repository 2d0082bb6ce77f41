"""``LavaNetwork``: the numba ``Network`` with layer 1's inference run in Lava.

The pipeline drives it exactly like ``Network`` (``advance``, ``readout``, ``state_dict``,
``load_state_dict``, ``reset``). Per batch it splits time at the clocked ticks T (multiples
of ``learn_us`` or ``horizon_us``):

    events < T ──feed──▶ Lava layer 1 (sidecar) runs every tick ≤ T ──▶ z, x̂, ε̂, u, μ, μ̂, h
    host: those arrays into the State (``convert.to_state``), the window's event counts,
          then the numba engine's own ``kernels._tick_clocked`` at T (forecast units, rate
          experts, surprise baselines, silencing of quiet columns)

and once more at the batch's end, so that the read-out (``Network.readout``, unchanged)
sees layer 1 at the last tick run. The Lava side is any ``Layer1Server``: the sidecar's
``SidecarClient`` in the daemon, ``LocalLayer1`` (in-process ``LavaLayer1``) in tests and
the benchmark. Nothing here imports Lava.

Learning runs on the host: at a learning epoch (learning on) ``_tick_clocked`` learns on
the State as the numba engine does (precisions, the Bayesian synapse W1, homeostasis, then
x̂, u and h refreshed), and the new W1, π1, thresholds, curvatures, x̂ and u are written into
Lava (``Layer1Server.write_learned``) before the next tick. Lava 0.10 writes a Var element
by element (≈ 15 µs each), so this is slow: serve a trained checkpoint with learning off for
speed (docs/lava.md).

Known differences from the numba engine (docs/lava.md): events after the last tick of a
batch reach Lava's traces at the next tick (numba adds them at ``t_end``), so a read-out
between two ticks lags them by less than one tick; while no column is active the numba
engine stops its clock and this keeps ticking (the rate experts see the same silent
windows, up to ``mix_kmax`` of them, through ``kernels._silent_windows``); no spike or
synaptic-operation counts come back from Lava (0 in ``StepCounts``).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from augury.events import EventBatch
from augury.lava.convert import LavaSpecError, check_spec, layer1_params, to_state
from augury.model import kernels
from augury.model.network import Network, StepCounts
from augury.model.spec import ModelSpec
from augury.model.state import C_EVENTS, C_TICKS, K_NEXT, K_STARTED, K_TNOW, State

log = logging.getLogger("augury.lava.backend")


class Layer1Server(Protocol):
    """Where layer 1 runs: ``SidecarClient`` or ``LocalLayer1``."""

    def load(self, spec: ModelSpec, st: State, *, chunk_ticks: int = 50) -> int:
        """Serve ``st`` (ending on a tick); returns the next tick's time (µs)."""

    def feed_layer1(self, events: np.ndarray, t_end_us: int,
                    seq: int = 0) -> tuple[int, dict[str, np.ndarray]]:
        """Run every tick ≤ t_end_us; (ticks run, ``LavaLayer1.inference_arrays``)."""

    def write_learned(self, spec: ModelSpec, st: State) -> None:
        """Write a learning epoch's new parameters (``LavaLayer1.write_learned``)."""

    def close(self) -> None:
        """Stop serving."""


class LocalLayer1:
    """``Layer1Server`` over an in-process ``LavaLayer1`` (needs lava-nc here)."""

    def __init__(self, **layer_kw: Any) -> None:
        self.layer_kw = layer_kw
        self.layer: Any = None

    def load(self, spec: ModelSpec, st: State, *, chunk_ticks: int = 50) -> int:
        from augury.lava.layer1 import LavaLayer1

        self.close()
        self.layer = LavaLayer1(spec, st, chunk_ticks=chunk_ticks, **self.layer_kw)
        return self.layer.t_next_us

    def feed_layer1(self, events: np.ndarray, t_end_us: int,
                    seq: int = 0) -> tuple[int, dict[str, np.ndarray]]:
        ticks = self.layer.feed(events, t_end_us)
        return ticks, (self.layer.inference_arrays() if ticks else {})

    def write_learned(self, spec: ModelSpec, st: State) -> None:
        self.layer.write_learned(st)

    def close(self) -> None:
        if self.layer is not None:
            self.layer.close()
            self.layer = None


def clocked_ticks(spec: ModelSpec, t0_us: int, t1_us: int) -> list[int]:
    """The ticks T in [t0_us, t1_us] (µs) where the host has clocked work: multiples of
    ``learn_us`` or ``horizon_us``, ascending."""
    out: set[int] = set()
    for period in (spec.learn_us, spec.horizon_us):
        first = -(-t0_us // period) * period
        out.update(range(first, t1_us + 1, period))
    return sorted(out)


class LavaNetwork(Network):
    """``Network`` whose layer-1 inference runs in Lava behind ``layer1``; everything else,
    learning included, runs on the host with the numba engine's kernels.

    Args:
        spec: one layer, ``clocked_input``, ``settle = 0`` (``convert.check_spec``).
        layer1: the Lava side (``SidecarClient`` or ``LocalLayer1``); closed by ``close``.
        chunk_ticks: ticks per guarded Lava run; default: the longest gap between two
            clocked ticks, min(learn_us, horizon_us) / tick_us (5), the most one sync runs.
            It also sizes the Extractors' buffers (one state message per Lava step), so a
            larger value only costs shared memory.
    """

    engine = "lava"  # published in ``stats`` (``backend`` stays "numba": the host's kernels)

    def __init__(self, spec: ModelSpec, layer1: Layer1Server, *,
                 chunk_ticks: int | None = None) -> None:
        check_spec(spec)
        if spec.arithmetic == "loihi":
            raise LavaSpecError("the Lava backend of augury run serves the float processes "
                                "only; arithmetic='loihi' (fixed_pt) runs in LavaLayer1 but is "
                                "not wired to the daemon yet")
        super().__init__(spec)
        self.layer1 = layer1
        self.chunk_ticks = chunk_ticks or max(1, min(spec.learn_us, spec.horizon_us)
                                              // spec.tick_us)
        self.syncs = 0  # round trips to the Lava side (one per clocked tick and batch end)
        self.writes = 0  # learning epochs written into Lava
        self._t_next: int | None = None  # the next tick Lava runs; None: not loaded

    @property
    def write_elements(self) -> int:
        """Values one learning epoch writes into Lava (W1 twice as Sparse entries, π1, the
        thresholds, x̂, u, h, h_wake; Dense writes its whole block-diagonal matrices)."""
        s = self.spec
        return 2 * s.n1 * s.d1 * s.k1 + 3 * s.n1 * s.d1 + 4 * s.n1 * s.k1

    @classmethod
    def from_network(cls, net: Network, layer1: Layer1Server, **kw: Any) -> LavaNetwork:
        """A LavaNetwork starting from ``net``'s state (e.g. resumed from a checkpoint)."""
        out = cls(net.spec, layer1, **kw)
        out.load_state_dict(net.state_dict())  # the learning flag included
        return out

    # -- state: any change re-anchors the Lava side at the next batch --------------------------
    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        super().load_state_dict(d)
        self._t_next = None

    def reset(self) -> None:
        super().reset()
        self._t_next = None

    def close(self) -> None:
        """Stop the Lava side."""
        self.layer1.close()

    # -- stepping -----------------------------------------------------------------------------
    def advance(self, batch: EventBatch) -> StepCounts:
        """Feed one batch (same contract as ``Network.advance``): layer 1 in Lava up to the
        last tick ≤ t_end_us, the clocked work on the host at each clocked tick."""
        self._check(batch)
        st = self.state
        self._last_counts_base = st.counters.copy()
        if self._t_next is None:
            self._anchor(batch.t_start_us)
        ev = batch.events
        done = 0
        for tt in clocked_ticks(self.spec, self._t_next, int(batch.t_end_us)):
            cut = int(np.searchsorted(ev["t"], tt, side="left"))
            self._sync(ev[done:cut], tt, clocked=True)
            done = cut
        self._sync(ev[done:], int(batch.t_end_us), clocked=False)
        self.state.clock[K_TNOW] = batch.t_end_us
        return self.last_counts()

    def _anchor(self, t_start_us: int) -> None:
        """Load the State into the Lava side. A State that does not end on a tick with its
        active columns anchored there (a roll-back copy, a checkpoint) restarts its fast
        state first, as a stream restart does; a fresh one starts its clock at the tick
        before ``t_start_us``."""
        st = self.state
        if st.clock[K_STARTED]:
            try:
                layer1_params(self.spec, st)
            except LavaSpecError as exc:
                from augury.pipeline import restart_stream

                log.warning("the Lava backend restarts the fast state (%s)", exc)
                restart_stream(self)  # calls load_state_dict: still not anchored
                st = self.state
        if not st.clock[K_STARTED]:
            tick = self.spec.tick_us
            first = -(-t_start_us // tick) * tick
            st.clock[K_NEXT] = first
            st.clock[K_TNOW] = first - tick
            st.clock[K_STARTED] = 1
        self._t_next = self.layer1.load(self.spec, st, chunk_ticks=self.chunk_ticks)

    def _sync(self, events: np.ndarray, t_us: int, *, clocked: bool) -> None:
        """Send ``events`` (all before the tick at t_us when ``clocked``), let Lava run every
        tick ≤ t_us, take layer 1 back, count the events for the rate experts, and at a
        clocked tick run the host's clocked work there."""
        ticks, arrays = self.layer1.feed_layer1(events, t_us, seq=self.syncs)
        self.syncs += 1
        if ticks:
            t_last = self._t_next + (ticks - 1) * self.spec.tick_us
            self._t_next = t_last + self.spec.tick_us
            if clocked and t_last != t_us:
                raise RuntimeError(f"the Lava side ended at {t_last} µs, not at the clocked "
                                   f"tick {t_us} µs")
            # columns Lava marked at a clocked tick are silenced here by _tick_clocked (the
            # same test on the same traces), after the forecast units have seen them
            arrays["pending"] = np.zeros_like(arrays["pending"])
            self.state = to_state(self.spec, self.state, **arrays, t_now_us=t_last)
            self.state.counters[C_TICKS] += ticks
        self._count(events)
        if clocked and ticks:
            st, sc, p = self.state, self._scratch, self.params
            learn = bool(self.learning)
            if not st.active.any():  # numba's clock stops: the rate experts see silent windows
                kernels._silent_windows(st, sc, p, t_us, t_us, learn)
                return
            if learn:  # what run_batch sets up before any tick: W1ᵀ and the thresholds
                kernels._transpose_w1(st, sc)
                kernels._thresholds(st, sc, p)
            kernels._tick_clocked(st, sc, p, t_us, learn)
            if learn and t_us % self.spec.learn_us == 0:
                self.layer1.write_learned(self.spec, st)
                self.writes += 1

    def _count(self, events: np.ndarray) -> None:
        """Each event into its channel's count of the current window (``State.ncnt``, as
        ``kernels._event`` does) and the event counter."""
        if not events.size:
            return
        sc = self._scratch
        x = events["x"].astype(np.int64)
        y = events["y"].astype(np.int64)
        j = sc.jy[y] + sc.jx[x]
        d = sc.dy[y] + sc.dx[x] + events["p"].astype(np.int64)
        np.add.at(self.state.ncnt, (j, d), 1.0)
        self.state.counters[C_EVENTS] += events.size
