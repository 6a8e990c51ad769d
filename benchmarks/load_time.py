"""How long ``sfx.load`` takes on large and hostile files (issue 17: any file up to 1 MB loads or
is refused in under a second).

    python benchmarks/load_time.py [--seeds 0 1 2]

For each seed it writes four ~1 MB files on a one-region model: many short equations (a big
front), one 40,000-term equation, deeply nested number-only parts, and a file of ``9^9^9``
powers, and two whose chosen equation (built as sympy at load) is 200, 500 or 1,500 function
calls; then
times ``sfx.load`` (best of 3) and, for the first, building every equation as
sympy (what loading cost before the front was checked and built lazily).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import tempfile
import time

import torch
import torch.nn as nn

import symtorch_fx as sfx
from symtorch_fx.expr.grammar import parse, variable


class Law(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        return (0.5 + 2 * x[..., 0] * x[..., 1]).unsqueeze(-1)


class Host(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Law()

    def forward(self, x):
        return self.body(x)


class Fixed:
    name, parallel_jobs = "fixed", False

    def check(self):
        pass

    def search(self, X, y, variables, seed, weights=None):
        return ["0.5 + 2*x0*x1"]


def files(doc: dict, seed: int) -> dict[str, dict]:
    rng = random.Random(seed)

    def term():
        f = rng.choice(["sin", "exp", "cos", "sqrtabs", "log1p", "tanh"])
        return f"{rng.uniform(-3, 3):.6f}*{f}({rng.uniform(-2, 2):.5f}*x0 + x1)"

    makers = {
        "many equations": lambda: " + ".join(term() for _ in range(rng.randint(1, 5))),
        "one 40k-term equation": lambda: " + ".join(term() for _ in range(40_000)),
        "nested number-only parts": lambda: "x0*" + "sin(" * 90 + "1.5" + ")" * 90,
        "huge powers": lambda: "x0 + 9^9^9",
    }
    out = {}
    for kind, make in makers.items():
        d = copy.deepcopy(doc)
        front = d["regions"][0]["fronts"][0]
        eqs, size = [], 0
        while size < 1_000_000:
            text = make()
            eqs.append({"expr": text, "complexity": 9, "loss": 0.5})
            size += len(text) + 50
        front["equations"] = eqs + front["equations"]
        front["chosen"] = len(front["equations"]) - 1
        out[kind] = d
    for n in (200, 500, 1_500):  # the one equation built at load: within the budget, and over
        d = copy.deepcopy(doc)
        d["regions"][0]["fronts"][0]["equations"] = [
            {"expr": " + ".join(term() for _ in range(n)), "loss": 0.1}]
        d["regions"][0]["fronts"][0]["chosen"] = 0
        out[f"a chosen equation of {n:,} function calls"] = d
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    X = torch.linspace(-1, 1, 512).reshape(256, 2)
    sym = sfx.compile(Host(), ["body"], [X], engine=Fixed(), selection="accuracy", restarts=1,
                      transforms=(), prune=False, executor="inline", progress=False)
    d = tempfile.mkdtemp()
    base = os.path.join(d, "base.sfx")
    sfx.save(sym, base)
    doc = json.load(open(base))
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}")
    print("| seed | file | bytes | equations | load (s) | outcome |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        for kind, fdoc in files(doc, seed).items():
            path = os.path.join(d, "f.sfx")
            with open(path, "w") as fh:
                json.dump(fdoc, fh)
            best, outcome = float("inf"), ""
            for _ in range(3):
                t0 = time.perf_counter()
                try:
                    sfx.load(path, Host())
                    outcome = "loaded"
                except sfx.SerializationError as e:
                    outcome = "refused: " + str(e).split(": ", 2)[-1][:60]
                best = min(best, time.perf_counter() - t0)
            n = len(fdoc["regions"][0]["fronts"][0]["equations"])
            print(f"| {seed} | {kind} | {os.path.getsize(path)} | {n} | {best:.3f} | {outcome} |")
        eqs = files(doc, seed)["many equations"]["regions"][0]["fronts"][0]["equations"]
        symbols = {"x0": variable("x0"), "x1": variable("x1")}
        t0 = time.perf_counter()
        for q in eqs:
            parse(q["expr"], symbols)
        print(f"| {seed} | many equations, every one built as sympy | | {len(eqs)} | "
              f"{time.perf_counter() - t0:.2f} | (the cost before lazy fronts) |")


if __name__ == "__main__":
    main()
