"""Equations as text: the restricted grammar, its parser and printer, and complexity.

The grammar is deliberately small::

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/') unary)*
    unary  := ('-' | '+') unary | power
    power  := atom (('^' | '**') unary)?
    atom   := NUMBER | NAME | NAME '(' expr (',' expr)* ')' | '(' expr ')'

``NAME`` is a declared variable, a declared constant symbol, one of ``_ops.CONSTANTS`` or (followed
by parentheses) one of ``_ops.FUNCTIONS``. Anything else is an :class:`EquationSyntaxError`. The
parser builds sympy objects directly; text never reaches ``eval``, ``exec`` or ``sympify``, so a
tampered file cannot run code. Engine output (Operon's infix strings, PySR's equations) goes through
the same parser.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Mapping

import sympy

from ..errors import EquationSyntaxError
from .ops import CONSTANTS, FUNCTIONS, NUMERIC, PRINT_NAMES

MAX_TEXT = 200_000
MAX_DEPTH = 100
#: tokens in one equation; an engine's equations have tens, a PCA surrogate's a few hundred
MAX_TOKENS = 20_000
#: a number-only part of an equation must stay within float64's range
_MAX_LOG10 = 308.0
_MAX_DIGITS = 400

_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|[-+*/^(),])"
    r")"
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def reserved(name: str) -> bool:
    """Whether ``name`` cannot be a variable: a function or a named constant of the grammar."""
    return name in FUNCTIONS or name in CONSTANTS


def check_variable_names(names) -> None:
    """Raise :class:`EquationSyntaxError` unless every name can be a variable of an equation:
    an identifier that is not a function or constant of the grammar, each given once."""
    seen = set()
    for name in names:
        if not isinstance(name, str) or not _IDENTIFIER.match(name):
            raise EquationSyntaxError(
                f"variable name {name!r} is not an identifier; variables are identifiers "
                "(letters, digits and _, not starting with a digit)")
        if reserved(name):
            raise EquationSyntaxError(
                f"variable name {name!r} is reserved: it is a function or constant of the "
                "equation grammar; rename the variable")
        if name in seen:
            raise EquationSyntaxError(f"variable name {name!r} is given twice")
        seen.add(name)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    if not isinstance(text, str):
        raise EquationSyntaxError(f"equation must be text, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise EquationSyntaxError(
            f"equation text is {len(text)} characters long; the limit is {MAX_TEXT}"
        )
    tokens, pos, end = [], 0, len(text.rstrip())
    while pos < end:
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            bad = text[pos:].lstrip()[:1]
            raise EquationSyntaxError(
                f"unexpected character {bad!r} at position {pos} in {_clip(text)!r}; "
                "equations may contain numbers, variable names, + - * / ^, parentheses, commas "
                "and the functions " + ", ".join(sorted(FUNCTIONS))
            )
        kind = m.lastgroup
        tokens.append((kind, m.group(kind), m.start(kind)))
        if len(tokens) > MAX_TOKENS:
            raise EquationSyntaxError(
                f"equation has more than {MAX_TOKENS} tokens; equations that long are not "
                "something a search gives")
        pos = m.end()
    tokens.append(("end", "", end))
    return tokens


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


class _Parser:
    """A recursive-descent parser with bounded work.

    Every method returns ``(expr, value)``: ``value`` is the float value of a part made of
    numbers only (``None`` where the part has a variable), computed with the float op table
    (``ops.NUMERIC``); each must be a finite real number (no ``acos(2)``, ``(-1)^(1/3)``,
    ``10^5000``), and a power of two numbers is sized up before anything computes it, so
    ``9^9^9`` costs nothing. ``expr`` is the sympy expression, or None when only checking
    (``build=False``: :func:`check`), which costs a few microseconds a token where building
    sympy objects costs about a millisecond a function call. Sums and products are built once
    from all their terms (building them pairwise is quadratic in the number of terms).
    """

    def __init__(self, text: str, symbols: Mapping[str, sympy.Symbol], build: bool = True):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.symbols = symbols
        self.depth = 0
        self.build = build
        self.heavy = 0  # function calls and powers: what costs sympy most to build

    def error(self, msg: str) -> EquationSyntaxError:
        pos = self.tokens[min(self.i, len(self.tokens) - 1)][2]
        return EquationSyntaxError(f"{msg} at position {pos} in {_clip(self.text)!r}")

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        tok = self.tokens[self.i]
        if value is not None and tok[1] != value:
            raise self.error(f"expected {value!r}, found {tok[1] or 'end of text'!r}")
        self.i += 1
        return tok

    def parse(self) -> sympy.Expr | None:
        if self.peek()[0] == "end":
            raise EquationSyntaxError("equation text is empty")
        e, _ = self.expr()
        if self.peek()[0] != "end":
            raise self.error(f"unexpected {self.peek()[1]!r}")
        return e

    def _enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nested deeper than {MAX_DEPTH} levels")

    def value(self, what: str, fn, *args) -> float | None:
        """``fn(*args)`` on the values of number-only parts (None if any part has a variable),
        refused unless it is a finite real number; ``what`` names it in the error."""
        if any(a is None for a in args):
            return None
        try:
            v = fn(*args)
        except (ValueError, ZeroDivisionError):
            raise self.error(f"the constant {what} has no real value") from None
        except OverflowError:
            raise self.error(f"the constant {what} is outside float64's range") from None
        if isinstance(v, complex):
            raise self.error(f"the constant {what} is not a real number")
        v = float(v)
        if not math.isfinite(v):
            raise self.error(f"the constant {what} is outside float64's range")
        return v

    def fold(self, what: str, fn, parts) -> float | None:
        """The value of a sum or product of ``parts``; its number-only terms are combined
        (and checked) even when others have variables, as sympy folds them into one."""
        nums = [v for _, v in parts if v is not None]
        folded = self.value(what, fn, *nums) if len(nums) > 1 else None
        return (folded if len(nums) > 1 else nums[0]) if len(nums) == len(parts) else None

    def expr(self) -> tuple[sympy.Expr | None, float | None]:
        self._enter()
        parts = [self.term()]
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            e, v = self.term()
            if op == "-":
                e, v = (-e if self.build else None), (None if v is None else -v)
            parts.append((e, v))
        self.depth -= 1
        if len(parts) == 1:
            return parts[0]
        return (sympy.Add(*(e for e, _ in parts)) if self.build else None), self.fold(
            "sum", lambda *a: math.fsum(a), parts)

    def term(self) -> tuple[sympy.Expr | None, float | None]:
        parts = [self.unary()]
        while self.peek()[1] in ("*", "/"):
            op = self.take()[1]
            e, v = self.unary()
            if op == "/":
                if v == 0:
                    raise self.error("division by zero")
                e, v = (sympy.Pow(e, -1) if self.build else None), (None if v is None else 1 / v)
            parts.append((e, v))
        if len(parts) == 1:
            return parts[0]
        return (sympy.Mul(*(e for e, _ in parts)) if self.build else None), self.fold(
            "product", lambda *a: math.prod(a), parts)

    def unary(self) -> tuple[sympy.Expr | None, float | None]:
        if self.peek()[1] in ("-", "+"):
            op = self.take()[1]
            self._enter()
            e, v = self.unary()
            self.depth -= 1
            if op == "+":
                return e, v
            return (-e if self.build else None), (None if v is None else -v)
        return self.power()

    def power(self) -> tuple[sympy.Expr | None, float | None]:
        base = self.atom()
        if self.peek()[1] in ("^", "**"):
            self.take()
            self._enter()
            exponent = self.unary()
            self.depth -= 1
            return self.pow(base, exponent)
        return base

    def pow(self, base, exponent) -> tuple[sympy.Expr | None, float | None]:
        (b, bv), (x, xv) = base, exponent
        self.heavy += 1
        what = f"{_fmt(bv)}^{_fmt(xv)}"
        if bv is not None and xv is not None:
            if bv == 0 and xv < 0:
                raise self.error("division by zero (0 to a negative power)")
            if bv != 0 and abs(xv * math.log10(abs(bv))) > _MAX_LOG10:
                raise self.error(f"the constant {what} is outside float64's range")
        value = self.value(what, lambda a, c: a**c, bv, xv)
        return (sympy.Pow(b, x) if self.build else None), value

    def atom(self) -> tuple[sympy.Expr | None, float | None]:
        kind, value, _ = self.peek()
        if kind == "num":
            self.take()
            return _number(value, self, self.build)
        if value == "(":
            self.take()
            e = self.expr()
            self.take(")")
            return e
        if kind == "name":
            self.take()
            if self.peek()[1] == "(":
                return self.call(value)
            if value in self.symbols:
                return self.symbols[value], None
            if value in CONSTANTS:
                return CONSTANTS[value], float(CONSTANTS[value])
            self.i -= 1
            known = sorted(self.symbols)
            hint = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            raise self.error(
                f"unknown name {value!r}; the variables of this equation are: {hint or '(none)'}"
            )
        raise self.error(f"unexpected {value or 'end of text'!r}")

    def call(self, name: str) -> tuple[sympy.Expr | None, float | None]:
        if name not in FUNCTIONS:
            self.i -= 1
            raise self.error(
                f"unknown function {name!r}; allowed functions: {', '.join(sorted(FUNCTIONS))}"
            )
        arity, build = FUNCTIONS[name]
        self.heavy += 1
        self.take("(")
        args = [self.expr()]
        while self.peek()[1] == ",":
            self.take()
            args.append(self.expr())
        self.take(")")
        if len(args) != arity:
            raise self.error(f"{name} takes {arity} argument(s), got {len(args)}")
        if name == "pow":
            return self.pow(*args)
        if name in ("square", "cube"):
            k = 2 if name == "square" else 3
            return self.pow(args[0], (sympy.Integer(k), float(k)))
        vals = [v for _, v in args]
        value = self.value(f"{name}({', '.join(map(_fmt, vals))})", NUMERIC[name], *vals)
        return (build(*(e for e, _ in args)) if self.build else None), value


def _fmt(v: float | None) -> str:
    return "..." if v is None else f"{v:.6g}"


def _number(text: str, parser: _Parser, build: bool) -> tuple[sympy.Expr | None, float]:
    if len(text) > _MAX_DIGITS:
        raise parser.error(f"number {_clip(text, 20)} has more than {_MAX_DIGITS} characters")
    if re.fullmatch(r"\d+", text):
        value = int(text)
        if value > 10**_MAX_LOG10:
            raise parser.error(f"number {_clip(text, 20)} is outside float64's range")
        return (sympy.Integer(value) if build else None), float(value)
    value = float(text)
    if not math.isfinite(value):
        raise parser.error(f"number {text!r} is not finite")
    return (sympy.Float(value) if build else None), value


def parse(text: str, symbols: Mapping[str, sympy.Symbol]) -> sympy.Expr:
    """Parse equation ``text`` into a sympy expression over ``symbols`` (name -> Symbol).

    Raises :class:`EquationSyntaxError` for anything outside the grammar, for variable names
    the grammar reserves (see :func:`check_variable_names`), and for number-only parts that
    are not finite real numbers; never evaluates code, and the work is bounded by the length of
    the text.
    """
    _check_symbols(symbols)
    expr = _Parser(text, symbols).parse()
    for n in expr.atoms(sympy.Number):  # numbers sympy folded across parentheses
        try:
            ok = math.isfinite(float(n))
        except (OverflowError, TypeError):
            ok = False
        if not ok:
            raise EquationSyntaxError(
                f"a constant of {_clip(text)!r} folds to {_clip(str(n), 30)}, outside float64's "
                "range")
    return expr


#: what building one function call or power costs, in tokens: about 4 ms (sympy, then the
#: torch code of a chosen equation) against 15 us a token of sums and products
#: (benchmarks/load_time.py)
HEAVY = 100


def check(text: str, names) -> tuple[int, int]:
    """Raise :class:`EquationSyntaxError` unless ``parse(text, ...)`` over variables ``names``
    would succeed; build nothing (one to a few microseconds a token). Returns the number of
    tokens, and the work ``parse`` would take to build it, in tokens (``HEAVY`` for each function
    call or power)."""
    symbols = dict.fromkeys(names, None)
    _check_symbols(symbols)
    p = _Parser(text, symbols, build=False)
    p.parse()
    n = len(p.tokens) - 1
    return n, n + HEAVY * p.heavy


def _check_symbols(symbols) -> None:
    bad = [n for n in symbols if not isinstance(n, str) or not _IDENTIFIER.match(n) or reserved(n)]
    if bad:
        check_variable_names(bad)


# ----------------------------------------------------------------------------------------------
# printing (sympy -> grammar text); ``parse(to_text(e)) == e`` for every expression we produce

_PREC_ADD, _PREC_MUL, _PREC_NEG, _PREC_POW, _PREC_ATOM = 1, 2, 2, 3, 4


def fraction(mul: sympy.Mul) -> tuple[list[sympy.Expr], list[sympy.Expr]]:
    """The factors of a product over and under the fraction bar (``x * y**-2`` -> ``[x], [y**2]``),
    so printers emit one division instead of reciprocals."""
    num, den = [], []
    for f in mul.args:
        if f.is_Pow and f.exp.is_Number and f.exp < 0:
            den.append(f.base ** (-f.exp))
        else:
            num.append(f)
    return num, den


def fresh_names(prefix: str, n: int, taken) -> list[str]:
    """``n`` variable names ``prefix0``, ``prefix1``, ... that are not in ``taken`` and are not
    functions or constants of the grammar (for variables a pass introduces)."""
    taken, out, k = set(taken), [], 0
    while len(out) < n:
        name = f"{prefix}{k}"
        if name not in taken and not reserved(name):
            out.append(name)
        k += 1
    return out


def rewrite_variables(text: str, definitions: Mapping[str, str], names) -> str:
    """``text`` (an equation over ``names`` and the names ``definitions`` defines) as an
    equation over ``names`` only: each defined name replaced by its definition, an equation
    over ``names``. Both are parsed by the grammar; nothing is evaluated."""
    symbols = {n: variable(n) for n in (*names, *definitions)}
    expr = parse(text, symbols)
    subs = {symbols[n]: parse(d, {k: symbols[k] for k in names})
            for n, d in definitions.items()}
    return to_text(expr.xreplace(subs))


def to_text(expr: sympy.Expr, digits: int | None = None) -> str:
    """Print ``expr`` in the restricted grammar: floats with round-trip precision, or rounded to
    ``digits`` significant digits for display."""
    return _print(sympy.sympify(expr), digits)[0]


def _print(e, d: int | None = None) -> tuple[str, int]:
    if e.is_Symbol:
        return e.name, _PREC_ATOM
    if e.is_Integer:
        v = int(e)
        return (str(v), _PREC_ATOM) if v >= 0 else (f"-{-v}", _PREC_NEG)
    if e.is_Rational:
        p, q = int(e.p), int(e.q)
        s = f"{abs(p)}/{q}"
        return (s, _PREC_MUL) if p > 0 else ("-" + s, _PREC_NEG)
    if e.is_Float:
        v = float(e)
        if not math.isfinite(v):
            raise EquationSyntaxError(f"cannot write the non-finite number {v} in an equation")
        s = repr(v) if d is None else f"{v:.{d}g}"
        return (s, _PREC_ATOM) if v >= 0 else (s, _PREC_NEG)
    if e is sympy.pi:
        return "pi", _PREC_ATOM
    if e is sympy.E:
        return "E", _PREC_ATOM
    if e.is_Add:
        terms = e.as_ordered_terms()
        first, prec = _print(terms[0], d)
        out = [first]
        for t in terms[1:]:
            if t.could_extract_minus_sign():
                out.append(" - " + _wrap(-t, _PREC_MUL, d))
            else:
                out.append(" + " + _wrap(t, _PREC_ADD + 1, d))
        return "".join(out), _PREC_ADD
    if e.is_Mul:
        if e.could_extract_minus_sign():
            return "-" + _wrap(-e, _PREC_MUL, d), _PREC_NEG
        num, den = [], []
        for f in e.as_ordered_factors():
            if f.is_Pow and f.exp.is_Number and f.exp < 0:
                den.append(f.base ** (-f.exp))
            elif f.is_Rational and not f.is_Integer:
                if f.p != 1:
                    num.append(sympy.Integer(f.p))
                den.append(sympy.Integer(f.q))
            else:
                num.append(f)
        if len(num) >= 3 and num[0].is_Number and any(f.is_Add for f in num[1:]):
            # sympy distributes a number over a sum when a product has just those two factors,
            # so c*(a+b)*f(x) must be read back as c*((a+b)*f(x)) to come back unchanged
            rest = "*".join(_wrap(f, _PREC_MUL, d) for f in num[1:])
            s = f"{_wrap(num[0], _PREC_MUL, d)}*({rest})"
        else:
            s = "*".join(_wrap(f, _PREC_MUL, d) for f in num) if num else "1"
        if den:
            if len(den) == 1:
                s += "/" + _wrap(den[0], _PREC_POW, d)
            else:
                s += "/(" + _print(sympy.Mul(*den, evaluate=False), d)[0] + ")"
        return s, _PREC_MUL
    if e.is_Pow:
        b, x = e.base, e.exp
        if x == sympy.Rational(1, 2):
            return f"sqrt({_print(b, d)[0]})", _PREC_ATOM
        if x.is_Number and x < 0:
            return "1/" + _wrap(b ** (-x), _PREC_POW, d), _PREC_MUL
        return f"{_wrap(b, _PREC_ATOM, d)}^{_wrap(x, _PREC_ATOM, d)}", _PREC_POW
    if isinstance(e, sympy.Function) or e.func in PRINT_NAMES:
        name = PRINT_NAMES.get(e.func)
        if name is None:
            raise EquationSyntaxError(f"the function {e.func} has no name in the equation grammar")
        args = e.args
        if name in ("min", "max") and len(args) > 2:  # nest n-ary Min/Max as binary calls
            inner = e.func(*args[1:])
            return f"{name}({_print(args[0], d)[0]}, {_print(inner, d)[0]})", _PREC_ATOM
        return f"{name}({', '.join(_print(a, d)[0] for a in args)})", _PREC_ATOM
    raise EquationSyntaxError(f"cannot write {e!r} ({type(e).__name__}) in the equation grammar")


def _wrap(e, min_prec: int, d: int | None = None) -> str:
    s, p = _print(e, d)
    return s if p >= min_prec else f"({s})"


# ----------------------------------------------------------------------------------------------
# complexity: node count of the expression tree as PySR counts it (every operator, variable and
# constant is one node), taken on the sympy-folded expression so linear-scaling terms that cancel
# do not count and fronts from different engines compare. A product whose factors share an
# integer power counts as that power, as it was written before sympy distributed it.


def complexity(expr: sympy.Expr) -> int:
    return _cx(sympy.sympify(expr))


#: each subexpression is counted once: a product's shared-power count (``_gathered_power``)
#: counts its factors again, which, uncached, is exponential in the depth of nested products
@functools.lru_cache(maxsize=65536)
def _cx(e) -> int:
    if e.is_Atom:
        return 1
    if e.is_Add:
        terms = e.args
        negs = [t.could_extract_minus_sign() for t in terms]
        total = sum(_cx(-t) if n else _cx(t) for t, n in zip(terms, negs)) + len(terms) - 1
        return total + (1 if all(negs) else 0)
    if e.is_Mul:
        if e.could_extract_minus_sign():
            return 1 + _cx(-e)
        num, den = [], []
        for f in e.args:
            if f.is_Pow and f.exp.is_Number and f.exp < 0:
                den.append(f.base ** (-f.exp))
            elif f.is_Rational and not f.is_Integer:
                if f.p != 1:
                    num.append(sympy.Integer(f.p))
                den.append(sympy.Integer(f.q))
            else:
                num.append(f)
        n = sum(_cx(f) for f in num) + max(len(num) - 1, 0)
        if not num:
            n = 1  # the 1 in 1/x
        if den:
            n += 1 + sum(_cx(f) for f in den) + len(den) - 1
        gathered = _gathered_power(e)
        return n if gathered is None else min(n, gathered)
    if e.is_Pow:
        if e.exp == sympy.Rational(1, 2):
            return 1 + _cx(e.base)
        if e.exp.is_Number and e.exp < 0:
            return 2 + _cx(e.base ** (-e.exp))  # 1 / base^k
        return 1 + _cx(e.base) + _cx(e.exp)
    if e.func in (sympy.Min, sympy.Max) and len(e.args) > 2:
        return len(e.args) - 1 + sum(_cx(a) for a in e.args)
    return 1 + sum(_cx(a) for a in e.args)


#: the stand-in for a gathered power in :func:`_gathered_power`'s count (one node)
_POWER = sympy.Dummy("power")


def _gathered_power(e) -> int | None:
    """The count of a product with two or more factors whose integer powers share a factor
    ``g >= 2``, those factors written as one power: ``x1^2/x2^2`` as ``(x1/x2)^2`` (5 nodes,
    not 7), ``m*v^2/c^2`` as ``m*(v/c)^2``. sympy distributes an integer power over a product,
    so ``(x1/x2)^2`` from a search, or from a group of the units, reaches this count as
    ``x1^2*x2^-2``: the law ``m/sqrt(1 - (v/c)^2)`` should weigh on a front as it is written.
    The smallest such count, or None when no two factors share a power."""
    factors = [f.as_base_exp() for f in e.args]
    exps = [abs(int(x)) for b, x in factors if x.is_Integer and not b.is_Number]
    best = None
    # the shared factors worth trying: those of two powers (not every g up to x^1000000's)
    for g in sorted({math.gcd(a, b) for a, b in itertools.combinations(exps, 2)} - {0, 1}):
        shared = [(b, x) for b, x in factors if x.is_Integer and not b.is_Number and x % g == 0]
        if len(shared) < 2:
            continue
        rest = [b ** x for b, x in factors if (b, x) not in shared]
        # shared powers all negative: in the denominator, rest / (...)^g
        s = -1 if all(x < 0 for _, x in shared) else 1
        inner = sympy.Mul(*[b ** (s * x // g) for b, x in shared])
        # the power, placed as any factor: rest * (...)^g (one symbol, so _cx's cache serves)
        n = (_cx(sympy.Mul(*rest, _POWER ** s)) - 1) + 1 + _cx(inner) + _cx(sympy.Integer(g))
        best = n if best is None else min(best, n)
    return best


# ----------------------------------------------------------------------------------------------
# constants: numbers an engine fitted become named symbols so they can be tuned as parameters


def variable(name: str) -> sympy.Symbol:
    """The symbol of a feature. Real, so sympy never folds ``abs(exp(x))`` into ``exp(re(x))``."""
    return sympy.Symbol(name, real=True)


def constant_symbol(i: int) -> sympy.Symbol:
    """The symbol of fitted constant ``i`` in a template. Its name (``$c0``, ...) is no
    identifier, so no variable of an equation can ever be mistaken for it."""
    return sympy.Symbol(f"$c{i}", real=True)


def templatize(expr: sympy.Expr, start: int = 0) -> tuple[sympy.Expr, list[float]]:
    """Replace every fitted (floating-point) number in ``expr`` by a constant symbol.

    Returns the template and the constants' values, numbered ``start``, ``start+1``, ... in
    the order they first appear. Integers and rationals (exponents, the 1 in 1/x) stay literal.
    """
    seen: dict[sympy.Float, sympy.Symbol] = {}
    values: list[float] = []
    for node in sympy.preorder_traversal(expr):
        if node.is_Float and node not in seen:
            seen[node] = constant_symbol(start + len(values))
            values.append(float(node))
    if not seen:
        return expr, values
    return expr.xreplace(seen), values


def substitute(template: sympy.Expr, values: list[float], start: int = 0) -> sympy.Expr:
    """Put numeric constants back into a template made by :func:`templatize`."""
    if not values:
        return template
    return template.xreplace(
        {constant_symbol(start + i): sympy.Float(v) for i, v in enumerate(values)}
    )


def tidy(expr: sympy.Expr, scale: float = 1.0) -> sympy.Expr:
    """Remove float32 noise the engines leave behind.

    Operon computes in float32 and wraps every model in a linear scaling ``a + b*f(x)``. Constants
    within 1e-6 (relative) of an integer become that integer (so ``1.0000001*x`` is ``x``), and
    additive constants smaller than ``1e-6 * scale`` (``scale``: the spread of the target) vanish.
    The caller recomputes the loss of the result, so tidying never hides a worse fit.
    """
    for _ in range(4):  # folding can expose new constants (1.0*(2.0*x) -> 2.0*x): repeat
        new = _tidy_once(expr, scale)
        if new == expr:
            break
        expr = new
    return expr


def snap_integers(expr: sympy.Expr, tolerance: float, zero: bool = True) -> sympy.Expr:
    """``expr`` with each constant within ``tolerance * max(1, |n|)`` of an integer ``n``
    replaced by ``n`` (never by 0 when ``zero`` is False). Constants beyond float range are
    left for the caller's finiteness check."""
    repl = {}
    for f in expr.atoms(sympy.Float):
        v = float(f)
        if not math.isfinite(v):  # beyond float range (sympy Floats are not)
            continue
        r = round(v)
        if (r or zero) and abs(v - r) <= tolerance * max(1.0, abs(r)):
            repl[f] = sympy.Integer(r)
    return expr.xreplace(repl) if repl else expr


def _tidy_once(expr: sympy.Expr, scale: float) -> sympy.Expr:
    e = snap_integers(expr, 1e-6)
    if e.is_Add:
        tiny = [t for t in e.args if t.is_Float and abs(float(t)) < 1e-6 * max(scale, 1e-30)]
        if tiny:
            e = sympy.Add(*[t for t in e.args if t not in tiny])
    return e
