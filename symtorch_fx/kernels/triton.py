"""The Triton backend: one generated ``@triton.jit`` kernel per region and pass (GPU).

Each kernel reads every input column once (strided, in place), computes all outputs with their
common subexpressions shared, and writes each output once. Constants are loaded from a tensor,
so tuning them never recompiles, and kernels are cached by expression structure. Arithmetic is
float32 whatever the input dtype (float32, float16, bfloat16); float64 regions run the torch code.

The code uses only what Triton's interpreter (``TRITON_INTERPRET=1``) also runs, so the kernel
that runs on a GPU is the one CI checks on CPU: ``tanh``, ``sinh``, ``cosh`` and ``atan``
(hence ``asin``/``acos``) are written out with ``exp`` and minimax polynomials (single-precision
Cephes coefficients), real powers go through ``exp``/``log`` with torch's sign and edge-case
rules, and integer powers are multiplications.
"""

from __future__ import annotations

import functools
import linecache
import os
import threading

import sympy
import torch

from ..errors import SymTorchFXError
from ..expr.grammar import constant_symbol
from ..expr.ops import sigmoid
from . import system

_HELPERS = '''
@triton.jit
def _sfx_sign(x):
    return tl.where(x > 0.0, 1.0, tl.where(x < 0.0, -1.0, 0.0))


@triton.jit
def _sfx_step(x, at_zero):
    return tl.where(x > 0.0, 1.0, tl.where(x < 0.0, 0.0, at_zero + 0.0 * x))


@triton.jit
def _sfx_sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _sfx_tanh(x):
    a = tl.abs(x)
    s = x * x
    p = ((((-5.70498872745e-3 * s + 2.06390887954e-2) * s - 5.37397155531e-2) * s
          + 1.33314422036e-1) * s - 3.33332819422e-1) * s * x + x
    big = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)
    return tl.where(a < 0.625, p, tl.where(x < 0.0, -big, big))


@triton.jit
def _sfx_sinh(x):
    a = tl.abs(x)
    s = x * x
    p = ((2.03721912945e-4 * s + 8.33028376239e-3) * s + 1.66667160211e-1) * s * x + x
    h = tl.exp(0.5 * a)
    big = (0.5 * h) * h - 0.5 / (h * h)
    return tl.where(a <= 1.0, p, tl.where(x < 0.0, -big, big))


@triton.jit
def _sfx_cosh(x):
    h = tl.exp(0.5 * tl.abs(x))
    return (0.5 * h) * h + 0.5 / (h * h)


@triton.jit
def _sfx_tan(x):
    return tl.sin(x) / tl.cos(x)


@triton.jit
def _sfx_atan(x):
    a = tl.abs(x)
    big = a > 2.414213562373095
    mid = a > 0.41421356237309503
    t = tl.where(big, -1.0 / a, tl.where(mid, (a - 1.0) / (a + 1.0), a))
    y0 = tl.where(big, 1.5707963267948966, tl.where(mid, 0.7853981633974483, 0.0))
    z = t * t
    r = y0 + ((((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z
               - 3.33329491539e-1) * z * t + t)
    return tl.where(x < 0.0, -r, r)


@triton.jit
def _sfx_asin(x):
    return _sfx_atan(x / tl.sqrt_rn((1.0 - x) * (1.0 + x)))


@triton.jit
def _sfx_acos(x):
    return 2.0 * _sfx_atan(tl.sqrt_rn((1.0 - x) / (1.0 + x)))


@triton.jit
def _sfx_pow(b, e):
    # torch.pow (C's pow): |b|^e; for b < 0 the sign of an integer e, NaN for a fractional e
    # (the log of a negative number) except at b = -inf; 1 when e == 0 or b == 1 whatever the
    # other is, and for b = -1 with an infinite e
    r = tl.exp(e * tl.log(tl.abs(b)))
    ei = tl.floor(e)
    half = 0.5 * ei
    signed = tl.where(tl.floor(half) != half, -r, r)
    frac = tl.where(b == -_SFX_INF, r, tl.exp(e * tl.log(b)))
    negative = tl.where(b < 0.0, 1.0, tl.where(1.0 / b < 0.0, 1.0, 0.0)) > 0.5  # and -0.0
    r = tl.where(negative, tl.where(ei == e, signed, frac), r)
    r = tl.where(tl.abs(e) == _SFX_INF, tl.where(tl.abs(b) == 1.0, 1.0, r), r)
    return tl.where(e == 0.0, 1.0, tl.where(b == 1.0, 1.0, r))
'''


