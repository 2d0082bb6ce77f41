"""N-MNIST: are the beliefs learned without labels better features than random ones?

Usage::

    python -m tools.experiments.nmnist_probe [--quick] [--write-docs] [--seeds 0 1 2]
        [--train N] [--passes N] [--spec key=value ...]

Protocol (issue "Learning that earns its keep"):

1. Unsupervised phase: one online pass (``--passes N``: N passes) of learning over the
   ``train1K`` digits of ``../shared/data/nmnist`` as one stream (digits back to back,
   20 ms apart, 10 ms batches through ``Network.step``); labels are never seen. Spec:
   34 × 34, pool 2, K1 = 8, two layers (so that layer 1, layer 2 and both can be
   compared), other fields default or ``--spec``.
2. Features, learning frozen: each digit is replayed from a fresh fast state that keeps
   what was learned (``pipeline.restart_stream``); the beliefs are read out every 10 ms; per
   belief unit the mean and the maximum over the read-outs.
3. Probe: multinomial logistic regression on standardised features (scikit-learn), C picked
   from {0.01, 0.1, 1} by a 3-fold CV on train1K (a validation of the training split only,
   never test100), then 5-fold stratified CV
   accuracy on the 1,000 (mean ± sd over folds and seeds), and train-on-1000 /
   test-on-``test100`` accuracy (the test split is never used to choose anything).
4. Feature sets: raw counts per pixel and polarity (34 × 34 × 2), counts at the network's
   pooling (17 × 17 × 2), the same network's beliefs with its random initial weights, and
   after the learning pass; for the networks, layer 1, layer 2 and both.

Prints one line per feature set, a Markdown table, and a JSON object last.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from augury.events import EventBatch
from augury.model.network import Network
from augury.model.spec import ModelSpec
from augury.pipeline import restart_stream
from tools.experiments.docs_block import write_block
from tools.spec_args import add_spec_argument, spec_overrides

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nmnist"
DOC = Path(__file__).resolve().parents[2] / "docs"
BATCH_US = 10_000
GAP_US = 20_000
BASE_SPEC = {"width": 34, "height": 34, "pool": 2, "k1": 8, "layers": 2}


def labels(split: str) -> list[tuple[int, int]]:
    """(sample id, class) of ``train1K`` or ``test100``."""
    out = []
    for line in (DATA / f"{split}.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#"):
            out.append((int(parts[0]), int(parts[1])))
    return out


def load_digit(sample: int) -> np.ndarray:
    """One digit's events, t from 0 (µs)."""
    from augury.adapters import open_source

    with open_source(DATA / "samples" / f"{sample}.bs2") as src:
        ev = src.read_all().copy()
    ev["t"] -= ev["t"][0] if ev.size else 0
    return ev


