"""Shared by the fused-kernel tests (C++ and Triton): equations, inputs, float64 references and
the strategy of random expressions. Not a test module itself."""

from __future__ import annotations

import numpy as np
import scipy.special
import sympy
import torch
from hypothesis import Phase, assume
from hypothesis import strategies as st

from symtorch_fx.expr.grammar import parse, substitute, templatize, variable
from symtorch_fx.kernels.lower import Layout, lower

X = [variable(f"x{i}") for i in range(3)]
S = {s.name: s for s in X}

# every function of the grammar, every kind of power, and the arithmetic around them
OP_CASES = [
    "x0 + x1 - x2", "x0 * x1 / x2", "-x0", "1.5*x0 - 0.25", "x0 / 3",
    "x0^2", "x0^3", "x0^4", "x0^5", "x0^-1", "x0^-2", "x0^-3", "x0^17", "x0^0",
    "sqrt(x0)", "x0^(3/2)", "x0^(-1/2)", "x0^(1/3)", "x0^2.5", "x0^0.7", "pow(x0, x1)",
    "exp(x0)", "log(x0)", "log2(x0)", "log10(x0)", "log1p(x0)", "logabs(x0)", "sqrtabs(x0)",
    "sin(x0)", "cos(x0)", "tan(x0)", "asin(x0)", "acos(x0)", "atan(x0)",
    "sinh(x0)", "cosh(x0)", "tanh(x0)", "sigmoid(x0)", "erf(x0)",
    "abs(x0)", "sign(x0)", "relu(x0)", "floor(x0)", "ceil(x0)",
    "min(x0, x1)", "max(x0, x1)", "fmin(x0, 0.5)", "fmax(x0, -0.5)", "max(x0, 0)",
    "square(x0)", "cube(x0)", "inv(x0)", "neg(x0)", "cbrt(x0)", "aq(x0, x1)", "pi*x0 + E",
]

SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -3.0, 1e-3, -1e-3, 1e-30, 30.0, -30.0, 100.0,
           -100.0, float("inf"), float("-inf"), float("nan")]


def templates(exprs):
    """(templates, constants) of a region's equations, constants numbered across outputs."""
    temps, vals = [], []
    for e in exprs:
        t, v = templatize(e, len(vals))
        temps.append(t)
        vals.extend(v)
    return temps, vals


def build(texts, layout: Layout | None = None, kernel: str = "auto"):
    """(exprs, lowered, constants) for equation texts over x0..x2 (one output per text)."""
    exprs = [parse(t, S) for t in texts]
    temps, vals = templates(exprs)
    layout = layout or Layout((3,), len(texts))
    return exprs, lower(temps, layout, X, len(vals), kernel), torch.tensor(vals, dtype=torch.float64)


def inputs(n: int, seed: int = 0, special: bool = True, low: float = -3.0, high: float = 3.0):
    """``n`` random rows over 3 columns, then every pair of special values (``special``)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(low, high, (n, 3))
    if special:
        a, b = np.meshgrid(SPECIAL, SPECIAL)
        sp = np.stack([a.ravel(), b.ravel(), np.roll(a.ravel(), 7)], 1)
        x = np.concatenate([x, sp])
    return torch.from_numpy(x)


# numpy, with torch's conventions where they differ: torch.sign(nan) is 0
_MODULES = [{"sigmoid": lambda v: scipy.special.expit(v), "erf": scipy.special.erf,
             "sign": lambda v: np.where(np.isnan(v), 0.0, np.sign(v)),
             "Heaviside": lambda v, h=0.5: np.heaviside(v, h)}, "numpy"]


def reference(exprs, x: torch.Tensor) -> np.ndarray:
    """float64 values of ``exprs`` (constants inlined) on rows ``x``: numpy through sympy."""
    f = sympy.lambdify(X, list(exprs), modules=_MODULES)
    cols = x.double().numpy().T
    with np.errstate(all="ignore"):
        out = [np.broadcast_to(np.asarray(v, dtype=np.float64), (len(x),)) for v in f(*cols)]
    return np.stack(out, 1)


def with_constants(templates, values):
    return [substitute(t, list(values)) for t in templates]


def assert_close_where_defined(got, ref, rtol, atol, what=""):
    """Equal NaN patterns, equal infinities, and values within ``rtol``/``atol`` elsewhere."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    bad_nan = np.isnan(got) != np.isnan(ref)
    assert not bad_nan.any(), f"{what}: NaN differs at rows {np.argwhere(bad_nan)[:5].tolist()}"
    fin = np.isfinite(ref)
    assert np.array_equal(got[~fin & ~np.isnan(ref)], ref[~fin & ~np.isnan(ref)]), \
        f"{what}: infinities differ"
    err = np.abs(got[fin] - ref[fin])
    tol = atol + rtol * np.abs(ref[fin])
    if (err > tol).any():
        i = int(np.argmax(err - tol))
        raise AssertionError(f"{what}: got {got[fin][i]!r}, want {ref[fin][i]!r} "
                             f"(error {err[i]:.3g}, tolerance {tol[i]:.3g})")


