"""Stage ``rewrite``: graph + equations -> symbolic model, and back (``restore``).

Two hosts carry a model through the pass:

* :class:`GraphHost` -- the model traced by torch.fx. Every build starts from a copy of the
  original graph, which is never modified: recording inserts Recorder nodes, the symbolic build
  replaces each region's nodes by one ``call_module`` to its :class:`SymbolicModule`. The
  graph shares the user's modules and parameters, so switching a region back to ``"neural"``
  needs nothing that was thrown away, and restore is the user's model object itself.
* :class:`SwapHost` -- models torch.fx cannot trace, with module targets: the target module is
  swapped in its parent. Parents are shallow-copied along the path, so the user's model object is
  never modified and parameters stay shared; restore returns that object.
"""

from __future__ import annotations

import copy

import sympy
import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import SerializationError, SymTorchFXError
from ..expr.grammar import substitute, templatize, to_text, variable
from ..kernels.lower import Layout, lower
from ..reduce import Projection
from .instrument import Tap, insert_recorders
from .match import Region, assign_slugs


class SymbolicModule(nn.Module):
    """Computes a region's outputs from its equations. ``constants`` are trainable.

    With a ``projection`` (see ``reduce``) the equations relate components, not features:
    ``y = out_mean + f((x - in_mean) @ in_basis) @ out_basis.T`` -- two matmuls around the
    fused equations.

    With ``features`` (``((name, expr), ...)``, each ``expr`` over ``inputs``, the names of the
    region's input features) the equations are over those derived features (``r = sqrt(dx^2 +
    dy^2)``), and are composed with them into one function of the region's inputs when lowered.

    With ``outputs`` (indices into the region's outputs) only those outputs have equations: the
    module then takes the network's own output as one more input, after the region's inputs,
    and returns it with those columns replaced by the equations' values (``convert(outputs=)``).
    """

    def __init__(
        self,
        region: str,
        layout: Layout,
        variables: tuple[str, ...],
        arg_mask: tuple[bool, ...],
        out_dtype: torch.dtype,
        equations: list[sympy.Expr],
        kernel: str = "auto",
        projection: Projection | None = None,
        outputs: tuple[int, ...] | None = None,
        features: tuple[tuple[str, sympy.Expr], ...] | None = None,
        inputs: tuple[str, ...] | None = None,
    ):
        super().__init__()
        self.region = region
        self.layout = layout
        self.variables = tuple(variables)
        self.arg_mask = tuple(arg_mask)
        self.out_dtype = out_dtype
        self._kernel = kernel
        self.projection = projection
        if projection is None:
            self.eq_layout = layout
        else:
            if projection.in_basis.shape[0] != layout.n_features or (
                    projection.out_basis.shape[0] != layout.n_outputs):
                raise SymTorchFXError(
                    f"{region}: the projection maps {projection.in_basis.shape[0]} -> "
                    f"{projection.out_basis.shape[0]} features, but the region has "
                    f"{layout.n_features} inputs and {layout.n_outputs} outputs"
                )
            self.eq_layout = Layout((projection.n_inputs,), projection.n_outputs)
            for name in ("in_mean", "in_basis", "out_mean", "out_basis"):
                self.register_buffer(name, torch.as_tensor(getattr(projection, name),
                                                           dtype=torch.float32))
        self.features = None if features is None else tuple(features)
        self.inputs = None if features is None else tuple(inputs)
        if self.features is not None:
            if projection is not None:
                raise SymTorchFXError(f"{region}: features= and a projection (reduce=) cannot "
                                      "be combined")
            if len(self.inputs) != layout.n_features or (
                    [n for n, _ in self.features] != list(self.variables)):
                raise SymTorchFXError(f"{region}: the features do not fit the region's "
                                      f"{layout.n_features} inputs and the equations' variables")
        self.outputs = None if outputs is None else check_outputs(outputs, layout, region)
        if self.outputs is not None:
            if projection is not None:
                raise SymTorchFXError(f"{region}: outputs= and a projection (reduce=) cannot be "
                                      "combined; the equations of a projection are over its "
                                      "components")
            self.eq_layout = Layout(layout.inputs, len(self.outputs))
            self.register_buffer("output_index", torch.tensor(self.outputs), persistent=False)
        # the constants are kept in the output's float type, and follow .double(), .half(),
        # .to(dtype) with the rest of the model; so does the output (see ``dtype``)
        self.constants = nn.Parameter(torch.zeros(
            0, dtype=out_dtype if out_dtype in (torch.float32, torch.float64) else torch.float32))
        self.set_equations(equations)

    @property
    def kernel(self) -> str:
        """How the equations run: ``"auto"``, ``"torch"``, ``"triton"``, ``"cpp"`` or
        ``"inductor"`` (see ``_lower.Lowered``). Assigning it re-lowers the equations."""
        return self._kernel

    @kernel.setter
    def kernel(self, value: str) -> None:
        fn = self._lower(self.templates, self.constants.numel(), value)
        self._kernel, self._fn = value, fn

    @property
    def symbols(self) -> list[sympy.Symbol]:
        return [variable(v) for v in self.variables]

    def _lower(self, templates, n_constants: int, kernel: str):
        """The equations as one function of the region's inputs (derived features composed
        in)."""
        if self.features is None:
            return lower(templates, self.eq_layout, self.symbols, n_constants, kernel)
        defs = {variable(n): e for n, e in self.features}
        composed = [t.xreplace(defs) for t in templates]
        return lower(composed, self.eq_layout, [variable(v) for v in self.inputs], n_constants,
                     kernel)

    def set_equations(self, equations: list[sympy.Expr]) -> None:
        """Replace the equations (one per output); constants become a new parameter."""
        if len(equations) != self.eq_layout.n_outputs:
            raise SymTorchFXError(
                f"{self.region}: {len(equations)} equations for {self.eq_layout.n_outputs} "
                "outputs"
            )
        templates, values = [], []
        for e in equations:
            t, v = templatize(sympy.sympify(e), start=len(values))
            templates.append(t)
            values.extend(v)
        old = self.constants
        dtype = old.dtype if old.dtype.is_floating_point else torch.float32
        self.templates = templates
        self.constants = nn.Parameter(torch.tensor(values, dtype=dtype, device=old.device))
        self._fn = self._lower(templates, len(values), self._kernel)

    @property
    def dtype(self) -> torch.dtype:
        """The type of the outputs: the recorded one, or the float type the module was cast
        to since (``sym.double()``), which its constants carry."""
        if self.out_dtype.is_floating_point and self.constants.dtype.is_floating_point:
            return self.constants.dtype
        return self.out_dtype

    def set_kernel(self, kernel: str) -> None:
        """Run the same equations (and the same constants parameter) with another kernel (the
        same as assigning ``kernel``)."""
        self.kernel = kernel

    def equations(self) -> list[sympy.Expr]:
        """The current equations, with the current (possibly fine-tuned) constants."""
        return [substitute(t, self.constants.detach().cpu().double().tolist())
                for t in self.templates]

    def verify_against(self, neural: nn.Module, source: str) -> None:
        """Check the first call's output shape against ``neural`` (the module these equations
        stand for) run on the same inputs; ``source`` names where the equations came from.
        Not a submodule: it is neither saved nor moved with this one."""
        self.__dict__["_verify"] = (neural, source)

    def _check_first_call(self, y: torch.Tensor, args, kwargs) -> None:
        neural, source = self.__dict__.pop("_verify")
        if self.outputs is not None:
            return  # the network's own output came in, and ``y`` is it with columns replaced
        with torch.no_grad():
            ref = neural(*args, **kwargs)
        if isinstance(ref, torch.Tensor) and (ref.shape, ref.dtype) != (y.shape, y.dtype):
            raise SerializationError(
                f"{source}: the equations for {self.region!r} give outputs of shape "
                f"{tuple(y.shape)} ({y.dtype}), but the model's {self.region!r} returns "
                f"{tuple(ref.shape)} ({ref.dtype}); the file was saved from a different model "
                "(load it on the model it was distilled from)")

    def forward(self, *args, **kwargs):
        if "_verify" not in self.__dict__:
            return self._forward(*args, **kwargs)
        try:
            y = self._forward(*args, **kwargs)
        except SymTorchFXError as e:  # the file's layout does not fit what the model passes
            raise SerializationError(f"{self.__dict__['_verify'][1]}: {e}; the file was saved "
                                     "from a different model") from e
        self._check_first_call(y, args, kwargs)
        return y

    def _forward(self, *args, **kwargs):
        data = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if self.outputs is not None:
            return self._partial(data)
        if len(data) != len(self.layout.inputs):
            raise SymTorchFXError(
                f"{self.region}: the symbolic replacement takes {len(self.layout.inputs)} tensor "
                f"input(s) (as recorded), got {len(data)}"
            )
        self._check_inputs(data)
        if self.projection is None:
            return self._fn(*data, self.constants, out_dtype=self.dtype)
        cols = [a if w is not None else a.unsqueeze(-1) for a, w in zip(data, self.layout.inputs)]
        x = cols[0] if len(cols) == 1 else torch.cat(cols, -1)
        dt = torch.promote_types(x.dtype, self.in_basis.dtype)
        z = (x.to(dt) - self.in_mean) @ self.in_basis
        y = self._fn(z, self.constants) @ self.out_basis.T + self.out_mean
        if self.layout.outputs is None:
            y = y.squeeze(-1)
        return y.to(self.dtype)

    def _check_inputs(self, data: list[torch.Tensor]) -> None:
        for i, (a, w) in enumerate(zip(data, self.layout.inputs)):
            if w is not None and (a.ndim == 0 or a.shape[-1] != w):
                raise SymTorchFXError(
                    f"{self.region}: input {i} has shape {tuple(a.shape)}, but its equations were "
                    f"distilled for {w} features in the last dimension"
                )

    def _partial(self, data: list[torch.Tensor]) -> torch.Tensor:
        """Some outputs distilled: ``data`` ends with the network's output, whose columns
        ``outputs`` the equations replace."""
        if len(data) != len(self.layout.inputs) + 1:
            raise SymTorchFXError(
                f"{self.region}: the symbolic replacement of outputs {list(self.outputs)} takes "
                f"{len(self.layout.inputs)} tensor input(s) and the network's output, got "
                f"{len(data)} tensors")
        *data, neural = data
        if neural.ndim == 0 or neural.shape[-1] != self.layout.outputs:
            raise SymTorchFXError(
                f"{self.region}: the network's output has shape {tuple(neural.shape)}, but the "
                f"equations replace outputs {list(self.outputs)} of {self.layout.outputs}")
        self._check_inputs(data)
        eq = self._fn(*data, self.constants, out_dtype=neural.dtype)
        return neural.index_copy(neural.ndim - 1, self.output_index.to(neural.device),
                                 eq.expand(*neural.shape[:-1], eq.shape[-1]))

    def output_names(self) -> list[str]:
        """The names of the outputs that have equations: ``y``, ``y0..``, or ``w0..`` for the
        components of a projection."""
        if self.projection is not None:
            return [f"w{k}" for k in range(self.eq_layout.n_outputs)]
        return output_names(self.layout, self.outputs)

    def extra_repr(self) -> str:
        names = self.output_names()
        lines = [f"region={self.region!r}"]
        if self.projection is not None:
            lines.append(self.projection.describe())
        if self.outputs is not None:
            lines.append(f"outputs {list(self.outputs)} of {self.layout.outputs}; the others "
                         "come from the network")
        if self.features is not None:
            lines.extend(f"{n} = {to_text(e, 4)}" for n, e in self.features)
        for n, e in zip(names, self.equations()):
            lines.append(f"{n} = {to_text(e, 4)}")
        return "\n".join(lines)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_fn", None)
        state.pop("_verify", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("_kernel", state.get("kernel", "auto"))
        self.__dict__.setdefault("outputs", None)
        self.__dict__.setdefault("features", None)
        self.__dict__.setdefault("inputs", None)
        self._fn = self._lower(self.templates, self.constants.numel(), self._kernel)


def output_names(layout: Layout, outputs=None) -> list[str]:
    """The names of a region's outputs that have equations: ``y`` for an output without a
    feature dimension, else ``y<k>`` for each output ``k`` (those of ``outputs`` only)."""
    if layout.outputs is None:
        return ["y"]
    return [f"y{k}" for k in (range(layout.outputs) if outputs is None else outputs)]


def check_outputs(outputs, layout: Layout, region: str) -> tuple[int, ...]:
    """``outputs`` (the outputs of a region to distill) as sorted unique indices, checked."""
    if isinstance(outputs, (str, bytes)) or not hasattr(outputs, "__iter__"):
        raise SymTorchFXError(f"outputs for {region!r} must be a list of output indices, e.g. "
                              f"[0, 3]; got {outputs!r}")
    idx = list(outputs)
    if layout.outputs is None:
        raise SymTorchFXError(f"outputs= for {region!r}: the target has one output with no "
                              "feature dimension; leave outputs= out for it")
    bad = [i for i in idx if isinstance(i, bool) or not isinstance(i, int)
           or not -layout.outputs <= i < layout.outputs]
    if bad or not idx:
        raise SymTorchFXError(
            f"outputs= for {region!r} must list indices of its {layout.outputs} outputs "
            f"(0..{layout.outputs - 1}); got {outputs!r}")
    norm = sorted({i % layout.outputs for i in idx})
    if len(norm) != len(idx):
        raise SymTorchFXError(f"outputs= for {region!r} lists an output twice: {outputs!r}")
    return tuple(norm)


def fits_output(shape, layout: Layout) -> bool:
    """Whether a tensor of ``shape`` can be a region's output of this layout (its last
    dimension holds the outputs; a layout without an output dimension fits any shape)."""
    return layout.outputs is None or (len(shape) > 0 and shape[-1] == layout.outputs)


# ----------------------------------------------------------------------------------------------


def replace_sites(g: fx.Graph, regions: list[Region], target, partial=()) -> None:
    """Replace every site of ``regions`` in ``g`` by one ``call_module(target(region))`` taking
    the site's data inputs; the site's nodes, and weights only they used, are erased.

    Regions named in ``partial`` distil some of their outputs: their nodes stay, and the module
    takes the site's inputs and its output and stands for that output from then on.

    Sites may feed each other (``enc.0`` -> ``enc.1``, or ``block(block(x))``): a site's output
    name then stands for the node that replaced it, so a later site reads the replacement."""
    by_name = {n.name: n for n in g.nodes}
    for region in regions:
        for site in region.sites:
            out = by_name[site.output]
            if region.name in partial:
                with g.inserting_after(out):
                    new = g.call_module(target(region),
                                        (*(by_name[a] for a in site.inputs), out))
                out.replace_all_uses_with(new, delete_user_cb=lambda u, new=new: u is not new)
                by_name[site.output] = new
                continue
            with g.inserting_before(out):
                new = g.call_module(target(region), tuple(by_name[a] for a in site.inputs))
            body = [by_name[n] for n in site.nodes]
            out.replace_all_uses_with(new)
            by_name[site.output] = new
            attrs = {a for n in body for a in n.all_input_nodes if a.op == "get_attr"}
            for n in reversed(body):
                g.erase_node(n)
            for a in attrs:
                if not a.users:
                    g.erase_node(a)
    g.lint()


def partial_regions(regions: list[Region], module_of) -> set[str]:
    """The names of the regions whose symbolic module distils only some outputs."""
    return {r.name for r in regions if getattr(module_of(r), "outputs", None) is not None}


class NeuralWithSymbolic(nn.Module):
    """What the swap host puts in place of a region that distils some outputs: the network
    runs, then the equations replace those outputs. Holds both without registering them (they
    are registered once, under ``sfx_neural`` and ``sfx_symbolic``)."""

    def __init__(self, neural: nn.Module, symbolic: SymbolicModule):
        super().__init__()
        self.__dict__["neural"] = neural
        self.__dict__["symbolic"] = symbolic

    def forward(self, *args, **kwargs):
        out = self.neural(*args, **kwargs)
        return self.symbolic(*args, *kwargs.values(), out)


class GraphHost:
    kind = "graph"

    def __init__(self, gm: fx.GraphModule, regions: list[Region], through_nn: bool,
                 model: nn.Module | None = None):
        self.root = gm  # holds the user's modules; its graph is the original and is never edited
        self.model = gm if model is None else model  # what restore gives back
        self.regions = regions
        assign_slugs(regions)
        self.through_nn = through_nn
        self.class_name = gm.__class__.__name__

    def _graph(self) -> fx.Graph:
        g = fx.Graph(tracer_cls=self.root.graph._tracer_cls)
        out = g.graph_copy(self.root.graph, {})
        g.output(out)
        return g

    def _module(self) -> fx.GraphModule:
        return fx.GraphModule(self.root, self._graph(), self.class_name)

    def prepared(self, recorders) -> fx.GraphModule:
        gm = self._module()
        insert_recorders(gm, self.regions, recorders)
        return gm

    def symbolic(self, modules: dict[str, SymbolicModule], modes: dict[str, str]) -> fx.GraphModule:
        gm = self._module()  # every original module is registered here first, so it stays
        for region in self.regions:
            gm.add_submodule(self.path(region), modules[region.name])
        self.apply(gm, modes)
        return gm

    @staticmethod
    def path(region: Region) -> str:
        return f"sfx_symbolic.{region.slug}"

    def apply(self, gm: fx.GraphModule, modes: dict[str, str]) -> None:
        """Point ``gm`` at a fresh copy of the original graph with the symbolic regions swapped."""
        g = self._graph()
        live = [r for r in self.regions if modes.get(r.name) == "symbolic"]
        replace_sites(g, live, self.path, partial_regions(
            live, lambda r: gm.get_submodule(self.path(r))))
        gm.graph = g
        gm.recompile()

    def restore(self, sym: nn.Module) -> nn.Module:
        """The user's own model: the graph shares its modules and parameters, so what was
        trained through ``sym`` is there, and so is everything the graph does not use."""
        return self.model


class SwapHost:
    kind = "swap"

    def __init__(self, model: nn.Module, regions: list[Region]):
        for r in regions:
            if r.kind != "module":
                raise SymTorchFXError("internal: the swap host only carries module regions")
        self.model = model
        self.regions = regions
        assign_slugs(regions)
        self.originals = {r.name: model.get_submodule(r.module) for r in regions}
        self.class_name = type(model).__name__

    def _clone(self) -> nn.Module:
        """Shallow copies of the modules on every path to a target (the rest is shared)."""
        cloned: dict[int, nn.Module] = {}

        def clone(m: nn.Module) -> nn.Module:
            if id(m) not in cloned:
                c = copy.copy(m)
                c._modules = m._modules.copy()
                c._parameters = m._parameters.copy()
                c._buffers = m._buffers.copy()
                cloned[id(m)] = c
            return cloned[id(m)]

        root = clone(self.model)
        for r in self.regions:
            parent = root
            for part in r.module.split(".")[:-1]:
                parent._modules[part] = clone(parent._modules[part])
                parent = parent._modules[part]
        return root

    def _set(self, root: nn.Module, region: Region, module: nn.Module) -> None:
        *parents, leaf = region.module.split(".")
        parent = root.get_submodule(".".join(parents)) if parents else root
        parent._modules[leaf] = module

    def prepared(self, recorders) -> nn.Module:
        root = self._clone()
        for r in self.regions:
            self._set(root, r, Tap(self.originals[r.name], recorders[r.name]))
        return root

    def symbolic(self, modules: dict[str, SymbolicModule], modes: dict[str, str]) -> nn.Module:
        """The swapped model. Both versions of every region stay registered on the root
        (``sfx_symbolic.<region>``, ``sfx_neural.<region>``) so ``.to()`` moves both and either
        can be switched in; the target path holds the active one."""
        root = self._clone()
        root._modules["sfx_symbolic"] = nn.ModuleDict(
            {r.slug: modules[r.name] for r in self.regions})
        root._modules["sfx_neural"] = nn.ModuleDict(
            {r.slug: self.originals[r.name] for r in self.regions})
        self.apply(root, modes)
        return root

    def apply(self, root: nn.Module, modes: dict[str, str]) -> None:
        for r in self.regions:
            which = "sfx_symbolic" if modes.get(r.name) == "symbolic" else "sfx_neural"
            module = root._modules[which][r.slug]
            if which == "sfx_symbolic" and module.outputs is not None:
                module = NeuralWithSymbolic(root._modules["sfx_neural"][r.slug], module)
            self._set(root, r, module)

    def restore(self, sym: nn.Module) -> nn.Module:
        """The user's own model, never modified: the swapped copies share its parameters."""
        return self.model
