"""Can the belief hierarchy carry forecast skill? Oracle, fitted and online-learned transitions.

Usage::

    python -m tools.experiments.hier_forecast [--quick] [--streams ...] [--spec key=value ...]

Each stream is replayed in Δ-long batches through a learning ``Network`` (as in
``model_loglik``); at every window boundary T the beliefs μ1, μ2, the weights W1, W2, the
traces z and the published rate map are recorded. Afterwards candidate forecasts of the
next window are scored by the Poisson log-likelihood of its counts (nats per scored event,
first third of the stream not scored), as gains over the published forecast ``model``.
Hierarchy terms are read as a predicted *change* added to the published forecast,
max(0, x' + g · W1 (μ1' − μ1)) / τ, with the best g of ``GS`` (``*_g`` reports it; g is
picked on the scored windows themselves, which flatters every candidate equally a little):

* ``oracle``: μ1' = μ1(T + Δ), the true next beliefs. Not a fair bound (those beliefs
  have already seen part of the scored window's events), only a ceiling;
* ``ls_self``, ``ls_nb``, ``ls_vel``: μ1' − μ1 linear in [μ1_j], [μ1_j, μ1 of the 4
  neighbour columns], [those, μ1_j(T) − μ1_j(T − Δ)], least squares on the first half of
  the windows, scored on the second half (``*_r2``: R² of the change μ1(T + Δ) − μ1(T)
  there; 0 = persistence of the beliefs);
* ``onl_self_pos``, ``onl_self``, ``onl_nb``: a layer-1 transition μ1'_j = A1 μ1_j
  (+ Σ_o B_o μ1_{j+o}, 4 neighbour columns, for ``onl_nb``) learned online by the
  network's local Bayesian-synapse rule (``online_transition``), weights in [0, w_max]
  (``_pos``, the bound of the network's A) or signed [−w_max, w_max];
* ``onl_top_pos``, ``onl_top``: the network's own path, A on the top-layer beliefs μ2
  learned by the same rule, μ1' = max(0, μ1 + W2 (A μ2 − μ2)), non-negative or signed A;
* ``lat_shared``, ``lat_class``, ``lat_soft``: forecast units without the hierarchy term
  whose lateral weights R are shared (the network's own rule, a check of this simulation),
  or gated by the column's strongest belief (one-hot) or its normalised beliefs μ/Σμ.

Also the persistence R² of the beliefs and of the traces between horizon ticks (is μ
noisier than z at horizon ticks?). Prints one line per stream and a JSON object last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from augury.events import EventBatch
from augury.model.network import (
    Network,
    _w,
    column_to_map,
    l2_to_l1,
    lateral,
    traces_at,
)
from augury.model.scoring import FLOOR_COUNT, poisson_loglik, window_counts
from augury.model.spec import ModelSpec
from tools.experiments.model_loglik import load_spec
from tools.spec_args import add_spec_argument, spec_overrides

GS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # gains tried on the hierarchy's predicted change
OFFS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # neighbour columns (dy, dx)


def record(spec: ModelSpec, ev: np.ndarray) -> dict[str, np.ndarray]:
    """Per window boundary T_i: μ1, μ2, z, active columns, W1, W2 (per column), the published
    rate map, and the counts of the window that ends at T_i (pooled map)."""
    net = Network(spec)
    dt = spec.horizon_us
    t1 = int(ev["t"][-1]) // dt * dt
    edges = np.arange(0, t1 + 1, dt)
    cuts = np.searchsorted(ev["t"], edges)
    mu, z, act, w1, rate, cnt, tt = [], [], [], [], [], [], []
    mu2, act2, w2 = [], [], []
    for i in range(len(edges) - 1):
        b = EventBatch(ev[cuts[i]:cuts[i + 1]], int(edges[i]), int(edges[i + 1]), i)
        r = net.step(b)
        st = net.state
        cnt.append(window_counts(spec, b.events))  # counts of window i (ends at T_i)
        mu.append(st.mu1.copy())
        z.append(traces_at(spec, st, net.t_us))
        act.append(st.active.copy() != 0)
        w1.append(_w(st.W1, spec.n1).copy())
        mu2.append(st.mu2.copy())
        act2.append(st.nact2.copy() > 0)
        w2.append(_w(st.W2, spec.n2).copy())
        rate.append(np.asarray(r.rate_hz, np.float64))
        tt.append(int(edges[i + 1]))
    return {"mu": np.array(mu), "z": np.array(z), "act": np.array(act), "w1": np.array(w1),
            "rate": np.array(rate), "cnt": np.array(cnt), "t": np.array(tt), "t1": t1,
            "mu2": np.array(mu2), "act2": np.array(act2), "w2": np.array(w2)}


def neigh(spec: ModelSpec, mu: np.ndarray) -> np.ndarray:
    """(n1, 4, K1): beliefs of the 4 neighbour columns (0 off the grid)."""
    r1, c1 = spec.grid1
    g = mu.reshape(r1, c1, -1)
    pad = np.pad(g, ((1, 1), (1, 1), (0, 0)))
    out = [pad[1 + dy:1 + dy + r1, 1 + dx:1 + dx + c1].reshape(r1 * c1, -1) for dy, dx in OFFS]
    return np.stack(out, 1)


def bayes_update(w: np.ndarray, s2: np.ndarray, g: np.ndarray, info: np.ndarray, q: float,
                 lo: float, hi: float) -> None:
    """The kernels' Bayesian synapse (``kernels._bayes_update``) on a whole array, in place."""
    s2[...] = 1.0 / (1.0 / (s2 + q) + info)
    dw = s2 * g
    span = hi - lo
    dw = np.where(dw > 0.0, dw * (hi - w) / span, dw * (w - lo) / span)
    w[...] = np.clip(w + dw, lo, hi)


