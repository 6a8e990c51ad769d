"""``save`` / ``load``: a symbolic model as a JSON document, with no pickle and no eval.

The file holds, per region: how to find it in the model again, its input/output layout, variable
names, every equation on every front as text in the restricted grammar (the chosen ones with
their tuned constants), the chosen index and the rule, and whether it runs symbolic or neural.
Loading parses that text with our own parser (``expr.grammar.parse``); a file whose equations step
outside the grammar -- ``__import__('os')`` and the like -- is rejected before anything runs.
"""

from __future__ import annotations

import json
import math
import os
import re

import torch
import torch.nn as nn

from .errors import EquationSyntaxError, SerializationError, UntraceableModelError
from .expr.equations import Equation, ParetoFront
from .expr.grammar import complexity, parse, variable
from .graph.match import Region, Site, bind_module_sites, op_key
from .graph.rewrite import GraphHost, SwapHost, SymbolicModule
from .graph.trace import trace
from .kernels.lower import Layout
from .model import RegionResult, State, attach, state_of
from .reduce import Projection

FORMAT = "symtorch_fx"
VERSION = 1
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int16,
    torch.int32, torch.int64, torch.uint8, torch.bool)}


def save(sym: nn.Module, path: str | os.PathLike) -> None:
    """Write ``sym``'s equations (fronts, choices, tuned constants, modes) to ``path``."""
    st = state_of(sym)
    write(path, st.results, st.modes, host=st.host.kind, class_name=st.host.class_name,
          through_nn=getattr(st.host, "through_nn", False))


def write(path, results: dict, modes: dict, *, host: str, class_name: str,
          through_nn: bool = False) -> None:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "model": class_name,
        "host": host,
        "through_nn": through_nn,
        "regions": [_region_doc(name, res, modes[name]) for name, res in results.items()],
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)


def _region_doc(name: str, res, mode: str) -> dict:
    res.sync()
    r, m = res.region, res.module
    return {
        "name": name,
        "kind": r.kind,
        "module": r.module,
        "ops": r.ops,
        "sites": [{"output": s.output, "inputs": s.inputs, "nodes": s.nodes}
                  for s in r.sites] if r.kind == "pattern" else [],
        "layout": {"inputs": list(m.layout.inputs), "outputs": m.layout.outputs},
        "arg_mask": list(m.arg_mask),
        "out_dtype": str(m.out_dtype).removeprefix("torch."),
        "kernel": m.kernel,
        "variables": list(res.variables),
        "projection": m.projection.to_json() if m.projection is not None else None,
        "mode": mode,
        "fronts": [{
            "output": f.output,
            "chosen": f.chosen,
            "rule": f.rule,
            "equations": [{"expr": e.text(), "complexity": e.complexity,
                           "loss": _num(e.loss), "finite": e.finite} for e in f.equations],
        } for f in res.fronts],
    }


def _num(v: float):
    return v if math.isfinite(v) else str(v)


def _read_doc(path) -> tuple[dict, list[tuple]]:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except json.JSONDecodeError as e:
        raise SerializationError(f"{path} is not a symtorch_fx file (invalid JSON: {e})") from e
    _expect(isinstance(doc, dict) and doc.get("format") == FORMAT,
            f"{path} is not a symtorch_fx file (no 'format': '{FORMAT}' header)")
    _expect(doc.get("version") == VERSION,
            f"{path} has format version {doc.get('version')!r}; this symtorch_fx reads {VERSION}")
    entries = doc.get("regions")
    _expect(isinstance(entries, list) and entries, f"{path} lists no regions")
    _expect(doc.get("host") in ("graph", "swap", "dynamo"), f"{path}: unknown host {doc.get('host')!r}")
    return doc, [_parse_region(e, path) for e in entries]


def _results(parsed: list[tuple], device=None) -> tuple[dict, dict]:
    results, modes = {}, {}
    for region, layout, variables, fronts, arg_mask, dtype, kernel, mode, projection in parsed:
        module = SymbolicModule(region.name, layout, variables, arg_mask, dtype,
                                [f.equation.expr for f in fronts], kernel, projection)
        if device is not None:
            module.to(device)
        info = {"projection": projection.describe()} if projection is not None else {}
        results[region.name] = RegionResult(region, variables, fronts, module, info=info)
        modes[region.name] = mode
    return results, modes


