"""Geometry and hyper-parameters of the predictive-coding network (frozen, validated).

Geometry (all integer):

* layer 0: the sensor (width × height px) pooled by ``pool`` into ``Hp × Wp`` cells
  (Hp = ceil(height / pool), Wp = ceil(width / pool)), two polarity channels per cell;
* layer 1: columns of ``column × column`` pooled cells (non-overlapping tiles), grid
  ``rows1 × cols1``; each column has D1 = column² · 2 input channels and ``k1`` belief units;
* layer 2 (``layers == 2``): columns covering 2 × 2 layer-1 columns, grid ``rows2 × cols2``;
  D2 = 4 · k1 inputs (the children's beliefs) and ``k2`` belief units.

Time constants are integer µs; the clocked work (precision, weight and temporal learning,
sweeps of active columns) happens at absolute stream times that are multiples of ``tick_us``
(and of ``horizon_us`` for the temporal predictor), so batch boundaries never matter.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

SHARED_FITS = ("poisson", "squares")
"""How the shared linear forecaster is fitted (``ModelSpec.shared_fit``): least squares, or
its Poisson maximum-likelihood fit by iteratively reweighted least squares (weights
1 / (w·x + c) after a least-squares start; docs/model.md §1)."""


@dataclass(frozen=True)
class ModelSpec:
    """All hyper-parameters of the network; see docs/model.md for every symbol.

    Units: times in µs, traces in events (a trace jumps by 1 per event and decays with
    ``tau_us``), rates in events/s. Precisions π are inverse trace variances (events⁻²).
    """

    width: int
    height: int
    pool: int = 8  # 0: chosen from the sensor size (``default_pool``), as the daemon does
    tau_us: int = 20_000  # trace time constant τ
    column: int = 4  # pooled cells per column side
    k1: int = 8
    k2: int = 8
    layers: int = 1  # 1 or 2 belief layers above the sensor
    horizon_us: int = 10_000  # temporal prediction horizon Δ
    tick_us: int = 1_000  # clock of the sparse sweeps and relaxation (divides horizon_us)
    learn_us: int = 5_000  # learning epoch: weights and precisions update at multiples of it
    relax_steps: int = 2  # belief relaxation iterations per tick (the belief units' clock)
    settle: float = 0.1  # a column whose beliefs moved less than this in a step rests
    clocked_input: bool = False  # each event takes its tick's start time (floor(t/tick)·tick)
    curv_mix: float = 0.25  # γ: share of the other beliefs' overlap in each step's curvature
    homeo_rate: float = 0.0  # target error spikes per column per tick (0: no homeostasis)
    homeo_eta: float = 0.2  # homeostatic gain rate per learning epoch
    theta_e: float = 0.1  # error-unit sigma-delta threshold, in error standard deviations
    theta_mu: float = 0.02  # sigma-delta threshold of belief units
    kappa: float = 1.0  # belief step (fraction of a majorized Newton step), 0 < κ ≤ 1
    sparsity: float = 0.01  # L1 prior λ on beliefs (beliefs are non-negative)
    pi_prior: float = 1.0  # Gaussian prior precision of top-layer beliefs
    q: float = 1e-5  # Kalman drift of every weight's variance per tick
    s2_init: float = 1.0  # initial weight variance s²
    alpha: float = 0.01  # precision learning rate per tick (running error variance)
    v0: float = 0.01  # variance floor in π = 1/(v + v0)
    pi_min: float = 0.01
    pi_max: float = 100.0
    w_max: float = 4.0  # soft bound: weights live in [0, w_max]
    w_init: float = 0.1  # initial weights ~ U(0, w_init)
    plain_rate: float = 0.0  # > 0: W1, W2 learn at this plain rate (Bayesian synapse off)
    w_soft_bounds: bool = True  # W1, W2 updates scaled by the distance to their bound
    w_norm: float = 0.0  # > 0: every layer-1 atom is kept at this Euclidean norm (0: off)
    a_q: float = 1e-5  # Kalman drift of the temporal weights A
    a_s2_init: float = 0.01  # initial variance of the temporal weights (A starts at I)
    z_off: float = 0.02  # a column whose traces all fall below this goes silent (reset)
    baseline_beta: float = 0.01  # surprise baseline EMA rate per horizon tick
    seed: int = 0
    arithmetic: str = "float"  # "loihi": layer-1 inference in Loihi's integer semantics
    fixed_point: bool = False  # deprecated for Loihi: not its arithmetic (docs/model.md §6)
    frac_bits: int = 20  # Q-format fraction bits when fixed_point (Q11.20 fits int32)
    stochastic_rounding: bool = False  # fixed_point: round learned weights stochastically
    per_column_weights: bool = False
    forecast_hier: bool = True  # forecast units use the hierarchy's forecast (g learns)
    forecast_lateral: bool = True  # forecast units use their neighbours' traces (R learns)
    mix_taus_us: tuple[int, ...] = (200_000, 1_000_000, 10_000_000)  # averaging experts τ_i
    mix_memory_us: int = 2_000_000  # time constant of the experts' discounted log-evidence
    mix_share: float = 1.0  # weight of the sensor-wide evidence in each channel's mixture
    mix_shared: bool = True  # the shared linear forecaster is one of the rate experts
    shared_fit: str = "poisson"  # its fit: "poisson" (reweighted, 1/(w·x + c)) or "squares"
    shared_floor: float = 0.3  # c: count floor of those weights (events per cell, window)

    def __post_init__(self) -> None:
        if isinstance(self.mix_taus_us, list):
            object.__setattr__(self, "mix_taus_us", tuple(self.mix_taus_us))
        if self.pool == 0:
            object.__setattr__(self, "pool", default_pool(self.width, self.height))
        _check_int(self, "width", 1, 65535)
        _check_int(self, "height", 1, 65535)
        _check_int(self, "pool", 1, 256)
        _check_int(self, "mix_memory_us", 1, 10**12)
        if not isinstance(self.mix_taus_us, tuple) or len(self.mix_taus_us) > 8 or any(
                isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10**9
                for v in self.mix_taus_us):
            raise ValueError(f"ModelSpec.mix_taus_us must be up to 8 ints in 1..10**9 (µs), "
                             f"got {self.mix_taus_us!r}")
        _check_int(self, "tau_us", 1, 10**9)
        _check_int(self, "column", 1, 64)
        _check_int(self, "k1", 1, 256)
        _check_int(self, "k2", 1, 256)
        _check_int(self, "layers", 1, 2)
        _check_int(self, "horizon_us", 1, 10**9)
        _check_int(self, "tick_us", 1, 10**9)
        _check_int(self, "seed", 0, 2**63 - 1)
        _check_int(self, "relax_steps", 1, 64)
        _check_int(self, "frac_bits", 4, 40)
        _check_int(self, "learn_us", 1, 10**9)
        if self.learn_us % self.tick_us:
            raise ValueError(f"ModelSpec.learn_us={self.learn_us} must be a multiple of "
                             f"tick_us={self.tick_us}")
        if min(self.learn_us, self.horizon_us) > 8 * self.tau_us:
            # traces anchored at a column's last poll (at most this long ago) grow ≤ e^8
            raise ValueError(f"ModelSpec: min(learn_us={self.learn_us}, horizon_us="
                             f"{self.horizon_us}) must be at most 8 × tau_us={self.tau_us}")
        if self.horizon_us % self.tick_us:
            raise ValueError(f"ModelSpec.horizon_us={self.horizon_us} must be a multiple of "
                             f"tick_us={self.tick_us}")
        for name in ("theta_e", "theta_mu", "sparsity", "q", "a_q", "z_off", "w_init", "w_norm",
                     "plain_rate",
                     "settle", "homeo_rate", "homeo_eta"):
            _check_float(self, name, 0.0, math.inf, lo_open=False)
        _check_float(self, "curv_mix", 0.0, 1.0, lo_open=False)
        _check_float(self, "mix_share", 0.0, math.inf, lo_open=False)
        _check_float(self, "shared_floor", 0.0, math.inf, lo_open=True)
        for name in ("kappa", "alpha", "baseline_beta"):
            _check_float(self, name, 0.0, 1.0, lo_open=True)
        for name in ("pi_prior", "s2_init", "a_s2_init", "v0", "pi_min", "pi_max", "w_max"):
            _check_float(self, name, 0.0, math.inf, lo_open=True)
        if self.pi_min > self.pi_max:
            raise ValueError(f"ModelSpec.pi_min={self.pi_min} exceeds pi_max={self.pi_max}")
        if self.w_init > self.w_max:
            raise ValueError(f"ModelSpec.w_init={self.w_init} exceeds w_max={self.w_max}")
        for name in ("fixed_point", "per_column_weights", "stochastic_rounding", "w_soft_bounds",
                     "clocked_input", "forecast_hier", "forecast_lateral", "mix_shared"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelSpec.{name} must be a bool, got "
                                 f"{getattr(self, name)!r}")
        if self.shared_fit not in SHARED_FITS:
            raise ValueError(f"ModelSpec.shared_fit must be one of {SHARED_FITS}, got "
                             f"{self.shared_fit!r}")

        self._check_arithmetic()
        if self.fixed_point:
            warnings.warn(FIXED_POINT_DEPRECATED, FutureWarning, stacklevel=3)

    def _check_arithmetic(self) -> None:
        """``arithmetic``: "float" or "loihi"; the integer twin covers layer-1 inference as
        the Lava backend runs it, so it needs one layer, ``clocked_input``, ``settle = 0``
        and no ``fixed_point`` (raises ValueError naming what is off)."""
        if self.arithmetic not in ARITHMETICS:
            raise ValueError(f"ModelSpec.arithmetic must be one of {ARITHMETICS}, got "
                             f"{self.arithmetic!r}")
        if self.arithmetic != "loihi":
            return
        bad = lava_layer1_gaps(self)
        if bad:
            raise ValueError("ModelSpec.arithmetic='loihi' (the integer twin of layer-1 "
                             "inference) needs " + "; ".join(bad))

    # -- derived geometry -------------------------------------------------------------------
    @property
    def pooled_shape(self) -> tuple[int, int]:
        """(Hp, Wp): pooled grid size in cells."""
        return (-(-self.height // self.pool), -(-self.width // self.pool))

    @property
    def grid1(self) -> tuple[int, int]:
        """(rows1, cols1): layer-1 column grid."""
        hp, wp = self.pooled_shape
        return (-(-hp // self.column), -(-wp // self.column))

    @property
    def grid2(self) -> tuple[int, int]:
        """(rows2, cols2): layer-2 column grid (each covers 2 × 2 layer-1 columns)."""
        r1, c1 = self.grid1
        return (-(-r1 // 2), -(-c1 // 2))

    @property
    def d1(self) -> int:
        """Input channels per layer-1 column: column² cells × 2 polarities."""
        return self.column * self.column * 2

    @property
    def d2(self) -> int:
        """Inputs per layer-2 column: 4 children × k1 beliefs."""
        return 4 * self.k1

    @property
    def n1(self) -> int:
        r, c = self.grid1
        return r * c

    @property
    def n2(self) -> int:
        r, c = self.grid2
        return r * c

    @property
    def q_scale(self) -> float:
        """2**frac_bits when fixed_point (values are rounded to multiples of 1/scale), else 0."""
        return float(2**self.frac_bits) if self.fixed_point else 0.0

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """Build from a plain dict (config file); an unknown key raises ValueError naming it."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown ModelSpec key(s): {', '.join(unknown)}; "
                             f"known: {', '.join(known)}")
        kwargs: dict[str, Any] = {}
        for k, v in d.items():
            default = known[k].default
            if isinstance(default, bool) or k in ("width", "height", "mix_taus_us"):
                kwargs[k] = v
            elif isinstance(default, int) and isinstance(v, float) and v.is_integer():
                kwargs[k] = int(v)
            elif isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
                kwargs[k] = float(v)
            else:
                kwargs[k] = v
        missing = [n for n in ("width", "height") if n not in kwargs]
        if missing:
            raise ValueError(f"ModelSpec needs key(s): {', '.join(missing)}")
        return cls(**kwargs)


