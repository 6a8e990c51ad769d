"""Derived input features (SymTorch's ``variable_transforms``): ``features={"dx": "x0 - x2",
"r": "sqrt((x0 - x2)^2 + (x1 - x3)^2)"}``.

Each feature is an equation in the grammar over a target's input variables, or a python
function of the target's inputs (torch or numpy code), which is read as equations by calling it
once on symbolic rows (:class:`Rows`): ``lambda x: torch.norm(x[:, :2] - x[:, 2:], dim=-1)``
becomes ``sqrt((x0 - x2)^2 + (x1 - x3)^2)``. The function itself is never kept. The search sees the
features instead of the inputs, so the law it has to find is shorter (``m1*m2/r^2`` rather than
the same over four coordinates); the symbolic module composes the chosen equation with the
features, so it still takes the target's own inputs. Features are text, parsed by the bounded
grammar parser and saved as text: nothing a user or a file writes is evaluated as Python.
"""

from __future__ import annotations

import warnings

import numpy as np
import sympy
import torch

from ..errors import EquationSyntaxError, SymTorchFXError
from ..expr.grammar import check_variable_names, parse, to_text, variable
from ..expr.ops import FUNCTIONS
from ..kernels.lower import Layout, lower

#: derived features one target may have
MAX_FEATURES = 256


def _pairs(spec, region: str) -> list[tuple[str, str]]:
    if isinstance(spec, dict):
        pairs = list(spec.items())
    elif isinstance(spec, (list, tuple)) and all(
            isinstance(p, (list, tuple)) and len(p) == 2 for p in spec):
        pairs = [tuple(p) for p in spec]
    elif isinstance(spec, (list, tuple)) and all(isinstance(p, str) or callable(p)
                                                 for p in spec):
        pairs = [(f"f{i}", p) for i, p in enumerate(spec)]  # SymTorch's unnamed list
    else:
        raise SymTorchFXError(
            f"features for {region!r} must be {{name: equation or function}} (e.g. {{'dx': "
            f"'x0 - x2', 'r': lambda x: torch.norm(x[:, :2] - x[:, 2:], dim=-1)}}), a list of "
            f"(name, feature) pairs, or a list of features (named f0, f1, ...); got "
            f"{type(spec).__name__}")
    if not pairs or len(pairs) > MAX_FEATURES:
        raise SymTorchFXError(f"features for {region!r}: give 1 to {MAX_FEATURES} features, got "
                              f"{len(pairs)}")
    for name, text in pairs:
        if not isinstance(text, str) and not callable(text):
            raise SymTorchFXError(f"feature {name!r} of {region!r} must be an equation (text) "
                                  f"or a function of the inputs, got {type(text).__name__}")
    return pairs


def unnamed(spec) -> bool:
    """Whether ``spec`` is a plain list of features (named ``f0, f1, ...``)."""
    return isinstance(spec, (list, tuple)) and all(
        isinstance(p, str) or (callable(p) and not isinstance(p, (list, tuple))) for p in spec)


def per_target(features, region: str):
    """The features ``features=`` gives ``region`` (None: none): one spec for every target, or
    ``{target: spec}`` (a dict whose values are specs, not equations)."""
    if features is None:
        return None
    return features.get(region) if by_target(features) else features


def by_target(features) -> bool:
    """Whether ``features=`` is ``{target: spec}`` (a dict whose values are specs, not
    equations)."""
    return isinstance(features, dict) and bool(features) and all(
        isinstance(v, (dict, list, tuple)) for v in features.values())


def parse_features(spec, names: list[str], region: str, layout: Layout | None = None
                   ) -> tuple[tuple[str, sympy.Expr], ...]:
    """``spec`` checked and parsed: (name, expression over ``names``) pairs. A feature given as
    a python function is read as equations first (:func:`equations_of`)."""
    pairs = []
    for name, text in _pairs(spec, region):
        if isinstance(text, str):
            pairs.append((name, text))
            continue
        if not isinstance(name, str):
            raise SymTorchFXError(f"features for {region!r}: names are identifiers, got "
                                  f"{name!r}")
        pairs.extend(equations_of(text, name, layout or Layout((len(names),), None), names,
                                  region))
    feature_names = [str(n) if isinstance(n, str) else n for n, _ in pairs]
    try:
        check_variable_names(feature_names)
    except EquationSyntaxError as e:
        raise SymTorchFXError(f"features for {region!r}: {e}") from e
    symbols = {n: variable(n) for n in names}
    out = []
    for name, text in pairs:
        try:
            expr = parse(text, symbols)
        except EquationSyntaxError as e:
            raise SymTorchFXError(
                f"feature {name!r} of {region!r}: {e}. Features are equations over the target's "
                f"variables: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''}") from e
        if not expr.free_symbols:
            raise SymTorchFXError(f"feature {name!r} of {region!r} is a constant ({text!r}); a "
                                  "feature depends on the target's variables")
        out.append((name, expr))
    return tuple(out)


