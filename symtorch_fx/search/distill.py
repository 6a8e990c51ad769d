"""Stage ``distill``: recordings -> a Pareto front of equations per (region, output).

Each (region, output, restart) is one job for the engine; a job may search a transform of the
output (``y^2``, ``log|y|``) and map each equation it finds back to ``y``. Jobs go through a
``concurrent.futures.Executor``: local processes by default, threads, inline, any Executor you
pass, or a ``dask.distributed.Client`` (its ``get_executor()`` is used), so a cluster needs no
other change. Engines return equation text; the job that ran the search parses and tidies it,
and scores it by *our* complexity and by MSE on held-out rows, so fronts from any engine
compare. The parent merges the scores of an output's searches into one front and parses only
the texts on it.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import sympy
import torch

from ..errors import EquationSyntaxError, SymTorchFXError
from ..expr.equations import Equation
from ..expr.grammar import complexity, parse, tidy, to_text, variable
from ..kernels.lower import TorchWalk, evaluate, one_torch_thread
from .prune import prune_candidates
from .transforms import IDENTITY, TRANSFORMS, fit_monomial, monomial


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
    transform: str = IDENTITY
    #: the sign ``s`` of an output searched through a one-sign transform (``g(s*y)``)
    sign: int = 1
    #: also return simpler forms of the candidates, constants pruned (``search.prune``)
    prune: bool = False
    #: held-out rows ``(X_val, y_val)``: score every candidate in the worker (``Searched.scored``)
    holdout: tuple[np.ndarray, np.ndarray] | None = None
    #: a part of the output's decomposition (``search.decompose``), by its index among the
    #: leaves; its equations are over the part's inputs and are composed, not used as they are
    part: int | None = None
    #: a search of the output over its dimensionless groups (``search.units``): its equations
    #: are over the groups and are composed with the prefactor, not used as they are
    dimensionless: bool = False
    #: the units of the variables and of ``y`` (``convert(units=)``), for an engine that takes
    #: them (``with_units``: PySR's ``X_units``/``y_units``)
    units: tuple[tuple[str, ...], str] | None = None

    @property
    def whole(self) -> bool:
        """A search of the output itself over the target's variables."""
        return self.part is None and not self.dimensionless

    @property
    def label(self) -> str:
        return (f"{self.region}[{self.output}]"
                + (f" restart {self.restart}" if self.restart and self.whole else "")
                + (f" part {self.part} ({', '.join(self.variables)})"
                   if self.part is not None else "")
                + (f" over ({', '.join(self.variables)})" if self.dimensionless else "")
                + ("" if self.transform == IDENTITY else f" ({self.transform} of the output)"))


@dataclass
class Searched:
    """What one search (one :class:`Job`) gave, in canonical text (see :func:`canonical_texts`)."""

    #: the engine's equations, mapped back through the job's transform
    texts: list[str]
    #: the simpler forms pruning added (none of them among ``texts``)
    pruned: list[str]
    #: wall time in the worker: the search, pruning, printing and scoring
    seconds: float
    #: every candidate scored on the job's held-out rows (when the job has them)
    scored: list["Scored"] | None = None
    #: the syntax errors of candidates that did not parse (reported by the front builder)
    bad_syntax: list[str] = field(default_factory=list)
    #: a scaled transform's monomial ``m`` (the search was of ``g(s*y/m)``), as text
    monomial: str | None = None
    #: why this search gave nothing: it raised twice (see :func:`run_jobs`)
    error: str | None = None
    #: why this search was not run: its transform does not apply to the output over its scale,
    #: or is not finite on some row
    skipped: str | None = None

    @property
    def candidates(self) -> list[str]:
        return self.texts + self.pruned


