"""The scenarios SymTorch's users run (its tests, API demos and case studies), written the way
a user moving over would write them with our API.

SymTorch (astroautomata/SymTorch) wraps one block at a time, ``SymbolicModel(block)``, and
calls ``distill`` / ``switch_to_symbolic`` / ``switch_to_block`` / ``setup_pruning`` on it. Here
the same work is ``sfx.compile(model, targets, X)``, ``sym.use(...)``, ``sym.select(...)``,
``sfx.prune_outputs``, ``sfx.explain`` and ``sfx.save``/``sfx.load``. Each test's docstring
names the SymTorch test or demo it ports. SymTorch's own tests mock PySR; every search here is
the real embedded engine (Operon) on a small seeded budget, and the blocks are trained networks
or exact laws.
"""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import sympy
import torch
import torch.nn as nn
from conftest import PartlyLaw, equivalent, fast_engine, train_pruned

import symtorch_fx as sfx

QUICK = dict(executor="inline", progress=False)


def small_engine(**kw) -> sfx.Operon:
    """A few seconds per search on two busy cores (one search per output, no transforms)."""
    return fast_engine(**dict(dict(population_size=200, generations=25), **kw))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small networks train several times faster on one thread than on two contended ones."""
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)


def fit(net: nn.Module, X: torch.Tensor, Y: torch.Tensor, iters: int = 200) -> float:
    """Train ``net`` on (X, Y) full-batch with L-BFGS (a fraction of a second for these
    sizes); returns the final MSE. Dropout is off while it trains (L-BFGS needs a deterministic
    loss); the network is left in training mode, as a user's would be after training."""
    torch.manual_seed(0)
    net.eval()
    opt = torch.optim.LBFGS(net.parameters(), lr=1, max_iter=iters, history_size=50,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = ((net(X) - Y) ** 2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        mse = float(((net(X) - Y) ** 2).mean())
    net.train()
    return mse


# ----------------------------------------------------------------------------------------------
# getting_started_demo: an MLP block inside a model, distilled, switched, switched back


class MLP(nn.Module):
    """The demo's MLP: Linear/ReLU/Dropout stacks (SiLU here, so a smooth law fits it)."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 32):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(d_in, hidden), nn.SiLU(), nn.Dropout(0.2),
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(0.2),
            nn.Linear(hidden, d_out),
        )

    def forward(self, x):
        return self.mlp(x)


class SimpleModel(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.mlp = MLP(d_in, d_out)

    def forward(self, x):
        return self.mlp(x)


def started_law(X):
    """The demo's law, y = x0^2 + 3 sin(x4) - 4, over five inputs of which three are unused."""
    return X[:, 0] ** 2 + 3 * np.sin(X[:, 4]) - 4 if isinstance(X, np.ndarray) else (
        X[:, 0] ** 2 + 3 * torch.sin(X[:, 4]) - 4)


_x = sympy.symbols("x0 x1 x2 x3 x4")
STARTED_TRUTH = _x[0] ** 2 + 3 * sympy.sin(_x[4]) - 4


@pytest.fixture(scope="module")
def started():
    """The getting-started model trained on the law, and distilled once (``model.mlp``)."""
    torch.manual_seed(0)
    X = torch.rand(2048, 5) * 4 - 2
    Y = started_law(X)[:, None]
    model = SimpleModel(5, 1)
    mse = fit(model, X[:1024], Y[:1024])
    assert mse < 1e-3, mse
    assert model.training  # left in training mode, dropout on: compile records in eval mode
    sym = sfx.compile(model, ["mlp"], X[:512],
                      engine=small_engine(population_size=300, generations=40), **QUICK)
    return model, X, Y, sym


def test_getting_started_distil_the_mlp_of_a_model(started):
    """SymTorch getting_started_demo (wrap ``model.mlp``, ``distill(X, parent_model=model)``,
    ``show_symbolic_expression``, ``switch_to_symbolic(complexity=[14])``,
    ``get_symbolic_function``); tests ``test_distill_with_parent_model``,
    ``test_forward_symbolic_mode``, ``test_get_symbolic_function``."""
    model, X, Y, sym = started
    assert model.training  # the model's modes are put back after recording
    front = sym.equations["mlp"][0]
    assert equivalent(front.equation.expr, STARTED_TRUTH), front
    report = str(sym.equations)  # show_symbolic_expression: the whole front, chosen marked
    assert "mlp / y" in report and "complexity" in report
    # the symbolic forward pass of the whole model, against the law it learnt
    with torch.no_grad():
        out = sym(X)
    assert out.shape == (len(X), 1)
    assert float(((out - Y) ** 2).mean()) < 1e-2
    # get_symbolic_function(complexity=k): an equation of the front, callable on numpy rows
    Xn = X[:50].double().numpy()
    np.testing.assert_allclose(front.equation(Xn), started_law(Xn), atol=0.1)
    simplest = front[0]
    assert simplest.complexity == min(front.complexities)
    assert np.all(np.isfinite(simplest(Xn)))
    # switch_to_symbolic(complexity=[k]): another equation of the front runs in the model
    sym2 = copy.deepcopy(sym)
    k = front.complexities[1]
    sym2.select("mlp", complexity=[k])
    assert sym2.equations["mlp"][0].equation.complexity <= k
    with torch.no_grad():
        simpler = sym2(X)
    assert not torch.allclose(simpler, out)


def test_switch_to_symbolic_and_back(started):
    """SymTorch ``switch_to_symbolic`` / ``switch_to_block`` (getting_started_demo, pruning
    demo, benchmark_symbolicmodel.py); tests ``test_switch_to_block``,
    ``test_complete_workflow_module``, ``test_forward_block_mode_module`` and
    ``test_switch_to_symbolic_without_distill``."""
    model, X, _, sym = started
    sym = copy.deepcopy(sym).eval()  # the demo's model.eval(): no dropout in the MLP
    base = copy.deepcopy(model).eval()
    with torch.no_grad():
        symbolic = sym(X)
        sym.use("neural")
        assert sym.modes == {"mlp": "neural"}
        neural = sym(X)
        sym.use("symbolic", "mlp")
        again = sym(X)
    assert torch.equal(neural, base(X))  # the MLP itself, bit for bit (dropout off)
    assert torch.equal(again, symbolic)
    assert not torch.equal(neural, symbolic)
    # and the model itself, as it was
    assert sfx.restore(copy.deepcopy(sym)).__class__ is SimpleModel
    # switching before distilling: a prepared model has nothing to switch to
    prepared = sfx.prepare(SimpleModel(5, 1), ["mlp"])
    with pytest.raises(AttributeError):
        prepared.use("symbolic")
    with pytest.raises(sfx.SymTorchFXError, match="'neural' or 'symbolic'"):
        sym.use("block")


def test_fine_tune_constants_after_switching(started):
    """Fine-tuning after ``switch_to_symbolic``: the chosen equation's constants are
    parameters of the model, trained like any other; the report shows the tuned values."""
    _, X, Y, sym = started
    sym = copy.deepcopy(sym)
    sym.select("mlp", complexity=[9])  # a simpler form, whose constants have room to move
    module = sym.symbolic_modules["mlp"]
    before = str(sym.equations["mlp"][0].equation)
    assert any(p is module.constants for p in sym.parameters())
    opt = torch.optim.Adam([module.constants], lr=0.05)
    losses = []
    for _ in range(60):
        loss = ((sym(X[:512]) - Y[:512]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert str(sym.equations["mlp"][0].equation) != before


def test_save_and_load_equations(started, tmp_path):
    """SymTorch ``state_dict`` save/load: tests ``test_save_load_basic_workflow``,
    ``test_save_load_equation_mode``, ``test_save_load_with_regressors`` (block mode comes back
    as block mode), ``test_forward_consistency_after_load``, ``test_full_model_save_load``,
    ``test_cross_device_save_load``, ``test_state_dict_no_cache_data``,
    ``test_regressor_deserialization_failure``; pinn_demo's ``save_model``/``load_model``."""
    model, X, _, sym = started
    sym = copy.deepcopy(sym)
    opt = torch.optim.SGD([sym.symbolic_modules["mlp"].constants], lr=1e-3)
    (sym(X[:64]) ** 2).mean().backward()
    opt.step()  # tuned constants, which only the state_dict carries exactly
    with torch.no_grad():
        want = sym(X)
    path = tmp_path / "model.sfx"
    sfx.save(sym, path)
    weights = io.BytesIO()
    torch.save(sym.state_dict(), weights)
    # a fresh process: rebuild the model, load its weights, load the equations onto it
    fresh = SimpleModel(5, 1)
    fresh.load_state_dict(copy.deepcopy(model).state_dict())
    loaded = sfx.load(path, fresh)
    assert loaded.modes == {"mlp": "symbolic"}
    weights.seek(0)
    loaded.load_state_dict(torch.load(weights, map_location="cpu"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), want, rtol=0, atol=0)
    # no recorded data in the state_dict: the model's own tensors and the constants
    extra = set(sym.state_dict()) - set(model.state_dict())
    assert extra == {"sfx_symbolic.mlp.constants"}
    # saved in block mode, loaded in block mode
    sym.use("neural")
    sfx.save(sym, path)
    assert sfx.load(path, fresh).modes == {"mlp": "neural"}
    # the whole object through torch.save / torch.load
    sym.use("symbolic")
    whole = io.BytesIO()
    torch.save(sym, whole)
    whole.seek(0)
    back = torch.load(whole, weights_only=False, map_location="cpu")
    with torch.no_grad():
        torch.testing.assert_close(back(X), want, rtol=0, atol=0)
    back.use("neural")
    # a damaged file is refused, naming the field
    doc = json.loads(path.read_text())
    front = doc["regions"][0]["fronts"][0]
    front["equations"][front["chosen"]]["expr"] = "__import__('os').system('true')"
    path.write_text(json.dumps(doc))
    with pytest.raises(sfx.SerializationError, match="expr"):
        sfx.load(path, fresh)


def test_record_once_search_again_with_other_settings():
    """SymTorch's I/O cache: tests ``test_cache_hit_module``,
    ``test_cache_preserves_sr_params_rerun``, ``test_cache_data_matches_forward_pass_module``.
    Recorded once (``prepare`` + ``run``), searched twice with other engine settings: the data
    does not go through the model again, and what was recorded is what the block computed."""
    torch.manual_seed(0)
    block = nn.Linear(2, 1)
    model = nn.Sequential(nn.Identity(), block)
    w, b = block.weight.detach()[0].double().numpy(), float(block.bias.detach())
    seen = []
    block.register_forward_hook(lambda m, a, out: seen.append(a[0].detach().clone()))
    X = torch.rand(300, 2) * 2 - 1
    prepared = sfx.prepare(model, ["1"])
    sfx.run(prepared, X)
    assert len(seen) == 1 and torch.equal(seen[0], X)
    (recorder,) = [m for m in prepared.modules() if isinstance(m, sfx.Recorder)]
    Xr, Yr = recorder.data()  # the block's inputs and outputs, as float64
    assert Xr.shape == (300, 2) and Yr.shape == (300, 1)
    np.testing.assert_allclose(Yr[:, 0], Xr @ w + b, rtol=1e-6, atol=1e-6)
    first = sfx.convert(prepared, engine=small_engine(generations=5), **QUICK)
    second = sfx.convert(prepared, engine=small_engine(generations=30), **QUICK)
    # no second pass of the data (a search may still query the block on points of its own)
    assert sum(s.shape == X.shape and torch.equal(s, X) for s in seen) == 1
    x0, x1 = sympy.symbols("x0 x1")
    for sym in (first, second):
        f = sympy.lambdify((x0, x1), sym.equations["1"][0].equation.expr)
        np.testing.assert_allclose(f(*Xr.T), Xr @ w + b, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# a standalone block: SymbolicModel(nn.Linear(5, 3)).distill(x)


def test_distil_a_standalone_layer_all_outputs():
    """SymTorch tests ``test_distill_basic_module`` and ``test_init_with_nn_module``: a bare
    ``nn.Linear(d, 3)`` distilled on its own, one equation per output. Our spelling names the
    whole module as the target (``targets=[""]``, or its class)."""
    torch.manual_seed(0)
    layer = nn.Linear(2, 3)
    X = torch.rand(400, 2) * 2 - 1
    sym = sfx.compile(layer, [""], X, engine=small_engine(), **QUICK)
    eqs = sym.equations[""]
    assert len(eqs) == 3
    with torch.no_grad():
        torch.testing.assert_close(sym(X), layer(X), atol=1e-4, rtol=1e-4)
    rows = X[:20].double().numpy()
    with torch.no_grad():
        want = layer(X[:20]).double().numpy()
    for k, front in enumerate(eqs):  # each output's equation is that output's affine map
        np.testing.assert_allclose(front.equation(rows), want[:, k], atol=1e-4)


def test_distil_a_standalone_layer_without_naming_a_target():
    """SymTorch ``SymbolicModel(nn.Linear(5, 3)).distill(x)``, ported literally: the module is
    the block, as a callable would be."""
    torch.manual_seed(0)
    layer = nn.Linear(2, 3)
    X = torch.rand(400, 2) * 2 - 1
    sym = sfx.compile(layer, sample_inputs=X, engine=small_engine(), **QUICK)
    with torch.no_grad():
        torch.testing.assert_close(sym(X), layer(X), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# python callables


def test_distil_a_python_function():
    """SymTorch getting_started_demo, "Wrapping a Python Function"; tests
    ``test_distill_numpy_function``, ``test_forward_block_mode_callable``,
    ``test_complete_workflow_callable``, ``test_distill_callable_with_parent_error``."""
    X = np.random.default_rng(0).uniform(-2, 2, (600, 5))
    sym = sfx.compile(started_law, sample_inputs=X, engine=small_engine(), **QUICK)
    (front,) = sym.equations["function"]
    assert equivalent(front.equation.expr, STARTED_TRUTH), front
    y = sym(X[:8])  # numpy in, numpy out
    assert isinstance(y, np.ndarray) and y.shape == (8,)
    np.testing.assert_allclose(y, started_law(X[:8]), atol=1e-4)
    t = sym(torch.from_numpy(X[:8]))  # tensors in, tensors out
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), y, rtol=1e-6)
    sym.use("neural")  # switch_to_block: the function itself
    np.testing.assert_array_equal(sym(X[:8]), started_law(X[:8]))
    sym.use("symbolic")
    # a callable is distilled as a whole: there is no parent model or target inside it
    with pytest.raises(sfx.SymTorchFXError, match="distilled as a whole"):
        sfx.compile(started_law, ["mlp"], X, engine=small_engine(), **QUICK)
    assert sfx.restore(sym) is started_law


def _numpy_in_tensor_out(x):
    return torch.sin(torch.as_tensor(x, dtype=torch.float32)[:, 0]) * 2


def _two_outputs(x):
    return np.column_stack([x[:, 0] ** 2, x[:, 1] + x[:, 2]])


def test_callable_returning_a_tensor_and_one_of_two_outputs():
    """SymTorch tests ``test_distill_torch_function`` (numpy in, a torch tensor out) and
    ``test_distill_multi_output_callable`` (one equation per column)."""
    X = np.random.default_rng(1).uniform(-2, 2, (400, 3))
    sym = sfx.compile(_numpy_in_tensor_out, sample_inputs=X, engine=small_engine(), **QUICK)
    x0, x1, x2 = sympy.symbols("x0 x1 x2")
    assert equivalent(sym.equations["function"][0].equation.expr, 2 * sympy.sin(x0))
    multi = sfx.compile(_two_outputs, sample_inputs=X, engine=small_engine(), **QUICK)
    eqs = multi.equations["function"]
    assert len(eqs) == 2
    assert equivalent(eqs[0].equation.expr, x0**2)
    assert equivalent(eqs[1].equation.expr, x1 + x2)
    out = multi(X[:5])
    assert out.shape == (5, 2)
    np.testing.assert_allclose(out, _two_outputs(X[:5]), atol=1e-5)


def _celsius_to_fahrenheit(temps):
    """What SymTorch's llm_maths_demo asks an LLM (a deterministic stand-in: the demo needs a
    1B-parameter model); it gets integer temperatures, as the prompt does."""
    assert np.issubdtype(temps.dtype, np.integer)
    return np.array([9 / 5 * t + 32 for t in temps[:, 0].tolist()])


def test_llm_maths_demo_a_callable_of_integers():
    """SymTorch llm_maths_demo (``SymbolicModel(llm_C_to_F).distill(X_temps)``,
    ``show_symbolic_expression(complexity=5)``): a callable that formats integers into a
    prompt; the law comes out."""
    temps = np.random.default_rng(290402).integers(-20, 200, (50, 1))
    sym = sfx.compile(_celsius_to_fahrenheit, sample_inputs=temps,
                      engine=small_engine(generations=15), **QUICK)
    front = sym.equations["function"][0]
    x0 = sympy.Symbol("x0")
    assert equivalent(front.equation.expr, sympy.Rational(9, 5) * x0 + 32)
    sym.select(complexity=[5])
    assert sym.equations["function"][0].equation.complexity <= 5
    np.testing.assert_allclose(sym(np.array([[100]])), [212.0], rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# distilling some output dimensions only


def Block():  # noqa: N802 - a model class, as the tests read it
    """Three outputs: 0 and 2 are exact laws, 1 comes from a trainable layer."""
    return PartlyLaw(3)


class Parent(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(3, 2)
        self.block = Block()
        self.layer2 = nn.Linear(3, 1)

    def forward(self, x):
        return self.layer2(self.block(self.layer1(x)))


def test_distil_some_output_dimensions(tmp_path):
    """SymTorch ``distill(x, output_dim=k)``: tests ``test_distill_specific_dimension``,
    ``test_distill_output_dim_out_of_range``, ``test_get_symbolic_function_invalid_dimension``,
    ``test_partial_regressors`` (save/load of some dimensions); gnns_demo (the two
    highest-variance message dimensions, one ``distill`` call each)."""
    torch.manual_seed(0)
    model = Parent().eval()
    X = torch.rand(500, 3) * 2 - 1
    # gnns_demo picks the dimensions of highest standard deviation; here 0 and 2 are the laws
    sym = sfx.compile(model, ["block"], X, outputs=[0, 2], engine=small_engine(), **QUICK)
    eqs = sym.equations["block"]
    assert [f.output for f in eqs] == ["y0", "y2"]
    x0, x1 = sympy.symbols("x0 x1")
    assert equivalent(eqs[0].equation.expr, x0 * x1)
    assert equivalent(eqs[1].equation.expr, x0 + sympy.Rational(1, 2))
    with torch.no_grad():
        torch.testing.assert_close(sym(X), model(X), atol=1e-5, rtol=1e-5)
    with pytest.raises(IndexError):
        eqs[5]  # get_symbolic_function(dim=10)
    # one dimension only (output_dim=1), the neural one: the other two stay the network's
    one = sfx.compile(model, ["block"], X, outputs=[1], engine=small_engine(), **QUICK)
    assert [f.output for f in one.equations["block"]] == ["y1"]
    with torch.no_grad():
        assert float(((one(X) - model(X)) ** 2).mean()) < 1e-3
    # an output that does not exist is refused before any search
    with pytest.raises(sfx.SymTorchFXError, match="indices of its 3 outputs"):
        sfx.compile(model, ["block"], X, outputs=[5], engine=small_engine(), **QUICK)
    # saved and loaded with the dimensions it has
    path = tmp_path / "partial.sfx"
    sfx.save(sym, path)
    loaded = sfx.load(path, model)
    assert [f.output for f in loaded.equations["block"]] == ["y0", "y2"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), sym(X))


# ----------------------------------------------------------------------------------------------
# variable names, custom operators (pinns_demo)


def heat(x, t, alpha=0.2):
    return torch.exp(-np.pi**2 * alpha * t) * torch.sin(np.pi * x)


class RegularNN(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                 nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)


def test_pinn_demo_variable_names_and_inv_operator(tmp_path):
    """SymTorch pinns_demo / case_studies/pinn_demo: ``fit_params={'variable_names': ['x',
    't']}``, ``unary_operators=["inv(x) = 1/x", "sin", "exp"]``, ``switch_to_symbolic(
    complexity=13)``; test ``test_save_load_variable_names``. The network learns the heat
    equation's solution u = exp(-pi^2 alpha t) sin(pi x) (here by regression, not a PDE loss)."""
    torch.manual_seed(0)
    xt = torch.rand(1024, 2)
    u = heat(xt[:, 0], xt[:, 1])[:, None]
    pinn = RegularNN()
    assert fit(pinn, xt, u) < 1e-4
    pinn.eval()
    engine = small_engine(operators=["add", "sub", "mul", "inv(x) = 1/x", "sin", "exp"],
                          generations=30)
    sym = sfx.compile(pinn, ["net"], xt[:512], variable_names=["x", "t"], engine=engine,
                      **QUICK)
    eqs = sym.equations["net"]
    assert eqs.variables == ("x", "t")
    chosen = eqs[0].equation
    x, t = sympy.symbols("x t")
    assert {v.name for v in chosen.expr.free_symbols} == {"x", "t"}
    grid = torch.rand(400, 2)
    f = sympy.lambdify((x, t), chosen.expr, "numpy")
    got = np.asarray(f(grid[:, 0].numpy(), grid[:, 1].numpy()), dtype=float)
    np.testing.assert_allclose(got, heat(grid[:, 0], grid[:, 1]).numpy(), atol=0.02)
    assert chosen.complexity <= 13
    sym.select("net", complexity=[13])  # switch_to_symbolic(complexity=13)
    assert sym.equations["net"][0].equation.complexity <= 13
    path = tmp_path / "pinn.sfx"
    sfx.save(sym, path)
    assert json.loads(path.read_text())["regions"][0]["variables"] == ["x", "t"]
    assert sfx.load(path, pinn).equations["net"].variables == ("x", "t")


def test_custom_operators():
    """SymTorch's ``sr_params={"unary_operators": ["inv(x) = 1/x", ...]}`` (gnns_demo,
    pinns_demo) and SLIME demo's ``binary_operators=[..., 'cond']``: a definition in PySR's
    style works on the embedded engine; an operator it cannot build says what to do."""
    X = np.random.default_rng(0).uniform(0.5, 2.5, (400, 2))
    law = lambda x: 2 / x[:, 0] + x[:, 1]  # noqa: E731
    engine = small_engine(operators=["add", "mul", "inv(x) = 1/x"])
    sym = sfx.compile(law, sample_inputs=X, engine=engine, **QUICK)
    x0, x1 = sympy.symbols("x0 x1")
    assert equivalent(sym.equations["function"][0].equation.expr, 2 / x0 + x1)
    with pytest.raises(sfx.SymTorchFXError, match="cannot search with operator 'cond'.*define "
                       "one"):
        sfx.Operon(operators=["add", "cond"])
    with pytest.raises(sfx.SymTorchFXError, match="use sfx.PySR for erf"):
        sfx.Operon(operators=["add", "erf"])


SR_PARAMS = dict(complexity_of_operators={"sin": 3, "exp": 3}, complexity_of_constants=2,
                 constraints={"sin": 3, "exp": 3}, parsimony=0.01, maxsize=25, batching=True,
                 nested_constraints={"sin": {"sin": 0, "exp": 0}},
                 elementwise_loss="loss(prediction, target) = abs(prediction - target)")


def test_pysr_only_search_settings():
    """SymTorch's ``sr_params`` (getting_started_demo, pruning_demo, gnns_demo, pinns_demo):
    PySR's own settings. They go to PySR through ``sfx.PySR(**settings)``; the embedded
    engine refuses them before the model runs, naming what it takes. The PySR search itself is
    PySR-only: it needs Julia, and is tested live in tests/test_distill.py."""
    X = torch.rand(200, 3)
    with pytest.raises(sfx.SymTorchFXError, match="takes no option 'complexity_of_operators'"):
        sfx.compile(Parent().eval(), ["block"], X, engine=sfx.Operon(**SR_PARAMS), **QUICK)
    engine = sfx.PySR(**SR_PARAMS)
    assert engine.kwargs == SR_PARAMS
    try:
        engine.check()
    except sfx.EngineUnavailableError as e:
        assert "sfx.Operon()" in str(e)  # says how to install PySR, or what runs without it
        pytest.skip(f"PySR-only: a PySR search needs pysr and Julia ({str(e)[:60]}...)")
    pytest.skip("PySR-only: the live PySR search is tests/test_distill.py's (slow)")


# ----------------------------------------------------------------------------------------------
# variable transforms (gnns_demo)


class EdgeModel(nn.Module):
    """A GNN edge model on [x, y, vx, vy, q, m] of two particles: a four-dimensional message,
    two dimensions of which carry the 1/r force (m1 m2 / r^2 along the separation)."""

    def forward(self, e):
        dx, dy = e[:, 0] - e[:, 6], e[:, 1] - e[:, 7]
        f = -e[:, 5] * e[:, 11] / (dx**2 + dy**2)
        return torch.stack([0.01 * e[:, 2], f * dx, 0.01 * e[:, 3], f * dy], -1)


class GNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.edge_model = EdgeModel()
        self.node_model = nn.Linear(4, 2)

    def forward(self, e):
        return self.node_model(self.edge_model(e))


# the demo's variable_transforms and variable_names (its r adds 1e-2 against r = 0; here the
# particles are kept 0.5 apart, so r is the distance itself and the law is exact in it)
TRANSFORMS = [
    lambda x: x[:, 0] - x[:, 6],
    lambda x: x[:, 1] - x[:, 7],
    lambda x: torch.sqrt((x[:, 0] - x[:, 6]) ** 2 + (x[:, 1] - x[:, 7]) ** 2),
    lambda x: x[:, 4],
    lambda x: x[:, 10],
    lambda x: x[:, 5],
    lambda x: x[:, 11],
]
NAMES = ["dx", "dy", "r", "q_one", "q_two", "m_one", "m_two"]


def gnn_edges(n: int = 800) -> torch.Tensor:
    """Edge inputs [x, y, vx, vy, q, m] of two particles at least 0.5 apart."""
    torch.manual_seed(0)
    pos = torch.rand(n, 2, 2) * 4 - 2
    pos = pos[(pos[:, 0] - pos[:, 1]).norm(dim=1) > 0.5]
    n = len(pos)
    nodes = torch.cat([pos, torch.randn(n, 2, 2), torch.rand(n, 2, 1) * 2 - 1,
                       torch.rand(n, 2, 1) + 0.5], -1)
    return nodes.reshape(n, 12)


def test_gnn_demo_variable_transforms(tmp_path):
    """SymTorch gnns_demo: ``variable_transforms=[lambda x: x[:, 0] - x[:, 6], ...]`` with
    ``variable_names=['dx', 'dy', 'r', 'q_one', 'q_two', 'm_one', 'm_two']``, the two message
    dimensions of highest variance, ``inv(x) = 1/x``; tests
    ``test_distill_with_transforms_module``, ``test_save_load_with_variable_transforms``,
    ``test_multiple_save_load_cycles``, ``test_save_load_unserializable_transforms_warning``
    (the functions are read once as equations and saved as text; one that has no equation is
    refused up front)."""
    edges = gnn_edges()
    model = GNN().eval()
    with torch.no_grad():
        messages = model.edge_model(edges)
    dims = sorted(messages.std(0).argsort(descending=True)[:2].tolist())
    assert dims == [1, 3]
    engine = small_engine(operators=["add", "sub", "mul", "inv(x) = 1/x", "square"])
    sym = sfx.compile(model, ["edge_model"], edges, features=dict(zip(NAMES, TRANSFORMS)),
                      outputs=dims, engine=engine, **QUICK)
    eqs = sym.equations["edge_model"]
    assert eqs.variables == tuple(NAMES)
    assert "r = sqrt((x0 - x6)^2 + (x1 - x7)^2)" in str(sym.equations)
    dx, dy, r, m1, m2 = sympy.symbols("dx dy r m_one m_two")
    assert equivalent(eqs[0].equation.expr, -dx * m1 * m2 / r**2), eqs[0]
    assert equivalent(eqs[1].equation.expr, -dy * m1 * m2 / r**2), eqs[1]
    with torch.no_grad():  # the symbolic edge model still takes the 12 raw features
        want = model(edges)
        torch.testing.assert_close(sym(edges), want, atol=1e-4, rtol=1e-4)
    # three save/load cycles, each from the model the last one loaded
    current = sym
    for cycle in range(3):
        path = tmp_path / f"cycle{cycle}.sfx"
        sfx.save(current, path)
        current = sfx.load(path, model)
        assert current.equations["edge_model"].variables == tuple(NAMES)
        with torch.no_grad():
            torch.testing.assert_close(current(edges), sym(edges), rtol=0, atol=0)
    region = json.loads((tmp_path / "cycle2.sfx").read_text())["regions"][0]
    assert [f["name"] for f in region["features"]] == NAMES  # saved as equations, not code
    # a transform with no equation (a comparison) is refused before the search, saying so
    with pytest.raises(sfx.SymTorchFXError, match="write this feature as an equation"):
        sfx.compile(model, ["edge_model"], edges,
                    features={"left": lambda x: (x[:, 0] > x[:, 6]).float()}, engine=engine,
                    **QUICK)


def test_gnn_demo_transforms_named_by_variable_names():
    """SymTorch gnns_demo, ported literally: ``distill(x, variable_transforms=transforms,
    fit_params={'variable_names': names})``, the names naming the transforms."""
    model = GNN().eval()
    sym = sfx.compile(model, ["edge_model"], gnn_edges(), features=TRANSFORMS,
                      variable_names=NAMES, outputs=[1, 3],
                      engine=small_engine(operators=["add", "sub", "mul", "inv(x) = 1/x",
                                                     "square"]), **QUICK)
    assert sym.equations["edge_model"].variables == tuple(NAMES)


# ----------------------------------------------------------------------------------------------
# pruning (pruning_demo)


class PrunedModel(nn.Module):
    """The pruning demo's model: an MLP f with a 32-dimensional output (8 here), then a
    linear g that combines what f gives."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.f_net = nn.Sequential(nn.Linear(5, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(),
                                   nn.Linear(32, width))
        self.g_net = nn.Linear(width, 1)

    def forward(self, x):
        return self.g_net(self.f_net(x))


def test_pruning_demo_train_prune_distil_both_blocks():
    """SymTorch pruning_demo (``setup_pruning(initial_dim, target_dim=2, end_step_frac=0.5,
    decay_rate='exp')``, ``prune(step, sample_data=X_val, parent_model=model)`` every step,
    ``pruning_mask.sum()``, ``distill`` of the active dimensions of ``f_net`` and of ``g_net``,
    both switched to symbolic and back); tests ``test_forward_with_pruning_mask``,
    ``test_save_load_with_pruning``, ``test_setup_pruning_callable_error``."""
    torch.manual_seed(0)
    X = torch.rand(2048, 5) * 2 - 1
    Y = (2.5 * X[:, 0] ** 2 - 1.3 * torch.sin(X[:, 4]))[:, None]
    X_val = X[:256]
    model = PrunedModel()
    steps = 1000
    pruner = sfx.prune_outputs(model, "f_net", keep=2, steps=steps, schedule="exp",
                               end_fraction=0.5)
    active = train_pruned(model, X, Y, pruner, steps, sample_inputs=X_val)
    assert active[0] == 8 and active[-1] == 2 and active == sorted(active, reverse=True)
    assert active.index(2) <= steps // 2  # done by end_fraction
    model.eval()
    kept = pruner.active_dimensions()
    with torch.no_grad():
        assert float(((model(X) - Y) ** 2).mean()) < 5e-3
        messages = model.f_net(X)
    off = [i for i in range(8) if i not in kept]
    assert torch.count_nonzero(messages[:, off]) == 0  # masked dimensions are zeros
    # the mask is in the state_dict, and loads into a fresh model being pruned the same way
    fresh = PrunedModel()
    sfx.prune_outputs(fresh, "f_net", keep=2, steps=steps, width=8)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(X), model(X))
    # distil the active dimensions of f_net, and g_net on what f_net gives it
    sym = sfx.compile(model, ["f_net", "g_net"], X[:512], outputs=pruner.outputs,
                      engine=small_engine(generations=15), **QUICK)
    assert [f.output for f in sym.equations["f_net"]] == [f"y{i}" for i in kept]
    g_eq = sym.equations["g_net"][0].equation.expr
    assert {v.name for v in g_eq.free_symbols} <= {f"x{i}" for i in kept}
    with torch.no_grad():
        symbolic = sym(X)
        assert float(((symbolic - model(X)) ** 2).mean()) < 0.02 * float(Y.var())
        sym.use("neural")
        assert torch.equal(sym(X), model(X))
    # pruning is for modules in a model; a plain function has no outputs to mask
    with pytest.raises(sfx.SymTorchFXError, match="needs the model"):
        sfx.prune_outputs(started_law, "f", keep=1, steps=10)


@pytest.mark.parametrize("schedule", ["exp", "linear", "cosine"])
def test_pruning_schedules_and_active_dimensions(schedule):
    """SymTorch tests ``test_setup_pruning``, ``test_set_pruning_schedule_exp/linear/cosine``,
    ``test_prune_method``, ``test_get_active_dimensions``: a layer of 10 outputs pruned to 3
    over 1000 steps (ours prunes a module inside a model, here a one-layer Sequential)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 10))
    pruner = sfx.prune_outputs(model, "0", keep=3, steps=1000, schedule=schedule, width=10)
    assert pruner.plan[0] == 10 and pruner.plan[999] == 3
    assert all(a >= b for a, b in zip(pruner.plan, pruner.plan[1:]))
    assert pruner.active_dimensions() == list(range(10))
    kept = pruner.step(100, sample_inputs=torch.randn(50, 5))
    assert len(kept) == pruner.plan[100]
    with torch.no_grad():
        out = model(torch.randn(7, 5))
    assert out.shape == (7, 10)
    off = [i for i in range(10) if i not in kept]
    assert torch.count_nonzero(out[:, off]) == 0
    pruner.step(500, sample_inputs=torch.randn(50, 5))
    assert len(pruner.active_dimensions()) == 3


# ----------------------------------------------------------------------------------------------
# SLIME (slime_demo)


def spirals(n: int = 200, seed: int = 7):
    rng = np.random.default_rng(seed)
    theta = np.sqrt(rng.random(n)) * 2 * np.pi
    arms = []
    for sign in (1, -1):
        r = sign * (2 * theta + np.pi)
        arms.append(np.column_stack([np.cos(theta) * r, np.sin(theta) * r])
                    + rng.normal(size=(n, 2)))
    X = np.vstack(arms)
    y = np.concatenate([np.zeros(n, dtype=int), np.ones(n, dtype=int)])
    return X, y


class SpiralMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(2, 32)
        self.layer2 = nn.Linear(32, 32)
        self.output = nn.Linear(32, 2)

    def forward(self, x):
        return self.output(torch.relu(self.layer2(torch.relu(self.layer1(x)))))


def test_slime_demo_explain_a_classifier_near_a_point():
    """SymTorch slime_demo: ``SymbolicModel(model_func).distill(X, SLIME=True,
    slime_params={"x": x0, "J_nn": 50, "num_synthetic": ..., "nn_metric": "euclidean"})``,
    ``slime_model(synthetic_samples)``, ``get_symbolic_function(SLIME=True)``; tests
    ``test_apply_slime_sampling_with_point``, ``test_distill_with_slime_mode``. The black box
    returns the predicted class (0 or 1), as the demo's ``model_func`` does."""
    X, y = spirals()
    torch.manual_seed(0)
    model = SpiralMLP()
    Xt, yt = torch.from_numpy(X).float(), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        loss = nn.functional.cross_entropy(model(Xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    def model_func(inputs):
        with torch.no_grad():
            logits = model(torch.as_tensor(inputs, dtype=torch.float32))
        return logits.softmax(-1).argmax(-1).numpy()

    assert (model_func(X) == y).mean() > 0.8
    x0 = X[np.random.default_rng(7).integers(len(X))]
    e = sfx.explain(model_func, X, x0, neighbours=50, synthetic=450, nn_metric="euclidean",
                    engine=small_engine(population_size=300, generations=40), seed=0)
    assert e.n_real == 50 and e.samples.shape == (500, 2) and e.weights.shape == (500,)
    assert e.task == "regression" and e.value == model_func(x0[None])[0]
    # the surrogate classifies the neighbourhood as the model does
    near = x0 + np.random.default_rng(1).normal(0, np.sqrt(np.var(X[e.neighbour_rows])) / 2,
                                                 (1000, 2))
    labels = (e.predict(near) >= 0.5).astype(int)
    truth = model_func(near)
    majority = max(truth.mean(), 1 - truth.mean())  # what a constant would agree on
    assert 0.5 < majority < 0.9  # x0 lies near the model's decision boundary
    assert (labels == truth).mean() > max(0.85, majority + 0.05)
    # get_symbolic_function(SLIME=True): the equation, callable on rows
    np.testing.assert_allclose(e.equation(near[:10]), e.predict(near[:10]), rtol=1e-6)
    assert e.variables == ["x0", "x1"]


class TwoHead(nn.Module):
    """A model whose "head" block returns two outputs, one a law, one a smooth bump."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 3)
        self.head = Head()
        self.out = nn.Linear(2, 1)

    def forward(self, x):
        return self.out(self.head(self.body(x)))


class Head(nn.Module):
    def forward(self, h):
        return torch.stack([h[:, 0] * h[:, 1] - h[:, 2], torch.exp(-h[:, 0] ** 2)], -1)


def test_slime_options_and_switching_a_block_to_its_explanation():
    """SymTorch's SLIME options ``real_weighting`` and ``nn_metric``, and
    ``switch_to_symbolic(SLIME=True)`` / ``switch_to_block`` on a block inside a model (one
    explanation per output, ``sfx.stand_in``); tests ``test_slime_mode_switch_consistency``."""
    torch.manual_seed(0)
    model = TwoHead().eval()
    x = torch.randn(300, 3)
    with torch.no_grad():
        before = model(x)
        H = model.body(x)  # what the block sees
    exps = [sfx.explain(model.head, H, H[0], neighbours=40, synthetic=260, task="regression",
                        output=k, real_weighting=2.0, nn_metric="manhattan",
                        engine=small_engine(population_size=300, generations=30), seed=k)
            for k in (0, 1)]
    assert all(e.real_weighting == 2.0 and e.nn_metric == "manhattan" for e in exps)
    h0, h1, h2 = sympy.symbols("x0 x1 x2")
    assert equivalent(exps[0].equation.expr, h0 * h1 - h2), exps[0]
    block = model.head
    model.head = sfx.stand_in(exps)  # the block is now its local explanation
    near = x[0] + 0.02 * torch.randn(64, 3)
    with torch.no_grad():
        local = model(near)
    model.head = block  # and back
    with torch.no_grad():
        torch.testing.assert_close(local, model(near), atol=2e-3, rtol=0)
        assert torch.equal(model(x), before)


def test_slime_explanation_module_saves_with_torch_save():
    """SymTorch test ``test_save_load_with_slime_regressors``, the part that works: the
    explanation as a module (what ``switch_to_symbolic(SLIME=True)`` runs) goes through
    ``torch.save``/``torch.load``."""
    X = np.random.default_rng(0).uniform(-1, 1, (200, 2))
    e = sfx.explain(_slime_f, X, X[0], neighbours=10, synthetic=50, engine=small_engine(), seed=0)
    module = e.as_module()
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    Z = torch.from_numpy(X[:20])
    torch.testing.assert_close(back(Z), module(Z), rtol=0, atol=0)


def _slime_f(Z):
    return Z[:, 0] * Z[:, 1]


def test_slime_explanation_saves_and_loads():
    """SymTorch test ``test_save_load_with_slime_regressors``: the SLIME fit is saved with the
    model and loads back with its equations."""
    X = np.random.default_rng(0).uniform(-1, 1, (200, 2))
    e = sfx.explain(_slime_f, X, X[0], neighbours=10, synthetic=50, engine=small_engine(), seed=0)
    buf = io.BytesIO()
    torch.save(e, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert str(back.equation) == str(e.equation)
    np.testing.assert_array_equal(back.predict(X[:5]), e.predict(X[:5]))


def test_slime_sampling_is_checked():
    """SymTorch test ``test_apply_slime_validation_errors`` (``J_nn`` larger than the data, a
    point of the wrong dimension); ``test_apply_slime_sampling_global`` (no point: a global
    fit) is ``sfx.compile(f, sample_inputs=X)``, as in ``test_distil_a_python_function``."""
    X = np.random.default_rng(0).uniform(-1, 1, (100, 5))
    with pytest.raises(sfx.SymTorchFXError, match="neighbours"):
        sfx.explain(_slime_f, X, X[0], neighbours=101, synthetic=10, engine=small_engine())
    with pytest.raises(sfx.SymTorchFXError, match="x0 has shape"):
        sfx.explain(_slime_f, X, X[0, :2], engine=small_engine())


# ----------------------------------------------------------------------------------------------
# devices and dtypes (pinns_demo on "mps", benchmark_symbolicmodel.py on "cuda")


def test_model_in_float64():
    """A model in float64 (SymTorch distils whatever the block computes in): the equations run
    in the model's dtype."""
    torch.manual_seed(0)
    model = nn.Sequential(Block(), nn.Linear(3, 1)).double().eval()
    X = torch.rand(300, 2, dtype=torch.float64) * 2 - 1
    sym = sfx.compile(model, ["0"], X, outputs=[0, 2], engine=small_engine(), **QUICK)
    with torch.no_grad():
        out = sym(X)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, model(X), atol=1e-6, rtol=1e-6)


def test_cast_the_symbolic_model_to_another_dtype():
    """SymTorch benchmark_symbolicmodel.py / pinn_timing.py move the model after distilling
    (``model.to(device)``); the dtype half of that: distil in float32, run in float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)).eval()
    X = torch.rand(300, 2) * 2 - 1
    sym = sfx.compile(model, ["0"], X, engine=small_engine(generations=10), **QUICK)
    sym = sym.double()
    with torch.no_grad():
        out = sym(X.double())
        assert out.dtype == torch.float64
        sym.use("neural")
        torch.testing.assert_close(out, sym(X.double()), atol=1e-4, rtol=1e-4)


def test_torch_compile_the_symbolic_model():
    """SymTorch case_studies/pinn_demo/pinn_timing.py: ``torch.compile`` of the model after
    ``switch_to_equation``, and training through it."""
    torch.manual_seed(0)
    model = Parent().eval()
    X = torch.rand(200, 3) * 2 - 1
    sym = sfx.compile(model, ["block"], X, outputs=[0, 2], engine=small_engine(generations=10),
                      **QUICK)
    compiled = torch.compile(sym, backend="aot_eager")
    out = compiled(X)
    torch.testing.assert_close(out, sym(X))
    out.sum().backward()
    assert sym.symbolic_modules["block"].constants.grad is not None
    assert model.layer1.weight.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_on_a_gpu(tmp_path):
    """SymTorch pinns_demo (``distill(sample_data.to(device))`` on "mps") and
    benchmark_symbolicmodel.py (``model.to('cuda')``, both modes timed): distil a model that
    lives on the GPU, run both modes there, load the file onto the GPU model."""
    torch.manual_seed(0)
    model = nn.Sequential(Block(), nn.Linear(3, 1)).cuda().eval()
    X = (torch.rand(300, 2) * 2 - 1).cuda()
    sym = sfx.compile(model, ["0"], X, outputs=[0, 2], engine=small_engine(), **QUICK)
    with torch.no_grad():
        out = sym(X)
        assert out.device.type == "cuda"
        torch.testing.assert_close(out, model(X), atol=1e-4, rtol=1e-4)
        sym.use("neural")
        assert torch.equal(sym(X), model(X))
    sym.use("symbolic")
    path = tmp_path / "gpu.sfx"
    sfx.save(sym, path)
    loaded = sfx.load(path, model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), out)
