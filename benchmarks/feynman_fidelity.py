"""Fidelity benchmark: does distillation give back the law a network learned?

    python benchmarks/feynman_fidelity.py                  # the whole suite, default settings
    python benchmarks/feynman_fidelity.py --laws I.12.4 II.8.7 --restarts 2 --out r.json
    python benchmarks/feynman_fidelity.py --rescore r.json   # re-apply rules/scoring, no search

For every law of the Feynman suite (``feynman_suite.py``: the 35 laws of 1-3 variables by
default, all 77 of 1-9 variables with ``--max-variables 9``), with fixed seeds:

1. sample 8192 points uniformly in the database's ranges and train an MLP on them
   (d -> 64 -> 64 -> 1, SiLU, standardized inputs and outputs inside the model, Adam, 8000 steps of 512 rows);
2. distill the trained model from its own outputs on those points with ``sfx.compile`` and the
   default settings (engine, budget, selection), timing it;
3. re-apply every selection rule to the *same* fronts and score each choice against the law:
   * recovered: RMS error against the truth on out-of-range points (each variable drawn from
     [low, high + (high - low) / 2], at least one beyond high) below 3% of the truth's standard
     deviation there;
   * exact form: recovered, and (see ``exact_form``) after constants whose removal moves the
     equation by less than 0.5% of the truth's spread in all are dropped ("rounding to zero"),
     refitting the remaining constants to the truth makes the equation identical to it
     (relative RMS < 1e-6 on in- and out-of-range points) while moving it less than 1%, and
     sympy confirms ``simplify(refit - truth) == 0`` once those constants are rounded to closed
     forms (rationals, multiples of powers of pi). A bloated equation either keeps a term the
     truth lacks or cannot be refit onto it; both fail. The refit accepts constants up to 1%
     off (what the network's error leaves in them);
   * strict (see ``strict_form``): exact form with no refit: after the same rounding to zero,
     every constant *as found* is within 1% of a closed form (denominator <= 12), and with those
     forms sympy finds the equation equal to the law.

Networks are cached (``$FEYNMAN_CACHE/feynman_nets``, default ``~/.cache/symtorch_fx``); the
per-law records (fronts, choices, metrics, timings) go to ``--out`` as JSON, and a table to
stdout. ``--set key=value`` overrides an ``sfx.Operon`` setting to measure other budgets.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sympy
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import feynman_suite  # noqa: E402

import symtorch_fx as sfx  # noqa: E402
from symtorch_fx import api  # noqa: E402
from symtorch_fx.expr.equations import Equation, ParetoFront  # noqa: E402
from symtorch_fx.expr.grammar import parse  # noqa: E402
from symtorch_fx.search import select as _select  # noqa: E402
from symtorch_fx.search.transforms import TRANSFORMS  # noqa: E402

N_POINTS = 8192
STEPS = 8000
OOR_TOL = 0.03  # recovered: out-of-range RMS error < 3% of the truth's spread
PRUNE_TOL = 0.01  # constants whose removal moves the equation < 1% of the spread are zero
EXACT_TOL = 1e-6  # exact form: refit to the truth within 1e-6 (relative RMS)
SYMPY_SECONDS = 60  # the longest sympy may take to confirm an exact form


# ----------------------------------------------------------------------------------------------
# the networks


class Standardized(nn.Module):
    """An MLP on standardized inputs and outputs; maps the law's units to the law's units."""

    def __init__(self, d: int, x_mean, x_std, y_mean, y_std):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(),
                                 nn.Linear(64, 1))
        self.register_buffer("x_mean", torch.as_tensor(x_mean, dtype=torch.float32))
        self.register_buffer("x_std", torch.as_tensor(x_std, dtype=torch.float32))
        self.register_buffer("y_mean", torch.as_tensor(y_mean, dtype=torch.float32))
        self.register_buffer("y_std", torch.as_tensor(y_std, dtype=torch.float32))

    def forward(self, x):
        return self.mlp((x - self.x_mean) / self.x_std) * self.y_std + self.y_mean


class Model(nn.Module):
    """What the user holds: the trained network as one submodule (the distillation target)."""

    def __init__(self, net: Standardized):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


#: the grammar's functions that sympy does not know (the logit transform gives sigmoid)
_OWN = {"sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v))}


def evaluate(expr: sympy.Expr, symbols, X: np.ndarray) -> np.ndarray:
    f = sympy.lambdify(symbols, expr, [_OWN, "numpy"])
    with np.errstate(all="ignore"):
        out = np.asarray(f(*X.T))
    if np.iscomplexobj(out):  # e.g. a constant folded under a root: no real value there
        out = np.where(out.imag == 0, out.real, np.nan)
    out = out.astype(np.float64)
    return out if out.shape == (len(X),) else np.broadcast_to(out, (len(X),)).copy()


def sample(law, n: int, seed: int, out_of_range: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo, hi = np.array(law.low), np.array(law.high)
    if not out_of_range:
        return rng.uniform(lo, hi, (n, len(lo)))
    rows = []
    while sum(len(r) for r in rows) < n:
        X = rng.uniform(lo, hi + (hi - lo) / 2, (4 * n, len(lo)))
        rows.append(X[(X > hi).any(1)])
    return np.concatenate(rows)[:n]


@functools.lru_cache(maxsize=2)
def law_data(law, index: int, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The training rows and labels; ``noise``: Gaussian label noise of that fraction of the
    labels' standard deviation (the issue's noisy variant: 0.01), fixed per law."""
    X = sample(law, N_POINTS, seed=1000 + index)
    Y = evaluate(law.expr, law.symbols, X)
    if noise:
        Y = Y + noise * float(np.std(Y)) * np.random.default_rng(5000 + index).normal(
            size=Y.shape)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)[:, None]