def default_pool(width: int, height: int) -> int:
    """Pooling for a sensor of width × height px (``pool = 0`` in a spec or config asks for it).

    Rule: pool = 2^k, the smallest with max(width, height) / pool ≤ ``POOL_CELLS`` (160):
    1280×720 → 8, 640×480 → 4, DAVIS346 → 4, DVXplorer 320×240 → 2, DAVIS240 → 2,
    N-MNIST 34×34 → 1. Finer cells let the forecast units use motion (a cell's neighbours'
    traces); see docs/results.md for the measurement behind the threshold.
    """
    side = max(int(width), int(height), 1)
    pool = 1
    while -(-side // pool) > POOL_CELLS and pool < 256:
        pool *= 2
    return pool


ARITHMETICS = ("float", "loihi")

FIXED_POINT_DEPRECATED = (
    "ModelSpec.fixed_point is deprecated as a model of Loihi: it rounds half up after every "
    "update, which Lava's fixed_pt models cannot match (LAVA.md: 0.24 apart). Use "
    "arithmetic='loihi', the integer twin of layer-1 inference that is bit-exact with them "
    "(docs/lava.md). fixed_point stays only as the whole-network precision study of "
    "docs/model.md §6.")
"""Warning given when a spec sets ``fixed_point``."""
"""Values of ``ModelSpec.arithmetic``."""

POOL_CELLS = 160
"""Largest number of pooled cells along the sensor's longer side chosen by ``default_pool``."""


def _check_int(spec: ModelSpec, name: str, lo: int, hi: int) -> None:
    v = getattr(spec, name)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"ModelSpec.{name} must be an int, got {v!r}")
    if not lo <= v <= hi:
        raise ValueError(f"ModelSpec.{name}={v} is outside {lo}..{hi}")


