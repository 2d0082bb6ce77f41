"""The fixed_pt side of ``LavaLayer1`` (``arithmetic = "loihi"``): build the integer
processes from the quantised parameters and read them back into a numba State.

Kept apart from ``layer1.py``, which only selects these when the spec asks for the integer
twin. Importing this module imports Lava (call ``augury.lava.require_lava()`` first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from augury.lava.convert import LoihiLayer1, from_loihi
from augury.lava.procs.fixed import BeliefUnitsFixed, ErrorUnitsFixed
from augury.model import loihi_int
from augury.model.spec import ModelSpec
from augury.model.state import State


def make_units(spec: ModelSpec, ll: LoihiLayer1) -> tuple[ErrorUnitsFixed, BeliefUnitsFixed]:
    """The integer error and belief units at the quantised state ``ll.state``."""
    qs, qp, qc = ll.state, ll.params, ll.consts
    err = ErrorUnitsFixed(z=qs.z.ravel(), xhat=qs.xhat.ravel(), eps=qs.eps.ravel(),
                          pi_m=qp.pi_m.ravel(), pi_s=qp.pi_s.ravel(), thr=qp.thr.ravel(),
                          active=qs.active.astype(np.int64), decay_keep=qc.decay_keep,
                          z_off=qc.z_off, clock=(ll.t_first_us, spec.tick_us, spec.learn_us,
                                                 spec.horizon_us),
                          steps_per_tick=ll.steps_per_tick)
    bel = BeliefUnitsFixed(u=qs.u.ravel(), mu=qs.mu.ravel(), mus=qs.mus.ravel(),
                           kh_m=qs.kh_m.ravel(), kh_s=qs.kh_s.ravel(),
                           kh_wake_m=qp.kh_wake_m.ravel(), kh_wake_s=qp.kh_wake_s.ravel(),
                           n_cols=spec.n1, prior_m=qc.prior_m, prior_s=qc.prior_s,
                           lam=qc.lam, thmu=qc.thmu, steps_per_tick=ll.steps_per_tick)
    return err, bel


def read_qstate(spec: ModelSpec, ll: LoihiLayer1, get: Callable[[Any], np.ndarray],
                procs: dict[str, Any]) -> loihi_int.QState:
    """The integer layer-1 state at the end of the last tick run, as ``loihi_int.tick``
    leaves it: x̂ includes the last relaxation's sum still in the Dense buffer
    (saturated), and the columns marked for silencing are reset."""
    e, b = procs["err"], procs["bel"]
    n1 = spec.n1
    i64 = np.int64
    z = np.asarray(get(e.z), i64).reshape(n1, -1)
    xhat = np.clip(np.asarray(get(e.xhat), i64) + np.asarray(get(procs["w_down"].a_buff), i64),
                   loihi_int.Q_MIN, loihi_int.Q_MAX).reshape(n1, -1)
    eps = np.asarray(get(e.eps), i64).reshape(n1, -1)
    u, mu, mus, kh_m, kh_s = (np.asarray(get(v), i64).reshape(n1, -1)
                              for v in (b.u, b.mu, b.mus, b.kh_m, b.kh_s))
    pend = np.asarray(get(e.pending)) > 0
    active = (np.asarray(get(e.active)) > 0) & ~pend
    for a in (z, xhat, eps, u, mu, mus):
        a[pend] = 0
    kh_m[pend] = ll.params.kh_wake_m[pend]
    kh_s[pend] = ll.params.kh_wake_s[pend]
    return loihi_int.QState(z=z, xhat=xhat, eps=eps, u=u, mu=mu, mus=mus, kh_m=kh_m,
                            kh_s=kh_s, active=active)


def to_numba_state(spec: ModelSpec, template: State, ll: LoihiLayer1, qs: loihi_int.QState,
                   woke: np.ndarray, h: np.ndarray, h_wake: np.ndarray,
                   t_now_us: int) -> State:
    """A numba State from ``read_qstate``'s result: columns reset at least once carry the
    waking curvature (float, host), the others the one the network was built with."""
    n1, k1 = spec.n1, spec.k1
    hh = np.where(np.asarray(woke).reshape(n1, 1) > 0, h_wake.reshape(n1, k1),
                  h.reshape(n1, k1))
    return from_loihi(spec, template, qs, hh, h_wake, t_now_us)
