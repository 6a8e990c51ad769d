"""``save`` / ``load``: a symbolic model as a JSON document, with no pickle and no eval.

The file holds, per region: how to find it in the model again, its input/output layout, variable
names, every equation on every front as text in the restricted grammar (the chosen ones with
their tuned constants), the chosen index and the rule, and whether it runs symbolic or neural.
Loading parses that text with our own parser (``expr.grammar.parse``); a file whose equations
step outside the grammar -- ``__import__('os')`` and the like -- is rejected before anything runs.

A file is data from anywhere. Every field is checked against a strict grammar before it is used:
names (regions, modules, graph nodes, variables, outputs) are identifiers or qualified
identifiers, never reach generated source unchecked, and the attribute names the rewrite uses are
derived from them safely and uniquely (``graph.match.assign_slugs``); kernels, dtypes, modes and
rules come from fixed lists; numbers are numbers. The work of reading is bounded: the file's
size, the nesting of its JSON, the tokens of each equation and of the whole file. Anything else
is a :class:`SerializationError` that names the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat

import torch
import torch.nn as nn

from .errors import EquationSyntaxError, SerializationError, UntraceableModelError
from .expr.equations import Equation, ParetoFront
from .expr.grammar import (
    MAX_TOKENS,
    check,
    check_variable_names,
    complexity,
    parse,
    to_text,
    variable,
)
from .function import FunctionModel, as_model
from .graph.match import (
    MODULE_PATH,
    REGION_NAME,
    Region,
    Site,
    bind_module_sites,
    op_key,
)
from .graph.rewrite import GraphHost, SwapHost, SymbolicModule
from .graph.trace import trace
from .kernels.lower import KERNELS, Layout
from .model import RegionResult, State, attach, state_of
from .reduce import Projection
from .search.features import MAX_FEATURES
from .search.features import describe as describe_features

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
          through_nn=getattr(st.host, "through_nn", False), function=_function_doc(st.host))


def _function_doc(host) -> dict | None:
    """What a distilled callable's file records about it: whether it takes numpy arrays."""
    model = getattr(host, "model", None)
    if not isinstance(model, FunctionModel):
        return None
    return {"numpy": model.__dict__["_callable"].numpy}


def write(path, results: dict, modes: dict, *, host: str, class_name: str,
          through_nn: bool = False, function: dict | None = None) -> None:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "model": class_name,
        "host": host,
        "through_nn": through_nn,
        "regions": [_region_doc(name, res, modes[name]) for name, res in results.items()],
    }
    if function is not None:
        doc["function"] = function
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)


def _region_doc(name: str, res, mode: str) -> dict:
    if not REGION_NAME.match(name):
        raise SerializationError(
            f"region {name!r} cannot be saved: a saved region name is a qualified module name "
            "(letters, digits, _ and dots); rename the module")
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
        "distilled_outputs": list(m.outputs) if m.outputs is not None else None,
        "arg_mask": list(m.arg_mask),
        "out_dtype": str(m.out_dtype).removeprefix("torch."),
        "kernel": m.kernel,
        "variables": list(res.variables),
        "features": None if m.features is None else [
            {"name": n, "expr": to_text(e)} for n, e in m.features],
        "inputs": None if m.inputs is None else list(m.inputs),
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


#: the largest file ``load`` reads
MAX_FILE_BYTES = 64 * 2**20
#: features (or outputs) of one region: a layer 16 times as wide as a large LLM's hidden state
MAX_WIDTH = 1 << 16
#: equation tokens in one file: each is checked against the grammar (1-3 us a token)
MAX_FILE_TOKENS = 300_000
#: the work of building a file's chosen equations (sympy, then torch code), in token units
#: (``grammar.check``): about a second on a 2-core box; ``load(..., max_work=)`` raises it
MAX_BUILD_WORK = 60_000
#: the same for one chosen equation (common subexpressions of one long equation cost more than
#: linear time to find: 200 function calls build in 0.17 s, 500 in 1.7 s)
MAX_EQUATION_WORK = 25_000


