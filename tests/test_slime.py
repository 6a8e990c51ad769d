"""Local symbolic explanations (``sfx.explain``) with the real embedded engine, small budgets."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import sympy
import torch
import torch.nn as nn
from conftest import equivalent, fast_engine

import symtorch_fx as sfx
from symtorch_fx.search.distill import build_front
from symtorch_fx.slime import _tame, refit_constants

x0, x1, x2 = sympy.symbols("x0 x1 x2", real=True)


def small_engine(**kw) -> sfx.Operon:
    return fast_engine(**dict(dict(population_size=200, generations=30), **kw))


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).uniform(-2, 2, (400, 3))


def test_recovers_a_known_local_law(data):
    """A black box that is exactly a simple function: the explanation is that function."""
    def f(Z):
        return Z[:, 0] * Z[:, 1] + np.sin(Z[:, 2])

    point = np.array([0.5, -1.0, 0.3])
    e = sfx.explain(f, data, point, neighbours=40, synthetic=260, engine=fast_engine(), seed=0)
    assert equivalent(e.equation.expr, x0 * x1 + sympy.sin(x2)), e.front
    assert e.task == "regression" and e.value == pytest.approx(f(point[None])[0])
    near = point + np.random.default_rng(1).normal(0, 0.3, (200, 3))
    np.testing.assert_allclose(e.predict(near), f(near), atol=1e-4)
    assert e.predict(point).shape == (1,)
    assert e.fidelity["r2"] > 0.9999
    assert "\\sin" in e.latex() and e.variables == ["x0", "x1", "x2"]
    assert "x0*x1" in repr(e) and str(e) == repr(e)  # print(e): equation, fidelity, front
    assert e.equation.text(4) in str(e) and "complexity" in str(e)
    assert e.front.complexities == sorted(e.front.complexities)


def test_classification_explains_the_predicted_class_of_a_torch_module(data):
    class Net(nn.Module):  # a two-class model whose class-1 probability is sigmoid(2 x0 - x1)
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([2.0, -1.0, 0.0]))
            self.seen = []

        def forward(self, x):
            self.seen.append((type(x), x.dtype, tuple(x.shape), torch.is_grad_enabled()))
            z = x @ self.w
            return torch.stack([torch.zeros_like(z), z], -1)  # logits

    net = Net().eval()
    point = np.array([0.4, -0.3, 1.0])  # logit 1.1: class 1 predicted
    e = sfx.explain(net, data, point, logits=True, engine=small_engine(), selection="accuracy")
    assert e.task == "classification" and e.output == 1
    assert e.value == pytest.approx(1 / (1 + math.exp(-1.1)), rel=1e-5)
    assert all(t is torch.Tensor and dt == torch.float32 and not grad
               for t, dt, _, grad in net.seen)
    near = point + np.random.default_rng(2).normal(0, 0.2, (300, 3))
    p1 = 1 / (1 + np.exp(-(near @ np.array([2.0, -1.0, 0.0]))))
    assert np.max(np.abs(e.predict(near) - p1)) < 0.02
    assert e.fidelity["r2"] > 0.99

    # a point where class 0 wins: its probability is explained, and probabilities work as input
    probs = lambda Z: torch.softmax(net(torch.as_tensor(Z, dtype=torch.float32)), -1)  # noqa: E731
    e0 = sfx.explain(probs, data, -point, engine=small_engine(generations=10), seed=1)
    assert e0.task == "classification" and e0.output == 0
    assert e0.value == pytest.approx(1 / (1 + math.exp(-1.1)), rel=1e-5)


def test_module_gets_tensors_of_its_dtype_in_batches_not_rows(data):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
            self.batches = []

        def forward(self, x):
            self.batches.append((x.dtype, x.device.type, len(x)))
            return self.a * x[:, 0] - x[:, 1] ** 2

    net = Net().eval()
    e = sfx.explain(net, data, data[0], neighbours=30, synthetic=270, batch_size=128,
                    engine=small_engine(generations=5))
    # 1 + 30 + 270 rows -> 3 calls of at most 128 rows, float64 like the module
    assert [b[2] for b in net.batches] == [128, 128, 45]
    assert all(dt == torch.float64 and dev == "cpu" for dt, dev, _ in net.batches)
    assert len(e.samples) == 300 and e.n_real == 30


def test_numpy_callable_is_called_on_batches(data):
    calls = []

    def f(Z):
        assert isinstance(Z, np.ndarray) and Z.dtype == np.float64 and Z.ndim == 2
        calls.append(len(Z))
        return np.stack([Z[:, 0] + Z[:, 2], Z[:, 1]], 1)  # two outputs: choose one

    e = sfx.explain(f, data, data[3], task="regression", output=1, neighbours=20, synthetic=80,
                    engine=small_engine(generations=10))
    assert calls == [101]
    assert e.output == 1 and equivalent(e.equation.expr, x1), e.front


def test_features_that_do_not_vary_stay_fixed_and_names_are_made_valid():
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.uniform(-1, 1, 300), np.full(300, 7.0), rng.uniform(-1, 1, 300)])
    e = sfx.explain(lambda Z: 3 * Z[:, 0] - Z[:, 2] + Z[:, 1], X, X[5],
                    feature_names=["speed (m/s)", "sin", "2nd"], engine=small_engine())
    assert e.feature_names == ["speed_m_s", "sin_", "x_2nd"]
    assert list(e.features) == [0, 2]  # the constant column is no variable
    assert e.std[1] == 0 and np.all(e.samples[:, 1] == 7.0)
    Z = X[:20]
    np.testing.assert_allclose(e.predict(Z), 3 * Z[:, 0] - Z[:, 2] + 7, atol=1e-4)


def test_weighted_front_scores_by_proximity_weighted_loss():
    s = [sympy.Symbol("x0", real=True)]
    X = np.linspace(-1, 1, 40)[:, None]
    y = X[:, 0] ** 2
    w = np.exp(-X[:, 0] ** 2 / 0.1)
    front, scored = build_front(["x0^2", "0.5*x0"], s, X, y, X, y, X, w_train=w, w_val=w)
    const = scored[0]
    assert float(const.expr) == pytest.approx(np.average(y, weights=w))
    lin = next(e for e in scored if e.expr.has(s[0]) and not e.expr.has(sympy.Pow))
    assert lin.loss == pytest.approx(np.sum(w * (0.5 * X[:, 0] - y) ** 2) / w.sum())
    with pytest.raises(sfx.SymTorchFXError, match="non-negative"):
        build_front(["x0"], s, X, y, X, y, X, w_val=-w)


def test_refit_is_a_weighted_least_squares_fit():
    s = [sympy.Symbol("x0", real=True)]
    X = np.linspace(-2, 2, 200)[:, None]
    near = np.abs(X[:, 0]) < 1
    y = np.where(near, 3 * X[:, 0] + 1, -5 * X[:, 0])  # another law far away
    w = np.where(near, 1.0, 1e-9)
    out = refit_constants(["2.5*x0 + 0.1"], s, X, y, w)
    assert out[0] == "2.5*x0 + 0.1" and len(out) == 2  # the original, then the refit
    expr = sfx.expr.grammar.parse(out[1], {"x0": s[0]})
    assert equivalent(expr, 3 * s[0] + 1, digits=3)


def test_refit_lowers_derivatives_with_numeric_common_subexpressions():
    """Derivatives often share a pure number (here exp(2)); once it was a Python float in the
    generated code and broke the output stack, which stopped an explanation mid-run."""
    s = [sympy.Symbol("x0", real=True)]
    X = np.linspace(0.1, 1, 50)[:, None]
    y = np.exp(2) * X[:, 0] + 0.3
    text = "exp(2)*1.1*x0 + sin(exp(2)) + 0.2"  # d/dc0 = exp(2)*x0, d/dc1 = 1
    out = refit_constants([text], s, X, y, np.ones(50))
    assert len(out) == 2
    refit = sfx.expr.grammar.parse(out[1], {"x0": s[0]})
    np.testing.assert_allclose(sfx.Equation(refit, 1, 0.0, tuple(s))(X), y, atol=1e-8)
    fn = sfx.kernels.lower.torch_function([sympy.exp(2) * s[0], sympy.exp(2), sympy.sin(sympy.exp(2))],
                                   sfx.kernels.lower.Layout((1,), 3), s, 0)
    got = fn(torch.from_numpy(X), torch.zeros(0, dtype=torch.float64))
    assert got.dtype == torch.float64 and got.shape == (50, 3)
    assert float(got[0, 2]) == math.sin(math.exp(2))  # computed in float64, not float32


def test_candidates_must_hold_on_the_whole_neighbourhood():
    """Finite on the samples is not enough: NaN (sqrt of a negative) or a pole anywhere on the
    probe draws rules a candidate out."""
    probe = np.linspace(-1, 1, 201)[:, None]
    y = np.linspace(0.0, 1.0, 50)  # the black box's values on the samples

    def eq(expr):
        return sfx.Equation(expr, 1, 0.0, (x0,))

    assert _tame(eq(0.5 * x0 + 0.5), probe, y)
    assert _tame(eq(x0**2 + 2), probe, y)  # beyond the range, but by less than two ranges
    assert not _tame(eq(sympy.sqrt(x0 + 0.5)), probe, y)
    assert not _tame(eq(0.01 / (x0 - sympy.Float(0.3025))), probe, y)  # finite, but a pole


def test_plot_and_a_clear_error_without_matplotlib(data, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    e = sfx.explain(lambda Z: Z[:, 0] ** 2 + Z[:, 1], data, data[1], engine=small_engine())
    fig = e.plot()
    ax_fit, ax_slice = fig.axes[:2]
    assert ax_fit.get_xlabel() == "black box"
    assert ax_slice.get_xlabel() in ("x0", "x1") and len(ax_slice.lines) >= 2
    assert e.plot(feature="x1").axes[1].get_xlabel() == "x1"
    with pytest.raises(sfx.SymTorchFXError, match="no feature is named"):
        e.plot(feature="speed")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        e.plot()


# ----------------------------------------------------------------------------------------------
# bad inputs


def _f(Z):
    return Z[:, 0]


def test_x0_of_the_wrong_dimension(data):
    with pytest.raises(sfx.SymTorchFXError, match="x0 has shape \\(2,\\) but X has 3 features"):
        sfx.explain(_f, data, np.zeros(2))


def test_more_neighbours_than_rows(data):
    with pytest.raises(sfx.SymTorchFXError, match="neighbours=500 but X has only 400 rows"):
        sfx.explain(_f, data, data[0], neighbours=500)


def test_black_box_returning_nan(data):
    def f(Z):
        out = Z[:, 0].copy()
        out[Z[:, 1] > 1.0] = np.nan
        return out

    with pytest.raises(sfx.SymTorchFXError, match="returned NaN or inf for [0-9]+ of 301 inputs"):
        sfx.explain(f, data, np.array([0.0, 0.9, 0.0]), neighbours=30, synthetic=270)
    with pytest.raises(sfx.SymTorchFXError, match="at x0 itself"):
        with np.errstate(invalid="ignore"):
            sfx.explain(lambda Z: np.log(Z[:, 0]), data, np.array([-1.0, 0.0, 0.0]))


def test_black_box_that_does_not_take_batches(data):
    with pytest.raises(sfx.SymTorchFXError, match="returned shape \\(\\) for a batch of"):
        sfx.explain(lambda Z: float(Z[0, 0]), data, data[0])


def test_ambiguous_or_missing_outputs(data):
    two = lambda Z: np.stack([Z[:, 0], Z[:, 1]], 1)  # noqa: E731
    with pytest.raises(sfx.SymTorchFXError, match="not probabilities: pass task='regression'"):
        sfx.explain(two, data, data[0])
    with pytest.raises(sfx.SymTorchFXError, match="pass output=k"):
        sfx.explain(two, data, data[0], task="regression")
    with pytest.raises(sfx.SymTorchFXError, match="output 2 does not exist"):
        sfx.explain(two, data, data[0], task="regression", output=2)
    with pytest.raises(sfx.SymTorchFXError, match="pass logits=True"):
        sfx.explain(two, data, data[0], task="classification")


def test_other_bad_settings(data):
    with pytest.raises(sfx.SymTorchFXError, match="none of the 3 features varies"):
        sfx.explain(_f, np.ones((50, 3)), np.ones(3))
    with pytest.raises(sfx.SymTorchFXError, match="too few"):
        sfx.explain(_f, data, data[0], neighbours=3, synthetic=2)
    with pytest.raises(sfx.SymTorchFXError, match="variance must be"):
        sfx.explain(_f, data, data[0], variance=[1.0, 2.0])
    with pytest.raises(sfx.SymTorchFXError, match="task="):
        sfx.explain(_f, data, data[0], task="ranking")
    with pytest.raises(sfx.SymTorchFXError, match="unknown selection 'simplest'"):
        sfx.explain(_f, data, data[0], selection="simplest")
    with pytest.raises(sfx.SymTorchFXError, match="X must be a 2-d array"):
        sfx.explain(_f, data[:, 0], 0.0)
    with pytest.raises(sfx.SymTorchFXError, match="must be a callable"):
        sfx.explain("model", data, data[0])
