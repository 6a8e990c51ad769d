"""symtorch_fx as a ``torch.compile`` backend.

Dynamo captures models that ``torch.fx.symbolic_trace`` cannot: Hugging Face transformers, data-
dependent control flow (it breaks the graph there), and so on. It hands each captured graph to
the backend. There are no ``call_module`` nodes in those graphs; targets are found through each
node's ``nn_module_stack`` (``_match.match_dynamo``).

Two ways to use it:

* **apply** equations distilled earlier (a converted model, or a file written by ``sfx.save``)::

      model = torch.compile(model, backend=sfx.backend(equations="model.sfx"))
      # or, by name (registered through the ``torch_dynamo_backends`` entry point):
      model = torch.compile(model, backend="symtorch_fx", options={"equations": "model.sfx"})

* **record, distill, swap in**::

      be = sfx.backend(targets=["model.layers.*.mlp"], reduce=sfx.PCA(32, 8))
      compiled = torch.compile(model, backend=be)
      for batch in data: compiled(batch)        # graphs run eagerly with recorders
      be.distill()                              # equations; the compiled graphs switch to them
      compiled(batch)                           # symbolic, compiled by inductor

The rewritten graph goes to inductor (or to ``compiler=``). The equations are lowered as plain
torch ops, so inductor fuses them with their neighbours (``kernel=`` picks a fused kernel instead,
a custom op in the graph). Training works through aot_autograd:
the remaining neural parameters and the equations' constants both get gradients.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import threading
import warnings

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import SymTorchFXError, TargetError, nearest
from .expr.equations import Equations
from .graph.instrument import Recorder, insert_recorders
from .graph.match import Region, assign_slugs, dynamo_path, match_dynamo
from .graph.rewrite import SymbolicModule, fits_output, partial_regions, replace_sites
from .graph.targets import normalize
from .model import RegionResult, SymbolicModel


def _compiler(compiler):
    if callable(compiler):
        return compiler
    if compiler == "eager":
        return lambda gm, example_inputs: gm.forward
    from torch._dynamo import lookup_backend

    try:
        return lookup_backend(compiler)
    except Exception as e:  # noqa: BLE001 - dynamo raises several kinds
        raise SymTorchFXError(
            f"compiler={compiler!r} is not a torch.compile backend: {e}. Use 'inductor' (the "
            "default), 'eager', 'aot_eager', or a backend callable"
        ) from e


class Backend:
    """A configured symtorch_fx backend for ``torch.compile`` (see the module doc).

    Args:
        targets: module targets (names, globs, classes; predicates need ``model=``). Default
            with ``equations``: every region the equations were distilled for.
        equations: a symbolic model from ``sfx.convert``/``sfx.compile``/``sfx.load``, or the
            path of a file written by ``sfx.save``. Without it the backend records.
        model: the model being compiled, needed only for predicate targets.
        compiler: what compiles the rewritten graphs (``"inductor"``, ``"eager"``, a backend).
        kernel: how the equations run inside the compiled graphs. ``"torch"`` (default): plain
            torch ops, which inductor fuses with their neighbours. ``"auto"``, ``"cpp"``,
            ``"triton"``: the fused kernel as one custom op in the graph (see README, "Running
            the equations"). The modules of ``equations`` are switched to it.
        **distill_kwargs: defaults for :meth:`distill` (engine, selection, reduce, ...).
    """

    def __init__(self, targets=None, equations=None, *, model: nn.Module | None = None,
                 compiler="inductor", kernel: str = "torch", max_samples: int = 10_000,
                 seed: int = 0, **distill_kwargs):
        from .kernels.lower import KERNELS

        if kernel not in KERNELS:
            raise SymTorchFXError(f"kernel={kernel!r} is not one of {', '.join(KERNELS)}")
        self.compiler = compiler
        self.kernel = kernel
        self._compile = _compiler(compiler)
        self.model = model
        self.max_samples = max_samples
        self.seed = seed
        self.distill_kwargs = distill_kwargs
        self.results: dict[str, RegionResult] = {}
        self.modes: dict[str, str] = {}
        self.recorders: dict[str, Recorder] = {}
        self.regions: dict[str, Region] = {}
        self.graphs: list[_CompiledGraph] = []
        self.seen_paths: set[str] = set()  # module paths in every graph captured so far
        self._checked = False
        self._version = 0
        self._lock = threading.Lock()
        if equations is not None:
            results, modes = _results_from(equations)
            for name, res in results.items():
                if res.module.kernel != kernel:  # the caller's model keeps its own kernel
                    res = dataclasses.replace(res, module=_rekerneled(res.module, kernel))
                self.results[name] = res
                self.modes[name] = modes.get(name, "symbolic")
        if targets is None and not self.results:
            raise TargetError(
                "sfx.backend() needs targets= to record, or equations= (a symbolic model or an "
                ".sfx file) to apply"
            )
        self.specs = normalize(targets) if targets is not None else normalize(list(self.results))

    @property
    def recording(self) -> bool:
        return not self.results

    def __repr__(self) -> str:
        state = "recording" if self.recording else f"applying {len(self.results)} region(s)"
        return f"symtorch_fx.Backend({state}, {len(self.graphs)} graph(s))"

    # -- called by dynamo, once per captured graph --------------------------------------------

    def __call__(self, gm: fx.GraphModule, example_inputs, **kwargs):
        names = None if self.recording else set(self.results)
        regions = match_dynamo(gm, self.specs, self.model, names)
        self.seen_paths.update(
            dynamo_path(path) for n in gm.graph.nodes
            for path, _ in (n.meta.get("nn_module_stack") or {}).values())
        for r in regions:
            if self.recording and r.name not in self.recorders:
                rec = Recorder(r.name, self.max_samples, self.seed + len(self.recorders))
                rec.train(self.model.training if self.model is not None else False)
                self.recorders[r.name] = rec
            self.regions.setdefault(r.name, r)
            if not self.recording:
                self._check_shapes(gm, r)
        graph = _CompiledGraph(self, gm, list(example_inputs), regions)
        self.graphs.append(graph)
        return graph

    def _check_shapes(self, gm: fx.GraphModule, region: Region) -> None:
        module = self.results[region.name].module
        by_name = {n.name: n for n in gm.graph.nodes}
        for site in region.sites:
            vals = [by_name[a].meta.get("example_value") for a in site.inputs]
            tensors = [v for v in vals if isinstance(v, torch.Tensor)]
            widths = module.layout.inputs
            if len(tensors) != len(widths) or any(
                    w is not None and (t.ndim == 0 or t.shape[-1] != w)
                    for t, w in zip(tensors, widths)):
                got = [tuple(t.shape) for t in tensors]
                raise SymTorchFXError(
                    f"the equations for {region.name!r} were distilled for inputs of widths "
                    f"{list(widths)}, but in this model {region.name!r} receives tensors of "
                    f"shapes {got}; the saved equations do not belong to this model"
                )
            out = by_name[site.output].meta.get("example_value")
            if isinstance(out, torch.Tensor) and not fits_output(out.shape, module.layout):
                raise SymTorchFXError(
                    f"the equations for {region.name!r} give {module.layout.n_outputs} output(s) "
                    f"a row, but in this model {region.name!r} returns shape {tuple(out.shape)}; "
                    "the saved equations do not belong to this model"
                )

    def check(self) -> None:
        """Raise if some equations' targets appeared in no graph captured so far.

        Runs by itself when the first captured graph is called a second time (the first
        forward, with all its graph breaks, has been captured by then).
        """
        self._checked = True
        if self.recording:
            return
        missing = [n for n in self.results if n not in self.regions]
        if missing:
            seen = sorted(p for p in self.seen_paths if p)
            near = ", ".join(nearest(missing[0], seen, 8)) if seen else "(none)"
            raise TargetError(
                f"equations for {missing} were not found in the compiled model; module paths in "
                f"its graphs include: {near}. Were the equations distilled from another model, "
                "or under other module names?"
            )

    # -- after recording ---------------------------------------------------------------------

    def distill(self, **kwargs) -> Equations:
        """Distill what the compiled graphs recorded; they then run the equations."""
        from .api import distill_recordings

        if not self.recording:
            raise SymTorchFXError("this backend already has equations; nothing to distill")
        got = [n for n, r in self.recorders.items() if r.n_kept]
        if not got:
            raise SymTorchFXError(
                "nothing was recorded: run data through the torch.compile'd model first "
                f"(targets: {', '.join(s.describe() for s in self.specs)})"
            )
        settings = {**self.distill_kwargs, **kwargs, "kernel": self.kernel}
        regions = [self.regions[n] for n in got]
        for n in got:
            self.recorders[n].input_names = _input_names(self.regions[n])
        with self._lock:
            results = distill_recordings(regions, self.recorders, **settings)
            self.results.update(results)
            self.modes.update({n: "symbolic" for n in results})
            self._version += 1
        return self.equations

    @property
    def equations(self) -> Equations:
        return SymbolicModel.equations.fget(_Facade(self))

    def use(self, mode: str, *targets: str) -> Backend:
        """Run the listed regions (all when none are listed) as ``"neural"`` or ``"symbolic"``."""
        SymbolicModel.use(_Facade(self), mode, *targets)
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write the equations (``sfx.load(path, model)`` or ``sfx.backend(equations=path)``)."""
        from .serialize import write

        if self.recording:
            raise SymTorchFXError("nothing to save yet: call distill() first")
        write(path, self.results, self.modes, host="dynamo", class_name="")


class _Facade(SymbolicModel):
    """Lets the backend reuse SymbolicModel's equations/use logic (it has the same state)."""

    def __init__(self, backend: Backend):
        from .model import State

        self._sfx = State(_BackendHost(backend), backend.results, backend.modes)


class _BackendHost:
    def __init__(self, backend: Backend):
        self.backend = backend

    def apply(self, _model, modes) -> None:
        b = self.backend
        with b._lock:
            b.modes.update(modes)
            b._version += 1


class _CompiledGraph:
    """What dynamo calls for one captured graph; rebuilds itself when the backend changes."""

    def __init__(self, backend: Backend, gm: fx.GraphModule, example_inputs, regions):
        self.backend = backend
        self.gm = gm
        self.example_inputs = example_inputs
        self.regions = regions
        assign_slugs(regions)
        self._impl = None
        self._version = -1
        self._calls = 0

    def __call__(self, *args):
        b = self.backend
        if not b._checked and self is b.graphs[0]:
            self._calls += 1
            if self._calls > 1:
                b.check()
        if self._version != b._version:
            with b._lock:
                self._impl = self._build()
                self._version = b._version
        return self._impl(*args)

    def _copy(self) -> fx.GraphModule:
        g = fx.Graph()
        out = g.graph_copy(self.gm.graph, {})
        g.output(out)
        return fx.GraphModule(self.gm, g)

    def _build(self):
        b = self.backend
        if not self.regions:
            return b._compile(self.gm, self.example_inputs)
        if b.recording:
            gm = self._copy()
            insert_recorders(gm, self.regions, b.recorders)
            return gm.forward  # recorders have Python side effects: run this graph eagerly
        live = [r for r in self.regions if b.modes.get(r.name) == "symbolic"]
        if not live:
            return b._compile(self.gm, self.example_inputs)
        gm = self._copy()
        for r in live:
            gm.add_submodule(f"sfx_symbolic.{r.slug}", b.results[r.name].module)
        replace_sites(gm.graph, live, lambda r: f"sfx_symbolic.{r.slug}",
                      partial_regions(live, lambda r: b.results[r.name].module))
        gm.recompile()
        return b._compile(gm, self.example_inputs)


def _input_names(region: Region) -> list[str]:
    names = region.sites[0].inputs
    return [n[2:-1] if n.startswith("l_") and n.endswith("_") else n for n in names]


def _rekerneled(module: SymbolicModule, kernel: str) -> SymbolicModule:
    """``module`` running on another kernel. It shares the constants (and projections), so
    training through the compiled model tunes the same parameters the symbolic model shows."""
    twin = copy.copy(module)
    for attr in ("_parameters", "_buffers", "_modules"):
        setattr(twin, attr, getattr(module, attr).copy())
    twin.kernel = kernel
    return twin


def _results_from(equations) -> tuple[dict[str, RegionResult], dict[str, str]]:
    """The regions' results and their modes (a region a symbolic model runs as ``"neural"``
    stays neural in the backend too, as it does when saved and loaded)."""
    from .model import state_of
    from .serialize import read

    if isinstance(equations, (str, os.PathLike)):
        return read(equations)
    if isinstance(equations, SymbolicModel):
        st = state_of(equations)
        bad = [n for n, r in st.results.items() if r.region.kind != "module"]
        if bad:
            raise SymTorchFXError(
                f"regions {bad} are op-pattern or whole-model regions; the torch.compile backend "
                "applies equations of module targets"
            )
        return dict(st.results), dict(st.modes)
    raise SymTorchFXError(
        f"equations= takes a symbolic model (from sfx.compile/convert/load) or the path of a "
        f"file written by sfx.save, got {type(equations).__name__}"
    )


def backend(targets=None, equations=None, **kwargs) -> Backend:
    """A configured torch.compile backend (see :class:`Backend`)."""
    return Backend(targets, equations, **kwargs)


_NAMED: dict[int, tuple[dict, Backend]] = {}


def symtorch_fx_backend(gm: fx.GraphModule, example_inputs, options: dict | None = None,
                        **kwargs):
    """The backend registered as ``"symtorch_fx"`` (entry point ``torch_dynamo_backends``).

    ``torch.compile(model, backend="symtorch_fx", options={"equations": path_or_model,
    "targets": [...], ...})``; the options are :class:`Backend`'s arguments. One Backend is kept
    per options dict, so every graph of one compiled model shares it.
    """
    if kwargs.get("mode") not in (None, "default"):
        warnings.warn("symtorch_fx ignores torch.compile(mode=...)", stacklevel=2)
    if not options or "equations" not in options:
        raise SymTorchFXError(
            "torch.compile(model, backend='symtorch_fx') needs "
            "options={'equations': <symbolic model or .sfx path>} to apply equations. To record "
            "and distill through torch.compile, build the backend object: "
            "be = sfx.backend(targets=[...]); torch.compile(model, backend=be); ...; be.distill()"
        )
    key = id(options)
    if key not in _NAMED or _NAMED[key][0] is not options:
        _NAMED[key] = (options, Backend(**options))
    return _NAMED[key][1](gm, example_inputs)
