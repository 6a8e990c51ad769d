"""SymTorch's capabilities on our API (issue 18): plain callables as blocks, distilling some
outputs only, derived input features. Recovery is claimed only with the real embedded engine;
tests of the mechanics (values, files, copies) use an engine of fixed candidates."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import sympy
import torch
import torch.nn as nn
from conftest import Candidates, PartlyLaw, equivalent, fast_engine, train_pruned

import symtorch_fx as sfx

# the mechanics tests pick among fixed candidates: no decomposition adding its own
QUICK = dict(restarts=1, transforms=(), prune=False, executor="inline", progress=False,
             decompose=False)
x0, x1, x2, x3 = sympy.symbols("x0 x1 x2 x3")


# ----------------------------------------------------------------------------------------------
# outputs=: some outputs distilled, the others from the network


def Mixed():  # noqa: N802 - a model class, as the tests read it
    """Four outputs: 0 and 2 are exact laws, 1 and 3 come from a trainable layer."""
    return PartlyLaw(4)


class Host(nn.Module):
    def __init__(self, untraceable: bool):
        super().__init__()
        self.block = Mixed()
        self.head = nn.Linear(4, 1)
        self.untraceable = untraceable

    def forward(self, x):
        y = self.block(x)
        if self.untraceable and x.sum() > 1e9:  # data-dependent: torch.fx cannot trace it
            return y
        return self.head(y)


def _partial(untraceable: bool, engine=None, **kw):
    torch.manual_seed(0)
    model = Host(untraceable).eval()
    X = torch.rand(400, 2) * 2 - 1
    sym = sfx.compile(model, ["block"], X, outputs=[2, 0],
                      engine=engine or Candidates(["x0*x1", "x0 + 0.5", "x0"]),
                      selection="accuracy", **QUICK, **kw)
    return model, sym, X


@pytest.mark.parametrize("untraceable", [False, True], ids=["graph", "swap"])
def test_outputs_distils_only_the_named_outputs(untraceable):
    model, sym, X = _partial(untraceable)
    assert sym._sfx.host.kind == ("swap" if untraceable else "graph")
    eqs = sym.equations["block"]
    assert [f.output for f in eqs] == ["y0", "y2"]
    assert [str(e) for e in eqs.sympy()] == ["x0*x1", "x0 + 0.5"]
    with torch.no_grad():
        got = sym(X)
        want = model(X)
    torch.testing.assert_close(got, want)
    # the network's outputs keep flowing, and the network keeps training through the model
    sym(X).sum().backward()
    assert model.block.lin.weight.grad is not None and model.block.lin.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("untraceable", [False, True], ids=["graph", "swap"])
def test_outputs_survive_save_load_copy_and_use(untraceable, tmp_path):
    # equations that differ from the network's outputs, so that a lost column would show
    model, sym, X = _partial(untraceable, engine=Candidates(["1.5*x0*x1", "x0 + 0.75"]))
    assert [str(e) for e in sym.equations["block"].sympy()] == ["1.5*x0*x1", "x0 + 0.75"]
    with torch.no_grad():
        out = sym(X)
        inner = model.block(X)
        cols = [1.5 * X[:, 0] * X[:, 1], inner[:, 1], X[:, 0] + 0.75, inner[:, 3]]
        torch.testing.assert_close(out, model.head(torch.stack(cols, -1)))
    path = tmp_path / "partial.sfx"
    sfx.save(sym, path)
    doc = json.loads(path.read_text())
    assert doc["regions"][0]["distilled_outputs"] == [0, 2]
    for other in (sfx.load(path, model), copy.deepcopy(sym), pickle.loads(pickle.dumps(sym))):
        with torch.no_grad():
            torch.testing.assert_close(other(X), out)
    sym.use("neural")
    with torch.no_grad():
        assert torch.equal(sym(X), model(X))


def test_outputs_are_checked_before_any_search():
    model = Host(False)
    X = torch.rand(64, 2)
    for bad, words in [([4], "indices of its 4 outputs"), ([0, 0], "twice"), ("0", "list"),
                       ([True], "indices"), ({"nope": [0]}, "not targets")]:
        with pytest.raises(sfx.SymTorchFXError, match=words):
            sfx.compile(model, ["block"], X, outputs=bad, engine=Candidates(["x0"]), **QUICK)
    with pytest.raises(sfx.SymTorchFXError, match="cannot be combined"):
        sfx.compile(model, ["block"], X, outputs=[0], reduce=sfx.PCA(inputs=2, outputs=1),
                    engine=Candidates(["x0"]), **QUICK)


def test_outputs_with_the_real_engine():
    """The real engine finds the two laws and only searches those outputs."""
    _, sym, X = _partial(False, engine=fast_engine())
    eqs = sym.equations["block"]
    assert len(eqs) == 2
    assert equivalent(eqs[0].equation.expr, x0 * x1)
    assert equivalent(eqs[1].equation.expr, x0 + sympy.Rational(1, 2))
    assert len(eqs[0].info["searches"]) == 1  # one search per distilled output, no more


def test_a_file_cannot_point_distilled_outputs_outside_the_layout(tmp_path):
    model, sym, X = _partial(False)
    path = tmp_path / "p.sfx"
    sfx.save(sym, path)
    for bad in ([0, 4], [2, 0], [0, 0], ["0"], [], 3):
        doc = json.loads(path.read_text())
        doc["regions"][0]["distilled_outputs"] = bad
        path.write_text(json.dumps(doc))
        with pytest.raises(sfx.SerializationError, match="distilled_outputs"):
            sfx.load(path, model)


# ----------------------------------------------------------------------------------------------
# plain callables


def _np_law(x):
    assert isinstance(x, np.ndarray), f"a numpy callable was given {type(x).__name__}"
    return x[:, 0] * x[:, 1] + np.sin(x[:, 0])


def _torch_law(a, b):
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return 2 * a + torch.cos(b)


def test_numpy_callable_distils_and_is_called_like_itself(tmp_path):
    X = np.random.default_rng(0).uniform(-2, 2, (600, 2))
    sym = sfx.compile(_np_law, sample_inputs=X, engine=fast_engine(), executor="inline",
                      progress=False)
    (front,) = sym.equations["function"]
    assert equivalent(front.equation.expr, x0 * x1 + sympy.sin(x0))
    y = sym(X[:7])
    assert isinstance(y, np.ndarray) and y.shape == (7,)
    np.testing.assert_allclose(y, _np_law(X[:7]), atol=1e-6)
    t = sym(torch.from_numpy(X[:7]))  # tensors in, tensors out
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), y)
    sym.use("neural")  # the callable itself, still given numpy arrays
    np.testing.assert_array_equal(sym(X[:7]), _np_law(X[:7]))
    np.testing.assert_array_equal(sym(torch.from_numpy(X[:7])).numpy(), _np_law(X[:7]))
    sym.use("symbolic")
    path = tmp_path / "fn.sfx"
    sfx.save(sym, path)
    loaded = sfx.load(path, _np_law)
    np.testing.assert_allclose(loaded(X[:7]), y)
    loaded.use("neural")
    np.testing.assert_array_equal(loaded(X[:7]), _np_law(X[:7]))
    assert sfx.restore(sym) is _np_law


def test_torch_callable_of_two_arguments_names_its_variables():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(500, generator=g) * 4 - 2, torch.rand(500, generator=g) * 4 - 2
    sym = sfx.compile(_torch_law, sample_inputs=[(a, b)], engine=fast_engine(),
                      executor="inline", progress=False)
    eqs = sym.equations["function"]
    assert eqs.variables == ("a", "b")
    sa, sb = sympy.symbols("a b")
    assert equivalent(eqs[0].equation.expr, 2 * sa + sympy.cos(sb))
    out = sym(a[:5], b[:5])
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, _torch_law(a[:5], b[:5]), atol=1e-4, rtol=1e-4)


def test_integer_inputs_reach_the_callable_as_integers():
    """The LLM-arithmetic case: a callable of integer pairs (it formats them into a prompt)."""
    seen = []

    def add(ab):
        seen.append(ab.dtype)
        return np.array([float(p + q) for p, q in ab.tolist()])

    ab = np.random.default_rng(1).integers(0, 100, (300, 2))
    sym = sfx.compile(add, sample_inputs=ab, engine=Candidates(["x0 + x1", "x0"]), **QUICK)
    assert all(np.issubdtype(d, np.integer) for d in seen)
    assert str(sym.equations["function"][0].equation) == "x0 + x1"
    np.testing.assert_allclose(sym(ab[:4]), ab[:4].sum(1))


def test_callable_errors_name_the_fix(tmp_path):
    X = np.random.default_rng(0).uniform(-1, 1, (64, 2))
    with pytest.raises(sfx.SymTorchFXError, match="distilled as a whole"):
        sfx.compile(_np_law, ["x"], X, engine=Candidates(["x0"]), **QUICK)
    with pytest.raises(sfx.SymTorchFXError, match="sample_inputs= is required"):
        sfx.compile(_np_law, engine=Candidates(["x0"]), **QUICK)
    with pytest.raises(sfx.SymTorchFXError, match="numeric"):
        sfx.compile(lambda x: np.array(["a"] * len(x)), sample_inputs=X,
                    engine=Candidates(["x0"]), **QUICK)
    with pytest.raises(sfx.SymTorchFXError, match="callable"):
        sfx.compile(42, sample_inputs=X, engine=Candidates(["x0"]), **QUICK)
    # a file of a callable is not loaded onto a model, nor a model's onto a callable
    sym = sfx.compile(_np_law, sample_inputs=X, engine=Candidates(["x0*x1"]), **QUICK)
    path = tmp_path / "fn.sfx"
    sfx.save(sym, path)
    with pytest.raises(sfx.SerializationError, match="plain callable"):
        sfx.load(path, Host(False))
    doc = json.loads(path.read_text())
    doc["function"] = {"numpy": "yes"}
    path.write_text(json.dumps(doc))
    with pytest.raises(sfx.SerializationError, match="'function'"):
        sfx.load(path, _np_law)


# ----------------------------------------------------------------------------------------------
# derived input features


class Pair(nn.Module):
    """A message between two particles at (x0, x1) and (x2, x3) that depends on their
    separation only: dx*dy - r2/2, a quadratic of 4 coordinates, but 5 nodes of features."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)  # unused; lets load() find the device

    def forward(self, x):
        dx, dy = x[:, 0] - x[:, 2], x[:, 1] - x[:, 3]
        return (dx * dy - (dx**2 + dy**2) / 2)[:, None]


