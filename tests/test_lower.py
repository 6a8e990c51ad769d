"""The generated torch code: values against a float64 reference, gradients, dtypes, broadcast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import symtorch_fx as sfx
from symtorch_fx.expr.grammar import parse, templatize
from symtorch_fx.kernels.lower import Layout, torch_function

X = sympy.symbols("x0 x1 x2", real=True)
S = {s.name: s for s in X}


ROWS3 = Layout((3,), None)


def _fn(texts, layout=ROWS3):
    exprs = [parse(t, S) for t in texts]
    temps, vals = [], []
    for e in exprs:
        t, v = templatize(e, len(vals))
        temps.append(t)
        vals.extend(v)
    if layout.outputs is None and len(texts) > 1:
        layout = Layout(layout.inputs, len(texts))
    return exprs, torch_function(temps, layout, list(X), len(vals)), torch.tensor(vals)


CASES = [
    "x0*x1 + sin(x0)", "exp(-x0^2)*cos(2.5*x1)", "sqrt(abs(x0)) / (1 + x1^2)", "log(x0^2 + 1)",
    "tanh(x0) - sigmoid(x1)", "max(x0, 0) + min(x1, 0.5)", "x0^3 - x1^4 + x2^(-2)",
    "erf(x0) * sign(x1)", "atan(x0) + acos(x1 / 2)",
    "cosh(x0) - sinh(x1)", "1/x0", "x0^1.5", "floor(x0) + ceil(x1)", "relu(x0 - x1)",
]


@pytest.mark.parametrize("text", CASES)
def test_matches_sympy_in_float64(text):
    exprs, fn, c = _fn([text])
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (500, 3))
    ref = sympy.lambdify(X, exprs[0], modules=[{"sigmoid": lambda v: 1 / (1 + np.exp(-v))},
                                                "numpy", {"erf": np.vectorize(math.erf)}])(
        *x.T)
    got = fn(torch.from_numpy(x), c.double()).numpy()
    ref = np.broadcast_to(np.asarray(ref, dtype=np.float64), got.shape)
    both_nan = np.isnan(ref) & np.isnan(got)
    np.testing.assert_allclose(got[~both_nan], ref[~both_nan], rtol=1e-10, atol=1e-12)
    assert np.array_equal(np.isnan(got), np.isnan(ref))


def test_cse_and_outputs_share_one_pass():
    exprs, fn, c = _fn(["sin(x0)*x1", "sin(x0) + x2", "2.5"])
    src = fn.__symtorch_source__
    assert src.count("torch.sin") == 1  # the common subexpression is computed once
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    out = fn(x, c.double())
    assert out.shape == (4, 6, 3)
    torch.testing.assert_close(out[..., 2], torch.full((4, 6), 2.5, dtype=torch.float64))


def test_gradcheck_inputs_and_constants():
    _, fn, c = _fn(["1.3*x0*x1 + sin(0.7*x0)", "exp(-0.5*x1^2)/(1 + x2^2)"])
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    cc = c.double().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x, cc))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_compute_in_float32(dtype):
    _, fn, c = _fn(["exp(x0) * 0.001"])
    x = torch.full((4, 3), 12.0, dtype=dtype)  # exp(12) overflows float16 but not float32
    out = fn(x, c)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_constant_and_scalar_layouts():
    _, fn, c = _fn(["x0 * 2"], Layout((None, None, None), None))
    out = fn(torch.arange(5.0), torch.zeros(5), torch.zeros(5), c)
    torch.testing.assert_close(out, torch.arange(5.0) * 2)


def test_constant_equation_is_a_fresh_tensor_not_a_view_of_the_constants():
    # a view of a parameter requires grad even under no_grad, so .numpy() on such an output
    # failed; it also aliased the parameter
    _, fn, c = _fn(["2.5"], Layout((None, None, None), None))
    c = torch.nn.Parameter(c)
    z = torch.zeros(6)
    with torch.no_grad():
        out = fn(z, z, z, c)
    assert not out.requires_grad
    assert out.untyped_storage().data_ptr() != c.untyped_storage().data_ptr()
    np.testing.assert_array_equal(out.numpy(), np.full(6, 2.5, np.float32))
    out = fn(z, z, z, c)
    out.sum().backward()  # the constant still trains
    assert c.grad is not None and float(c.grad.sum()) == 6.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-3, 3, allow_nan=False), min_size=3, max_size=3),
       st.sampled_from(CASES[:8]))
def test_generated_code_equals_equation_call(vals, text):
    e = parse(text, S)
    eq = sfx.Equation(e, 0, 0.0, X)
    x = np.array([vals])
    _, fn, c = _fn([text])
    a = eq(x)
    b = fn(torch.from_numpy(x), c.double()).numpy()
    assert np.array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-12)


@pytest.mark.parametrize("text", CASES + ["2.5 + pi", "x0^x1 + 2^x2", "max(max(x0, x1), 0.5) - min(min(x2, -1), x0)"])
def test_scoring_walk_matches_the_generated_code(text):
    # the front builder scores candidates by walking their trees (no code generated); it must
    # compute what the generated code of the chosen equation computes
    from symtorch_fx.kernels.lower import evaluate

    e = parse(text, S)
    x = torch.from_numpy(np.random.default_rng(1).uniform(-2, 2, (400, 3)))
    walked = evaluate([e, 2 * e], x, list(X))
    fn = torch_function([e, 2 * e], Layout((3,), 2), list(X), 0)
    generated = fn(x, torch.zeros(0, dtype=x.dtype))
    assert walked.shape == generated.shape == (400, 2) and walked.dtype == torch.float64
    torch.testing.assert_close(walked, generated, rtol=1e-12, atol=0, equal_nan=True)
