"""Part of stage ``distill``: simpler forms of a fitted equation, its constants pruned.

An engine fits every constant it places, and Operon wraps each model in a linear scaling
``a + b*f(x)``. So an equation of the law's form reaches the candidates dressed in constants the
law does not have: an offset of ``7e-5``, factors of ``0.9991`` and ``0.9995``, a scale shared by
a numerator and its denominator, ``c*(a*x + b*y)^2`` where two numbers would do. Each costs
nodes, and a shorter look-alike that fits the network's own error a little better then
dominates it on the front: the law never reaches the selection rule.

:func:`simpler_forms` walks one equation down: at each step it fixes the one constant at ``0``,
``1`` or ``-1`` (which removes it, and often the node it sat in) that costs the least after the
remaining constants are refit by least squares, and returns every form on the way. The forms
join the candidates and are scored like every other, on held-out rows; the front and the
selection rule decide which survive.

Before the walk, :func:`prune_candidates` refits all of a candidate's constants together on the
walk's rows (a polish). The engine fitted them on a subsample for a few steps, so a candidate of
the law's form can arrive with ``exp(-0.5019 x1^2/x0^2)`` for ``exp(-x1^2/(2 x0^2))``: 3x the
network's own error, beaten on the front by a longer look-alike that fits better. The polished
copy joins the candidates, and the walk starts from it.
"""

from __future__ import annotations

import numpy as np
import sympy

from ..errors import EquationSyntaxError
from ..expr.grammar import (
    complexity,
    constant_symbol,
    parse,
    templatize,
    tidy,
    to_text,
    variable,
)
from .least_squares import levenberg_marquardt, squared_norm

#: values a constant may be fixed at: each removes the constant (and ``1*``, ``+ 0`` vanish)
FIXED_VALUES = (0.0, 1.0, -1.0)
#: the walk stops when the best step's loss exceeds the original's by this factor
MAX_LOSS_RATIO = 1e3
#: equations with more fitted constants than this are not walked (cost grows as its square)
MAX_CONSTANTS = 12
#: moves refit for real at each step, out of those a linearized refit ranks best
SHORTLIST = 3


def simpler_forms(
    expr: sympy.Expr,
    variables: list[sympy.Symbol],
    X: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | None = None,
) -> list[sympy.Expr]:
    """Forms of ``expr`` with fewer fitted constants, the rest refit to ``(X, y)``.

    ``w``: optional non-negative row weights (weighted least squares). Returns the forms from
    one constant fewer down to none (or until the loss grows ``MAX_LOSS_RATIO``-fold); empty when
    ``expr`` has no constant, too many, or cannot be evaluated.

    Each step ranks every (constant, value) by the loss a linearized refit predicts, then refits
    the ``SHORTLIST`` best for real (Levenberg-Marquardt) and keeps the best of those.
    """
    fit = _Fit.of(expr, variables, X, y, w)
    return [] if fit is None else _walk(fit)


def _walk(fit: "_Fit") -> list[sympy.Expr]:
    """:func:`simpler_forms` of the equation ``fit`` was made for."""
    k = len(fit.values)
    if k == 0 or k > MAX_CONSTANTS:
        return []
    current = fit.values.copy()
    base = fit.loss(current)
    if not np.isfinite(base):
        return []
    free = list(range(k))
    forms = []
    while free:
        moves = _ranked_moves(fit, current, free)
        best = None
        for i, v in moves[:SHORTLIST]:
            trial = current.copy()
            trial[i] = v
            fitted, got = fit.refit(trial, [j for j in free if j != i])
            if best is None or got < best[0]:
                best = (got, i, fitted)
        if best is None or not best[0] <= MAX_LOSS_RATIO * max(base, 1e-300):
            break
        _, i, current = best
        free.remove(i)
        form = fit.template.xreplace(
            {c: sympy.Float(current[j]) if j in free else sympy.Integer(int(current[j]))
             for j, c in enumerate(fit.consts)})
        if not form.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo, sympy.I):
            forms.append(form)
    return forms


