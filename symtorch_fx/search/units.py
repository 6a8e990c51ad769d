"""Units of the inputs and outputs, and the search over dimensionless groups they allow
(Buckingham's pi theorem, as AI Feynman and SymbolicRegression.jl use it).

A law between physical quantities cannot depend on the units they are measured in. If the
inputs ``x`` have dimensions given by the columns of a matrix ``D`` (one row per base
dimension) and the output has dimension ``d``, then ``y = P(x) g(pi_1, ..., pi_k)`` where
``P = prod x_i^p_i`` with ``D p = d`` carries the output's dimension and the ``pi_j = prod
x_i^q_ji`` with ``D q_j = 0`` are the dimensionless groups (``k = n - rank D``). The search of
``g`` has ``rank D`` fewer variables, and ``I.48.2``'s ``m c^2 / sqrt(1 - v^2/c^2)`` becomes
``g(v/c) = 1/sqrt(1 - pi^2)``.

Unit strings come from users and files: they are read by a small strict grammar
(:func:`parse_unit`), never evaluated: products and quotients of known unit symbols with integer
powers, e.g. ``"kg*m/s^2"``, ``"m s^-1"``, ``"1"``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import SymTorchFXError

#: the base dimensions, in the order of a dimension vector
BASE = ("m", "kg", "s", "A", "K", "mol", "cd")
#: unit symbols and their dimensions (SI; a unit's scale does not matter to the groups)
SYMBOLS: dict[str, tuple[int, ...]] = {
    "m": (1, 0, 0, 0, 0, 0, 0), "kg": (0, 1, 0, 0, 0, 0, 0), "s": (0, 0, 1, 0, 0, 0, 0),
    "A": (0, 0, 0, 1, 0, 0, 0), "K": (0, 0, 0, 0, 1, 0, 0), "mol": (0, 0, 0, 0, 0, 1, 0),
    "cd": (0, 0, 0, 0, 0, 0, 1),
    "g": (0, 1, 0, 0, 0, 0, 0), "cm": (1, 0, 0, 0, 0, 0, 0), "km": (1, 0, 0, 0, 0, 0, 0),
    "Hz": (0, 0, -1, 0, 0, 0, 0), "N": (1, 1, -2, 0, 0, 0, 0), "J": (2, 1, -2, 0, 0, 0, 0),
    "W": (2, 1, -3, 0, 0, 0, 0), "Pa": (-1, 1, -2, 0, 0, 0, 0), "C": (0, 0, 1, 1, 0, 0, 0),
    "V": (2, 1, -3, -1, 0, 0, 0), "F": (-2, -1, 4, 2, 0, 0, 0), "ohm": (2, 1, -3, -2, 0, 0, 0),
    "T": (0, 1, -2, -1, 0, 0, 0), "Wb": (2, 1, -2, -1, 0, 0, 0), "H": (2, 1, -2, -2, 0, 0, 0),
    "eV": (2, 1, -2, 0, 0, 0, 0),
}
#: the longest unit string read, and the largest power of one symbol
MAX_LENGTH = 200
MAX_POWER = 12

_TOKEN = re.compile(r"\s*(?:(?P<sym>[A-Za-z]+)|(?P<num>-?\d+)|(?P<op>\*\*|[*/^]))")


def parse_unit(text) -> tuple[int, ...]:
    """The dimension vector (over :data:`BASE`) of a unit string such as ``"kg*m/s^2"``.

    Grammar: ``unit := "1" | factor ((("*" | "/") | " ") factor)*``; ``factor := symbol
    (("^" | "**") int)?``; ``/`` divides by the next factor only (``"m/s/kg"`` is
    ``m s^-1 kg^-1``). Symbols: :data:`SYMBOLS`. Anything else is refused, with the fix."""
    if not isinstance(text, str):
        raise SymTorchFXError(f"a unit is a string such as 'kg*m/s^2' or '1', got {text!r}")
    if len(text) > MAX_LENGTH:
        raise _bad(text, f"a unit string is at most {MAX_LENGTH} characters, got {len(text)}")
    body = text.strip()
    if body in ("", "1"):
        return (0,) * len(BASE)
    dims = np.zeros(len(BASE), dtype=np.int64)
    pos, sign, expect_factor = 0, 1, True
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if m is None or m.end() == pos:
            raise _bad(text, f"unexpected {body[pos:pos + 10]!r} at position {pos}")
        sym, op = m.group("sym"), m.group("op")
        if sym is not None:
            if sym not in SYMBOLS:
                raise _bad(text, f"unknown unit {sym!r}")
            power = 1
            pos = m.end()
            p = _TOKEN.match(body, pos)
            if p is not None and p.group("op") in ("^", "**"):
                q = _TOKEN.match(body, p.end())
                if q is None or q.group("num") is None:
                    raise _bad(text, f"a power after {sym!r} must be an integer")
                power = int(q.group("num"))
                if abs(power) > MAX_POWER:
                    raise _bad(text, f"power {power} of {sym!r} is beyond +-{MAX_POWER}")
                pos = q.end()
            dims += sign * power * np.array(SYMBOLS[sym])
            sign, expect_factor = 1, False
            continue
        if op in ("*", "/") and not expect_factor:
            sign, expect_factor = (1 if op == "*" else -1), True
            pos = m.end()
            continue
        raise _bad(text, f"unexpected {m.group(0).strip()!r} at position {pos}")
    if expect_factor:
        raise _bad(text, "it ends with an operator")
    return tuple(int(v) for v in dims)


def _bad(text: str, why: str) -> SymTorchFXError:
    return SymTorchFXError(
        f"unit {text[:60]!r}: {why}. Write products and quotients of {', '.join(SYMBOLS)} with "
        "integer powers, e.g. 'kg*m/s^2', or '1' for a dimensionless quantity")


@dataclass(frozen=True)
class Units:
    """The units of a target's inputs (one string per input feature) and outputs (one string
    for all, or one per output), for ``convert(units=...)``::

        sfx.Units(inputs=["kg", "m/s", "m/s"], outputs="kg*m^2/s^2")

    The search then also looks for the law over the dimensionless groups of the inputs
    (:func:`groups`), and a PySR engine gets the units as ``X_units``/``y_units``."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...] | str

    def __init__(self, inputs: Sequence[str], outputs: Sequence[str] | str = "1"):
        if isinstance(inputs, str) or not isinstance(inputs, Sequence):
            raise SymTorchFXError(
                f"Units(inputs=...) is a list of unit strings, one per input, got {inputs!r}")
        ins = tuple(inputs)
        for u in ins:
            parse_unit(u)
        if isinstance(outputs, str):
            parse_unit(outputs)
            outs = outputs
        elif isinstance(outputs, Sequence):
            outs = tuple(outputs)
            for u in outs:
                parse_unit(u)
        else:
            raise SymTorchFXError(
                f"Units(outputs=...) is a unit string or a list of them, got {outputs!r}")
        object.__setattr__(self, "inputs", ins)
        object.__setattr__(self, "outputs", outs)

    def output(self, k: int, n_outputs: int) -> str:
        """The unit of output ``k`` of ``n_outputs``."""
        if isinstance(self.outputs, str):
            return self.outputs
        if len(self.outputs) != n_outputs:
            raise SymTorchFXError(
                f"Units gives {len(self.outputs)} output units for {n_outputs} outputs; give "
                "one per output, or one string for all")
        return self.outputs[k]


