"""The three verbs and their composition: ``prepare`` -> run data -> ``convert``; ``compile``."""

from __future__ import annotations

import inspect
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import sympy
import torch
import torch.nn as nn

from .errors import (
    EquationSyntaxError,
    RecordingError,
    SymTorchFXError,
    UntraceableModelError,
)
from .expr.equations import Equation, ParetoFront
from .expr.grammar import (
    check_variable_names,
    complexity,
    fresh_names,
    parse,
    reserved,
    rewrite_variables,
    snap_integers,
    tidy,
    to_text,
    variable,
)
from .function import FUNCTION_TARGET, FunctionModel, as_model
from .graph.instrument import Recorder, modes_kept
from .graph.match import Region, bind_module_sites, match_modules, match_patterns
from .graph.rewrite import (
    GraphHost,
    SwapHost,
    SymbolicModule,
    check_outputs,
    output_names,
)
from .graph.targets import normalize
from .graph.trace import trace
from .kernels.lower import Layout
from .model import RegionResult, State, attach, state_of
from .reduce import fit_reduction
from .search import decompose as decomposition
from .search import features as derived_features
from .search import scaling
from .search import select as rules
from .search import units as dimensions
from .search.distill import (
    Job,
    Searched,
    front_of_scored,
    run_jobs,
    score_texts,
    split_rows,
)
from .search.engine import default_restarts, default_transforms
from .search.prune import prune_candidates
from .search.transforms import IDENTITY, TRANSFORMS, check_transforms
from .serialize import write


@dataclass
class PreparedState:
    host: object
    regions: list[Region]
    recorders: dict[str, Recorder]


def _as_module(model, targets) -> tuple[nn.Module, object]:
    """A model and its targets; a plain callable becomes a :class:`FunctionModel` whose target
    is the callable itself."""
    if isinstance(model, nn.Module):
        return model, ("" if targets is None else targets)  # no targets: the model itself
    if not callable(model):
        raise SymTorchFXError(f"expected a torch.nn.Module or a callable, got "
                              f"{type(model).__name__}")
    if targets not in (None, FUNCTION_TARGET, [FUNCTION_TARGET]):
        raise SymTorchFXError(
            f"targets={targets!r}: a plain callable is distilled as a whole; leave targets= out "
            "(to distil part of a computation, make it an nn.Module and name its submodules)")
    return (model if isinstance(model, FunctionModel) else as_model(model)), FUNCTION_TARGET


def _build_host(model: nn.Module, targets) -> GraphHost | SwapHost:
    specs = normalize(targets)
    regions = match_modules(model, specs)
    if isinstance(model, FunctionModel):  # the callable is never traced
        return SwapHost(model, regions)
    patterns = [s for s in specs if s.kind == "pattern"]
    leaves = {r.module for r in regions if r.kind == "module"}
    try:
        gm = trace(model, leaves, through_nn=bool(patterns))
    except UntraceableModelError as e:
        if patterns:
            raise UntraceableModelError(
                f"op-pattern targets ({', '.join(s.describe() for s in patterns)}) need a graph, "
                f"but {e}. Module targets (names, globs, classes, predicates) work on such models "
                "without a graph; or make that code traceable"
            ) from e
        if any(r.kind == "model" for r in regions):
            raise UntraceableModelError(
                f"the whole model is a target, which needs a graph, but {e}. Target its "
                "submodules instead, or distil it as a callable: sfx.compile(lambda x: "
                "model(x), sample_inputs=X)"
            ) from e
        return SwapHost(model, regions)
    bind_module_sites(regions, gm)
    taken = {n for r in regions for s in r.sites for n in s.nodes}
    regions += match_patterns(gm, specs, taken)
    if not regions:
        raise SymTorchFXError("none of the targets is called by the model's forward")
    return GraphHost(gm, regions, through_nn=bool(patterns), model=model)


def prepare(model: nn.Module, targets=None, *, max_samples: int = 10_000,
            seed: int = 0) -> nn.Module:
    """Instrument ``model``: every target region gets a Recorder. Run data through the result,
    then call :func:`convert`. ``model`` itself is not modified.

    ``model`` may also be a plain python callable (``targets`` left out): see :func:`compile`.

    Args:
        targets: what to distil (default: the whole model): a name or glob over qualified
            module names (``"blocks.*.mlp"``; ``*`` is one
            name component, ``**`` any number), a module class, a predicate
            ``(name, module) -> bool``, an op pattern ``sfx.pattern(fn)``, or a list of these.
        max_samples: rows kept per region (a uniform reservoir over everything seen).
        seed: seeds the reservoirs.
    """
    model, targets = _as_module(model, targets)
    host = _build_host(model, targets)
    recorders = {r.name: Recorder(r.name, max_samples, seed + i)
                 for i, r in enumerate(host.regions)}
    for rec in recorders.values():  # a recorder warns when it records in training mode
        rec.train(model.training)
    if isinstance(host, GraphHost):
        by_name = {n.name: n for n in host.root.graph.nodes}
        for r in host.regions:
            recorders[r.name].input_names = [_arg_name(by_name[a]) for a in r.sites[0].inputs]
    else:
        for r in host.regions:
            recorders[r.name].input_names = _forward_names(host.originals[r.name])
    prepared = host.prepared(recorders)
    prepared._sfx_prepared = PreparedState(host, host.regions, recorders)
    return prepared


def _arg_name(node) -> str:
    return str(node.target) if node.op == "placeholder" else node.name


def _forward_names(module: nn.Module) -> list[str]:
    names = getattr(module, "sfx_input_names", None)  # a callable's own arguments
    if isinstance(names, list):
        return names
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def feature_names(input_names: list[str], layout: Layout) -> list[str]:
    """Variable names: ``x0..`` for one input; ``<input>0..`` per input when there are several."""
    n = len(layout.inputs)
    if n == 1:
        prefixes = ["x"]
    else:
        prefixes = []
        for i in range(n):
            p = re.sub(r"[^A-Za-z0-9_]", "_", input_names[i]) if i < len(input_names) else f"in{i}"
            p = p if p and not p[0].isdigit() else f"in{i}"
            while p in prefixes:
                p += "_"
            prefixes.append(p)
    names = []
    for p, w in zip(prefixes, layout.inputs):
        if w is None:
            names.append(p)
        else:
            sep = "_" if p[-1].isdigit() else ""
            names.extend(f"{p}{sep}{j}" for j in range(w))
    return [n + "_" if reserved(n) else n for n in names]


def _prepared_state(prepared) -> PreparedState:
    st = getattr(prepared, "_sfx_prepared", None)
    if not isinstance(st, PreparedState):
        raise SymTorchFXError(
            f"{type(prepared).__name__} was not prepared by symtorch_fx; call "
            "sfx.prepare(model, targets) first and run data through what it returns"
        )
    return st


