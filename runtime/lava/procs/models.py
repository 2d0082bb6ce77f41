"""Floating-point CPU ProcessModels of the layer-1 error and belief units.

They follow the numba engine with ``clocked_input = True`` and ``settle = 0`` operation by
operation (same expressions, same order within a unit), so the only differences are the
order of the sums over synapses (Lava's Dense sums a whole message, numba adds spike by
spike): rounding-level, see docs/lava.md.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from augury.lava.procs.process import BeliefUnits, ErrorUnits


@implements(proc=ErrorUnits, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyErrorUnitsFloat(PyLoihiProcessModel):
    """Error units in float64: phase 0 takes input, decays, sweeps; even phases re-sweep."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    cnt_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    reset_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    state_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    z: np.ndarray = LavaPyType(np.ndarray, float)
    xhat: np.ndarray = LavaPyType(np.ndarray, float)
    eps: np.ndarray = LavaPyType(np.ndarray, float)
    pi: np.ndarray = LavaPyType(np.ndarray, float)
    thr: np.ndarray = LavaPyType(np.ndarray, float)
    active: np.ndarray = LavaPyType(np.ndarray, float)
    pending: np.ndarray = LavaPyType(np.ndarray, float)
    decay: np.ndarray = LavaPyType(np.ndarray, float)
    clock: np.ndarray = LavaPyType(np.ndarray, int)
    z_off: np.ndarray = LavaPyType(np.ndarray, float)
    steps_per_tick: np.ndarray = LavaPyType(np.ndarray, int)

    def run_spk(self) -> None:
        a = self.a_in.recv()
        counts = self.cnt_in.recv()
        spt = int(self.steps_per_tick[0])
        step = self.time_step - 1
        phase = step % spt
        out = np.zeros_like(self.z)
        rst = np.zeros_like(self.active)
        if phase % 2 == 0:
            self.xhat[:] = self.xhat + a  # the belief units' spikes of the last phase
            if phase == 0:
                rst = self._silence()
                self._inject(counts, out)
                self.z[:] = self.z * self.decay[0]
            self._sweep(out)
            if phase == 0:
                self._mark_silent(step // spt)
        self.s_out.send(out)
        self.reset_out.send(rst)
        if self.state_out.csp_ports:  # an Extractor reads the state back
            self.state_out.send(np.concatenate([self.z, self.xhat, self.eps, self.active,
                                                self.pending]))

    def _blocks(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(self.active.shape[0], -1)

    def _silence(self) -> np.ndarray:
        """Reset the columns marked at the last tick (numba's ``_silence``): no spike is sent,
        the belief units get the flag on ``reset_out``."""
        rst = self.pending.copy()
        if rst.any():
            m = rst > 0
            for a in (self.z, self.xhat, self.eps):
                self._blocks(a)[m] = 0.0
            self.active[m] = 0.0
            self.pending[:] = 0.0
        return rst

    def _inject(self, c: np.ndarray, out: np.ndarray) -> None:
        """The tick's events c (per channel), one at a time per channel: z += 1, then only
        that channel is checked (numba's ``_event`` with the event at its tick's start)."""
        if not c.any():
            return
        self.active[self._blocks(c).max(axis=1) > 0] = 1.0
        for i in range(int(c.max())):
            idx = np.flatnonzero(c > i)
            self.z[idx] = self.z[idx] + 1.0
            e = self.pi[idx] * (self.z[idx] - self.xhat[idx])
            delta = e - self.eps[idx]
            fire = np.abs(delta) > self.thr[idx]
            self.eps[idx[fire]] = e[fire]
            out[idx[fire]] += delta[fire]

    def _sweep(self, out: np.ndarray) -> None:
        """ε = π (z − x̂); a graded spike Δε̂ where it moved by more than θ_e g √π."""
        e = self.pi * (self.z - self.xhat)
        delta = e - self.eps
        fire = np.abs(delta) > self.thr
        self.eps[fire] = e[fire]
        out[fire] += delta[fire]

    def _mark_silent(self, tick: int) -> None:
        """At learning epochs and horizon ticks, an active column whose traces all fell below
        z_off is silenced at the end of the tick (applied at the next phase 0)."""
        t_first, tick_us, learn_us, horizon_us = (int(v) for v in self.clock)
        tt = t_first + tick * tick_us
        if tt % learn_us and tt % horizon_us:
            return
        zmax = self._blocks(self.z).max(axis=1)
        self.pending[:] = np.where((self.active > 0) & (zmax < self.z_off[0]), 1.0, 0.0)


@implements(proc=BeliefUnits, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyBeliefUnitsFloat(PyLoihiProcessModel):
    """Belief units in float64: one relaxation step at every odd phase."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    reset_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    state_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    u: np.ndarray = LavaPyType(np.ndarray, float)
    mu: np.ndarray = LavaPyType(np.ndarray, float)
    mus: np.ndarray = LavaPyType(np.ndarray, float)
    h: np.ndarray = LavaPyType(np.ndarray, float)
    h_wake: np.ndarray = LavaPyType(np.ndarray, float)
    consts: np.ndarray = LavaPyType(np.ndarray, float)
    steps_per_tick: np.ndarray = LavaPyType(np.ndarray, int)

    def run_spk(self) -> None:
        a = self.a_in.recv()
        rst = self.reset_in.recv()
        phase = (self.time_step - 1) % int(self.steps_per_tick[0])
        if phase == 0 and rst.any():
            m = np.repeat(rst > 0, self.u.shape[0] // rst.shape[0])
            for v in (self.u, self.mu, self.mus):
                v[m] = 0.0
            self.h[m] = self.h_wake[m]
        out = np.zeros_like(self.mu)
        if phase % 2 == 1:
            kappa, pi_prior, sparsity, theta_mu = self.consts
            self.u[:] = self.u + a
            g = self.u - pi_prior * self.mu - sparsity
            new = np.maximum(self.mu + kappa * g / self.h, 0.0)
            delta = new - self.mus
            fire = np.abs(delta) > theta_mu
            self.mu[:] = new
            self.mus[fire] = new[fire]
            out[fire] = delta[fire]
        self.s_out.send(out)
        if self.state_out.csp_ports:  # an Extractor reads the state back
            self.state_out.send(np.concatenate([self.u, self.mu, self.mus, self.h, out]))