@dataclass(frozen=True)
class Groups:
    """``y = P(x) g(pi)``: the prefactor's exponents ``prefactor`` (one per input) and the
    dimensionless groups' exponents ``groups`` (one row per group), all rational."""

    prefactor: tuple
    groups: tuple

    def prefactor_text(self, names: Sequence[str]) -> str:
        return _monomial(self.prefactor, names)

    def group_texts(self, names: Sequence[str]) -> list[str]:
        return [_monomial(q, names) for q in self.groups]

    def values(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the groups' values, one column each; the prefactor's values) on rows ``X``."""
        X = np.asarray(X, np.float64)
        with np.errstate(all="ignore"):
            P = _power_product(X, self.prefactor)
            G = (np.column_stack([_power_product(X, q) for q in self.groups])
                 if self.groups else np.zeros((len(X), 0)))
        return G, P


    def fitted(self, X: np.ndarray, y: np.ndarray, reach: int = 2) -> Groups:
        """These groups with the prefactor times the powers of the groups (each power in
        ``-reach..reach``) that leave ``y / P`` varying least (in log): any such prefactor has
        the output's dimension, and the one that carries most of ``y``'s scale leaves ``g``
        simplest (``m c^2`` rather than ``m v^2`` for ``m c^2 / sqrt(1 - v^2/c^2)``). Outputs
        that change sign or touch 0 keep the prefactor as it is."""
        return self.ranked(X, y, reach, 1)[0]

    def ranked(self, X: np.ndarray, y: np.ndarray, reach: int = 2,
               count: int = 3) -> list[Groups]:
        """The ``count`` best prefactors of :meth:`fitted`, best first (fewer when the
        output changes sign or touches 0: then only the prefactor as it is). The best by this
        measure is not always the one that leaves ``g`` simplest: a Gaussian of width ``s``
        in ``t`` is ``(1/s) exp(-u^2/2)`` and ``(1/t) u exp(-u^2/2)`` (``u = t/s``), and over
        ``u`` in [1/3, 3] the second varies less in log."""
        y = np.asarray(y, np.float64)
        if not self.groups or not (np.all(y > 0) or np.all(y < 0)):
            return [self]
        G, P = self.values(X)
        with np.errstate(all="ignore"):
            logs = np.log(np.abs(y)) - np.log(np.abs(P))
            logG = np.log(np.abs(G))
        if not (np.all(np.isfinite(logs)) and np.all(np.isfinite(logG))):
            return [self]
        steps = range(-reach, reach + 1)
        if len(self.groups) <= 3:
            tries = itertools.product(steps, repeat=len(self.groups))
        else:  # one group at a time
            tries = [tuple(t if i == j else 0 for i in range(len(self.groups)))
                     for j in range(len(self.groups)) for t in steps]
        order = sorted(set(tries), key=lambda t: (
            round(float(np.var(logs - logG @ np.array(t))), 12), sum(map(abs, t)), t))
        return [Groups(tuple(p + sum(t * q[i] for t, q in zip(best, self.groups))
                             for i, p in enumerate(self.prefactor)), self.groups)
                for best in order[:count]]


def _power_product(X, exps) -> np.ndarray:
    out = np.ones(len(X))
    for i, e in enumerate(exps):
        if e:
            out = out * X[:, i] ** float(e)
    return out


def _monomial(exps, names) -> str:
    num, den = [], []
    for name, e in zip(names, exps):
        if e == 0:
            continue
        mag = abs(e)
        text = name if mag == 1 else (f"{name}^{int(mag)}" if mag.denominator == 1
                                      else f"{name}^({mag.numerator}/{mag.denominator})")
        (num if e > 0 else den).append(text)
    top = "*".join(num) or "1"
    if not den:
        return top
    return f"{top}/({'*'.join(den)})" if len(den) > 1 else f"{top}/{den[0]}"


def groups(input_units: Sequence[str], output_unit: str) -> Groups | None:
    """The prefactor and dimensionless groups of inputs with ``input_units`` for an output of
    ``output_unit``; None when no product of powers of the inputs has the output's dimension
    (a dimensional constant is missing from the inputs)."""
    per_input = [parse_unit(u) for u in input_units]
    return groups_of([[dims[b] for dims in per_input] for b in range(len(BASE))],
                     parse_unit(output_unit))


def groups_of(dimensions: Sequence[Sequence], output: Sequence) -> Groups | None:
    """The prefactor and groups of a dimension matrix: ``dimensions`` has one row per base
    dimension (each input's power of it), ``output`` the output's powers (integers or
    rationals); None when no product of powers of the inputs has the output's dimension. The
    units of :func:`groups`, or the scalings found on a network (``search.scaling``)."""
    import sympy

    rows = [list(row) for row in dimensions]
    if len(set(map(len, rows))) > 1 or len(list(output)) != len(rows):
        raise SymTorchFXError(
            f"a dimension matrix has one row per base dimension, each as long as the others, "
            f"and the output one power per row; got rows of {[len(r) for r in rows]} entries "
            f"and {len(list(output))} output powers")
    D = sympy.Matrix([[_exact(c) for c in row] for row in rows])
    d = sympy.Matrix([_exact(c) for c in output])
    try:
        sol, params = D.gauss_jordan_solve(d)
    except ValueError:
        return None
    p = sol.subs({t: 0 for t in params})
    basis = []
    for v in D.nullspace():
        den = math.lcm(*[sympy.fraction(sympy.nsimplify(c))[1] for c in v]) or 1
        w = [int(c * den) for c in v]
        g = math.gcd(*w) or 1
        w = [c // g for c in w]
        lead = next(c for c in w if c)
        basis.append(tuple(_fraction(c if lead > 0 else -c) for c in w))
    return Groups(tuple(_fraction(c) for c in p), tuple(basis))


def _exact(c):
    """A power as an exact sympy rational: an int, a Fraction, or a float that is a ratio of
    small integers; anything else (NaN, 0.1, a string) is refused."""
    from fractions import Fraction

    import sympy

    if isinstance(c, bool) or not isinstance(c, (int, float, Fraction, np.integer,
                                                  np.floating, sympy.Rational)):
        raise SymTorchFXError(f"a power in a dimension matrix is a number, got {c!r}")
    if isinstance(c, (float, np.floating)):
        if not math.isfinite(c) or Fraction(float(c)).limit_denominator(MAX_POWER) != c:
            raise SymTorchFXError(
                f"a power in a dimension matrix is an integer or a simple fraction; {c!r} is "
                "not (give fractions.Fraction for a fractional power)")
        c = Fraction(float(c)).limit_denominator(MAX_POWER)
    if isinstance(c, Fraction):
        return sympy.Rational(c.numerator, c.denominator)
    return sympy.Rational(int(c)) if not isinstance(c, sympy.Rational) else c


def _fraction(c):
    from fractions import Fraction

    import sympy

    r = sympy.Rational(c)
    return Fraction(int(r.p), int(r.q))