def convert(
    prepared: nn.Module,
    *,
    engine=None,
    selection="auto",
    noise=None,
    restarts: int | None = None,
    transforms=None,
    prune: bool = True,
    reduce=None,
    executor=None,
    progress: bool = True,
    validation: float = 0.25,
    seed: int = 0,
    kernel: str = "auto",
    allow_wide: bool = False,
    checkpoint: str | os.PathLike | None = None,
    variable_names=None,
    outputs=None,
    features=None,
    decompose: bool = True,
    units=None,
) -> nn.Module:
    """Distill every recorded region and return the symbolic model.

    Args:
        engine: ``sfx.Operon(...)`` (default) or ``sfx.PySR(...)``, or any :class:`Engine`.
        selection: how to choose from each front: ``"auto"`` (the law rather than the network's
            error; see ``search.select``), ``"best"`` (PySR's), ``"accuracy"``, ``"score"``, a
            complexity, a callable, or a list of these (one per output).
        noise: the network's error (MSE) on a region's outputs, when known: a number for every
            output, or ``{region: number or [one per output]}``; ``"auto"`` uses it.
        restarts: independent searches (different seeds) per output, merged into one front;
            None: the engine's own default (``sfx.Operon``: 2 searches of 500 rows each).
        transforms: transforms of each output searched beside the ``restarts`` searches of
            the output itself, their equations mapped back and merged into the same front:
            ``"square"`` (search y^2, keep sqrt), ``"inverse_square"`` (search 1/y^2, keep
            sqrt(1/f)), ``"log"`` (search log|y|, keep exp), ``"inverse"`` (search 1/y, keep
            1/f), ``"logit"`` (an output in (0, 1): search log(y/(1-y)), keep sigmoid(f)),
            and the scaled forms of the first three
            ``"scaled_square"``, ``"scaled_inverse_square"``, ``"scaled_log"``, which search the
            transform of ``y/m(x)``, ``m`` the monomial of the inputs that fits ``y`` best
            (``m c^2`` for a relativistic energy), and keep ``m`` times the inverse. One search
            per entry: a name listed twice is searched twice, with different seeds (or give
            ``{name: searches}``). Each needs an output of one sign (all but ``square``: never
            0) and is skipped for outputs that change sign. None: the engine's own
            (``sfx.Operon``: ``square``, ``inverse_square``, ``scaled_inverse_square``,
            ``log``, ``scaled_log`` and ``logit``, shorter searches than those of the output, see
            ``Operon(transform_generations=)``); ``()``: none.
        prune: also offer simpler forms of each search's candidates near its front: constants
            fixed at 0 or +-1 one at a time, the others refit (``1.0003*x0*x1 + 0.0002`` ->
            ``x0*x1``). They join the front and are chosen like any other equation; the law's
            form, stripped of the constants an engine dresses it in, stops losing to shorter
            look-alikes. Runs in the search's worker.
        reduce: ``sfx.PCA(inputs=a, outputs=b)`` or ``sfx.LearnedProjection(...)`` (or a dict
            ``{target: reduction}``): distill equations between a few components of wide
            inputs and outputs instead of every feature.
        executor: ``"processes"`` (default when there are several jobs), ``"threads"``,
            ``"inline"``, a ``concurrent.futures.Executor``, or a ``dask.distributed.Client``.
        validation: fraction of recorded rows held out to measure each equation's loss.
        kernel: how equations run: ``"auto"`` (the fused Triton kernel on CUDA, the fused C++
            kernel on CPU batches of 4096+ rows, the torch code otherwise), ``"torch"``,
            ``"triton"``, ``"cpp"`` or ``"inductor"``; ``SymbolicModule.kernel`` switches it
            later. See README, "Running the equations".
        allow_wide: distill regions with more than ``MAX_SEARCHES_PER_REGION`` searches
            (wide layers, one search per output) without ``reduce``; refused by default, since
            a 640 -> 2048 -> 640 MLP would queue 1,280 searches.
        checkpoint: where to save the fronts if anything fails after the search (default: a
            file in the temporary directory, named in the error).
        variable_names: the names of a target's input features in its equations, instead of
            those made from its forward's argument names: a list (for every target) or
            ``{target: [names]}``. Identifiers that are not functions or constants of the
            equation grammar; saved with the equations.
        outputs: distil only some outputs of a target (SymTorch's ``output_dim``): a list of
            output indices (``[0, 3]``) for every target, or ``{target: [indices]}``. In
            symbolic mode the other outputs keep coming from the network, which then still runs
            (the region's module takes its output and replaces the distilled columns). The
            fronts are named after the outputs (``y0``, ``y3``). Not with ``reduce``.
        features: derived input features the search sees instead of a target's inputs
            (SymTorch's ``variable_transforms``): ``{name: equation}`` over the target's
            variables (``{"dx": "x0 - x2", "r": "sqrt((x0 - x2)^2 + (x1 - x3)^2)"}``) for every
            target, or ``{target: {name: equation}}``. The equations are written over the
            features; the symbolic module composes them with the features, so it takes the
            target's own inputs. Saved as text. Not with ``reduce``.
        decompose: use the target as an oracle (``search.decompose``): test whether each output
            of 2 or more inputs is a sum or a product of functions of fewer inputs (and which
            inputs it ignores), search each part on its own, and add their composition to the
            front, where it is scored like every other equation. It also looks for the
            scalings the target has (``search.scaling``: ``f(l^a x) = l^k f(x)``, the units of
            its inputs, found without ``units=``) and searches such an output as ``P(x) g(pi)``
            over fewer variables, as with ``units``. For module and whole-model targets whose
            module reproduces its recordings; ``False`` turns it off.
        units: the physical units of a target's inputs and outputs, ``sfx.Units(inputs=["kg",
            "m/s", "m/s"], outputs="J")`` (or ``{target: Units}``), read by a strict grammar
            (``search.units.parse_unit``). Each output is also searched as ``P(x) g(pi)``: ``P``
            a product of powers of the inputs with the output's unit, ``g`` a law of the
            dimensionless groups ``pi`` (Buckingham), which has fewer variables; the result
            joins the front. A PySR engine also gets them as ``X_units``/``y_units``. Not with
            ``features`` or ``reduce``.
    """
    st = _prepared_state(prepared)
    _dry_run(st, outputs)
    results = distill_recordings(
        st.regions, st.recorders, engine=engine, selection=selection, noise=noise,
        restarts=restarts, transforms=transforms, prune=prune, reduce=reduce,
        executor=executor, progress=progress,
        validation=validation, seed=seed, kernel=kernel, allow_wide=allow_wide,
        variable_names=variable_names, outputs=outputs, features=features,
        oracles=_oracles(st) if decompose else None, decompose=decompose, units=units)
    modes = {name: "symbolic" for name in results}
    try:
        sym = st.host.symbolic({k: r.module for k, r in results.items()}, modes)
    except Exception as e:
        _keep_search(e, results, st.host, checkpoint)
        raise
    return attach(sym, State(st.host, results, modes))


def _dry_run(st: PreparedState, outputs=None) -> None:
    """Rewrite the model once with placeholder equations (zeros), before any search runs, so
    that whatever the rewrite can fail on fails now and costs no search."""
    placeholders = {}
    _check_keys(outputs, "outputs", st.regions)
    for r in st.regions:
        rec = st.recorders[r.name]
        if rec.layout is None:
            continue  # distill_recordings reports the target that recorded nothing
        names = tuple(f"v{i}" for i in range(rec.layout.n_features))
        index = _outputs_of(outputs, r.name, rec.layout)
        n = rec.layout.n_outputs if index is None else len(index)
        placeholders[r.name] = SymbolicModule(r.name, rec.layout, names, rec.arg_mask,
                                              rec.out_dtype, [0] * n, "torch", outputs=index)
    if len(placeholders) == len(st.regions):
        st.host.symbolic(placeholders, {name: "symbolic" for name in placeholders})


def _keep_search(e: BaseException, results: dict, host, checkpoint) -> None:
    """A failure after the search: the fronts go with the exception (``e.sfx_results``) and
    into a checkpoint file that ``sfx.load(path, model)`` reads, named in the message."""
    e.sfx_results = results
    path = checkpoint or os.path.join(tempfile.gettempdir(), f"symtorch_fx-{os.getpid()}-"
                                                             f"{int(time.time())}.sfx")
    try:
        write(path, results, {name: "symbolic" for name in results}, host=host.kind,
              class_name=host.class_name, through_nn=getattr(host, "through_nn", False))
    except Exception as err:  # noqa: BLE001 - the original error is the one to report
        e.add_note(f"symtorch_fx: the search finished, but its fronts could not be saved "
                   f"({err}); they are in this exception's .sfx_results")
    else:
        e.add_note(f"symtorch_fx: the search finished; its fronts are saved in {path} "
                   "(sfx.load(path, model) reads them) and in this exception's .sfx_results")