def _check_float(spec: ModelSpec, name: str, lo: float, hi: float, *, lo_open: bool) -> None:
    v = getattr(spec, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"ModelSpec.{name} must be a finite number, got {v!r}")
    if (v <= lo if lo_open else v < lo) or v > hi:
        bracket = "(" if lo_open else "["
        raise ValueError(f"ModelSpec.{name}={v} is outside {bracket}{lo}, {hi}]")


def lava_layer1_gaps(spec: ModelSpec) -> list[str]:
    """What in ``spec`` is outside layer-1 inference as the Lava backend (and its integer
    twin) runs it: one layer, ``clocked_input``, ``settle = 0``, no ``fixed_point``; one
    message per setting, naming it and what it needs (empty when all hold)."""
    bad = []
    if spec.layers != 1:
        bad.append(f"layers={spec.layers} (needs 1)")
    if not spec.clocked_input:
        bad.append("clocked_input=False (needs True: events are counted per tick)")
    if spec.settle != 0.0:
        bad.append(f"settle={spec.settle} (needs 0: every active column relaxes every tick)")
    if spec.fixed_point:
        bad.append("fixed_point=True (not Loihi's arithmetic: arithmetic='loihi', the "
                   "integer twin that the fixed_pt models match, replaces it)")
    return bad