class Diff(nn.Module):
    def forward(self, x):
        return (2 * (x[:, 0] - x[:, 2]))[:, None]


FEATURES = {"dx": "x0 - x2", "dy": "x1 - x3", "r2": "(x0 - x2)^2 + (x1 - x3)^2"}


def test_features_are_searched_and_composed_back(tmp_path):
    torch.manual_seed(0)
    X = torch.rand(800, 4) * 4 - 2
    model = nn.Sequential(Pair())
    sym = sfx.compile(model, ["0"], X, features=FEATURES, engine=fast_engine(),
                      executor="inline", progress=False)
    eqs = sym.equations["0"]
    assert eqs.variables == ("dx", "dy", "r2")
    dx, dy, r2 = sympy.symbols("dx dy r2")
    assert equivalent(eqs[0].equation.expr, dx * dy - r2 / 2)
    assert "features: dx = x0 - x2" in str(sym.equations)
    with torch.no_grad():  # the symbolic module takes the original coordinates
        torch.testing.assert_close(sym(X), model(X), atol=1e-4, rtol=1e-4)
    path = tmp_path / "feat.sfx"
    sfx.save(sym, path)
    region = json.loads(path.read_text())["regions"][0]
    assert region["inputs"] == ["x0", "x1", "x2", "x3"]
    assert [f["name"] for f in region["features"]] == ["dx", "dy", "r2"]
    loaded = sfx.load(path, model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), sym(X))
    assert loaded.equations["0"].variables == ("dx", "dy", "r2")
    # and a copy keeps the composition
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(sym)(X), sym(X))


