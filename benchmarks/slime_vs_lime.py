"""SLIME (``sfx.explain``) against LIME (the ``lime`` package's tabular explainer), 8 datasets.

    python benchmarks/slime_vs_lime.py                 # the whole benchmark (see below)
    python benchmarks/slime_vs_lime.py --points 3 --datasets iris wine   # a quick look

Datasets (all offline): diabetes and Friedman 1-3 (sklearn's generators, 1000 rows, no noise) for
regression; iris, wine, breast cancer and digits (bundled with sklearn) for classification. The
black box of each is an MLP (torch; inputs standardized inside it; 64-64 ReLU; Adam, lr 1e-3,
2000 full-batch steps, L2 weight decay chosen from 1e-3, 1e-2, 1e-1 on a fifth of the training
rows) trained on 75% of the rows. Explained points: 20 rows of the other 25%.

SLIME runs ``explain`` with its default neighbourhood and selection ``"auto"``, on an engine built
here: ``sfx.Operon(population_size=400, generations=75, max_length=20)`` (the budget of
``explain``'s ``DEFAULT_ENGINE``; ``--population``, ``--generations``, ``--max-length``). Its
other settings are Operon's defaults, so ``explain`` runs Operon's default number of searches
per point (``restarts=2``), pooled into one front, not ``DEFAULT_ENGINE``'s one search. The
figures for ``"accuracy"`` come from the same fronts. The 8-dataset table in ``RESULTS.md``
(commit 86e649f, 1289 s on 2 cores) ran one search per point, when ``explain`` did not take
the engine's number of searches; there is no option for that here.

Both explainers get the same neighbourhood and budget. SLIME: the ``J`` nearest training rows
plus ``M`` Gaussian perturbations of x0 with the neighbours' per-feature variance, proximity
kernel ``exp(-d^2 / w^2)``. LIME: ``LimeTabularExplainer`` built on the same ``J`` neighbours
(so its per-feature scale is their standard deviation), ``sample_around_instance=True``,
``discretize_continuous=False``, ``J + M`` samples, kernel width ``w / sqrt(2)`` (LIME's kernel
is ``exp(-d^2 / (2 width^2))``, so the two kernels are the same function). Both see only the
features that vary among the neighbours (the others are held at x0's value).

Local fidelity is measured on 500 fresh draws from the perturbation distribution around x0,
never seen by either explainer: R^2 and MSE against the black box (regression);
for classification, the MSE of the explained class probability and the agreement of
"probability >= 1/2" between explanation and black box. Per point, which method has the lower
MSE, plain and proximity-weighted (the kernel both fit with). Size: node count of the expression
(LIME's linear model written as an expression over the raw features, counted the same way) and
the number of features it uses. Time: wall seconds per explanation, black-box calls included.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import sympy
import torch
import torch.nn as nn
from sklearn import datasets as skd
from sklearn.model_selection import train_test_split

import symtorch_fx as sfx
from symtorch_fx.expr.grammar import complexity
from symtorch_fx.slime import DEFAULT_ENGINE

REGRESSION = ["diabetes", "friedman1", "friedman2", "friedman3"]
CLASSIFICATION = ["iris", "wine", "breast_cancer", "digits"]
SELECTIONS = ["auto", "accuracy"]


def load(name: str):
    if name == "diabetes":
        X, y = skd.load_diabetes(return_X_y=True)
    elif name.startswith("friedman"):
        gen = getattr(skd, f"make_{name}")
        X, y = gen(n_samples=1000, random_state=0)
    else:
        X, y = getattr(skd, f"load_{name}")(return_X_y=True)
    return X.astype(np.float64), y


class MLP(nn.Module):
    """The black box: standardize -> 64 -> 64 -> out (ReLU); probabilities for classifiers."""

    def __init__(self, X: np.ndarray, n_out: int, classifier: bool, y_mean=0.0, y_std=1.0):
        super().__init__()
        self.register_buffer("mu", torch.tensor(X.mean(0), dtype=torch.float32))
        sd = X.std(0)
        sd[sd == 0] = 1.0
        self.register_buffer("sd", torch.tensor(sd, dtype=torch.float32))
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(float(y_std)))
        self.body = nn.Sequential(nn.Linear(X.shape[1], 64), nn.ReLU(), nn.Linear(64, 64),
                                  nn.ReLU(), nn.Linear(64, n_out))
        self.classifier = classifier

    def logits(self, x):
        return self.body((x - self.mu) / self.sd)

    def forward(self, x):
        z = self.logits(x)
        if self.classifier:
            return torch.softmax(z, -1)
        return z[:, 0] * self.y_std + self.y_mean


WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1)


def train_mlp(X, y, classifier: bool, weight_decay: float, steps: int = 2000, seed: int = 0):
    """Adam (lr 1e-3, L2 ``weight_decay``), full batch."""
    torch.manual_seed(seed)
    xt = torch.tensor(X, dtype=torch.float32)
    if classifier:
        net = MLP(X, int(y.max()) + 1, True)
        yt = torch.tensor(y, dtype=torch.long)
    else:
        net = MLP(X, 1, False, y.mean(), y.std())
        yt = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of(net, xt, yt, classifier)
        loss.backward()
        opt.step()
    return net.eval()


def loss_of(net, xt, yt, classifier: bool):
    if classifier:
        return nn.functional.cross_entropy(net.logits(xt), yt)
    return ((net.logits(xt)[:, 0] - yt) ** 2).mean()


def black_box(name: str, X_tr, y_tr, X_te, y_te, seed: int = 0):
    """The weight decay that does best on a fifth of the training rows (trained on the rest),
    then the MLP trained with it on all training rows."""
    classifier = name in CLASSIFICATION
    fit, stop = train_test_split(np.arange(len(X_tr)), test_size=0.2, random_state=seed,
                                 stratify=y_tr if classifier else None)
    held = {}
    for wd in WEIGHT_DECAYS:
        net = train_mlp(X_tr[fit], y_tr[fit], classifier, wd, seed=seed)
        with torch.no_grad():
            pred = net(torch.tensor(X_tr[stop], dtype=torch.float32)).numpy()
        held[wd] = (-np.log(pred[np.arange(len(stop)), y_tr[stop]] + 1e-12).mean()
                    if classifier else np.mean((pred - y_tr[stop]) ** 2))
    wd = min(held, key=held.get)
    net = train_mlp(X_tr, y_tr, classifier, wd, seed=seed)
    with torch.no_grad():
        pred = net(torch.tensor(X_te, dtype=torch.float32)).numpy()
    if classifier:
        quality = f"test accuracy {np.mean(pred.argmax(1) == y_te):.3f}"
    else:
        quality = f"test R^2 {1 - np.mean((pred - y_te) ** 2) / np.var(y_te):.3f}"
    return net, f"{quality}, weight decay {wd:g}"


def lime_explain(exp: sfx.Explanation, f_rows, classifier: bool, num_features: int, seed: int):
    """LIME on the neighbourhood SLIME used; returns (predict(Z_full), expression, seconds).

    ``f_rows``: the black box on full rows, as LIME wants it (class probabilities (n, K) for a
    classifier, values (n,) for a regressor)."""
    from lime.lime_tabular import LimeTabularExplainer

    feats = exp.features
    x0 = exp.x0
    near = exp.samples[:exp.n_real][:, feats]

    def embed(R):
        Z = np.repeat(x0[None], len(R), 0)
        Z[:, feats] = R
        return Z

    def predict_fn(R):  # LIME passes rows of the varying features only
        return f_rows(embed(R))

    t0 = time.perf_counter()
    explainer = LimeTabularExplainer(
        near, mode="classification" if classifier else "regression",
        discretize_continuous=False, sample_around_instance=True,
        kernel_width=exp.kernel_width / math.sqrt(2), random_state=seed)
    label = exp.output if classifier else 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = explainer.explain_instance(
            x0[feats], predict_fn, labels=(label,), num_features=num_features,
            num_samples=len(exp.samples))
    seconds = time.perf_counter() - t0
    mean, scale = explainer.scaler.mean_, explainer.scaler.scale_
    coef = np.zeros(len(feats))
    for j, c in e.local_exp[label]:
        coef[j] = c
    intercept = float(e.intercept[label])
    # LIME's ridge works on (z - mean) / scale: the same linear function of the raw features
    b = coef / scale
    a = intercept - float(np.sum(b * mean))
    assert abs(a + b @ x0[feats] - float(np.ravel(e.local_pred)[0])) < 1e-6 * (1 + abs(a))
    syms = [sympy.Symbol(exp.feature_names[k], real=True) for k in feats]
    expr = sympy.Float(a) + sum(sympy.Float(bk) * s for bk, s in zip(b, syms) if bk != 0)

    def predict(Z):
        return a + Z[:, feats] @ b

    return predict, expr, seconds


def metrics(pred, truth, classifier: bool, w) -> dict:
    """Fidelity on the test draws; ``w_mse``: proximity-weighted (the kernel both methods use)."""
    sq = (pred - truth) ** 2
    out = {"mse": float(np.mean(sq)), "w_mse": float(np.sum(w * sq) / np.sum(w))}
    if classifier:
        out["agree"] = float(np.mean((pred >= 0.5) == (truth >= 0.5)))
    else:
        var = float(np.var(truth))
        out["r2"] = 1 - out["mse"] / var if var > 0 else float("nan")
    return out


def run(names, points: int, J: int, M: int, T: int, engine, selection: str, out: Path | None):
    rows = []
    for name in names:
        classifier = name in CLASSIFICATION
        X, y = load(name)
        X_tr, X_te, y_tr, y_te = train_test_split(
            X, y, test_size=0.25, random_state=0, stratify=y if classifier else None)
        t0 = time.perf_counter()
        net, quality = black_box(name, X_tr, y_tr, X_te, y_te)
        print(f"{name}: black box {quality} ({time.perf_counter() - t0:.1f} s to train)",
              flush=True)
        pick = np.random.default_rng(1).choice(len(X_te), points, replace=False)

        def f_lime(Z):
            with torch.no_grad():
                return net(torch.as_tensor(Z, dtype=torch.float32)).double().numpy()

        for i, idx in enumerate(pick):
            x0 = X_te[idx]
            exp = sfx.explain(net, X_tr, x0, neighbours=J, synthetic=M, engine=engine,
                              selection=selection, task="classification" if classifier
                              else "regression", seed=i)
            f_col = exp.black_box  # the explained column of the black box, batched
            rng = np.random.default_rng(10_000 + i)
            Zt = np.repeat(x0[None], T, 0)
            Zt[:, exp.features] += rng.standard_normal((T, len(exp.features))) * \
                exp.std[exp.features]
            truth = f_col(Zt)
            d2 = np.sum(((Zt - x0)[:, exp.features] / exp.std[exp.features]) ** 2, 1)
            w = np.exp(-d2 / exp.kernel_width**2)
            rec = {"dataset": name, "point": int(idx), "d_vary": len(exp.features),
                   "slime_seconds": exp.seconds["total"], "slime_search_seconds":
                   exp.seconds["search"], "equation": exp.equation.text(4), "slime": {},
                   "value": exp.value}
            for rule in SELECTIONS:
                exp.select(rule)
                eq = exp.equation
                rec["slime"][rule] = dict(metrics(exp.predict(Zt), truth, classifier, w),
                                          size=eq.complexity, features=len(exp.variables),
                                          equation=eq.text(4))
            exp.select(selection)
            full = len(exp.features)
            for label, k in (("lime_all", full), ("lime_10", min(10, full))):
                predict, expr, sec = lime_explain(exp, f_lime, classifier, k, seed=i)
                rec[label] = dict(metrics(predict(Zt), truth, classifier, w),
                                  size=complexity(expr), seconds=sec,
                                  features=len(expr.free_symbols))
            rows.append(rec)
            s, lm = rec["slime"][selection], rec["lime_all"]
            key = "agree" if classifier else "r2"
            print(f"  {name} #{i:2d}: SLIME {key} {s[key]:.3f} mse {s['mse']:.3g} size "
                  f"{s['size']:3d} ({rec['slime_seconds']:.1f} s) | LIME {key} {lm[key]:.3f} "
                  f"mse {lm['mse']:.3g} size {lm['size']:3d} | {exp.equation.text(3)}",
                  flush=True)
        if out is not None:
            out.write_text(json.dumps(rows, indent=1))
    return rows


def summarize(rows, selection: str) -> str:
    def ms(v):
        v = np.asarray(v, float)
        return f"{np.mean(v):.3g} ± {np.std(v):.2g}"

    lines = []
    for task, names in (("regression", REGRESSION), ("classification", CLASSIFICATION)):
        key = "r2" if task == "regression" else "agree"
        head = "R^2" if task == "regression" else "agreement"
        lines += [f"\n{task}: mean ± std over explained points (median fidelity in brackets)\n",
                  f"| dataset | D (varying) | method | {head} | MSE | SLIME MSE lower | SLIME "
                  "weighted MSE lower | size (nodes) | features | seconds |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name in names:
            rs = [r for r in rows if r["dataset"] == name]
            if not rs:
                continue
            d = f"{np.mean([r['d_vary'] for r in rs]):.1f}"
            s = [r["slime"][selection] for r in rs]
            variants = [(f"SLIME ({selection})", s, [r["slime_seconds"] for r in rs])]
            for label, title in (("lime_all", "LIME (all features)"), ("lime_10", "LIME (10)")):
                if label == "lime_10" and all(r["d_vary"] <= 10 for r in rs):
                    continue
                variants.append((title, [r[label] for r in rs], [r[label]["seconds"] for r in rs]))
            for title, m, secs in variants:
                wins = wwins = ""
                if not title.startswith("SLIME"):
                    wins = f"{sum(a['mse'] < b['mse'] for a, b in zip(s, m))}/{len(rs)}"
                    wwins = f"{sum(a['w_mse'] < b['w_mse'] for a, b in zip(s, m))}/{len(rs)}"
                fid = [x[key] for x in m]
                lines.append(
                    f"| {name} | {d} | {title} | {ms(fid)} ({np.median(fid):.3g}) | "
                    f"{ms([x['mse'] for x in m])} | {wins} | {wwins} | "
                    f"{ms([x['size'] for x in m])} | {ms([x['features'] for x in m])} | "
                    f"{ms(secs)} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="*", default=REGRESSION + CLASSIFICATION)
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--neighbours", type=int, default=50)
    ap.add_argument("--synthetic", type=int, default=450)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--population", type=int, default=DEFAULT_ENGINE["population_size"])
    ap.add_argument("--generations", type=int, default=DEFAULT_ENGINE["generations"])
    ap.add_argument("--max-length", type=int, default=DEFAULT_ENGINE["max_length"])
    ap.add_argument("--selection", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="write every record as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    engine = sfx.Operon(population_size=a.population, generations=a.generations,
                        max_length=a.max_length)
    print(f"engine {engine!r}; J={a.neighbours}, M={a.synthetic}, {a.points} points, "
          f"{a.test} test draws per point, selection {a.selection!r}", flush=True)
    t0 = time.perf_counter()
    rows = run(a.datasets, a.points, a.neighbours, a.synthetic, a.test, engine, a.selection,
               a.out)
    print(summarize(rows, a.selection))
    for rule in SELECTIONS:
        if rule != a.selection:
            print(f"\nSLIME with selection {rule!r} (same fronts):")
            print(summarize(rows, rule))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