def online_transition(spec: ModelSpec, mu: np.ndarray, act: np.ndarray, s2_init: float,
                      q: float, lateral: bool, signed: bool = False) -> np.ndarray:
    """Layer-1 transition learned online by the local rule; returns μ1' made at every T_i.

    μ1'_j = A1 μ1_j + Σ_o B_o μ1_{j+o} (o: 4 neighbour columns; B = 0 if not ``lateral``),
    A1 = I and B = 0 at the start; at T_{i+1} every column active at both ends has the error
    e = μ1(T_{i+1}) − μ1'(T_i) with precision π = 1/(v + v0) (running variance, rate α),
    and each weight gets G = Σ π e · pre, I = Σ π pre · Σ pre (majorized, pre ≥ 0), the
    same Bayesian-synapse update as every weight of the network (A1, B in [0, w_max], or
    [−w_max, w_max] if ``signed``).
    """
    n, n1, k = mu.shape
    no = len(OFFS) if lateral else 0
    w = np.concatenate([np.eye(k)[None], np.zeros((no, k, k))])  # (1 + no, K, K)
    s2 = np.full_like(w, s2_init)
    v = np.ones((n1, k))
    out = np.zeros_like(mu)
    for i in range(n):
        pre = np.concatenate([mu[i][:, None], neigh(spec, mu[i])[:, :no]], 1)  # (n1,1+no,K)
        out[i] = np.einsum("okl,col->ck", w, pre) * act[i][:, None]
        if i + 1 < n:
            m = act[i] & act[i + 1]
            e = mu[i + 1] - out[i]
            v[m] = (1 - spec.alpha) * v[m] + spec.alpha * e[m] ** 2
            pi = np.clip(1.0 / (v + spec.v0), spec.pi_min, spec.pi_max)
            pm = pre[m]
            rs = pm.sum((1, 2))
            g = np.einsum("ck,col->okl", (pi * e)[m], pm)
            info = np.einsum("ck,col->okl", pi[m], pm * rs[:, None, None])
            bayes_update(w, s2, g, info, q, -spec.w_max if signed else 0.0, spec.w_max)
    return out


def gates(mu: np.ndarray, kind: str) -> np.ndarray:
    """(n1, C) gate of each column's lateral weights from its beliefs: ``shared`` (C = 1),
    ``class`` (one-hot of the strongest belief, class 0 if all are 0; C = K1 + 1) or
    ``soft`` (μ / Σ μ, and class 0 if all are 0; C = K1 + 1)."""
    n1, k = mu.shape
    if kind == "shared":
        return np.ones((n1, 1))
    s = mu.sum(1)
    g = np.zeros((n1, k + 1))
    g[s <= 0, 0] = 1.0
    on = s > 0
    if kind == "class":
        g[np.flatnonzero(on), 1 + mu[on].argmax(1)] = 1.0
    else:
        g[on, 1:] = mu[on] / s[on, None]
    return g


