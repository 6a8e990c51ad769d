"""Stage ``lower``: the sympy equations of one region -> one generated torch function.

The function computes every output of the region in one pass: each input column is sliced once,
common subexpressions are shared across outputs (``sympy.cse``) and constants are read from a
parameter vector ``c``, so tuning them never regenerates code and gradients reach them. The code
is generated from sympy trees through the op table below; only whitelisted constructs are emitted,
and local names are positional (``v3``, ``t0``), never taken from user or file text.

``lower()`` is the seam for the other kernels: ``kernel="torch"`` is this printer; the fused
kernels (``kernels.triton`` on GPU, ``kernels.cpu`` on CPU, sharing ``kernels.fused``) and the torch code under
``torch.compile`` plug in beside it, and :class:`Lowered` picks one per call.
"""

from __future__ import annotations

import linecache
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import sympy
import torch

from ..errors import KernelBuildError, SymTorchFXError
from ..expr.grammar import constant_symbol, fraction, to_text
from ..expr.ops import sigmoid
from . import cpu, fused, triton

# the dispatcher knows its backends by name only; they are handed to it here
fused.add_backend("cpp", cpu)
fused.add_backend("triton", triton)


@dataclass(frozen=True)
class Layout:
    """Where the features of a region come from.

    ``inputs[i]`` is the number of feature columns of data input ``i`` (its last dimension), or
    ``None`` when that input has no feature dimension (one value per row). Features are numbered
    input by input, column by column; ``outputs`` is the number of outputs, or ``None`` for a
    region whose output has no feature dimension.
    """

    inputs: tuple[int | None, ...]
    outputs: int | None

    @property
    def n_features(self) -> int:
        return sum(1 if n is None else n for n in self.inputs)

    @property
    def n_outputs(self) -> int:
        return 1 if self.outputs is None else self.outputs

    def columns(self) -> list[tuple[int, int | None]]:
        cols: list[tuple[int, int | None]] = []
        for i, n in enumerate(self.inputs):
            cols.extend([(i, None)] if n is None else [(i, k) for k in range(n)])
        return cols


# ----------------------------------------------------------------------------------------------
# the torch op table: sympy function class -> torch callable name (one argument each)

TORCH_UNARY: dict[type, str] = {
    sympy.sin: "torch.sin",
    sympy.cos: "torch.cos",
    sympy.tan: "torch.tan",
    sympy.asin: "torch.asin",
    sympy.acos: "torch.acos",
    sympy.atan: "torch.atan",
    sympy.sinh: "torch.sinh",
    sympy.cosh: "torch.cosh",
    sympy.tanh: "torch.tanh",
    sympy.exp: "torch.exp",
    sympy.log: "torch.log",
    sympy.Abs: "torch.abs",
    sympy.sign: "torch.sign",
    sympy.erf: "torch.erf",
    sigmoid: "torch.sigmoid",
    sympy.floor: "torch.floor",
    sympy.ceiling: "torch.ceil",
}



