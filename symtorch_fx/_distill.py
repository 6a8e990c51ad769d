"""Stage ``distill``: recordings -> a Pareto front of equations per (region, output).

Each (region, output, restart) is one job for the engine; a job may search a transform of the
output (``y^2``, ``log|y|``) and map each equation it finds back to ``y``. Jobs go through a
``concurrent.futures.Executor``: local processes by default, threads, inline, any Executor you
pass, or a ``dask.distributed.Client`` (its ``get_executor()`` is used), so a cluster needs no
other change. Engines return equation text; here it is parsed, tidied, and scored by *our*
complexity and by MSE on held-out rows, so fronts from any engine compare.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy
import torch

from ._equations import Equation
from ._errors import EquationSyntaxError, SymTorchFXError
from ._expr import complexity, parse, tidy, to_text, variable
from ._lower import evaluate
from ._prune import prune_candidates


@dataclass
class Job:
    region: str
    output: int
    restart: int
    X: np.ndarray
    y: np.ndarray
    variables: list[str]
    seed: int
    weights: np.ndarray | None = None
    transform: str = "identity"
    #: the sign ``s`` of an output searched through a one-sign transform (``g(s*y)``)
    sign: int = 1
    #: also return simpler forms of the candidates, constants pruned (``_prune``)
    prune: bool = False

    @property
    def label(self) -> str:
        return (f"{self.region}[{self.output}]"
                + (f" restart {self.restart}" if self.restart else "")
                + (f" ({self.transform} of the output)" if self.transform != "identity" else ""))


def run_job(engine, job: Job) -> list[str]:
    """Runs in a worker: one engine search (of the job's transform of ``y``, mapped back)."""
    t = TRANSFORMS[job.transform]
    if t.operators is not None:
        if hasattr(engine, "for_transform"):
            engine = engine.for_transform(t)
        elif hasattr(engine, "with_operators"):
            engine = engine.with_operators(t.operators)
    target = t.forward(job.sign * job.y)
    texts = engine.search(job.X, target, job.variables, job.seed, job.weights)
    if job.prune:
        texts = texts + prune_candidates(texts, job.X, target, job.variables, job.weights,
                                         job.seed)
    return canonical_texts([t.back(text, job.sign) for text in texts], job.variables,
                           float(np.std(job.y)) or 1.0)


def canonical_texts(texts: list[str], names: list[str], scale: float) -> list[str]:
    """Each distinct text as it is read back from a file: parsed, tidied (``scale``: the spread
    of the output, see ``tidy``) and printed; texts that do not parse are kept as they are, for
    the front builder to report.

    Runs in the worker, so that the serial front builder parses each distinct equation once
    (``build_front(canonical=True)``), and equations that differ only in how the engine wrote
    them are merged before it does.
    """
    symbols = {n: variable(n) for n in names}
    out: dict[str, None] = {}
    for text in dict.fromkeys(texts):
        try:
            out[to_text(tidy(parse(text, symbols), scale))] = None
        except EquationSyntaxError:
            out[text] = None
    return list(out)


# ----------------------------------------------------------------------------------------------
# transforms of the output: search g(y) ~ f(x), keep y = g^-1(f(x))


#: the vocabulary of transformed searches: rational functions (and squares) of the inputs
ARITHMETIC = ("add", "sub", "mul", "div", "square")


@dataclass(frozen=True)
class Transform:
    """A search of ``g(y)`` instead of ``y``; its equations are mapped back through ``g``'s inverse.

    Some laws are far simpler, for a search, after a transform of their value: the inverse
    square of a relativistic ``m / sqrt(1 - v^2/c^2)`` is a polynomial in ``v/c`` over ``m^2``,
    the log of a Gaussian a quadratic (plus a log). A transform other than the identity needs an
    output of one sign ``s``: it searches ``g(s*y)`` and maps an equation ``f`` back to
    ``s * inverse(f)``. It searches with the few ``operators`` that such structure is made of,
    for an engine that can narrow its vocabulary (``engine.with_operators``): with ``cos`` at
    hand a search of ``1 - v^2/c^2`` settles for ``cos(1.5 v/c)``.
    """

    name: str
    #: g, applied to ``s*y`` (values >= 0)
    forward: Callable[[np.ndarray], np.ndarray]
    #: g's inverse, as a text template around the equation found: ``"sqrt({f})"``
    inverse: str
    #: whether g needs an output of one sign (every transform but the identity)
    one_sign: bool = True
    #: whether g needs ``y`` nonzero everywhere (a log), not only of one sign
    nonzero: bool = False
    #: the vocabulary of the search (intersected with the engine's own); None: the engine's
    operators: tuple[str, ...] | None = ARITHMETIC

    def sign(self, y: np.ndarray) -> int:
        """``s``: -1 for an output that is nowhere positive, searched as ``g(-y)``."""
        return -1 if self.one_sign and np.all(np.asarray(y) <= 0) else 1

    def applies(self, y: np.ndarray) -> bool:
        """Whether these recorded values can be searched through this transform."""
        y = np.asarray(y)
        if not self.one_sign:
            return True
        if self.nonzero:
            return bool(np.all(y > 0) or np.all(y < 0))
        return bool((np.all(y >= 0) or np.all(y <= 0)) and np.any(y != 0))

    def back(self, text: str, sign: int) -> str:
        return ("-" if sign < 0 else "") + self.inverse.format(f=text)


TRANSFORMS = {t.name: t for t in (
    Transform("identity", lambda a: a, "{f}", one_sign=False, operators=None),
    Transform("square", np.square, "sqrt({f})"),
    Transform("inverse_square", lambda a: 1.0 / np.square(a), "sqrt(1/({f}))", nonzero=True),
    Transform("log", np.log, "exp({f})", nonzero=True,
              operators=ARITHMETIC + ("log",)),
)}


def check_transforms(transforms) -> tuple[str, ...]:
    """``transforms`` as a tuple of known names, one entry per search, or an error naming the
    choices. A name listed twice is searched twice (with different seeds); a mapping
    ``{name: searches}`` says the same."""
    if isinstance(transforms, dict):
        bad = {k: n for k, n in transforms.items()
               if not isinstance(n, int) or isinstance(n, bool) or n < 0}
        if bad:
            raise SymTorchFXError(
                f"transforms maps each name to a number of searches (0 or more), got {bad!r}"
            )
        transforms = [name for name, n in transforms.items() for _ in range(n)]
    if isinstance(transforms, str) or not isinstance(transforms, (tuple, list)):
        raise SymTorchFXError(
            "transforms must be a list of names such as ['square', 'log'] (a name listed "
            f"twice is searched twice) or a dict {{name: searches}}, got {transforms!r}"
        )
    bad = [t for t in transforms if t not in TRANSFORMS or t == "identity"]
    if bad:
        raise SymTorchFXError(
            f"unknown output transform(s) {bad!r}; choose from "
            f"{sorted(set(TRANSFORMS) - {'identity'})} (the output itself is always searched)"
        )
    return tuple(transforms)


class InlineExecutor(cf.Executor):
    """Runs each job in the calling thread when it is submitted."""

    def submit(self, fn, /, *args, **kwargs):
        f: cf.Future = cf.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - delivered through the future
            f.set_exception(e)
        return f


def _process_pool(n: int) -> cf.Executor:
    # On Linux, fork (as torch's DataLoader does): workers start at once and scripts need no
    # ``if __name__ == "__main__"`` guard. The workers only run the engine (numpy + C++), never
    # torch ops, so the parent's thread pools are no hazard. Elsewhere fork is unsafe or absent:
    # spawn, which re-imports the main module (guard it, as for DataLoader workers).
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return cf.ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context(method))


