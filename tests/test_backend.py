"""The torch.compile backend: apply saved equations, record-distill-swap, fusion, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import fast_engine

import symtorch_fx as sfx


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Residual(nn.Module):
    """x + mlp(x): the symbolic MLP should fuse with the residual add."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x[:, :1] + self.inner(x)


def test_apply_equations_from_a_converted_model(distilled_law, trained_law, law_data):
    X, _ = law_data
    be = sfx.backend(equations=distilled_law, compiler="aot_eager")
    compiled = torch.compile(trained_law, backend=be)
    with torch.no_grad():
        torch.testing.assert_close(compiled(X[:256]), distilled_law(X[:256]), rtol=1e-5,
                                   atol=1e-5)
    assert len(be.graphs) == 1 and [r.name for r in be.graphs[0].regions] == ["mlp"]
    be.use("neural")
    with torch.no_grad():
        torch.testing.assert_close(compiled(X[:256]), trained_law(X[:256]))


def test_backend_kernel_leaves_the_symbolic_model_alone(distilled_law):
    mine = distilled_law.symbolic_modules["mlp"]
    before = mine.kernel
    other = "cpp" if before != "cpp" else "torch"
    be = sfx.backend(equations=distilled_law, kernel=other)
    theirs = be.results["mlp"].module
    assert mine.kernel == before and theirs.kernel == other
    assert theirs.constants is mine.constants  # training through the backend tunes the model's


def test_named_backend_with_a_saved_file(tmp_path, distilled_law, trained_law, law_data):
    X, _ = law_data
    path = tmp_path / "law.sfx"
    sfx.save(distilled_law, path)
    compiled = torch.compile(trained_law, backend="symtorch_fx",
                             options={"equations": str(path), "compiler": "aot_eager"})
    with torch.no_grad():
        torch.testing.assert_close(compiled(X[:64]), distilled_law(X[:64]), rtol=1e-5, atol=1e-5)


def test_backend_keeps_a_region_the_symbolic_model_runs_neural(tmp_path, distilled_law,
                                                               trained_law, law_data):
    # from the model and from its saved file alike
    X, _ = law_data
    path = tmp_path / "law.sfx"
    distilled_law.use("neural", "mlp")
    try:
        sfx.save(distilled_law, path)
        for equations in (distilled_law, str(path)):
            be = sfx.backend(equations=equations, compiler="aot_eager")
            assert be.modes == {"mlp": "neural"}
            compiled = torch.compile(trained_law, backend=be)
            with torch.no_grad():
                torch.testing.assert_close(compiled(X[:64]), trained_law(X[:64]))
            be.use("symbolic")
            with torch.no_grad():
                torch.testing.assert_close(compiled(X[:64]), distilled_law.use("symbolic")(X[:64]),
                                           rtol=1e-5, atol=1e-5)
            distilled_law.use("neural", "mlp")
    finally:
        distilled_law.use("symbolic")


def test_named_backend_without_options_says_what_to_do(trained_law, law_data):
    compiled = torch.compile(trained_law, backend="symtorch_fx")
    with pytest.raises(Exception, match="options=.*equations"):
        compiled(law_data[0][:8])


def test_inductor_fuses_the_equation_with_its_neighbours(distilled_law, trained_law, law_data):
    from torch._inductor.utils import run_and_get_code

    model = Residual(trained_law.mlp)
    prepared = sfx.prepare(model, ["inner"])
    prepared(law_data[0][:512])
    sym = sfx.convert(prepared, engine=fast_engine(generations=10), executor="inline",
                      progress=False, selection="accuracy")
    compiled = torch.compile(model, backend=sfx.backend(equations=sym))
    x = law_data[0][:1024]
    with torch.no_grad():
        out, code = run_and_get_code(compiled, x)
        torch.testing.assert_close(out, sym(x), rtol=1e-4, atol=1e-4)
    src = "\n".join(code)
    kernels = [line for line in src.splitlines() if line.startswith("cpp_fused")]
    # one fused loop computes the equation and the residual add (no separate add kernel)
    assert len(kernels) == 1, kernels
    assert "add" in kernels[0]