def describe(features) -> str:
    """The line under a region's name that says what its features are."""
    return "features: " + "; ".join(f"{n} = {to_text(e, 6)}" for n, e in features)


def evaluate(features, names: list[str], X: np.ndarray) -> np.ndarray:
    """The features' values on the rows of ``X`` (columns ``names``), float64."""
    fn = lower([e for _, e in features], Layout((len(names),), len(features)),
               [variable(n) for n in names], 0, "torch")
    with torch.no_grad():
        out = fn(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64)),
                 torch.zeros(0, dtype=torch.float64), out_dtype=torch.float64)
    return out.reshape(len(X), len(features)).numpy()


def derive(features, names: list[str], X: np.ndarray, Y: np.ndarray, region: str):
    """``X`` as features, and ``Y``, without the rows where a feature is not finite (said in a
    warning; all of them is an error)."""
    F = evaluate(features, names, X)
    ok = np.isfinite(F).all(axis=1)
    if not ok.all():
        bad = [n for (n, _), col in zip(features, np.isfinite(F).all(axis=0)) if not col]
        if ok.sum() < 4:
            raise SymTorchFXError(
                f"features of {region!r}: {', '.join(bad)} are NaN or infinite on almost every "
                "recorded row; check their domain (a log or sqrt of negative values, a division "
                "by zero)")
        warnings.warn(f"target {region!r}: features {', '.join(bad)} are NaN or infinite on "
                      f"{int((~ok).sum())} of {len(F)} recorded rows, which were left out of "
                      "the search", stacklevel=4)
    return F[ok], Y[ok]


# ----------------------------------------------------------------------------------------------
# a python function of the inputs (SymTorch's variable_transforms), read as equations


#: torch / numpy function names -> grammar function names (one argument)
_UNARY = {name: name for name, (n, _) in FUNCTIONS.items() if n == 1}
_UNARY.update({"arcsin": "asin", "arccos": "acos", "arctan": "atan", "arcsinh": None,
               "absolute": "abs", "fabs": "abs", "reciprocal": "inv", "negative": "neg",
               "positive": None, "ceiling": "ceil"})
_BINARY = {"add": lambda a, b: a + b, "subtract": lambda a, b: a - b, "sub": lambda a, b: a - b,
           "multiply": lambda a, b: a * b, "mul": lambda a, b: a * b,
           "divide": lambda a, b: a / b, "true_divide": lambda a, b: a / b,
           "div": lambda a, b: a / b, "power": lambda a, b: a**b, "pow": lambda a, b: a**b,
           "float_power": lambda a, b: a**b, "minimum": sympy.Min, "maximum": sympy.Max,
           "fmin": sympy.Min, "fmax": sympy.Max,
           "hypot": lambda a, b: sympy.sqrt(a**2 + b**2), "atan2": sympy.atan2,
           "arctan2": sympy.atan2}
#: methods and functions that change nothing a feature computes
_SAME = {"float", "double", "detach", "clone", "contiguous", "to", "type", "cpu", "cuda",
         "astype", "copy", "squeeze_", "requires_grad_"}


class FeatureError(SymTorchFXError):
    pass


def _unsupported(what: str) -> FeatureError:
    return FeatureError(
        f"{what} has no equation in symtorch_fx's grammar; write this feature as an equation "
        "instead (e.g. 'sqrt((x0 - x2)^2 + (x1 - x3)^2)')")


def _axis(kwargs: dict, args: tuple, ndim: int):
    dim = kwargs.get("dim", kwargs.get("axis", args[0] if args else None))
    if isinstance(dim, (list, tuple)):
        if len(dim) != 1:
            raise _unsupported("a reduction over several dimensions")
        dim = dim[0]
    if dim is None or not isinstance(dim, int):
        raise FeatureError("a feature function reduces over all dimensions, rows included; "
                           "give dim=-1 (torch) or axis=-1 (numpy)")
    dim = dim % ndim
    if dim == 0:
        raise FeatureError("a feature function reduces over the rows (dim 0); a feature is "
                           "computed row by row: reduce over dim=-1")
    return dim


