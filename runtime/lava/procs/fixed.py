"""Integer (``fixed_pt``) layer-1 error and belief units: Processes and their CPU models.

Same schedule as the float units (``process.py``), integer semantics of the numba twin
(``augury.model.loihi_int``: its docstring has the Q formats, and its constants are used
here): z Q.12, x̂ Q.18, ε̂ Q.10, u Q.16, μ and μ̂ Q.12; gains (x·m) >> s with an 8-bit
mantissa m and a floor shift; states and messages saturate at 24 bits; x̂ and u take the
exact synaptic sum of a step from Lava's ``Dense``/``Sparse`` fixed_pt models (8-bit
weights, ``weight_exp = 0``: no shift after the sum). The arithmetic is written here from
the semantics, not shared with the twin's code, so that the bit-exact test compares two
implementations.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from augury.model.loihi_int import DECAY_BITS, Q_MAX, Q_MIN, XHAT_FRAC, Z_FRAC

_HI = Q_MAX
_LO = Q_MIN
_Z_TO_X = XHAT_FRAC - Z_FRAC  # trace (Q.12) → the prediction's format (Q.18)
_ONE_EVENT = 1 << Z_FRAC


def _mul_shift(x: np.ndarray, m: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(x·m) >> s (arithmetic, floor), (x·m) << −s where s < 0; int64."""
    p = x.astype(np.int64) * m.astype(np.int64)
    return np.where(s >= 0, p >> np.maximum(s, 0), p << np.maximum(-s, 0))


class ErrorUnitsFixed(AbstractProcess):
    """Integer layer-1 error units (n = n_cols · D1, flat column-major blocks).

    Vars (int64, shape (n,) unless said): z (Q.12), xhat (Q.18), eps (Q.10); pi_m, pi_s
    (π as a gain from Q.18 to Q.10); thr (θ_e g √π, Q.10); active, pending (n_cols,);
    consts = [4096 − δ (decay), z_off (Q.12)]; clock = [t_first_us, tick_us, learn_us,
    horizon_us]; steps_per_tick. Ports as ``ErrorUnits``: a_in (x̂ increments), cnt_in
    (events per channel, float, from an Injector), s_out (Δε̂), reset_out (n_cols,).
    """

    def __init__(self, *, z: np.ndarray, xhat: np.ndarray, eps: np.ndarray,
                 pi_m: np.ndarray, pi_s: np.ndarray, thr: np.ndarray, active: np.ndarray,
                 decay_keep: int, z_off: int, clock: tuple[int, int, int, int],
                 steps_per_tick: int, name: str = "ErrorUnitsFixed") -> None:
        super().__init__(name=name)
        n, cols = z.shape[0], active.shape[0]
        self.a_in = InPort(shape=(n,))
        self.cnt_in = InPort(shape=(n,))
        self.s_out = OutPort(shape=(n,))
        self.reset_out = OutPort(shape=(cols,))
        for k, v in (("z", z), ("xhat", xhat), ("eps", eps), ("pi_m", pi_m), ("pi_s", pi_s),
                     ("thr", thr)):
            setattr(self, k, Var(shape=(n,), init=np.asarray(v, np.int64)))
        self.active = Var(shape=(cols,), init=np.asarray(active, np.int64))
        self.pending = Var(shape=(cols,), init=np.zeros(cols, np.int64))
        self.consts = Var(shape=(2,), init=np.array([decay_keep, z_off], np.int64))
        self.clock = Var(shape=(4,), init=np.array(clock, np.int64))
        self.steps_per_tick = Var(shape=(1,), init=np.array([steps_per_tick]))


class BeliefUnitsFixed(AbstractProcess):
    """Integer layer-1 belief units (m = n_cols · K1).

    Vars (int64, shape (m,)): u (Q.16), mu, mus (Q.12); kh_m, kh_s (κ/h as a gain from
    Q.16 to Q.12) and kh_wake_m, kh_wake_s (a waking column's); woke (n_cols,) 1 once a
    column was reset; consts = [prior_m, prior_s, λ (Q.16), θ_μ (Q.12)]; steps_per_tick.
    """

    def __init__(self, *, u: np.ndarray, mu: np.ndarray, mus: np.ndarray, kh_m: np.ndarray,
                 kh_s: np.ndarray, kh_wake_m: np.ndarray, kh_wake_s: np.ndarray, n_cols: int,
                 prior_m: int, prior_s: int, lam: int, thmu: int, steps_per_tick: int,
                 name: str = "BeliefUnitsFixed") -> None:
        super().__init__(name=name)
        n = u.shape[0]
        self.a_in = InPort(shape=(n,))
        self.reset_in = InPort(shape=(n_cols,))
        self.s_out = OutPort(shape=(n,))
        for k, v in (("u", u), ("mu", mu), ("mus", mus), ("kh_m", kh_m), ("kh_s", kh_s),
                     ("kh_wake_m", kh_wake_m), ("kh_wake_s", kh_wake_s)):
            setattr(self, k, Var(shape=(n,), init=np.asarray(v, np.int64)))
        self.woke = Var(shape=(n_cols,), init=np.zeros(n_cols, np.int64))
        self.consts = Var(shape=(4,), init=np.array([prior_m, prior_s, lam, thmu], np.int64))
        self.steps_per_tick = Var(shape=(1,), init=np.array([steps_per_tick]))