def read(path: str | os.PathLike) -> tuple[dict[str, RegionResult], dict[str, str]]:
    """The equations saved at ``path`` and each region's mode, without a model (for
    ``sfx.backend(equations=path)``)."""
    _, parsed = _read_doc(path)
    return _results(parsed)


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Rebuild the symbolic model saved at ``path`` on ``model`` (the same architecture)."""
    doc, parsed = _read_doc(path)
    regions = [p[0] for p in parsed]
    for r in regions:
        if r.kind in ("module", "model"):
            try:
                model.get_submodule(r.module or "")
            except AttributeError as e:
                raise SerializationError(
                    f"{path} has equations for module {r.module!r}, which this "
                    f"{type(model).__name__} does not have"
                ) from e
    if doc["host"] == "swap":
        host = SwapHost(model, regions)
    else:
        through_nn = bool(doc.get("through_nn"))
        leaves = {r.module for r in regions if r.kind == "module"}
        try:
            gm = trace(model, leaves, through_nn=through_nn)
        except UntraceableModelError:
            if doc["host"] != "dynamo" or any(r.kind != "module" for r in regions):
                raise
            host = SwapHost(model, regions)  # saved by the torch.compile backend
        else:
            bind_module_sites([r for r in regions if r.kind in ("module", "model")], gm)
            _check_pattern_sites(gm, [r for r in regions if r.kind == "pattern"], path)
            host = GraphHost(gm, regions, through_nn)
    p = next(model.parameters(), None)
    results, modes = _results(parsed, p.device if p is not None else None)
    sym = host.symbolic({k: r.module for k, r in results.items()}, modes)
    return attach(sym, State(host, results, modes))


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise SerializationError(msg)


def _parse_region(e: dict, path) -> tuple:
    _expect(isinstance(e, dict), f"{path}: a region entry is not an object")
    name = e.get("name")
    _expect(isinstance(name, str), f"{path}: a region has no name")
    where = f"{path}, region {name!r}"
    kind = e.get("kind")
    _expect(kind in ("module", "pattern", "model"), f"{where}: unknown kind {kind!r}")
    lay = e.get("layout") or {}
    ins, outs = lay.get("inputs"), lay.get("outputs")
    _expect(isinstance(ins, list) and ins and all(i is None or (isinstance(i, int) and i > 0)
                                                  for i in ins), f"{where}: bad input layout")
    _expect(outs is None or (isinstance(outs, int) and outs > 0), f"{where}: bad output layout")
    layout = Layout(tuple(ins), outs)
    variables = e.get("variables")
    projection = None
    if e.get("projection") is not None:
        try:
            projection = Projection.from_json(e["projection"])
        except (KeyError, TypeError, ValueError) as err:
            raise SerializationError(f"{where}: bad projection ({err})") from err
        _expect(projection.in_basis.shape[0] == layout.n_features
                and projection.out_basis.shape[0] == layout.n_outputs,
                f"{where}: the projection does not fit the region's layout")
    n_vars = layout.n_features if projection is None else projection.n_inputs
    n_outs = layout.n_outputs if projection is None else projection.n_outputs
    _expect(isinstance(variables, list) and len(variables) == n_vars
            and all(isinstance(v, str) and _IDENT.match(v) for v in variables),
            f"{where}: variables must be {n_vars} identifiers")
    _expect(len(set(variables)) == len(variables), f"{where}: repeated variable names")
    dtype = _DTYPES.get(e.get("out_dtype"))
    _expect(dtype is not None, f"{where}: unknown out_dtype {e.get('out_dtype')!r}")
    arg_mask = e.get("arg_mask")
    _expect(isinstance(arg_mask, list) and all(isinstance(b, bool) for b in arg_mask),
            f"{where}: bad arg_mask")
    mode = e.get("mode", "symbolic")
    _expect(mode in ("symbolic", "neural"), f"{where}: unknown mode {mode!r}")
    kernel = e.get("kernel", "auto")
    _expect(isinstance(kernel, str), f"{where}: bad kernel")
    symbols = {v: variable(v) for v in variables}
    fronts_doc = e.get("fronts")
    _expect(isinstance(fronts_doc, list) and len(fronts_doc) == n_outs,
            f"{where}: expected {n_outs} fronts")
    fronts = []
    for fd in fronts_doc:
        eqs = []
        for q in fd.get("equations") or []:
            text = q.get("expr")
            try:
                expr = parse(text, symbols)
            except EquationSyntaxError as err:
                raise SerializationError(f"{where}: rejected equation: {err}") from err
            loss = q.get("loss")
            loss = float(loss) if isinstance(loss, (int, float, str)) else math.inf
            eqs.append(Equation(expr, complexity(expr), loss,
                                tuple(symbols.values()), bool(q.get("finite", True))))
        _expect(bool(eqs), f"{where}: a front has no equations")
        chosen = fd.get("chosen", 0)
        _expect(isinstance(chosen, int) and 0 <= chosen < len(eqs), f"{where}: bad chosen index")
        out = fd.get("output")
        _expect(isinstance(out, str) and _IDENT.match(out), f"{where}: bad output name")
        fronts.append(ParetoFront(name, out, eqs, chosen, str(fd.get("rule", ""))))
    sites = []
    if kind == "pattern":
        for s in e.get("sites") or []:
            _expect(isinstance(s, dict), f"{where}: bad site")
            sites.append(Site(output=str(s.get("output")), inputs=[str(x) for x in s.get("inputs", [])],
                              nodes=[str(x) for x in s.get("nodes", [])]))
        _expect(bool(sites), f"{where}: a pattern region has no sites")
    module = e.get("module")
    _expect(kind == "pattern" or isinstance(module, str), f"{where}: no module path")
    region = Region(name=name, kind=kind, spec="loaded", sites=sites or [Site(module=module)],
                    module=module, ops=[str(o) for o in e.get("ops") or []])
    return region, layout, tuple(variables), fronts, tuple(arg_mask), dtype, kernel, mode, projection


def _check_pattern_sites(gm, regions, path) -> None:
    by_name = {n.name: n for n in gm.graph.nodes}
    for r in regions:
        for s in r.sites:
            missing = [n for n in [s.output, *s.inputs, *s.nodes] if n not in by_name]
            if missing:
                raise SerializationError(
                    f"{path}: region {r.name!r} refers to graph nodes {missing[:4]} that this "
                    "model's traced graph does not have; the model's forward differs from the "
                    "one the equations were distilled from"
                )
            ops = sorted(k for n in s.nodes if (k := op_key(by_name[n], gm)))
            if ops != sorted(r.ops):
                raise SerializationError(
                    f"{path}: region {r.name!r} covered ops {sorted(r.ops)} when saved, but those "
                    f"nodes now compute {ops}; the model differs from the one saved"
                )