def test_features_over_given_variable_names_and_per_target():
    X = torch.rand(300, 4)
    model = nn.Sequential(Diff())
    sym = sfx.compile(model, ["0"], X, variable_names=["ax", "ay", "bx", "by"],
                      features={"0": {"d": "ax - bx"}}, engine=Candidates(["d", "2*d"]),
                      **QUICK)
    assert sym.equations["0"].variables == ("d",)
    assert str(sym.symbolic_modules["0"].equations()[0]) == "2*d"
    with torch.no_grad():
        torch.testing.assert_close(sym(X), model(X))


@pytest.mark.parametrize("features, words", [
    ({"dx": "x0 - x9"}, "x9"),
    ({"dx": "__import__('os')"}, "feature 'dx'"),
    ({"sin": "x0"}, "sin"),
    ({"dx": lambda x: x[x[:, 0] > 0]}, "comparison"),
    ({"dx": lambda x: torch.special.erfinv(x[:, 0])}, "erfinv"),
    ({"dx": lambda x: x.sum()}, "dim=-1"),
    ({"dx": lambda x: x.sum(0)}, "rows"),
    ({"dx": lambda x: torch.randn(3)}, "one value per row"),
    ({"c": "2.5"}, "constant"),
    ({"nope": {"dx": "x0"}}, "not targets"),
    ("x0 - x2", "name: equation"),
    ([3], "name: equation"),
])
def test_bad_features_name_the_fix(features, words):
    X = torch.rand(64, 4)
    with pytest.raises(sfx.SymTorchFXError, match=words):
        sfx.compile(nn.Sequential(Pair()), ["0"], X, features=features,
                    engine=Candidates(["x0"]), **QUICK)


