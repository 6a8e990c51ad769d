"""Label-free ways to find the law on a front, measured on the Feynman suite.

    python benchmarks/feynman_options.py collect --out opts.json   # the searches (~1 h, 2 cores)
    python benchmarks/feynman_options.py analyze opts.json         # every option, offline

``collect`` records, per law of the suite (the networks of ``feynman_fidelity.py``), the raw
candidate equations of several independent searches with the default engine:

* ``random``: ``RESTARTS`` searches on the rows ``convert`` trains on (a random 75%), with the
  seeds ``convert`` gives restarts 0, 1, 2, ...;
* ``edge``: one search on the interior rows only; the rows with any variable outside its
  10-90% quantile range are held out. Equations that fit the network's error inside the domain
  extrapolate it to the edge, where the network's error is something else.

``analyze`` rebuilds the fronts from those candidates exactly as ``convert`` does and counts,
per option, how often the chosen equation is the law (recovered out of range, and in exact form;
see ``feynman_fidelity.py``). The options are selection rules on the random-split front (the
rules of ``search.select`` and candidates for a new default), fronts merged over 1..RESTARTS restarts,
and selection on the edge split.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import sympy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import feynman_fidelity as fid  # noqa: E402
import feynman_suite  # noqa: E402

import symtorch_fx as sfx  # noqa: E402
from symtorch_fx.api import _job_seed  # noqa: E402
from symtorch_fx.expr.equations import scores  # noqa: E402
from symtorch_fx.search import select as _select  # noqa: E402
from symtorch_fx.search.distill import build_front, pareto, split_rows  # noqa: E402

RESTARTS = 3
EDGE_QUANTILE = 0.10


def recorded(law, index: int):
    """(X, Y, info): what ``sfx.prepare`` records from the law's trained network."""
    model, info = fid.train_net(law, index)
    X, _ = fid.law_data(law, index)
    prepared = sfx.prepare(model, ["net"])
    sfx.run(prepared, X.split(2048))
    rec = prepared._sfx_prepared.recorders["net"]
    Xr, Yr = rec.data()
    return Xr, Yr[:, 0], info


def edge_rows(X: np.ndarray, q: float = EDGE_QUANTILE) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.quantile(X, q, axis=0), np.quantile(X, 1 - q, axis=0)
    edge = ((X < lo) | (X > hi)).any(1)
    return np.flatnonzero(~edge), np.flatnonzero(edge)


def _search(args):
    X, y, names, seed, settings = args
    t0 = time.perf_counter()
    texts = sfx.Operon(**settings).search(X, y, names, seed)
    return texts, time.perf_counter() - t0


def collect(out: Path, laws_wanted, workers: int, restarts: int, settings: dict) -> None:
    torch.set_num_threads(1)
    laws, _ = feynman_suite.load()
    done = json.loads(out.read_text())["records"] if out.exists() else []
    have = {r["law"] for r in done}
    ctx = multiprocessing.get_context("fork")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for i, law in enumerate(laws):
            if law.name in have or (laws_wanted and law.name not in laws_wanted):
                continue
            X, y, info = recorded(law, i)
            names = [f"x{j}" for j in range(X.shape[1])]
            train, _ = split_rows(len(X), 0.25, 0)
            inner, _ = edge_rows(X)
            tasks = [(X[train], y[train], names, _job_seed(0, 0, 0, r), settings)
                     for r in range(restarts)]
            tasks.append((X[inner], y[inner], names, _job_seed(0, 0, 0, 0), settings))
            results = list(pool.map(_search, tasks))
            rec = {"law": law.name, "index": i, "net": info,
                   "settings": settings,
                   "random": [r[0] for r in results[:restarts]],
                   "random_seconds": [r[1] for r in results[:restarts]],
                   "edge": results[-1][0], "edge_seconds": results[-1][1]}
            done.append(rec)
            out.write_text(json.dumps({"records": done}))
            print(f"{law.name:10s} searches {[round(r[1]) for r in results]} s", flush=True)


# ----------------------------------------------------------------------------------------------
# analysis