def _read_doc(path, max_work: int = MAX_BUILD_WORK) -> tuple[dict, list[tuple]]:
    if not isinstance(path, (str, os.PathLike)):
        raise SerializationError(f"a symtorch_fx file is named by a path (str or os.PathLike), "
                                 f"got {type(path).__name__}")
    try:
        st = os.stat(path)
        # a FIFO or a device would block or never end: only a regular file is read
        _expect(stat.S_ISREG(st.st_mode), f"{path} is not a regular file")
        _expect(st.st_size <= MAX_FILE_BYTES, f"{path} is {st.st_size} bytes; symtorch_fx files "
                                              f"are at most {MAX_FILE_BYTES} bytes")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
        _expect(len(raw) <= MAX_FILE_BYTES, f"{path} is larger than {MAX_FILE_BYTES} bytes")
    except (OSError, ValueError) as e:
        raise SerializationError(f"cannot read {path}: {e}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SerializationError(f"{path} is not a symtorch_fx file (not UTF-8 text: {e})") from e
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except RecursionError as e:  # the C scanner's guard: nothing deeper is read
        raise SerializationError(f"{path} is not a symtorch_fx file (JSON nested too deeply)") from e
    except ValueError as e:  # JSONDecodeError, NaN/Infinity literals
        raise SerializationError(f"{path} is not a symtorch_fx file (invalid JSON: {e})") from e
    _expect(isinstance(doc, dict) and doc.get("format") == FORMAT,
            f"{path} is not a symtorch_fx file (no 'format': '{FORMAT}' header)")
    _expect(doc.get("version") == VERSION,
            f"{path} has format version {_show(doc.get('version'))}; this symtorch_fx reads "
            f"{VERSION}")
    entries = doc.get("regions")
    _expect(isinstance(entries, list) and entries, f"{path}: field 'regions' lists no regions")
    _expect(_one_of(doc.get("host"), ("graph", "swap", "dynamo")),
            f"{path}: field 'host' is {_show(doc.get('host'))}; expected graph, swap or dynamo")
    _expect(isinstance(doc.get("through_nn", False), bool), f"{path}: field 'through_nn' is not "
                                                            "true or false")
    budget = [MAX_FILE_TOKENS, max_work]
    parsed = [_parse_region(e, path, k, budget) for k, e in enumerate(entries)]
    names = [p[0].name for p in parsed]
    dup = sorted({n for n in names if names.count(n) > 1})
    _expect(not dup, f"{path}: field 'regions' names region(s) {dup} more than once")
    return doc, parsed


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _show(v, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def _results(parsed: list[tuple], device=None) -> tuple[dict, dict]:
    results, modes = {}, {}
    for (region, layout, variables, fronts, arg_mask, dtype, kernel, mode, projection,
         index, derived) in parsed:
        module = SymbolicModule(region.name, layout, variables, arg_mask, dtype,
                                [f.equation.expr for f in fronts], kernel, projection,
                                outputs=index,
                                features=None if derived is None else derived[1],
                                inputs=None if derived is None else derived[0])
        if device is not None:
            module.to(device)
        info = {"projection": projection.describe()} if projection is not None else {}
        if derived is not None:
            info["features"] = describe_features(derived[1])
        results[region.name] = RegionResult(region, variables, fronts, module, info=info)
        modes[region.name] = mode
    return results, modes


def read(path: str | os.PathLike, max_work: int = MAX_BUILD_WORK
         ) -> tuple[dict[str, RegionResult], dict[str, str]]:
    """The equations saved at ``path`` and each region's mode, without a model (for
    ``sfx.backend(equations=path)``)."""
    _, parsed = _read_doc(path, max_work)
    return _results(parsed)


def load(path: str | os.PathLike, model: nn.Module, *, max_work: int = MAX_BUILD_WORK) -> nn.Module:
    """Rebuild the symbolic model saved at ``path`` on ``model`` (the same architecture).

    ``max_work`` bounds the work of building each front's chosen equation (the rest are
    checked and built when first used): the default keeps any load near a second and refuses
    more, with an error that says so; a model with hundreds of long chosen equations that you
    trust may need it raised.

    ``model`` may be the plain callable a file was distilled from (``sfx.compile(fn, ...)``)."""
    doc, parsed = _read_doc(path, max_work)
    model = _model_for(doc, model, path)
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
            host = GraphHost(gm, regions, through_nn, model)
    p = next(model.parameters(), None)
    results, modes = _results(parsed, p.device if p is not None else None)
    for r in regions:  # the first call checks the outputs' shape against the model's own
        if r.kind in ("module", "model"):
            results[r.name].module.verify_against(model.get_submodule(r.module or ""), str(path))
    sym = host.symbolic({k: r.module for k, r in results.items()}, modes)
    return attach(sym, State(host, results, modes))


def _model_for(doc: dict, model, path) -> nn.Module:
    """The model to load onto: ``model``, or a plain callable held as distilled."""
    function = doc.get("function")
    if function is not None:
        flag = function.get("numpy") if isinstance(function, dict) else 0
        _expect(isinstance(function, dict) and set(function) <= {"numpy"}
                and (flag is None or isinstance(flag, bool)),
                f"{path}: field 'function' is {_show(function)}; expected {{'numpy': true, "
                "false or null}")
    if isinstance(model, nn.Module) and not isinstance(model, FunctionModel):
        if function is not None:
            raise SerializationError(
                f"{path} holds the equations of a plain callable; load them on that callable: "
                "sfx.load(path, fn)")
        return model
    if not callable(model):
        raise SerializationError(f"sfx.load needs the model (or callable) the equations were "
                                 f"distilled from, got {type(model).__name__}")
    if function is None:
        raise SerializationError(
            f"{path} holds the equations of a model ({_show(doc.get('model'))}), not of a "
            "plain callable; load them on that model")
    if isinstance(model, FunctionModel):
        return model
    return as_model(model, function.get("numpy"))


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise SerializationError(msg)


def _parse_region(e, path, index: int, budget: list[int]) -> tuple:
    _expect(isinstance(e, dict), f"{path}: regions[{index}] is not an object")
    name = e.get("name")
    _expect(isinstance(name, str) and REGION_NAME.match(name) is not None,
            f"{path}: regions[{index}].name is {_show(name)}; a region name is a qualified "
            "module name (letters, digits, _ and dots, e.g. 'blocks.0.mlp'), optionally '#k'")
    where = f"{path}, region {name!r}"

    def field(key: str, ok, what: str, default=None):
        v = e.get(key, default)
        _expect(ok(v), f"{where}: field {key!r} is {_show(v)}; expected {what}")
        return v

    kind = field("kind", lambda v: _one_of(v, ("module", "pattern", "model")), "module, pattern or model")
    lay = field("layout", lambda v: isinstance(v, dict), "an object")
    ins, outs = lay.get("inputs"), lay.get("outputs")
    _expect(isinstance(ins, list) and 0 < len(ins) <= 64 and all(
        i is None or (_count(i) and i <= 1 << 20) for i in ins),
        f"{where}: field 'layout.inputs' is {_show(ins)}; expected a list of feature counts")
    _expect(outs is None or (_count(outs) and outs <= 1 << 20),
            f"{where}: field 'layout.outputs' is {_show(outs)}; expected a count or null")
    layout = Layout(tuple(ins), outs)
    _expect(layout.n_features <= MAX_WIDTH and layout.n_outputs <= MAX_WIDTH,
            f"{where}: field 'layout' has {layout.n_features} inputs and {layout.n_outputs} "
            f"outputs; at most {MAX_WIDTH} each")
    projection = None
    if e.get("projection") is not None:
        try:
            projection = Projection.from_json(e["projection"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise SerializationError(f"{where}: field 'projection' is malformed ({err})") from err
        _expect(projection.in_basis.shape[0] == layout.n_features
                and projection.out_basis.shape[0] == layout.n_outputs,
                f"{where}: field 'projection' does not fit the region's layout")
    index = e.get("distilled_outputs")
    if index is not None:
        _expect(isinstance(index, list) and 0 < len(index) <= layout.n_outputs
                and layout.outputs is not None and projection is None
                and all(_index(i, layout.n_outputs) for i in index)
                and index == sorted(set(index)),
                f"{where}: field 'distilled_outputs' is {_show(index)}; expected null or "
                f"increasing indices below the region's {layout.n_outputs} outputs (and no "
                "projection)")
        index = tuple(index)
    derived = _parse_features(e, where, layout, projection, budget)
    n_vars = layout.n_features if projection is None else projection.n_inputs
    if derived is not None:
        n_vars = len(derived[1])
    n_outs = (layout.n_outputs if projection is None else projection.n_outputs) \
        if index is None else len(index)
    variables = field("variables", lambda v: isinstance(v, list) and len(v) == n_vars,
                      f"a list of {n_vars} variable names")
    try:
        check_variable_names(variables)
    except EquationSyntaxError as err:
        raise SerializationError(f"{where}: field 'variables': {err}") from err
    dtype = _DTYPES.get(field("out_dtype", lambda v: _one_of(v, _DTYPES), f"one of {sorted(_DTYPES)}"))
    arg_mask = field("arg_mask", lambda v: isinstance(v, list) and len(v) <= 256
                     and all(isinstance(b, bool) for b in v), "a list of true/false")
    mode = field("mode", lambda v: _one_of(v, ("symbolic", "neural")), "symbolic or neural", "symbolic")
    kernel = field("kernel", lambda v: _one_of(v, KERNELS), f"one of {', '.join(KERNELS)}", "auto")
    symbols = {v: variable(v) for v in variables}
    fronts_doc = field("fronts", lambda v: isinstance(v, list) and len(v) == n_outs,
                       f"a list of {n_outs} fronts (one per output)")
    fronts = []
    for k, fd in enumerate(fronts_doc):
        at = f"{where}: fronts[{k}]"
        _expect(isinstance(fd, dict), f"{at} is not an object")
        eqs_doc = fd.get("equations")
        _expect(isinstance(eqs_doc, list) and eqs_doc, f"{at}.equations lists no equations")
        chosen = fd.get("chosen", 0)
        _expect(_index(chosen, len(eqs_doc)), f"{at}.chosen is {_show(chosen)}; expected an "
                                              f"index below {len(eqs_doc)}")
        eqs = []
        for m, q in enumerate(eqs_doc):
            _expect(isinstance(q, dict), f"{at}.equations[{m}] is not an object")
            text = q.get("expr")
            _expect(isinstance(text, str), f"{at}.equations[{m}].expr is not text")
            loss = _loss(q.get("loss", "inf"))
            _expect(loss is not None, f"{at}.equations[{m}].loss is {_show(q.get('loss'))}; "
                                      "expected a number")
            finite = q.get("finite", True)
            _expect(isinstance(finite, bool), f"{at}.equations[{m}].finite is not true or false")
            # the chosen equation is built now; the rest of the front is checked against the
            # grammar (cheap) and built when first used
            try:
                tokens, work = check(text, symbols)
                budget[0] -= tokens
                _expect(budget[0] > 0, f"{path}: the equations are longer in all than "
                                       f"{MAX_FILE_TOKENS} tokens; symtorch_fx does not read a "
                                       "file that large")
                if m == chosen:
                    _expect(work <= MAX_EQUATION_WORK,
                            f"{at}.equations[{m}]: the chosen equation is too long to build "
                            f"({work} > {MAX_EQUATION_WORK} units of work); symtorch_fx does not "
                            "write equations of that size")
                    budget[1] -= work
                    _expect(budget[1] > 0, f"{at}.equations[{m}]: building the chosen equations "
                                           "of this file takes more than max_work allows "
                                           "(about a second per 60,000); pass sfx.load(..., "
                                           "max_work=...) if you trust the file")
                    expr = parse(text, symbols)
                    eqs.append(Equation(expr, complexity(expr), loss, tuple(symbols.values()),
                                        finite))
                    continue
            except EquationSyntaxError as err:
                raise SerializationError(f"{at}.equations[{m}].expr: rejected equation: {err}") \
                    from err
            cx = q.get("complexity")
            _expect(_count(cx) and cx <= MAX_TOKENS, f"{at}.equations[{m}].complexity is "
                                                     f"{_show(cx)}; expected a node count")
            eqs.append(Equation.from_text(text, tuple(symbols.values()), cx, loss, finite))
        out = fd.get("output")
        _expect(isinstance(out, str) and _IDENT.match(out) is not None,
                f"{at}.output is {_show(out)}; expected an identifier")
        rule = fd.get("rule", "")
        _expect(isinstance(rule, str) and len(rule) <= 200 and rule.isprintable(),
                f"{at}.rule is {_show(rule)}; expected a short line of text")
        fronts.append(ParetoFront(name, out, eqs, chosen, rule))
    sites = []
    if kind == "pattern":
        sites_doc = field("sites", lambda v: isinstance(v, list) and v,
                          "a list of the pattern's sites")
        for k, sd in enumerate(sites_doc):
            _expect(isinstance(sd, dict), f"{where}: sites[{k}] is not an object")
            node_names = [sd.get("output"), *_list(sd.get("inputs")), *_list(sd.get("nodes"))]
            _expect(isinstance(sd.get("inputs"), list) and isinstance(sd.get("nodes"), list)
                    and all(isinstance(n, str) and _IDENT.match(n) for n in node_names),
                    f"{where}: sites[{k}] names graph nodes that are not identifiers")
            sites.append(Site(output=sd["output"], inputs=list(sd["inputs"]),
                              nodes=list(sd["nodes"])))
    module = e.get("module")
    if kind == "pattern":
        module = None
    else:
        _expect(isinstance(module, str) and MODULE_PATH.match(module) is not None,
                f"{where}: field 'module' is {_show(module)}; expected a qualified module name")
    ops = field("ops", lambda v: isinstance(v, list) and all(
        isinstance(o, str) and len(o) <= 200 and o.isprintable() for o in v), "a list of op names",
        [])
    region = Region(name=name, kind=kind, spec="loaded", sites=sites or [Site(module=module)],
                    module=module, ops=list(ops))
    return (region, layout, tuple(variables), fronts, tuple(arg_mask), dtype, kernel, mode,
            projection, index, derived)


def _parse_features(e: dict, where: str, layout: Layout, projection, budget: list[int]):
    """A region's derived features: (input names, ((name, expr), ...)), or None."""
    feats, inputs = e.get("features"), e.get("inputs")
    if feats is None and inputs is None:
        return None
    _expect(projection is None, f"{where}: a region with a projection has no 'features'")
    _expect(isinstance(inputs, list) and len(inputs) == layout.n_features,
            f"{where}: field 'inputs' is {_show(inputs)}; expected the names of the region's "
            f"{layout.n_features} input features")
    _expect(isinstance(feats, list) and 0 < len(feats) <= MAX_FEATURES,
            f"{where}: field 'features' is {_show(feats)}; expected a list of 1 to "
            f"{MAX_FEATURES} features")
    try:
        check_variable_names(inputs)
    except EquationSyntaxError as err:
        raise SerializationError(f"{where}: field 'inputs': {err}") from err
    symbols = {v: variable(v) for v in inputs}
    out = []
    for k, fd in enumerate(feats):
        _expect(isinstance(fd, dict) and isinstance(fd.get("name"), str)
                and isinstance(fd.get("expr"), str),
                f"{where}: features[{k}] is {_show(fd)}; expected {{'name': ..., 'expr': ...}}")
        try:
            tokens, work = check(fd["expr"], symbols)
            budget[0] -= tokens
            budget[1] -= work
            _expect(budget[0] > 0 and budget[1] > 0 and work <= MAX_EQUATION_WORK,
                    f"{where}: features[{k}] makes the file's equations longer than "
                    "symtorch_fx reads (see sfx.load(..., max_work=))")
            out.append((fd["name"], parse(fd["expr"], symbols)))
        except EquationSyntaxError as err:
            raise SerializationError(f"{where}: features[{k}].expr: rejected equation: {err}") \
                from err
    try:
        check_variable_names([n for n, _ in out])
    except EquationSyntaxError as err:
        raise SerializationError(f"{where}: field 'features' (names): {err}") from err
    return tuple(inputs), tuple(out)


def _one_of(v, choices) -> bool:
    return isinstance(v, str) and v in choices


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _index(v, n: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n


def _list(v) -> list:
    return v if isinstance(v, list) else []


def _loss(v) -> float | None:
    """A loss as saved: a number, or the text of a non-finite one; None for anything else."""
    if isinstance(v, bool):
        return None
    try:
        if isinstance(v, (int, float)):
            return float(v)
    except OverflowError:  # an integer beyond float range
        return math.inf
    if isinstance(v, str) and v.strip().lower() in ("inf", "+inf", "infinity", "nan"):
        return float(v)
    return None


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