def distill_recordings(
    regions: list[Region],
    recorders: dict[str, Recorder],
    *,
    engine=None,
    selection="auto",
    noise=None,
    restarts: int | None = None,
    transforms=None,
    prune: bool = True,
    reduce=None,
    executor=None,
    progress: bool = True,
    validation: float = 0.25,
    seed: int = 0,
    kernel: str = "auto",
    allow_wide: bool = False,
    variable_names=None,
    outputs=None,
    features=None,
    oracles=None,
    decompose: bool = True,
    units=None,
) -> dict[str, RegionResult]:
    """Recordings -> fronts -> chosen equations -> SymbolicModules, per region. ``oracles``:
    the targets' modules as functions of rows (see ``convert(decompose=)``); the torch.compile
    backend has none, so its outputs are searched whole."""
    if not decompose:
        oracles = None
    from .search.operon import Operon

    engine = Operon() if engine is None else engine
    if not hasattr(engine, "search"):
        raise SymTorchFXError(
            f"engine {engine!r} is not an Engine; use sfx.Operon(...) or sfx.PySR(...)"
        )
    engine.check()
    if restarts is None:
        restarts = default_restarts(engine)
    if not isinstance(restarts, int) or restarts < 1:
        raise SymTorchFXError(f"restarts must be a positive integer, got {restarts!r}")
    transforms = check_transforms(default_transforms(engine) if transforms is None else transforms)
    if not isinstance(prune, bool):
        raise SymTorchFXError(f"prune must be True or False, got {prune!r}")

    _check_keys(variable_names, "variable_names", regions)
    _check_keys(outputs, "outputs", regions)
    _check_units(units, regions)
    grouped: dict[tuple[str, int], tuple] = {}  # (prefactor and groups, their rows) per output
    plans: dict[tuple[str, int], tuple] = {}
    asks: list[tuple] = []  # outputs to decompose, once the width is known to be fine
    if derived_features.by_target(features):
        _check_keys(features, "features", regions)
    data, jobs = {}, []
    for ri, region in enumerate(regions):
        rec = recorders[region.name]
        X, Y = rec.data()
        if rec.n_nonfinite:
            warnings.warn(
                f"target {region.name!r}: {rec.n_nonfinite} of {rec.n_rows + rec.n_nonfinite} "
                "recorded rows contained NaN or inf and were dropped",
                stacklevel=3,
            )
        if len(X) < 4:
            raise RecordingError(
                f"only {len(X)} row(s) recorded for target {region.name!r}; run more data through "
                "the prepared model (at least a few hundred rows give useful equations)"
            )
        index = _outputs_of(outputs, region.name, rec.layout)
        if index is not None:
            Y = Y[:, list(index)]
        projection = fit_reduction(reduce, X, Y, region.name)
        if projection is not None and index is not None:
            raise SymTorchFXError(
                f"target {region.name!r}: outputs= and reduce= cannot be combined (the equations "
                "of a reduction are over its components); drop one of them for this target")
        spec = derived_features.per_target(features, region.name)
        labels = _feature_labels(variable_names, region.name, spec, rec.layout.n_features)
        given = _given_names(None if labels else variable_names, region.name,
                             rec.layout.n_features, projection)
        derived = None
        if projection is None:
            names = given or feature_names(getattr(rec, "input_names", []), rec.layout)
            outs = output_names(rec.layout, index)
            if spec is not None:
                parsed = derived_features.parse_features(spec, names, region.name, rec.layout)
                if labels:
                    parsed = _relabel(parsed, labels, region.name, rec.layout.n_features)
                derived = (tuple(names), parsed)
                X, Y = derived_features.derive(derived[1], names, X, Y, region.name)
                names = [n for n, _ in derived[1]]
        elif derived_features.per_target(features, region.name) is not None:
            raise SymTorchFXError(
                f"target {region.name!r}: features= and reduce= cannot be combined; drop one of "
                "them for this target")
        else:
            X, Y = projection.inputs(X), projection.targets(Y)
            names = [f"z{i}" for i in range(X.shape[1])]
            outs = [f"w{k}" for k in range(Y.shape[1])]
        train, val = split_rows(len(X), validation, seed + ri)
        data[region.name] = (X, Y, names, outs, train, val, projection, index, derived)
        oracle = None
        if oracles and projection is None and derived is None and X.shape[1] >= 2:
            oracle = _checked_oracle(oracles.get(region.name), X, Y, index)
        spec = _units_of(units, region.name)
        if spec is not None and (projection is not None or derived is not None):
            raise SymTorchFXError(
                f"target {region.name!r}: units= applies to the target's own inputs; it cannot "
                "be combined with features= or reduce= (drop one of them for this target)")
        if spec is not None and len(spec.inputs) != X.shape[1]:
            raise SymTorchFXError(
                f"target {region.name!r}: Units gives {len(spec.inputs)} input units, but the "
                f"target has {X.shape[1]} input features ({', '.join(names)}); give one per "
                "feature")
        for k in range(Y.shape[1]):
            unit_k = None
            if spec is not None:
                n_all = rec.layout.n_outputs
                unit_k = spec.output(k if index is None else index[k], n_all)
            for r in range(restarts):
                jobs.append(Job(region.name, k, r, X[train], Y[train, k], names,
                                seed=_job_seed(seed, ri, k, r), prune=prune,
                                holdout=(X[val], Y[val, k]),
                                units=None if spec is None else (spec.inputs, unit_k)))
            for j, name in enumerate(transforms):
                t = TRANSFORMS[name]
                if t.applies(Y[:, k]):
                    r = restarts + j
                    jobs.append(Job(region.name, k, r, X[train], Y[train, k], names,
                                    seed=_job_seed(seed, ri, k, r), transform=name,
                                    sign=t.sign(Y[:, k]), prune=prune,
                                    holdout=(X[val], Y[val, k])))
            if oracle is not None and k < MAX_DECOMPOSED_OUTPUTS:
                asks.append((ri, region, k, oracle, X, Y, train, val, names, index,
                             spec is not None))
            if spec is not None:
                plan = _dimensionless(spec.inputs, unit_k, X, Y[:, k], train, names,
                                      region.name, k)
                if plan is not None:
                    grouped[(region.name, k)] = plan
                    G, Ly, gnames = plan.rows, plan.y, plan.names
                    if G.shape[1]:
                        jobs += _reduced_jobs(region.name, k, restarts + len(transforms), G,
                                              Ly, gnames, train, val, transforms, seed, ri,
                                              prune, dimensionless=True)

    _check_width(jobs, allow_wide)
    searched = run_jobs(engine, jobs, executor=executor, progress=progress)
    # the decomposition, for the outputs whose own searches stayed far from the network
    parts: list[Job] = []
    best: dict[tuple[str, int], float] = {}  # each output's best held-out loss so far
    for j, s in zip(jobs, searched):
        for c in s.scored or []:
            key = (j.region, j.output)
            best[key] = min(best.get(key, np.inf), c.loss)
    for ri, region, k, oracle, X, Y, train, val, names, index, has_units in asks:
        floor = _noise_for(noise, region.name, Y.shape[1], index)[k]
        key = (region.name, k)
        plan = _decompose(oracle, k, X, Y[:, k], train, floor, _job_seed(seed, ri, k, 0))
        # the scalings the output has (its units, found), unless the user gave the units
        scaled = None if has_units else _scaled(oracle, k, X, Y[:, k], train, floor,
                                                _job_seed(seed, ri, k, 1), names)
        if plan is None and scaled is None:
            continue
        if plan is not None:
            plans[key] = plan
        if scaled is not None:
            grouped[key] = scaled
        estimate = _oracle_estimate(plan, scaled, Y[train, k])
        # the output's own searches reached the network: the parts are not searched, and the
        # output over its scalings' groups only as it is, not through the transforms (one
        # search of fewer variables: a law the searches reached only in a bloated form, as
        # Feynman I.16.6 and I.37.4 at some seeds, is short over the groups; searching the
        # groups' transforms as well gained no law on the 1-3 variable laws it was tried on,
        # and cost up to 70% more time on one)
        reached = _reached_network(best.get(key, np.inf), estimate, Y[train, k])
        if plan is not None:
            plan[0].skipped = reached
        r = restarts + len(transforms)
        if scaled is not None and _worth_searching(scaled, plan, X.shape[1]):
            grouped_jobs = _reduced_jobs(region.name, k, r, scaled.rows, scaled.y,
                                         scaled.names, train, val,
                                         () if reached else transforms, seed, ri, prune,
                                         dimensionless=True)
            parts += grouped_jobs
            r += len(grouped_jobs)
            scaled.searched = tuple(j.transform for j in grouped_jobs)
        if plan is None or reached:
            continue
        for li, (leaf, LX, Ly) in enumerate(plan[1]):
            # each part as it is, and through the output transforms that apply to it (a part
            # exp(-m g x/(k T)) is a monomial after a log)
            leaf_jobs = _reduced_jobs(region.name, k, r, LX, Ly,
                                      decomposition.leaf_names(leaf, list(names)), train, val,
                                      transforms, seed, ri, prune, part=li)
            parts += leaf_jobs
            r += len(leaf_jobs)
    if parts:
        searched = searched + run_jobs(engine, parts, executor=executor, progress=progress,
                                       extra=True)
        jobs = jobs + parts
    try:
        return _results_of(regions, recorders, data, jobs, searched, engine, selection, noise,
                           kernel, plans, grouped)
    except Exception as e:
        e.sfx_searched = list(zip(jobs, searched))
        e.add_note("symtorch_fx: the search finished; every search's candidates are in this "
                   "exception's .sfx_searched (job, result) pairs")
        raise


