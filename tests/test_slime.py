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
    assert equivalent(expr, 3 * s[0] + 1)


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
# torch black boxes, real_weighting, nn_metric, the explanation in place of the black box


def test_a_torch_callable_gets_tensors_like_x(data):
    """X a tensor: a plain torch function gets tensors on X's device and in X's dtype (it would
    fail on numpy arrays); predict answers in the type it is given."""
    seen = []

    def f(t):
        assert isinstance(t, torch.Tensor), type(t)  # fails if explain hands it numpy arrays
        seen.append((t.dtype, t.device.type, torch.is_grad_enabled()))
        return torch.sin(t[:, 0]) * t[:, 1]

    X = torch.as_tensor(data, dtype=torch.float32)
    e = sfx.explain(f, X, X[7], neighbours=40, synthetic=260, engine=small_engine(), seed=0)
    assert seen and all(s == (torch.float32, "cpu", False) for s in seen)
    assert equivalent(e.equation.expr, sympy.sin(x0) * x1), e.front
    near = X[7] + 0.1 * torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    got = e.predict(near)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == (50,)
    torch.testing.assert_close(got, f(near), atol=1e-4, rtol=0)
    assert isinstance(e.predict(near.numpy()), np.ndarray)
    assert e.predict(near.bfloat16()).dtype == torch.bfloat16  # numpy has no bfloat16
    assert isinstance(e.samples, np.ndarray) and e.samples.dtype == np.float64

    # a float64 tensor X: float64 tensors; a numpy X: numpy arrays again (as before)
    seen.clear()
    sfx.explain(f, torch.as_tensor(data), data[7], engine=small_engine(generations=2))
    assert {s[0] for s in seen} == {torch.float64}
    with pytest.raises(AssertionError):
        sfx.explain(f, data, data[7], engine=small_engine(generations=2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_torch_callable_gets_tensors_on_the_gpu_of_x(data):
    """X on the GPU: f and a callable nn_metric get tensors there, predict answers there, and the
    stand-in module is there (where f's outputs were)."""
    X = torch.as_tensor(data, dtype=torch.float32, device="cuda")

    def f(t):
        assert isinstance(t, torch.Tensor) and t.is_cuda and t.dtype == torch.float32
        return t[:, 0] * t[:, 1] - t[:, 2]

    def metric(p, Z):
        assert p.is_cuda and Z.is_cuda
        return (Z - p).abs().sum(1)

    e = sfx.explain(f, X, X[0], nn_metric=metric, engine=small_engine(), seed=0)
    assert equivalent(e.equation.expr, x0 * x1 - x2), e.front
    assert e.predict(X[:10]).is_cuda
    module = e.as_module()
    assert module.constants.is_cuda
    with torch.no_grad():
        torch.testing.assert_close(module(X[:10]), f(X[:10]), atol=1e-4, rtol=0)


def test_a_type_mismatch_names_the_fix(data):
    """A torch function given numpy arrays (X a numpy array) fails with a TypeError: explain says
    what f was given and how to give it tensors, and the reverse."""
    with pytest.raises(sfx.SymTorchFXError, match="given float64 numpy arrays, because X is a "
                       "numpy array: if f takes torch tensors, pass X as a torch tensor"):
        sfx.explain(lambda t: torch.sin(t[:, 0]), data, data[0])
    with pytest.raises(sfx.SymTorchFXError, match="because X is a torch tensor: if f takes numpy "
                       "arrays, pass X as a numpy array"):
        sfx.explain(lambda Z: Z[:, 0].astype(np.float32), torch.as_tensor(data), data[0])


def _kinked(Z):
    x = Z[:, 0]
    return np.where(x < 1.0, x, 3 * x - 2)  # slope 1 up to x = 1, slope 3 beyond


def test_real_weighting_moves_the_fit_towards_the_real_neighbours():
    """The real neighbours (rows of X, all at x > 1) and the perturbations of x0 = 0 (x < 1)
    see different slopes of the black box, and a quadratic cannot follow both. A larger
    real_weighting multiplies the real neighbours' weights by it (the perturbations' stay), and
    the fitted equation follows the real neighbours more closely and the perturbations less."""
    X = np.random.default_rng(0).uniform(1.0, 2.0, (200, 1))
    engine = small_engine(operators=("add", "mul"), max_length=5, generations=20)
    runs = {rw: sfx.explain(_kinked, X, np.zeros(1), neighbours=30, synthetic=270,
                            variance=0.09, real_weighting=rw, engine=engine,
                            selection="accuracy", seed=0)
            for rw in (0.01, 1.0, 100.0)}
    base = runs[1.0]
    assert base.real_weighting == 1.0 and base.n_real == 30
    for rw, e in runs.items():
        np.testing.assert_array_equal(e.samples, base.samples)  # the same samples
        np.testing.assert_allclose(e.weights[:30], rw * base.weights[:30], rtol=1e-15)
        np.testing.assert_array_equal(e.weights[30:], base.weights[30:])
    rms = {rw: [float(np.sqrt(np.mean((e.predict(Z) - y) ** 2)))
                for Z, y in ((e.samples[:30], e.targets[:30]), (e.samples[30:], e.targets[30:]))]
           for rw, e in runs.items()}
    real, fake = zip(*(rms[rw] for rw in (0.01, 1.0, 100.0)))
    assert real[0] > real[1] > real[2], rms  # closer to the real neighbours as rw grows
    assert fake[0] < fake[1] < fake[2], rms  # and further from the perturbations


def test_real_weighting_is_checked(data):
    for bad in (0, -1.0, float("nan"), float("inf"), "2", True, None):
        with pytest.raises(sfx.SymTorchFXError, match="real_weighting must be a positive finite "
                           "number .*1.0 weighs them alike"):
            sfx.explain(_f, data, data[0], real_weighting=bad)
    with pytest.warns(UserWarning, match="real_weighting=3.0 has no effect with 30 real "
                      "neighbours and 0 synthetic"):
        sfx.explain(_f, data, data[0], neighbours=30, synthetic=0, real_weighting=3.0,
                    engine=small_engine(generations=2))


def test_nn_metric_picks_the_nearest_rows_by_each_distance():
    """Rows placed so that each distance has another nearest row to x0 = (2, 0). Both features
    have the same spread over X (every row comes with its mirror image), so the standardized
    distances order rows as the raw ones do."""
    half = np.array([[2.6, 0.6],   # 0: nearest in L2 (0.85); L1 1.2; 13 degrees from x0
                     [2.0, 0.87],  # 1: nearest in L1 (0.87); L2 0.87; 24 degrees
                     [5.0, 0.0],   # 2: x0's direction (cosine 0); 3 away
                     [-4.0, 3.0]])
    X = np.concatenate([half, half[:, ::-1]])
    point = np.array([2.0, 0.0])

    def only_x1(p, Z):  # a callable: distance along the second feature alone
        assert isinstance(p, np.ndarray) and isinstance(Z, np.ndarray) and Z.shape == (8, 2)
        return np.abs(Z[:, 1] - p[1])

    expect = {"euclidean": [0, 1], "l2": [0, 1], "manhattan": [1, 0], "l1": [1, 0],
              "cosine": [2, 0], only_x1: [2, 0]}
    for metric, rows in expect.items():
        e = sfx.explain(_f, X, point, neighbours=2, synthetic=30, nn_metric=metric,
                        engine=small_engine(generations=2))
        assert list(e.neighbour_rows) == rows, metric
        np.testing.assert_array_equal(e.samples[:2], X[rows])
        assert e.nn_metric is metric


@pytest.mark.parametrize("metric", ["euclidean", "manhattan", "cosine", "chebyshev"])
def test_nn_metric_agrees_with_scikit_learn(metric):
    """The neighbours are scikit-learn's (SymTorch's NearestNeighbors(metric=nn_metric)) on
    features in units of their spread (Euclidean, Manhattan) or on the raw rows (cosine; and a
    callable, here the Chebyshev distance on tensors)."""
    neighbors = pytest.importorskip("sklearn.neighbors")
    rng = np.random.default_rng(4)
    X = rng.normal(0, 1, (300, 3)) * np.array([1.0, 100.0, 0.01]) + np.array([0.5, 0.0, 0.02])
    point = X[11] + rng.normal(0, 0.3, 3) * X.std(0)
    space = X / X.std(0) if metric in ("euclidean", "manhattan") else X
    nn_ = neighbors.NearestNeighbors(n_neighbors=25, metric=metric).fit(space)
    ref = nn_.kneighbors((point / X.std(0) if space is not X else point)[None])[1][0]
    if metric == "chebyshev":
        def chebyshev(p, Z):
            assert isinstance(p, torch.Tensor) and isinstance(Z, torch.Tensor)
            return (Z - p).abs().amax(1)
        metric, X, point = chebyshev, torch.as_tensor(X), torch.as_tensor(point)
    e = sfx.explain(lambda Z: Z[:, 0] + Z[:, 1], X, point, neighbours=25, synthetic=40,
                    nn_metric=metric, engine=small_engine(generations=2))
    assert list(e.neighbour_rows) == list(ref)


def test_nn_metric_is_checked(data):
    with pytest.raises(sfx.SymTorchFXError, match="nn_metric='minkowski' is not a distance "
                       "explain knows: use one of 'euclidean', 'l2', 'manhattan', 'l1', "
                       "'cityblock', 'cosine', or a callable"):
        sfx.explain(_f, data, data[0], nn_metric="minkowski")
    with pytest.raises(sfx.SymTorchFXError, match="nn_metric=3 is not a distance"):
        sfx.explain(_f, data, data[0], nn_metric=3)
    with pytest.raises(sfx.SymTorchFXError, match=r"returned shape \(400, 1\) for X of 400 "
                       r"rows; it must return one distance per row, shape \(400,\)"):
        sfx.explain(_f, data, data[0], nn_metric=lambda p, Z: np.abs(Z - p).sum(1)[:, None])
    with pytest.raises(sfx.SymTorchFXError, match="returned NaN or inf for 1 of 400 rows"):
        sfx.explain(_f, data, data[0],
                    nn_metric=lambda p, Z: np.where(np.arange(len(Z)) == 5, np.nan, 1.0))
    with pytest.raises(sfx.SymTorchFXError, match="returned str, not distances"):
        sfx.explain(_f, data, data[0], nn_metric=lambda p, Z: "near")
    with pytest.raises(sfx.SymTorchFXError, match="x0 is the origin .* use "
                       "nn_metric='euclidean'"):
        sfx.explain(_f, data, np.zeros(3), nn_metric="cosine")


class _Law(nn.Module):
    """A block computing y = a*h0*h1 - h2 exactly (a = 2, a float32 parameter)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(2.0))

    def forward(self, h):
        return (self.a * h[:, 0] * h[:, 1] - h[:, 2]).unsqueeze(-1)


def test_the_explanation_stands_in_for_a_block_and_switches_back():
    """SymTorch's switch_to_symbolic(SLIME=True) and switch_to_block: the explanation of a block
    near the input it sees at one point replaces it in the model; near that point the model
    computes the same; switched back, the model is bit for bit what it was."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), _Law(), nn.Linear(1, 1)).eval()
    x = torch.randn(300, 2)
    with torch.no_grad():
        before = model(x)
        H = model[0](x)  # what the block sees
    state = {k: v.clone() for k, v in model.state_dict().items()}
    e = sfx.explain(model[1], H, H[0], neighbours=40, synthetic=260, engine=small_engine())
    assert equivalent(e.equation.expr, 2 * x0 * x1 - x2), e.front

    block = model.get_submodule("1")
    stand_in = e.as_module()
    model.set_submodule("1", stand_in)  # in: the equation, valid near H[0]
    assert isinstance(model[1], sfx.SymbolicModule) and model[1].region == "slime"
    assert equivalent(model[1].equations()[0], 2 * x0 * x1 - x2)
    near = x[0] + 0.05 * torch.randn(64, 2)
    with torch.no_grad():
        symbolic = model(near)
        h = model[0](near)
        alone = stand_in(h)
    assert alone.shape == (64, 1) and alone.dtype == torch.float32  # what the block returns
    torch.testing.assert_close(alone[:, 0], e.predict(h), atol=1e-5, rtol=0)
    model.set_submodule("1", block)  # back
    assert model[1] is block
    with torch.no_grad():
        torch.testing.assert_close(symbolic, model(near), atol=1e-4, rtol=0)
        after = model(x)
    assert torch.equal(after, before)  # bit-identical
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # unlike predict, the stand-in is differentiable (d/dh0 of 2*h0*h1 - h2 is 2*h1)
    hg = h.clone().requires_grad_()
    stand_in(hg).sum().backward()
    torch.testing.assert_close(hg.grad, torch.stack([2 * h[:, 1], 2 * h[:, 0], -torch.ones(64)],
                                                    1), atol=1e-4, rtol=1e-4)


def test_stand_in_for_a_black_box_of_several_outputs(data):
    """One explanation per output of f make one module returning all of them, in f's order and
    shape; an explanation of a class probability from logits stands for no output of f."""
    def f(Z):  # numpy in, numpy out: the module computes in float64
        return np.stack([Z[:, 0] * Z[:, 1], Z[:, 2] - Z[:, 0]], 1)

    exps = [sfx.explain(f, data, data[2], task="regression", output=k, engine=small_engine(),
                        seed=k) for k in (1, 0)]
    module = sfx.slime.stand_in(exps)
    Z = torch.as_tensor(data[2] + 0.1 * np.random.default_rng(5).normal(size=(30, 3)))
    out = module(Z)
    assert out.shape == (30, 2) and out.dtype == torch.float64
    assert module.constants.dtype == torch.float64
    np.testing.assert_allclose(out[:, 0].detach().numpy(), exps[1].predict(Z.numpy()),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[:, 1].detach().numpy(), exps[0].predict(Z.numpy()),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.detach().numpy(), f(Z.numpy()), atol=1e-4)
    assert sfx.slime.stand_in(exps, dtype=torch.float32)(Z).dtype == torch.float32

    with pytest.raises(sfx.SymTorchFXError, match=r"f returns 2 outputs, and no explanation "
                       r"stands for output\(s\) \[0\].*for k in range\(2\)"):
        exps[0].as_module()
    with pytest.raises(sfx.SymTorchFXError, match="two explanations stand for output 1"):
        sfx.slime.stand_in([exps[0], exps[0]])
    other = sfx.explain(f, data, data[3], task="regression", output=0,
                        engine=small_engine(generations=2))
    with pytest.raises(sfx.SymTorchFXError, match="not all at the same x0"):
        sfx.slime.stand_in([exps[0], other])
    with pytest.raises(sfx.SymTorchFXError, match="needs a list of explanations"):
        sfx.slime.stand_in([])
    with pytest.raises(sfx.SymTorchFXError, match="dtype must be a floating torch dtype"):
        sfx.slime.stand_in(exps, dtype=torch.int64)

    # one probability (of class 1): the explanation of class 0 stands for 1 - p
    p1 = lambda Z: 1 / (1 + np.exp(-(Z[:, 0] - Z[:, 1])))  # noqa: E731
    e0 = sfx.explain(p1, data, np.array([-1.0, 0.5, 0.0]), task="classification",
                     engine=small_engine())
    assert e0.output == 0
    rows = torch.as_tensor(np.array([-1.0, 0.5, 0.0]) + 0.05 * data[:20])
    np.testing.assert_allclose(e0.as_module()(rows).detach().numpy(), p1(rows.numpy()), atol=2e-3)
    logits = sfx.explain(lambda Z: np.stack([0 * Z[:, 0], Z[:, 0] - Z[:, 1]], 1), data,
                         data[0], logits=True, engine=small_engine(generations=2))
    with pytest.raises(sfx.SymTorchFXError, match="made from logits .* explain each logit: "
                       "sfx.explain\\(f, X, x0, task='regression', output=k\\)"):
        logits.as_module()


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