class TritonPrinter(system.KernelPrinter):
    UNARY = {
        sympy.sin: "tl.sin({x})",
        sympy.cos: "tl.cos({x})",
        sympy.tan: "_sfx_tan({x})",
        sympy.asin: "_sfx_asin({x})",
        sympy.acos: "_sfx_acos({x})",
        sympy.atan: "_sfx_atan({x})",
        sympy.sinh: "_sfx_sinh({x})",
        sympy.cosh: "_sfx_cosh({x})",
        sympy.tanh: "_sfx_tanh({x})",
        sympy.exp: "tl.exp({x})",
        sympy.log: "tl.log({x})",
        sympy.Abs: "tl.abs({x})",
        sympy.sign: "_sfx_sign({x})",
        sympy.erf: "tl.erf({x})",
        sigmoid: "_sfx_sigmoid({x})",
        sympy.floor: "tl.floor({x})",
        sympy.ceiling: "tl.ceil({x})",
    }

    def lit(self, v: float) -> str:
        if v != v:
            return "_SFX_NAN"
        if v in (float("inf"), float("-inf")):
            return "_SFX_INF" if v > 0 else "(-_SFX_INF)"
        return repr(v)

    def assign(self, name: str, code: str) -> str:
        return f"    {name} = {code}"

    def neg(self, c: str) -> str:
        return f"(-{c})"

    def minmax(self, is_max: bool, a: str, b: str) -> str:
        return f"tl.{'maximum' if is_max else 'minimum'}({a}, {b}, " \
               "propagate_nan=tl.PropagateNan.ALL)"

    def step(self, a: str, at_zero: float) -> str:
        return f"_sfx_step({a}, {at_zero!r})"

    def sqrt(self, c: str) -> str:
        return f"tl.sqrt_rn({c})"

    def real_pow(self, b: str, e: str) -> str:
        return f"_sfx_pow({b}, {e})"

    def select(self, u: str, a: str, at_zero: float) -> str:
        return f"tl.where({u} > 0.0, {a}, tl.where({u} < 0.0, 0.0, {at_zero!r} * {a}))"


def _pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def _split(name: str, cols: list[int], lines: list[str]) -> dict[int, str]:
    """Split tile ``name`` (flat columns ``cols``, a power of two, last dim the lowest bit)
    into one ``[BLOCK]`` vector per column: ``tl.split`` peels the lowest bit each time."""
    if len(cols) == 1:
        return {cols[0]: name}
    lines.append(f"        {name}e, {name}o = tl.split({name})")
    return {**_split(f"{name}e", cols[0::2], lines), **_split(f"{name}o", cols[1::2], lines)}


def _join(name: str, items: list[str], lines: list[str]) -> str:
    """Join ``[BLOCK]`` vectors (flat columns, a power of two) into ``[BLOCK, 2, ..., 2]`` with
    the highest bit first, so a row-major reshape gives ``[BLOCK, columns]``."""
    level = 0
    while len(items) > 1:
        half = len(items) // 2
        out = []
        for j in range(half):
            lines.append(f"        {name}_{level}_{j} = tl.join({items[j]}, {items[j + half]})")
            out.append(f"{name}_{level}_{j}")
        items, level = out, level + 1
    return items[0]


def tiled(system: system.System) -> list[int]:
    """The tensors that can be loaded as ``[BLOCK, columns]`` tiles (two or more columns)."""
    return [t for t, w in enumerate(system.widths) if w is not None and w >= 2]