def test_feature_functions_are_read_as_equations():
    """SymTorch's variable_transforms are python functions; torch and numpy code made of the
    grammar's functions becomes the same equations as the text form."""
    X = torch.rand(200, 4) * 4 - 2
    model = nn.Sequential(Pair())
    fns = {"dx": lambda x: x[:, 0] - x[:, 2],
           "dy": lambda x: np.subtract(x[:, 1], x[:, 3]),
           "r2": lambda x: torch.linalg.norm(x[:, :2] - x[:, 2:], dim=-1) ** 2}
    sym = sfx.compile(model, ["0"], X, features=fns, engine=Candidates(["dx*dy - r2/2"]),
                      **QUICK)
    module = sym.symbolic_modules["0"]
    texts = {n: str(e) for n, e in module.features}
    assert texts == {"dx": "x0 - x2", "dy": "x1 - x3", "r2": "(x0 - x2)**2 + (x1 - x3)**2"}
    with torch.no_grad():
        torch.testing.assert_close(sym(X), model(X))
    # an unnamed list, as SymTorch takes it, and a function of several features
    sym = sfx.compile(model, ["0"], X, features=[lambda x: x[:, :2] - x[:, 2:]],
                      engine=Candidates(["f00*f01"]), **QUICK)
    assert sym.equations["0"].variables == ("f00", "f01")


def test_hostile_features_in_a_file_are_refused(tmp_path):
    X = torch.rand(64, 4)
    model = nn.Sequential(Pair())
    sym = sfx.compile(model, ["0"], X, features=FEATURES, engine=Candidates(["dx"]), **QUICK)
    path = tmp_path / "feat.sfx"
    sfx.save(sym, path)
    cases = [
        ("features", [{"name": "dx", "expr": "__import__('os').system('true')"}], "rejected"),
        ("features", [{"name": "dx", "expr": "x0 - " * 30000 + "x0"}], "longer|rejected"),
        ("features", [{"name": "if", "expr": "x0"}], "names"),
        ("inputs", ["x0", "x1"], "'inputs'"),
        ("inputs", ["a b", "x1", "x2", "x3"], "'inputs'"),
    ]
    for key, value, words in cases:
        doc = json.loads(path.read_text())
        doc["regions"][0][key] = value
        path.write_text(json.dumps(doc))
        with pytest.raises(sfx.SerializationError, match=words):
            sfx.load(path, model)


# ----------------------------------------------------------------------------------------------
# output-dimension pruning during training

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from symtorch_fx.pruning import schedule  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(initial=st.integers(1, 64), data=st.data(), steps=st.integers(1, 400),
       end=st.floats(0.05, 1.0), kind=st.sampled_from(["exponential", "exp", "linear",
                                                        "cosine"]))
def test_schedules_go_from_all_to_keep_and_never_grow(initial, data, steps, end, kind):
    keep = data.draw(st.integers(1, initial))
    plan = schedule(initial, keep, steps, end, kind)
    assert len(plan) == steps and plan[0] == initial
    assert all(a >= b for a, b in zip(plan, plan[1:]))
    assert all(keep <= k <= initial for k in plan)
    done = max(1, int(end * steps))
    assert all(k == keep for k in plan[done:])


def test_schedules_differ_in_shape():
    exp, lin, cos = (schedule(101, 1, 100, 1.0, k) for k in ("exponential", "linear", "cosine"))
    # a quarter of the way: exponential has pruned most, cosine least
    assert exp[25] < lin[25] < cos[25]
    assert lin[50] == 51


class MessageNet(nn.Module):
    """A GNN-like model: an 8-dimensional message, read out linearly; the law needs 2."""

    def __init__(self):
        super().__init__()
        self.message = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, 8))
        self.readout = nn.Linear(8, 2)

    def forward(self, x):
        return self.readout(self.message(x))


