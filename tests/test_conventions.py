"""What a PyTorch user expects of any module: copy, pickle, torch.save, state_dict; and a lean
install (issue 18). The engine proposes fixed equations: these tests are about the model."""

from __future__ import annotations

import copy
import io
import pathlib
import pickle
import subprocess
import sys

import pytest
import tomllib
import torch
import torch.nn as nn
from conftest import Candidates, ExactLaw

import symtorch_fx as sfx

QUICK = dict(selection="accuracy", restarts=1, transforms=(), prune=False, executor="inline",
             progress=False)
X = torch.linspace(-1, 1, 512).reshape(256, 2)


Law = ExactLaw


class Traceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Law()
        self.head = nn.Linear(1, 1)

    def forward(self, x):
        return self.head(self.body(x))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Law()
        self.head = nn.Linear(1, 1)

    def forward(self, x):
        y = self.body(x)
        return self.head(y) if x.sum() > -1e9 else y  # data-dependent: torch.fx cannot trace


def _symbolic(cls):
    torch.manual_seed(0)
    return sfx.compile(cls().eval(), ["body"], [X],
                       engine=Candidates(["0.5 + 2*x0*x1", "x0*x1"]), **QUICK)


def _torch_round_trip(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("cls", [Traceable, Untraceable])
@pytest.mark.parametrize("how", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m)),
                                 _torch_round_trip], ids=["deepcopy", "pickle", "torch.save"])
def test_a_copied_symbolic_model_keeps_its_api(cls, how):
    sym = _symbolic(cls)
    with torch.no_grad():
        sym.symbolic_modules["body"].constants.add_(0.25)  # tuned constants travel too
        want = sym(X)
    c = how(sym)
    assert isinstance(c, sfx.SymbolicModel) and type(c).__name__ == f"Symbolic{cls.__name__}"
    if cls is Untraceable:
        assert isinstance(c, Untraceable)
    with torch.no_grad():
        torch.testing.assert_close(c(X), want)
        assert str(c.equations["body"].fronts[0].equation) == str(
            sym.equations["body"].fronts[0].equation)
        c.use("neural")
        torch.testing.assert_close(c(X), sfx.restore(sym)(X))
        c.use("symbolic")
        c.select("body", complexity=1)  # the mean, from the front
        assert c.equations["body"].fronts[0].equation.complexity == 1
        assert torch.allclose(c(X), c(X)[:1].expand(len(X), 1))
    assert sym.modes == {"body": "symbolic"}  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(sym(X), want)


@pytest.mark.parametrize("cls", [Traceable, Untraceable])
def test_state_dict_into_a_freshly_loaded_model_keeps_the_tuned_constants(cls, tmp_path):
    sym = _symbolic(cls)
    path = tmp_path / "m.sfx"
    sfx.save(sym, path)
    with torch.no_grad():
        sym.symbolic_modules["body"].constants.mul_(1.5)  # tuned after saving
        want = sym(X)
    fresh = sfx.load(path, cls().eval())
    fresh.load_state_dict(sym.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), want)
    assert str(fresh.equations["body"].fronts[0].equation) == str(
        sym.equations["body"].fronts[0].equation)