def online_lateral(spec: ModelSpec, rec: dict[str, np.ndarray], kind: str) -> np.ndarray:
    """Forecast units without the hierarchy term, with belief-gated lateral weights.

    x'_c = max(0, ρ_c z_c + Σ_o Σ_m gate_m(j) R[m, pol, o] z_{c+o}) (c in column j), learned
    at every horizon tick by the kernels' rule (``_learn_residual``): post error
    e_F = z(T) − x'(T − Δ), precision 1/(v_F + v0), pre inputs z_c and gate_m · z_{c+o}
    a horizon ago, majorized information, ρ ∈ [0, 1] per channel, R ∈ [0, 1] shared. With
    ``shared`` this is the network's own forecast units minus g h. Returns x' (n, n1, D1).
    """
    mu, z, act = rec["mu"], rec["z"], rec["act"]
    n, n1, d1 = z.shape
    nm = gates(mu[0], kind).shape[1]
    rho = np.ones((n1, d1))
    srho = np.full((n1, d1), spec.s2_init)
    r = np.zeros((nm, 2, 8))
    sr = np.full((nm, 2, 8), spec.s2_init)
    vf = np.ones((n1, d1))
    fprev = np.zeros((n1, d1))
    zprev = np.zeros((n1, d1))
    gprev = np.zeros((n1, nm))
    pol = np.arange(d1) % 2
    out = np.zeros_like(z)
    onehot = np.zeros((8, 2, 8))
    for o in range(8):
        onehot[o, :, o] = 1.0

    def offsets(x: np.ndarray) -> np.ndarray:
        return np.stack([lateral(spec, onehot[o], x) for o in range(8)], -1)  # (n1, D1, 8)

    for i in range(n):
        a = act[i]
        if i > 0:
            nb = offsets(zprev)
            err = z[i] - fprev
            pi = np.clip(1.0 / (vf + spec.v0), spec.pi_min, spec.pi_max)
            asum = zprev + nb.sum(-1)
            s2 = 1.0 / (1.0 / (srho + spec.q) + pi * zprev * asum)
            srho[a] = s2[a]
            rho[a] = np.clip(rho + s2 * pi * err * zprev, 0.0, 1.0)[a]
            x = gprev[:, None, :, None] * nb[:, :, None, :]  # (n1, D1, nm, 8)
            pe = (pi * err)[a]
            g = np.zeros((nm, 2, 8))
            info = np.zeros((nm, 2, 8))
            for p in range(2):
                sel = pol == p
                g[:, p] = np.einsum("cd,cdmo->mo", pe[:, sel], x[a][:, sel])
                info[:, p] = np.einsum("cd,cdmo->mo", (pi * asum)[a][:, sel], x[a][:, sel])
            bayes_update(r, sr, g, info, spec.q, 0.0, 1.0)
            vf[a] = ((1 - spec.alpha) * vf + spec.alpha * err ** 2)[a]
        gt = gates(mu[i], kind)
        nb = offsets(z[i])
        lat = np.einsum("cm,mdo,cdo->cd", gt, r[:, pol], nb)
        fprev = np.maximum(rho * z[i] + lat, 0.0) * a[:, None]
        zprev = z[i] * a[:, None]
        gprev = gt * a[:, None]
        out[i] = fprev
    return out


def _change_map(spec: ModelSpec, w1: np.ndarray, dmu: np.ndarray) -> np.ndarray:
    """W1 (μ1' − μ1) / τ as a pooled map (events/s)."""
    return column_to_map(spec, np.einsum("cdk,ck->cd", w1, dmu)) / (spec.tau_us * 1e-6)