def resolve_executor(executor, engine, n_jobs: int) -> tuple[cf.Executor, bool]:
    """(executor, whether we own it and must shut it down)."""
    workers = max(1, min(n_jobs, os.cpu_count() or 1))
    if executor is None:
        if not getattr(engine, "parallel_jobs", False) or workers == 1:
            return InlineExecutor(), True
        executor = "processes"
    if isinstance(executor, str):
        if executor == "processes":
            return _process_pool(workers), True
        if executor == "threads":
            return cf.ThreadPoolExecutor(workers), True
        if executor == "inline":
            return InlineExecutor(), True
        raise SymTorchFXError(
            f"executor={executor!r}: use 'processes', 'threads', 'inline', a "
            "concurrent.futures.Executor or a dask.distributed.Client"
        )
    if isinstance(executor, cf.Executor):
        return executor, False
    if hasattr(executor, "get_executor"):  # dask.distributed.Client
        return executor.get_executor(), False
    raise SymTorchFXError(
        f"executor of type {type(executor).__name__} is not a concurrent.futures.Executor or a "
        "dask.distributed.Client"
    )


def run_jobs(engine, jobs: list[Job], executor=None, progress: bool = True) -> list[list[str]]:
    """Run every job; results in job order. The first failure is raised, naming its job."""
    if not jobs:
        return []
    pool, owned = resolve_executor(executor, engine, len(jobs))
    results: list[list[str] | None] = [None] * len(jobs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"distilling ({engine.name})", unit="job")
    try:
        futures = {pool.submit(run_job, engine, job): i for i, job in enumerate(jobs)}
        for f in cf.as_completed(futures):
            i = futures[f]
            try:
                results[i] = f.result()
            except Exception as e:
                for other in futures:
                    other.cancel()
                e.add_note(f"symtorch_fx: raised by the search for {jobs[i].label}")
                raise
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if owned:
            pool.shutdown(wait=True, cancel_futures=True)
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# fronts


