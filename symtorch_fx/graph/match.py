"""Stage ``match``: target specs + model (+ graph) -> Regions.

A :class:`Region` is one thing to distill: a module target (all its call sites share one set of
equations), an op-pattern match, or the whole model. Each call site covers some graph nodes, has
data inputs (graph values that become the equations' variables) and one output value. Weights
reached through ``get_attr`` are never inputs: they are fixed, not per-row features.
"""

from __future__ import annotations

import operator
import re
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import TargetError, nearest
from .targets import Pattern, TargetSpec


@dataclass
class Site:
    """One place where a region's computation happens."""

    output: str = ""  # graph node whose value is the region's output (graph host)
    inputs: list[str] = field(default_factory=list)  # data-input node names, in argument order
    nodes: list[str] = field(default_factory=list)  # graph nodes the region covers
    module: str | None = None  # qualified name of the module (module regions)


@dataclass
class Region:
    name: str
    kind: str  # "module" | "pattern" | "model"
    spec: str  # how the user asked for it
    sites: list[Site] = field(default_factory=list)
    module: str | None = None
    ops: list[str] = field(default_factory=list)  # canonical op names (pattern regions)
    #: the attribute name of the region's submodules (``sfx_symbolic.<slug>``): letters, digits
    #: and ``_`` only, unique among the regions of one model (see :func:`assign_slugs`)
    slug: str = ""

    def __post_init__(self):
        if not self.slug:
            self.slug = _slug_base(self.name)


#: a region name: a qualified module name (``blocks.0.mlp``; empty for the whole model),
#: with ``#k`` for the k-th repeat of a pattern
REGION_NAME = re.compile(r"(?:[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)?(?:#[0-9]+)?\Z")
#: a qualified module name (empty: the model itself)
MODULE_PATH = re.compile(r"(?:[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)?\Z")


def _slug_base(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name or "model")


def assign_slugs(regions: list[Region]) -> None:
    """Give every region a slug that is a safe attribute name and unique among ``regions``
    (``enc.0`` and ``enc_0`` both read ``enc_0``: the later one becomes ``enc_0_2``). The same
    regions in the same order always get the same slugs, so state_dict keys are stable."""
    taken: set[str] = set()
    for r in regions:
        base = _slug_base(r.name)
        slug, k = base, 1
        while slug in taken:
            k += 1
            slug = f"{base}_{k}"
        r.slug = slug
        taken.add(slug)


# ----------------------------------------------------------------------------------------------
# module targets


def match_modules(model: nn.Module, specs: list[TargetSpec]) -> list[Region]:
    """Regions for every module-kind spec (names, globs, classes, predicates)."""
    modules = dict(model.named_modules())
    taken: dict[str, TargetSpec] = {}
    regions: list[Region] = []
    for spec in specs:
        if spec.kind == "pattern":
            continue
        hits = [name for name, m in modules.items() if spec.matcher(name, m)]
        if not hits:
            raise TargetError(_no_module_match(spec, modules))
        hits.sort(key=lambda n: (n.count(".") if n else -1, n))
        for name in hits:
            outer = next((t for t in taken if _contains(t, name)), None)
            if outer is not None:
                if taken[outer] is spec:
                    continue  # nested match of the same spec: the outermost module wins
                raise TargetError(
                    f"targets overlap: {spec.describe()} matches {name or '(the model)'!r}, which "
                    f"is part of {outer or '(the model)'!r} matched by {taken[outer].describe()}; "
                    "remove one of them"
                )
            inner = next((t for t in taken if _contains(name, t)), None)
            if inner is not None:
                raise TargetError(
                    f"targets overlap: {spec.describe()} matches {name or '(the model)'!r}, which "
                    f"contains {inner!r} matched by {taken[inner].describe()}; remove one of them"
                )
            taken[name] = spec
            spec.matched.append(name)
            kind = "model" if name == "" else "module"
            regions.append(Region(name=name, kind=kind, spec=spec.describe(), module=name,
                                  sites=[Site(module=name)]))
    return regions


def _contains(outer: str, inner: str) -> bool:
    return outer == inner or outer == "" or inner.startswith(outer + ".")