def analyse(spec: ModelSpec, rec: dict[str, np.ndarray]) -> dict[str, float]:
    """Gains over the published forecast (nats/event) of every candidate; see the docstring."""
    dt_s = spec.horizon_us * 1e-6
    mu, z, act, w1, rate, cnt = (rec[k] for k in ("mu", "z", "act", "w1", "rate", "cnt"))
    n = len(mu)
    k1 = spec.k1
    scored = [i for i in range(n - 1) if rec["t"][i] >= rec["t1"] // 3]
    half = scored[len(scored) // 2]
    out: dict[str, float] = {}

    def feats(i: int) -> np.ndarray:
        prev = mu[i - 1] if i > 0 else mu[i]
        return np.concatenate([mu[i], neigh(spec, mu[i]).reshape(spec.n1, -1),
                               (mu[i] - prev) * act[i][:, None]], 1)

    both = [act[i] & act[i + 1] for i in range(n - 1)]
    X = np.concatenate([feats(i)[both[i]] for i in range(n - 1)])
    Y = np.concatenate([(mu[i + 1] - mu[i])[both[i]] for i in range(n - 1)])
    tr = np.concatenate([np.full(both[i].sum(), i < half) for i in range(n - 1)])
    lam = 1e-3 * np.trace(X[tr].T @ X[tr]) / X.shape[1]
    sets = {"ls_self": np.arange(k1), "ls_nb": np.arange(5 * k1), "ls_vel": np.arange(6 * k1)}
    coefs = {}
    var_y = float(((Y[~tr] - Y[~tr].mean(0)) ** 2).sum())
    for key, cols in sets.items():
        xa = X[tr][:, cols]
        coefs[key] = np.linalg.solve(xa.T @ xa + lam * np.eye(cols.size), xa.T @ Y[tr])
        res = Y[~tr] - X[~tr][:, cols] @ coefs[key]
        out[f"{key}_r2"] = 1.0 - float((res ** 2).sum()) / var_y
    for key, x in (("mu", mu), ("z", z)):
        b = np.concatenate([x[i][both[i]] for i in range(n - 1)])
        a = np.concatenate([x[i + 1][both[i]] for i in range(n - 1)])
        out[f"{key}_persist_r2"] = 1.0 - float(((a - b) ** 2).sum() / ((a - a.mean(0)) ** 2).sum())

    # forecasts of the next beliefs μ1' made at every T_i, (n, n1, K1)
    pred = {}
    for key, lat, signed in (("onl_self_pos", False, False), ("onl_self", False, True),
                             ("onl_nb", True, True)):
        pred[key] = online_transition(spec, mu, act, spec.a_s2_init, spec.a_q, lat, signed)
    if spec.layers == 2:
        top = dataclasses.replace(spec, column=spec.column * 2)  # the layer-2 grid
        for key, signed in (("onl_top_pos", False), ("onl_top", True)):
            m2p = online_transition(top, rec["mu2"], rec["act2"], spec.a_s2_init, spec.a_q,
                                    False, signed)
            pred[key] = np.stack([np.maximum(mu[i] + l2_to_l1(spec, np.einsum(
                "csk,ck->cs", rec["w2"][i], m2p[i] - rec["mu2"][i] * rec["act2"][i][:, None]
            )), 0.0) for i in range(n)])
    lat_fc = {kind: online_lateral(spec, rec, kind) for kind in ("shared", "class", "soft")}

    ll: dict[str, float] = {}
    ev = {"all": 0, "test": 0}

    def add(key: str, m: np.ndarray, c: np.ndarray, test: bool) -> None:
        s = poisson_loglik(m * dt_s, c, FLOOR_COUNT)
        ll[key] = ll.get(key, 0.0) + s
        if test:
            ll["T" + key] = ll.get("T" + key, 0.0) + s

    for i in scored:
        c = cnt[i + 1]
        test = i >= half
        ev["all"] += int(c.sum())
        ev["test"] += int(c.sum()) if test else 0
        am = act[i][:, None]
        base = rate[i]
        add("model", base, c, test)
        dmu = {"oracle": mu[i + 1] * act[i + 1][:, None] - mu[i]}
        f = feats(i)
        for key, cols in sets.items():
            dmu[key] = (f[:, cols] @ coefs[key]) * am
        for key, p in pred.items():
            dmu[key] = (p[i] - mu[i]) * am
        for key, d in dmu.items():
            dm = _change_map(spec, w1[i], d)
            for g in GS:
                add(f"{key}@{g}", np.maximum(base + g * dm, 0.0), c, test)
        for kind, xf in lat_fc.items():
            add(f"lat_{kind}", column_to_map(spec, xf[i]) / (spec.tau_us * 1e-6), c, test)
    e_all, e_te = max(ev["all"], 1), max(ev["test"], 1)
    for key in ["oracle", *sets, *pred]:
        pre, norm = ("T", e_te) if key in sets else ("", e_all)
        gains = {g: (ll[f"{pre}{key}@{g}"] - ll[f"{pre}model"]) / norm for g in GS}
        best = max(gains, key=gains.__getitem__)
        out[key] = gains[best]
        out[f"{key}_g"] = best
    for kind in lat_fc:
        out[f"lat_{kind}"] = (ll[f"lat_{kind}"] - ll["model"]) / e_all
    out["scored_events"] = float(e_all)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_spec_argument(ap)
    ap.add_argument("--streams", nargs="*", default=None)
    ap.add_argument("--quick", action="store_true", help="bars and the rotating disk only")
    args = ap.parse_args(argv)
    if args.streams is None:
        args.streams = ["bars", "rotdisk"] if args.quick else ["bars", "rotdisk", "dvxplorer"]
    overrides = spec_overrides(args.spec)
    results = {}
    for name in args.streams:
        ev, spec = load_spec(name, overrides)
        results[name] = analyse(spec, record(spec, ev))
        print(name, {k: round(v, 4) for k, v in results[name].items()}, flush=True)
    print(json.dumps({k: {a: round(b, 4) for a, b in v.items()} for k, v in results.items()}))


if __name__ == "__main__":
    main()
