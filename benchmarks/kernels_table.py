"""Throughput of a region's equations: the fused kernel against the alternatives, in one table.

    python benchmarks/kernels_table.py                       # CPU: 2^16, 2^20, 2^24 rows
    python benchmarks/kernels_table.py --device cuda         # on a GPU
    python benchmarks/kernels_table.py --sizes 20 --repeat 9 --out table.md

Three expressions (small: ~5 nodes, 1 output; medium: ~20 nodes, 2 outputs; large: ~100 nodes,
8 outputs), each timed as

* ``fused``: ``kernel="auto"`` (the generated C++ kernel on CPU, the Triton kernel on GPU);
* ``eager``: the generated torch code, one torch op (one pass over memory) per operator: the way
  SymTorch and PySR's torch export evaluate equations;
* ``inductor``: the same torch code under ``torch.compile`` (default mode), on the same
  row-major ``(N, F)`` input;
* ``inductor-cols``: the same compiled code on an input whose columns are contiguous
  (``x.t().contiguous().t()``, converted before timing): what inductor does when the layout
  suits it, for reference;
* ``mlp64`` / ``mlp256``: the neural subgraph the equations replace, ``F -> w -> w -> outputs``
  with SiLU (on CPU only up to 2^20 rows: at 2^24 rows one activation of width 256 is 16 GiB).

Inputs are float32, row-major ``(N, F)``; outputs ``(N, outputs)``. Every figure is the median of
``--repeat`` timed calls after warm-up calls, in ``torch.no_grad()``. GB/s counts the bytes a
single pass must move (inputs read once, outputs written once), so it is comparable across
methods; on a GPU it is also given as a fraction of the measured device copy bandwidth
(``dst.copy_(src)`` of 1 GiB). ``bwd/fwd``: the backward kernel (gradients of every input column
and constant) over the forward kernel, both called through their custom ops; on CPU followed, in
parentheses, by the same ratio for the kernels alone, run into preallocated outputs. The op
figure includes allocating the outputs, and the backward's outputs are larger (one gradient per
input column against one value per output); where malloc maps fresh memory for them (above a few
MB), every page is faulted in on each call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types

import torch
import torch.nn as nn

from symtorch_fx.expr.grammar import complexity, parse, templatize, variable
from symtorch_fx.kernels import cpu as _cpu
from symtorch_fx.kernels import fused as _fused
from symtorch_fx.kernels.lower import Layout, lower

SUITE = {
    "small": (2, ["1.5*x0*sin(x1)"]),
    "medium": (4, ["x0*x1 + sin(x2)*exp(-x3^2)", "x0/(1 + x1^2) - tanh(x2*x3)"]),
    "large": (8, ["x0*x1 - 0.5*x2^2 + sin(x3)",
                  "exp(-0.3*(x4^2 + x5^2))*cos(x6)",
                  "tanh(0.9*x0 + 0.4*x7) - x1*x3",
                  "sqrt(1 + x2^2)*log(1 + x4^2)",
                  "sigmoid(x5 - x6)*x7 + 0.2*x0",
                  "x1/(1 + abs(x3)) + x4*x5*x6",
                  "atan(x2*x7) + erf(0.5*x0)",
                  "max(x3, 0)*x4 - min(x5, x6)^2 + cos(x1 + x2)"]),
}
METHODS = ["fused", "eager", "inductor", "inductor-cols", "mlp64", "mlp256"]


class Case:
    """One expression of the suite, lowered for every method."""

    def __init__(self, name: str):
        n_in, texts = SUITE[name]
        self.name, self.n_in, self.n_out = name, n_in, len(texts)
        syms = [variable(f"x{i}") for i in range(n_in)]
        exprs = [parse(t, {s.name: s for s in syms}) for t in texts]
        self.nodes = sum(complexity(e) for e in exprs)
        temps, vals = [], []
        for e in exprs:
            t, v = templatize(e, len(vals))
            temps.append(t)
            vals.extend(v)
        layout = Layout((n_in,), len(texts))
        self.c = torch.tensor(vals)
        self.fused = lower(temps, layout, syms, len(vals), "auto")
        self.eager = lower(temps, layout, syms, len(vals), "torch")
        self.compiled = torch.compile(self.eager.torch_fn)
        self.mlps = {w: self._mlp(w) for w in (64, 256)}

    def _mlp(self, width: int) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(self.n_in, width), nn.SiLU(), nn.Linear(width, width),
                             nn.SiLU(), nn.Linear(width, self.n_out)).eval()

    def runner(self, method: str, x: torch.Tensor):
        c = self.c.to(x.device)
        if method == "fused":
            return lambda: self.fused(x, c)
        if method == "eager":
            return lambda: self.eager(x, c)
        if method == "inductor":
            return lambda: self.compiled(x, c)
        if method == "inductor-cols":
            xc = x.t().contiguous().t()
            return lambda: self.compiled(xc, c)
        mlp = self.mlps[int(method[3:])].to(x.device)
        return lambda: mlp(x)

    def backward_runners(self, x: torch.Tensor):
        """(forward, backward) calls of the fused kernel's custom ops."""
        c = self.c.to(x.device)
        backend = self.fused.choose([x], c)
        key = self.fused.entry.key
        g = torch.ones(x.shape[0], self.n_out, device=x.device)

        def fwd():
            return _fused.fused([x], c, key, backend, torch.float32)

        def bwd():
            return _fused.fused_backward([x], c, g, key, backend, [True, True])

        return fwd, bwd

    def kernel_runners(self, x: torch.Tensor):
        """(forward, backward) of the C++ kernels alone: bound once to preallocated outputs
        and run again into them, so the time excludes the allocation and first touch of the
        outputs (page faults, at sizes where malloc maps fresh memory) and the op dispatch."""
        calls = []

        def bind(*args):  # the C++ backend's ``run``, keeping the bound call
            call, outs, sums = _cpu.launch(*args)
            calls.append(call)
            call()
            return outs, sums

        backend = types.SimpleNamespace(run=bind)
        c, entry = self.c.to(x.device), self.fused.entry
        g = torch.ones(x.shape[0], self.n_out, device=x.device)
        _fused.run_forward(backend, entry, [x], c, torch.float32)
        _fused.run_backward(backend, entry, [x], c, g, (True, True))
        return calls[0], calls[1]