def test_pruning_keeps_the_dimensions_the_law_needs_and_compile_distils_them(tmp_path):
    torch.manual_seed(0)
    X = torch.rand(2048, 3) * 2 - 1
    Y = torch.stack([X[:, 0] * X[:, 1], X[:, 0] + 2 * X[:, 2]], -1)
    model = MessageNet()
    steps = 1500
    pruner = sfx.prune_outputs(model, "message", keep=2, steps=steps, schedule="cosine")
    kept_over_time = train_pruned(model, X, Y, pruner, steps, every=10)
    assert kept_over_time[0] == 8 and kept_over_time[-1] == 2
    assert kept_over_time == sorted(kept_over_time, reverse=True)
    active = pruner.active_dimensions()
    assert len(active) == 2 and pruner.outputs == {"message": active}
    model.eval()
    with torch.no_grad():
        assert float(((model(X) - Y) ** 2).mean()) < 2e-3  # two dimensions carry the law
        msg = model.message(X)
    off = [i for i in range(8) if i not in active]
    assert torch.count_nonzero(msg[:, off]) == 0  # the masked ones are zeros
    assert "message.sfx_output_mask" in model.state_dict()

    sym = sfx.compile(model, ["message"], X[:1024], outputs=pruner.outputs,
                      engine=fast_engine(), executor="inline", progress=False)
    eqs = sym.equations["message"]
    assert [f.output for f in eqs] == [f"y{i}" for i in active]
    with torch.no_grad():
        err = float(((sym(X) - model(X)) ** 2).mean() / (Y**2).mean())
    assert err < 0.05, err
    pruner.remove()
    assert "message.sfx_output_mask" not in model.state_dict()


def test_pruning_errors_name_the_fix():
    model = MessageNet()
    with pytest.raises(sfx.SymTorchFXError, match="not a submodule"):
        sfx.prune_outputs(model, "mesage", keep=2, steps=10)
    with pytest.raises(sfx.SymTorchFXError, match="schedule"):
        sfx.prune_outputs(model, "message", keep=2, steps=10, schedule="step")
    p = sfx.prune_outputs(model, "message", keep=9, steps=10)
    with pytest.raises(sfx.SymTorchFXError, match="already being pruned"):
        sfx.prune_outputs(model, "message", keep=2, steps=10)
    with pytest.raises(sfx.SymTorchFXError, match="nothing ran"):
        p.step(0)
    with pytest.raises(sfx.SymTorchFXError, match="only 8"):
        p.step(0, sample_inputs=torch.rand(4, 3))
    p.remove()


def test_operon_options_pyoperon_does_not_take_fail_before_any_search():
    X = np.random.default_rng(0).uniform(-1, 1, (64, 2))
    calls = []

    def f(x):
        calls.append(1)
        return x[:, 0]

    for bad, words in [(dict(seed=3), "convert\\(seed=\\)"), (dict(random_state=3), "seeded"),
                       (dict(populaton_size=9), "takes no option 'populaton_size'")]:
        with pytest.raises(sfx.SymTorchFXError, match=words):
            sfx.compile(f, sample_inputs=X, engine=sfx.Operon(**bad), progress=False)
    assert not calls  # refused before the callable (a language model, say) ran


def test_labels_work_for_a_numpy_callable():
    """The network's error from labels (here: a callable that errs by 0.1 everywhere)."""
    X = np.random.default_rng(0).uniform(-1, 1, (300, 2))
    truth = X[:, 0] * X[:, 1]
    sym = sfx.compile(lambda x: x[:, 0] * x[:, 1] + 0.1, sample_inputs=X, labels=truth,
                      engine=Candidates(["x0*x1 + 0.1", "x0*x1"]), **QUICK)
    (front,) = sym.equations["function"]
    assert front.info["noise"] == pytest.approx(0.01)


def test_outputs_through_the_torch_compile_backend(tmp_path):
    """Record, distil outputs 0 and 2, and run them through torch.compile; the file it saves
    loads onto the eager model with the same outputs."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Host(False).eval()
    X = torch.rand(400, 2) * 2 - 1
    be = sfx.backend(targets=["block"], compiler="aot_eager", outputs=[0, 2],
                     engine=Candidates(["1.5*x0*x1", "x0 + 0.75"]), selection="accuracy",
                     **{k: v for k, v in QUICK.items()})
    compiled = torch.compile(model, backend=be)
    with torch.no_grad():
        compiled(X)
    eqs = be.distill()
    assert [f.output for f in eqs["block"]] == ["y0", "y2"]
    with torch.no_grad():
        got = compiled(X)
        inner = model.block(X)
        cols = [1.5 * X[:, 0] * X[:, 1], inner[:, 1], X[:, 0] + 0.75, inner[:, 3]]
        torch.testing.assert_close(got, model.head(torch.stack(cols, -1)))
    path = tmp_path / "be.sfx"
    be.save(path)
    with torch.no_grad():
        torch.testing.assert_close(sfx.load(path, model)(X), got)
    torch._dynamo.reset()


def test_pysr_options_given_to_operon_point_at_pysr():
    for key in ("complexity_of_operators", "niterations", "binary_operators"):
        with pytest.raises(sfx.SymTorchFXError, match="sfx.PySR"):
            sfx.Operon(**{key: 1}).check()