def _reduced_jobs(region: str, k: int, r: int, X, y, names, train, val, transforms, seed,
                  ri: int, prune: bool, **kind) -> list[Job]:
    """The searches of output ``k`` reduced to fewer variables (a decomposition's part,
    ``part=``, or the output over its groups, ``dimensionless=True``): ``y`` over ``X`` as it
    is and through each output transform that applies to it (a part ``exp(-m g x/(k T))`` is
    a monomial after a log), numbered from ``r``."""
    out = []
    for name in (IDENTITY, *transforms):
        t = TRANSFORMS[name]
        if name != IDENTITY and not t.applies(y):
            continue
        n = r + len(out)
        out.append(Job(region, k, n, X[train], y[train], names, seed=_job_seed(seed, ri, k, n),
                       transform=name, sign=t.sign(y), prune=prune, holdout=(X[val], y[val]),
                       **kind))
    return out


def _results_of(regions, recorders, data, jobs, searched, engine, selection, noise,
                kernel, plans=None, grouped=None) -> dict[str, RegionResult]:
    by_output: dict[tuple[str, int], list[tuple[Job, Searched]]] = {}
    for job, s in zip(jobs, searched):
        by_output.setdefault((job.region, job.output), []).append((job, s))

    results = {}
    for region in regions:
        rec = recorders[region.name]
        X, Y, names, outs, train, val, projection, index, derived = data[region.name]
        symbols = [variable(n) for n in names]
        fronts = []
        for k, out_name in enumerate(outs):
            runs = by_output[(region.name, k)]
            whole = [(j, s) for j, s in runs if j.whole]
            plan = (plans or {}).get((region.name, k))
            searched_parts = plan is not None and not plan[0].skipped
            composed = [] if plan is None else _composed(plan, runs, X, Y[:, k], train, val,
                                                         names, symbols, runs[0][0].prune)
            units_plan = (grouped or {}).get((region.name, k))
            dimensionless = ([] if units_plan is None else
                             _dimensionless_composed(units_plan, runs, X, Y[:, k], train, val,
                                                     names, symbols))
            front = front_of_scored([c for _, s in whole for c in s.scored] + composed
                                    + dimensionless, symbols, Y[train, k], Y[val, k],
                                    [b for _, s in whole for b in s.bad_syntax])
            info = {"searches": search_records(runs, front)}
            if units_plan is not None:
                groups = units_plan.groups
                described = {
                    "prefactor": groups.prefactor_text(names),
                    "groups": dict(zip(units_plan.names, groups.group_texts(names))),
                    "composed": [c.text for c in dimensionless]}
                if units_plan.scalings is None:
                    info["units"] = described
                else:  # found on the network
                    info["scaling"] = {
                        "scalings": units_plan.scalings.describe(list(names)), **described,
                        "searched": list(units_plan.searched)}
            if plan is not None:
                info["decomposition"] = plan[0].describe(list(names)) + (
                    "" if searched_parts else " (parts not searched: the output's own "
                    "searches reached the network)")
                info["composed"] = [c.text for c in composed]
                unused = decomposition.ignored(plan[0])
                if unused:
                    info["ignored_inputs"] = [names[i] for i in unused]
            est = _oracle_estimate(plan, units_plan, Y[train, k])
            if est is not None:
                info["network_error_estimate"] = est
            fronts.append(ParetoFront(region.name, out_name, front, info=info))
        floors = _noise_for(noise, region.name, len(fronts), index)
        for front, rule, floor in zip(fronts, rules.per_output(selection, len(fronts)), floors):
            rules.apply(front, rule, floor)
        module = SymbolicModule(region.name, rec.layout, tuple(names), rec.arg_mask,
                                rec.out_dtype, [f.equation.expr for f in fronts], kernel,
                                projection, outputs=index,
                                features=None if derived is None else derived[1],
                                inputs=None if derived is None else derived[0])
        if rec.device is not None and rec.device.type != "cpu":
            module.to(rec.device)  # where the region ran
        info = {"rows": len(X), "engine": repr(engine)}
        if projection is not None:
            info["projection"] = projection.describe()
        if derived is not None:
            info["features"] = derived_features.describe(derived[1])
        results[region.name] = RegionResult(region, tuple(names), fronts, module, info=info)
    return results


def _oracles(st: PreparedState) -> dict:
    """For each module or whole-model region, its neural module as a function of rows of
    features (numpy (N, F) -> (N, K)), for ``search.decompose``; checked against the
    recordings before use (:func:`_checked_oracle`)."""
    out = {}
    for r in st.regions:
        rec = st.recorders[r.name]
        if r.kind not in ("module", "model") or rec.layout is None:
            continue
        host = st.host
        try:
            module = (host.originals[r.name] if isinstance(host, SwapHost)
                      else host.model.get_submodule(r.module or ""))
        except (AttributeError, KeyError):
            continue
        out[r.name] = _oracle(module, rec)
    return out


def _oracle(module: nn.Module, rec: Recorder):
    layout, dtypes, device = rec.layout, rec.input_dtypes, rec.device

    def f(rows: np.ndarray) -> np.ndarray:
        args, at = [], 0
        for w, dt in zip(layout.inputs, dtypes):
            cols = rows[:, at] if w is None else rows[:, at:at + w]
            at += 1 if w is None else w
            args.append(torch.as_tensor(np.ascontiguousarray(cols), dtype=dt, device=device))
        with modes_kept(module), torch.no_grad():
            module.eval()
            out = module(*args)
        return out.detach().double().cpu().reshape(len(rows), -1).numpy()

    return f


#: the decomposition's parts are searched only for outputs whose own searches found nothing
#: within ``DECOMPOSE_NEAR`` times the network's estimated error (or ``DECOMPOSE_FLOOR`` of the
#: output's variance, for a target that is exactly a law): a second round, when it is needed
DECOMPOSE_NEAR = 10.0
DECOMPOSE_FLOOR = 1e-10
#: outputs of one target that are decomposed (the first ones; a wide layer is distilled
#: between components, see ``reduce``)
MAX_DECOMPOSED_OUTPUTS = 8
#: the longest the decomposition's queries of a target may take (estimated from a timed call)
ORACLE_SECONDS = 10.0
ORACLE_ROWS = 1024
#: a first timed call (16 rows) quicker than this is mostly overhead: timed again on more rows
ORACLE_QUICK_CALL = 0.05