class _TorchPrinter:
    """Prints one sympy expression as a torch expression over named locals.

    ``_p`` returns ``(code, is_tensor)``; literals stay Python floats so torch broadcasts them
    without allocating.
    """

    def __init__(self, names: dict[sympy.Symbol, str]):
        self.names = names
        self.scalars: set[sympy.Symbol] = set()  # common subexpressions that are plain numbers

    def __call__(self, e) -> str:
        return self._p(e)[0]

    def _p(self, e) -> tuple[str, bool]:
        if e.is_Symbol:
            if e not in self.names:
                raise SymTorchFXError(f"equation uses the unknown symbol {e}")
            return self.names[e], e not in self.scalars
        if not e.free_symbols:  # a pure number, including pi, E, sqrt(2), ...
            v = float(e.evalf(17))
            if math.isnan(v):
                return "math.nan", False
            if math.isinf(v):
                return ("math.inf" if v > 0 else "-math.inf"), False
            return repr(v), False
        if e.is_Add:
            terms = e.as_ordered_terms()
            code, tensor = self._p(terms[0])
            for t in terms[1:]:
                if t.could_extract_minus_sign():
                    c, tt = self._p(-t)
                    code += f" - {self._paren(-t, c)}"
                else:
                    c, tt = self._p(t)
                    code += f" + {c}"
                tensor = tensor or tt
            return f"({code})", tensor
        if e.is_Mul:
            if e.args[0] == -1:  # -x: a negation, not a multiplication
                c, t = self._p(-e)
                return f"(-{c})", t
            num, den = fraction(e)
            parts = [self._p(f) for f in num] or [("1.0", False)]
            code = " * ".join(c for c, _ in parts)
            tensor = any(t for _, t in parts)
            if den:
                d = [self._p(f) for f in den]
                dcode = " * ".join(c for c, _ in d)
                code = f"({code}) / ({dcode})"
                tensor = tensor or any(t for _, t in d)
            return f"({code})", tensor
        if e.is_Pow:
            return self._pow(e)
        f = e.func
        if f in TORCH_UNARY:
            a, t = self._p(e.args[0])
            if not t:
                a = f"torch.as_tensor({a}, dtype=_dt)"
            return f"{TORCH_UNARY[f]}({a})", True
        if f in (sympy.Max, sympy.Min):
            return self._minmax(e)
        raise SymTorchFXError(f"no torch lowering for {f.__name__} in {e}")

    @staticmethod
    def _paren(e, code: str) -> str:
        return f"({code})" if e.is_Add else code

    def _pow(self, e) -> tuple[str, bool]:
        b, x = e.base, e.exp
        bc, bt = self._p(b)
        if x == sympy.Rational(1, 2):
            return f"torch.sqrt({bc})", True
        if x == sympy.Rational(-1, 2):
            return f"torch.rsqrt({bc})", True
        if x == 2:
            return f"torch.square({bc})", True
        if x == -1:
            return f"torch.reciprocal({bc})", True
        if x.is_Integer and 3 <= int(x) <= 4:
            return "(" + " * ".join([bc] * int(x)) + ")", True
        xc, xt = self._p(x)
        if not bt and not xt:
            return f"({bc} ** {xc})", False
        if not bt:
            return f"torch.pow({bc}, {xc})", True
        return f"torch.pow({bc}, {xc})", True

    def _minmax(self, e) -> tuple[str, bool]:
        is_max = e.func is sympy.Max
        args = list(e.args)
        lits = [a for a in args if not a.free_symbols]
        tens = [a for a in args if a.free_symbols]
        code, _ = self._p(tens[0])
        for a in tens[1:]:
            code = f"torch.{'maximum' if is_max else 'minimum'}({code}, {self._p(a)[0]})"
        if lits:
            v = float((max if is_max else min)(float(a) for a in lits))
            if is_max and v == 0.0 and len(tens) == 1:
                return f"torch.relu({code})", True
            code = f"torch.clamp({code}, {'min' if is_max else 'max'}={v!r})"
        return code, True


# ----------------------------------------------------------------------------------------------

_CACHE: dict[tuple, object] = {}
_CACHE_LOCK = threading.Lock()
_COUNTER = [0]