def run_job(engine, job: Job) -> Searched:
    """Runs in a worker: one engine search (of the job's transform of ``y``, mapped back)."""
    start = time.perf_counter()
    t = TRANSFORMS[job.transform]
    if not job.whole and hasattr(engine, "for_part"):
        engine = engine.for_part()
    if job.units is not None and hasattr(engine, "with_units"):
        engine = engine.with_units(*job.units)
    if t.operators is not None:
        if hasattr(engine, "for_transform"):
            engine = engine.for_transform(t)
        elif hasattr(engine, "with_operators"):
            engine = engine.with_operators(t.operators)
    m, m_values = (monomial(fit_monomial(job.X, job.y, job.weights), job.variables, job.X)
                   if t.scaled else (None, 1.0))
    with np.errstate(all="ignore"):
        scaled = job.sign * job.y / m_values
        target = t.forward(scaled)
    if (t.scaled and not t.applies(scaled)) or not np.all(np.isfinite(target)):
        # the transform does not apply to these rows after all (y over its scale comes within
        # rounding of 0, or 1/y^2 overflows): nothing to search, and nothing failed
        return Searched([], [], time.perf_counter() - start, [] if job.holdout is not None
                        else None, [], m, skipped=f"{t.name} does not apply to the output "
                        "over its scale, or is not finite on every row")
    texts = engine.search(job.X, target, job.variables, job.seed, job.weights)
    pruned = (prune_candidates(texts, job.X, target, job.variables, job.weights, job.seed)
              if job.prune else [])
    scale = float(np.std(job.y)) or 1.0
    rows = job.X if job.holdout is None else np.concatenate([job.X, job.holdout[0]])
    scored, bad_syntax = None, []
    with one_torch_thread():  # a forked worker must not touch the parent's thread pool
        canonical = _canonicalizer(job.variables, scale, rows)

        def read_back(found: list[str]) -> list[str]:
            return list(dict.fromkeys(map(canonical, dict.fromkeys(
                t.back(text, job.sign, m) for text in found))))

        texts = read_back(texts)
        seen = set(texts)
        pruned = [p for p in read_back(pruned) if p not in seen]
        if job.holdout is not None:
            found, bad_syntax = score_texts(texts + pruned, [variable(n) for n in job.variables],
                                            *job.holdout, job.X, canonical=True)
            scored = [s for _, s in found]
    return Searched(texts, pruned, time.perf_counter() - start, scored, bad_syntax, m)


def canonical_texts(texts: list[str], names: list[str], scale: float,
                    rows: np.ndarray | None = None) -> list[str]:
    """Each distinct text as it is read back from a file: parsed, tidied (``scale``: the spread
    of the output, see ``tidy``) and printed; texts that do not parse are kept as they are, for
    the front builder to report.

    A root of an even power is written as a power of ``abs``: ``sqrt(1/u^2)`` as ``1/abs(u)``.
    ``rows``: the recorded inputs. ``abs(u)`` of a ``u`` of one sign on every row is written
    ``u`` (or ``-u``), and ``(u^a)^b`` of a ``u > 0`` on every row ``u^(a*b)``; neither changes
    a recorded value, and each saves nodes the law does not have: mapping a search of ``1/y^2``
    back takes a square root, and sympy writes ``sqrt(m^2/f)`` as ``abs(m)*sqrt(1/f)``, where
    the law reads ``m/sqrt(f)``.

    Runs in the worker, so that the serial front builder never parses the engine's own text,
    and equations that differ only in how the engine wrote them are merged before it sees them.
    """
    return list(dict.fromkeys(map(_canonicalizer(names, scale, rows), dict.fromkeys(texts))))


def _canonicalizer(names: list[str], scale: float,
                   rows: np.ndarray | None) -> Callable[[str], str]:
    """text -> canonical text (see :func:`canonical_texts`), the rows put in columns once."""
    symbols = {n: variable(n) for n in names}
    walk = None
    if rows is not None:
        X = torch.from_numpy(np.ascontiguousarray(rows, np.float64))
        columns = {v: X[:, k] for k, v in enumerate(symbols.values())}

        def walk(e):  # a fresh walk each time: its memo holds a column per subexpression
            return TorchWalk(columns, X)(e)

    def canonical(text: str) -> str:
        try:
            expr = _roots_of_even_powers(tidy(parse(text, symbols), scale))
            if walk is not None:
                expr = _simplified_on_rows(expr, walk)
            return to_text(expr)
        except EquationSyntaxError:
            return text

    return canonical


