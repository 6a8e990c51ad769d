"""Plain python callables as blocks: ``sfx.compile(fn, sample_inputs=X)``.

A callable that maps rows of inputs to rows of outputs (``R^DI -> R^DO``, torch in and out or
numpy in and out) is held by a :class:`FunctionModel` whose one submodule, ``function``, is the
target. Everything else -- recording, the search, the rewrite, ``use``, ``save``/``load`` -- is
the pass as it runs on any model; the symbolic model is called like the function (numpy in ->
numpy out, tensor in -> tensor out).

Whether the callable takes numpy arrays or tensors is decided by the first call: the type of the
inputs ``compile`` is given is the type the callable gets from then on, whatever the symbolic
model is later called with. The decision is saved with the equations, so ``sfx.load(path, fn)``
hands ``fn`` the same type.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn as nn

from .errors import SymTorchFXError

#: the name of the target a callable is distilled as
FUNCTION_TARGET = "function"


def _positional_names(fn) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _to_tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - reported with the cause
        raise SymTorchFXError(f"{what} is {type(value).__name__}, not an array ({e})") from e
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or arr.dtype == np.bool_):
        raise SymTorchFXError(
            f"{what} has dtype {arr.dtype}; a distilled callable maps numbers to numbers "
            "(return a numeric array or tensor, one row per input row)")
    if np.iscomplexobj(arr):
        raise SymTorchFXError(f"{what} is complex; symtorch_fx distils real-valued functions")
    return torch.from_numpy(np.ascontiguousarray(arr))


class Function(nn.Module):
    """A python callable as a module. ``numpy``: whether the callable takes numpy arrays (None
    until the first call decides it). Outputs become tensors; integer and boolean outputs
    become float64 (an equation's values are real)."""

    def __init__(self, fn, numpy: bool | None = None):
        super().__init__()
        if not callable(fn):
            raise SymTorchFXError(f"expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.numpy = numpy
        #: the variable names' source (a callable's own argument names)
        self.sfx_input_names = _positional_names(fn)

    def forward(self, *args):
        if self.numpy is None:
            self.numpy = False  # tensors reached it first
        if self.numpy:
            args = tuple(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
                         for a in args)
        out = _to_tensor(self.fn(*args), f"what {getattr(self.fn, '__name__', 'the callable')} "
                                         "returns")
        if not (out.dtype.is_floating_point or out.dtype.is_complex):
            out = out.to(torch.float64)
        ref = next((a for a in args if isinstance(a, torch.Tensor)), None)
        return out if ref is None else out.to(ref.device)

    def extra_repr(self) -> str:
        kind = {None: "undecided", True: "numpy", False: "torch"}[self.numpy]
        return f"{getattr(self.fn, '__qualname__', type(self.fn).__name__)}, {kind}"


class FunctionModel(nn.Module):
    """Holds a callable as its submodule ``function`` and is called like it: numpy arrays in
    give numpy arrays out, tensors in give tensors out. Positional inputs only."""

    def __init__(self, fn, numpy: bool | None = None):
        super().__init__()
        self.function = Function(fn, numpy)
        # the callable itself, also reachable when ``function`` is swapped for its equations
        self.__dict__["_callable"] = self.function

    @property
    def fn(self):
        """The user's callable."""
        return self.__dict__["_callable"].fn

    def forward(self, *args):
        from_numpy = any(isinstance(a, np.ndarray) for a in args)
        held = self.__dict__["_callable"]
        if held.numpy is None:
            held.numpy = from_numpy
        tensors = tuple(_to_tensor(a, f"input {i}") if isinstance(a, np.ndarray) else a
                        for i, a in enumerate(args))
        out = self.function(*tensors)
        if from_numpy and isinstance(out, torch.Tensor):
            return out.detach().cpu().numpy()
        return out


def as_model(fn, numpy: bool | None = None) -> FunctionModel:
    """``fn`` (a callable that is not an ``nn.Module``) as a model whose target is
    ``"function"``."""
    if isinstance(fn, nn.Module):
        raise SymTorchFXError("internal: modules are distilled as they are")
    return FunctionModel(fn, numpy)
