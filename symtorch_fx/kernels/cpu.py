"""The CPU backend: one generated C++ kernel per region and pass, vectorized over rows.

Per-op eager torch makes one pass over memory per operator, and inductor does not vectorize the
strided column reads of a row-major ``(N, F)`` input (measured: 1.03x eager). This kernel works
on ``W`` rows at a time (``W`` = the SIMD width of ``at::vec::Vectorized``): it gathers the
rows' input columns from wherever they lie into registers (any strides, any of float32/64,
float16, bfloat16), evaluates every output with common subexpressions shared, and scatters the
results, so each input byte is read once and each output byte written once, and every
intermediate value stays in a register. Packed rows of a power-of-two width (the usual
``(N, F)`` activation) move as whole vectors, split into columns and joined back by in-register
permutes; other layouts go through a small buffer a value at a time. Where an expression needs
both the sine and the cosine of one argument (derivatives of ``sin`` do), one SLEEF call
computes both. Transcendentals are ``at::vec``'s (SLEEF), the same
vector math torch's own CPU kernels use. Arithmetic is float64 when an input or the constants are
float64, float32 otherwise. Rows are split over ``torch.get_num_threads()`` OpenMP threads in
chunks; sums over rows (the constants' gradients) are per-thread, added in a fixed order.

The source is compiled once with the system's C++ compiler against torch's headers (under a
second with GCC, whose precompiled header of ``at::vec`` is built once, in a few seconds) and
cached on disk by its hash (``$SYMTORCH_FX_CACHE``, default ``~/.cache/symtorch_fx``); the
library is called through ``ctypes`` with one packed argument vector. Constants are read from a
tensor, so tuning them never recompiles.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import warnings

import sympy
import torch

from ..errors import KernelBuildError, SymTorchFXError
from ..expr.grammar import constant_symbol
from ..expr.ops import sigmoid
from . import system

CHUNK = 2048  # rows per parallel task (a multiple of every SIMD width)
PARALLEL_ROWS = 32768  # fewer rows than this run on one thread

_CTYPE = {
    torch.float32: "float",
    torch.float64: "double",
    torch.float16: "c10::Half",
    torch.bfloat16: "c10::BFloat16",
}
DTYPES = frozenset(_CTYPE)
# SLEEF's sin-and-cos for 512- and 256-bit vectors, at the accuracy of at::vec's own sin and cos
_SINCOS = {
    torch.float32: ("Sleef_sincosf16_u35", "Sleef_sincosf8_u35"),
    torch.float64: ("Sleef_sincosd8_u10", "Sleef_sincosd4_u10"),
}

# the headers every kernel includes: parsed once into a precompiled header where the compiler
# is GCC (1.2 s of a 1.3 s compile are these headers)
_HEADERS = """\
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
"""

_PRELUDE = """\
#include "%(HEADER)s"