def train_net(law, index: int, cache: Path | None = None,
              noise: float = 0.0) -> tuple[Model, dict]:
    """The law's network (trained once, then read from ``cache``, by default
    ``feynman_suite.cache_dir() / "feynman_nets"``) and its error against its labels (with
    ``noise``, the noisy labels it was trained on: what ``labels=`` measures)."""
    X, Y = law_data(law, index, noise)
    cache = feynman_suite.cache_dir() / "feynman_nets" if cache is None else cache
    path = cache / (f"{law.name}-{index}.pt" if not noise else f"{law.name}-{index}-noise{noise}.pt")
    stats = (X.shape[1], X.mean(0), X.std(0), Y.mean(0), Y.std(0))
    if path.exists():
        net = Standardized(*stats)
        saved = torch.load(path, weights_only=True)
        net.load_state_dict(saved["state"])
        info = saved["info"]
    else:
        torch.manual_seed(index)
        net = Standardized(*stats)
        g = torch.Generator().manual_seed(index)
        opt = torch.optim.Adam(net.mlp.parameters(), 3e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
        Z = (Y - net.y_mean) / net.y_std
        t0 = time.perf_counter()
        for _ in range(STEPS):
            idx = torch.randint(0, len(X), (512,), generator=g)
            loss = ((net.mlp((X[idx] - net.x_mean) / net.x_std) - Z[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        info = {"train_seconds": time.perf_counter() - t0}
        cache.mkdir(parents=True, exist_ok=True)
        torch.save({"state": net.state_dict(), "info": info}, path)
    with torch.no_grad():
        mse = float(((net(X) - Y) ** 2).mean())
    info = dict(info, mse=mse, nmse=mse / float(Y.var()))
    return Model(net).eval(), info


# ----------------------------------------------------------------------------------------------
# scoring an equation against the law


@functools.lru_cache(maxsize=8)
def _out_of_range_points(law, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-range points where the law is finite, and the law there (shared by every
    equation scored against this law)."""
    X = sample(law, 4000, seed, out_of_range=True)
    t = evaluate(law.expr, law.symbols, X)
    ok = np.isfinite(t)
    return X[ok], t[ok]


@functools.lru_cache(maxsize=8)
def _exact_form_points(law, seed: int):
    """(in-range points, in- and out-of-range points where the law is finite, the law there,
    the law's spread in range): shared by every equation scored against this law."""
    X_in = sample(law, 2000, seed)
    X = np.concatenate([X_in, sample(law, 2000, seed + 1, out_of_range=True)])
    truth = evaluate(law.expr, law.symbols, X)
    ok = np.isfinite(truth)
    spread = float(np.std(truth[:len(X_in)]))
    return X_in, X[ok], truth[ok], spread


def out_of_range_error(expr, law, seed: int = 7) -> float:
    X, t = _out_of_range_points(law, seed)
    pred = evaluate(expr, law.symbols, X)
    err = math.sqrt(float(np.mean((pred - t) ** 2))) / float(np.std(t))
    return err if math.isfinite(err) else math.inf


def _closed_form(v: float) -> sympy.Expr:
    """A rounded constant: a simple rational, or a rational multiple of a power of pi."""
    for basis in (sympy.Integer(1), sympy.pi, 1 / sympy.pi, sympy.pi**2, 1 / sympy.pi**2,
                  sympy.sqrt(sympy.pi), 1 / sympy.sqrt(2 * sympy.pi)):
        r = sympy.Rational(v / float(basis)).limit_denominator(64)
        if r != 0 and abs(float(r * basis) - v) <= 1e-7 * abs(v):
            return r * basis
    return sympy.Float(v)


def _moved(e, syms, X_in, ref, spread) -> float:
    """How far ``e`` is from the values ``ref`` on ``X_in``: RMS over ``spread``."""
    if e.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        return math.inf
    d = evaluate(e, syms, X_in) - ref
    return math.sqrt(float(np.mean(d * d))) / spread if np.all(np.isfinite(d)) else math.inf


def _rounded_to_zero(e, syms, X_in, spread, tol):
    """``e`` with the constants it does not need set to 0 ("rounding to zero"): greedily, the
    one whose removal moves it least first, as long as the equation stays within ``tol`` of
    the spread of where it started. The one rule of both :func:`exact_form` and
    :func:`strict_form`."""
    ref = evaluate(e, syms, X_in)
    dist = {c: _moved(e.xreplace({c: sympy.S.Zero}), syms, X_in, ref, spread)
            for c in e.atoms(sympy.Float)}
    changed = False
    for c in sorted(dist, key=dist.get):
        trial = e.xreplace({c: sympy.S.Zero})
        if (_moved(trial, syms, X_in, ref, spread) if changed else dist[c]) < tol:
            e, changed = trial, True
    return e


def exact_form(expr, law, seed: int = 11) -> tuple[bool, str]:
    """(whether ``expr`` has the law's exact form, the law as read off it, or why not).

    1. Constants the equation does not need are rounded to zero: greedily, as long as the
       equation moves by less than ``PRUNE_TOL / 2`` of the truth's spread in all.
    2. The remaining constants are refit to the truth (Levenberg-Marquardt from their values, on
       in- and out-of-range points). The form is the law's when the refit equation equals the
       truth (relative RMS < ``EXACT_TOL``) and moved less than ``PRUNE_TOL`` from the equation
       found: a refit may not delete a term that mattered.
    3. sympy confirms it: the refit equation, simplified, with its constants rounded to closed
       forms (simple rationals, rational multiples of powers of pi), minus the law is 0.
    """
    from scipy.optimize import least_squares

    syms = law.symbols
    X_in, X, truth, spread = _exact_form_points(law, seed)
    found = evaluate(expr, syms, X_in)

    def moved(e):
        return _moved(e, syms, X_in, found, spread)

    cur = _rounded_to_zero(expr, syms, X_in, spread, PRUNE_TOL / 2)
    consts = sorted(cur.atoms(sympy.Float), key=str)
    params = sympy.symbols(f"p0:{len(consts)}")
    template = cur.xreplace(dict(zip(consts, params)))
    f = sympy.lambdify(list(params) + syms, template, [_OWN, "numpy"])

    def resid(p):
        with np.errstate(all="ignore"):
            r = (np.broadcast_to(f(*p, *X.T), truth.shape) - truth) / spread
        return np.where(np.isfinite(r), r, 1e6)

    p = np.array([float(c) for c in consts])
    if len(p):
        p = least_squares(resid, p, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15,
                          max_nfev=4000).x
    rel = math.sqrt(float(np.mean(resid(p) ** 2)))
    if not rel < EXACT_TOL:
        return False, f"the closest equation of this form is {rel:.1e} (relative RMS) off"
    # 10 digits: constants a degenerate form fits to the same value become equal, so that
    # simplify can merge them (a*x/sqrt(b - b*y) with a = sqrt(b) is x/sqrt(1 - y))
    refit = template.xreplace({q: sympy.Float(f"{v:.10g}", 15) for q, v in zip(params, p)})
    shift = moved(refit)
    if shift >= PRUNE_TOL:
        return False, f"only a refit that moves it {shift:.1%} of the spread matches"
    closed = sympy.simplify(_rounded_to_zero(refit, syms, X_in, spread, 1e-9))
    closed = closed.xreplace({c: _closed_form(float(c)) for c in closed.atoms(sympy.Float)})
    # the database's variables are positive (or, for angles, non-negative): say so to sympy
    pos = {x: sympy.Symbol(x.name, positive=True) for x in syms}
    a, b = closed.xreplace(pos), law.expr.xreplace(pos)
    # (equal squares suffice: the refit already matches the truth numerically, sign included;
    # simplify leaves sqrt(4 x + (x - 1)^2) alone, and factoring the root's argument gives x + 1)
    confirmed = _sympy_zero([a - b, a / b - 1, a**2 - b**2, _factored_roots(a) - b],
                            SYMPY_SECONDS)
    if confirmed:
        return True, str(closed)
    why = "could not confirm" if confirmed is False else f"ran out of {SYMPY_SECONDS} s on"
    return False, f"numerically the law, but sympy {why} the refit {closed}"


def _factored_roots(e: sympy.Expr) -> sympy.Expr:
    """``e`` with the argument of each fractional power factored."""
    return e.replace(lambda n: n.is_Pow and not n.exp.is_Integer,
                     lambda n: sympy.factor(n.base) ** n.exp)


#: strict form: a constant as found must be this close (relative) to a closed form
STRICT_TOL = 0.01


def _nearest_closed_form(v: float) -> sympy.Expr | None:
    """The closed form (rational with denominator <= 12, times 1, pi^+-1, pi^+-2, sqrt(pi) or
    1/sqrt(2 pi)) nearest to ``v`` in relative terms, if within ``STRICT_TOL``."""
    best = None
    for basis in (sympy.Integer(1), sympy.pi, 1 / sympy.pi, sympy.pi**2, 1 / sympy.pi**2,
                  sympy.sqrt(sympy.pi), 1 / sympy.sqrt(2 * sympy.pi)):
        r = sympy.Rational(v / float(basis)).limit_denominator(12)
        if r == 0:
            continue
        err = abs(float(r * basis) - v) / abs(v)
        if err <= STRICT_TOL and (best is None or err < best[0]):
            best = (err, r * basis)
    return None if best is None else best[1]


def strict_form(expr, law, seed: int = 11) -> tuple[bool, str]:
    """(whether ``expr`` is the law with its constants as found, and why not): the constants
    whose removal moves it less than ``PRUNE_TOL / 2`` of the truth's spread are dropped (the
    same rule as :func:`exact_form`'s, :func:`_rounded_to_zero`), every other one is replaced
    by the nearest closed form within ``STRICT_TOL`` (1%), and sympy must find the result
    equal to the law. No refit."""
    syms = law.symbols
    X_in, _, _, spread = _exact_form_points(law, seed)
    e = _rounded_to_zero(expr, syms, X_in, spread, PRUNE_TOL / 2)
    snaps = {}
    for c in e.atoms(sympy.Float):
        closed = _nearest_closed_form(float(c))
        if closed is None:
            return False, f"the constant {float(c):.6g} is not within 1% of a closed form"
        snaps[c] = closed
    pos = {x: sympy.Symbol(x.name, positive=True) for x in syms}
    a, b = e.xreplace(snaps).xreplace(pos), law.expr.xreplace(pos)
    confirmed = _sympy_zero([a - b, a / b - 1], SYMPY_SECONDS)
    return bool(confirmed), "" if confirmed else f"{e.xreplace(snaps)} is not the law"


def _simplifies_to_zero(exprs, conn) -> None:
    conn.send(any(sympy.simplify(t) == 0 for t in exprs))


def _sympy_zero(exprs, seconds: float) -> bool | None:
    """Whether one of ``exprs`` simplifies to 0; None when sympy takes longer than ``seconds``
    (``simplify`` can run for many minutes on some trigonometric forms: it runs in a child
    process that is stopped then)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_simplifies_to_zero, args=(exprs, send), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(seconds):
            return None
        try:
            return recv.recv()
        except EOFError:  # sympy raised in the child: not confirmed
            return False
    finally:
        proc.kill()
        proc.join()


# ----------------------------------------------------------------------------------------------
# the run


def distill(model: Model, X: torch.Tensor, restarts: int | None, engine_kw: dict,
            seed: int = 0, prune: bool = True, decompose: bool = True):
    """(symbolic model, wall seconds, CPU seconds of this process and its workers)."""
    cpu0, t0 = _cpu(), time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sym = sfx.compile(model, targets=["net"], sample_inputs=X.split(2048),
                          engine=sfx.Operon(**engine_kw), restarts=restarts, seed=seed,
                          prune=prune, decompose=decompose, progress=False)
    return sym, time.perf_counter() - t0, _cpu() - cpu0


def job_records(front) -> list[dict]:
    """Each search's candidates (engine equations and pruned forms apart; the front's
    ``info["searches"]``), so fronts without some searches, or without pruning, can be rebuilt
    later (``--ablate``)."""
    return [{"transform": s["transform"], "restart": i, "seed": s["seed"],
             "seconds": s["seconds"], "monomial": s["monomial"], "texts": s["equations"],
             "pruned": s["pruned"],
             "on_front": s["on_front"], "part": s.get("part"),
             "variables": s.get("variables"), "dimensionless": s.get("dimensionless", False),
             "error": s.get("error"), "skipped": s.get("skipped")}
            for i, s in enumerate(front.info["searches"])]


def _cpu() -> float:
    """CPU seconds used so far by this process and its finished (joined) worker processes."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def choose(front, rule, noise=None, estimate=None) -> int:
    """The index ``rule`` picks on ``front`` (a sequence of equations, simplest first), with
    the decomposition's estimate of the network's error when there is one (as ``convert``)."""
    info = {} if estimate is None else {"network_error_estimate": estimate}
    f = ParetoFront("net", "y0", list(front), info=info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _select.apply(f, rule, noise)
    return f.chosen


@functools.lru_cache(maxsize=4096)
def _score_once(expr, law) -> dict:
    """``score``, once per equation (the variants of ``--ablate`` share most picks)."""
    return score(expr, law)


def score(expr, law) -> dict:
    """recovered: out of range within ``OOR_TOL``; exact: recovered and of the law's form."""
    oor = out_of_range_error(expr, law)
    if oor >= OOR_TOL:
        return {"oor": oor, "recovered": False, "exact": False, "strict": False,
                "why": "not recovered"}
    exact, why = exact_form(expr, law)
    strict = exact and strict_form(expr, law)[0]
    return {"oor": oor, "recovered": True, "exact": exact, "strict": strict, "why": why}


def run_law(law, index: int, args, engine_kw: dict) -> dict:
    noise = getattr(args, "noise", 0.0)
    model, info = train_net(law, index, noise=noise)
    X, _ = law_data(law, index, noise)
    load = os.getloadavg()[0]
    sym, seconds, cpu = distill(model, X, args.restarts, engine_kw, args.seed,
                                prune=not args.no_prune,
                                decompose=not getattr(args, "no_decompose", False))
    front = sym.equations["net"][0]
    rec = {
        "law": law.name, "index": index, "formula": law.formula, "d": len(law.variables),
        "net": info, "seconds": seconds, "cpu_seconds": cpu, "load": load,
        "restarts": args.restarts, "seed": args.seed, "prune": not args.no_prune,
        "noise": noise,
        "front": _front_record(front), "jobs": job_records(front),
        "decomposition": front.info.get("decomposition"),
        "composed": front.info.get("composed", []),
        # the output over the groups its scalings leave (search.scaling), composed
        "scaling": front.info.get("scaling"),
        # what auto weighs besides the front (see select.apply), and the library's own pick:
        # the rules re-applied by ``judge`` must give the same
        "network_error_estimate": front.info.get("network_error_estimate"),
        "chosen": front.chosen,
    }
    return judge(rec, law)


def estimate_of(rec: dict, law) -> float | None:
    """``front.info["network_error_estimate"]`` for a record made before it was recorded:
    the decomposition's tests run again on the cached network, as ``convert`` ran them (the
    same rows, held-out split and seed; deterministic). None when the run had no
    decomposition (``decompose=False``, or the oracle was refused). A warning when today's
    decomposition is not the one recorded (a record of older code)."""
    from symtorch_fx.search.distill import split_rows

    if not rec.get("decomposition"):
        return None
    torch.set_num_threads(1)  # as the run

    model, _ = train_net(law, rec["index"], noise=rec.get("noise", 0.0))
    X, _ = law_data(law, rec["index"], rec.get("noise", 0.0))
    with torch.no_grad():
        Y = model(X).double().numpy()
    X = X.double().numpy()

    def oracle(rows):
        with torch.no_grad():
            return model(torch.as_tensor(rows, dtype=torch.float32)).double().numpy()

    seed = rec.get("seed", 0)
    train, _ = split_rows(len(X), 0.25, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = api._decompose(oracle, 0, X, Y[:, 0], train, None, api._job_seed(seed, 0, 0, 0))
    if plan is None:
        return None
    recorded = rec["decomposition"].split(" (parts not searched")[0]
    now = plan[0].describe([f"x{i}" for i in range(X.shape[1])])
    if now != recorded:
        warnings.warn(f"{rec['law']}: the decomposition is {now} today, {recorded} in the "
                      "record; its estimate may differ from the run's")
    return api._network_error_estimate(plan[0], Y[train, 0])


def _front_record(front) -> list[dict]:
    return [{"text": e.text(), "complexity": e.complexity, "loss": e.loss, "finite": e.finite}
            for e in front]


#: the output transforms issue 19 added (item 4)
NEW_TRANSFORMS = ("logit", "inverse")


@dataclass(frozen=True)
class Variant:
    """A variant ``--ablate`` rebuilds from a run's recorded candidates: which of the output's
    own searches stay (``job["repeat"]``: how many earlier searches of the output had the same
    transform) and whether with their pruned forms, whether the decomposition's composed
    candidates stay (issue 19, items 1-2; without them there is no estimate of the network's
    error either), and whether ``auto`` keeps its guards for a poor front (item 6: the
    estimate, the explained-variance guard)."""

    keep: Callable[[dict], bool] = lambda job: True
    pruned: bool = True
    composed: bool | str = True  # "gated": only where convert's rule would search the parts
    guards: bool = True
    scaled: bool = True  # the candidates over the groups of the scalings found (search.scaling)
    # the recorded composed candidates also offered cancelled as today's code cancels them
    # (api._cancelled): a change to the cancelling, checked without running the searches
    recancelled: bool = False


ABLATIONS = {
    "as run": Variant(),
    "no transforms": Variant(keep=lambda job: job["transform"] == "identity"),
    "no pruning": Variant(pruned=False),
    "neither": Variant(keep=lambda job: job["transform"] == "identity", pruned=False),
    "one search per transform": Variant(keep=lambda job: job["transform"] == "identity"
                                        or job["repeat"] == 0),
    "no scaled searches": Variant(keep=lambda job: not TRANSFORMS[job["transform"]].scaled),
    "no decomposition": Variant(composed=False),
    # of a run with --parts always: the parts as convert searches them by default, only for
    # outputs whose own searches stayed away from the network (api._reached_network)
    "parts gated": Variant(composed="gated"),
    "no logit or 1/y": Variant(keep=lambda job: job["transform"] not in NEW_TRANSFORMS),
    "auto without its poor-front guards": Variant(guards=False),
    "no scalings": Variant(scaled=False),
    "composed cancelled today": Variant(recancelled=True),
    "none of issue 19": Variant(keep=lambda job: job["transform"] not in NEW_TRANSFORMS,
                                composed=False, guards=False, scaled=False),
}


def ablate(rec: dict, law, variants) -> dict[str, dict]:
    """``rec``'s front rebuilt from its recorded candidates without some searches, the pruned
    forms or the decomposition, or judged without ``auto``'s guards (see ``ABLATIONS``),
    judged like a run's: one record per variant."""
    from symtorch_fx.search.distill import build_front, split_rows

    model, _ = train_net(law, rec["index"], noise=rec.get("noise", 0.0))
    X, _ = law_data(law, rec["index"], rec.get("noise", 0.0))
    with torch.no_grad():
        Y = model(X)[:, 0].double().numpy()
    X = X.double().numpy()
    train, val = split_rows(len(X), 0.25, rec["seed"])
    out = {k: v for k, v in rec.items() if k not in ("front", "picks", "scored", "jobs", "chosen")}
    if "network_error_estimate" not in out:  # a record of older code: as --rescore does
        out["network_error_estimate"] = estimate_of(rec, law)
    seen: dict[str, int] = {}
    for job in rec["jobs"]:
        job["repeat"] = seen.get(job["transform"], 0)
        seen[job["transform"]] = job["repeat"] + 1
    judged, fronts = {}, {}
    for name in variants:
        variant = ABLATIONS[name]
        texts = []
        for job in rec["jobs"]:
            if job.get("part") is not None or job.get("dimensionless"):
                continue  # over a part's inputs or the groups: composed, not used as they are
            if variant.keep(job):
                texts += job["texts"] + (job["pruned"] if variant.pruned else [])
        composed = list(rec.get("composed") or []) if variant.composed else []
        if variant.scaled:
            composed += list((rec.get("scaling") or {}).get("composed") or [])
        if variant.recancelled and composed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                composed += api._cancelled(composed, list(law.symbols),
                                           float(np.std(Y[train])) or 1.0)
        if composed and variant.composed == "gated":
            whole = fronts.get(tuple(texts))
            if whole is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    whole, _ = build_front(texts, list(law.symbols), X[train], Y[train],
                                           X[val], Y[val], X)
                fronts[tuple(texts)] = whole
            best = min((e.loss for e in whole), default=math.inf)
            if api._reached_network(best, out.get("network_error_estimate"), Y[train]):
                composed = []
        texts = composed + texts
        if tuple(texts) not in fronts:  # variants that drop nothing of this law share a front
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fronts[tuple(texts)], _ = build_front(texts, list(law.symbols), X[train],
                                                      Y[train], X[val], Y[val], X)
        front = fronts[tuple(texts)]
        mine = dict(out, front=_front_record(front))
        if not variant.guards or not variant.composed:
            # without the decomposition there is no estimate of the network's error either
            mine["network_error_estimate"] = None
        explained = _select.EXPLAINED_BEST
        try:
            if not variant.guards:
                _select.EXPLAINED_BEST = -math.inf  # never triggers
            judged[name] = judge(mine, law, picks_only=True)
        finally:
            _select.EXPLAINED_BEST = explained
    return judged


def front_of(rec: dict, law) -> ParetoFront:
    """The recorded front, rebuilt (full-precision text; complexity and loss as measured)."""
    syms = {f"x{i}": v for i, v in enumerate(law.symbols)}
    eqs = [Equation(parse(e["text"], syms), e["complexity"], e["loss"], tuple(law.symbols),
                    e.get("finite", True)) for e in rec["front"]]
    return ParetoFront("net", "y0", eqs)


def judge(rec: dict, law, picks_only: bool = False) -> dict:
    """Apply every rule to the recorded front and score every equation on it (or only the
    rules' picks) against the law."""
    front = front_of(rec, law)
    noise = rec["net"]["mse"]  # what labels= measures: the network's MSE against its targets
    est = rec.get("network_error_estimate")
    picks = {rule: choose(front, rule, estimate=est) for rule in _select.RULES}
    picks["auto + labels"] = choose(front, "auto", noise)
    if rec.get("chosen") is not None and picks["auto"] != rec["chosen"]:
        warnings.warn(f"{rec['law']}: auto re-applied picks {picks['auto']}, the run chose "
                      f"{rec['chosen']}")
    which = sorted(set(picks.values())) if picks_only else range(len(front))
    scored = {i: dict(_score_once(front[i].expr, law)) for i in which}
    return dict(rec, picks=picks, scored={str(k): v for k, v in scored.items()})


def table(records: list[dict], whole_front: bool = True) -> str:
    rules = list(records[0]["picks"])
    lines = ["| rule | recovered (OOR < 3%) | exact form (refit) | strict (as found) |",
             "|---|---|---|---|"]
    n = len(records)

    def count(v, key):
        return bool(v.get(key, False))

    for rule in rules:
        got = [r["scored"][str(r["picks"][rule])] for r in records]
        rec, ex, st = (sum(count(v, k) for v in got) for k in ("recovered", "exact", "strict"))
        lines.append(f"| {rule} | {rec}/{n} | {ex}/{n} | {st}/{n} |")
    if whole_front:
        rec, ex, st = (sum(any(count(v, k) for v in r["scored"].values()) for r in records)
                       for k in ("recovered", "exact", "strict"))
        lines.append(f"| (on the front: any equation) | {rec}/{n} | {ex}/{n} | {st}/{n} |")
    secs = [r["seconds"] for r in records]
    cpu = [r["cpu_seconds"] for r in records]
    load = [r["load"] for r in records]
    lines.append("")
    lines.append(f"distillation per law: wall median {np.median(secs):.1f} s (max {max(secs):.1f} s), "
                 f"CPU median {np.median(cpu):.1f} s (max {max(cpu):.1f} s); "
                 f"1-min load average {min(load):.1f}-{max(load):.1f}")
    return "\n".join(lines)


def mark(r: dict, rule: str) -> str:
    """How the equation ``rule`` picked in record ``r`` scored: exact, recovered or no."""
    s = r["scored"][str(r["picks"][rule])]
    return "exact" if s["exact"] else ("recovered" if s["recovered"] else "no")


def per_law(records: list[dict]) -> str:
    lines = ["| law | d | net NMSE | wall s | CPU s | auto picks | c | auto | best | labels |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    for r in records:
        chosen = r["front"][r["picks"]["auto"]]
        lines.append(
            f"| {r['law']} | {r['d']} | {r['net']['nmse']:.1e} | {r['seconds']:.0f} | "
            f"{r['cpu_seconds']:.0f} | `{_short(chosen['text'])}` | {chosen['complexity']} | "
            f"{mark(r, 'auto')} | "
            f"{mark(r, 'best')} | {mark(r, 'auto + labels')} |")
    return "\n".join(lines)


def breakdown(records: list[dict]) -> str:
    """``auto``'s picks by number of variables, by half of the database (``--half``) and in
    all: laws, recovered, exact form, strict, median and largest wall time."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        for key in (f"{r['d']} variables", f"{_half_of(r['law'])} half",
                    "1-3 variables" if r["d"] <= 3 else "4-9 variables", "all"):
            groups.setdefault(key, []).append(r)
    order = sorted(groups, key=lambda k: (k == "all", not k[0].isdigit() or "-" in k, k))
    lines = ["| laws | n | recovered | exact form | strict | wall median (max) |",
             "|---|---|---|---|---|---|"]
    for key in order:
        recs = groups[key]
        got = [r["scored"][str(r["picks"]["auto"])] for r in recs]
        n = len(recs)
        counts = [sum(bool(v.get(k, False)) for v in got) for k in ("recovered", "exact", "strict")]
        secs = [r["seconds"] for r in recs]
        lines.append(f"| {key} | {n} | " + " | ".join(f"{c}/{n} ({c / n:.0%})" for c in counts)
                     + f" | {np.median(secs):.0f} s ({max(secs):.0f} s) |")
    return "\n".join(lines)


def _half_of(name: str) -> str:
    return feynman_suite.half(feynman_suite.Law(name, "", "", (), (), ()))


def _short(text: str, digits: int = 4) -> str:
    """An equation's text with its constants rounded for a table."""
    return re.sub(r"\d+\.\d+(e[-+]?\d+)?", lambda m: f"{float(m.group()):.{digits}g}", text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--laws", nargs="*", help="equation numbers to run (default: the suite)")
    p.add_argument("--restarts", type=int, default=None, help="default: convert's default")
    p.add_argument("--seed", type=int, default=0,
                   help="convert's seed (the searches' seeds and row samples); the networks "
                        "keep theirs")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="sfx.Operon settings, e.g. generations=100")
    p.add_argument("--out", type=Path, help="write the per-law records (JSON) here")
    p.add_argument("--rescore", type=Path, metavar="JSON",
                   help="no searches: re-apply the rules and re-score the fronts recorded in "
                        "JSON (after a change to a rule or to the scoring), then print the tables")
    p.add_argument("--no-prune", action="store_true", help="convert(prune=False)")
    p.add_argument("--no-decompose", action="store_true", help="convert(decompose=False)")
    p.add_argument("--parts", choices=["gated", "always"], default="gated",
                   help="search a decomposition's parts only where the output's own searches "
                        "stayed above the network's error (gated, convert's rule) or wherever "
                        "a decomposition is found (always; --ablate's 'parts gated' variant "
                        "then rebuilds the gated fronts from the same run)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="train on labels with Gaussian noise of this fraction of their standard "
                        "deviation (the noisy variant: 0.01); scored against the true law")
    p.add_argument("--half", choices=["dev", "test"],
                   help="only the laws of one half of the database (split by a hash of the "
                        "law's name, fixed before anything was tuned on laws of 4+ variables): "
                        "tune on dev, report on test and on the whole")
    p.add_argument("--min-variables", type=int, default=1)
    p.add_argument("--max-variables", type=int, default=feynman_suite.MAX_VARIABLES,
                   help="laws of at most this many variables (default 3: the 35-law table; "
                        "9: every law in the vocabulary). Pass the same with --rescore/--ablate")
    p.add_argument("--variants", nargs="*", choices=list(ABLATIONS),
                   help="with --ablate: the variants to rebuild (default: all)")
    p.add_argument("--ablate", type=Path, metavar="JSON",
                   help="no searches: rebuild the fronts of a run recorded in JSON without some "
                        "of its searches or without pruning, and print each variant's table")
    args = p.parse_args(argv)
    feynman_suite.MAX_VARIABLES = args.max_variables
    if args.ablate:
        saved = json.loads(args.ablate.read_text())
        laws, _ = feynman_suite.load()
        variants = args.variants or list(ABLATIONS)
        rebuilt = [ablate(r, laws[r["index"]], variants) for r in saved["records"]
                   if not args.laws or r["law"] in args.laws]
        for variant in variants:
            recs = [r[variant] for r in rebuilt]
            exact = [r["law"] for r in recs if r["scored"][str(r["picks"]["auto"])]["exact"]]
            print(f"### {variant}\n")
            print(table(recs, whole_front=False))
            print(f"\nauto exact: {' '.join(exact)}\n", flush=True)
        return
    if args.rescore:
        torch.set_num_threads(1)
        saved = json.loads(args.rescore.read_text())
        laws, _ = feynman_suite.load()
        for r in saved["records"]:  # runs before the estimate was recorded: computed again
            if "network_error_estimate" not in r:
                r["network_error_estimate"] = estimate_of(r, laws[r["index"]])
        saved["records"] = [judge(r, laws[r["index"]]) for r in saved["records"]]
        if args.out:
            args.out.write_text(json.dumps(saved, indent=1))
        print(table(saved["records"]))
        print()
        print(breakdown(saved["records"]))
        print()
        print(per_law(saved["records"]))
        return
    engine_kw = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        engine_kw[k] = json.loads(v) if v[:1] in "[{\"" or v[:1].isdigit() else v
    torch.set_num_threads(1)
    if args.parts == "always":
        api.DECOMPOSE_NEAR = 0.0  # best <= 0 * reach never holds for a loss above 0
    laws, source = feynman_suite.load()
    indexed = [(i, law) for i, law in enumerate(laws) if not args.laws or law.name in args.laws]
    indexed = [(i, law) for i, law in indexed if len(law.variables) >= args.min_variables
               and (args.half is None or feynman_suite.half(law) == args.half)]
    print(f"{len(indexed)} laws from {source}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}", flush=True)
    # resumable: laws already in --out (same settings) are kept, not run again
    records = []
    if args.out and args.out.exists():
        saved = json.loads(args.out.read_text())
        if saved.get("settings") == engine_kw:
            wanted = {law.name for _, law in indexed}
            records = [r for r in saved["records"] if r["law"] in wanted
                       and r["restarts"] == args.restarts and r.get("seed", 0) == args.seed
                       and r.get("noise", 0.0) == args.noise]
    done = {r["law"] for r in records}
    for i, law in indexed:
        if law.name in done:
            continue
        rec = run_law(law, i, args, engine_kw)
        records.append(rec)
        print(f"{law.name:10s} {rec['seconds']:5.1f} s  nmse {rec['net']['nmse']:.1e}  "
              f"auto -> {rec['front'][rec['picks']['auto']]['text']}  [{mark(rec, 'auto')}]",
              flush=True)
        if args.out:
            args.out.write_text(json.dumps({"settings": engine_kw, "records": records},
                                           indent=1))
    print()
    print(table(records))
    print()
    print(breakdown(records))
    print()
    print(per_law(records))


if __name__ == "__main__":
    main()