#: a leaf's equation is within the network's error when its held-out MSE is at most this
#: multiple of the decomposition's estimate, in the leaf's units (``_composed``)
LEAF_ADEQUATE = 4.0


def _network_error_estimate(root, y_train: np.ndarray) -> float | None:
    """The decomposition's estimate of the network's error (``front.info``), not below float64
    rounding of the output, or None."""
    est = decomposition.network_error(root)
    return None if est is None else max(est, DECOMPOSE_FLOOR * float(np.var(y_train)))


def _reached_network(best: float, estimate: float | None, y_train: np.ndarray) -> bool:
    """Whether an output's own searches (their best held-out loss) came within
    ``DECOMPOSE_NEAR`` of the network's estimated error (or of ``DECOMPOSE_FLOOR`` of the
    output's variance, without an estimate): its decomposition's parts are then not searched.
    The one rule of ``convert`` and of the benchmark's rebuilt fronts."""
    reach = estimate if estimate is not None else DECOMPOSE_FLOOR * float(np.var(y_train))
    return best <= DECOMPOSE_NEAR * reach


def _checked_oracle(oracle, X: np.ndarray, Y: np.ndarray, index):
    """``oracle`` if it gives the recorded outputs on recorded rows (the module runs on rows
    alone: no sequence dimension, no other argument) and is quick enough to ask the
    decomposition's questions (``ORACLE_SECONDS``), else None."""
    if oracle is None:
        return None
    rows = X[: min(len(X), 64)]
    # the questions are new rows (recorded values of each input, mixed): a callable that
    # remembers its answers is timed on rows it has not seen. A call of 16 rows first (a
    # language model behind a callable is refused on it); when that call is quick, its time is
    # mostly the call's own overhead, and the questions come in batches of about a thousand
    # rows: the rate is then measured on ``ORACLE_ROWS`` rows, best of three (16 rows refused a
    # 9-input MLP that answers all the questions in a few seconds)
    mixed = np.column_stack([np.random.default_rng(0).permutation(X[:, i])[:ORACLE_ROWS]
                             for i in range(X.shape[1])])
    n_queries = decomposition.queries(X.shape[1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = oracle(rows)
            t0 = time.perf_counter()
            oracle(mixed[:16])
            first = time.perf_counter() - t0
            per_row = first / len(mixed[:16])
            if per_row * n_queries > ORACLE_SECONDS and first < ORACLE_QUICK_CALL \
                    and len(mixed) > 16:
                times = []  # the best of three: the first calls also pay one-time warm-ups
                for _ in range(3):
                    t0 = time.perf_counter()
                    oracle(mixed[16:])
                    times.append(time.perf_counter() - t0)
                per_row = min(times) / len(mixed[16:])
    except Exception:  # noqa: BLE001 - a module that needs more than rows is not an oracle
        return None
    if per_row * n_queries > ORACLE_SECONDS:
        return None  # too slow to ask (a language model behind a callable, say)
    if index is not None:
        if got.shape[1] <= max(index):
            return None
        got = got[:, list(index)]
    want = Y[: len(rows)]
    if got.shape != want.shape:
        return None
    scale = np.abs(want).max() or 1.0
    if not np.allclose(got, want, rtol=1e-4, atol=1e-5 * scale):
        return None
    if index is not None:
        cols = list(index)
        return lambda r: oracle(r)[:, cols]
    return oracle


def _fits_scored(X, y, names, symbols, train, val, noise: float | None = None) -> list:
    """The sparse polynomials and rationals fitted to ``y`` over ``X`` on the training rows
    (``decompose.polynomial_candidates``: none beyond ``POLY_INPUTS`` variables), scored on
    the held-out ones. ``noise``: the network's error (RMS) in ``y``'s units, when known."""
    fits = decomposition.polynomial_candidates(X[train], y[train], names, noise=noise)
    poly, _ = score_texts(fits, symbols, X[val], y[val], X[train], canonical=True,
                          scale=float(np.std(y[train])) or 1.0)
    return [s for _, s in poly]


def _oracle_tolerance(y_train, noise) -> tuple[float, float]:
    """(the output's spread, the tolerance of the oracle's tests relative to it): 2%, or three
    times the network's error (``noise``, an MSE) when that is larger."""
    spread = float(np.std(y_train)) or 1.0
    return spread, 0.02 if not noise else max(0.02, 3 * float(np.sqrt(noise)) / spread)


def _decompose(oracle, k: int, X, y, train, noise, seed):
    """The decomposition of output ``k`` (``search.decompose.plan``) and its leaves' rows, or
    None when the output neither splits nor has a symmetry. The tolerance is the larger of 2% of the output's
    spread and three times the network's error, when known."""
    spread, tol = _oracle_tolerance(y[train], noise)
    fk = (lambda r: oracle(r)[:, k])
    try:
        tree = decomposition.plan(fk, X[train], tol=tol, seed=seed)
    except (FloatingPointError, ValueError, RuntimeError):
        return None
    if not decomposition.reduced(tree):
        return None
    leaves = [(leaf, *decomposition.leaf_rows(X, leaf)) for leaf in tree.leaves()]
    return tree, leaves


def _composed(plan, runs, X, y, train, val, names, symbols, prune: bool = True) -> list:
    """The decomposition's candidates: each leaf's equations (the one ``auto`` picks and the
    most accurate), composed into equations of the output and scored on its held-out rows.
    A leaf's equations are its searches' (when the parts were searched) and the polynomials
    fitted to it and to its transforms (``decompose.polynomial_candidates``), which cost a few
    least-squares fits: where every leaf has few enough variables, the parts are composed
    even when they were not searched. The polynomial ``auto`` picks among the fits alone is
    offered too: a leaf's values carry the network's error, in the leaf's own units, and a
    look-alike of the same length can fit that error better than the law does
    (``17.9 s^4/cos(exp(0.53 s))`` beat ``1/(0.161/s^2 - 0.16)^2`` on a part of Feynman
    I.32.17). So is the simplest equation of the leaf's front within ``LEAF_ADEQUATE`` of the
    network's error in the leaf's units (the decomposition's estimate over the leaf's scale
    squared): a linear part ``0.399 x + 0.197`` of Feynman II.36.38 lost its ``auto`` pick to
    a fit of five constants that follows the network's error in the part 4000 times closer.
    Which composition describes the output is for the output's front to say."""
    tree, leaves = plan
    noise = _network_error_estimate(tree, y[train])
    picks = []
    for li, (leaf, LX, Ly) in enumerate(leaves):
        searched = [c for j, s in runs if j.part == li for c in (s.scored or [])]
        lnames = decomposition.leaf_names(leaf, list(names))
        lsyms = [variable(n) for n in lnames]
        # the network's error in the leaf's units (an MSE), when the decomposition has one
        own = noise / leaf.scale ** 2 if noise is not None and leaf.scale > 0 else None
        fitted = _fits_scored(LX, Ly, lnames, lsyms, train, val,
                              None if own is None else float(np.sqrt(own)))
        choices = []
        for scored, rules_, adequate in ((searched + fitted, ("auto", "accuracy"), True),
                                         (fitted, ("auto",), False)):
            front = front_of_scored(scored, lsyms, Ly[train], Ly[val]) if scored else []
            if any(e.finite for e in front):
                chosen = [rules.pick(front, rule) for rule in rules_]
                if adequate and own is not None:
                    chosen += _adequate(front, own)
                choices += [decomposition.in_inputs(front[i].text(), leaf, list(names))
                            for i in chosen]
        if not choices:
            return []
        picks.append((id(leaf), choices))
    base = {lid: choices[0] for lid, choices in picks}
    combos = [base, {lid: choices[1] for lid, choices in picks}]  # each has auto and accuracy
    for lid, choices in picks:  # one leaf at another of its choices, the others as auto picks
        combos += [{**base, lid: c} for c in dict.fromkeys(choices[1:]) if c != choices[0]]
    texts = list(dict.fromkeys(t for t in (decomposition.compose(tree, c) for c in combos) if t))
    if prune:  # the anchors leave small constants where parts meet: offer the forms without
        texts += prune_candidates(texts, X[train], y[train], list(names), None, 0)
    found, _ = score_texts(texts, symbols, X[val], y[val], X[train], canonical=True,
                           scale=float(np.std(y[train])) or 1.0)
    return [s for _, s in found]


def _adequate(front: list[Equation], noise: float) -> list[int]:
    """``[i]``: the simplest finite equation of ``front`` whose loss is within
    ``LEAF_ADEQUATE`` of ``noise`` (an MSE in the front's units), or ``[]``."""
    return [i for i, e in enumerate(front) if e.finite and e.loss <= LEAF_ADEQUATE * noise][:1]


def _check_units(units, regions: list[Region]) -> None:
    """``units=``: a :class:`search.units.Units`, or ``{target: Units}``."""
    if units is None:
        return
    if isinstance(units, dict):
        bad = [v for v in units.values() if not isinstance(v, dimensions.Units)]
    else:
        bad = [] if isinstance(units, dimensions.Units) else [units]
    if bad:
        raise SymTorchFXError(
            f"units= takes sfx.Units(inputs=[...], outputs=...) or {{target: sfx.Units(...)}}, "
            f"got {bad[0]!r}")
    if isinstance(units, dict):
        _check_keys(units, "units", regions)


def _units_of(units, region: str):
    return units.get(region) if isinstance(units, dict) else units


@dataclass
class GroupedPlan:
    """An output searched over fewer variables as ``P(x) g(pi)`` (``search.units``): the
    prefactor and groups, the groups' values on the recorded rows (``rows``) and ``y / P``
    there (``y``), the groups' names; ``scalings`` when the groups come from scalings found on
    the network (``search.scaling``) rather than from ``units=``, and ``searched``: how ``g``
    was searched (``IDENTITY`` for ``g`` as it is, the transforms' names; empty when ``g``
    was only fitted)."""

    groups: dimensions.Groups
    rows: np.ndarray
    y: np.ndarray
    names: list[str]
    scalings: scaling.Scalings | None = None
    searched: tuple[str, ...] = ()
    #: the next best prefactors (``Groups.ranked``) and ``y / P`` for each: ``g`` is fitted
    #: (not searched) for them too
    others: list = field(default_factory=list)


#: how many prefactors of the groups ``g`` is fitted for (the best is also searched)
PREFACTORS = 3


def _dimensionless(input_units, output_unit, X, y, train, names, region: str, k: int):
    """The :class:`GroupedPlan` of output ``k`` over its dimensionless groups, or None (with a
    warning saying why) when the units allow none or the rows do not (an input raised to a
    negative power is 0 somewhere)."""
    groups = dimensions.groups(input_units, output_unit)
    if groups is None:
        warnings.warn(
            f"target {region!r}, output {k}: no product of powers of the inputs has the unit "
            f"{output_unit!r} (a dimensional constant is missing from the inputs, or a unit is "
            "wrong); the output is searched without its units", stacklevel=4)
        return None
    plan = _grouped(groups, X, y, train, names)
    if plan is None:
        warnings.warn(
            f"target {region!r}, output {k}: the dimensionless groups are not finite on every "
            "recorded row (an input raised to a negative or fractional power is 0 or negative "
            "there); the output is searched without its units", stacklevel=4)
    return plan


def _grouped(groups, X, y, train, names, scalings=None) -> GroupedPlan | None:
    """``groups`` with the prefactor that carries most of ``y`` (``Groups.fitted``) and their
    values, or None where they are not finite (or the prefactor is 0) on some recorded row;
    the next best prefactors (``Groups.ranked``) that are finite as ``others``."""
    ranked = []
    for option in groups.ranked(X[train], y[train], count=PREFACTORS):
        G, P = option.values(X)
        if not (np.all(np.isfinite(G)) and np.all(np.isfinite(P)) and np.all(P != 0)):
            continue
        with np.errstate(all="ignore"):
            Ly = y / P
        if np.all(np.isfinite(Ly)):
            ranked.append((option, G, Ly))
    if not ranked:
        return None
    best, G, Ly = ranked[0]
    return GroupedPlan(best, G, Ly, fresh_names("pi", G.shape[1], names), scalings,
                       others=[(o, oy) for o, _, oy in ranked[1:]])


def _scaled(oracle, k: int, X, y, train, noise, seed, names) -> GroupedPlan | None:
    """The :class:`GroupedPlan` of output ``k`` over the groups its scalings leave
    (``search.scaling``), or None when it has none."""
    spread, tol = _oracle_tolerance(y[train], noise)
    # extra candidates after the output's searches: whatever goes wrong here (a module that
    # raises off its recorded rows, sympy on odd exponents) leaves the output as it is
    try:
        found = scaling.find(lambda r: oracle(r)[:, k], X[train], tol, spread, seed)
        groups = None if found is None else found.groups()
        return None if groups is None else _grouped(groups, X, y, train, names, found)
    except Exception:  # noqa: BLE001
        return None


def _worth_searching(scaled: GroupedPlan, plan, n_inputs: int) -> bool:
    """Whether ``g`` of the scalings has fewer variables than the decomposition's largest part
    (than the output, without one): else its search repeats theirs."""
    if not scaled.names:
        return False  # no group: the output is the prefactor times a constant, fitted
    most = (max((len(leaf.units) for leaf, _, _ in plan[1]), default=0) if plan is not None
            else n_inputs)
    return len(scaled.names) < most


def _oracle_estimate(plan, scaled: GroupedPlan | None, y_train) -> float | None:
    """The network's error (an MSE) as the oracle's tests estimate it: the smaller of the
    decomposition's and the scalings' finite tests' (a difference of two evaluations: 1.4
    times the error). Each test's residual is the network's error plus how far the law is from
    the structure tested, so the smaller is the closer."""
    ests = [] if plan is None else [_network_error_estimate(plan[0], y_train)]
    if scaled is not None and scaled.scalings is not None:
        ests.append(max(scaled.scalings.residual ** 2 / 2,
                        DECOMPOSE_FLOOR * float(np.var(y_train))))
    ests = [e for e in ests if e is not None]
    return min(ests) if ests else None


def _dimensionless_composed(units_plan: GroupedPlan, runs, X, y, train, val, names,
                            symbols) -> list:
    """The equations over the groups, composed into equations of the inputs (``P(x) *
    g(pi(x))``, every equation of their front) and scored on the output's rows. The
    equations of ``g`` are its searches' and, for one or two groups, the polynomials and
    rationals fitted to it (``decompose.polynomial_candidates``), which cost a few
    least-squares fits and are there even when ``g`` was not searched; the same fits of ``g``
    for the next best prefactors (``GroupedPlan.others``) too."""
    groups, G, Ly, gnames = units_plan.groups, units_plan.rows, units_plan.y, units_plan.names
    prefactor = groups.prefactor_text(names)
    if not gnames:  # no group: the output is the prefactor times a constant
        P = y / Ly
        c = float(np.dot(P[train], y[train]) / np.dot(P[train], P[train]))
        texts = [f"({c!r})*({prefactor})"]
    else:
        gsyms = [variable(n) for n in gnames]
        definitions = dict(zip(gnames, groups.group_texts(names)))
        searched = [c for j, s in runs if j.dimensionless for c in (s.scored or [])]
        texts = []
        # g of the best prefactor (searched, when it was, and fitted), then g of the next
        # best ones (fitted): g of another prefactor can be of the fits' forms where this is not
        for options, gy, scored in ((groups, Ly, searched),
                                    *((o, oy, []) for o, oy in units_plan.others)):
            scored = scored + _fits_scored(G, gy, list(gnames), gsyms, train, val)
            if not scored:
                continue
            front = front_of_scored(scored, gsyms, gy[train], gy[val])
            texts += [f"({options.prefactor_text(names)})*"
                      f"({rewrite_variables(e.text(), definitions, names)})" for e in front]
        if not texts:
            return []
        texts += _cancelled(texts, symbols, float(np.std(y[train])) or 1.0)
    found, _ = score_texts(texts, symbols, X[val], y[val], X[train],
                           scale=float(np.std(y[train])) or 1.0)
    return [s for _, s in found]


#: composed equations of at most this complexity are also offered in cancelled form
CANCEL_COMPLEXITY = 40
#: before cancelling, a composed equation's constants within this fraction of a nonzero
#: integer are also tried as that integer (a search's ``1.00003*x`` blocks the cancellation
#: that ``x`` allows)
SNAP_TOLERANCE = 0.01


def _cancelled(texts: list[str], symbols, scale: float) -> list[str]:
    """The composed equations that are shorter once sympy factors or cancels them
    (``c*(c/v + c/u)/(c^2/(u*v) + 1)`` is ``c^2*(u + v)/(c^2 + u*v)``): a group's powers and
    the prefactor's often cancel, and the front should weigh the law at its own length. Each
    is tried as found and with its constants within ``SNAP_TOLERANCE`` of a nonzero integer
    snapped to it; the snapped form is offered only when it cancels to a shorter one, and its
    loss is measured like any candidate's, so a constant that mattered costs it its place."""
    by_name = {s.name: s for s in symbols}
    out = []
    for text in texts:
        try:  # sympy's polynomial code raises many kinds of errors: a form not offered
            expr = tidy(parse(text, by_name), scale)
            length = complexity(expr)
            if length > CANCEL_COMPLEXITY:
                continue
            snapped = snap_integers(expr, SNAP_TOLERANCE, zero=False)
            for form in dict.fromkeys((expr, snapped)):
                short = min((sympy.factor(form), sympy.cancel(form)), key=complexity)
                if complexity(short) < length:
                    out.append(to_text(short))
        except Exception:  # noqa: BLE001
            continue
    return list(dict.fromkeys(out))


def _check_keys(per_target, what: str, regions: list[Region]) -> None:
    """A ``{target: value}`` option names only targets."""
    if isinstance(per_target, dict):
        unknown = sorted(set(per_target) - {r.name for r in regions}, key=str)
        if unknown:
            raise SymTorchFXError(
                f"{what} names {unknown}, which are not targets; the targets are: "
                f"{', '.join(repr(r.name) for r in regions)}")


def _outputs_of(outputs, region: str, layout: Layout) -> tuple[int, ...] | None:
    """The output indices ``outputs=`` distils for ``region`` (None: all of them)."""
    if isinstance(outputs, dict):
        outputs = outputs.get(region)
    if outputs is None:
        return None
    return check_outputs(outputs, layout, region)


def _feature_labels(variable_names, region: str, spec, n_inputs: int) -> list | None:
    """SymTorch's spelling: an unnamed list of features with ``variable_names`` naming the
    features (not the inputs). The names, when ``variable_names`` is that; else None."""
    if spec is None or not derived_features.unnamed(spec):
        return None
    names = variable_names.get(region) if isinstance(variable_names, dict) else variable_names
    if not isinstance(names, (list, tuple)) or len(names) == n_inputs:
        return None
    return list(names)


def _relabel(parsed, labels: list, region: str, n_inputs: int):
    if len(labels) != len(parsed):
        raise SymTorchFXError(
            f"variable_names gives {len(labels)} names for {region!r}, which has {n_inputs} "
            f"inputs and {len(parsed)} features; give one name per input, or per feature (or "
            "name the features: features={name: feature})")
    try:
        check_variable_names(labels)
    except EquationSyntaxError as e:
        raise SymTorchFXError(f"variable_names for {region!r}: {e}") from e
    return tuple((str(n), e) for n, (_, e) in zip(labels, parsed))


def _given_names(variable_names, region: str, n: int, projection) -> list[str] | None:
    """The variable names the user gave for ``region`` (checked), or None."""
    if variable_names is None:
        return None
    if isinstance(variable_names, dict):
        names = variable_names.get(region)
        if names is None:
            return None
    else:
        names = variable_names
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise SymTorchFXError(f"variable_names for {region!r} must be a list of names, got "
                              f"{names!r}")
    if projection is not None:
        raise SymTorchFXError(
            f"variable_names for {region!r}: its equations are over the components of "
            "reduce=, not its features; drop one of the two for this target")
    if len(names) != n:
        raise SymTorchFXError(f"variable_names gives {len(names)} names for {region!r}, which "
                              f"has {n} input features (to name derived features instead, "
                              "pass features={name: feature})")
    try:
        check_variable_names(names)
    except EquationSyntaxError as e:
        raise SymTorchFXError(f"variable_names for {region!r}: {e}") from e
    return list(names)


#: searches one region may queue without ``allow_wide=True`` (8 outputs of the default Operon)
MAX_SEARCHES_PER_REGION = 64


def _check_width(jobs: list[Job], allow_wide: bool) -> None:
    """Refuse a region wide enough to queue more than ``MAX_SEARCHES_PER_REGION`` searches
    (unless ``allow_wide``). The progress bar says how many run, and their time as they go."""
    per_region: dict[str, int] = {}
    for j in jobs:
        per_region[j.region] = per_region.get(j.region, 0) + 1
    wide = {r: n for r, n in per_region.items() if n > MAX_SEARCHES_PER_REGION}
    if wide and not allow_wide:
        r, n = next(iter(wide.items()))
        raise SymTorchFXError(
            f"target {r!r} would queue {n} searches (one set per output; the limit without "
            f"allow_wide=True is {MAX_SEARCHES_PER_REGION}). Distil a few components of a wide "
            "layer instead: reduce=sfx.PCA(inputs=8, outputs=4); or pass allow_wide=True")


def search_records(runs: list[tuple[Job, Searched]], front: list) -> list[dict]:
    """``ParetoFront.info["searches"]``: what each search of an output gave and which of the
    front's equations it found (indices; the mean at 0 comes from no search), so that a law
    missing from the front can be traced to the searches that missed it. ``monomial``: the
    scale a scaled transform divided the output by (None for the others)."""
    texts = [to_text(e.expr) for e in front]
    out = []
    for job, s in runs:
        mine = set(s.candidates)
        out.append({
            "transform": job.transform, "seed": job.seed, "seconds": round(s.seconds, 3),
            "monomial": s.monomial, "equations": s.texts, "pruned": s.pruned,
            "error": s.error, "skipped": s.skipped,
            "on_front": [i for i, t in enumerate(texts) if t in mine],
        })
        if job.part is not None:  # a part of the decomposition: its equations are composed
            out[-1].update(part=job.part, variables=list(job.variables), on_front=[])
        elif job.dimensionless:  # over the dimensionless groups: composed with the prefactor
            out[-1].update(dimensionless=True, variables=list(job.variables), on_front=[])
    return out


def _noise_for(noise, region: str, n: int, index=None) -> list[float | None]:
    """One noise floor per distilled output. With ``index`` (some outputs distilled), a list
    may also give one per output of the region; the distilled ones are taken."""
    if noise is None:
        return [None] * n
    if isinstance(noise, dict):
        return _noise_for(noise.get(region), region, n, index)
    if isinstance(noise, (int, float)):
        vals = [float(noise)] * n
    else:
        vals = [float(v) for v in noise]
        if index is not None and len(vals) != n and len(vals) > max(index):
            vals = [vals[i] for i in index]
    if len(vals) != n or any(not np.isfinite(v) or v < 0 for v in vals):
        raise SymTorchFXError(
            f"noise for {region!r} must be one non-negative number or {n} of them (one per "
            f"output), got {noise!r}"
        )
    return vals


def _job_seed(seed: int, region: int, output: int, restart: int) -> int:
    return int(np.random.SeedSequence([seed, region, output, restart]).generate_state(1)[0])


def run(prepared: nn.Module, batches, collect: bool = False, mode: str = "eval") -> list | None:
    """Run ``batches`` through ``prepared`` without gradients: a tensor is one batch; an
    iterable yields batches, each a tensor, a tuple of positional inputs, or a dict of keyword
    inputs (inputs only: drop labels from (x, y) pairs). ``collect``: return the outputs.

    ``mode``: ``"eval"`` (default) records what the trained network computes: every module runs
    in eval mode (no dropout, batch norm from its running statistics), and each module's own
    mode is put back afterwards. ``"train"`` records in training mode on purpose; the running
    statistics and every other buffer the forward changes are put back afterwards, so the
    user's model is left as it was either way.
    """
    if mode not in ("eval", "train"):
        raise SymTorchFXError(f"mode={mode!r}: record in 'eval' (default) or 'train' mode")
    batches = _batches(batches)
    buffers = ([(b, b.detach().clone()) for b in prepared.buffers()] if mode == "train" else [])
    outs = []
    with modes_kept(prepared) as modules:
        recorders = [m for m in modules if isinstance(m, Recorder)]
        try:
            prepared.train(mode == "train")
            for r in recorders:
                r.train_mode_ok = mode == "train"
            with torch.no_grad():
                for b in batches:
                    if isinstance(b, dict):
                        out = prepared(**b)
                    elif isinstance(b, (tuple, list)):
                        out = prepared(*b)
                    else:
                        out = prepared(b)
                    if collect:
                        outs.append(out)
        finally:
            for r in recorders:
                r.train_mode_ok = False
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
    return outs if collect else None


def _batches(batches):
    """``sample_inputs`` as an iterable of batches (a tensor or an array is one batch)."""
    if isinstance(batches, (torch.Tensor, np.ndarray)):
        return [batches]
    if not isinstance(batches, Iterable):
        raise SymTorchFXError(
            f"sample_inputs must be a tensor or an iterable of batches, got {type(batches).__name__}"
        )
    return batches


def compile(  # noqa: A001 - the verb users expect: sfx.compile
    model: nn.Module,
    targets=None,
    sample_inputs=None,
    *,
    labels=None,
    max_samples: int = 10_000,
    record_mode: str = "eval",
    **convert_kwargs,
) -> nn.Module:
    """``prepare`` + run ``sample_inputs`` + ``convert``, in one call. See :func:`convert` for
    the keyword arguments (engine, selection, noise, executor, ...).

    ``labels``: the targets the network was trained on, for ``sample_inputs`` (one tensor for
    all batches, in order). The network's error against them tells ``selection="auto"`` how far
    the network is from the law. It applies to a single target that produces the model's output
    (checked on the first batch: the target must run once and the model return its output
    unchanged); for other targets pass ``noise={target: mse}``.

    ``record_mode``: ``"eval"`` (default: the model runs in eval mode while it is recorded, and
    every module's mode is put back after) or ``"train"`` (see :func:`run`). Either way the
    model's parameters and buffers are left as they were.

    ``model`` may be a plain python callable mapping rows of inputs to rows of outputs (torch
    in and out, or numpy in and out), with ``targets`` left out: ``sfx.compile(fn,
    sample_inputs=X)``. ``fn`` gets inputs of the type ``sample_inputs`` has (an array or a
    tensor is one batch; an iterable yields batches, each an array/tensor or a tuple of them
    for a callable of several arguments). The result is called like ``fn`` (numpy in -> numpy
    out, tensor in -> tensor out), switches back with ``use("neural")``, saves with
    ``sfx.save`` and loads with ``sfx.load(path, fn)``; ``sfx.restore`` gives ``fn`` back. Its
    variables are named after ``fn``'s arguments (``x0, x1`` for the columns of one argument).
    """
    if sample_inputs is None:
        raise SymTorchFXError("sample_inputs= is required: the inputs to record the model (or "
                              "callable) on, e.g. sample_inputs=X")
    engine = convert_kwargs.get("engine")
    if engine is not None and hasattr(engine, "check"):
        engine.check()  # a misconfigured engine fails before the model runs, not after
    prepared = prepare(model, targets, max_samples=max_samples,
                       seed=convert_kwargs.get("seed", 0))
    if labels is None:
        run(prepared, sample_inputs, mode=record_mode)
        return convert(prepared, **convert_kwargs)
    if "noise" in convert_kwargs:
        raise SymTorchFXError("pass labels= or noise=, not both")
    # the first batch runs with the first target watched, to check that it makes the output
    batches = iter(_batches(sample_inputs))
    first = next(batches, None)
    st = _prepared_state(prepared)
    region = st.regions[0]
    seen: list[torch.Tensor] = []
    hook = st.recorders[region.name].register_forward_hook(lambda mod, a, out: seen.append(out))
    try:
        outs = run(prepared, [] if first is None else [first], collect=True, mode=record_mode)
    finally:
        hook.remove()
    outs += run(prepared, batches, collect=True, mode=record_mode)
    # a distilled callable answers numpy arrays for numpy inputs
    outs = [torch.from_numpy(np.asarray(o)) if isinstance(o, np.ndarray) else o for o in outs]
    convert_kwargs["noise"] = _noise_from_labels(prepared, outs, labels)
    _check_target_is_output(region, seen, outs[0])
    return convert(prepared, **convert_kwargs)


def _check_target_is_output(region: Region, seen: list[torch.Tensor], out) -> None:
    """Whether the single target produced the model's output for the first batch (``seen``: its
    outputs during that batch), unchanged: labels measure the model's error, which is the
    target's error only then."""
    same = (len(seen) == 1 and isinstance(out, torch.Tensor) and seen[0].numel() == out.numel()
            and torch.equal(seen[0].reshape(-1), out.reshape(-1)))
    if not same:
        why = (f"it ran {len(seen)} times in one forward pass" if len(seen) != 1
               else "the model changes its output after it")
        raise SymTorchFXError(
            f"labels= measures the model's error, but target {region.name!r} does not produce "
            f"the model's output ({why}); pass noise={{{region.name!r}: mse}} with the target's "
            "own error instead"
        )


def _noise_from_labels(prepared, outs: list, labels) -> dict[str, list[float]]:
    st = _prepared_state(prepared)
    if len(st.regions) != 1:
        raise SymTorchFXError(
            f"labels= applies to a single target that produces the model's output, but there are "
            f"{len(st.regions)} targets; pass noise={{target: mse}} for each instead"
        )
    if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        raise SymTorchFXError("labels= needs a model that returns one tensor per batch")
    pred = torch.cat([o.detach().reshape(-1, o.shape[-1] if o.ndim > 1 else 1) for o in outs])
    lab = torch.as_tensor(labels).detach().to(pred.device, pred.dtype)
    lab = lab.reshape(-1, pred.shape[1]) if lab.numel() == pred.numel() else None
    if lab is None:
        raise SymTorchFXError(
            f"labels= has {torch.as_tensor(labels).numel()} values, but the model produced "
            f"{pred.numel()} outputs for sample_inputs; give one label per output, in order"
        )
    region = st.regions[0]
    k = st.recorders[region.name].layout.n_outputs if st.recorders[region.name].layout else None
    if k != pred.shape[1]:
        raise SymTorchFXError(
            f"labels= has {pred.shape[1]} columns but target {region.name!r} has {k} outputs; "
            "labels apply to the target that produces the model's output (or pass noise=)"
        )
    mse = ((pred - lab) ** 2).mean(0).double().cpu().tolist()
    return {region.name: [float(v) for v in mse]}


def restore(sym: nn.Module) -> nn.Module:
    """The user's own model back (the object given to ``compile``/``prepare``/``load``), with
    bit-identical outputs. Parameters are shared with ``sym``, so neural parts trained through
    ``sym`` stay trained; every submodule, buffer, alias and tied weight is there. For a
    distilled callable, the callable."""
    model = state_of(sym).host.restore(sym)
    return model.fn if isinstance(model, FunctionModel) else model
