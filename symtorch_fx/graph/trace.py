"""Stage ``trace``: nn.Module -> torch.fx.GraphModule, with module targets kept as leaves.

Module targets become single ``call_module`` nodes whatever they contain (data-dependent control
flow inside a target is fine), and so do modules with forward hooks (an output mask of
``sfx.prune_outputs``, say), which tracing through them would drop. When op patterns are among the targets, ``torch.nn`` modules are
traced through, so ``nn.Linear`` appears as ``F.linear`` and a pattern written with functional
calls matches module-level code too.
"""

from __future__ import annotations

import linecache
import os
import re
import traceback

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import UntraceableModelError

# torch.nn modules that torch.fx cannot trace through (data-dependent Python inside); they stay
# leaves even when patterns ask for tracing through torch.nn.
_OPAQUE_NN = (nn.MultiheadAttention, nn.RNNBase, nn.Transformer, nn.TransformerEncoder,
              nn.TransformerDecoder)

_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(os.path.dirname(__file__))  # the package, not graph/


class Tracer(fx.Tracer):
    def __init__(self, leaves: frozenset[str] = frozenset(), through_nn: bool = False):
        super().__init__()
        self.leaves = leaves
        self.through_nn = through_nn

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaves:
            return True
        if m._forward_hooks or m._forward_pre_hooks:
            return True  # tracing through calls forward, not the module: its hooks would be lost
        if self.through_nn and not isinstance(m, _OPAQUE_NN):
            return False
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module, leaves=frozenset(), through_nn: bool = False) -> fx.GraphModule:
    """Trace ``model``; raises :class:`UntraceableModelError` naming the construct that failed."""
    tracer = Tracer(frozenset(leaves), through_nn)
    try:
        graph = tracer.trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is reported with its location
        raise UntraceableModelError(
            f"torch.fx cannot trace {type(model).__name__}: {untraceable_construct(e)}"
        ) from e
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr") and not _SAFE_TARGET.match(node.target):
            # torch.fx writes these names into the forward's source without escaping them
            raise UntraceableModelError(
                f"torch.fx cannot trace {type(model).__name__} safely: its submodule or "
                f"attribute {node.target!r} has a name that is not a Python identifier, and "
                "torch.fx would write it into generated code; rename it (letters, digits, _)")
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


#: a call_module / get_attr target torch.fx can write into source as it is
_SAFE_TARGET = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*\Z")


def untraceable_construct(exc: BaseException) -> str:
    """Name the line of user code where tracing failed, with the tracer's reason."""
    frames = traceback.extract_tb(exc.__traceback__)
    user = [
        f for f in frames
        if not f.filename.startswith(_TORCH_DIR) and not f.filename.startswith(_OWN_DIR)
    ]
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not user:
        return reason
    f = user[-1]
    line = (f.line or linecache.getline(f.filename, f.lineno)).strip()
    return f"{reason} (at {os.path.basename(f.filename)}:{f.lineno}, in {f.name}: `{line}`)"
