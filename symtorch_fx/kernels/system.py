"""The row systems a fused kernel computes, their row space, and the printer skeleton.

A fused kernel computes a :class:`System`: per-row values read from a few tensors, constants read
from a vector, per-row outputs written to one or more tensors, and sums over all rows. The forward
pass of a region is one system (its equations); the backward pass is another, built from sympy
derivatives (the gradient of every needed input column, and the gradient of every constant as a
sum over rows). A backend (``triton`` on GPU, ``cpu`` on CPU: generated C++) prints a system's
:class:`Program` as one kernel with its own subclass of :class:`KernelPrinter`; the system itself
is printer-independent, so both backends compute the same derivatives.

Inputs are used where they lie. :func:`row_space` maps the rows of every input (after
broadcasting their leading dimensions) onto at most two strided levels, so contiguous, sliced,
transposed and broadcast inputs all run without a copy; only leading dimensions that cannot be
merged into two levels are copied.

This module is what the backends import. The dispatcher (``fused``: the registry of entries and
the ``torch.library`` ops) imports the backends' ``run`` through its backend table, never the
other way round.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import sympy
import torch

from ..errors import SymTorchFXError
from ..expr.grammar import constant_symbol, fraction

# ----------------------------------------------------------------------------------------------
# systems


@dataclass(frozen=True)
class Read:
    """A per-row value: column ``column`` of tensor ``tensor`` (``None``: no feature dim)."""

    symbol: sympy.Symbol
    tensor: int
    column: int | None


@dataclass(frozen=True)
class Group:
    """One output tensor: ``exprs[k]`` goes to its column ``k`` (or it has no feature dim)."""

    exprs: tuple[sympy.Expr, ...]
    has_dim: bool


@dataclass(frozen=True)
class System:
    reads: tuple[Read, ...]
    n_constants: int
    groups: tuple[Group, ...]
    sums: tuple[sympy.Expr, ...] = ()
    widths: tuple[int | None, ...] = ()  # per tensor read: its number of columns (or None)

    def program(self) -> Program:
        """Common subexpressions of every output and sum, eliminated once for all of them."""
        exprs = [e for g in self.groups for e in g.exprs] + list(self.sums)
        reps, reduced = sympy.cse(exprs, symbols=sympy.numbered_symbols("_t"), order="none")
        used = set().union(*(e.free_symbols for e in reduced),
                           *(e.free_symbols for _, e in reps))
        reads = tuple(r for r in self.reads if r.symbol in used)
        consts = tuple(j for j in range(self.n_constants) if constant_symbol(j) in used)
        outs, k = [], 0
        for gi, g in enumerate(self.groups):
            for col in range(len(g.exprs)):
                outs.append((gi, col, reduced[k]))
                k += 1
        return Program(self, reads, consts, tuple(reps), tuple(outs), tuple(reduced[k:]))


@dataclass(frozen=True)
class Program:
    """A system after CSE: what a printer walks. ``temps`` are in dependency order."""

    system: System
    reads: tuple[Read, ...]
    constants: tuple[int, ...]
    temps: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    outputs: tuple[tuple[int, int, sympy.Expr], ...]
    sums: tuple[sympy.Expr, ...]


def forward_system(templates: Sequence[sympy.Expr], layout, variables: Sequence[sympy.Symbol],
                   n_constants: int) -> System:
    cols = layout.columns()
    if len(variables) != len(cols):
        raise SymTorchFXError(f"{len(variables)} variables for a layout of {len(cols)} features")
    reads = tuple(Read(s, i, c) for s, (i, c) in zip(variables, cols))
    return System(reads, n_constants, (Group(tuple(templates), layout.outputs is not None),),
                  widths=tuple(layout.inputs))


class _pw(sympy.Function):
    """``b**e`` with torch's derivative in the base, ``e * b**(e-1)``.

    sympy differentiates ``b**e`` (symbolic ``e``) to ``e * b**e / b``, which is NaN at ``b = 0``
    where torch (and the limit) gives 0 for ``e > 1``.
    """

    nargs = 2

    def fdiff(self, argindex: int = 1):
        b, e = self.args
        if argindex == 1:
            return e * _pw(b, e - 1)
        return _pw(b, e) * sympy.log(b)


def _differentiable(e: sympy.Expr) -> sympy.Expr:
    return e.replace(lambda n: n.is_Pow and not n.exp.is_Number, lambda n: _pw(n.base, n.exp))


class select(sympy.Function):
    """``select(u, a, h)``: ``a`` where ``u > 0``, 0 where ``u < 0``, ``h * a`` at 0.

    The derivative of ``max``/``min``/``relu`` times the rest of a product. Written as a select,
    not as ``Heaviside(u) * a``, because torch masks gradients: the inactive branch of a
    ``max`` gets 0 even where ``a`` is NaN or infinite (``0 * nan`` would be NaN).
    """

    nargs = 3


def _mask_steps(m: sympy.Expr) -> sympy.Expr:
    steps = [a for a in m.args if isinstance(a, sympy.Heaviside)]
    out = sympy.Mul(*[a for a in m.args if not isinstance(a, sympy.Heaviside)])
    for h in steps:
        at_zero = h.args[1] if len(h.args) > 1 else sympy.Rational(1, 2)
        out = select(h.args[0], out, at_zero)
    return out


def _printable(e: sympy.Expr) -> sympy.Expr:
    """Back from :class:`_pw`, with the zero derivatives of step functions made explicit and
    steps in products made selects."""
    e = e.replace(lambda n: isinstance(n, _pw), lambda n: sympy.Pow(*n.args))
    e = e.replace(lambda n: isinstance(n, (sympy.Derivative, sympy.DiracDelta)),
                  lambda n: sympy.Integer(0))
    return e.replace(lambda n: n.is_Mul and any(isinstance(a, sympy.Heaviside) for a in n.args),
                     _mask_steps)


def backward_system(forward: System, n_inputs: int, needs: Sequence[bool]) -> System:
    """The gradient system: ``needs[i]`` for input tensor ``i``, ``needs[-1]`` for the constants.

    Reads the forward's columns and the output gradient (tensor ``n_inputs``); writes one group
    per needed input tensor, in the input's own layout; sums the constants' gradients over rows.
    """
    (out,) = forward.groups
    g = [sympy.Dummy(f"g{j}", real=True) for j in range(len(out.exprs))]
    reads = forward.reads + tuple(
        Read(s, n_inputs, j if out.has_dim else None) for j, s in enumerate(g))
    outs = [_differentiable(e) for e in out.exprs]

    def grad(sym):
        return _printable(sympy.Add(*[gj * sympy.diff(o, sym) for gj, o in zip(g, outs)]))

    groups = []
    for i in range(n_inputs):
        if not needs[i]:
            continue
        mine = [r for r in forward.reads if r.tensor == i]
        groups.append(Group(tuple(grad(r.symbol) for r in mine), mine[0].column is not None))
    sums = tuple(grad(constant_symbol(j)) for j in range(forward.n_constants)) if needs[-1] else ()
    width = len(out.exprs) if out.has_dim else None
    return System(reads, forward.n_constants, tuple(groups), sums, forward.widths + (width,))


# ----------------------------------------------------------------------------------------------
# the row space


@dataclass(frozen=True)
class Rows:
    """The rows of a call: ``shape`` (broadcast leading shape), ``n`` rows, split as
    ``n_outer x n_inner``; per tensor ``(stride_outer, stride_inner, stride_col)``."""

    shape: tuple[int, ...]
    n: int
    n_inner: int
    strides: tuple[tuple[int, int, int], ...]
    tensors: tuple[torch.Tensor, ...]

    @property
    def two_level(self) -> bool:
        return self.n_inner != self.n


def row_space(tensors: Sequence[torch.Tensor], has_dim: Sequence[bool]) -> Rows:
    leads = [tuple(t.shape[:-1]) if d else tuple(t.shape) for t, d in zip(tensors, has_dim)]
    shape = leads[0]
    if any(lead != shape for lead in leads):
        try:
            shape = tuple(torch.broadcast_shapes(*leads))
        except RuntimeError as exc:
            raise SymTorchFXError(
                f"the inputs' leading shapes {leads} do not broadcast against each other"
            ) from exc
    tensors = list(tensors)
    for _ in range(2):
        per = []
        for t, d, lead in zip(tensors, has_dim, leads):
            full = t if lead == shape else t.expand(shape + ((t.shape[-1],) if d else ()))
            st = full.stride()
            per.append((st[: len(shape)], st[-1] if d else 0))
        dims = _merge(shape, [s for s, _ in per])
        if len(dims) <= 2:
            break
        # more than two levels that cannot merge: copy the tensors that break them (rare)
        tensors = [t.expand(shape + ((t.shape[-1],) if d else ())).contiguous()
                   for t, d in zip(tensors, has_dim)]
    n = 1
    for s in shape:
        n *= s
    if len(dims) == 2:
        (no, so), (ni, si) = dims
        strides = tuple((a, b, col) for a, b, col in zip(so, si, (c for _, c in per)))
        return Rows(shape, n, ni, strides, tuple(tensors))
    si = dims[0][1] if dims else [0] * len(tensors)
    return Rows(shape, n, n, tuple((0, b, c) for b, (_, c) in zip(si, per)), tuple(tensors))


def _merge(shape, strides):
    """Merge adjacent leading dims where every tensor steps through them as one dim."""
    dims = [(n, [s[d] for s in strides]) for d, n in enumerate(shape) if n != 1]
    out: list[tuple[int, list[int]]] = []
    for n, st in dims:
        if out:
            n0, st0 = out[-1]
            if all(a == b * n for a, b in zip(st0, st)):
                out[-1] = (n0 * n, st)
                continue
        out.append((n, st))
    return out


# ----------------------------------------------------------------------------------------------
# a region's systems, built once per expression structure


@dataclass
class Entry:
    """A region's equations, as the fused ops see them (built once per expression structure)."""

    key: str
    layout: object
    forward: System
    _backward: dict = field(default_factory=dict)
    _programs: dict = field(default_factory=dict)
    kernels: dict = field(default_factory=dict)  # backend-private cache
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def n_inputs(self) -> int:
        return len(self.layout.inputs)

    def system(self, needs: tuple[bool, ...] | None) -> System:
        if needs is None:
            return self.forward
        with self.lock:
            s = self._backward.get(needs)
        if s is None:
            s = backward_system(self.forward, self.n_inputs, needs)
            with self.lock:
                self._backward[needs] = s
        return s

    def program(self, needs: tuple[bool, ...] | None) -> Program:
        with self.lock:
            p = self._programs.get(needs)
        if p is None:
            p = self.system(needs).program()
            with self.lock:
                self._programs[needs] = p
        return p