class Rows:
    """A batch of one symbolic row: what a feature function is given instead of data. Each
    element is a sympy expression; torch functions (``__torch_function__``), numpy ufuncs and
    functions (``__array_ufunc__``, ``__array_function__``), indexing and arithmetic build the
    feature's equation. Anything without an equation is a :class:`FeatureError`."""

    def __init__(self, a):
        self.a = np.asarray(a, dtype=object) if not isinstance(a, np.ndarray) else a

    # -- plumbing --------------------------------------------------------------------------
    @staticmethod
    def _val(v):
        if isinstance(v, Rows):
            return v.a
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return sympy.Float(v) if isinstance(v, float) else sympy.Integer(v)
        if isinstance(v, (np.integer, np.floating)):
            return sympy.Float(float(v))
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            return sympy.Float(float(v))
        raise FeatureError(f"a feature function combines its inputs with a "
                           f"{type(v).__name__}; only numbers and the inputs may appear")

    def _map(self, fn) -> Rows:
        return Rows(np.vectorize(fn, otypes=[object])(self.a))

    def _binary(self, other, fn, reverse=False) -> Rows:
        a, b = self.a, self._val(other)
        if reverse:
            a, b = b, a
        return Rows(np.vectorize(fn, otypes=[object])(a, b))

    @property
    def shape(self):
        return self.a.shape

    @property
    def ndim(self) -> int:
        return self.a.ndim

    def __len__(self) -> int:
        return len(self.a)

    def size(self, dim=None):
        return self.a.shape if dim is None else self.a.shape[dim]

    def __getitem__(self, idx):
        if isinstance(idx, Rows):
            raise _unsupported("indexing with computed values")
        return Rows(self.a[idx])

    # -- arithmetic ------------------------------------------------------------------------
    def __add__(self, o): return self._binary(o, lambda a, b: a + b)
    def __radd__(self, o): return self._binary(o, lambda a, b: a + b, True)
    def __sub__(self, o): return self._binary(o, lambda a, b: a - b)
    def __rsub__(self, o): return self._binary(o, lambda a, b: a - b, True)
    def __mul__(self, o): return self._binary(o, lambda a, b: a * b)
    def __rmul__(self, o): return self._binary(o, lambda a, b: a * b, True)
    def __truediv__(self, o): return self._binary(o, lambda a, b: a / b)
    def __rtruediv__(self, o): return self._binary(o, lambda a, b: a / b, True)
    def __pow__(self, o): return self._binary(o, lambda a, b: a**b)
    def __rpow__(self, o): return self._binary(o, lambda a, b: a**b, True)
    def __neg__(self): return self._map(lambda a: -a)
    def __pos__(self): return self
    def __abs__(self): return self._map(sympy.Abs)

    def __bool__(self):
        raise _unsupported("a comparison or branch on the inputs")

    def _compare(self, other):
        raise _unsupported("a comparison of the inputs")

    __lt__ = __le__ = __gt__ = __ge__ = _compare

    # -- named operations (torch functions and methods, numpy functions) --------------------
    def _call(self, name: str, args: tuple, kwargs: dict):
        if name in _SAME:
            return self
        norms = ("norm", "linalg_norm", "linalg_vector_norm", "vector_norm")
        if name in ("sum", "mean", *norms):
            # positional arguments: (dim) for sums, (p, dim) for norms
            dim = _axis(kwargs, args[1:] if name in norms else args, self.ndim)
            keep = bool(kwargs.get("keepdim", kwargs.get("keepdims", False)))
            if name == "sum":
                out = np.sum(self.a, axis=dim, keepdims=keep)
            elif name == "mean":
                out = np.sum(self.a, axis=dim, keepdims=keep) / self.a.shape[dim]
            else:
                p = args[0] if args else kwargs.get("p", kwargs.get("ord", 2))
                if p not in (2, None, "fro"):
                    raise _unsupported(f"a {p}-norm")
                sq = np.vectorize(lambda v: v**2, otypes=[object])(self.a)
                out = np.vectorize(sympy.sqrt, otypes=[object])(
                    np.sum(sq, axis=dim, keepdims=keep))
            return Rows(out)
        if name in ("unsqueeze", "expand_dims"):
            dim = kwargs.get("dim", kwargs.get("axis", args[0] if args else None))
            return Rows(np.expand_dims(self.a, dim))
        if name in ("squeeze",):
            dim = kwargs.get("dim", kwargs.get("axis", args[0] if args else None))
            return Rows(np.squeeze(self.a, axis=dim)) if dim is not None else Rows(
                self.a.reshape(1, -1).squeeze(-1) if self.a.ndim > 1 else self.a)
        if name in ("square",):
            return self._map(lambda a: a**2)
        if name in ("rsqrt",):
            return self._map(lambda a: 1 / sympy.sqrt(a))
        if name in ("expm1",):
            return self._map(lambda a: sympy.exp(a) - 1)
        if name in _BINARY:
            other = args[0] if args else kwargs.get("other", kwargs.get("exponent"))
            return self._binary(other, _BINARY[name])
        grammar = _UNARY.get(name, "")
        if grammar:
            return self._map(FUNCTIONS[grammar][1])
        raise _unsupported(f"the feature function's call of {name!r}")

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(name, args, kwargs)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func)).lstrip("_").removesuffix("_")
        if name in ("stack", "cat", "concatenate", "hstack"):
            return _join(name, args, kwargs)
        rows = [a for a in args if isinstance(a, Rows)]
        if not rows:
            raise _unsupported(f"torch.{name}")
        first = next(i for i, a in enumerate(args) if isinstance(a, Rows))
        if first > 0 and name in _BINARY:  # torch.sub(2, x)
            return Rows(np.vectorize(_BINARY[name], otypes=[object])(
                Rows._val(args[0]), args[first].a))
        return args[first]._call(name, args[first + 1:], kwargs)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__":
            raise _unsupported(f"numpy.{ufunc.__name__}.{method}")
        name = ufunc.__name__
        if len(inputs) == 2:
            if name not in _BINARY:
                raise _unsupported(f"numpy.{name}")
            return Rows(np.vectorize(_BINARY[name], otypes=[object])(
                Rows._val(inputs[0]), Rows._val(inputs[1])))
        return inputs[0]._call(name, (), {})

    def __array_function__(self, func, types, args, kwargs):
        name = func.__name__
        if name in ("stack", "concatenate", "hstack", "column_stack"):
            return _join(name, args, kwargs)
        if name in ("sum", "mean", "norm", "squeeze", "expand_dims", "square"):
            return args[0]._call(name, args[1:], kwargs)
        raise _unsupported(f"numpy.{name}")


