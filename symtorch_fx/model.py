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
                               self.info.get("projection") or self.info.get("features"))


@dataclass
class State:
    host: object  # GraphHost | SwapHost
    results: dict[str, RegionResult]
    modes: dict[str, str]


class SymbolicModel:
    """Mixed into the class of every model that ``convert``/``load`` return."""

    _sfx: State

    def __reduce_ex__(self, protocol):
        # the class is made at run time; pickle names the user's class and rebuilds ours
        # (graph-hosted models are pickled by ``_reduce_graph`` instead)
        if isinstance(self, fx.GraphModule):
            return _reduce_graph(self)
        base = next(b for b in type(self).__mro__ if not issubclass(b, SymbolicModel))
        return _new_symbolic, (base,), self.__dict__.copy()

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
        name = getattr(state.host, "class_name", base.__name__)
        cls = type(f"Symbolic{name}", (SymbolicModel, fx.GraphModule),
                   {"__deepcopy__": _deepcopy_graph})
        model.__class__ = cls
        model.recompile()
        model.meta["symtorch_fx"] = state
    elif not isinstance(model, SymbolicModel):
        model.__class__ = symbolic_class(base)
    model._sfx = state
    return model


_CLASSES: dict[type, type] = {}


def symbolic_class(base: type) -> type:
    """The SymbolicModel subclass of a user's module class, made once per class so that a
    pickled model names it by the class it derives from (see ``SymbolicModel.__reduce_ex__``)."""
    cls = _CLASSES.get(base)
    if cls is None:
        cls = _CLASSES[base] = type(f"Symbolic{base.__name__}", (SymbolicModel, base), {})
        cls.__module__ = base.__module__
        cls.__qualname__ = f"Symbolic{base.__qualname__}"
    return cls


def _new_symbolic(base: type) -> nn.Module:
    cls = symbolic_class(base)
    return cls.__new__(cls)


def _reduce_graph(self):
    """Pickle a graph-hosted symbolic model as torch.fx pickles a GraphModule (its code, rebuilt
    on load), then give it back its class and state."""
    fn, args = fx.GraphModule.__reduce__(self)
    return _rebuild_graph, (fn, args, self._sfx)


def _rebuild_graph(fn, args, state: State) -> nn.Module:
    return attach(fn(*args), state)


def _deepcopy_graph(self, memo):
    # torch.fx copies the modules and meta (which holds our state) with one memo, into an
    # instance of a subclass of our class; attach gives it a fresh class of its own instead
    res = fx.GraphModule.__deepcopy__(self, memo)
    return attach(res, res.meta["symtorch_fx"])


def state_of(model) -> State:
    st = getattr(model, "_sfx", None)
    if not isinstance(st, State):
        raise SymTorchFXError(
            f"{type(model).__name__} is not a symbolic model; get one from sfx.compile, "
            "sfx.convert or sfx.load"
        )
    return st
