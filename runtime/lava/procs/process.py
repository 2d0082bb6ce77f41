"""Lava Processes of Augury's layer 1: error units and belief units (interfaces only).

This package holds the Process and ProcessModel classes and nothing else: Lava's compiler
executes every sibling ``.py`` file of a custom Process's module when it looks for models,
so any other module placed here would run at every compile.

Schedule (``steps_per_tick`` = 2R Lava steps per 1 tick of ``tick_us``, R = relax_steps):
phase 0 error units take the tick's input counts, decay the traces and sweep; phase 2r + 1
belief units take one relaxation step; phase 2r (r ≥ 1) error units re-sweep with the
updated prediction. Every Dense hop delays by one Lava step, which is what the phases are for.
"""

from __future__ import annotations

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var


class ErrorUnits(AbstractProcess):
    """Layer-1 error units of ``n_cols`` columns × ``d`` channels (flat, column-major blocks).

    Per channel: trace z (events), prediction x̂ (events), sent error ε̂ = π(z − x̂) (events⁻¹),
    precision π (events⁻²), threshold θ_e g √π. Ports: ``a_in`` (x̂ increments W Δμ̂, shape
    (n,)), ``cnt_in`` (input events per channel, read at phase 0 of each tick, shape (n,);
    every step delivers one message, the other phases' are ignored), ``s_out`` (graded
    error spikes Δε̂, shape (n,)), ``reset_out`` (1.0 for a column silenced at the end of
    the previous tick, shape (n_cols,)), ``state_out`` (every step: [z, x̂, ε̂, active,
    pending] after the step, shape (3n + 2·n_cols,), for an Extractor; models send it only
    when it is connected).

    Args (all arrays float64 of shape (n,) unless said): z, xhat, eps, pi, thr; ``active``,
    ``pending`` (n_cols,) column flags; ``decay`` = exp(−tick_us/τ); ``t_first_us`` the time
    of the first tick run; ``tick_us``, ``learn_us``, ``horizon_us`` (µs); ``z_off``
    (events); ``steps_per_tick``.
    """

    def __init__(self, *, z: np.ndarray, xhat: np.ndarray, eps: np.ndarray, pi: np.ndarray,
                 thr: np.ndarray, active: np.ndarray, pending: np.ndarray,
                 decay: float, t_first_us: int, tick_us: int, learn_us: int, horizon_us: int,
                 z_off: float, steps_per_tick: int, name: str = "ErrorUnits") -> None:
        super().__init__(name=name)
        n = z.shape[0]
        cols = active.shape[0]
        self.a_in = InPort(shape=(n,))
        self.cnt_in = InPort(shape=(n,))
        self.s_out = OutPort(shape=(n,))
        self.reset_out = OutPort(shape=(cols,))
        self.state_out = OutPort(shape=(3 * n + 2 * cols,))
        self.z = Var(shape=(n,), init=z)
        self.xhat = Var(shape=(n,), init=xhat)
        self.eps = Var(shape=(n,), init=eps)
        self.pi = Var(shape=(n,), init=pi)
        self.thr = Var(shape=(n,), init=thr)
        self.active = Var(shape=(cols,), init=active)
        self.pending = Var(shape=(cols,), init=pending)
        self.decay = Var(shape=(1,), init=np.array([decay]))
        self.clock = Var(shape=(4,), init=np.array([t_first_us, tick_us, learn_us, horizon_us]))
        self.z_off = Var(shape=(1,), init=np.array([z_off]))
        self.steps_per_tick = Var(shape=(1,), init=np.array([steps_per_tick]))


class BeliefUnits(AbstractProcess):
    """Layer-1 belief units of ``n_cols`` columns × ``k`` units (flat, column-major blocks).

    Per unit: drive u = Wᵀε̂ (accumulated from graded error spikes), belief μ ≥ 0, sent
    belief μ̂, curvature h; ``h_wake`` is the curvature a column gets when it wakes after a
    silence. One relaxation step: μ ← max(0, μ + κ (u − π_prior μ − λ)/h), then a graded
    spike Δμ̂ = μ − μ̂ where |μ − μ̂| > θ_μ. Ports: ``a_in`` (u increments, shape (n,)),
    ``reset_in`` (column silence flags, shape (n_cols,)), ``s_out`` (Δμ̂, shape (n,)),
    ``state_out`` (every step: [u, μ, μ̂, h, the Δμ̂ just sent] after the step, shape (5n,),
    for an Extractor; sent only when connected).
    """

    def __init__(self, *, u: np.ndarray, mu: np.ndarray, mus: np.ndarray, h: np.ndarray,
                 h_wake: np.ndarray, n_cols: int, kappa: float, pi_prior: float,
                 sparsity: float, theta_mu: float, steps_per_tick: int,
                 name: str = "BeliefUnits") -> None:
        super().__init__(name=name)
        n = u.shape[0]
        self.a_in = InPort(shape=(n,))
        self.reset_in = InPort(shape=(n_cols,))
        self.s_out = OutPort(shape=(n,))
        self.state_out = OutPort(shape=(5 * n,))
        self.u = Var(shape=(n,), init=u)
        self.mu = Var(shape=(n,), init=mu)
        self.mus = Var(shape=(n,), init=mus)
        self.h = Var(shape=(n,), init=h)
        self.h_wake = Var(shape=(n,), init=h_wake)
        self.consts = Var(shape=(4,), init=np.array([kappa, pi_prior, sparsity, theta_mu]))
        self.steps_per_tick = Var(shape=(1,), init=np.array([steps_per_tick]))