namespace {
using T = %(T)s;
using V = at::vec::Vectorized<T>;
constexpr int64_t W = V::size();
constexpr int64_t CHUNK = %(CHUNK)d;

inline V sfx_sign(const V& x) { return x.gt(V(T(0))) - x.lt(V(T(0))); }
inline V sfx_step(const V& x, T at_zero) { return x.gt(V(T(0))) + x.eq(V(T(0))) * V(at_zero); }
inline V sfx_sigmoid(const V& x) { return V(T(1)) / (V(T(1)) + x.neg().exp()); }

// sin and cos of one argument in one SLEEF call
inline std::pair<V, V> sfx_sincos(const V& x) {
#if defined(CPU_CAPABILITY_AVX512)
  const auto r = %(SINCOS512)s(x);
  return {V(r.x), V(r.y)};
#elif defined(CPU_CAPABILITY_AVX2)
  const auto r = %(SINCOS256)s(x);
  return {V(r.x), V(r.y)};
#else
  return {x.sin(), x.cos()};
#endif
}

template <bool TWO>
inline int64_t row_offset(int64_t r, int64_t n_inner, int64_t so, int64_t si) {
  if constexpr (TWO) {
    const int64_t o = r / n_inner;
    return o * so + (r - o * n_inner) * si;
  } else {
    return r * si;
  }
}
}  // namespace
"""


class CppPrinter(system.KernelPrinter):
    SINCOS = True
    UNARY = {
        sympy.sin: "({x}).sin()",
        sympy.cos: "({x}).cos()",
        sympy.tan: "({x}).tan()",
        sympy.asin: "({x}).asin()",
        sympy.acos: "({x}).acos()",
        sympy.atan: "({x}).atan()",
        sympy.sinh: "({x}).sinh()",
        sympy.cosh: "({x}).cosh()",
        sympy.tanh: "({x}).tanh()",
        sympy.exp: "({x}).exp()",
        sympy.log: "({x}).log()",
        sympy.Abs: "({x}).abs()",
        sympy.sign: "sfx_sign({x})",
        sympy.erf: "({x}).erf()",
        sigmoid: "sfx_sigmoid({x})",
        sympy.floor: "({x}).floor()",
        sympy.ceiling: "({x}).ceil()",
    }

    def lit(self, v: float) -> str:
        if v != v:
            return "V(std::numeric_limits<T>::quiet_NaN())"
        if v in (float("inf"), float("-inf")):
            return f"V({'' if v > 0 else '-'}std::numeric_limits<T>::infinity())"
        return f"V(T({v!r}))"

    def assign(self, name: str, code: str) -> str:
        return f"        const V {name} = {code};"

    def neg(self, c: str) -> str:
        return f"({c}).neg()"

    def minmax(self, is_max: bool, a: str, b: str) -> str:
        return f"at::vec::{'maximum' if is_max else 'minimum'}({a}, {b})"

    def step(self, a: str, at_zero: float) -> str:
        return f"sfx_step({a}, T({at_zero!r}))"

    def sqrt(self, c: str) -> str:
        return f"({c}).sqrt()"

    def real_pow(self, b: str, e: str) -> str:
        return f"({b}).pow({e})"

    def sincos(self, name: str, x: str) -> str:
        return f"        const auto {name} = sfx_sincos({x});"

    def select(self, u: str, a: str, at_zero: float) -> str:
        zero = "V(T(0))"
        tie = f"V::blendv(V(T({at_zero!r})) * {a}, {zero}, {u} < {zero})"
        return f"V::blendv({tie}, {a}, {u} > {zero})"


def source(program: system.Program, compute: torch.dtype, in_dtypes, out_dtypes,
           packed: tuple[bool, ...]) -> str:
    """C++ source of ``sfx_kernel(const int64_t* a)``; ``a`` packs, in order: per read tensor
    (data, stride_outer, stride_inner, stride_col), the constants, per output group its data,
    the per-thread sums, then n_rows, n_inner, threads and two_level.

    ``packed[t]``: tensor ``t``'s rows are packed (row stride = its width, column stride 1), the
    common case; its strides are then compile-time constants, which makes the gather of a row
    block about 4x faster than with strides known only at run time (measured)."""
    system = program.system
    tensors = sorted({r.tensor for r in program.reads})
    k = 0
    unpack = []
    for t in tensors:
        unpack.append(f"  const auto* p{t} = reinterpret_cast<const {_CTYPE[in_dtypes[t]]}*>"
                      f"(a[{k}]);")
        if packed[t]:
            unpack.append(f"  const int64_t so{t} = a[{k + 1}];")
            unpack.append(f"  constexpr int64_t si{t} = {system.widths[t] or 1}, sc{t} = 1;")
        else:
            unpack.append(f"  const int64_t so{t} = a[{k + 1}], si{t} = a[{k + 2}], "
                          f"sc{t} = a[{k + 3}];")
        k += 4
    unpack.append(f"  const T* cv = reinterpret_cast<const T*>(a[{k}]);")
    k += 1
    for g in range(len(system.groups)):
        unpack.append(f"  auto* q{g} = reinterpret_cast<{_CTYPE[out_dtypes[g]]}*>(a[{k}]);")
        k += 1
    unpack.append(f"  double* sums = reinterpret_cast<double*>(a[{k}]);")
    unpack.append(f"  const int64_t n = a[{k + 1}], n_inner = a[{k + 2}];")
    unpack.append(f"  const int threads = static_cast<int>(a[{k + 3}]);")

    names: dict[sympy.Symbol, str] = {}
    consts = [f"  const V k{j}(cv[{j}]);" for j in program.constants]
    for j in program.constants:
        names[constant_symbol(j)] = f"k{j}"
    # Gather. A tensor whose rows are packed in the compute dtype, with a power-of-two width,
    # is read in full blocks as `width` contiguous vector loads, split into its columns by
    # deinterleaving (permutes in registers). Any other tensor, and the last partial block, goes
    # through a small buffer one row at a time. Measured on the 2-input, 1-output law of the
    # kernel benchmark at 2^20 rows, one thread: forward 0.68 -> 0.34 ms, backward
    # 2.3 -> 0.73 ms with the vector path.
    fast = {t for t in tensors if packed[t] and in_dtypes[t] == compute
            and _vector_width(system.widths[t])}
    slow_reads = [(idx, rd) for idx, rd in enumerate(program.reads) if rd.tensor not in fast]
    gather = [f"        V {', '.join(f'v{i}' for i in range(len(program.reads)))};"
              if program.reads else "",
              "        const int64_t cnt = std::min<int64_t>(W, r1 - r);"]
    if fast:
        gather.append("        if (!TWO && cnt == W) {")
        for t in sorted(fast):
            w = system.widths[t] or 1
            loads = [f"g{t}_{k}" for k in range(w)]
            gather += [f"          const V {name} = V::loadu(p{t} + r * {w} + {k} * W);"
                       for k, name in enumerate(loads)]
            cols = _deinterleave(f"d{t}_", loads, list(range(w)), gather)
            for idx, rd in enumerate(program.reads):
                if rd.tensor == t:
                    gather.append(f"          v{idx} = {cols[rd.column or 0]};")
        gather += _buffered(slow_reads, tensors)
        gather.append("        } else {")
    gather += _buffered(list(enumerate(program.reads)), tensors)
    if fast:
        gather.append("        }")
    for idx, rd in enumerate(program.reads):
        names[rd.symbol] = f"v{idx}"
    printer = CppPrinter(names)
    printer.pair_sincos([e for _, e in program.temps] + [e for *_, e in program.outputs]
                        + list(program.sums))
    for i, (sym, e) in enumerate(program.temps):
        printer.bind(sym, f"t{i}", e)
    # Scatter: the same in reverse; outputs are always packed rows of their group's width.
    n_out = len(program.outputs)
    widths = [len(g.exprs) for g in system.groups]
    for o, (gi, col, e) in enumerate(program.outputs):
        printer.lines.append(f"        const V o{o} = {printer(e)};")
    fast_out = {gi for gi, w in enumerate(widths)
                if out_dtypes[gi] == compute and _vector_width(w)}
    by_group = {gi: [o for o, (g, _, _) in enumerate(program.outputs) if g == gi]
                for gi in range(len(widths))}
    if n_out:
        printer.lines.append(f"        alignas(64) T ob[{n_out}][W];")
    if fast_out:
        printer.lines.append("        if (cnt == W) {")
        for gi in sorted(fast_out):
            w = widths[gi]
            ordered = [f"o{o}" for o in sorted(by_group[gi], key=lambda o: program.outputs[o][1])]
            stream = _interleave(f"s{gi}_", ordered, printer.lines)
            printer.lines += [f"          {v}.store(q{gi} + r * {w} + {k} * W);"
                              for k, v in enumerate(stream)]
        slow = [o for gi in range(len(widths)) if gi not in fast_out for o in by_group[gi]]
        printer.lines += _scattered(slow, program, widths, out_dtypes)
        printer.lines.append("        } else {")
    printer.lines += _scattered(range(n_out), program, widths, out_dtypes)
    if fast_out:
        printer.lines.append("        }")
    n_sums = len(program.sums)
    for s, e in enumerate(program.sums):
        printer.lines.append(f"        acc{s} = acc{s} + V::set(V(T(0)), {printer(e)}, cnt);")

    src = [_PRELUDE % {"T": _CTYPE[compute], "CHUNK": CHUNK, "HEADER": header_name(),
                      "SINCOS512": _SINCOS[compute][0], "SINCOS256": _SINCOS[compute][1]},
           "template <bool TWO>",
           "static void run(const int64_t* a) {"]
    src += unpack + consts
    src += ["  const int64_t n_chunks = (n + CHUNK - 1) / CHUNK;",
            f"  const int nt = n >= {PARALLEL_ROWS} ? std::max(threads, 1) : 1;",
            "#pragma omp parallel num_threads(nt)",
            "  {",
            "    const int tid = omp_get_thread_num();",
            f"    double total[{max(n_sums, 1)}] = {{0}};",
            "#pragma omp for schedule(static)",
            "    for (int64_t ch = 0; ch < n_chunks; ++ch) {",
            "      const int64_t r0 = ch * CHUNK, r1 = std::min(n, r0 + CHUNK);"]
    src += [f"      V acc{s}(T(0));" for s in range(n_sums)]
    src += ["      for (int64_t r = r0; r < r1; r += W) {"]
    src += gather + printer.lines
    src += ["      }"]
    if n_sums:
        src.append("      alignas(64) T lanes[W];")
        for s in range(n_sums):
            src += [f"      acc{s}.store(lanes);",
                    f"      for (int64_t i = 0; i < W; ++i) total[{s}] += lanes[i];"]
    src += ["    }"]
    src += [f"    sums[tid * {n_sums} + {s}] = total[{s}];" for s in range(n_sums)]
    src += ["  }", "}", "",
            'extern "C" void sfx_kernel(const int64_t* a) {',
            f"  if (a[{k + 4}]) run<true>(a); else run<false>(a);",
            "}", ""]
    return "\n".join(src)


def _vector_width(w: int | None) -> bool:
    """Whether rows of this many columns are split into columns by deinterleaving vectors."""
    w = w or 1
    return w <= 16 and w & (w - 1) == 0


def _deinterleave(prefix: str, vecs: list[str], cols: list[int], lines: list[str]) -> dict:
    """Code that splits ``vecs`` (consecutive vectors of rows with ``len(cols)`` interleaved
    columns) into one vector per column; returns column -> expression. Each level halves the
    period: the even positions of the stream hold ``cols[0::2]``, the odd ones ``cols[1::2]``."""
    if len(cols) == 1:
        return {cols[0]: vecs[0]}
    even, odd = [], []
    for i in range(0, len(vecs), 2):
        name = f"{prefix}{len(lines)}"
        lines.append(f"          const auto {name} = at::vec::deinterleave2({vecs[i]}, "
                     f"{vecs[i + 1]});")
        even.append(f"{name}.first")
        odd.append(f"{name}.second")
    out = _deinterleave(prefix, even, cols[0::2], lines)
    out.update(_deinterleave(prefix, odd, cols[1::2], lines))
    return out


def _interleave(prefix: str, vals: list[str], lines: list[str]) -> list[str]:
    """The inverse of :func:`_deinterleave`: one vector per column -> consecutive vectors of
    packed rows, in memory order."""
    if len(vals) == 1:
        return list(vals)
    even = _interleave(prefix, vals[0::2], lines)
    odd = _interleave(prefix, vals[1::2], lines)
    out = []
    for e, o in zip(even, odd):
        name = f"{prefix}{len(lines)}"
        lines.append(f"          const auto {name} = at::vec::interleave2({e}, {o});")
        out += [f"{name}.first", f"{name}.second"]
    return out


def _buffered(reads, tensors) -> list[str]:
    """Code that gathers ``reads`` (pairs of index and Read) one row at a time through a
    buffer, padding the rows past ``cnt`` with zeros."""
    if not reads:
        return []
    out = [f"        {{ alignas(64) T buf[{len(reads)}][W];",
           "        for (int64_t i = 0; i < cnt; ++i) {"]
    for t in tensors:
        if any(rd.tensor == t for _, rd in reads):
            out.append(f"          const int64_t o{t} = row_offset<TWO>(r + i, n_inner, so{t}, "
                       f"si{t});")
    for j, (_, rd) in enumerate(reads):
        col = "" if rd.column is None else f" + {rd.column} * sc{rd.tensor}"
        out.append(f"          buf[{j}][i] = static_cast<T>(p{rd.tensor}[o{rd.tensor}{col}]);")
    out += ["        }",
            "        for (int64_t i = cnt; i < W; ++i) {",
            *[f"          buf[{j}][i] = T(0);" for j in range(len(reads))],
            "        }"]
    out += [f"        v{idx} = V::loadu(buf[{j}]);" for j, (idx, _) in enumerate(reads)]
    out.append("        }")
    return out


def _scattered(outs, program, widths, out_dtypes) -> list[str]:
    """Code that writes outputs ``outs`` (indices into ``program.outputs``) one row at a time,
    the block's first ``cnt`` rows."""
    outs = list(outs)
    if not outs:
        return []
    lines = [f"        o{o}.store(ob[{o}]);" for o in outs]
    lines.append("        for (int64_t i = 0; i < cnt; ++i) {")
    for o in outs:
        gi, col, _ = program.outputs[o]
        lines.append(f"          q{gi}[(r + i) * {widths[gi]} + {col}] = "
                     f"static_cast<{_CTYPE[out_dtypes[gi]]}>(ob[{o}][i]);")
    lines.append("        }")
    return lines