def test_the_package_installs_without_triton():
    meta = tomllib.loads((pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text())
    project = meta["project"]
    assert not any(d.startswith("triton") for d in project["dependencies"])
    assert any(d.startswith("triton") for d in project["optional-dependencies"]["gpu"])
    assert any(d.startswith("triton") for d in project["optional-dependencies"]["dev"])
    # importing symtorch_fx, and choosing kernels, must not need it
    code = ("import sys, builtins; real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name == 'triton' or name.startswith('triton.'): raise ImportError(name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "import symtorch_fx as sfx, torch\n"
            "from symtorch_fx.kernels import triton as t\n"
            "assert not t.available()\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_printed_equations_show_every_front_and_plots_draw_them(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    sym = _symbolic(Traceable)
    text = repr(sym.equations)
    front = sym.equations["body"][0]
    for e in front:  # every equation of the front, not only the chosen one
        assert e.text(4) in text
    assert "> " in text or ">  " in text  # the chosen one marked
    assert "2*x0*x1 + 0.5" in sym.equations.summary()
    ax = front.plot()
    assert ax.get_yscale() == "log" and len(ax.lines) == 3
    fig = sym.equations.plot()
    fig.savefig(tmp_path / "fronts.png")
    assert (tmp_path / "fronts.png").stat().st_size > 1000
    assert len([a for a in fig.axes if a.get_visible()]) == len(sym.equations["body"])


def test_operon_takes_operators_it_composes_and_pysr_style_definitions():
    import numpy as np
    from conftest import equivalent

    from symtorch_fx.expr.grammar import parse, variable
    from symtorch_fx.search.operon import operator_symbols

    assert operator_symbols("inv") == ["div"] and operator_symbols("cube") == ["mul"]
    assert operator_symbols("inv(x) = 1/x") == ["div"]
    assert set(operator_symbols("gauss(x) = exp(-x^2)")) == {"exp", "sub", "square"}
    assert set(operator_symbols("hyp(x, y) = sqrt(x^2 + y^2)")) == {"sqrt", "add", "square"}
    for bad, word in [("erf", "no erf"), ("f(x) = sign(x)", "no sign"), ("foo", "define one"),
                      ("f(x) = x +", "definition")]:
        with pytest.raises(sfx.SymTorchFXError, match=word):
            sfx.Operon(operators=["add", bad])
    # the real engine, with div only through "inv", finds a law that needs it
    rng = np.random.default_rng(0)
    X = rng.uniform(1, 3, (400, 2))
    y = 2 / X[:, 0] + X[:, 1]
    engine = sfx.Operon(operators=["add", "mul", "inv"], population_size=200, generations=30,
                        max_length=12, restarts=1, transforms=())
    x0, x1 = variable("x0"), variable("x1")
    texts = engine.search(X, y, ["x0", "x1"], seed=0)
    assert any(equivalent(parse(t, {"x0": x0, "x1": x1}), 2 / x0 + x1) for t in texts)


class _RecordingRegressor:
    """Stands in for pysr.PySRRegressor to see what the PySR engine passes to ``fit`` (PySR
    needs Julia, which this machine cannot install); it claims no recovery."""

    calls: list[dict] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def fit(self, X, y, **kwargs):
        _RecordingRegressor.calls.append(kwargs)
        self.equations_ = {"equation": ["x0 + x1"]}


def test_pysr_gets_units_and_a_transformed_search_drops_the_output_units(monkeypatch):
    import importlib.machinery
    import types

    import numpy as np

    stub = types.ModuleType("pysr")
    stub.__spec__ = importlib.machinery.ModuleSpec("pysr", None)
    stub.PySRRegressor = _RecordingRegressor
    monkeypatch.setitem(sys.modules, "pysr", stub)
    monkeypatch.setenv("SYMTORCH_FX_SKIP_JULIA_CHECK", "1")
    _RecordingRegressor.calls.clear()
    engine = sfx.PySR(X_units=["m", "s"], y_units="m/s", niterations=5)
    X, y = np.ones((10, 2)), np.ones(10)
    assert engine.search(X, y, ["x0", "x1"], seed=0) == ["x0 + x1"]
    assert _RecordingRegressor.calls[-1]["X_units"] == ["m", "s"]
    assert _RecordingRegressor.calls[-1]["y_units"] == "m/s"
    from symtorch_fx.search.transforms import TRANSFORMS

    engine.for_transform(TRANSFORMS["square"]).search(X, y, ["x0", "x1"], seed=0)
    assert "y_units" not in _RecordingRegressor.calls[-1]
    assert _RecordingRegressor.calls[-1]["X_units"] == ["m", "s"]
    with pytest.raises(sfx.SymTorchFXError, match="one per variable"):
        engine.search(np.ones((10, 3)), y, ["x0", "x1", "x2"], seed=0)
    with pytest.raises(sfx.SymTorchFXError, match="unit string"):
        sfx.PySR(y_units=3)


def test_variable_names_for_any_target_are_used_and_saved(tmp_path):
    model = Traceable().eval()
    sym = sfx.compile(model, ["body"], [X], engine=Candidates(["0.5 + 2*mass*speed"]),
                      variable_names={"body": ["mass", "speed"]}, **QUICK)
    assert str(sym.equations["body"][0].equation) == "2*mass*speed + 0.5"
    path = tmp_path / "m.sfx"
    sfx.save(sym, path)
    loaded = sfx.load(path, Traceable().eval())
    assert loaded.equations["body"].variables == ("mass", "speed")
    for bad, word in [(["a"], "2 input features"), (["sin", "b"], "reserved"),
                      ({"bdy": ["a", "b"]}, "not targets"), ("ab", "list of names"),
                      (["a", "a"], "twice")]:
        with pytest.raises(sfx.SymTorchFXError, match=word):
            sfx.compile(model, ["body"], [X], engine=Candidates(["x0"]), variable_names=bad,
                        **QUICK)
