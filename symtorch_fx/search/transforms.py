"""Transforms of the output: search ``g(y)`` instead of ``y``, keep ``y = g^-1(f(x))``.

A transform is data (its forward map, the text template of its inverse, what it needs of the
output, the vocabulary of its search); ``distill.run_job`` applies it around any engine's search.
The scaled transforms divide the output by its power-law scale (:func:`fit_monomial`) first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import sympy

from ..errors import SymTorchFXError
from ..expr.grammar import to_text, variable

#: the name of the search of the output itself (not a transform users list)
IDENTITY = "identity"



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

    A *scaled* transform searches ``g(s*y/m(x))`` instead, where ``m`` is the output's power-law
    scale, the monomial of the inputs that fits it best (:func:`fit_monomial`), and maps ``f``
    back to ``s * m * inverse(f)``. What a search must build shrinks to the law's dimensionless
    part: ``E = m c^2 / sqrt(1 - v^2/c^2)`` scales as ``m c^2``, and the inverse square of
    ``E / (m c^2)`` is ``1 - v^2/c^2``, 9 nodes where the inverse square of ``E`` takes 15.
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
    #: search ``g(s*y/m(x))``, ``m`` the output's monomial scale (``fit_monomial``)
    scaled: bool = False
    #: whether g needs ``0 < y < 1`` (a logit), searched as it is
    unit: bool = False

    def sign(self, y: np.ndarray) -> int:
        """``s``: -1 for an output that is nowhere positive, searched as ``g(-y)``."""
        if self.unit:
            return 1
        return -1 if self.one_sign and np.all(np.asarray(y) <= 0) else 1

    def applies(self, y: np.ndarray) -> bool:
        """Whether these recorded values can be searched through this transform."""
        y = np.asarray(y)
        if y.size == 0:
            return False
        if self.unit:  # a network's probability may stray a little past 0 or 1 on a few rows
            inside = (y > 0) & (y < 1)
            return bool(inside.mean() >= UNIT_SHARE and np.all(y > -UNIT_SLACK)
                        and np.all(y < 1 + UNIT_SLACK))
        if not self.one_sign:
            return True
        if not np.all(np.isfinite(y)):
            return False
        if self.nonzero:
            # an output that comes within rounding of 0 is not of one sign for 1/y or log|y|:
            # 1/y^2 of 4e-16 is 6e30, and the search of it fits those rows alone
            top = float(np.max(np.abs(y), initial=0.0))
            return bool((np.all(y > 0) or np.all(y < 0))
                        and np.min(np.abs(y)) > NONZERO_FLOOR * top)
        return bool((np.all(y >= 0) or np.all(y <= 0)) and np.any(y != 0))

    def back(self, text: str, sign: int, scale: str | None = None) -> str:
        """The equation ``text`` found for ``g(s*y)`` (or ``g(s*y/m)``, ``scale`` = ``m``) as
        an equation for ``y``."""
        return (("-" if sign < 0 else "") + (f"({scale})*" if scale else "")
                + self.inverse.format(f=text))


_PLAIN = (
    Transform("square", np.square, "sqrt({f})"),
    Transform("inverse_square", lambda a: 1.0 / np.square(a), "sqrt(1/({f}))", nonzero=True),
    Transform("log", np.log, "exp({f})", nonzero=True,
              operators=ARITHMETIC + ("log",)),
)
#: a transform that needs ``y != 0`` (1/y, log|y|) needs ``min|y| > NONZERO_FLOOR * max|y|``:
#: values closer to 0 are float rounding of a zero (a difference of two evaluations of a
#: network, 4e-16 next to 0.16), not the tail of a law; a log still sees 27 e-folds of a decay
NONZERO_FLOOR = 1e-12
#: a fitted power-law scale with a power beyond this is no scale (a step or a bump fitted by
#: a monomial: ``x^46``); the scaled transforms then divide by nothing
MONOMIAL_MAX_POWER = 6
#: the share of an output's rows that must lie in (0, 1) for the logit, and how far past 0 or 1
#: the others may lie (they are searched at the nearest value inside)
UNIT_SHARE = 0.98
UNIT_SLACK = 0.05


def _logit(a: np.ndarray) -> np.ndarray:
    inside = a[(a > 0) & (a < 1)]
    a = np.clip(a, inside.min(), inside.max())
    return np.log(a) - np.log1p(-a)


TRANSFORMS = {t.name: t for t in (
    Transform(IDENTITY, lambda a: a, "{f}", one_sign=False, operators=None),
    *_PLAIN,
    # 1/y: a Lorentzian x/(a + x^2) is a polynomial over x
    Transform("inverse", lambda a: 1.0 / a, "1/({f})", nonzero=True),
    # sqrt(y) and 1/sqrt(y): the square and the inverse square of a law
    Transform("sqrt", np.sqrt, "({f})^2"),
    Transform("inverse_sqrt", lambda a: 1.0 / np.sqrt(a), "1/({f})^2", nonzero=True),
    # log(y/(1-y)) of an output in (0, 1): the logistic 1/(1 + exp(-x0 x1)) is x0*x1
    Transform("logit", _logit, "sigmoid({f})", unit=True),
    # the same of y/m: fitting m takes log|y|, so y must be nonzero
    *(replace(t, name=f"scaled_{t.name}", nonzero=True, scaled=True) for t in _PLAIN),
)}


def fit_monomial(X: np.ndarray, y: np.ndarray,
                 weights: np.ndarray | None = None) -> tuple[int, ...]:
    """The integer powers ``r`` of the monomial ``prod_k x_k^r_k`` (times a constant) that best
    fits ``y``: least squares of ``log|y|`` on ``log|x_k|``, each power rounded to the nearest
    integer. Inputs that change sign or touch 0 have no log and get power 0, as do all of them
    when ``y`` touches 0. ``weights``: row weights of the fit (e.g. SLIME's proximities).

    On the benchmark's laws the fit returns ``m c^2`` for ``m c^2/sqrt(1 - v^2/c^2)``,
    ``m v`` for ``m v/sqrt(1 - v^2/c^2)`` and ``1/sigma`` for a Gaussian of width ``sigma``.
    A fit with a power beyond ``MONOMIAL_MAX_POWER`` is not a scale: all powers are then 0.
    """
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    powers = [0] * X.shape[1]
    usable = [k for k in range(X.shape[1]) if np.all(X[:, k] > 0) or np.all(X[:, k] < 0)]
    if not usable or len(y) <= len(usable) or not np.all(np.isfinite(y)) or np.any(y == 0):
        return tuple(powers)
    A = np.column_stack([np.ones(len(y))] + [np.log(np.abs(X[:, k])) for k in usable])
    b = np.log(np.abs(y))
    if weights is not None:
        root = np.sqrt(np.asarray(weights, np.float64))
        A, b = A * root[:, None], b * root
    coef, *_ = np.linalg.lstsq(A, b, rcond=None)
    for k, c in zip(usable, coef[1:]):
        if not np.isfinite(c) or abs(c) > MONOMIAL_MAX_POWER + 0.5:
            return tuple([0] * X.shape[1])
        powers[k] = int(np.rint(c))
    return tuple(powers)


def monomial(powers: tuple[int, ...], names: list[str], X: np.ndarray) -> tuple[str | None, np.ndarray]:
    """(``m`` as text, ``m`` on the rows of ``X``) for these powers, its sign chosen so that
    ``m > 0`` on the rows; (None, ones) when every power is 0."""
    X = np.asarray(X, np.float64)
    if not any(powers):
        return None, np.ones(len(X))
    values = np.prod([X[:, k] ** r for k, r in enumerate(powers) if r], axis=0)
    expr = sympy.Mul(*[variable(n) ** r for n, r in zip(names, powers) if r])
    if values[0] < 0:  # each input used keeps one sign, so m does
        expr, values = -expr, -values
    return to_text(expr), values


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
    bad = [t for t in transforms if t not in TRANSFORMS or t == IDENTITY]
    if bad:
        raise SymTorchFXError(
            f"unknown output transform(s) {bad!r}; choose from "
            f"{sorted(set(TRANSFORMS) - {IDENTITY})} (the output itself is always searched)"
        )
    return tuple(transforms)