def _roots_of_even_powers(expr: sympy.Expr) -> sympy.Expr:
    """``expr`` with each ``(u^2k)^e`` whose ``2k*e`` is an integer written ``|u|^(2k*e)``:
    ``sqrt(u^2)`` as ``|u|``, ``sqrt(1/u^2)`` as ``1/|u|``. Equal for every real ``u``; sympy
    does it by itself only where it can prove ``u`` real (not for ``x0 + x1/x2``, which may be
    undefined)."""
    def root_of_even_power(node) -> bool:
        return (node.is_Pow and node.base.is_Pow and node.base.exp.is_Integer
                and node.base.exp.is_even and (node.base.exp * node.exp).is_Integer)

    return expr.replace(root_of_even_power,
                        lambda node: sympy.Abs(node.base.base) ** (node.base.exp * node.exp))


def _simplified_on_rows(expr: sympy.Expr, walk) -> sympy.Expr:
    """``expr`` with what the recorded rows settle written out: each ``abs(u)`` whose ``u`` has
    one sign on the rows as ``u`` or ``-u``, and each ``(u^a)^b`` whose ``u > 0`` on the rows as
    ``u^(a*b)`` (``sqrt(1/f)`` as ``1/sqrt(f)``), which sympy does only where it can prove the
    sign for every value of the inputs."""
    def signs(u) -> tuple[bool, bool]:
        with np.errstate(all="ignore"):
            v = walk(u)
        if not isinstance(v, torch.Tensor):
            return False, False
        return bool((v > 0).all()), bool((v < 0).all())

    for _ in range(3):  # an abs or power inside a replaced one is met on the next pass
        repl = {}
        for node in sympy.preorder_traversal(expr):
            if isinstance(node, sympy.Abs) and node.args[0].free_symbols:
                positive, negative = signs(node.args[0])
                if positive or negative:
                    repl[node] = node.args[0] if positive else -node.args[0]
            elif (node.is_Pow and node.base.is_Pow and not node.exp.is_Integer
                  and node.base.base.free_symbols and signs(node.base.base)[0]):
                repl[node] = node.base.base ** (node.base.exp * node.exp)
        if not repl:
            break
        expr = expr.xreplace(repl)
    return expr


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
    # ``if __name__ == "__main__"`` guard. The workers run the engine (numpy + C++), and score
    # candidates with torch on one thread (``one_torch_thread``): a forked child that touches
    # the parent's intra-op thread pool hangs. Elsewhere fork is unsafe or absent:
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


#: added to the seed of a search that raised, for its one retry
RETRY_SEED = 7919