# ----------------------------------------------------------------------------------------------
# compiling and loading

_LOCK = threading.RLock()
_LIBS: dict[str, ctypes.CDLL] = {}
_TOOLCHAIN: list = []


def cache_dir() -> str:
    """Where built kernels are kept: ``$SYMTORCH_FX_CACHE/cpu``, else
    ``$XDG_CACHE_HOME/symtorch_fx/cpu``, else ``~/.cache/symtorch_fx/cpu``."""
    root = os.environ.get("SYMTORCH_FX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "symtorch_fx")
    return os.path.join(root, "cpu")


def _private_dir() -> str:
    """The cache directory, created private (0700); refused unless it is ours and no one else
    can write to it (a library loaded from it runs in this process)."""
    d = cache_dir()
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        st = os.stat(d)
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise KernelBuildError(f"the kernel cache {d} belongs to another user; set "
                                   "SYMTORCH_FX_CACHE to a directory of your own")
        if st.st_mode & 0o022:
            os.chmod(d, 0o700)
    except OSError as e:
        raise KernelBuildError(f"the kernel cache {d} is not usable ({e}); set "
                               "SYMTORCH_FX_CACHE to a writable directory of your own") from e
    return d


def _flags() -> list[str]:
    cap = torch.backends.cpu.get_cpu_capability()
    if cap == "AVX512":
        isa = ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma", "-mf16c"]
    elif cap == "AVX2":
        isa = ["-mavx2", "-mfma", "-mf16c"]
    else:
        cap, isa = "DEFAULT", []
    isa += [f"-DCPU_CAPABILITY={cap}", f"-DCPU_CAPABILITY_{cap}"]
    inc = os.path.join(os.path.dirname(torch.__file__), "include")  # cpp_extension: slow import
    return ["-O3", "-std=c++17", "-fPIC", "-fopenmp", "-DNDEBUG", "-w", *isa, f"-I{inc}"]


def _link_flags() -> list[str]:
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    return ["-shared", f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]


def toolchain() -> tuple[str, list[str]] | None:
    """The C++ compiler and its flags, or None when this machine cannot build the kernel."""
    with _LOCK:
        if not _TOOLCHAIN:
            path = shutil.which(os.environ.get("CXX", "c++"))
            ok = path is not None and sys.platform.startswith("linux")
            _TOOLCHAIN.append((path, _flags()) if ok else None)
        return _TOOLCHAIN[0]


def available() -> bool:
    return toolchain() is not None


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def header_name() -> str:
    tc = toolchain()
    flags = tc[1] if tc else []
    return f"sfx_headers_{_digest(_HEADERS, *flags, torch.__version__)}.h"


def _compile(cmd: list[str], target: str, what: str) -> None:
    """Run ``cmd`` (which writes ``{target}.tmp<pid>``) and move the result into place."""
    tmp = f"{target}.tmp{os.getpid()}_{threading.get_ident()}"
    proc = subprocess.run([*cmd, "-o", tmp], capture_output=True, text=True)
    if proc.returncode != 0:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise KernelBuildError(
            f"compiling the fused CPU kernel failed ({what}):\n{proc.stderr[-3000:]}\n"
            "use kernel='torch' to run without it")
    os.replace(tmp, target)


def _headers(d: str, cxx: str, flags: list[str]) -> None:
    """The shared header in ``d``, precompiled once when the compiler is GCC."""
    h = os.path.join(d, header_name())
    if not os.path.exists(h):
        with open(f"{h}.tmp{os.getpid()}", "w") as f:
            f.write(_HEADERS)
        os.replace(f"{h}.tmp{os.getpid()}", h)
    if os.path.exists(h + ".gch") or os.path.exists(h + ".nogch"):
        return
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    if "Free Software Foundation" in version:  # GCC
        try:
            _compile([cxx, *flags, "-x", "c++-header", h], h + ".gch", "precompiled header")
            return
        except KernelBuildError:
            pass
    open(h + ".nogch", "w").close()  # compile from the header itself from now on


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _load(so: str, digest: str) -> ctypes.CDLL | None:
    """The library at ``so`` if it is the one built from the source of ``digest``: its content
    matches the hash recorded when it was built, and it says it was built from ``digest``;
    None for a missing, partial or foreign file (the caller rebuilds it)."""
    try:
        with open(so + ".sha256") as f:
            recorded = f.read().strip()
        if _file_digest(so) != recorded:
            return None
        lib = ctypes.CDLL(so)
        lib.sfx_source_digest.restype = ctypes.c_char_p
        if lib.sfx_source_digest() != digest.encode():
            return None
    except (OSError, AttributeError, ValueError):
        return None
    lib.sfx_kernel.argtypes = [ctypes.c_void_p]
    lib.sfx_kernel.restype = None
    return lib


def _build(src: str) -> ctypes.CDLL:
    """The compiled library of ``src``, from this process's table, the cache, or the compiler.

    Any failure to write, build or load raises :class:`KernelBuildError` (``kernel="auto"``
    then runs the torch code, with one warning); a cached file that is not what it should be
    (empty, truncated, built from other source) is rebuilt."""
    tc = toolchain()
    if tc is None:
        raise SymTorchFXError(
            "kernel='cpp' needs a C++ compiler on Linux (set CXX, or install g++); "
            "kernel='auto' falls back to the torch code without one")
    cxx, flags = tc
    digest = _digest(src, cxx, *flags, torch.__version__)
    with _LOCK:
        lib = _LIBS.get(digest)
        if lib is not None:
            return lib
        d = _private_dir()
        so = os.path.join(d, f"sfx_{digest}.so")
        lib = _load(so, digest) if os.path.exists(so) else None
        if lib is None:
            cpp = os.path.join(d, f"sfx_{digest}.cpp")
            try:
                _headers(d, cxx, flags)
                with open(cpp, "w") as f:
                    f.write(src)
                    f.write(f'\nextern "C" const char* sfx_source_digest() {{ return "{digest}"; }}\n')
                _compile([cxx, cpp, *flags, f"-I{d}", *_link_flags()], so,
                         f"{cxx}, source {cpp}")
                with open(f"{so}.sha256.tmp{os.getpid()}", "w") as f:
                    f.write(_file_digest(so))
                os.replace(f"{so}.sha256.tmp{os.getpid()}", so + ".sha256")
            except OSError as e:
                raise KernelBuildError(f"cannot build the fused CPU kernel in {d} ({e}); set "
                                       "SYMTORCH_FX_CACHE to a writable directory") from e
            lib = _load(so, digest)
            if lib is None:
                raise KernelBuildError(f"the fused CPU kernel built at {so} does not load")
        _LIBS[digest] = lib
        return lib


def _kernel(entry: system.Entry, needs, compute, in_dtypes, out_dtypes, packed):
    key = ("cpp", needs, compute, in_dtypes, out_dtypes, packed)
    fn = entry.kernels.get(key)
    if fn is None:
        src = source(entry.program(needs), compute, in_dtypes, out_dtypes, packed)
        fn = _build(src).sfx_kernel
        entry.kernels[key] = fn
    return fn


def _check(tensors, c):
    for x in (*tensors, c):
        if x.device.type != "cpu":
            raise SymTorchFXError(
                f"the C++ kernel runs on CPU tensors, got one on {x.device}; use kernel='auto' "
                "(Triton on GPU) or 'triton'")
        if x.dtype not in _CTYPE:
            raise SymTorchFXError(
                f"the C++ kernel takes float16/bfloat16/float32/float64 tensors, got {x.dtype}")


def run(entry, tensors, has_dim, c, needs, out_shapes, out_dtypes, n_sums):
    """Run ``entry``'s forward (``needs is None``) or backward kernel; see ``fused.run_forward``."""
    call, outs, sums = launch(entry, tensors, has_dim, c, needs, out_shapes, out_dtypes, n_sums)
    call()
    return outs, sums


def launch(entry, tensors, has_dim, c, needs, out_shapes, out_dtypes, n_sums):
    """``(call, outs, sums)``: the kernel bound to its arguments and to freshly allocated
    outputs, not yet run. ``call()`` fills ``outs`` and ``sums``; calling it again recomputes
    into the same buffers (the kernel benchmark times the kernel alone this way, without the
    allocation and first touch of its outputs)."""
    _check(tensors, c)
    rows = system.row_space(tensors, has_dim)
    compute = torch.float64 if any(t.dtype == torch.float64 for t in (*tensors, c)) \
        else torch.float32
    outs = [torch.empty(rows.shape + s, dtype=d) for s, d in zip(out_shapes, out_dtypes)]
    threads = torch.get_num_threads()
    sums = torch.zeros((threads, n_sums), dtype=torch.float64)
    if rows.n == 0:
        return (lambda: None), outs, sums
    program = entry.program(needs)
    in_dtypes = tuple(t.dtype for t in rows.tensors)
    widths = program.system.widths
    packed = tuple(st[1] == (w or 1) and (w is None or st[2] == 1)
                   for st, w in zip(rows.strides, widths))
    fn = _kernel(entry, needs, compute, in_dtypes, tuple(out_dtypes), packed)
    cv = c.detach().to(compute).contiguous()
    args = []
    for t in sorted({r.tensor for r in program.reads}):
        args += [rows.tensors[t].data_ptr(), *rows.strides[t]]
    args += [cv.data_ptr()] + [o.data_ptr() for o in outs]
    args += [sums.data_ptr(), rows.n, rows.n_inner, threads, int(rows.two_level)]
    argv = (ctypes.c_int64 * len(args))(*args)

    def call(_keep=(rows.tensors, cv, outs, sums)):  # what argv points into lives with call
        fn(argv)

    return call, outs, sums


def warn_unavailable(reason: str) -> None:
    warnings.warn(f"symtorch_fx: the fused CPU kernel is unavailable ({reason}); "
                  "running the torch code instead", RuntimeWarning, stacklevel=3)
