"""The network's units, found without being told: its scaling symmetries.

A law between physical quantities keeps its form when they are measured in other units. For
each base dimension, ``f(l^a1 x1, ..., l^an xn) = l^k f(x)`` for every ``l > 0`` (``a``: the
inputs' powers of that dimension, ``k``: the output's). A network that learned the law has the
same symmetries, up to its error, and they can be read off the network alone: at ``l = 1`` the
scaling says ``sum_i a_i x_i df/dx_i - k f = 0`` on every row, which is linear in ``(a, k)``.
The matrix of the network's log-derivatives ``x_i df/dx_i`` (central differences of the oracle)
and ``-f`` on a few hundred rows has every scaling of the network in its (numerical) null
space. :func:`find` takes the smallest singular directions, writes their span with small
rational entries (identity on pivot inputs, like a reduced row echelon form), and checks each
basis vector by a finite move: ``f(l^a x)`` against ``l^k f(x)`` on rows moved by up to a
factor ``e`` inside the recorded ranges. Fewer directions are tried while some fail (a weak
input looks like a symmetry in the derivatives, not in a finite move).

What holds is a dimension matrix, and the units machinery (:mod:`.units`) turns it into
``y = P(x) g(pi)`` with fewer variables, as if the user had given units:
``(u + v)/(1 + u v/c^2)`` (Feynman I.16.6) scales as ``l`` when ``u, v, c`` all do, and is
``c g(u/c, v/c)`` with ``g`` a rational of two variables; ``exp(-(t/s)^2/2)/(sqrt(2 pi) s)``
(I.6.2) is ``g(t/s)/s``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from . import units as dimensions

#: rows the derivatives and the finite tests are taken on
ROWS = 256
#: the step of the central differences, in log of an input
STEP = 0.01
#: a direction is a candidate when its singular value (RMS of ``sum a_i x_i df/dx_i - k f``
#: over unit-norm ``(a, k)``, relative to the output's spread) is below this; the finite test
#: decides
LOOSE = 0.15
#: the exponents are rationals of denominator at most this, found within ``ROUNDING``
DENOMINATOR = 2
ROUNDING = 0.1
#: the largest power of an input or of the output in a scaling (a larger one is not a unit)
MAX_POWER = 6
#: a finite test moves each row by ``l = e^s``, ``|s|`` at most this (and at least
#: ``MIN_STEP``), inside the recorded ranges; it needs ``MIN_ROWS`` such rows
MAX_STEP = 1.0
MIN_STEP = 0.05
MIN_ROWS = 32


@dataclass(frozen=True)
class Scalings:
    """Scalings ``f(l^a x) = l^k f(x)`` of an output: one row of ``powers`` (the inputs'
    exponents ``a``) and one entry of ``output`` (``k``) per scaling, all rational; and the
    RMS of their finite tests' residuals (two evaluations of the network: about 1.4 times its
    error)."""

    powers: tuple[tuple[Fraction, ...], ...]
    output: tuple[Fraction, ...]
    residual: float

    def groups(self) -> dimensions.Groups | None:
        """``y = P(x) g(pi)``: the prefactor and the groups these scalings leave."""
        return dimensions.groups_of(self.powers, self.output)

    def describe(self, names: list[str]) -> list[str]:
        """Each scaling as text: ``"(c, v, u) -> y"`` style, e.g. ``"l c, l v, l u -> l y"``."""
        out = []
        for a, k in zip(self.powers, self.output):
            moved = [f"{_power(e)}{n}" for n, e in zip(names, a) if e]
            out.append(f"{', '.join(moved)} -> {_power(k)}y")
        return out


def _power(e: Fraction) -> str:
    if e == 0:
        return ""
    if e == 1:
        return "l "
    return f"l^{e} " if e.denominator == 1 and e > 0 else f"l^({e}) "


def find(oracle: Callable[[np.ndarray], np.ndarray], X: np.ndarray, tol: float,
         spread: float, seed: int = 0) -> Scalings | None:
    """The scalings ``oracle`` (rows of every input -> one output) has on the recorded rows
    ``X``, each checked by a finite move to within ``tol`` of ``spread``; None when it has
    none (or the oracle gives non-finite values)."""
    rng = np.random.default_rng(seed)
    X = np.asarray(X, np.float64)
    n = X.shape[1]
    rows = X[rng.permutation(len(X))[: min(len(X), ROWS)]]
    lo, hi = X.min(axis=0), X.max(axis=0)
    moved = []
    for i in range(n):
        for sign in (1.0, -1.0):
            Z = rows.copy()
            Z[:, i] *= np.exp(sign * STEP)
            moved.append(Z)
    values = oracle(np.concatenate([rows, *moved]))
    if not np.all(np.isfinite(values)):
        return None
    m = len(rows)
    f0 = values[:m]
    steps = values[m:].reshape(n, 2, m)
    columns = [(steps[i, 0] - steps[i, 1]) / (2 * STEP) for i in range(n)]
    M = np.column_stack([*columns, -f0]) / (spread * np.sqrt(m))
    try:
        _, s, Vt = np.linalg.svd(M, full_matrices=False)
    except np.linalg.LinAlgError:
        return None
    for count in range(int(np.sum(s < LOOSE)), 0, -1):
        basis = _rational_basis(Vt[-count:], n)
        if basis is None:
            continue
        tests = [_finite_test(oracle, rows, f0, a, k, lo, hi, rng) for a, k in basis]
        if all(r is not None and r < tol * spread for r in tests):
            residual = float(np.sqrt(np.mean(np.square(tests))))
            return Scalings(tuple(a for a, _ in basis), tuple(k for _, k in basis), residual)
    return None


def _rational_basis(N: np.ndarray, n: int) -> list | None:
    """The span of the rows of ``N`` (directions ``(a, k)``) as rows with the identity on
    ``len(N)`` pivot inputs and rational entries of denominator at most ``DENOMINATOR``; None
    when the span has no such basis within ``ROUNDING``."""
    import scipy.linalg

    count = len(N)
    _, _, pivots = scipy.linalg.qr(N[:, :n], pivoting=True)
    P = pivots[:count]
    try:
        B = np.linalg.solve(N[:, P], N)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(B)):
        return None
    out = []
    for row in B:
        fr = [Fraction(float(v)).limit_denominator(DENOMINATOR) for v in row]
        if (max(abs(float(f) - v) for f, v in zip(fr, row)) > ROUNDING
                or max(abs(f) for f in fr) > MAX_POWER):
            return None
        out.append((tuple(fr[:n]), fr[n]))
    return out


def _finite_test(oracle, rows, f0, a, k, lo, hi, rng) -> float | None:
    """RMS of ``f(l^a x) - l^k f(x)`` over rows moved by a random ``l = e^s`` that keeps every
    input in its recorded range, or None when too few rows can move."""
    s_lo, s_hi = np.full(len(rows), -MAX_STEP), np.full(len(rows), MAX_STEP)
    for i, e in enumerate(a):
        if e == 0:
            continue
        x = rows[:, i]
        with np.errstate(all="ignore"):
            # e s within [down, up]: x e^(e s) stays in [lo, hi] (on 0's side where x is)
            up = np.where(x > 0, np.log(hi[i] / x), np.where(x < 0, np.log(lo[i] / x), np.inf))
            down = np.where(x > 0, np.log(lo[i] / x) if lo[i] > 0 else -np.inf,
                            np.where(x < 0, np.log(hi[i] / x) if hi[i] < 0 else -np.inf,
                                     -np.inf))
        e = float(e)
        low, high = (down / e, up / e) if e > 0 else (up / e, down / e)
        s_lo, s_hi = np.maximum(s_lo, low), np.minimum(s_hi, high)
    ok = np.isfinite(s_lo) & np.isfinite(s_hi) & (s_hi > s_lo)
    draw = np.where(ok, s_lo + (s_hi - s_lo) * rng.random(len(rows)), 0.0)
    ok &= np.abs(draw) > MIN_STEP
    if ok.sum() < MIN_ROWS:
        return None
    s = draw[ok]
    Z = rows[ok] * np.exp(np.outer(s, np.array([float(e) for e in a])))
    fz = oracle(Z)
    if not np.all(np.isfinite(fz)):
        return None
    return float(np.sqrt(np.mean((fz - np.exp(float(k) * s) * f0[ok]) ** 2)))