def _join(name: str, args: tuple, kwargs: dict) -> Rows:
    parts = list(args[0])
    dim = kwargs.get("dim", kwargs.get("axis", args[1] if len(args) > 1 else
                                       (1 if name in ("hstack", "column_stack") else 0)))
    arrays = [p.a if isinstance(p, Rows) else np.full((1,), Rows._val(p), dtype=object)
              for p in parts]
    if name == "column_stack":
        arrays = [a[:, None] if a.ndim == 1 else a for a in arrays]
    if name in ("stack",):
        out = np.stack(arrays, axis=dim)
    else:
        out = np.concatenate(arrays, axis=dim)
    if out.shape[0] != 1:
        raise FeatureError("a feature function joins its inputs along the rows (dim 0); join "
                           "along dim=-1")
    return Rows(out)


def equations_of(fn, name: str, layout: Layout, names: list[str], region: str
                 ) -> list[tuple[str, str]]:
    """The features a python function of a target's inputs computes, as (name, equation text):
    the function is called once on symbolic rows (one argument per input of the target, each
    of shape (1, features) or (1,)), so any torch or numpy code made of the grammar's
    functions, arithmetic, indexing, sums, norms and stacking is read as equations. A result
    of shape (1, k) is k features, ``name0``...``name{k-1}``."""
    args, at = [], 0
    for w in layout.inputs:
        cols = [variable(n) for n in names[at:at + (1 if w is None else w)]]
        at += len(cols)
        args.append(Rows(np.array([cols[0]] if w is None else [cols], dtype=object)))
    try:
        out = fn(*args)
    except FeatureError as e:
        raise SymTorchFXError(f"feature {name!r} of {region!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - reported with the cause and the fix
        raise SymTorchFXError(
            f"feature {name!r} of {region!r}: calling it on symbolic inputs failed ({type(e).__name__}: "
            f"{e}); write it with torch or numpy arithmetic, indexing, sums, norms and the "
            "grammar's functions, or as an equation") from None
    if not isinstance(out, Rows) or out.ndim not in (1, 2) or out.shape[0] != 1:
        raise SymTorchFXError(
            f"feature {name!r} of {region!r} returns {getattr(out, 'shape', type(out).__name__)}"
            "; a feature function returns one value per row ((N,)) or several ((N, k))")
    cols = list(out.a.reshape(-1))
    texts = [to_text(sympy.sympify(c)) for c in cols]
    if len(texts) == 1:
        return [(name, texts[0])]
    return [(f"{name}{j}", t) for j, t in enumerate(texts)]