def timeit(fn, repeat: int, device: str) -> float:
    """Median seconds of ``repeat`` calls, after two warm-up calls."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: str, repeat: int) -> float:
    """Bytes/s of ``dst.copy_(src)`` for a 1 GiB float32 buffer (read + write counted)."""
    n = (1 << 30) // 4 if device == "cuda" else (1 << 28) // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timeit(lambda: dst.copy_(src), repeat, device)


def table(sizes, repeat: int, device: str, methods=METHODS, backward: bool = True) -> str:
    torch.set_grad_enabled(False)
    bw = copy_bandwidth(device, repeat)
    rows = []
    head = ["expression", "rows", "method", "time", "rows/s", "GB/s"]
    if device == "cuda":
        head.append("% copy BW")
    head += ["vs eager", "bwd/fwd"]
    for name in SUITE:
        case = Case(name)
        for p in sizes:
            n = 1 << p
            x = torch.randn(n, case.n_in, device=device)
            bytes_moved = n * (case.n_in + case.n_out) * 4
            times = {}
            for m in methods:
                if m.startswith("mlp") and device == "cpu" and p > 20:
                    continue
                times[m] = timeit(case.runner(m, x), repeat, device)
                print(f"  {name} 2^{p} {m}: {times[m] * 1e3:.3f} ms", file=sys.stderr)
            ratio = ""
            if backward:
                with torch.enable_grad():
                    f, b = case.backward_runners(x)
                    ratio = f"{timeit(b, repeat, device) / timeit(f, repeat, device):.2f}"
                    if device == "cpu":
                        f, b = case.kernel_runners(x)
                        ratio += f" ({timeit(b, repeat, device) / timeit(f, repeat, device):.2f})"
            for m, t in times.items():
                r = [f"{name} ({case.nodes} nodes, {case.n_in}->{case.n_out})", f"2^{p}", m,
                     _ms(t), f"{n / t:.3g}", f"{bytes_moved / t / 1e9:.2f}"]
                if device == "cuda":
                    r.append(f"{100 * bytes_moved / t / bw:.0f}%")
                r.append(f"{times['eager'] / t:.2f}x" if "eager" in times else "")
                r.append(ratio if m == "fused" else "")
                rows.append(r)
            del x
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines.append(f"copy bandwidth ({device}, dst.copy_(src)): {bw / 1e9:.1f} GB/s")
    return "\n".join(lines)


def crossover(repeat: int, device: str = "cpu") -> str:
    """Small batches: where the fused kernel's fixed cost (custom op, launch) stops mattering,
    which sets ``AUTO_CPP_MIN_ROWS``."""
    torch.set_grad_enabled(False)
    lines = ["| expression | rows | eager | fused (cpp) | eager / fused |", "|---|---|---|---|---|"]
    for name in ("small", "medium"):
        case = Case(name)
        cpp = lower(case.fused.templates, case.fused.layout, case.fused.variables,
                    case.fused.n_constants, "cpp")
        for p in (6, 8, 10, 12, 14):
            x = torch.randn(1 << p, case.n_in, device=device)
            c = case.c.to(device)
            te = timeit(lambda: case.eager(x, c), repeat * 20, device)
            tf = timeit(lambda: cpp(x, c), repeat * 20, device)
            lines.append(f"| {name} | 2^{p} | {te * 1e6:.1f} us | {tf * 1e6:.1f} us | "
                         f"{te / tf:.2f}x |")
    return "\n".join(lines)


def _ms(t: float) -> str:
    return f"{t * 1e3:.3f} ms" if t < 1 else f"{t:.2f} s"


def describe(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return (f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"{torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="16,20,24", help="log2 of the row counts")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--no-backward", action="store_true")
    ap.add_argument("--out", help="also write the table (markdown) here")
    ap.add_argument("--crossover", action="store_true",
                    help="instead: eager vs the C++ kernel on small CPU batches")
    args = ap.parse_args(argv)
    if args.crossover:
        print(f"{describe('cpu')}\n\n{crossover(args.repeat)}")
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    text = (f"{describe(args.device)}; repeat {args.repeat}\n\n"
            + table(sizes, args.repeat, args.device, args.methods.split(","),
                    not args.no_backward))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
