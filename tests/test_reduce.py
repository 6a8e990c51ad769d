"""Dimensionality reduction: PCA / learned projections around the distilled equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import fast_engine

import symtorch_fx as sfx


class LowRank(nn.Module):
    """A wide layer whose output is a simple function of 2 directions of its 16 inputs."""

    def __init__(self, d=16, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.u = nn.Parameter(torch.linalg.qr(torch.randn(d, 2, generator=g))[0].T.contiguous())
        self.v = nn.Parameter(torch.randn(d, generator=g))

    def forward(self, x):
        a, b = (x @ self.u.T).unbind(-1)
        return (torch.sin(a) + a * b)[..., None] * self.v  # rank-1 output in 16 dims


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.wide = LowRank()

    def forward(self, x):
        return x + self.wide(x)


def test_pca_distills_a_wide_region_through_components():
    torch.manual_seed(0)
    model = Model().eval()
    u = model.wide.u.detach()
    # data near the law's 2-D plane, with unequal spread so PCA's axes are the law's directions
    x = (torch.randn(3000, 2) * torch.tensor([2.0, 1.0])) @ u + 0.01 * torch.randn(3000, 16)
    sym = sfx.compile(model, ["wide"], x, reduce=sfx.PCA(inputs=2, outputs=1),
                      engine=fast_engine(operators=("add", "sub", "mul", "sin")),
                      executor="threads", restarts=2, progress=False)
    report = sym.equations["wide"]
    assert report.variables == ("z0", "z1") and len(report) == 1
    assert "pca: inputs 16 -> 2" in repr(report) and "outputs 16 -> 1" in repr(report)
    module = sym.symbolic_modules["wide"]
    assert module.projection.in_explained > 0.99 and module.projection.out_explained > 0.999
    with torch.no_grad():
        err = ((sym(x) - model(x)) ** 2).mean() / model.wide(x).var()
    assert err < 1e-2  # the whole path (project, equations, back-project) stands in
    # the node is one call_module; the projections are matmuls inside it
    calls = [n for n in sym.graph.nodes if n.op == "call_module"]
    assert [n.target for n in calls] == ["sfx_symbolic.wide"]


def test_pca_identity_sides_and_explained_variance():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 6)) * np.array([5, 3, 1, 0.1, 0.1, 0.1])
    Y = X[:, :2].copy()
    p = sfx.PCA(inputs=3).fit(X, Y, "r")
    assert p.in_basis.shape == (6, 3) and p.out_basis.shape == (2, 2)
    np.testing.assert_allclose(p.in_basis.T @ p.in_basis, np.eye(3), atol=1e-10)
    assert 0.99 < p.in_explained < 1.0 and p.out_explained == pytest.approx(1.0)
    np.testing.assert_allclose(p.outputs(p.targets(Y)), Y, atol=1e-10)


def test_learned_projection_finds_the_predictive_direction():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 5)) * np.array([10, 10, 1, 1, 1])  # big but irrelevant columns
    Y = np.sin(X[:, [3]]) * np.array([[1.0, -2.0]])
    pca = sfx.PCA(inputs=1, outputs=1).fit(X, Y, "r")
    learned = sfx.LearnedProjection(inputs=1, outputs=1, steps=800).fit(X, Y, "r")
    # PCA keeps the large irrelevant direction; the learned one aligns with column 3
    assert abs(pca.in_basis[3, 0]) < 0.2
    assert abs(learned.in_basis[3, 0]) > 0.95
    assert learned.out_explained > 0.999


def test_reduction_errors_name_the_fix():
    prepared = sfx.prepare(Model(), ["wide"])
    prepared(torch.randn(100, 16))
    with pytest.raises(sfx.SymTorchFXError, match="only 16 inputs features|at most 16"):
        sfx.convert(prepared, reduce=sfx.PCA(inputs=32), progress=False)
    with pytest.raises(sfx.SymTorchFXError, match="positive number"):
        sfx.PCA(outputs=0)
    with pytest.raises(sfx.SymTorchFXError, match="not a reduction"):
        sfx.convert(prepared, reduce="pca", progress=False)


def test_reduced_model_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(400, 16)
    sym = sfx.compile(model, ["wide"], x, reduce={"wide": sfx.PCA(inputs=3, outputs=2)},
                      engine=fast_engine(generations=5), executor="inline", progress=False)
    path = tmp_path / "reduced.sfx"
    sfx.save(sym, path)
    loaded = sfx.load(path, model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sym(x))
    assert loaded.symbolic_modules["wide"].projection.n_inputs == 3
