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

import math
import re
from collections.abc import Mapping

import sympy

from ..errors import EquationSyntaxError
from .ops import CONSTANTS, FUNCTIONS, PRINT_NAMES

MAX_TEXT = 200_000
MAX_DEPTH = 100

_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|[-+*/^(),])"
    r")"
)


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
        pos = m.end()
    tokens.append(("end", "", end))
    return tokens


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


class _Parser:
    def __init__(self, text: str, symbols: Mapping[str, sympy.Symbol]):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.symbols = symbols
        self.depth = 0

    def error(self, msg: str) -> EquationSyntaxError:
        pos = self.tokens[self.i][2]
        return EquationSyntaxError(f"{msg} at position {pos} in {_clip(self.text)!r}")

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        tok = self.tokens[self.i]
        if value is not None and tok[1] != value:
            raise self.error(f"expected {value!r}, found {tok[1] or 'end of text'!r}")
        self.i += 1
        return tok

    def parse(self) -> sympy.Expr:
        if self.peek()[0] == "end":
            raise EquationSyntaxError("equation text is empty")
        e = self.expr()
        if self.peek()[0] != "end":
            raise self.error(f"unexpected {self.peek()[1]!r}")
        return e

    def _enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nested deeper than {MAX_DEPTH} levels")

    def expr(self) -> sympy.Expr:
        self._enter()
        e = self.term()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            rhs = self.term()
            e = e + rhs if op == "+" else e - rhs
        self.depth -= 1
        return e

    def term(self) -> sympy.Expr:
        e = self.unary()
        while self.peek()[1] in ("*", "/"):
            op = self.take()[1]
            rhs = self.unary()
            e = e * rhs if op == "*" else e / rhs
        return e

    def unary(self) -> sympy.Expr:
        if self.peek()[1] in ("-", "+"):
            op = self.take()[1]
            self._enter()
            e = self.unary()
            self.depth -= 1
            return -e if op == "-" else e
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.atom()
        if self.peek()[1] in ("^", "**"):
            self.take()
            self._enter()
            exponent = self.unary()
            self.depth -= 1
            return base**exponent
        return base

    def atom(self) -> sympy.Expr:
        kind, value, _ = self.peek()
        if kind == "num":
            self.take()
            return _number(value, self)
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
                return self.symbols[value]
            if value in CONSTANTS:
                return CONSTANTS[value]
            self.i -= 1
            known = sorted(self.symbols)
            hint = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            raise self.error(
                f"unknown name {value!r}; the variables of this equation are: {hint or '(none)'}"
            )
        raise self.error(f"unexpected {value or 'end of text'!r}")

    def call(self, name: str) -> sympy.Expr:
        if name not in FUNCTIONS:
            self.i -= 1
            raise self.error(
                f"unknown function {name!r}; allowed functions: {', '.join(sorted(FUNCTIONS))}"
            )
        arity, build = FUNCTIONS[name]
        self.take("(")
        args = [self.expr()]
        while self.peek()[1] == ",":
            self.take()
            args.append(self.expr())
        self.take(")")
        if len(args) != arity:
            raise self.error(f"{name} takes {arity} argument(s), got {len(args)}")
        return build(*args)


def _number(text: str, parser: _Parser) -> sympy.Expr:
    if re.fullmatch(r"\d+", text):
        return sympy.Integer(int(text))
    value = float(text)
    if not math.isfinite(value):
        raise parser.error(f"number {text!r} is not finite")
    return sympy.Float(value)


def parse(text: str, symbols: Mapping[str, sympy.Symbol]) -> sympy.Expr:
    """Parse equation ``text`` into a sympy expression over ``symbols`` (name -> Symbol).

    Raises :class:`EquationSyntaxError` for anything outside the grammar; never evaluates code.
    """
    return _Parser(text, symbols).parse()


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
# do not count and fronts from different engines compare.


def complexity(expr: sympy.Expr) -> int:
    return _cx(sympy.sympify(expr))


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
        return n
    if e.is_Pow:
        if e.exp == sympy.Rational(1, 2):
            return 1 + _cx(e.base)
        if e.exp.is_Number and e.exp < 0:
            return 2 + _cx(e.base ** (-e.exp))  # 1 / base^k
        return 1 + _cx(e.base) + _cx(e.exp)
    if e.func in (sympy.Min, sympy.Max) and len(e.args) > 2:
        return len(e.args) - 1 + sum(_cx(a) for a in e.args)
    return 1 + sum(_cx(a) for a in e.args)


# ----------------------------------------------------------------------------------------------
# constants: numbers an engine fitted become named symbols so they can be tuned as parameters


def variable(name: str) -> sympy.Symbol:
    """The symbol of a feature. Real, so sympy never folds ``abs(exp(x))`` into ``exp(re(x))``."""
    return sympy.Symbol(name, real=True)


def constant_symbol(i: int) -> sympy.Symbol:
    return sympy.Symbol(f"c{i}", real=True)


def templatize(expr: sympy.Expr, start: int = 0) -> tuple[sympy.Expr, list[float]]:
    """Replace every fitted (floating-point) number in ``expr`` by a constant symbol.

    Returns the template and the constants' values, numbered ``c{start}``, ``c{start+1}``, ... in
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


def _tidy_once(expr: sympy.Expr, scale: float) -> sympy.Expr:
    floats = [f for f in expr.atoms(sympy.Float)]
    if not floats:
        return expr
    repl = {}
    for f in floats:
        v = float(f)
        if not math.isfinite(v):  # beyond float range (sympy Floats are not): left for the
            continue              # caller's finiteness check to reject
        r = round(v)
        if abs(v - r) <= 1e-6 * max(1.0, abs(v)):
            repl[f] = sympy.Integer(r)
    e = expr.xreplace(repl) if repl else expr
    if e.is_Add:
        tiny = [t for t in e.args if t.is_Float and abs(float(t)) < 1e-6 * max(scale, 1e-30)]
        if tiny:
            e = sympy.Add(*[t for t in e.args if t not in tiny])
    return e