def _ranked_moves(fit: "_Fit", c: np.ndarray, free: list[int]) -> list[tuple[int, float]]:
    """Every (constant, value) move, best first by the loss of a linearized refit of the rest."""
    r = fit.residual(c)
    J = fit.jacobian(c, free)  # (rows, len(free))
    if not np.all(np.isfinite(J)):  # no linearization here: rank by the loss without a refit
        J = np.zeros_like(J)
    out = []
    for a, i in enumerate(free):
        rest = [b for b in range(len(free)) if b != a]
        for v in FIXED_VALUES:
            if np.any(J):
                target = r + J[:, a] * (v - c[i])
            else:
                trial = c.copy()
                trial[i] = v
                target = fit.residual(trial)
            with np.errstate(all="ignore"):
                if rest and np.all(np.isfinite(target)):
                    try:
                        d, *_ = np.linalg.lstsq(J[:, rest], -target, rcond=None)
                        target = target + J[:, rest] @ d
                    except np.linalg.LinAlgError:
                        pass
                pred = float(np.dot(target, target))
            out.append((pred if np.isfinite(pred) else np.inf, i, v))
    out.sort(key=lambda t: t[0])
    return [(i, v) for _, i, v in out]


class _Fit:
    """Least squares of one equation's fitted constants on fixed rows (weighted when asked)."""

    def __init__(self, template, values, fn, X: np.ndarray, y: np.ndarray, w: np.ndarray | None):
        self.template = template
        self.values = np.asarray(values, np.float64)
        self.consts = [constant_symbol(i) for i in range(len(values))]
        self.fn = fn
        self.cols = [np.asarray(X[:, j], np.float64) for j in range(X.shape[1])]
        self.y = np.asarray(y, np.float64)
        n = len(self.y)
        self.sw = (np.full(n, 1 / np.sqrt(n)) if w is None
                   else np.sqrt(np.asarray(w, np.float64) / np.sum(w)))

    @classmethod
    def of(cls, expr, variables, X, y, w) -> "_Fit | None":
        """The fit of ``expr``'s constants, or None when numpy cannot evaluate it."""
        template, values = templatize(expr)
        consts = [constant_symbol(i) for i in range(len(values))]
        try:
            fn = sympy.lambdify([*variables, *consts], template, "numpy")
        except Exception:  # noqa: BLE001 - an expression numpy cannot print: nothing to offer
            return None
        return cls(template, values, fn, X, y, w)

    def form(self, c: np.ndarray) -> sympy.Expr:
        """The equation with the constants ``c``."""
        return self.template.xreplace({k: sympy.Float(float(v)) for k, v in zip(self.consts, c)})

    def _eval(self, C: np.ndarray) -> np.ndarray:
        """Values at the parameter rows of ``C`` (m, k): (m, rows), in one broadcast call."""
        with np.errstate(all="ignore"):
            out = self.fn(*self.cols, *C.T[:, :, None])
            return np.broadcast_to(np.asarray(out, np.float64), (len(C), len(self.y)))

    def residual(self, c: np.ndarray) -> np.ndarray:
        """Weighted residuals: their squared norm is the (weighted) mean squared error."""
        return (self._eval(c[None])[0] - self.y) * self.sw

    def loss(self, c: np.ndarray) -> float:
        return squared_norm(self.residual(c))

    def jacobian(self, c: np.ndarray, free: list[int]) -> np.ndarray:
        h = 1e-6 * np.maximum(1.0, np.abs(c[free]))
        C = np.repeat(c[None], len(free) + 1, axis=0)
        C[np.arange(1, len(free) + 1), free] += h
        with np.errstate(all="ignore"):
            F = self._eval(C) * self.sw
            return (F[1:] - F[0]).T / h

    def refit(self, c: np.ndarray, free: list[int],
              iterations: int = 40) -> tuple[np.ndarray, float]:
        """Least squares of the ``free`` constants from ``c``, the others held: (constants, loss)."""
        c = np.asarray(c, np.float64)

        def full(cf: np.ndarray) -> np.ndarray:
            out = c.copy()
            out[free] = cf
            return out

        cf, loss = levenberg_marquardt(lambda cf: self.residual(full(cf)),
                                       lambda cf: self.jacobian(full(cf), free),
                                       c[free], iterations)
        return full(cf), loss


