"""The kernel comparison of ``kernels_table.py`` as pytest-benchmark cases, at one row count.

    python -m pytest benchmarks/test_kernels_bench.py --benchmark-enable
    SFX_BENCH_ROWS_LOG2=24 python -m pytest benchmarks/test_kernels_bench.py --benchmark-enable

Forward of every (expression, method) pair, and the fused kernel's backward, on CUDA when there
is a GPU and on CPU otherwise. ``kernels_table.py`` prints the whole table with rows/s and GB/s.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch
from kernels_table import METHODS, SUITE, Case

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LOG2 = int(os.environ.get("SFX_BENCH_ROWS_LOG2", "20"))
N = 1 << LOG2


@functools.cache
def case(name: str) -> Case:
    return Case(name)


@functools.cache
def data(n_in: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(N, n_in, device=DEVICE)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(SUITE))
def test_forward(benchmark, name, method):
    c = case(name)
    if method == "mlp256" and DEVICE == "cpu" and LOG2 > 20:
        pytest.skip("a width-256 activation at this row count does not fit a CPU box")
    x = data(c.n_in)
    fn = c.runner(method, x)
    benchmark.group = f"{name} ({c.nodes} nodes), 2^{LOG2} rows, {DEVICE}"
    benchmark.extra_info["GB moved"] = N * (c.n_in + c.n_out) * 4 / 1e9

    def run():
        with torch.no_grad():
            out = fn()
        _sync()
        return out

    out = benchmark(run)
    assert out.shape == (N, c.n_out) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(SUITE))
def test_backward(benchmark, name):
    c = case(name)
    _, bwd = c.backward_runners(data(c.n_in))
    benchmark.group = f"fused backward, 2^{LOG2} rows, {DEVICE}"

    def run():
        out = bwd()
        _sync()
        return out

    gx, gc = benchmark(run)
    assert gx.shape == (N, c.n_in) and gc.shape == c.c.shape