def split_rows(n: int, validation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, held-out) row indices; held-out keeps at least one row."""
    if not 0.0 < validation < 1.0:
        raise SymTorchFXError(f"validation={validation!r} must be a fraction between 0 and 1")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(n * validation))), n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def build_front(
    texts: list[str],
    variables: list[sympy.Symbol],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    X_all: np.ndarray,
    w_train: np.ndarray | None = None,
    w_val: np.ndarray | None = None,
    canonical: bool = False,
) -> tuple[list[Equation], list[Equation]]:
    """Parse and score candidates; return (Pareto front, every scored candidate).

    The front always starts with the constant model (the mean). Candidates that do not parse or
    give non-finite values on held-out rows are dropped; ``finite`` records whether a candidate is
    finite on *every* recorded row.

    ``w_train``/``w_val``: optional non-negative row weights (e.g. proximity to the point a local
    explanation is about). With them the constant model is the weighted mean of ``y_train`` and
    ``loss`` is the weighted mean squared error on the held-out rows.
    """
    symbols = {v.name: v for v in variables}
    scale = float(np.std(y_train)) or 1.0
    xv = torch.from_numpy(np.ascontiguousarray(X_val))
    xa = torch.from_numpy(np.ascontiguousarray(X_all))
    yv = np.asarray(y_val, np.float64)
    wv = _normalized(w_val, len(yv), "w_val")
    mean = float(np.average(y_train, weights=_normalized(w_train, len(y_train), "w_train")))

    def mse(pred: np.ndarray) -> float:
        sq = (pred - yv) ** 2
        return float(np.mean(sq) if wv is None else np.sum(wv * sq))

    scored = [Equation(sympy.Float(mean), 1, mse(np.full_like(yv, mean)), tuple(variables))]
    seen = {scored[0].expr}
    bad_syntax = []
    for text in dict.fromkeys(texts):
        try:
            expr = parse(text, symbols)
            if not canonical:
                expr = parse(to_text(tidy(expr, scale)), symbols)  # the form read back
        except EquationSyntaxError as e:
            bad_syntax.append(str(e))
            continue
        if expr in seen or expr.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo, sympy.I):
            continue
        seen.add(expr)
        with np.errstate(all="ignore"):
            loss = mse(evaluate([expr], xv, variables)[:, 0].numpy())
        if not np.isfinite(loss):
            continue
        finite = bool(torch.isfinite(evaluate([expr], xa, variables)).all())
        scored.append(Equation(expr, complexity(expr), loss, tuple(variables), finite))
    if bad_syntax:
        warnings.warn(
            f"{len(bad_syntax)} candidate equation(s) from the engine could not be parsed and "
            f"were skipped; first: {bad_syntax[0]}",
            stacklevel=2,
        )
    return pareto(scored), scored


def _normalized(w, n: int, name: str) -> np.ndarray | None:
    if w is None:
        return None
    w = np.asarray(w, np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise SymTorchFXError(f"{name} must be {n} finite, non-negative weights, not all zero")
    return w / w.sum()


def pareto(candidates: list[Equation]) -> list[Equation]:
    """Simplest first; each kept equation is strictly more accurate than every simpler one."""
    front: list[Equation] = []
    for e in sorted(candidates, key=lambda e: (e.complexity, e.loss)):
        if not front or e.loss < front[-1].loss:
            if front and front[-1].complexity == e.complexity:
                continue
            front.append(e)
    return front
