"""What users may pass as ``targets=``: names, globs, module classes, predicates and op patterns."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch.fx as fx
import torch.nn as nn

from ..errors import TargetError


class Pattern:
    """An op pattern: a function whose traced graph is matched wherever it occurs in the model.

    Write the pattern with ``torch`` / ``torch.nn.functional`` calls; its arguments are the
    pattern's inputs (data or weights)::

        def swiglu_mlp(x, w1, b1, w2, b2):
            return F.linear(F.silu(F.linear(x, w1, b1)), w2, b2)

        sfx.compile(model, targets=[sfx.pattern(swiglu_mlp)], ...)

    It matches the same computation written with ``nn.Linear``/``nn.SiLU`` modules or with
    functional calls. Weights (parameters reached through ``get_attr``) are not features of the
    distilled equations; data inputs are.

    Args:
        fn: the pattern, a function traceable by ``torch.fx``.
        name: the name shown in reprs and errors (default: ``fn.__name__``).
    """

    def __init__(self, fn: Callable, name: str | None = None):
        if not callable(fn):
            raise TargetError(f"sfx.pattern needs a function, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "pattern")

    @functools.cached_property
    def graph(self) -> fx.Graph:
        """The pattern's ``torch.fx`` graph, traced on first use (:class:`TargetError` when
        fx cannot trace it)."""
        try:
            return fx.symbolic_trace(self.fn).graph
        except Exception as e:  # noqa: BLE001 - reported with the cause
            raise TargetError(
                f"op pattern {self.name!r} cannot be traced by torch.fx ({e}); write it as a "
                "straight-line function of its arguments using torch / torch.nn.functional ops"
            ) from e

    def __repr__(self) -> str:
        return f"pattern({self.name})"


def pattern(fn: Callable, name: str | None = None) -> Pattern:
    """Mark ``fn`` as an op pattern target (see :class:`Pattern`); ``name`` is shown in
    reprs and errors (default: ``fn.__name__``)."""
    return Pattern(fn, name)


@dataclass
class TargetSpec:
    """One normalized entry of ``targets=``."""

    raw: object
    kind: str  # "name" | "glob" | "class" | "predicate" | "pattern"
    matcher: Callable[[str, nn.Module], bool] | None = None
    pattern: Pattern | None = None
    matched: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.kind in ("name", "glob"):
            return repr(self.raw)
        if self.kind == "class":
            return self.raw.__name__
        if self.kind == "predicate":
            return f"predicate {getattr(self.raw, '__name__', self.raw)!r}"
        return repr(self.pattern)


def _glob_regex(glob: str) -> re.Pattern:
    """``*`` and ``?`` match within one component of a qualified name; a ``**`` component matches
    any number of components (``blocks.**.act``)."""
    out = []
    comps = glob.split(".")
    for i, comp in enumerate(comps):
        last = i == len(comps) - 1
        if comp == "**":
            out.append(r"[^.]+(?:\.[^.]+)*" if last else r"(?:[^.]+\.)*")
            continue
        out.append("".join(
            "[^.]*" if ch == "*" else "[^.]" if ch == "?" else re.escape(ch) for ch in comp
        ))
        if not last:
            out.append(r"\.")
    return re.compile("".join(out) + r"\Z")


def normalize(targets) -> list[TargetSpec]:
    """Turn the user's ``targets=`` into specs, rejecting anything we cannot interpret."""
    if targets is None:
        raise TargetError(
            "targets= is required: name the parts of the model to distill, e.g. "
            "targets=['encoder.*.mlp'], targets=[nn.GELU], targets=[lambda name, m: ...] or "
            "targets=[sfx.pattern(fn)]"
        )
    if isinstance(targets, (str, type, Pattern)) or (
        callable(targets) and not isinstance(targets, Sequence)
    ):
        targets = [targets]
    specs = []
    for t in targets:
        if isinstance(t, Pattern):
            specs.append(TargetSpec(t, "pattern", pattern=t))
        elif isinstance(t, str):
            if any(ch in t for ch in "*?"):
                rx = _glob_regex(t)
                specs.append(TargetSpec(t, "glob", lambda name, m, rx=rx: bool(rx.match(name))))
            else:
                specs.append(TargetSpec(t, "name", lambda name, m, t=t: name == t))
        elif isinstance(t, type) and issubclass(t, nn.Module):
            specs.append(TargetSpec(t, "class", lambda name, m, t=t: isinstance(m, t)))
        elif isinstance(t, type):
            raise TargetError(
                f"target class {t.__name__} is not a torch.nn.Module subclass; pass a module "
                "class such as nn.GELU"
            )
        elif callable(t):
            _check_predicate(t)
            specs.append(TargetSpec(t, "predicate", t))
        else:
            raise TargetError(
                f"cannot use {t!r} ({type(t).__name__}) as a target; use a qualified name or glob "
                "('blocks.*.mlp'), a module class, a predicate (name, module) -> bool, or "
                "sfx.pattern(fn)"
            )
    if not specs:
        raise TargetError("targets= is empty: name at least one part of the model to distill")
    return specs


def _check_predicate(fn) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = [
        p for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    if len(params) != 2 and not varargs:
        raise TargetError(
            f"target function {getattr(fn, '__name__', fn)!r} takes {len(params)} required "
            "argument(s); a predicate target takes (name, module) and returns bool. To match a "
            "computation instead, wrap it: sfx.pattern(fn)"
        )