def run_jobs(engine, jobs: list[Job], executor=None, progress: bool = True,
             extra: bool = False) -> list[Searched]:
    """Run every job; results in job order.

    A search that raises is run once more with another seed; one that fails again is dropped
    with a warning that names it (its output's front is built from its other searches, and
    its record says why it is missing). When every search fails, the first error is raised,
    naming its job: the engine itself is broken; unless the jobs are ``extra`` (a second
    round, such as a decomposition's parts, after searches that worked): then they are all
    dropped with the warning, and what the first round found stands. Ctrl-C cancels what is
    queued, stops the workers of a pool this function owns (a process pool's are terminated)
    and returns at once.
    """
    if not jobs:
        return []
    pool, owned = resolve_executor(executor, engine, len(jobs))
    results: list[Searched | None] = [None] * len(jobs)
    errors: dict[int, BaseException] = {}
    futures: dict[cf.Future, tuple[int, bool]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"distilling ({engine.name}, {len(jobs)} searches)",
                   unit="job")
    try:
        for i, job in enumerate(jobs):
            futures[pool.submit(run_job, engine, job)] = (i, False)
        pending = set(futures)
        while pending:
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for f in done:
                i, retried = futures[f]
                try:
                    results[i] = f.result()
                except Exception as e:  # noqa: BLE001 - retried once, then reported
                    if not retried:
                        again = replace(jobs[i], seed=jobs[i].seed + RETRY_SEED)
                        g = pool.submit(run_job, engine, again)
                        futures[g] = (i, True)
                        pending.add(g)
                        continue
                    errors[i] = e
                if bar is not None:
                    bar.update(1)
    except BaseException:  # Ctrl-C (or a failure of the pool itself): stop now
        _stop(pool, owned, futures)
        owned = False
        raise
    finally:
        if bar is not None:
            bar.close()
        if owned:
            pool.shutdown(wait=True)
    if errors:
        first, e = next(iter(errors.items()))
        if len(errors) == len(jobs) and not extra:
            e.add_note(f"symtorch_fx: raised by the search for {jobs[first].label} (and by "
                       "every other search, each tried twice)")
            raise e
        dropped = ", ".join(jobs[i].label for i in errors)
        warnings.warn(f"symtorch_fx: {len(errors)} search(es) raised twice (with two seeds) and "
                      f"were dropped: {dropped}; first error: {type(e).__name__}: {e}",
                      RuntimeWarning, stacklevel=3)
        for i, err in errors.items():
            results[i] = Searched([], [], 0.0, [] if jobs[i].holdout is not None else None,
                                  error=f"{type(err).__name__}: {err}")
    return results  # type: ignore[return-value]


def _stop(pool: cf.Executor, owned: bool, futures) -> None:
    """Cancel every queued search, and stop the workers of a pool we own without waiting for
    the searches they are running (a process pool's workers are terminated)."""
    for f in futures:
        f.cancel()
    if not owned:
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        if p.is_alive():
            p.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.join(timeout=2)
        if p.is_alive():
            p.kill()


# ----------------------------------------------------------------------------------------------
# fronts