def torch_source(
    templates: Sequence[sympy.Expr],
    layout: Layout,
    variables: Sequence[sympy.Symbol],
    n_constants: int,
    name: str = "symbolic",
) -> str:
    """Source of ``name(i0, ..., c)`` returning every output of the region in one tensor.

    The result has the inputs' leading shape (plus a last dimension of ``layout.outputs``) and
    the promoted dtype of ``i0`` and ``c``; the caller casts it to the output dtype it needs.

    ``variables[k]`` is the sympy symbol of feature ``k`` in ``layout`` order; constants are the
    symbols ``constant_symbol(0 .. n_constants-1)`` and are read from the 1-d tensor ``c``.
    """
    cols = layout.columns()
    if len(variables) != len(cols):
        raise SymTorchFXError(
            f"{len(variables)} variables for a layout of {len(cols)} features"
        )
    names: dict[sympy.Symbol, str] = {}
    args = [f"i{i}" for i in range(len(layout.inputs))]
    lines = [f"def {name}({', '.join(args + ['c'])}):"]
    lines.append("    _dt = torch.promote_types(i0.dtype, c.dtype)")
    used = set().union(*(t.free_symbols for t in templates)) if templates else set()
    for k, (sym, (i, col)) in enumerate(zip(variables, cols)):
        if sym not in used:
            continue
        names[sym] = f"v{k}"
        src = f"i{i}" if col is None else f"i{i}[..., {col}]"
        lines.append(f"    v{k} = {src}.to(_dt)")
    for j in range(n_constants):
        cs = constant_symbol(j)
        if cs in used:
            names[cs] = f"k{j}"
            lines.append(f"    k{j} = c[{j}].to(_dt)")
    reps, reduced = sympy.cse(list(templates), symbols=sympy.numbered_symbols("_t"), order="none")
    printer = _TorchPrinter(names)
    for t, (sym, sub) in enumerate(reps):
        code, tensor = printer._p(sub)
        lines.append(f"    t{t} = {code}")
        names[sym] = f"t{t}"
        if not tensor:
            printer.scalars.add(sym)
    ref = "i0" if layout.inputs[0] is None else "i0[..., 0]"
    outs = []
    inputs = set(variables)
    for k, expr in enumerate(reduced):
        code, tensor = printer._p(expr)
        if not tensor:
            code = f"torch.full_like({ref}, {code}, dtype=_dt)"
        elif not templates[k].free_symbols & inputs:
            # constants only: a fresh tensor, not a broadcast view of ``c`` (a view of a
            # parameter requires grad even under no_grad, and aliases the parameter)
            code = f"torch.zeros_like({ref}, dtype=_dt) + {code}"
        lines.append(f"    o{k} = {code}")
        outs.append(f"o{k}")
    if layout.outputs is None:
        lines.append(f"    return torch.broadcast_to({outs[0]}, {ref}.shape)")
    else:
        lines.append(f"    _o = torch.broadcast_tensors({', '.join(outs)}, {ref})")
        lines.append("    return torch.stack(_o[:-1], -1)")
    return "\n".join(lines) + "\n"


def torch_function(
    templates: Sequence[sympy.Expr],
    layout: Layout,
    variables: Sequence[sympy.Symbol],
    n_constants: int,
):
    """The generated torch function for these templates (cached by expression structure)."""
    key = (tuple(to_text(t) for t in templates), layout, tuple(v.name for v in variables),
           n_constants)
    with _CACHE_LOCK:
        fn = _CACHE.get(key)
        if fn is not None:
            return fn
        _COUNTER[0] += 1
        name = f"symbolic_{_COUNTER[0]}"
    src = torch_source(templates, layout, variables, n_constants, name)
    filename = f"<symtorch_fx generated {name}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    namespace: dict[str, object] = {"torch": torch, "math": math}
    exec(compile(src, filename, "exec"), namespace)  # our own generated code, see module doc
    fn = namespace[name]
    fn.__symtorch_source__ = src
    with _CACHE_LOCK:
        _CACHE[key] = fn
    return fn


def evaluate(
    exprs: Sequence[sympy.Expr], X: torch.Tensor, variables: Sequence[sympy.Symbol]
) -> torch.Tensor:
    """Evaluate numeric expressions (constants inlined) on rows ``X`` (N, F) -> (N, len(exprs)).

    Walks each tree with the torch op table, generating no code: scoring hundreds of one-off
    candidates (the front builder) would spend 10x longer generating and compiling a function
    for each than computing it. Same ops, in the same dtype, as the generated code.
    """
    walk = TorchWalk({v: X[:, k] for k, v in enumerate(variables)}, X)
    return torch.stack([walk.tensor(e) for e in exprs], -1)


