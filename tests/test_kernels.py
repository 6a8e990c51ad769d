"""The fused C++ kernel (CPU) and the kernel choice: values against a float64 reference and the
torch code, gradients, layouts, dtypes, caching, torch.compile, and random expressions."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest
import sympy
import torch
from _kernel_cases import (
    OP_CASES,
    PHASES,
    S,
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
from symtorch_fx.errors import KernelBuildError, SymTorchFXError
from symtorch_fx.expr.grammar import parse, templatize
from symtorch_fx.kernels import cpu as _cpu
from symtorch_fx.kernels import fused as _fused
from symtorch_fx.kernels import system
from symtorch_fx.kernels.lower import AUTO_CPP_MIN_ROWS, Layout, lower

pytestmark = pytest.mark.skipif(not _cpu.available(), reason="needs a C++ compiler on Linux")


def test_operator_cases_cover_the_whole_vocabulary():
    # an operator added to the grammar must be added to OP_CASES (and so to every printer)
    from symtorch_fx.expr.ops import FUNCTIONS, PRINT_NAMES
    from symtorch_fx.kernels.triton import TritonPrinter

    used = {name for text in OP_CASES for name in re.findall(r"([a-z0-9]+)\(", text)}
    assert sorted(set(FUNCTIONS) - used) == []
    for printer in (_cpu.CppPrinter, TritonPrinter):
        missing = [f.__name__ for f in PRINT_NAMES
                   if f not in printer.UNARY and f not in (sympy.Min, sympy.Max)]
        assert missing == [], printer.__name__


def test_every_operator_matches_float64_reference_and_torch_code():
    # all operators in one region: one compile per dtype; 1000 random rows + every pair of
    # special values (0, -0, +-1, +-inf, NaN, ...)
    exprs, f, c = build(OP_CASES, kernel="cpp")
    x = inputs(1000)
    ref = reference(with_constants(f.templates, c.tolist()), x)
    got64 = f(x, c).numpy()
    for k, text in enumerate(OP_CASES):
        assert_close_where_defined(got64[:, k], ref[:, k], 1e-12, 1e-300, f"float64 {text}")
    # float32: the same NaN/inf pattern as the torch code, values within float32 rounding
    got32 = f(x.float(), c.float())
    torch32 = lower(f.templates, f.layout, X, len(c), "torch")(x.float(), c.float())
    assert got32.dtype == torch.float32
    for k, text in enumerate(OP_CASES):
        assert_close_where_defined(got32[:, k], torch32[:, k], 2e-6, 1e-6, f"float32 {text}")


def test_gradients_match_torch_autograd_in_float64():
    texts = ["1.3*x0*x1 + sin(0.7*x0)", "exp(-0.5*x1^2)/(1 + x2^2) - tanh(x0)*x2",
             "abs(x0)^1.5 + atan(x1) - sigmoid(x2)*erf(x0)", "max(x0, x1) + min(x2, 0.3)*x0",
             "pow(abs(x0) + 0.1, x1) + sqrt(abs(x2)) + 2.5"]
    exprs, f, c = build(texts, kernel="cpp")
    ft = lower(f.templates, f.layout, X, len(c), "torch")
    x = inputs(3000, special=False)
    g = torch.randn(len(x), len(texts), dtype=torch.float64)
    grads = []
    for fn in (f, ft):
        xx, cc = x.clone().requires_grad_(True), c.clone().requires_grad_(True)
        fn(xx, cc).backward(g)
        grads.append((xx.grad, cc.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-10, atol=1e-10)


def test_gradcheck_through_the_custom_op():
    _, f, c = build(["1.3*x0*x1 + sin(0.7*x0)", "exp(-0.5*x1^2)/(1 + x2^2)",
                     "x0^2.5 + x1^3"], kernel="cpp")
    x = (torch.rand(40, 3, dtype=torch.float64) + 0.5).requires_grad_(True)
    cc = c.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: f(a, b), (x, cc))


def test_double_backward_is_a_clear_error():
    _, f, c = build(["x0*x1"], kernel="cpp")
    x = torch.randn(8, 3, requires_grad=True)
    (g,) = torch.autograd.grad(f(x, c.float()).sum(), x, create_graph=True)
    with pytest.raises(SymTorchFXError, match="kernel='torch'"):
        g.sum().backward()


@pytest.mark.parametrize("n", [0, 1, 15, 17, 2048 + 3, 40_000])
def test_row_counts_including_tails_and_threads(n):
    _, f, c = build(["x0*x1 + sin(x2)", "exp(-x0^2)"], kernel="cpp")
    ft = lower(f.templates, f.layout, X, len(c), "torch")
    x = torch.randn(n, 3)
    torch.testing.assert_close(f(x, c.float()), ft(x, c.float()), rtol=2e-6, atol=1e-6)


def test_strided_inputs_are_read_in_place():
    _, f, c = build(["x0*x1 - x2", "cos(x1) + x2^2"], kernel="cpp")
    ft = lower(f.templates, f.layout, X, len(c), "torch")
    base = torch.randn(64, 50, 7)
    cases = {
        "sliced columns": base[..., 2:5],
        "strided columns": base[..., ::3],
        "transposed leading dims": base.transpose(0, 1)[..., :3],
        "stepped rows": base[::2, ::5, 1:4],
        "column-major": torch.randn(3, 999).t(),
        "two levels, many rows (threads)": torch.randn(300, 200, 4).transpose(0, 1)[..., 1:],
    }
    for name, x in cases.items():
        rows = system.row_space([x], [True])
        assert rows.tensors[0] is x, name  # no copy
        torch.testing.assert_close(f(x, c.float()), ft(x, c.float()), rtol=2e-6, atol=1e-6,
                                   msg=name)


def test_broadcast_and_featureless_inputs():
    exprs = [parse(t, {"a": sympy.Symbol("a", real=True), "b": sympy.Symbol("b", real=True),
                       "t": sympy.Symbol("t", real=True)}) for t in ["a*t + b", "sin(a - b)*t"]]
    syms = [sympy.Symbol(n, real=True) for n in ("a", "b", "t")]
    layout = Layout((2, None), 2)
    f = lower(exprs, layout, syms, 0, "cpp")
    ft = lower(exprs, layout, syms, 0, "torch")
    c = torch.zeros(0, requires_grad=True)  # no constants, still a parameter
    x = torch.randn(5, 1, 2)
    t = torch.randn(7)  # broadcasts against x's (5, 1) leading dims
    out = f(x, t, c)
    assert out.shape == (5, 7, 2)
    torch.testing.assert_close(out, ft(x, t, c).detach())
    # gradients of a broadcast input are summed back to its shape
    xx, tt = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    f(xx, tt, c).sum().backward()
    xr, tr = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    ft(xr, tr, c).sum().backward()
    torch.testing.assert_close(xx.grad, xr.grad)
    torch.testing.assert_close(tt.grad, tr.grad)
    assert c.grad.shape == (0,)


def test_more_than_two_unmergeable_levels_still_compute():
    _, f, c = build(["x0 + 2*x1*x2"], kernel="cpp")
    x = torch.randn(4, 5, 6, 3).permute(2, 0, 1, 3)[:, ::2]  # three levels that cannot merge
    assert len(system._merge(x.shape[:-1], [x.stride()[:-1]])) == 3
    ft = lower(f.templates, f.layout, X, len(c), "torch")
    torch.testing.assert_close(f(x, c.float()), ft(x, c.float()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    _, f, c = build(["exp(x0) * 0.001 + x1", "x2 / 7"], kernel="cpp")
    x = torch.full((300, 3), 12.0, dtype=dtype)  # exp(12) overflows float16, not float32
    out = f(x, c.float(), out_dtype=torch.float32)
    want = torch.exp(torch.tensor(12.0)) * 0.001 + 12
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0], want.expand(300))
    low = f(x, c.float(), out_dtype=dtype)  # written directly in the output dtype
    assert low.dtype == dtype
    torch.testing.assert_close(low, out.to(dtype))
    xx = x.clone().requires_grad_(True)
    f(xx, c.float(), out_dtype=dtype).sum().backward()
    assert xx.grad.dtype == dtype and torch.isfinite(xx.grad).all()


def test_constants_are_arguments_and_kernels_are_cached_by_structure():
    a = sfx.SymbolicModule("r", Layout((3,), 1), ("x0", "x1", "x2"), (True,), torch.float32,
                           [parse("1.5*x0 + sin(2.5*x1)", {s.name: s for s in X})], kernel="cpp")
    b = sfx.SymbolicModule("r", Layout((3,), 1), ("x0", "x1", "x2"), (True,), torch.float32,
                           [parse("-0.5*x0 + sin(9.0*x1)", {s.name: s for s in X})],
                           kernel="cpp")
    x = torch.randn(100, 3)
    ya = a(x)
    n_libs = len(_cpu._LIBS)
    yb = b(x)  # same structure, other constants: no new kernel
    assert len(_cpu._LIBS) == n_libs and a._fn.entry is b._fn.entry
    torch.testing.assert_close(yb[:, 0], -0.5 * x[:, 0] + torch.sin(9.0 * x[:, 1]))
    with torch.no_grad():
        a.constants.copy_(b.constants)  # tuning constants: new values, same kernel
    torch.testing.assert_close(a(x), yb)
    assert len(_cpu._LIBS) == n_libs
    assert not torch.equal(ya, yb)


def test_compiled_kernels_are_cached_on_disk(monkeypatch):
    _, f, c = build(["x0*x1 + 0.25*cos(x2)"], kernel="cpp")
    x = torch.randn(64, 3)
    y = f(x, c.float())
    (lib,) = [lib for lib in _cpu._LIBS.values()
              if lib.sfx_kernel in f.entry.kernels.values()]
    assert os.path.dirname(lib._name) == _cpu.cache_dir() and os.path.exists(lib._name)
    assert os.path.exists(lib._name[:-3] + ".cpp")  # the source beside it, for inspection
    # a new process (here: empty in-memory caches) loads the library without compiling
    monkeypatch.setattr(_cpu, "_LIBS", {})
    f.entry.kernels.clear()

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(_cpu, "_compile", no_compiler)
    torch.testing.assert_close(f(x, c.float()), y)


def test_a_failed_cpp_build_falls_back_under_auto_and_is_an_error_under_cpp(
        monkeypatch, tmp_path):
    monkeypatch.setenv("SYMTORCH_FX_CACHE", str(tmp_path))
    monkeypatch.setattr(_cpu, "_LIBS", {})
    monkeypatch.setattr(_cpu, "_TOOLCHAIN", [("/bin/false", [])])  # a compiler that always fails
    texts = ["x0*x1 - 0.375*sin(x2)"]  # a structure no other test compiles
    x = torch.randn(AUTO_CPP_MIN_ROWS, 3)
    _, f, c = build(texts, kernel="cpp")
    with pytest.raises(KernelBuildError, match="use kernel='torch'"):
        f(x, c.float())
    _, f, c = build(texts)
    with pytest.warns(RuntimeWarning, match="fused CPU kernel is unavailable"):
        y = f(x, c.float())
    torch.testing.assert_close(y, f.torch_fn(x, c.float()))
    assert f.choose([x], c) == "torch"  # and it does not try again


@pytest.mark.parametrize("spoil", ["garbage", "empty", "other source"])
def test_a_spoiled_cache_entry_is_rebuilt(monkeypatch, tmp_path, spoil):
    import hashlib
    import shutil

    texts = ["x0*x1 + 0.125*cos(x2)"]
    x = torch.randn(AUTO_CPP_MIN_ROWS, 3)
    monkeypatch.setenv("SYMTORCH_FX_CACHE", str(tmp_path / "a"))
    monkeypatch.setattr(_cpu, "_LIBS", {})
    _, f, c = build(texts, kernel="cpp")
    f.entry.kernels.clear()  # built in this cache, whatever other tests built before
    y = f(x, c.float())
    (name,) = [n for n in os.listdir(_cpu.cache_dir()) if n.endswith(".so")]
    _, g, cg = build(["x0 - x1*x2"], kernel="cpp")
    g.entry.kernels.clear()
    g(x, cg.float())
    (other,) = [n for n in os.listdir(_cpu.cache_dir()) if n.endswith(".so") and n != name]
    # a second cache, as another process finds it (fresh files: the loaded ones stay intact)
    shutil.copytree(_cpu.cache_dir(), tmp_path / "b" / "cpu")
    monkeypatch.setenv("SYMTORCH_FX_CACHE", str(tmp_path / "b"))
    so = os.path.join(_cpu.cache_dir(), name)
    if spoil == "other source":  # a working library of another equation, its hash agreeing
        with open(os.path.join(_cpu.cache_dir(), other), "rb") as fh:
            data = fh.read()
        with open(so + ".sha256", "w") as fh:
            fh.write(hashlib.sha256(data).hexdigest())
    else:
        data = b"" if spoil == "empty" else os.urandom(4096)
    with open(so, "wb") as fh:
        fh.write(data)
    monkeypatch.setattr(_cpu, "_LIBS", {})
    f.entry.kernels.clear()
    _, f, c = build(texts, kernel="auto")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.testing.assert_close(f(x, c.float()), y)
    if spoil != "other source":
        assert not seen and f.choose([x], c) == "cpp"  # rebuilt and loaded
    # either way the entry on disk is ours again, for the next process
    with open(so, "rb") as fh:
        rebuilt = fh.read()
    assert rebuilt != data
    with open(so + ".sha256") as fh:
        assert fh.read() == hashlib.sha256(rebuilt).hexdigest()


def test_an_unusable_cache_directory_falls_back_once_under_auto(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("SYMTORCH_FX_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(_cpu, "_LIBS", {})
    _, f, c = build(["x0*x1 - 0.625*cos(x2)"])
    f.entry.kernels.clear()
    x = torch.randn(AUTO_CPP_MIN_ROWS, 3)
    with pytest.warns(RuntimeWarning, match="SYMTORCH_FX_CACHE"):
        y = f(x, c.float())
    torch.testing.assert_close(y, f.torch_fn(x, c.float()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, then the torch code quietly
        f(x, c.float())


def test_the_cache_directory_is_private(monkeypatch, tmp_path):
    monkeypatch.setenv("SYMTORCH_FX_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr(_cpu, "_LIBS", {})
    _, f, c = build(["x0*x1 + 0.875*sin(x2)"], kernel="cpp")
    f.entry.kernels.clear()
    f(torch.randn(8, 3), c.float())
    assert os.stat(_cpu.cache_dir()).st_mode & 0o777 == 0o700
    os.chmod(_cpu.cache_dir(), 0o777)  # loosened by someone: tightened before the next load
    monkeypatch.setattr(_cpu, "_LIBS", {})
    f.entry.kernels.clear()
    f(torch.randn(8, 3), c.float())
    assert os.stat(_cpu.cache_dir()).st_mode & 0o777 == 0o700


def test_auto_runs_cpp_on_large_cpu_batches_and_torch_on_small():
    _, f, c = build(["x0*x1"])
    assert f.choose([torch.zeros(AUTO_CPP_MIN_ROWS, 3)], c) == "cpp"
    assert f.choose([torch.zeros(AUTO_CPP_MIN_ROWS - 1, 3)], c) == "torch"
    assert f.choose([torch.zeros(10, AUTO_CPP_MIN_ROWS, 3)], c) == "cpp"
    meta = torch.zeros(AUTO_CPP_MIN_ROWS, 3, device="meta")
    assert f.choose([meta], c) == "torch"


def test_bad_kernel_names_and_devices_are_clear_errors():
    with pytest.raises(SymTorchFXError, match="auto, torch, triton, cpp, inductor"):
        build(["x0"], kernel="cuda")
    _, f, c = build(["x0"], kernel="cpp")
    meta = torch.zeros(4, 3, device="meta")
    assert f(meta, c.to("meta")).shape == (4, 1)  # shape inference runs the fake kernel
    with pytest.raises(SymTorchFXError, match="C\\+\\+ kernel runs on CPU"):
        _fused.run_forward(_cpu, f.entry, [meta], c.to("meta"), torch.float32)
    with pytest.raises(SymTorchFXError, match="float16/bfloat16/float32/float64"):
        f(torch.zeros(4, 3, dtype=torch.int32), c)
    _, f, c = build(["x0"], kernel="triton")
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        with pytest.raises(SymTorchFXError, match="CUDA tensors"):
            f(torch.zeros(4, 3), c.float())


def test_kernel_can_be_switched_on_a_module_and_survives_save_load(tmp_path, trained_law,
                                                                    distilled_law, law_data):
    X_, _ = law_data
    sym = distilled_law
    (mod,) = [m for m in sym.modules() if isinstance(m, sfx.SymbolicModule)]
    big = X_.repeat(2, 1)
    try:
        mod.kernel = "torch"
        y_torch = sym(big)
        mod.kernel = "cpp"
        torch.testing.assert_close(sym(big), y_torch, rtol=1e-5, atol=1e-5)
        sfx.save(sym, tmp_path / "m.sfx")
        loaded = sfx.load(tmp_path / "m.sfx", trained_law)
        (lm,) = [m for m in loaded.modules() if isinstance(m, sfx.SymbolicModule)]
        assert lm.kernel == "cpp"
        torch.testing.assert_close(loaded(big), y_torch, rtol=1e-5, atol=1e-5)
        with pytest.raises(SymTorchFXError, match="not one of"):
            mod.kernel = "fast"
        assert mod.kernel == "cpp"
    finally:
        mod.kernel = "auto"


def test_compiles_with_torch_compile_forward_and_backward():
    check_torch_compile("cpp")


def test_projection_region_runs_the_fused_kernel_between_its_matmuls():
    # a wide region (16 -> 16 features) distilled between 3 input and 2 output components
    from symtorch_fx.reduce import Projection

    rng = np.random.default_rng(3)
    proj = Projection(in_mean=rng.normal(size=16), in_basis=np.linalg.qr(rng.normal(
        size=(16, 3)))[0], out_mean=rng.normal(size=16), out_basis=np.linalg.qr(rng.normal(
            size=(16, 2)))[0], in_explained=0.9, out_explained=0.9)
    eqs = [parse(t, S) for t in ("1.3*x0*x1 + sin(0.7*x2)", "exp(-0.5*x1^2) - x0")]
    mod = sfx.SymbolicModule("wide", Layout((16,), 16), ("x0", "x1", "x2"), (True,),
                             torch.float32, eqs, kernel="cpp", projection=proj)
    assert mod._fn.layout == Layout((3,), 2)
    x = torch.randn(AUTO_CPP_MIN_ROWS + 5, 16)
    results = []
    for kernel in ("cpp", "torch"):
        mod.kernel = kernel
        xg = x.clone().requires_grad_(True)
        mod.constants.grad = None
        y = mod(xg)
        (y * torch.linspace(-1, 1, 16)).sum().backward()
        results.append((y.detach(), xg.grad, mod.constants.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    mod.kernel = "auto"
    assert mod._fn.choose([x[:, :3].contiguous()], mod.constants) == "cpp"


def test_fused_kernel_inside_the_torch_compile_backend(distilled_law, trained_law, law_data):
    # the custom op in an inductor graph: values and the constants' gradient as in eager mode
    from torch._inductor.utils import run_and_get_code

    (mod,) = [m for m in distilled_law.modules() if isinstance(m, sfx.SymbolicModule)]
    x = law_data[0].repeat(2, 1)
    torch._dynamo.reset()
    try:
        mod.kernel = "torch"
        mod.constants.grad = None
        distilled_law(x).square().sum().backward()
        want, want_grad = distilled_law(x).detach(), mod.constants.grad.clone()
        be = sfx.backend(equations=distilled_law, kernel="cpp")
        compiled = torch.compile(trained_law, backend=be)
        # the backend runs a twin on the fused kernel; the symbolic model keeps its own
        assert be.results["mlp"].module.kernel == "cpp" and mod.kernel == "torch"
        out, code = run_and_get_code(compiled, x)
        assert "symtorch_fx.fused" in "\n".join(code)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        mod.constants.grad = None
        out.square().sum().backward()
        torch.testing.assert_close(mod.constants.grad, want_grad, rtol=1e-4, atol=1e-3)
        with pytest.raises(SymTorchFXError, match="not one of"):
            sfx.backend(equations=distilled_law, kernel="fast")
    finally:
        torch._dynamo.reset()
        mod.kernel = "auto"
        mod.constants.grad = None


def test_opcheck():
    _, f, c = build(["1.3*x0*x1 + sin(0.7*x0)", "x2^2"], kernel="cpp")
    key = f.entry.key
    x = torch.randn(50, 3, requires_grad=True)
    cc = c.float().requires_grad_(True)
    torch.library.opcheck(_fused.fused, ([x], cc, key, "cpp", torch.float32))
    g = torch.randn(50, 2)
    torch.library.opcheck(_fused.fused_backward, ([x.detach()], cc.detach(), g, key, "cpp",
                                                  [True, True]),
                          test_utils=("test_schema", "test_faketensor"))


def test_inductor_kernel_matches_torch():
    _, f, c = build(["x0*x1 + sin(x2)"], kernel="inductor")
    ft = lower(f.templates, f.layout, X, len(c), "torch")
    x = torch.randn(64, 3)
    torch.testing.assert_close(f(x, c.float()), ft(x, c.float()))


@settings(max_examples=3, deadline=None, derandomize=True, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.lists(expressions(), min_size=6, max_size=12), st.integers(0, 999))
def test_random_expressions_float64_values_and_gradients(texts, seed):
    # one region with many random outputs: one compile per example (forward and backward)
    temps, vals = random_region(texts)
    layout = Layout((3,), len(texts))
    f = lower(temps, layout, X, len(vals), "cpp")
    ft = lower(temps, layout, X, len(vals), "torch")
    c = torch.tensor(vals, dtype=torch.float64)
    x = inputs(400, seed=seed, special=False)
    ref = reference(with_constants(temps, vals), x)
    got = f(x, c).numpy()
    for k, text in enumerate(texts):
        scale = np.nanmax(np.abs(np.where(np.isfinite(ref[:, k]), ref[:, k], 0)), initial=1.0)
        assert_close_where_defined(got[:, k], ref[:, k], 1e-9, 1e-9 * scale, text)
    # gradients: the same as torch's autograd of the torch code, where that is finite
    g = torch.randn(len(x), len(texts), dtype=torch.float64)
    res = []
    for fn in (f, ft):
        xx, cc = x.clone().requires_grad_(True), c.clone().requires_grad_(True)
        fn(xx, cc).backward(g)
        res.append((xx.grad.numpy(), cc.grad.numpy() if len(vals) else np.zeros(0)))
    for a, b in zip(res[0], res[1]):
        fin = np.isfinite(b)
        scale = np.max(np.abs(b[fin]), initial=1.0)
        np.testing.assert_allclose(a[fin], b[fin], rtol=1e-8, atol=1e-8 * scale,
                                   err_msg=" | ".join(texts))


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(expressions(), st.integers(0, 999))
def test_random_expressions_gradcheck_on_the_torch_code(text, seed):
    # torch's autograd of the generated torch code against finite differences, in float64, on
    # rows where the expression is finite (inputs and fitted constants both)
    temps, vals = random_region([text])
    assume(temps[0].free_symbols & set(X))
    f = lower(temps, Layout((3,), 1), X, len(vals), "torch")
    c = torch.tensor(vals, dtype=torch.float64)
    x = inputs(24, seed=seed, special=False)
    with torch.no_grad():
        y = f(x, c)[:, 0]
    keep = torch.isfinite(y) & (y.abs() < 1e6)
    assume(keep.sum() >= 4)
    xs = x[keep].clone().requires_grad_(True)
    grads = torch.autograd.grad(f(xs, c)[:, 0].sum(), xs, allow_unused=True)[0]
    assume(grads is None or bool(torch.isfinite(grads).all()))
    cc = c.clone().requires_grad_(bool(vals))
    assert torch.autograd.gradcheck(lambda a, b: f(a, b), (xs, cc), atol=1e-5, rtol=1e-4)


def _wide_region(w: int, n_other: int = 0):
    """A region over a (N, w) tensor (and an optional (N, n_other) one): output k mixes
    columns k and k+1 differently, so a column read or written in the wrong place shows."""
    xs = [sympy.Symbol(f"a{i}", real=True) for i in range(w)]
    ys = [sympy.Symbol(f"b{i}", real=True) for i in range(n_other)]
    extra = sum((j + 2) * y for j, y in enumerate(ys))
    exprs = [(k + 1.5) * xs[k] + sympy.sin(xs[(k + 1) % w]) * (0.5 + k) + extra
             + sympy.Rational(k, 7) * xs[(k + 1) % w] ** 2 for k in range(w)]
    temps, vals = [], []
    for e in exprs:
        t, v = templatize(e, len(vals))
        temps.append(t)
        vals.extend(v)
    layout = Layout((w, n_other) if n_other else (w,), w)
    return temps, layout, xs + ys, vals


@pytest.mark.parametrize("w", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_rows_of_every_width_forward_and_backward(w, dtype):
    # power-of-two widths in the compute dtype take the vector path (loads split into columns
    # by deinterleaving, outputs interleaved back); 3 takes the buffered path. Row counts cover
    # full blocks only, a partial last block, and many threaded chunks with a tail.
    # against the torch code in float64; float32 values are up to ~50 (summed in another order)
    temps, layout, syms, vals = _wide_region(w)
    f = lower(temps, layout, syms, len(vals), "cpp")
    ft = lower(temps, layout, syms, len(vals), "torch")
    f64 = dtype == torch.float64
    tol = {"rtol": 1e-12, "atol": 1e-12} if f64 else {"rtol": 1e-5, "atol": 5e-5}
    gen = torch.Generator().manual_seed(w)
    for n in (48, 53, 40_000 + 3):
        x = torch.randn(n, w, dtype=torch.float64, generator=gen)
        g = torch.randn(n, w, dtype=torch.float64, generator=gen)
        c = torch.tensor(vals, dtype=torch.float64)
        torch.testing.assert_close(f(x.to(dtype), c.to(dtype)), ft(x, c).to(dtype), **tol,
                                   msg=f"forward, {n} rows")
        grads = []
        for fn, d in ((f, dtype), (ft, torch.float64)):
            xx = x.to(d).requires_grad_(True)
            cc = c.to(d).requires_grad_(True)
            fn(xx, cc).backward(g.to(d))
            grads.append((xx.grad.to(dtype), cc.grad.to(dtype)))
        torch.testing.assert_close(grads[0][0], grads[1][0], **tol, msg=f"input grad, {n}")
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-10 if f64 else 1e-4,
                                   atol=1e-8 if f64 else 1e-2, msg=f"const grad, {n}")


def test_vector_and_buffered_tensors_mixed_in_one_region():
    # a packed (N, 4) tensor (vector path) beside a (N, 3) one (buffered), a column-sliced
    # (N, 4) view (strided: buffered) and a float16 one (buffered: converted per value)
    temps, layout, syms, vals = _wide_region(4, n_other=3)
    f = lower(temps, layout, syms, len(vals), "cpp")
    ft = lower(temps, layout, syms, len(vals), "torch")
    c = torch.tensor(vals, dtype=torch.float32)
    n = 2048 * 3 + 7
    cases = {
        "packed": torch.randn(n, 4),
        "sliced": torch.randn(n, 6)[:, 1:5],
        "half": torch.randn(n, 4).half(),
    }
    y = torch.randn(n, 3)
    for name, x in cases.items():
        torch.testing.assert_close(f(x, y, c), ft(x.float(), y, c), rtol=3e-6, atol=3e-6,
                                   msg=name)
