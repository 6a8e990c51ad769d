"""The restricted equation grammar: parse/print round trips, complexity, rejection of code."""

from __future__ import annotations

import math

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from symtorch_fx.errors import EquationSyntaxError
from symtorch_fx.expr.grammar import (
    complexity,
    parse,
    substitute,
    templatize,
    tidy,
    to_text,
)

X = sympy.symbols("x0 x1 x2", real=True)
S = {s.name: s for s in X}


@pytest.mark.parametrize("text,cx", [
    ("x0", 1), ("x0 + x1", 3), ("x0 - x1", 3), ("x0*x1 + sin(x0)", 6), ("1/x0", 3),
    ("x0^2", 3), ("sqrt(x0)", 2), ("exp(-x0)", 3), ("x0/(x1*x2)", 5), ("-x0 - x1", 4),
    ("2.5*x0 + 1.5", 5),
    # a shared power counts once, as written: (x1/x2)^2, x0*(x1/x2)^2, 1/(x0*x1)^2
    ("x1^2/x2^2", 5), ("(x1/x2)^2", 5), ("x0*x1^2/x2^2", 7), ("1/(x0^2*x1^2)", 7),
    ("x0/sqrt(1 - x1^2/x2^2)", 10), ("x0^2*x1", 5), ("x0^1000000000*x1^2*x2^4", 11),
])
def test_complexity_counts_nodes_like_pysr(text, cx):
    assert complexity(parse(text, S)) == cx


def test_complexity_of_nested_shared_powers_is_quick():
    """A product's shared-power count counts its factors again: uncached, that is exponential
    in the depth of nested products (20 levels took 97 s). An equation read from a file may
    nest that deep."""
    import time

    text = "x0"
    for _ in range(30):
        text = f"x1^2*(x2 + x0^2*({text}))^2"
    e = parse(text, S)
    t0 = time.perf_counter()
    assert complexity(e) == 241
    assert time.perf_counter() - t0 < 5.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=3, max_size=3), st.integers(2, 4),
       st.sampled_from(["", "2.5*", "-", "x0 + "]))
def test_a_power_of_a_product_counts_as_written(exps, g, outer):
    """sympy distributes ``(x0^a x1^b x2^c)^g`` over its factors; the count stays that of
    the power as written (its product, the power and its exponent: two nodes more)."""
    inner = sympy.Mul(*[x ** k for x, k in zip(X, exps)])
    if not inner.free_symbols:
        return
    written = complexity(parse(f"{outer}({to_text(inner)})", S))
    powered = complexity(parse(f"{outer}({to_text(inner)})^{g}", S))
    assert powered <= written + 2


def test_operon_output_parses_and_folds():
    text = "((-0.057673275470734) + (0.998252868652344 * (0.662448942661285 * x1)))"
    e = parse(text, S)
    assert complexity(e) == 5  # a*x1 + b after sympy folds the scaling terms
    assert parse("x0 ^ 2", S) == X[0] ** 2


def test_pysr_style_functions():
    assert parse("square(x0) + cube(x1) + inv(x2) + neg(x0)", S) == (
        X[0] ** 2 + X[1] ** 3 + 1 / X[2] - X[0])
    assert parse("relu(x0)", S) == sympy.Max(0, X[0])


@pytest.mark.parametrize("bad,msg", [
    ("__import__('os').system('ls')", "unexpected character"),
    ("__import__(x0)", "unknown function '__import__'"),
    ("x0.real", "unexpected character"),
    ("lambda: 1", "unexpected character"),
    ("x0 + y", "unknown name 'y'"),
    ("sin(x0, x1)", "takes 1 argument"),
    ("x0 +", "unexpected"),
    ("", "empty"),
    ("1e999", "not finite"),
    ("(" * 500 + "x0" + ")" * 500, "nested deeper"),
])
def test_bad_text_is_rejected(bad, msg):
    with pytest.raises(EquationSyntaxError, match=msg):
        parse(bad, S)


def test_tidy_removes_float32_noise():
    e = parse("1.0000001*x0 + 2.5*sin(0.9999999*x1) - 1e-9", S)
    assert tidy(e) == X[0] + 2.5 * sympy.sin(X[1])


