"""The symbolic model users hold: their model, rewritten, plus ``equations``/``select``/``use``.

``convert`` returns the rewritten module with its class swapped for a subclass that mixes in
:class:`SymbolicModel` (the way torch.fx gives every GraphModule its own class), so
``isinstance`` checks against the original class and ``state_dict`` keys of the neural parts are
unchanged. The pass's state lives in ``model._sfx`` (and ``gm.meta["symtorch_fx"]`` for graphs).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch.fx as fx
import torch.nn as nn

from .errors import SymTorchFXError, nearest
from .expr.equations import Equations, ParetoFront, RegionEquations
from .graph.match import Region
from .graph.rewrite import SymbolicModule
from .search import select as rules

MODES = ("neural", "symbolic")


@dataclass
class RegionResult:
    region: Region
    variables: tuple[str, ...]
    fronts: list[ParetoFront]
    module: SymbolicModule
    info: dict = field(default_factory=dict)

    def sync(self) -> None:
        """Copy the module's current (possibly tuned) constants into the chosen equations."""
        for front, expr in zip(self.fronts, self.module.equations()):
            front.equation.expr = expr

    def report(self) -> RegionEquations:
        self.sync()
        return RegionEquations(self.region.name, self.fronts, self.variables,
                               self.info.get("projection"))


@dataclass
class State:
    host: object  # GraphHost | SwapHost
    results: dict[str, RegionResult]
    modes: dict[str, str]


class SymbolicModel:
    """Mixed into the class of every model that ``convert``/``load`` return."""

    _sfx: State

    @property
    def equations(self) -> Equations:
        """Per region, per output: the Pareto front and the chosen equation (live constants)."""
        return Equations({k: r.report() for k, r in self._sfx.results.items()})

    @property
    def symbolic_modules(self) -> dict[str, SymbolicModule]:
        return {k: r.module for k, r in self._sfx.results.items()}

    def _regions(self, targets) -> list[str]:
        names = list(self._sfx.results)
        if not targets:
            return names
        out: list[str] = []
        for t in targets:
            if not isinstance(t, str):
                raise SymTorchFXError(f"regions are named by strings, got {t!r}")
            hits = [n for n in names if n == t or fnmatch.fnmatchcase(n, t)]
            if not hits:
                raise SymTorchFXError(
                    f"no distilled region is named {t!r}; regions: {', '.join(nearest(t, names))}"
                )
            out.extend(h for h in hits if h not in out)
        return out

    def select(self, target: str | None = None, complexity=None, rule=None):
        """Choose other equations from the fronts.

        ``sym.select("enc.0.mlp", complexity=[5, 9])`` takes, per output, the most accurate
        equation of at most that complexity; ``sym.select(rule="accuracy")`` re-applies a rule
        (see ``search.select``) to every region. Returns the model.
        """
        if (complexity is None) == (rule is None):
            raise SymTorchFXError("select() takes either complexity= or rule=, not both or neither")
        how = complexity if complexity is not None else rule
        for name in self._regions([target] if target else []):
            res = self._sfx.results[name]
            res.sync()
            for front, r in zip(res.fronts, rules.per_output(how, len(res.fronts))):
                rules.apply(front, r)
            res.module.set_equations([f.equation.expr for f in res.fronts])
        return self

    def use(self, mode: str, *targets: str):
        """Run the listed regions (all when none are listed) as ``"neural"`` or ``"symbolic"``."""
        if mode not in MODES:
            raise SymTorchFXError(f"use() takes 'neural' or 'symbolic', got {mode!r}")
        for name in self._regions(targets):
            self._sfx.modes[name] = mode
        self._sfx.host.apply(self, self._sfx.modes)
        return self

    @property
    def modes(self) -> dict[str, str]:
        return dict(self._sfx.modes)


def attach(model: nn.Module, state: State) -> nn.Module:
    """Give ``model`` the SymbolicModel methods and its state."""
    base = type(model)
    if isinstance(model, fx.GraphModule):
        # torch.fx gives every GraphModule its own class and sets forward/__call__ on it in
        # recompile(); ours derives from GraphModule itself and is recompiled once swapped in.
        cls = type(f"Symbolic{base.__name__}", (SymbolicModel, fx.GraphModule), {})
        model.__class__ = cls
        model.recompile()
        model.meta["symtorch_fx"] = state
    elif not isinstance(model, SymbolicModel):
        cls = type(f"Symbolic{base.__name__}", (SymbolicModel, base), {})
        cls.__module__ = base.__module__
        model.__class__ = cls
    model._sfx = state
    return model


def state_of(model) -> State:
    st = getattr(model, "_sfx", None)
    if not isinstance(st, State):
        raise SymTorchFXError(
            f"{type(model).__name__} is not a symbolic model; get one from sfx.compile, "
            "sfx.convert or sfx.load"
        )
    return st