# ----------------------------------------------------------------------------------------------
# a search's candidates -> the simpler forms worth adding

#: candidates walked: those within this factor of the lowest loss at their complexity or below
NEAR = 3.0
#: rows the walk refits on (a seeded sample of the search's rows)
MAX_ROWS = 400
#: a candidate's constants are first refit all together (a polish: an engine fits them on a
#: subsample for a few steps, Operon on 500 rows for 10); the polished copy is offered, and
#: walked from, when it lowers the loss on the walk's rows by at least this share
POLISH_GAIN = 0.05


def prune_candidates(
    texts: list[str],
    X: np.ndarray,
    y: np.ndarray,
    names: list[str],
    weights: np.ndarray | None = None,
    seed: int = 0,
) -> list[str]:
    """The polished copies and simpler forms (as text) of a search's candidates near its front.

    Runs where the search ran (a worker), on the search's own target, before any transform is
    mapped back, so the forms are judged in the space the search fit. Each candidate's
    constants are first refit together (polished); a copy whose loss drops by
    ``POLISH_GAIN`` or more is offered, and the candidates within ``NEAR`` of the lowest loss
    at their complexity or below (after the polish) are walked down to simpler forms.
    Candidates that do not parse or evaluate are skipped here; the front builder reports them.
    """
    symbols = {n: variable(n) for n in names}
    variables = [symbols[n] for n in names]
    rows = np.random.default_rng(seed).permutation(len(y))[:MAX_ROWS]
    Xs, ys = np.asarray(X, np.float64)[rows], np.asarray(y, np.float64)[rows]
    ws = None if weights is None else np.asarray(weights, np.float64)[rows]
    scale = float(np.std(ys)) or 1.0
    scored = []
    out = []
    for text in dict.fromkeys(texts):
        try:
            expr = tidy(parse(text, symbols), scale)
        except EquationSyntaxError:
            continue
        if not expr.atoms(sympy.Float):
            continue
        fit = _Fit.of(expr, variables, Xs, ys, ws)
        if fit is None:
            continue
        try:
            loss = fit.loss(fit.values)
        except Exception:  # noqa: BLE001 - numpy cannot evaluate it: not ours to walk
            continue
        if not np.isfinite(loss):
            continue
        polished = _polished(fit, loss)
        if polished is not None:
            loss = polished
            _offer(out, fit.form(fit.values))
        scored.append((complexity(expr), loss, fit))
    scored.sort(key=lambda t: (t[0], t[1]))
    best = np.inf
    for _, loss, fit in scored:
        best = min(best, loss)
        if loss <= NEAR * best:
            for form in _walk(fit):
                _offer(out, form)
    return out


def _polished(fit: "_Fit", loss: float) -> float | None:
    """Refit all of ``fit``'s constants together from their values; when that lowers ``loss``
    by ``POLISH_GAIN`` or more, ``fit`` starts from the refit constants and their loss is
    returned (else None, and ``fit`` is left as it was)."""
    k = len(fit.values)
    if k == 0 or k > MAX_CONSTANTS:
        return None
    try:
        values, got = fit.refit(fit.values, list(range(k)))
    except Exception:  # noqa: BLE001 - a polish: where it cannot run, the candidate stays
        return None
    if not got < (1 - POLISH_GAIN) * loss:
        return None
    fit.values = values
    return got


def _offer(out: list[str], form: sympy.Expr) -> None:
    """Append ``form``'s text to ``out``, unless it is a bare number (the front always has the
    mean; a transform's 0 breaks) or something the grammar cannot write."""
    if form.is_number or form.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo, sympy.I):
        return
    try:
        out.append(to_text(form))
    except EquationSyntaxError:
        return