def _no_module_match(spec: TargetSpec, modules: dict[str, nn.Module]) -> str:
    names = [n for n in modules if n]
    if spec.kind in ("name", "glob"):
        close = nearest(str(spec.raw), names, 8)
        return (f"target {spec.describe()} matches no module; the nearest module names are: "
                f"{', '.join(close)}")
    if spec.kind == "class":
        classes = sorted({type(m).__name__ for m in modules.values()})
        return (f"target class {spec.describe()} matches no module; the model contains: "
                f"{', '.join(classes)}")
    return (f"target {spec.describe()} matched no module; module names include: "
            f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''}")


def bind_module_sites(regions: list[Region], gm: fx.GraphModule) -> None:
    """Fill each module region's call sites from the traced graph (module targets are leaves)."""
    nodes = list(gm.graph.nodes)
    for region in list(regions):
        if region.kind == "model":
            region.sites = [_whole_model_site(gm)]
            continue
        if region.kind != "module":
            continue
        calls = [n for n in nodes if n.op == "call_module" and n.target == region.module]
        if not calls:
            warnings.warn(
                f"target {region.module!r} (from {region.spec}) is never called by the traced "
                "forward; it is skipped",
                stacklevel=3,
            )
            regions.remove(region)
            continue
        region.sites = [
            Site(output=n.name, inputs=[a.name for a in _node_args(n)], nodes=[n.name],
                 module=region.module)
            for n in calls
        ]