class one_torch_thread:
    """Run torch on one thread inside the block.

    Scoring and refitting work on a few thousand rows, where intra-op threads only add
    synchronization (on a busy machine, 100x for float64 sin). And a worker process forked
    after the parent used its thread pool hangs in its first parallel torch op unless it runs
    on one thread (measured: an elementwise op on 8192 rows).
    """

    def __enter__(self):
        self.n = torch.get_num_threads()
        if self.n != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.n != 1:
            torch.set_num_threads(self.n)


class TorchWalk:
    """The values of sympy trees over named columns, computed op by op (``TORCH_UNARY``).

    Values are tensors, or Python floats for parts without variables (as the printer keeps
    literals); repeated subtrees are computed once.
    """

    def __init__(self, columns: dict[sympy.Symbol, torch.Tensor], like: torch.Tensor):
        self.columns = columns
        self.like = like
        self.memo: dict[sympy.Expr, torch.Tensor | float] = {}

    def tensor(self, e: sympy.Expr) -> torch.Tensor:
        v = self(e)
        if isinstance(v, torch.Tensor):
            return v.to(self.like.dtype)
        return torch.full(self.like.shape[:1], v, dtype=self.like.dtype)

    def _t(self, v) -> torch.Tensor:
        return v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=self.like.dtype)

    def __call__(self, e: sympy.Expr):
        got = self.memo.get(e)
        if got is None:
            got = self.memo[e] = self._value(e)
        return got

    def _value(self, e: sympy.Expr):
        if e.is_Symbol:
            if e not in self.columns:
                raise SymTorchFXError(f"equation uses the unknown symbol {e}")
            return self.columns[e]
        if not e.free_symbols:  # a pure number, including pi, E, sqrt(2), ...
            return float(e.evalf(17))
        if e.is_Add:
            terms = e.as_ordered_terms()
            acc = self(terms[0])
            for t in terms[1:]:
                acc = acc - self(-t) if t.could_extract_minus_sign() else acc + self(t)
            return acc
        if e.is_Mul:
            if e.args[0] == -1:
                return -self._t(self(-e))
            num, den = fraction(e)
            acc = 1.0
            for f in num:
                acc = acc * self(f)
            if den:
                d = 1.0
                for f in den:
                    d = d * self(f)
                acc = acc / d
            return acc
        if e.is_Pow:
            b, x = self._t(self(e.base)), e.exp
            if x == sympy.Rational(1, 2):
                return torch.sqrt(b)
            if x == sympy.Rational(-1, 2):
                return torch.rsqrt(b)
            if x == 2:
                return torch.square(b)
            if x == -1:
                return torch.reciprocal(b)
            if x.is_Integer and 3 <= int(x) <= 4:
                acc = b
                for _ in range(int(x) - 1):
                    acc = acc * b
                return acc
            return torch.pow(b, self(x))
        f = e.func
        if f in TORCH_UNARY:
            return _TORCH_CALLABLES[f](self._t(self(e.args[0])))
        if f in (sympy.Max, sympy.Min):
            pick = torch.maximum if f is sympy.Max else torch.minimum
            tens = [self._t(self(a)) for a in e.args if a.free_symbols]
            acc = tens[0]
            for a in tens[1:]:
                acc = pick(acc, a)
            lits = [float(a) for a in e.args if not a.free_symbols]
            if lits:
                acc = pick(acc, self._t((max if f is sympy.Max else min)(lits)))
            return acc
        raise SymTorchFXError(f"no torch lowering for {f.__name__} in {e}")


_TORCH_CALLABLES = {f: getattr(torch, name.removeprefix("torch.")) for f, name in TORCH_UNARY.items()}


KERNELS = ("auto", "torch", "triton", "cpp", "inductor")

# ``auto`` on CPU runs the generated C++ kernel from this many rows on (below it, the torch
# code's few microseconds per op cost less than the custom op's call; measured, see
# benchmarks/RESULTS.md)
AUTO_CPP_MIN_ROWS = 4096