def source(program: system.Program, name: str) -> str:
    """The kernel ``name`` for ``program``.

    Inputs whose columns are contiguous (``TILE<t>``) are read as one ``[BLOCK, columns]`` tile
    (coalesced, vectorized loads) and split into columns in registers (``tl.split``, exact);
    the others column by column. Outputs are joined into a ``[BLOCK, columns]`` tile and stored
    at once (``TILE_OUT``) or column by column. Both forms are generated; the flags are
    compile-time constants.
    """
    system = program.system
    tensors = sorted({r.tensor for r in program.reads})
    tiles = [t for t in tiled(system) if t in tensors]
    args = []
    for t in tensors:
        args += [f"p{t}", f"so{t}", f"si{t}", f"sc{t}"]
    args += ["c_ptr"] + [f"q{g}" for g in range(len(system.groups))]
    args += ["s_ptr", "n_rows", "n_inner", "BLOCK: tl.constexpr", "TWO: tl.constexpr",
             "TILE_OUT: tl.constexpr"] + [f"TILE{t}: tl.constexpr" for t in tiles]
    lines = ["@triton.jit", f"def {name}({', '.join(args)}):",
             "    pid = tl.program_id(0)",
             "    r = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
             "    m = r < n_rows",
             "    if TWO:",
             "        ro = r // n_inner",
             "        ri = r - ro * n_inner"]
    lines += [f"        o{t} = ro * so{t} + ri * si{t}" for t in tensors]
    lines += ["    else:"]
    lines += [f"        o{t} = r * si{t}" for t in tensors]
    names: dict[sympy.Symbol, str] = {}
    rowdep: set[sympy.Symbol] = set()
    by_tensor: dict[int, list[tuple[int, system.Read]]] = {}
    for k, rd in enumerate(program.reads):
        by_tensor.setdefault(rd.tensor, []).append((k, rd))
        names[rd.symbol] = f"v{k}"
        rowdep.add(rd.symbol)
    for t in tensors:
        ind = "    "
        if t in tiles:
            w, wp = system.widths[t], _pow2(system.widths[t])
            lines += [f"    if TILE{t}:",
                      f"        a{t} = tl.arange(0, {wp})",
                      f"        x{t} = tl.load(p{t} + o{t}[:, None] + a{t}[None, :], "
                      f"mask=m[:, None] & (a{t}[None, :] < {w}), other=0.0).to(tl.float32)"]
            if wp > 2:
                lines.append(f"        x{t} = tl.reshape(x{t}, [BLOCK{', 2' * (wp.bit_length() - 1)}])")
            leaves = _split(f"x{t}", list(range(wp)), lines)
            lines += [f"        v{k} = {leaves[rd.column]}" for k, rd in by_tensor[t]]
            lines.append("    else:")
            ind = "        "
        for k, rd in by_tensor[t]:
            col = "" if rd.column is None else f" + {rd.column} * sc{rd.tensor}"
            lines.append(f"{ind}v{k} = tl.load(p{t} + o{t}{col}, mask=m, other=0.0)"
                         ".to(tl.float32)")
    for j in program.constants:
        lines.append(f"    k{j} = tl.load(c_ptr + {j}).to(tl.float32)")
        names[constant_symbol(j)] = f"k{j}"
    printer = TritonPrinter(names)
    for i, (sym, e) in enumerate(program.temps):
        printer.bind(sym, f"t{i}", e)
        if e.free_symbols & rowdep:
            rowdep.add(sym)
    outs: dict[int, list[tuple[int, str]]] = {}
    for o, (gi, col, e) in enumerate(program.outputs):
        code = printer(e)
        if not e.free_symbols & rowdep:  # the same value on every row
            code = f"tl.full([BLOCK], 0.0, tl.float32) + {code}"
        printer.lines.append(f"    y{o} = {code}")
        outs.setdefault(gi, []).append((col, f"y{o}"))
    store = []
    for gi, cols in outs.items():
        w = len(system.groups[gi].exprs)
        dtype = f"q{gi}.dtype.element_ty"
        if w >= 2:
            wp = _pow2(w)
            store += ["    if TILE_OUT:", f"        b{gi} = tl.arange(0, {wp})"]
            by_col = dict(cols)
            if len(by_col) < wp:
                store.append(f"        e{gi} = tl.zeros([BLOCK], tl.float32)")
            z = _join(f"z{gi}", [by_col.get(col, f"e{gi}") for col in range(wp)], store)
            store.append(f"        z{gi} = tl.reshape({z}, [BLOCK, {wp}])")
            store += [f"        tl.store(q{gi} + r[:, None] * {w} + b{gi}[None, :], "
                      f"z{gi}.to({dtype}), mask=m[:, None] & (b{gi}[None, :] < {w}))",
                      "    else:"]
            store += [f"        tl.store(q{gi} + r * {w} + {col}, {y}.to({dtype}), mask=m)"
                      for col, y in cols]
        else:
            store += [f"    tl.store(q{gi} + r * {w} + {col}, {y}.to({dtype}), mask=m)"
                      for col, y in cols]
    printer.lines += store
    n_sums = len(program.sums)
    for s, e in enumerate(program.sums):
        code = printer(e)
        printer.lines.append(f"    tl.store(s_ptr + pid * {max(n_sums, 1)} + {s}, "
                             f"tl.sum(tl.where(m, {code}, 0.0), axis=0))")
    return "\n".join(lines + printer.lines) + "\n"


# ----------------------------------------------------------------------------------------------
# building and caching kernels