def _node_args(n: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((n.args, n.kwargs), lambda a: out.append(a) or a)
    return [a for a in dict.fromkeys(out) if a.op != "get_attr"]


def _whole_model_site(gm: fx.GraphModule) -> Site:
    nodes = list(gm.graph.nodes)
    out = next(n for n in nodes if n.op == "output")
    result = out.args[0]
    if not isinstance(result, fx.Node):
        raise TargetError(
            "the whole model is a target, but its forward returns "
            f"{type(result).__name__}; distilling a model needs one output tensor"
        )
    inputs = [n.name for n in nodes if n.op == "placeholder" and n.users]
    body = [n.name for n in nodes if n.op.startswith("call_")]
    return Site(output=result.name, inputs=inputs, nodes=body)


# ----------------------------------------------------------------------------------------------
# op patterns

_ALIASES = {
    operator.add: "add", operator.iadd: "add", torch.add: "add",
    operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", torch.multiply: "mul",
    operator.sub: "sub", operator.isub: "sub", torch.sub: "sub", torch.subtract: "sub",
    operator.truediv: "div", operator.itruediv: "div", torch.div: "div", torch.true_divide: "div",
    operator.neg: "neg", torch.neg: "neg", torch.negative: "neg",
    operator.pow: "pow", torch.pow: "pow",
    operator.matmul: "matmul", torch.matmul: "matmul",
}
_METHOD_ALIASES = {"truediv": "div", "true_divide": "div", "multiply": "mul", "subtract": "sub",
                   "negative": "neg", "__add__": "add", "__mul__": "mul"}
_MODULE_OPS = {nn.SiLU: "silu", nn.ReLU: "relu", nn.GELU: "gelu", nn.Tanh: "tanh",
               nn.Sigmoid: "sigmoid", nn.Linear: "linear"}
_COMMUTATIVE = {"add", "mul"}


def op_key(node: fx.Node, gm: fx.GraphModule | None = None) -> str | None:
    if node.op == "call_function":
        t = node.target
        return _ALIASES.get(t) or getattr(t, "__name__", str(t)).lstrip("_")
    if node.op == "call_method":
        return _METHOD_ALIASES.get(node.target, node.target.rstrip("_"))
    if node.op == "call_module" and gm is not None:
        m = gm.get_submodule(node.target)
        return _MODULE_OPS.get(type(m), type(m).__name__)
    return None


class _Matcher:
    def __init__(self, pattern: Pattern, gm: fx.GraphModule):
        self.gm = gm
        pg = pattern.graph
        outs = [n for n in pg.nodes if n.op == "output"]
        res = outs[0].args[0]
        if not isinstance(res, fx.Node) or res.op == "placeholder":
            raise TargetError(
                f"op pattern {pattern.name!r} must return one tensor computed from its arguments"
            )
        self.anchor = res
        self.placeholders = [n for n in pg.nodes if n.op == "placeholder"]
        self.compute = [n for n in pg.nodes if n.op.startswith("call_")]
        self.pkeys = {n: op_key(n) for n in self.compute}

    def match_at(self, p: fx.Node, g, m: dict) -> bool:
        if p.op == "placeholder":
            if p in m:
                return m[p] is g if isinstance(g, fx.Node) else m[p] == g
            m[p] = g
            return True
        if not isinstance(g, fx.Node) or not g.op.startswith("call_"):
            return False
        if p in m:
            return m[p] is g
        if g in m.values() or self.pkeys[p] != op_key(g, self.gm):
            return False
        pargs, gargs = list(p.args), list(g.args)
        if len(pargs) > len(gargs):
            return False
        orders = [gargs]
        if self.pkeys[p] in _COMMUTATIVE and len(gargs) == 2:
            orders.append(gargs[::-1])
        for ga in orders:
            snap = dict(m)
            if all(self.match_arg(a, b, m) for a, b in zip(pargs, ga)) and all(
                k in g.kwargs and self.match_arg(v, g.kwargs[k], m) for k, v in p.kwargs.items()
            ):
                m[p] = g
                return True
            m.clear()
            m.update(snap)
        return False

    def match_arg(self, a, b, m: dict) -> bool:
        if isinstance(a, fx.Node):
            return self.match_at(a, b, m)
        if isinstance(a, (list, tuple)):
            return (isinstance(b, (list, tuple)) and len(a) == len(b)
                    and all(self.match_arg(x, y, m) for x, y in zip(a, b)))
        return a == b


def match_patterns(gm: fx.GraphModule, specs: list[TargetSpec], taken: set[str]) -> list[Region]:
    """Regions for every op-pattern spec; ``taken``: graph nodes already covered by targets."""
    regions: list[Region] = []
    for spec in specs:
        if spec.kind != "pattern":
            continue
        matcher = _Matcher(spec.pattern, gm)
        found = 0
        for g in list(gm.graph.nodes):
            if g.name in taken:
                continue
            m: dict = {}
            if not matcher.match_at(matcher.anchor, g, m):
                continue
            site = _pattern_site(matcher, m, g)
            if site is None or any(n in taken for n in site.nodes):
                continue
            taken.update(site.nodes)
            found += 1
            ops = [matcher.pkeys[p] for p in matcher.compute]
            regions.append(Region(name=_region_name(gm, site, spec.pattern.name), kind="pattern",
                                  spec=spec.describe(), sites=[site], ops=ops))
        if not found:
            present = sorted({k for n in gm.graph.nodes if (k := op_key(n, gm))})
            raise TargetError(
                f"op pattern {spec.pattern.name!r} (ops: {' -> '.join(matcher.pkeys.values())}) "
                f"occurs nowhere in the traced model; the ops present are: {', '.join(present)}"
            )
        spec.matched.extend(r.name for r in regions[-found:])
    names: dict[str, int] = {}
    for r in regions:  # make names unique: "blocks.0.mlp", "blocks.0.mlp#1", ...
        k = names.get(r.name, 0)
        names[r.name] = k + 1
        if k:
            r.name = f"{r.name}#{k}"
    return regions


def _pattern_site(matcher: _Matcher, m: dict, anchor: fx.Node) -> Site | None:
    nodes = [m[p] for p in matcher.compute]
    body = set(nodes)
    for n in nodes:  # the region must be closed: intermediate values are used only inside it
        if n is not anchor and any(u not in body for u in n.users):
            return None
    inputs: list[fx.Node] = []
    for p in matcher.placeholders:
        v = m.get(p)
        if isinstance(v, fx.Node) and v not in body and v.op != "get_attr":
            inputs.append(v)
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in body and a.op != "get_attr" and a not in inputs:
                inputs.append(a)
    order = {n: i for i, n in enumerate(anchor.graph.nodes)}
    return Site(output=anchor.name, inputs=[a.name for a in inputs],
                nodes=[n.name for n in sorted(body, key=order.get)])


def _region_name(gm: fx.GraphModule, site: Site, fallback: str) -> str:
    by_name = {n.name: n for n in gm.graph.nodes}
    paths = []
    for name in site.nodes:
        stack = by_name[name].meta.get("nn_module_stack")
        if stack:
            paths.append(list(stack.values())[-1][0].split("."))
        else:
            paths.append([])
    common = paths[0] if paths else []
    for p in paths[1:]:
        k = 0
        while k < min(len(common), len(p)) and common[k] == p[k]:
            k += 1
        common = common[:k]
    return ".".join(common) or fallback


# ----------------------------------------------------------------------------------------------
# dynamo graphs: no call_module nodes; every node says which modules it ran inside


def dynamo_path(path: str) -> str:
    """``"L['self'].layers[0].mlp"`` / ``"L['self'].layers.0.mlp"`` -> ``"layers.0.mlp"``."""
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\[['\"]([^'\"]+)['\"]\]", r".\1", path)
    parts = path.split(".")
    if parts and (parts[0] in ("L", "G") or parts[0].startswith(("L[", "G["))):
        parts = parts[2:] if parts[0] in ("L", "G") else parts[1:]
    return ".".join(p for p in parts if p)


def _is_weight(node: fx.Node) -> bool:
    if node.op == "get_attr":
        return True
    if node.op != "placeholder":
        return False
    arg = node.meta.get("grapharg")
    if arg is not None:
        if isinstance(getattr(arg, "example", None), nn.Parameter):
            return True
        src = getattr(getattr(arg, "source", None), "name", "")
        src = src() if callable(src) else src
        return "._parameters[" in str(src) or "._buffers[" in str(src)
    return isinstance(node.meta.get("example_value"), nn.Parameter)


def match_dynamo(gm: fx.GraphModule, specs: list[TargetSpec], model: nn.Module | None = None,
                 names: set[str] | None = None) -> list[Region]:
    """Regions of module targets in a dynamo graph, found through ``nn_module_stack``.

    ``names``: if given, only these module paths (equations exist for them). Module paths that
    do not occur in this graph are simply absent (another graph of the same model may hold
    them); the caller checks that every target was found somewhere.
    """
    calls = [n for n in gm.graph.nodes if n.op.startswith("call_")]
    classes: dict[str, type] = {}
    members: dict[str, dict[str, list[fx.Node]]] = {}  # path -> call key -> nodes
    for n in calls:
        for key, (path, cls) in (n.meta.get("nn_module_stack") or {}).items():
            qual = dynamo_path(path)
            classes.setdefault(qual, cls)
            members.setdefault(qual, {}).setdefault(str(key), []).append(n)
    matched: dict[str, TargetSpec] = {}
    for spec in specs:
        if spec.kind == "pattern":
            raise TargetError(
                "op patterns are matched on torch.fx graphs; in the torch.compile backend "
                "target modules (names, globs, classes, predicates)"
            )
        for qual, cls in sorted(classes.items(), key=lambda kv: (kv[0].count("."), kv[0])):
            if names is not None and qual not in names:
                continue
            if spec.kind == "class":
                hit = issubclass(cls, spec.raw)
            elif spec.kind == "predicate":
                if model is None:
                    raise TargetError(
                        f"{spec.describe()} needs the module objects: pass model= to "
                        "sfx.backend(...) when targeting with a predicate"
                    )
                hit = spec.matcher(qual, model.get_submodule(qual))
            else:
                hit = spec.matcher(qual, None)
            if hit and not any(_contains(t, qual) for t in matched):
                matched[qual] = spec
    regions = []
    for qual, spec in matched.items():
        sites = []
        for nodes in members[qual].values():
            site = _dynamo_site(nodes)
            if site is None:
                raise TargetError(
                    f"target {qual!r} does not produce a single tensor value in the compiled "
                    "graph (it returns several values, or a graph break splits it); target a "
                    "submodule with one tensor output"
                )
            sites.append(site)
        regions.append(Region(name=qual, kind="module", spec=spec.describe(), module=qual,
                              sites=sites))
    return regions


def _dynamo_site(nodes: list[fx.Node]) -> Site | None:
    body = set(nodes)
    outs = [n for n in nodes if n.op != "output" and any(u not in body for u in n.users)]
    if len(outs) != 1:
        return None
    inputs: list[fx.Node] = []
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in body and not _is_weight(a) and a not in inputs:
                inputs.append(a)
    return Site(output=outs[0].name, inputs=[a.name for a in inputs],
                nodes=[n.name for n in nodes])
