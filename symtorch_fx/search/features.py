"""Derived input features (SymTorch's ``variable_transforms``): ``features={"dx": "x0 - x2",
"r": "sqrt((x0 - x2)^2 + (x1 - x3)^2)"}``.

Each feature is an equation in the grammar over a target's input variables. The search sees the
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
from ..kernels.lower import Layout, lower

#: derived features one target may have
MAX_FEATURES = 256


def _pairs(spec, region: str) -> list[tuple[str, str]]:
    if isinstance(spec, dict):
        pairs = list(spec.items())
    elif isinstance(spec, (list, tuple)) and all(
            isinstance(p, (list, tuple)) and len(p) == 2 for p in spec):
        pairs = [tuple(p) for p in spec]
    else:
        raise SymTorchFXError(
            f"features for {region!r} must be {{name: equation}} (e.g. {{'dx': 'x0 - x2', 'r': "
            f"'sqrt(dx_sq)'}}) or a list of (name, equation) pairs; got {type(spec).__name__}")
    if not pairs or len(pairs) > MAX_FEATURES:
        raise SymTorchFXError(f"features for {region!r}: give 1 to {MAX_FEATURES} features, got "
                              f"{len(pairs)}")
    for name, text in pairs:
        if callable(text) and not isinstance(text, str):
            raise SymTorchFXError(
                f"feature {name!r} of {region!r} is a python function; write it as an equation "
                "over the target's variables instead (e.g. 'sqrt((x0 - x2)^2 + (x1 - x3)^2)'), "
                "so that it is composed into the symbolic module and saved as text")
        if not isinstance(text, str):
            raise SymTorchFXError(f"feature {name!r} of {region!r} must be an equation (text), "
                                  f"got {type(text).__name__}")
    return pairs


def per_target(features, region: str):
    """The features ``features=`` gives ``region`` (None: none): one spec for every target, or
    ``{target: spec}`` (a dict whose values are specs, not equations)."""
    if features is None:
        return None
    if isinstance(features, dict) and features and all(
            isinstance(v, (dict, list, tuple)) for v in features.values()):
        return features.get(region)
    return features


def parse_features(spec, names: list[str], region: str) -> tuple[tuple[str, sympy.Expr], ...]:
    """``spec`` checked and parsed: (name, expression over ``names``) pairs."""
    pairs = _pairs(spec, region)
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