def scored_candidates(texts, X, y, train, val):
    """Every candidate of ``texts`` scored as ``convert`` scores them (before the front)."""
    syms = [sympy.Symbol(f"x{j}", real=True) for j in range(X.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, scored = build_front(texts, syms, X[train], y[train], X[val], y[val], X)
    return scored


def front_of(texts, X, y, train, val):
    return pareto(scored_candidates(texts, X, y, train, val))


class Scorer:
    """Caches the verdict (recovered, exact) per equation text."""

    def __init__(self, law):
        self.law, self.cache = law, {}

    def __call__(self, eq) -> tuple[bool, bool]:
        key = eq.text()
        if key not in self.cache:
            s = fid.score(eq.expr, self.law)
            self.cache[key] = (s["recovered"], s["exact"])
        return self.cache[key]



def analyze(path: Path, rules: dict, dump: Path | None = None) -> None:
    records = json.loads(path.read_text())["records"]
    laws, _ = feynman_suite.load()
    counts: dict[str, list[int]] = {}
    rows = []
    for rec in records:
        law = laws[rec["index"]]
        X, y, _ = recorded(law, rec["index"])
        train, val = split_rows(len(X), 0.25, 0)
        score = Scorer(law)
        # each restart's candidates are scored once; merged fronts are fronts of their union
        per_restart = [scored_candidates(t, X, y, train, val) for t in rec["random"]]
        fronts = {f"random x{k}": pareto(sum(per_restart[:k], []))
                  for k in range(1, len(per_restart) + 1)}
        inner, edge = edge_rows(X)
        fronts["edge"] = front_of(rec["edge"], X, y, inner, edge)
        row = {"law": law.name}
        for fname, front in fronts.items():
            on = [score(e) for e in front]
            key = f"{fname}: on the front"
            c = counts.setdefault(key, [0, 0])
            c[0] += any(r for r, _ in on)
            c[1] += any(x for _, x in on)
            for rname, rule in rules.items():
                if fname == "edge" and rname not in EDGE_RULES:
                    continue
                i = rule(front, rec) if callable(rule) else fid.choose(front, rule)
                r, x = score(front[i])
                c = counts.setdefault(f"{fname}: {rname}", [0, 0])
                c[0] += r
                c[1] += x
                row[f"{fname}: {rname}"] = "X" if x else ("r" if r else "-")
        for fname, front in fronts.items():
            row[f"{fname}: front"] = [
                [e.complexity, e.loss, e.text(4), *score(e)] for e in front]
        rows.append(row)
        print(law.name, " ".join(f"{k}={v}" for k, v in row.items()
                                 if k.startswith("random x1") and isinstance(v, str)), flush=True)
    if dump:
        dump.write_text(json.dumps(rows, indent=1))
    n = len(records)
    print(f"\n| option | recovered | exact form |  (of {n})\n|---|---|---|")
    for k, (r, x) in counts.items():
        print(f"| {k} | {r} | {x} |")


# candidate rules on a front (list of Equations, simplest first) --------------------------------


def by_rate(rate, gain=None):
    """``auto`` with another rate (and, when given, another ``AUTO_GAIN``)."""
    def rule(front, rec):
        saved = _select.AUTO_RATE, _select.AUTO_GAIN
        _select.AUTO_RATE = rate
        _select.AUTO_GAIN = saved[1] if gain is None else gain
        try:
            return fid.choose(front, "auto")
        finally:
            _select.AUTO_RATE, _select.AUTO_GAIN = saved
    return rule


def with_noise(front, rec):
    return fid.choose(front, "auto", rec["net"]["mse"])


def knee(front, rec):
    """The equation after which log-loss falls least per node, relative to before it."""
    logs = [math.log(max(e.loss, 1e-300)) for e in front]
    cx = [e.complexity for e in front]
    best, arg = -math.inf, len(front) - 1
    for i in range(1, len(front)):
        before = (logs[0] - logs[i]) / max(cx[i] - cx[0], 1)
        after = max(((logs[i] - logs[j]) / (cx[j] - cx[i]) for j in range(i + 1, len(front))),
                    default=0.0)
        if before - after > best:
            best, arg = before - after, i
    return arg


def knee_floor(front, rec):
    """The knee's loss (largest score) as the network's floor, then the rule for a known floor."""
    sc = scores(front)
    k = max(range(len(front)), key=lambda i: sc[i])
    return fid.choose(front, "auto", front[k].loss)


def biggest_drop(front, rec):
    """The equation after the largest single drop of log-loss (ties: the more complex)."""
    drops = [0.0] + [math.log(a.loss / b.loss) for a, b in zip(front, front[1:])]
    top = max(drops)
    return max(i for i, d in enumerate(drops) if d >= 0.9 * top)


RULES = {"auto": "auto", "best": "best", "score": "score", "accuracy": "accuracy",
         "labels": with_noise, "knee": knee, "knee floor": knee_floor,
         "biggest drop": biggest_drop,
         "auto without AUTO_GAIN": by_rate(_select.AUTO_RATE, math.inf),
         **{f"rate {r}": by_rate(r) for r in (0.1, 0.2, 0.3, 1.0)}}
EDGE_RULES = {"auto", "accuracy", "knee", "rate 0.2", "labels"}


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--laws", nargs="*")
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--restarts", type=int, default=RESTARTS)
    c.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    a = sub.add_parser("analyze")
    a.add_argument("path", type=Path)
    a.add_argument("--dump", type=Path, help="write per-law fronts and verdicts (JSON) here")
    args = p.parse_args()
    if args.cmd == "collect":
        settings = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
        collect(args.out, args.laws, args.workers, args.restarts, settings)
    else:
        analyze(args.path, RULES, args.dump)


if __name__ == "__main__":
    main()
