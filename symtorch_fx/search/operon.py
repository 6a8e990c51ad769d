"""The embedded default engine: Operon (C++ genetic programming, through pyoperon)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import sympy

from ..errors import EngineUnavailableError, EquationSyntaxError, SymTorchFXError
from ..expr.grammar import parse, to_text, variable
from ..expr.ops import BINARY_OPERATORS, FUNCTIONS, PRINT_NAMES, UNARY_OPERATORS
from .engine import resample_by_weight, settings_repr
from .transforms import check_transforms

# Operon's names for what it can build; ours map onto them one to one except where noted.
_OPERON_SYMBOLS = {
    "add", "sub", "mul", "div", "aq", "pow", "abs", "acos", "asin", "atan", "cbrt", "ceil",
    "cos", "cosh", "exp", "floor", "log", "logabs", "log1p", "sin", "sinh", "sqrt", "sqrtabs",
    "tan", "tanh", "square", "fmin", "fmax",
}
_ALIASES = {"min": "fmin", "max": "fmax"}
#: sympy's classes of the functions Operon has (the grammar's names for them)
_FUNCTION_SYMBOLS = {cls: name for cls, name in PRINT_NAMES.items()
                     if _ALIASES.get(name, name) in _OPERON_SYMBOLS}
_DEFINITION = re.compile(
    r"\s*([A-Za-z_]\w*)\s*\(\s*([A-Za-z_]\w*)\s*(?:,\s*([A-Za-z_]\w*)\s*)?\)\s*=\s*(.+)\Z", re.S)


def operator_symbols(op: str) -> list[str]:
    """Operon's symbols that build operator ``op``.

    ``op`` is one of Operon's own (``add``, ``sin``, ...), another operator of the grammar that
    Operon composes from its own (``inv`` from ``div``, ``cube`` from ``mul``, ``neg`` from
    ``sub``, ``relu`` from ``fmax``, ``sigmoid`` from ``exp`` and ``div``, ...), or a definition
    in PySR's style whose body is in the grammar: ``"inv(x) = 1/x"``,
    ``"gauss(x) = exp(-x^2)"``, ``"hyp(x, y) = sqrt(x^2 + y^2)"``. The search then uses the
    symbols the body is made of; its equations come back written with them. An operator Operon
    cannot build (``erf``, ``sign``, ...) is an error that says so.
    """
    if not isinstance(op, str):
        raise SymTorchFXError(f"an operator is a name or a definition 'f(x) = ...', got {op!r}")
    name = _ALIASES.get(op, op)
    if name in _OPERON_SYMBOLS:
        return [name]
    m = _DEFINITION.match(op)
    if m is not None:
        args = [a for a in m.group(2, 3) if a]
        try:
            body = parse(m.group(4), {a: variable(a) for a in args})
        except EquationSyntaxError as e:
            raise SymTorchFXError(f"operator definition {op!r}: {e}") from e
        what = f"operator {m.group(1)!r} ({op})"
    elif op in FUNCTIONS:
        arity, build = FUNCTIONS[op]
        body = build(*(variable(f"a{i}") for i in range(arity)))
        what = f"operator {op!r} ({to_text(body)})"
    else:
        known = sorted((UNARY_OPERATORS | BINARY_OPERATORS) & (_OPERON_SYMBOLS | set(_ALIASES)))
        raise SymTorchFXError(
            f"Operon cannot search with operator {op!r}; choose from: {', '.join(known)}, other "
            "operators of the grammar it composes (inv, neg, cube, relu, sigmoid, log2, ...), or "
            "define one: 'name(x) = <formula>'")
    return _symbols_of(body, what)


def _symbols_of(e, what: str) -> list[str]:
    """The Operon symbols an expression is made of (a part without variables is a constant)."""
    out: list[str] = []

    def walk(node) -> None:
        if node.is_Atom or not node.free_symbols:
            return
        if node.is_Add:
            out.append("sub" if any(a.could_extract_minus_sign() for a in node.args) else "add")
        elif node.is_Mul:
            if node.args[0] == -1 and len(node.args) == 2:
                out.append("sub")  # -u is 0 - u
            else:
                out.append("div" if any(f.is_Pow and f.exp.is_negative for f in node.args)
                           else "mul")
        elif node.is_Pow:
            x = node.exp
            if x == 2:
                out.append("square")
            elif x == sympy.Rational(1, 2):
                out.append("sqrt")
            elif x == sympy.Rational(1, 3):
                out.append("cbrt")
            elif x.is_Integer:
                out.append("div" if x < 0 else "mul")
                if abs(x) > 1 and x < 0:
                    out.append("mul")
            else:
                out.append("pow")
        elif type(node) in _FUNCTION_SYMBOLS:
            out.append(_ALIASES.get(_FUNCTION_SYMBOLS[type(node)], _FUNCTION_SYMBOLS[type(node)]))
        elif isinstance(node, sympy.Function) and node.rewrite(sympy.exp) != node:
            walk(node.rewrite(sympy.exp))
            return
        else:
            fn = getattr(node.func, "__name__", str(node.func))
            raise SymTorchFXError(
                f"Operon cannot build {what}: it has no {fn}. Its functions are "
                f"{', '.join(sorted(_OPERON_SYMBOLS))}; use sfx.PySR for {fn}, or leave the "
                "operator out")
        for a in node.args:
            walk(a)

    walk(e)
    return list(dict.fromkeys(out))


DEFAULT_OPERATORS = ("add", "sub", "mul", "div", "sin", "cos", "exp", "log", "sqrt", "square")


#: options of pyoperon's regressor that each search sets itself
_SET_PER_SEARCH = {"random_state": "the searches are seeded by convert(seed=) / compile(seed=)",
                   "allowed_symbols": "pass operators=[...]",
                   "objectives": "Operon(...) searches r2 and length, which the fronts need"}


#: PySR options SymTorch users pass (``sr_params``): named in the error, with ``sfx.PySR``
_PYSR_OPTIONS = frozenset({
    "binary_operators", "unary_operators", "niterations", "populations",
    "maxsize", "maxdepth", "complexity_of_operators", "complexity_of_constants",
    "complexity_of_variables", "constraints", "nested_constraints", "parsimony",
    "elementwise_loss", "loss_function", "batching", "batch_size", "model_selection",
    "extra_sympy_mappings", "timeout_in_seconds", "procs", "turbo", "precision",
    "select_k_features", "denoise", "weight_optimize", "adaptive_parsimony_scaling",
})


def check_extra_options(kwargs: dict, regressor) -> None:
    """Refuse extra ``Operon(**kwargs)`` that pyoperon's regressor does not take, or that each
    search sets itself, naming what to do instead."""
    import inspect

    try:
        params = set(inspect.signature(regressor.__init__).parameters) - {"self"}
    except (TypeError, ValueError):
        return
    for key in kwargs:
        if key in _SET_PER_SEARCH:
            raise SymTorchFXError(f"Operon({key}=...): {_SET_PER_SEARCH[key]}")
        if key not in params:
            hint = (" (searches are seeded by convert(seed=) / compile(seed=))" if key == "seed"
                    else f" ({key!r} is a PySR option: search with sfx.PySR(...) for it)"
                    if key in _PYSR_OPTIONS else "")
            raise SymTorchFXError(
                f"Operon({key}=...): pyoperon's SymbolicRegressor takes no option {key!r}{hint}; "
                f"its options: {', '.join(sorted(params))}")


class Operon:
    """Symbolic regression with Operon (the default engine; runs offline, no Julia).

    Multi-objective search (accuracy and length, NSGA-II) returns a whole Pareto front of
    equations, with constants fitted by Levenberg-Marquardt. Settings not listed here pass
    through to ``pyoperon.sklearn.SymbolicRegressor`` via ``**kwargs``.

    Args:
        operators: functions and binary operators the search may use (``add sub mul div pow
            min max aq`` and unary ``sin cos tan exp log sqrt square tanh abs ...``); other
            operators of the grammar that Operon composes from its own (``inv``, ``neg``,
            ``cube``, ``relu``, ``sigmoid``, ``log2``, ...); or definitions in PySR's style,
            ``"inv(x) = 1/x"``, ``"gauss(x) = exp(-x^2)"``, whose bodies (in the equation
            grammar) say which of Operon's symbols to search with (see
            :func:`operator_symbols`).
        population_size: search budget: individuals per generation.
        generations: search budget: generations per search.
        max_length: the largest expression tree searched, in nodes.
        max_depth: the deepest expression tree searched.
        optimizer_iterations: Levenberg-Marquardt steps on the constants of each offspring.
        max_evaluations: search budget: fitness evaluations per search.
        max_time: wall-clock limit in seconds per search (None: no limit).
        max_rows: rows given to each search (a uniform subsample, drawn per search, when there
            are more).
        restarts: independent searches per output (different seeds and row samples), merged
            into one front, that ``convert`` runs unless its ``restarts=`` says otherwise. They
            are separate jobs, so they run in parallel on several cores.
        transforms: transforms of the output searched beside those, for outputs of one sign
            (``"square"``: y^2, ``"inverse_square"``: 1/y^2, ``"log"``: log|y|, and
            ``"scaled_..."``: the same of y/m, m the monomial of the inputs that fits y best;
            also ``"inverse"``, ``"sqrt"``, ``"inverse_sqrt"`` and ``"logit"``),
            with arithmetic operators only (and ``log`` for the log), their equations mapped
            back into the same front. A name listed twice is searched twice (or give
            ``{name: searches}``); ``convert(transforms=...)`` overrides them.
        transform_generations: generations of each transformed search and of each part of a
            decomposed output (None: ``generations``), never more than ``generations``: a
            small budget set by ``generations=`` holds for every search.
            Their vocabulary is small: on five relativistic and Gaussian laws of the benchmark,
            4 seeds each, searches of 75 generations found the law 12 times in 20 and searches
            of 150 generations 14 times, in twice the time; two short searches cost what one
            long one does.
        n_threads: threads Operon uses inside one search.

    The defaults are measured on the 35-law Feynman benchmark (``benchmarks/feynman_fidelity.py``,
    figures in ``benchmarks/RESULTS.md``). Several searches of 500 rows beat one of 2000 (4 of
    them recovered 25 laws in exact form against 22, in less wall time on 2 cores). The
    transformed searches and ``convert``'s constant pruning reach laws no search of ``y`` put
    on the front. A third search of ``y`` added no law once they were there, so an output of
    one sign takes 2 searches of ``y`` and 5 short transformed ones, the time of about 4.5
    searches of ``y``. The second searches of ``1/y^2`` and ``log|y|`` are scaled (the output
    over its monomial scale): they found the relativistic momentum and a shifted Gaussian that
    the plain ones missed. 32 of the 35 laws in exact form, at a median 44-54 s a law on 2
    cores.
    """

    name = "operon"
    parallel_jobs = True

    def __init__(
        self,
        operators: Sequence[str] = DEFAULT_OPERATORS,
        population_size: int = 500,
        generations: int = 150,
        max_length: int = 20,
        max_depth: int = 10,
        optimizer_iterations: int = 10,
        max_evaluations: int = 10_000_000,
        max_time: float | None = None,
        max_rows: int = 500,
        restarts: int = 2,
        transforms: Sequence[str] = ("square", "inverse_square", "scaled_inverse_square", "log",
                                     "scaled_log", "logit"),
        transform_generations: int | None = 75,
        n_threads: int = 1,
        **kwargs,
    ):
        if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
            raise SymTorchFXError(f"restarts must be a positive integer, got {restarts!r}")
        self.operators = tuple(operators)
        self.population_size = population_size
        self.generations = generations
        self.max_length = max_length
        self.max_depth = max_depth
        self.optimizer_iterations = optimizer_iterations
        self.max_evaluations = max_evaluations
        self.max_time = max_time
        self.max_rows = max_rows
        self.restarts = restarts
        self.transforms = check_transforms(transforms)
        if transform_generations is not None and (
                not isinstance(transform_generations, int) or isinstance(transform_generations, bool)
                or transform_generations < 1):
            raise SymTorchFXError(
                "transform_generations must be a positive integer (or None: as many as "
                f"`generations`), got {transform_generations!r}"
            )
        self.transform_generations = transform_generations
        self.n_threads = n_threads
        self.kwargs = kwargs
        self._symbols()  # fail now, not in a worker

    def __repr__(self) -> str:
        return settings_repr(self)

    def _symbols(self) -> str:
        out = [s for op in self.operators for s in operator_symbols(op)]
        return ",".join(dict.fromkeys(out + ["constant", "variable"]))

    def with_operators(self, operators: Sequence[str]) -> "Operon":
        """This engine with its vocabulary narrowed to ``operators`` (those it has), as the
        searches of a transformed output ask (see ``search.transforms.Transform``)."""
        import copy

        narrowed = copy.copy(self)
        narrowed.operators = tuple(op for op in self.operators
                                   if set(operator_symbols(op)) <= set(operators))
        if not narrowed.operators:
            warnings.warn(
                f"none of the operators {tuple(operators)} asked for is in this engine's "
                f"vocabulary {self.operators}; the search keeps that vocabulary (add some of "
                "them to `operators=` for transformed searches to use them)",
                stacklevel=2,
            )
            narrowed.operators = self.operators
        return narrowed

    def for_transform(self, transform) -> "Operon":
        """This engine as it searches through ``transform`` (``search.transforms.Transform``): the
        vocabulary narrowed to the transform's operators (see :meth:`with_operators`) and
        ``transform_generations`` generations."""
        engine = self.with_operators(transform.operators)
        engine.generations = self._short_generations()
        return engine

    def for_part(self) -> "Operon":
        """This engine as it searches a part of an output's decomposition (a law of fewer
        inputs, ``search.decompose``): ``transform_generations`` generations."""
        import copy

        engine = copy.copy(self)
        engine.generations = self._short_generations()
        return engine

    def _short_generations(self) -> int:
        """Generations of a transformed search or a part: ``transform_generations``, at most
        ``generations`` (``Operon(generations=3)`` is a quick run in every search)."""
        if self.transform_generations is None:
            return self.generations
        return min(self.transform_generations, self.generations)

    def check(self) -> None:
        """Raise :class:`EngineUnavailableError` if pyoperon cannot be imported, and
        :class:`SymTorchFXError` for an extra keyword pyoperon does not take (before any search
        runs, not in every worker)."""
        try:
            import pyoperon.sklearn
        except ImportError as e:
            raise EngineUnavailableError(
                f"the Operon engine needs pyoperon ({e}); install it with `pip install pyoperon`"
            ) from e
        check_extra_options(self.kwargs, pyoperon.sklearn.SymbolicRegressor)

    def search(self, X, y, variables, seed, weights=None) -> list[str]:
        """One Operon search of ``y ~ f(X)`` on at most ``max_rows`` rows (drawn by ``seed``;
        rows resampled in proportion to ``weights`` when given, since Operon has no per-row
        weights); returns the Pareto front's equations over ``variables`` as grammar text."""
        from pyoperon.sklearn import SymbolicRegressor

        rng = np.random.default_rng(seed)
        if weights is not None:
            X, y = resample_by_weight(X, y, weights, seed, n=min(len(y), self.max_rows))
        elif len(y) > self.max_rows:
            idx = rng.choice(len(y), self.max_rows, replace=False)
            X, y = X[idx], y[idx]
        settings = dict(
            allowed_symbols=self._symbols(),
            objectives=["r2", "length"],
            population_size=self.population_size,
            generations=self.generations,
            max_length=self.max_length,
            max_depth=self.max_depth,
            optimizer_iterations=self.optimizer_iterations,
            max_evaluations=self.max_evaluations,
            n_threads=self.n_threads,
            random_state=int(seed) % (2**63),
        )
        if self.max_time is not None:
            settings["max_time"] = max(1, int(round(self.max_time)))
        settings.update(self.kwargs)
        reg = SymbolicRegressor(**settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg.fit(np.asarray(X, np.float64), np.asarray(y, np.float64))
            front = reg.pareto_front_
            return [reg.get_model_string(p["tree"], precision=15, names=list(variables))
                    for p in front]