def test_training_through_the_compiled_model_reaches_both_kinds_of_parameter(law_data):
    torch.manual_seed(0)
    X, Y = law_data

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = nn.Linear(2, 2)
            self.mlp = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))

        def forward(self, x):
            return self.mlp(self.pre(x))

    net = Net()
    sym = sfx.compile(net, ["mlp"], X[:512], engine=fast_engine(generations=10),
                      executor="inline", progress=False, selection="accuracy")
    module = sym.symbolic_modules["mlp"]
    # aot_autograd builds the backward graph (inductor would compile the same joint graph)
    compiled = torch.compile(net, backend=sfx.backend(equations=sym, compiler="aot_eager"))
    loss = ((compiled(X[:256]) - Y[:256]) ** 2).mean()
    loss.backward()
    assert net.pre.weight.grad is not None and net.pre.weight.grad.abs().sum() > 0
    assert module.constants.grad is not None and module.constants.grad.abs().sum() > 0
    assert net.mlp[0].weight.grad is None  # the replaced MLP is out of the graph


class Branchy(nn.Module):
    """Data-dependent control flow between two targets: dynamo breaks the graph there."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
        self.b = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = h * 2
        return self.b(h)


def test_record_distill_swap_across_a_graph_break():
    torch.manual_seed(0)
    model = Branchy().eval()
    be = sfx.backend(targets=["a", "b"], engine=fast_engine(generations=10), compiler="eager",
                     executor="inline", progress=False, selection="accuracy")
    compiled = torch.compile(model, backend=be)
    xs = [torch.randn(200, 2) for _ in range(3)]
    with torch.no_grad():
        for x in xs:
            torch.testing.assert_close(compiled(x), model(x))  # recording changes nothing
    assert len(be.graphs) >= 2  # the control flow split the model
    assert be.recorders["a"].n_kept == 600 and be.recorders["b"].n_kept > 0
    eqs = be.distill()
    assert set(eqs) == {"a", "b"} and len(eqs["a"]) == 2
    with torch.no_grad():
        out = compiled(xs[0])
    assert not torch.equal(out, model(xs[0]))  # the equations run now...
    assert ((out - model(xs[0])) ** 2).mean() < 0.05 * model(xs[0]).var() + 1e-4  # ...and fit


def test_backend_on_a_model_fx_cannot_trace():
    class Dicty(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))

        def forward(self, batch):
            out = {"y": self.mlp(batch["x"])}
            if len(batch) > 1:
                out["extra"] = batch["z"]
            return out

    model = Dicty().eval()
    be = sfx.backend(targets=["mlp"], engine=fast_engine(generations=5), executor="inline",
                     progress=False, compiler="eager")
    compiled = torch.compile(model, backend=be)
    with torch.no_grad():
        compiled({"x": torch.randn(300, 2)})
    be.distill()
    with torch.no_grad():
        assert compiled({"x": torch.randn(5, 2)})["y"].shape == (5, 1)


def test_errors_targets_missing_and_shape_mismatch(tmp_path, distilled_law, law_data):
    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(2, 1)

        def forward(self, x):
            return self.body(x)

    be = sfx.backend(equations=distilled_law, compiler="eager")
    compiled = torch.compile(Other(), backend=be)
    with pytest.raises(Exception, match="not found in the compiled model"):
        compiled(law_data[0][:8])
        compiled(law_data[0][:8])

    torch._dynamo.reset()

    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Linear(3, 1)

        def forward(self, x):
            return self.mlp(x)

    compiled = torch.compile(Wide(), backend=sfx.backend(equations=distilled_law,
                                                          compiler="eager"))
    with pytest.raises(Exception, match="distilled for inputs of widths"):
        compiled(torch.randn(4, 3))
    with pytest.raises(sfx.TargetError, match="needs targets="):
        sfx.backend()
    with pytest.raises(sfx.SymTorchFXError, match="equations= takes"):
        sfx.backend(equations=42)