def split_rows(n: int, validation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, held-out) row indices; held-out keeps at least one row."""
    if not 0.0 < validation < 1.0:
        raise SymTorchFXError(f"validation={validation!r} must be a fraction between 0 and 1")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(n * validation))), n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass(frozen=True)
class Scored:
    """A candidate scored where it was found: its text (as read back), complexity, held-out
    loss, and whether it is finite on every recorded row. Picklable, no sympy inside."""

    text: str
    complexity: int
    loss: float
    finite: bool


def score_texts(
    texts: list[str],
    variables: list[sympy.Symbol],
    X_val: np.ndarray,
    y_val: np.ndarray,
    X_more: np.ndarray,
    w_val: np.ndarray | None = None,
    canonical: bool = False,
    scale: float = 1.0,
) -> tuple[list[tuple[sympy.Expr, Scored]], list[str]]:
    """Parse and score each distinct text: ``([(expr, Scored)], syntax errors)``.

    ``loss``: the (``w_val``-weighted) MSE on the held-out rows; ``finite``: finite there and
    on ``X_more`` (the other recorded rows). Texts that do not parse, fold to a non-real or
    infinite constant, or have a non-finite loss are left out. ``canonical``: the texts are
    already as read back (see :func:`canonical_texts`); otherwise each is tidied (``scale``: the
    output's spread) and put in that form first.
    """
    symbols = {v.name: v for v in variables}
    # held-out rows first: one walk of each tree gives the loss (those rows) and finiteness (all)
    rows = torch.from_numpy(np.concatenate([np.asarray(X_val, np.float64),
                                            np.asarray(X_more, np.float64)]))
    yv = np.asarray(y_val, np.float64)
    wv = _normalized(w_val, len(yv), "w_val")
    out, bad_syntax, seen = [], [], set()
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
            values = evaluate([expr], rows, variables)[:, 0]
            loss = _mse(values[:len(yv)].numpy(), yv, wv)
        if not np.isfinite(loss):
            continue
        finite = bool(torch.isfinite(values).all())
        out.append((expr, Scored(to_text(expr) if not canonical else text, complexity(expr),
                                 loss, finite)))
    return out, bad_syntax


def _mse(pred: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> float:
    sq = (pred - y) ** 2
    return float(np.mean(sq) if w is None else np.sum(w * sq))


def _constant_model(variables, y_train, y_val, w_train, w_val) -> Equation:
    """The mean (weighted by ``w_train``), scored on the held-out rows: every front starts here."""
    yv = np.asarray(y_val, np.float64)
    mean = float(np.average(y_train, weights=_normalized(w_train, len(y_train), "w_train")))
    loss = _mse(np.full_like(yv, mean), yv, _normalized(w_val, len(yv), "w_val"))
    return Equation(sympy.Float(mean), 1, loss, tuple(variables))


def _warn_syntax(bad_syntax: list[str]) -> None:
    if bad_syntax:
        warnings.warn(
            f"{len(bad_syntax)} candidate equation(s) from the engine could not be parsed and "
            f"were skipped; first: {bad_syntax[0]}",
            stacklevel=3,
        )


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
) -> tuple[list[Equation], list[Equation]]:
    """Parse and score candidates; return (Pareto front, every scored candidate).

    The front always starts with the constant model (the mean). Candidates that do not parse or
    give non-finite values on held-out rows are dropped; ``finite`` records whether a candidate is
    finite on *every* recorded row.

    ``w_train``/``w_val``: optional non-negative row weights (e.g. proximity to the point a local
    explanation is about). With them the constant model is the weighted mean of ``y_train`` and
    ``loss`` is the weighted mean squared error on the held-out rows.
    """
    mean = _constant_model(variables, y_train, y_val, w_train, w_val)
    found, bad_syntax = score_texts(texts, variables, X_val, y_val, X_all, w_val,
                                    scale=float(np.std(y_train)) or 1.0)
    _warn_syntax(bad_syntax)
    scored = [mean] + [Equation(e, s.complexity, s.loss, tuple(variables), s.finite)
                       for e, s in found if e != mean.expr]
    return pareto(scored), scored


def front_of_scored(
    found: list[Scored],
    variables: list[sympy.Symbol],
    y_train: np.ndarray,
    y_val: np.ndarray,
    bad_syntax: list[str] = (),
) -> list[Equation]:
    """The Pareto front of candidates the workers scored (``Job.holdout``): only the texts that
    reach it are parsed here. Same front as :func:`build_front` on the same texts."""
    mean = _constant_model(variables, y_train, y_val, None, None)
    _warn_syntax(list(bad_syntax))
    best: dict[str, Scored] = {}
    for s in found:
        best.setdefault(s.text, s)
    # a light front first (texts only), then the sympy objects of its members
    light = pareto([mean] + list(best.values()))
    symbols = {v.name: v for v in variables}
    return [e if isinstance(e, Equation)
            else Equation(parse(e.text, symbols), e.complexity, e.loss, tuple(variables), e.finite)
            for e in light]


def _normalized(w, n: int, name: str) -> np.ndarray | None:
    if w is None:
        return None
    w = np.asarray(w, np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise SymTorchFXError(f"{name} must be {n} finite, non-negative weights, not all zero")
    return w / w.sum()


def pareto(candidates: list) -> list:
    """Simplest first; each kept equation is strictly more accurate than every simpler one."""
    front: list[Equation] = []
    for e in sorted(candidates, key=lambda e: (e.complexity, e.loss)):
        if not front or e.loss < front[-1].loss:
            if front and front[-1].complexity == e.complexity:
                continue
            front.append(e)
    return front