class Lowered:
    """A region's equations as a callable ``f(*inputs, c, out_dtype=None)``; the kernel is chosen
    per call, because ``"auto"`` depends on the device the inputs are on.

    ``kernel``:

    * ``"auto"``: the fused Triton kernel on CUDA tensors (float32/16/bfloat16), the fused C++
      kernel on CPU tensors (from ``AUTO_CPP_MIN_ROWS`` rows, when a C++ compiler is present),
      the torch code otherwise.
    * ``"torch"``: the generated torch code (any device, any dtype, differentiable to any order;
      inlined and fused with its neighbours when the whole model is ``torch.compile``-d).
    * ``"triton"``: the fused Triton kernel (``kernels.triton``); ``"cpp"``: the fused C++ kernel
      (``kernels.cpu``). Both have a generated backward kernel (first derivatives) and run through
      ``torch.library`` custom ops, so they work in eager mode and inside ``torch.compile``.
    * ``"inductor"``: the torch code under ``torch.compile``.

    The result has dtype ``out_dtype`` (default: the torch code's promotion of ``i0`` and ``c``),
    written directly by the fused kernels.
    """

    def __init__(self, templates, layout: Layout, variables, n_constants: int, kernel: str):
        self.templates = list(templates)
        self.layout = layout
        self.variables = list(variables)
        self.n_constants = n_constants
        self.kernel = kernel
        self.torch_fn = torch_function(self.templates, layout, self.variables, n_constants)
        self.__symtorch_source__ = self.torch_fn.__symtorch_source__
        # registered now, not on first call: torch.compile traces the call, not sympy
        self.entry = fused.register(self.templates, self.layout, self.variables, n_constants)
        self._compiled = None
        self._cpp_failed = False

    def choose(self, inputs, c) -> str:
        """The kernel this call runs on."""
        if self.kernel != "auto":
            return self.kernel
        x = inputs[0]
        if x.device.type == "cuda":
            low = all(t.dtype in (torch.float32, torch.float16, torch.bfloat16)
                      for t in (*inputs, c))
            return "triton" if low and triton.available() else "torch"
        if x.device.type == "cpu" and not self._cpp_failed:
            rows = x.numel() // (x.shape[-1] if self.layout.inputs[0] is not None else 1)
            floats = all(t.dtype in cpu.DTYPES for t in (*inputs, c))
            if rows >= AUTO_CPP_MIN_ROWS and floats and cpu.available():
                return "cpp"
        return "torch"

    def __call__(self, *args, out_dtype: torch.dtype | None = None):
        *inputs, c = args
        kind = self.choose(inputs, c)
        if kind in ("triton", "cpp"):
            dtype = out_dtype or torch.promote_types(inputs[0].dtype, c.dtype)
            try:
                return self._fused(inputs, c, kind, dtype)
            except KernelBuildError as exc:
                if self.kernel != "auto":
                    raise
                self._cpp_failed = True  # "auto" runs the torch code from now on
                cpu.warn_unavailable(str(exc).splitlines()[0])
        if kind == "inductor":
            if self._compiled is None:
                self._compiled = torch.compile(self.torch_fn, fullgraph=True)
            y = self._compiled(*inputs, c)
        else:
            y = self.torch_fn(*inputs, c)
        return y if out_dtype is None else y.to(out_dtype)

    def _fused(self, inputs, c, kind: str, dtype: torch.dtype):
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, c))
        if grad or torch.compiler.is_compiling() or inputs[0].device.type not in ("cpu", "cuda"):
            return fused.fused(list(inputs), c, self.entry.key, kind, dtype)
        # nothing to record or trace: skip the custom op's dispatch (about 15 us a call)
        return fused.run_forward(fused.backend_named(kind), self.entry, list(inputs), c, dtype)


def lower(templates, layout: Layout, variables, n_constants: int, kernel: str = "auto"):
    """Lower a region's equations to a callable ``f(*inputs, c, out_dtype=None)`` running on
    ``kernel`` (see :class:`Lowered`)."""
    if kernel not in KERNELS:
        raise SymTorchFXError(f"kernel={kernel!r} is not one of {', '.join(KERNELS)}")
    return Lowered(templates, layout, variables, n_constants, kernel)
