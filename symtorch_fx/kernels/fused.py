"""The dispatcher of the fused kernels: a registry of regions' systems and two custom ops.

Both backends run behind two ``torch.library`` custom ops (``symtorch_fx::fused`` and
``symtorch_fx::fused_backward``) with fake implementations and a registered autograd formula,
so a fused region works in eager mode, under ``torch.autograd`` and inside ``torch.compile``.
A region's system is looked up by a key made from its expression structure, so the ops carry
only a string; the backend is a name too, looked up in the table that ``lower`` fills
(:func:`add_backend`). Backends never import this module.
"""

from __future__ import annotations

import hashlib
import threading

import torch

from ..errors import SymTorchFXError
from ..expr.grammar import to_text
from .system import Entry, forward_system

_REGISTRY: dict[str, Entry] = {}
_REGISTRY_LOCK = threading.Lock()


def register(templates, layout, variables, n_constants) -> Entry:
    text = "|".join([*(to_text(t) for t in templates), repr(layout),
                     ",".join(v.name for v in variables), str(n_constants)])
    key = hashlib.sha256(text.encode()).hexdigest()[:24]
    with _REGISTRY_LOCK:
        e = _REGISTRY.get(key)
        if e is None:
            e = _REGISTRY[key] = Entry(key, layout,
                                       forward_system(templates, layout, variables, n_constants))
    return e


def _entry(key: str) -> Entry:
    try:
        return _REGISTRY[key]
    except KeyError:
        raise SymTorchFXError(
            f"no fused kernel is registered under {key!r} in this process; build the "
            "SymbolicModule (or load the model) before calling the compiled graph") from None


_BACKENDS: dict[str, object] = {}


def add_backend(name: str, module) -> None:
    """Make ``module`` (with ``run(entry, tensors, has_dim, c, needs, out_shapes, out_dtypes,
    n_sums)``) the fused backend called ``name``."""
    _BACKENDS[name] = module


def backend_named(name: str):
    try:
        return _BACKENDS[name]
    except KeyError:
        raise SymTorchFXError(f"unknown fused backend {name!r}; known: {', '.join(_BACKENDS)}") from None


def _lead(entry: Entry, inputs) -> tuple[int, ...]:
    leads = [tuple(t.shape[:-1]) if n is not None else tuple(t.shape)
             for t, n in zip(inputs, entry.layout.inputs)]
    return tuple(torch.broadcast_shapes(*leads))


def run_forward(backend, entry: Entry, inputs, c, out_dtype):
    """The region's outputs through ``backend.run`` (one output group, no sums)."""
    layout = entry.layout
    shape = () if layout.outputs is None else (layout.outputs,)
    has_dim = [n is not None for n in layout.inputs]
    (out,), _ = backend.run(entry, inputs, has_dim, c, None, [shape], [out_dtype], 0)
    return out


def run_backward(backend, entry: Entry, inputs, c, grad, needs):
    """Gradients through ``backend.run``: one group per needed input, then the constants'."""
    layout = entry.layout
    has_dim = [n is not None for n in layout.inputs] + [layout.outputs is not None]
    shapes, dtypes = [], []
    for x, n, need in zip(inputs, layout.inputs, needs):
        if need:
            shapes.append(() if n is None else (n,))
            dtypes.append(x.dtype)
    n_sums = entry.forward.n_constants if needs[-1] else 0
    outs, sums = backend.run(entry, [*inputs, grad], has_dim, c, needs, shapes, dtypes, n_sums)
    if needs[-1]:
        outs.append(sums[:, :n_sums].sum(0).to(c.dtype))
    return outs


@torch.library.custom_op("symtorch_fx::fused", mutates_args=())
def fused(inputs: list[torch.Tensor], c: torch.Tensor, key: str, backend: str,
          out_dtype: torch.dtype) -> torch.Tensor:
    """Every output of a region in one kernel (``backend``: ``"triton"`` or ``"cpp"``)."""
    return run_forward(backend_named(backend), _entry(key), list(inputs), c, out_dtype)


@fused.register_fake
def _fused_fake(inputs, c, key, backend, out_dtype):
    entry = _entry(key)
    extra = () if entry.layout.outputs is None else (entry.layout.outputs,)
    return inputs[0].new_empty(_lead(entry, inputs) + extra, dtype=out_dtype)


@torch.library.custom_op("symtorch_fx::fused_backward", mutates_args=())
def fused_backward(inputs: list[torch.Tensor], c: torch.Tensor, grad: torch.Tensor, key: str,
                   backend: str, needs: list[bool]) -> list[torch.Tensor]:
    """Gradients of a region's outputs: one tensor per needed input (at the broadcast leading
    shape, in the input's dtype), then the constants' gradient if ``needs[-1]``."""
    return run_backward(backend_named(backend), _entry(key), list(inputs), c, grad, tuple(needs))


@fused_backward.register_fake
def _fused_backward_fake(inputs, c, grad, key, backend, needs):
    entry = _entry(key)
    lead = _lead(entry, inputs)
    out = [x.new_empty(lead + (() if n is None else (n,)))
           for x, n, need in zip(inputs, entry.layout.inputs, needs) if need]
    if needs[-1]:
        out.append(c.new_empty(c.shape))
    return out


def _setup(ctx, inputs, output):
    inputs_, c, key, backend, _ = inputs
    ctx.save_for_backward(*inputs_, c)
    ctx.key, ctx.backend = key, backend


def _backward(ctx, grad):
    *inputs, c = ctx.saved_tensors
    need_in, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    needs = [bool(n) for n in need_in] + [bool(need_c)]
    if not any(needs):
        return [None] * len(inputs), None, None, None, None
    outs = list(fused_backward(inputs, c, grad, ctx.key, ctx.backend, needs))
    grads_in = []
    for x, need in zip(inputs, need_in):
        if need:
            g = outs.pop(0)
            grads_in.append(g if g.shape == x.shape else g.sum_to_size(x.shape))
        else:
            grads_in.append(None)
    grad_c = outs.pop(0) if need_c else None
    return grads_in, grad_c, None, None, None


torch.library.register_autograd("symtorch_fx::fused", _backward, setup_context=_setup)


def _no_double_backward(ctx, *grads):
    raise SymTorchFXError(
        "second derivatives through a fused symbolic kernel are not supported; build the "
        "model with kernel='torch' (differentiable to any order) for double backward")


torch.library.register_autograd("symtorch_fx::fused_backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)