_REGISTRY: dict[str, Entry] = {}

# ----------------------------------------------------------------------------------------------
# the printer skeleton both backends share; each backend's op table and syntax are its own


class KernelPrinter:
    """Prints the expressions of a :class:`Program` as vector code, one statement per temporary.

    Subclasses give the language: ``UNARY`` (sympy function class -> format string over
    ``{x}``), literals, negation, min/max, the step function of derivatives, square roots and
    powers. Integer powers up to ``POW_INT_MAX`` become multiplications (exact, and the only
    powers that need no logarithm); ``x^(1/2)`` and ``x^(-1/2)`` are square roots, as in the
    torch code; every other power follows ``pow``'s rules (``(-inf)^1.5 = inf``).
    """

    UNARY: dict[type, str] = {}
    POW_INT_MAX = 16
    SINCOS = False  # the language computes sin and cos of one argument in one call

    def __init__(self, names: dict[sympy.Symbol, str]):
        self.names = dict(names)
        self.lines: list[str] = []
        self._k = 0
        self._pairs: set = set()  # arguments whose sin and cos are computed by one call
        self._sincos: dict = {}

    # --- the language
    def lit(self, v: float) -> str:
        raise NotImplementedError

    def assign(self, name: str, code: str) -> str:
        raise NotImplementedError

    def neg(self, c: str) -> str:
        raise NotImplementedError

    def minmax(self, is_max: bool, a: str, b: str) -> str:
        raise NotImplementedError

    def step(self, a: str, at_zero: float) -> str:
        raise NotImplementedError

    def sqrt(self, c: str) -> str:
        raise NotImplementedError

    def real_pow(self, b: str, e: str) -> str:
        raise NotImplementedError

    def select(self, u: str, a: str, at_zero: float) -> str:
        raise NotImplementedError

    def sincos(self, name: str, x: str) -> str:
        """A statement binding ``name`` to the pair (sin x, cos x), referred to as
        ``name.first`` and ``name.second`` (printers with ``SINCOS``)."""
        raise NotImplementedError

    # --- shared structure
    def pair_sincos(self, exprs) -> None:
        """Compute sin and cos of an argument that needs both (a law's derivative does) in
        one call, where the language has one."""
        if not self.SINCOS:
            return
        sins, coss = set(), set()
        for e in exprs:
            sins |= {a.args[0] for a in e.atoms(sympy.sin)}
            coss |= {a.args[0] for a in e.atoms(sympy.cos)}
        self._pairs = sins & coss

    def temp(self, code: str) -> str:
        name = f"_q{self._k}"
        self._k += 1
        self.lines.append(self.assign(name, code))
        return name

    def bind(self, sym: sympy.Symbol, name: str, e: sympy.Expr) -> None:
        """Emit ``name = e`` and refer to ``sym`` by ``name`` from now on."""
        self.lines.append(self.assign(name, self(e)))
        self.names[sym] = name

    def __call__(self, e) -> str:
        if e.is_Symbol:
            if e not in self.names:
                raise SymTorchFXError(f"equation uses the unknown symbol {e}")
            return self.names[e]
        if not e.free_symbols:  # a number: 2, 1/3, pi, sqrt(2), nan, ...
            return self.lit(float(e.evalf(17)) if e is not sympy.zoo else float("nan"))
        if e.is_Add:
            terms = e.as_ordered_terms()
            code = self(terms[0])
            for t in terms[1:]:
                if t.could_extract_minus_sign():
                    code = f"({code} - {self(-t)})"
                else:
                    code = f"({code} + {self(t)})"
            return code
        if e.is_Mul:
            if e.args[0] == -1:
                return self.neg(self(-e))
            num, den = fraction(e)
            code = " * ".join(self(f) for f in num) if num else self.lit(1.0)
            if den:
                code = f"({code}) / ({' * '.join(self(f) for f in den)})"
            return f"({code})"
        if e.is_Pow:
            return self._pow(e.base, e.exp)
        f = e.func
        if f in (sympy.sin, sympy.cos) and e.args[0] in self._pairs:
            name = self._sincos.get(e.args[0])
            if name is None:
                name = f"_sc{len(self._sincos)}"
                self.lines.append(self.sincos(name, self(e.args[0])))
                self._sincos[e.args[0]] = name
            return f"{name}.{'first' if f is sympy.sin else 'second'}"
        if f in self.UNARY:
            return self.UNARY[f].format(x=self(e.args[0]))
        if f in (sympy.Max, sympy.Min):
            args = [self(a) for a in e.args]
            code = args[0]
            for a in args[1:]:
                code = self.minmax(f is sympy.Max, code, a)
            return code
        if f is sympy.Heaviside:
            h0 = float(e.args[1]) if len(e.args) > 1 else 0.5
            return self.step(self(e.args[0]), h0)
        if f is select:
            u, a = self(e.args[0]), self(e.args[1])
            return self.select(u if u.isidentifier() else self.temp(u),
                               a if a.isidentifier() else self.temp(a), float(e.args[2]))
        raise SymTorchFXError(f"no {type(self).__name__} lowering for {f.__name__} in {e}")

    def _pow(self, base, x) -> str:
        if x.is_Integer and abs(int(x)) <= self.POW_INT_MAX:
            return self._powi(self(base), int(x))
        if x == sympy.Rational(1, 2) or x == sympy.Rational(-1, 2):  # as the torch code
            return self._powi(self.sqrt(self(base)), int(x.p))
        return self.real_pow(self(base), self(x))

    def _powi(self, b: str, n: int) -> str:
        if n == 0:
            return self.lit(1.0)
        if n < 0:
            return f"({self.lit(1.0)} / {self._powi(b, -n)})"
        if n == 1:
            return b
        b = b if b.isidentifier() else self.temp(b)
        if n == 2:
            return f"({b} * {b})"
        result = None
        while n:
            if n & 1:
                result = b if result is None else self.temp(f"{result} * {b}")
            n >>= 1
            if n:
                b = self.temp(f"{b} * {b}")
        return result