def batches(ev: np.ndarray, t0_us: int) -> tuple[list[EventBatch], int]:
    """The digit shifted to start at t0_us (a multiple of BATCH_US) in BATCH_US batches, and
    the time the next digit starts (after GAP_US)."""
    t_end = t0_us + (int(ev["t"][-1]) + 1 if ev.size else 0) + GAP_US
    t_end = -(-t_end // BATCH_US) * BATCH_US
    e = ev.copy()
    e["t"] += t0_us
    edges = np.arange(t0_us, t_end + 1, BATCH_US)
    cuts = np.searchsorted(e["t"], edges)
    return [EventBatch(e[cuts[i]:cuts[i + 1]], int(edges[i]), int(edges[i + 1]), i)
            for i in range(len(edges) - 1)], t_end


def learn_pass(net: Network, digits: list[np.ndarray], passes: int = 1) -> None:
    """Unlabelled online passes over the digits as one stream (the digits in the same order
    at every pass, back to back)."""
    t0 = 0
    for _ in range(passes):
        for ev in digits:
            bs, t0 = batches(ev, t0)
            for b in bs:
                net.step(b)


def belief_features(net: Network, digits: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per digit, per belief unit: mean and max of the beliefs read out every 10 ms, learning
    frozen, each digit from a fresh fast state; {"l1": (n, 2·units1), "l2": ...}."""
    net.freeze_learning()
    feats: dict[str, list[np.ndarray]] = {"l1": [], "l2": []}
    for ev in digits:
        restart_stream(net)
        reads: list[list[np.ndarray]] = []
        bs, _ = batches(ev, 0)
        for b in bs:
            r = net.step(b)
            reads.append([m.ravel() for m in r.mu])
        for layer in range(len(reads[0])):
            a = np.stack([rd[layer] for rd in reads])
            feats[f"l{layer + 1}"].append(np.concatenate([a.mean(0), a.max(0)]))
    return {k: np.stack(v) for k, v in feats.items() if v}


def exemplar_dictionary(net: Network, digits: list[np.ndarray],
                        rng: np.random.Generator) -> np.ndarray:
    """A layer-1 dictionary of data samples (Coates & Ng 2011), (D1, K1): the traces of K1
    busy columns (Σ z > 1 event) picked at random from the 10 ms read-outs of the digits
    (no labels; learning frozen; the net's weights unchanged), each scaled to the mean norm
    of the net's current atoms."""
    from augury.model.network import traces_at

    spec = net.spec
    w = net.state.W1[0]
    norm = float(np.mean(np.linalg.norm(w, axis=0)))
    net.freeze_learning()
    snaps = []
    for ev in digits:
        restart_stream(net)
        bs, _ = batches(ev, 0)
        for b in bs:
            net.step(b)
            z = traces_at(spec, net.state, b.t_end_us)
            snaps.append(z[z.sum(axis=1) > 1.0])
    pool = np.concatenate(snaps)
    pick = pool[rng.choice(len(pool), spec.k1, replace=False)]
    return (pick / np.linalg.norm(pick, axis=1, keepdims=True) * norm).T


def atom_cosine(w: np.ndarray) -> float:
    """Mean pairwise cosine of a dictionary's atoms (the columns of w, shape (D, K)): near 1
    when the atoms collapse onto one direction, near 0 when they are diverse."""
    wn = w / np.maximum(np.linalg.norm(w, axis=0, keepdims=True), 1e-300)
    c = wn.T @ wn
    k = c.shape[0]
    return float((c.sum() - np.trace(c)) / (k * k - k)) if k > 1 else 0.0


def atom_top_share(w: np.ndarray) -> float:
    """Mean over atoms (columns of w, shape (D, K)) of the share of the atom's total weight
    held by its strongest input: 1/D for a uniform atom, 1 for a one-input atom."""
    return float(np.mean(w.max(axis=0) / np.maximum(w.sum(axis=0), 1e-300)))


def count_features(digits: list[np.ndarray], pool: int) -> np.ndarray:
    """Event counts per (pooled) pixel and polarity, (n, (34/pool)² · 2)."""
    side = -(-34 // pool)
    out = np.zeros((len(digits), side * side * 2))
    for i, ev in enumerate(digits):
        idx = ((ev["y"].astype(np.int64) // pool) * side + ev["x"] // pool) * 2 + ev["p"]
        out[i] = np.bincount(idx, minlength=side * side * 2)
    return out


def probe(x: np.ndarray, y: np.ndarray, x_test: np.ndarray | None, y_test: np.ndarray | None,
          folds: int, seed: int) -> dict[str, float]:
    """Linear probe accuracies: k-fold CV on (x, y) and, if given, train-all / test. C is
    picked once per feature set from {0.01, 0.1, 1} by 3-fold CV on (x, y) (train1K only)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def model(c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))

    inner = StratifiedKFold(3, shuffle=True, random_state=seed + 100)
    best = max((0.01, 0.1, 1.0), key=lambda c: cross_val_score(model(c), x, y, cv=inner).mean())
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    acc = cross_val_score(model(best), x, y, cv=cv)
    out = {"cv_mean": float(acc.mean()), "cv_sd": float(acc.std()), "C": best}
    if x_test is not None and y_test is not None:
        out["test"] = float(model(best).fit(x, y).score(x_test, y_test))
    return out


def run(*, quick: bool, seeds: list[int], n_train: int | None,
        overrides: dict[str, object], passes: int = 1,
        exemplars: bool = False) -> dict[str, dict[str, float]]:
    train = labels("train1K")[: (n_train or (200 if quick else 1000))]
    test = [] if quick else labels("test100")
    folds = 3 if quick else 5
    d_train = [load_digit(s) for s, _ in train]
    d_test = [load_digit(s) for s, _ in test]
    y = np.array([c for _, c in train])
    y_test = np.array([c for _, c in test]) if test else None
    spec0 = ModelSpec.from_dict({**BASE_SPEC, **overrides})
    rows: dict[str, list[dict[str, float]]] = {}

    def add(name: str, x: np.ndarray, xt: np.ndarray | None, seed: int) -> None:
        r = probe(x, y, xt if test else None, y_test, folds, seed)
        rows.setdefault(name, []).append(r)

    for pool, name in ((1, "raw counts 34×34×2"), (spec0.pool, f"counts pooled by {spec0.pool}")):
        add(name, count_features(d_train, pool), count_features(d_test, pool) if test else None,
            0)
    for seed in seeds:
        spec = ModelSpec.from_dict({**spec0.to_dict(), "seed": seed})
        for kind in ("random", "exemplar" if exemplars else "learned"):
            net = Network(spec)
            if kind == "learned":
                learn_pass(net, d_train, passes)
            elif kind == "exemplar":
                sd = net.state_dict()
                w = exemplar_dictionary(net, d_train, np.random.default_rng(1234 + seed))
                sd["W1"] = np.broadcast_to(w, sd["W1"].shape).copy()
                net.load_state_dict(sd)
            f_train = belief_features(net, d_train)
            f_test = belief_features(net, d_test) if test else {}
            layers = {"layer 1": ["l1"], "layer 2": ["l2"], "both": ["l1", "l2"]}
            for label, keys in layers.items():
                if not all(k in f_train for k in keys):
                    continue
                x = np.concatenate([f_train[k] for k in keys], axis=1)
                xt = np.concatenate([f_test[k] for k in keys], axis=1) if test else None
                add(f"{kind} beliefs, {label}", x, xt, seed)
            sparsity = float(np.mean(f_train["l1"][:, : f_train["l1"].shape[1] // 2] > 1e-6))
            row = rows.setdefault(f"{kind} beliefs, layer 1", [])[-1]
            row["nonzero_mean"] = sparsity
            row["atom_cos"] = atom_cosine(net.state.W1[0])
            row["atom_top_share"] = atom_top_share(net.state.W1[0])
    out = {}
    for name, rs in rows.items():
        agg = {"cv_mean": float(np.mean([r["cv_mean"] for r in rs])),
               "cv_sd": float(np.sqrt(np.mean([r["cv_sd"] ** 2 for r in rs])
                                      + np.var([r["cv_mean"] for r in rs])))}
        if all("test" in r for r in rs):
            agg["test"] = float(np.mean([r["test"] for r in rs]))
        for key in ("nonzero_mean", "atom_cos", "atom_top_share"):
            if any(key in r for r in rs):
                agg[key] = float(np.mean([r[key] for r in rs if key in r]))
        out[name] = agg
        print(name, json.dumps(agg), flush=True)
    return out


def table(res: dict[str, dict[str, float]]) -> str:
    lines = ["| features | 5-fold CV accuracy (train1K) | test100 accuracy | beliefs non-zero "
             "| atoms' mean cosine |", "|---|---:|---:|---:|---:|"]
    for name, r in res.items():
        test = f"{100 * r['test']:.1f} %" if "test" in r else "—"
        nz = f"{100 * r['nonzero_mean']:.0f} %" if "nonzero_mean" in r else ""
        cos = f"{r['atom_cos']:.2f}" if "atom_cos" in r else ""
        lines.append(f"| {name} | {100 * r['cv_mean']:.1f} ± {100 * r['cv_sd']:.1f} % | "
                     f"{test} | {nz} | {cos} |")
    return "\n".join(lines)


def write_docs(text: str) -> None:
    write_block("nmnist_probe", "N-MNIST: are learned beliefs better features?", text,
                "python -m tools.experiments.nmnist_probe --write-docs")


def headline(res: dict[str, dict[str, float]]) -> dict[str, float]:
    out = {k: round(v["cv_mean"], 4) for k, v in res.items()}
    pooled = next((v["cv_mean"] for k, v in res.items() if k.startswith("counts pooled")), 0.0)
    for kind in ("learned", "exemplar"):
        for layer in ("layer 1", "layer 2", "both"):
            lk, rk = f"{kind} beliefs, {layer}", f"random beliefs, {layer}"
            if lk in res and rk in res:
                out[f"{kind}_minus_random_{layer.replace(' ', '')}"] = round(
                    res[lk]["cv_mean"] - res[rk]["cv_mean"], 4)
                out[f"{kind}_minus_pooled_counts_{layer.replace(' ', '')}"] = round(
                    res[lk]["cv_mean"] - pooled, 4)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 digits, one seed, 3 folds")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--train", type=int, default=None, help="number of train1K digits")
    ap.add_argument("--passes", type=int, default=1, help="unlabelled learning passes")
    ap.add_argument("--exemplars", action="store_true",
                    help="instead of learning, a dictionary of data samples (exemplar_dictionary)")
    add_spec_argument(ap)
    a = ap.parse_args(argv)
    t = time.perf_counter()
    res = run(quick=a.quick, seeds=a.seeds or ([0] if a.quick else [0, 1, 2]),
              n_train=a.train, overrides=spec_overrides(a.spec), passes=a.passes,
              exemplars=a.exemplars)
    text = table(res)
    print(text)
    print(f"({time.perf_counter() - t:.0f} s)")
    if a.write_docs:
        write_docs(text)
    print(json.dumps(headline(res)))


if __name__ == "__main__":
    main()
