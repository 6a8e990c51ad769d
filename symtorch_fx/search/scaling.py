"""The network's units, found without being told: its scaling symmetries.

A law between physical quantities keeps its form when they are measured in other units. For
each base dimension, ``f(l^a1 x1, ..., l^an xn) = l^k f(x)`` for every ``l > 0`` (``a``: the
inputs' powers of that dimension, ``k``: the output's). A network that learned the law has the
same symmetries, up to its error, and they can be read off the network alone: at ``l = 1`` the
scaling says ``sum_i a_i x_i df/dx_i - k f = 0`` on every row, which is linear in ``(a, k)``.
The matrix of the network's log-derivatives ``x_i df/dx_i`` (central differences of the oracle)
and ``-f`` on a few hundred rows has every scaling of the network in its (numerical) null
space. :func:`find` takes the smallest singular directions, writes their span with small
rational entries (a reduced row echelon form, each row cleared of denominators), and checks
each basis vector by a finite move: ``f(l^a x)`` against ``l^k f(x)`` on rows moved by up to a
factor ``e`` inside the recorded ranges. A weak input looks like a symmetry in the derivatives,
not in a finite move: the span of one direction fewer is tried while some basis vector fails,
and the largest set of basis vectors that hold is kept.

What holds is a dimension matrix, and the units machinery (:mod:`.units`) turns it into
``y = P(x) g(pi)`` with fewer variables, as if the user had given units:
``(u + v)/(1 + u v/c^2)`` (Feynman I.16.6) scales as ``l`` when ``u, v, c`` all do, and is
``c g(c/v, c/u)`` with ``g`` a rational of two variables; ``exp(-(t/s)^2/2)/(sqrt(2 pi) s)``
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
#: the largest power of an input in a scaling (a larger one is not a unit: a direction that
#: rounds only with larger powers is a mix of the true ones), and of the output (a sum of the
#: inputs' powers in the law's prefactor)
MAX_POWER = 3
MAX_OUTPUT_POWER = 12
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
        """Each scaling as text: ``"l c, l v, l u -> l y"`` (``c``, ``v`` and ``u`` scaled by
        ``l`` scale the output by ``l``), ``"l^2 x0, l^(-1/2) x1 -> y"``."""
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
    ``X``, each checked by a finite move: the RMS of ``f(l^a x) - l^k f(x)`` under ``tol *
    spread`` (an asymptote can pass: ``1/(e^u - 1)`` is ``1/u`` to within 2% of its spread for
    small ``u``; the candidates it leads to are scored like any other). Inputs that cannot be
    moved inside their recorded range (constant, all 0, or spread over less than a factor
    ``e^(2 MIN_STEP)``) are in no scaling. None when no scaling
    holds, or the oracle gives non-finite values."""
    rng = np.random.default_rng(seed)
    X = np.asarray(X, np.float64)
    n = X.shape[1]
    rows = X[rng.permutation(len(X))[: min(len(X), ROWS)]]
    lo, hi = X.min(axis=0), X.max(axis=0)
    free = [i for i in range(n) if _movable(lo[i], hi[i])]
    if not free or len(rows) < MIN_ROWS:
        return None
    moved = []
    for i in free:
        for sign in (1.0, -1.0):
            Z = rows.copy()
            Z[:, i] *= np.exp(sign * STEP)
            moved.append(Z)
    values = oracle(np.concatenate([rows, *moved]))
    if not np.all(np.isfinite(values)):
        return None
    m = len(rows)
    f0 = values[:m]
    steps = values[m:].reshape(len(free), 2, m)
    columns = [(steps[j, 0] - steps[j, 1]) / (2 * STEP) for j in range(len(free))]
    M = np.column_stack([*columns, -f0]) / (spread * np.sqrt(m))
    try:
        _, s, Vt = np.linalg.svd(M, full_matrices=False)
    except np.linalg.LinAlgError:
        return None
    kept: list = []
    for count in range(int(np.sum(s < LOOSE)), 0, -1):
        basis = _rational_basis(Vt[-count:], len(free))
        if basis is None:
            continue
        at = {i: j for j, i in enumerate(free)}
        full = [(tuple(a[at[i]] if i in at else Fraction(0) for i in range(n)), k)
                for a, k in basis]
        tests = [_finite_test(oracle, rows, f0, a, k, lo, hi, rng) for a, k in full]
        held = [(a, k, r) for (a, k), r in zip(full, tests)
                if r is not None and r < tol * spread]
        if len(held) > len(kept):
            kept = held  # each of them holds, whatever the others of its basis do
        if len(held) == count:
            break  # the whole span holds: no smaller one holds more
    if not kept:
        return None
    residual = float(np.sqrt(np.mean([r**2 for _, _, r in kept])))
    return Scalings(tuple(a for a, _, _ in kept), tuple(k for _, k, _ in kept), residual)


def _movable(lo: float, hi: float) -> bool:
    """Whether an input recorded in ``[lo, hi]`` can be scaled by at least ``e^MIN_STEP``
    both ways on some rows without leaving that range."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return False
    if lo <= 0 <= hi:
        return True  # towards 0 from either side
    return bool(np.log(max(abs(lo), abs(hi)) / min(abs(lo), abs(hi))) > 2 * MIN_STEP)


def _rational_basis(N: np.ndarray, n: int) -> list | None:
    """The span of the rows of ``N`` (directions ``(a, k)``) as ``len(N)`` rows of small
    rationals: a reduced row echelon form (the identity on pivot inputs chosen by a pivoted
    QR), each row then multiplied by the smallest integer up to ``MAX_POWER`` that makes all
    its entries multiples of ``1/DENOMINATOR`` within ``ROUNDING`` (``(1/3, 1)`` is ``(1,
    3)``); None when some row has no such form."""
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
        for d in range(1, MAX_POWER + 1):
            scaled = d * row
            fr = [Fraction(float(v)).limit_denominator(DENOMINATOR) for v in scaled]
            if (max(abs(float(f) - v) for f, v in zip(fr, scaled)) <= ROUNDING
                    and max(abs(f) for f in fr[:n]) <= MAX_POWER
                    and abs(fr[n]) <= MAX_OUTPUT_POWER):
                out.append((tuple(fr[:n]), fr[n]))
                break
        else:
            return None
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