# read contiguous columns as tiles and write outputs as tiles (SYMTORCH_FX_TRITON_TILES=0: one
# column at a time, for comparison)
TILES = os.environ.get("SYMTORCH_FX_TRITON_TILES", "1") != "0"

_BUILD_LOCK = threading.Lock()
_COUNTER = [0]


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _kernel(entry: system.Entry, needs):
    """The jitted kernel of ``entry``'s forward (``needs is None``) or backward system."""
    cache_key = ("triton", needs)
    fn = entry.kernels.get(cache_key)
    if fn is not None:
        return fn
    try:
        import triton
        import triton.language as tl
    except ImportError as exc:
        raise SymTorchFXError(
            "kernel='triton' needs the triton package: CUDA builds of torch include it, "
            "or pip install 'symtorch_fx[gpu]'; or use kernel='auto' or 'torch'") from exc
    program = entry.program(needs)
    with _BUILD_LOCK:
        fn = entry.kernels.get(cache_key)
        if fn is not None:
            return fn
        _COUNTER[0] += 1
        name = f"sfx_{'fwd' if needs is None else 'bwd'}_{_COUNTER[0]}"
        src = ("import triton\nimport triton.language as tl\n\n"
               "_SFX_NAN = tl.constexpr(float('nan'))\n_SFX_INF = tl.constexpr(float('inf'))\n"
               + _HELPERS + "\n\n" + source(program, name))
        # Triton reads a kernel's source through ``inspect``; register it like a file
        filename = f"<symtorch_fx triton {name}>"
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
        namespace = {"triton": triton, "tl": tl, "__name__": f"symtorch_fx_triton_{name}"}
        exec(compile(src, filename, "exec"), namespace)  # our own generated code
        fn = namespace[name]
        fn.__symtorch_source__ = src
        entry.kernels[cache_key] = fn
    return fn


def _launch_config(program: system.Program, n: int) -> tuple[int, int]:
    if interpreting():
        block = 16
        while block < min(n, 4096):
            block *= 2
        return block, 4
    heavy = len(program.temps) + len(program.outputs) > 64
    return (512 if heavy else 1024), 4


def _check(tensors, c):
    dev = tensors[0].device
    for x in (*tensors, c):
        if x.device != dev:
            raise SymTorchFXError(
                f"the Triton kernel needs every input and the constants on one device; got "
                f"{x.device} and {dev}")
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise SymTorchFXError(
                f"the Triton kernel computes in float32 from float32/16/bfloat16 inputs, got "
                f"{x.dtype}; use kernel='auto' or 'torch' for {x.dtype}")
    if dev.type != "cuda" and not interpreting():
        raise SymTorchFXError(
            f"the Triton kernel runs on CUDA tensors, got {dev}; use kernel='auto' (Triton on "
            "GPU, the fused CPU kernel otherwise), or set TRITON_INTERPRET=1 before importing "
            "symtorch_fx to run it in Triton's interpreter")


def run(entry, tensors, has_dim, c, needs, out_shapes, out_dtypes, n_sums):
    """Run ``entry``'s forward (``needs is None``) or backward kernel; see ``fused.run_forward``."""
    _check(tensors, c)
    rows = system.row_space(tensors, has_dim)
    outs = [torch.empty(rows.shape + s, dtype=d, device=c.device)
            for s, d in zip(out_shapes, out_dtypes)]
    program = entry.program(needs)
    block, warps = _launch_config(program, rows.n)
    grid = (triton_cdiv(rows.n, block),)
    # per-program partial sums, every one written by the kernel (no fill on the hot path); at
    # least one column: Triton's launcher may reject the null pointer of an empty tensor
    shape = (max(grid[0], 1), max(n_sums, 1))
    sums = (torch.empty if rows.n else torch.zeros)(shape, dtype=torch.float32, device=c.device)
    if c.numel() == 0:
        c = torch.zeros(1, dtype=c.dtype, device=c.device)
    if rows.n:
        used = sorted({r.tensor for r in program.reads})
        args = []
        for t in used:
            args += [rows.tensors[t], *rows.strides[t]]
        args += [c] + outs + [sums, rows.n, rows.n_inner]
        flags = {f"TILE{t}": TILES and rows.strides[t][2] == 1
                 for t in tiled(program.system) if t in used}
        _kernel(entry, needs)[grid](*args, BLOCK=block, TWO=rows.two_level, TILE_OUT=TILES,
                                    num_warps=warps, **flags)
    return outs, sums


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


