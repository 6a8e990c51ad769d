"""The fused Triton kernel: values against a float64 reference and the torch code, gradients,
layouts, dtypes, caching, torch.compile and random expressions.

The same tests run in two places. Without a GPU, ``test_interpreter_suite`` runs this file again
in a subprocess with ``TRITON_INTERPRET=1`` (the flag must be set before kernels are defined),
where every kernel runs in Triton's CPU interpreter. On a CUDA machine the ``cuda`` cases
(marked ``gpu``) run the compiled kernels on the GPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import sympy
import torch
from _kernel_cases import (
    OP_CASES,
    PHASES,
    SPECIAL,
    X,
    assert_close_where_defined,
    build,
    check_torch_compile,
    expressions,
    inputs,
    random_region,
    reference,
    with_constants,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import symtorch_fx as sfx
from symtorch_fx.errors import SymTorchFXError
from symtorch_fx.expr.grammar import parse
from symtorch_fx.kernels import fused as _fused
from symtorch_fx.kernels import triton as _triton
from symtorch_fx.kernels.lower import Layout, lower

INTERPRET = _triton.interpreting()
CUDA = torch.cuda.is_available() and not INTERPRET


# "cpu" (the interpreter) exists only in the interpreter run; "cuda" is always collected, marked
# gpu, and skipped without a GPU
@pytest.fixture(params=(["cpu"] if INTERPRET else []) + [
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not CUDA, reason="needs a CUDA GPU")])])
def device(request):
    return request.param


@pytest.mark.skipif(INTERPRET, reason="this test launches the interpreter run")
def test_interpreter_suite():
    if not _triton.available():
        pytest.skip("triton is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", os.path.abspath(__file__), "-q", "-p", "no:cacheprovider",
         "-m", "not slow and not gpu", "-W", "ignore::RuntimeWarning"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 14, out[-3000:]  # every interpreter case ran


def _torch32(f, x, c):
    return lower(f.templates, f.layout, X, len(c), "torch")(x.float(), c.float())


@pytest.mark.parametrize("tiles", [True, False], ids=["tiles", "columns"])
def test_every_operator_matches_torch_code_and_float64_reference(device, tiles, monkeypatch):
    monkeypatch.setattr(_triton, "TILES", tiles)  # both ways of reading and writing rows
    exprs, f, c = build(OP_CASES, kernel="triton")
    x = inputs(500)
    got = f(x.float().to(device), c.float().to(device)).cpu().numpy()
    want = _torch32(f, x, c).numpy()
    ref = reference(with_constants(f.templates, c.tolist()), x.float())
    for k, text in enumerate(OP_CASES):
        # the torch code's NaN and infinities, and its values within float32 rounding
        assert_close_where_defined(got[:, k], want[:, k], 1e-5, 1e-6, text)
        # and the float64 reference where float32 can represent it
        ok = np.isfinite(ref[:, k]) & (np.abs(ref[:, k]) < 1e30) & np.isfinite(want[:, k])
        np.testing.assert_allclose(got[ok, k], ref[ok, k], rtol=1e-5, atol=1e-6, err_msg=text)


def test_special_values_of_real_powers(device):
    # pow with runtime exponents: every pair of special values, as torch.pow gives them
    _, f, c = build(["pow(x0, x1)", "x0^1.5", "x0^-2.5", "x0^3.0"], kernel="triton")
    a, b = np.meshgrid(SPECIAL, SPECIAL + [3.0, -3.0, 0.5, 1e9])
    x = torch.tensor(np.stack([a.ravel(), b.ravel(), a.ravel()], 1), dtype=torch.float32)
    got = f(x.to(device), c.float().to(device)).cpu()
    assert_close_where_defined(got.numpy(), _torch32(f, x, c).numpy(), 1e-5, 1e-30, "pow")


def test_gradients_match_torch_autograd(device):
    texts = ["1.3*x0*x1 + sin(0.7*x0)", "exp(-0.5*x1^2)/(1 + x2^2) - tanh(x0)*x2",
             "abs(x0)^1.5 + atan(x1) - sigmoid(x2)*erf(x0)", "max(x0, x1) + min(x2, 0.3)*x0",
             "pow(abs(x0) + 0.1, x1) + sqrt(abs(x2)) + 2.5", "cosh(x0)*sinh(x1)/(2 + x2^2)"]
    _, f, c = build(texts, kernel="triton")
    ft = lower(f.templates, f.layout, X, len(c), "torch")
    x = inputs(2000, special=False)
    g = torch.randn(len(x), len(texts), dtype=torch.float64)
    xx = x.float().to(device).requires_grad_(True)
    cc = c.float().to(device).requires_grad_(True)
    f(xx, cc).backward(g.float().to(device))
    xr, cr = x.clone().requires_grad_(True), c.clone().requires_grad_(True)
    ft(xr, cr).backward(g)
    torch.testing.assert_close(xx.grad.cpu().double(), xr.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cc.grad.cpu().double(), cr.grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("n", [1, 1000, 5000])
def test_row_counts_and_layouts(device, n):
    _, f, c = build(["x0*x1 - x2", "cos(x1) + x2^2"], kernel="triton")
    c = c.float()
    base = torch.randn(n, 7)
    cases = {"contiguous": torch.randn(n, 3), "sliced": base[:, 2:5], "strided": base[:, ::3],
             "column-major": torch.randn(3, n).t()}
    if n == 1000:
        cases["two levels"] = torch.randn(40, 25, 5).transpose(0, 1)[..., 1:4]
        cases["three levels"] = torch.randn(4, 5, 50, 3).permute(2, 0, 1, 3)[:, ::2]
    for name, x in cases.items():
        got = f(x.to(device), c.to(device)).cpu()
        torch.testing.assert_close(got, _torch32(f, x, c), rtol=1e-5, atol=1e-6, msg=name)


def test_broadcast_and_featureless_inputs(device):
    syms = [sympy.Symbol(n, real=True) for n in ("a", "b", "t")]
    exprs = [parse(t, {s.name: s for s in syms}) for t in ["a*t + b", "sin(a - b)*t"]]
    layout = Layout((2, None), 2)
    f = lower(exprs, layout, syms, 0, "triton")
    ft = lower(exprs, layout, syms, 0, "torch")
    c = torch.zeros(0, requires_grad=True)  # no constants, still a parameter
    x, t = torch.randn(5, 1, 2), torch.randn(7)
    c = c.detach().to(device).requires_grad_(True)
    xx = x.to(device, copy=True).requires_grad_(True)
    tt = t.to(device, copy=True).requires_grad_(True)
    out = f(xx, tt, c)
    assert out.shape == (5, 7, 2)
    out.sum().backward()
    xr, tr = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    want = ft(xr, tr, c.detach().cpu())
    want.sum().backward()
    torch.testing.assert_close(out.detach().cpu(), want)
    torch.testing.assert_close(xx.grad.cpu(), xr.grad)
    torch.testing.assert_close(tt.grad.cpu(), tr.grad)
    assert c.grad.shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(device, dtype):
    _, f, c = build(["exp(x0) * 0.001 + x1", "x2 / 7"], kernel="triton")
    x = torch.full((300, 3), 12.0, dtype=dtype, device=device)  # exp(12) overflows float16
    c = c.float().to(device)
    out = f(x, c, out_dtype=torch.float32)
    assert out.dtype == torch.float32
    want = torch.exp(torch.tensor(12.0)) * 0.001 + 12
    torch.testing.assert_close(out[:, 0].cpu(), want.expand(300))
    low = f(x, c, out_dtype=dtype)
    assert low.dtype == dtype
    torch.testing.assert_close(low, out.to(dtype))


def test_float64_is_a_clear_error(device):
    _, f, c = build(["x0"], kernel="triton")
    with pytest.raises(SymTorchFXError, match="kernel='auto' or 'torch'"):
        f(torch.zeros(4, 3, dtype=torch.float64, device=device), c.to(device))


def test_constants_are_arguments_and_kernels_are_cached_by_structure(device):
    sy = {s.name: s for s in X}
    mods = [sfx.SymbolicModule("r", Layout((3,), 1), ("x0", "x1", "x2"), (True,), torch.float32,
                               [parse(t, sy)], kernel="triton").to(device)
            for t in ["1.5*x0 + sin(2.5*x1)", "-0.5*x0 + sin(9.0*x1)"]]
    x = torch.randn(100, 3, device=device)
    ya = mods[0](x)
    kernels = dict(mods[0]._fn.entry.kernels)
    yb = mods[1](x)
    assert mods[0]._fn.entry is mods[1]._fn.entry
    assert mods[0]._fn.entry.kernels == kernels  # the second module reused the kernel
    want = -0.5 * x[:, 0] + torch.sin(9.0 * x[:, 1])
    torch.testing.assert_close(yb[:, 0], want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        mods[0].constants.copy_(mods[1].constants)
    torch.testing.assert_close(mods[0](x), yb)
    assert mods[0]._fn.entry.kernels == kernels
    assert not torch.equal(ya, yb)


def test_compiles_with_torch_compile_forward_and_backward(device):
    check_torch_compile("triton", device, "inductor" if device == "cuda" else "aot_eager")


def test_opcheck(device):
    _, f, c = build(["1.3*x0*x1 + sin(0.7*x0)", "x2^2"], kernel="triton")
    x = torch.randn(50, 3, device=device, requires_grad=True)
    cc = c.float().to(device).requires_grad_(True)
    torch.library.opcheck(_fused.fused, ([x], cc, f.entry.key, "triton", torch.float32))


def _well_conditioned(torch32, ref64, tol):
    """Rows where float32 arithmetic (the torch code's) is within ``tol`` of float64."""
    same_nan = np.isnan(torch32) == np.isnan(ref64)
    fin = np.isfinite(torch32) & np.isfinite(ref64)
    with np.errstate(all="ignore"):
        close = np.abs(torch32 - ref64) <= tol * (np.abs(ref64) + 1)
    return same_nan & (~fin | close) & ~(np.isfinite(torch32) ^ np.isfinite(ref64))


@settings(max_examples=6, deadline=None, derandomize=True, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(texts=st.lists(expressions(), min_size=4, max_size=8), seed=st.integers(0, 999))
def test_random_expressions_values_and_gradients(device, texts, seed):
    temps, vals = random_region(texts)
    layout = Layout((3,), len(texts))
    f = lower(temps, layout, X, len(vals), "triton")
    ft = lower(temps, layout, X, len(vals), "torch")
    c = torch.tensor(vals, dtype=torch.float64)
    x = inputs(300, seed=seed, special=False).float().double()
    ref = reference(with_constants(temps, vals), x)
    t32 = ft(x.float(), c.float()).numpy()
    got = f(x.float().to(device), c.float().to(device)).cpu().numpy()
    ok = _well_conditioned(t32, ref, 1e-5)
    assume(ok.mean() > 0.5)
    for k, text in enumerate(texts):
        rows = ok[:, k]
        assert_close_where_defined(got[rows, k], t32[rows, k], 1e-4, 1e-4, text)
    # gradients against torch's autograd of the torch code, on well-conditioned rows
    g = torch.randn(len(x), len(texts), dtype=torch.float64)
    xx = x.float().to(device).requires_grad_(True)
    cc = c.float().to(device).requires_grad_(True)
    f(xx, cc).backward(g.float().to(device))
    x32, c32 = x.float().requires_grad_(True), c.float().requires_grad_(True)
    ft(x32, c32).backward(g.float())
    x64, c64 = x.clone().requires_grad_(True), c.clone().requires_grad_(True)
    ft(x64, c64).backward(g)
    gx = xx.grad.cpu().double().numpy()
    ok = _well_conditioned(x32.grad.double().numpy(), x64.grad.numpy(), 1e-5)
    ok &= np.isfinite(x64.grad.numpy())
    np.testing.assert_allclose(gx[ok], x64.grad.numpy()[ok], rtol=1e-4, atol=1e-4,
                               err_msg=" | ".join(texts))
    if vals and np.isfinite(c64.grad.numpy()).all():
        gc, g64, g32 = cc.grad.cpu().double().numpy(), c64.grad.numpy(), c32.grad.numpy()
        good = np.abs(g32 - g64) <= 1e-4 * (np.abs(g64).sum() + 1)
        np.testing.assert_allclose(gc[good], g64[good], rtol=1e-3,
                                   atol=1e-3 * (np.abs(g64).max() + 1))