def test_templatize_roundtrip():
    e = parse("2.5*sin(x0) + x1^2 - 0.125", S)
    t, vals = templatize(e)
    assert sorted(vals) == [-0.125, 2.5]
    assert X[1] ** 2 in t.args  # integer exponents are structure, not constants
    assert substitute(t, vals) == e


# -- property: printing then parsing any expression we can build gives the same expression ----

leaves = st.one_of(
    st.sampled_from(X),
    st.floats(-100, 100, allow_nan=False).filter(lambda v: abs(v) > 1e-3).map(sympy.Float),
    st.integers(1, 5).map(sympy.Integer),
)
unary = st.sampled_from([sympy.sin, sympy.cos, sympy.exp, sympy.log, sympy.sqrt, sympy.tanh,
                         sympy.Abs, lambda a: -a, lambda a: a**2, lambda a: 1 / a])
binary = st.sampled_from([lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b,
                          lambda a, b: a / b, sympy.Max, sympy.Min])


def _safe(f, *args):
    if not any(a.free_symbols for a in args):
        return args[0]  # functions of bare numbers fold to numbers (exp(exp(100))...): skip
    try:
        return f(*args)
    except (ValueError, TypeError):  # e.g. Max of a complex number: not an equation we emit
        return sympy.nan


def _exprs():
    return st.recursive(
        leaves,
        lambda inner: st.one_of(st.builds(_safe, unary, inner),
                                st.builds(_safe, binary, inner, inner)),
        max_leaves=8,
    )


@settings(max_examples=300, deadline=None)
@given(_exprs())
def test_print_parse_roundtrip(e):
    if e.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo, sympy.I):
        return
    if any(not 1e-300 < abs(float(v)) < 1e300 for v in e.atoms(sympy.Float) if v != 0):
        # sympy folded a constant past float64's normal range (exp(27 x0 - 729) holds
        # exp(-729) = 2.5e-317): equations are floats, such a constant is refused or rounded
        return
    text = to_text(e)
    back = parse(text, S)
    assert sympy.simplify(back - e) == 0 or back == e, text
    lost = [v for v in e.atoms(sympy.Float)  # constants survive exactly (sympy may move a
            # sign: -(x0 + 1.0)/x0 reads back as (-x0 - 1.0)/x0)
            if not any(math.isclose(abs(float(v)), abs(float(w)), rel_tol=0, abs_tol=0)
                       for w in back.atoms(sympy.Float))]
    if lost and back.atoms(sympy.Float):
        # or sympy folded them on reading (2*(x0 + 1.0)/x0 reads back as (2*x0 + 2.0)/x0): the
        # values then agree to float precision wherever both are real
        for point in ({X[0]: 0.37, X[1]: 1.3, X[2]: -2.1}, {X[0]: 2.9, X[1]: -0.6, X[2]: 0.8}):
            a, b = complex(e.evalf(30, subs=point)), complex(back.evalf(30, subs=point))
            if a.imag == 0 and b.imag == 0 and math.isfinite(a.real) and math.isfinite(b.real):
                assert math.isclose(a.real, b.real, rel_tol=1e-12, abs_tol=1e-12), (text, point)


def test_the_float_op_table_agrees_with_the_sympy_one():
    """The parser checks number-only parts with ops.NUMERIC; they must mean what FUNCTIONS
    builds, for every function of the grammar."""
    import math

    import sympy

    from symtorch_fx.expr.ops import FUNCTIONS, NUMERIC

    assert set(NUMERIC) == set(FUNCTIONS)
    points = [0.3, 0.7, 1.9, -0.45, 2.5]
    for name, (arity, build) in FUNCTIONS.items():
        for k, a in enumerate(points):
            args = [a, points[(k + 2) % len(points)]][:arity]
            try:
                want = complex(build(*(sympy.Float(v) for v in args)).evalf(30))
            except (TypeError, ValueError):
                want = None
            try:
                got = NUMERIC[name](*args)
            except (ValueError, ZeroDivisionError, OverflowError):
                got = None
            if want is None or want.imag != 0 or not math.isfinite(want.real):
                assert got is None or isinstance(got, complex), (name, args, got)
                continue
            assert got is not None and math.isclose(got, want.real, rel_tol=1e-12,
                                                    abs_tol=1e-12), (name, args, got, want)