@implements(proc=ErrorUnitsFixed, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyErrorUnitsFixed(PyLoihiProcessModel):
    """Phase 0: x̂ += input (saturated), reset marked columns, the tick's events one at a
    time per channel (z += 1 event, that channel checked), decay, sweep, mark columns to
    silence at epochs; even phases r ≥ 1: x̂ += input, sweep."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    cnt_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    reset_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    z: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    xhat: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    eps: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    pi_m: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=8)
    pi_s: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=8)
    thr: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    active: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=1)
    pending: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=1)
    consts: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    clock: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=32)
    steps_per_tick: np.ndarray = LavaPyType(np.ndarray, int)

    def run_spk(self) -> None:
        a = self.a_in.recv().astype(np.int64)
        counts = np.rint(self.cnt_in.recv()).astype(np.int64)
        spt = int(self.steps_per_tick[0])
        step = self.time_step - 1
        phase = step % spt
        out = np.zeros(self.z.shape, np.int64)
        rst = np.zeros(self.active.shape, np.int64)
        if phase % 2 == 0:
            self.xhat[:] = np.clip(self.xhat + a, _LO, _HI)
            if phase == 0:
                rst = self._silence()
                self._inject(counts, out)
                self.z[:] = (self.z * self.consts[0]) >> DECAY_BITS
            self._check(np.ones(self.z.shape, bool), out)
            if phase == 0:
                self._mark_silent(step // spt)
        self.s_out.send(out)
        self.reset_out.send(rst)

    def _cols(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(self.active.shape[0], -1)

    def _silence(self) -> np.ndarray:
        rst = self.pending.copy()
        m = rst > 0
        if m.any():
            for v in (self.z, self.xhat, self.eps):
                self._cols(v)[m] = 0
            self.active[m] = 0
            self.pending[:] = 0
        return rst

    def _inject(self, c: np.ndarray, out: np.ndarray) -> None:
        if not c.any():
            return
        self.active[self._cols(c).max(axis=1) > 0] = 1
        for i in range(int(c.max())):
            hit = c > i
            self.z[hit] = np.minimum(self.z[hit] + _ONE_EVENT, _HI)
            self._check(hit, out)

    def _check(self, sel: np.ndarray, out: np.ndarray) -> None:
        """ε = gain((z ≪ 6) − x̂, π) (saturated); where selected and |ε − ε̂| > θ: the
        message Δε̂ (saturated) is added to out and to ε̂."""
        e = np.clip(_mul_shift((self.z << _Z_TO_X) - self.xhat, self.pi_m, self.pi_s),
                    _LO, _HI)
        delta = e - self.eps
        fire = sel & (np.abs(delta) > self.thr)
        msg = np.clip(delta[fire], _LO, _HI)
        self.eps[fire] += msg
        out[fire] += msg

    def _mark_silent(self, tick: int) -> None:
        t_first, tick_us, learn_us, horizon_us = (int(v) for v in self.clock)
        tt = t_first + tick * tick_us
        if tt % learn_us and tt % horizon_us:
            return
        zmax = self._cols(self.z).max(axis=1)
        self.pending[:] = ((self.active > 0) & (zmax < self.consts[1])).astype(np.int64)


@implements(proc=BeliefUnitsFixed, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyBeliefUnitsFixed(PyLoihiProcessModel):
    """Phase 0: reset flagged columns (u = μ = μ̂ = 0, κ/h ← the waking one); odd phases:
    u += input (saturated), μ ← max(0, μ + gain(u − gain(μ, π_prior) − λ, κ/h)), a
    graded spike Δμ̂ where |μ − μ̂| > θ_μ."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    reset_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=1)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    u: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    mu: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    mus: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    kh_m: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=8)
    kh_s: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=8)
    kh_wake_m: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=8)
    kh_wake_s: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=8)
    woke: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=1)
    consts: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=24)
    steps_per_tick: np.ndarray = LavaPyType(np.ndarray, int)

    def run_spk(self) -> None:
        a = self.a_in.recv().astype(np.int64)
        rst = self.reset_in.recv()
        phase = (self.time_step - 1) % int(self.steps_per_tick[0])
        if phase == 0 and rst.any():
            self.woke[rst > 0] = 1
            m = np.repeat(rst > 0, self.u.shape[0] // rst.shape[0])
            for v in (self.u, self.mu, self.mus):
                v[m] = 0
            self.kh_m[m] = self.kh_wake_m[m]
            self.kh_s[m] = self.kh_wake_s[m]
        out = np.zeros(self.mu.shape, np.int64)
        if phase % 2 == 1:
            prior_m, prior_s, lam, thmu = (int(v) for v in self.consts)
            self.u[:] = np.clip(self.u + a, _LO, _HI)
            pm = np.full_like(self.mu, prior_m)
            ps = np.full_like(self.mu, prior_s)
            g = self.u - _mul_shift(self.mu, pm, ps) - lam
            new = np.maximum(np.clip(self.mu + _mul_shift(g, self.kh_m, self.kh_s), _LO, _HI),
                             0)
            delta = new - self.mus
            fire = np.abs(delta) > thmu
            self.mu[:] = new
            self.mus[fire] = new[fire]
            out[fire] = delta[fire]
        self.s_out.send(out)