# ----------------------------------------------------------------------------------------------
# random expressions (grammar text), for property-based tests

_UNARY = ["sin", "cos", "tan", "exp", "log", "sqrt", "abs", "tanh", "sigmoid", "erf", "atan",
          "asin", "acos", "sinh", "cosh", "sign", "relu", "square", "cube", "inv", "logabs",
          "sqrtabs", "cbrt", "floor", "ceil", "neg", "log1p"]
_BINARY = ["+", "-", "*", "/", "min", "max", "aq", "pow"]


def _leaf():
    number = st.floats(0.01, 3).map(lambda v: round(v, 3))
    return st.one_of(st.sampled_from(["x0", "x1", "x2"]),
                     st.tuples(number, st.booleans()).map(lambda t: f"{-t[0] if t[1] else t[0]}"),
                     st.sampled_from(["2", "3", "1/2"]))


def _combine(children):
    unary = st.tuples(st.sampled_from(_UNARY), children).map(lambda t: f"{t[0]}({t[1]})")
    binary = st.tuples(st.sampled_from(_BINARY), children, children).map(_binary)
    power = st.tuples(children, st.sampled_from(["2", "3", "-1", "-2", "0.5", "1.7", "(1/3)"]))
    return st.one_of(unary, binary, power.map(lambda t: f"({t[0]})^{t[1]}"))


def _binary(t):
    op, a, b = t
    if op in "+-*/":
        return f"({a}) {op} ({b})"
    return f"{op}({a}, {b})"


def expressions(max_leaves: int = 8):
    """Grammar texts of random expressions over x0, x1, x2 (at least one variable)."""
    return st.recursive(_leaf(), _combine, max_leaves=max_leaves).filter(
        lambda t: any(v in t for v in ("x0", "x1", "x2")))


# property tests compile a kernel per example: no shrinking in the default run (a failure
# reports its example as drawn)
PHASES = (Phase.explicit, Phase.reuse, Phase.generate)


def random_region(texts):
    """(templates, constants) of a region whose outputs are ``texts``; examples whose constants
    fold to something no equation can be (complex, infinite, 0/0) are discarded."""
    try:
        exprs = [parse(t, S) for t in texts]
    except (ValueError, ZeroDivisionError):  # constants that fold to complex numbers, or 1/0.0
        assume(False)
    assume(not any(e.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo, sympy.I) for e in exprs))
    assume(all(s.is_real is not False for e in exprs for s in sympy.preorder_traversal(e)
               if not s.free_symbols))
    return templates(exprs)


def check_torch_compile(kernel: str, device: str = "cpu", backend: str = "aot_eager"):
    """A fused region inside a ``torch.compile``-d function: values and gradients (inputs and
    constants) equal to the same function run eagerly."""
    _, f, c = build(["1.3*x0*x1 + sin(0.7*x0)", "exp(-0.5*x1^2)*x2"], kernel=kernel)
    c = c.float().to(device).requires_grad_(True)

    def model(x, c):
        return (f(x, c) * 2).square().sum(-1)

    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(500, 3, device=device, requires_grad=True)
    results = []
    for fn in (compiled, model):
        x.grad, c.grad = None, None
        y = fn(x, c)
        y.sum().backward()
        results.append((y.detach(), x.grad.clone(), c.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
