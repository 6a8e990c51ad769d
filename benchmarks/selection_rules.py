"""Which selection rule picks the law from fronts distilled out of trained networks?

    python benchmarks/selection_rules.py        # ~5 minutes on 2 cores

Eight laws of 2-3 variables, each learned by an MLP (d -> 64 -> 64 -> 1, SiLU, 2000 Adam
steps), distilled from the MLP's own outputs with Operon (population 500, 100 generations),
two seeds each. For the runs whose front contains the law (equal after rounding constants to
one decimal), it counts how often each rule picks it, and sweeps the rate of ``"auto"``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import sympy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import equivalent, mlp, train  # noqa: E402

import symtorch_fx as sfx  # noqa: E402
from symtorch_fx.expr.equations import ParetoFront  # noqa: E402
from symtorch_fx.search import select as _select  # noqa: E402
from symtorch_fx.search.distill import build_front  # noqa: E402

x0, x1, x2 = sympy.symbols("x0 x1 x2", real=True)
LAWS = [
    (2, lambda X: X[:, 0] * X[:, 1] + torch.sin(X[:, 0]), x0 * x1 + sympy.sin(x0)),
    (2, lambda X: X[:, 0] ** 2 - X[:, 1], x0**2 - x1),
    (2, lambda X: torch.exp(-X[:, 0] ** 2) * X[:, 1], sympy.exp(-x0**2) * x1),
    (3, lambda X: X[:, 0] * X[:, 1] / (X[:, 2] ** 2 + 1), x0 * x1 / (x2**2 + 1)),
    (2, lambda X: torch.cos(X[:, 0]) * X[:, 1] ** 2, sympy.cos(x0) * x1**2),
    (3, lambda X: X[:, 0] + X[:, 1] * X[:, 2], x0 + x1 * x2),
    (2, lambda X: 1 / (1 + X[:, 0] ** 2) + X[:, 1], 1 / (1 + x0**2) + x1),
    (2, lambda X: torch.sqrt(X[:, 0] + 3) * X[:, 1], sympy.sqrt(x0 + 3) * x1),
]
RULES = ["auto", "best", "score", "accuracy"]


def fronts():
    for li, (d, f, truth) in enumerate(LAWS):
        torch.manual_seed(li)
        X = torch.rand(4096, d) * 4 - 2
        net = mlp(d, 1)
        mse = train(net, X, f(X)[:, None], seed=li)
        with torch.no_grad():
            T = net(X).numpy()[:, 0]
        Xn = X.numpy().astype(float)
        syms = [sympy.Symbol(f"x{i}", real=True) for i in range(d)]
        for seed in range(2):
            t0 = time.perf_counter()
            texts = sfx.Operon(max_rows=1500, population_size=500, generations=100).search(
                Xn[:3000], T[:3000], [s.name for s in syms], seed)
            front, _ = build_front(texts, syms, Xn[:3000], T[:3000], Xn[3000:], T[3000:], Xn)
            hits = [equivalent(e.expr, truth) for e in front]
            yield truth, seed, mse, front, hits, time.perf_counter() - t0


def main():
    runs = list(fronts())
    usable = [r for r in runs if any(r[4])]
    print(f"{len(runs)} runs; the law is on the front in {len(usable)}")
    print("| rule | picks the law |\n|---|---|")
    for rule in RULES + ["auto + noise"]:
        n = 0
        for truth, seed, mse, front, hits, _ in usable:
            f = ParetoFront("r", "y", list(front))
            _select.apply(f, rule.split(" ")[0], noise=mse if "noise" in rule else None)
            n += hits[f.chosen]
        print(f"| {rule} | {n}/{len(usable)} |")
    print("\n| auto rate | picks the law |\n|---|---|")
    default = _select.AUTO_RATE
    for rate in (0.2, 0.3, 0.35, 0.4, 0.5, 0.75, 1.0):
        _select.AUTO_RATE = rate
        n = 0
        for *_, front, hits, _ in usable:
            f = ParetoFront("r", "y", list(front))
            _select.apply(f, "auto")
            n += hits[f.chosen]
        print(f"| {rate} | {n}/{len(usable)} |")
    _select.AUTO_RATE = default


if __name__ == "__main__":
    main()
