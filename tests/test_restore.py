"""Rewrite, use(), restore and save/load on several architectures.

These tests install equations directly from a front built of known text (no engine run) where
the point is the graph rewrite, and use the session's real distillation where it is the result.
"""

from __future__ import annotations

import json

import pytest
import sympy
import torch
import torch.nn as nn

import symtorch_fx as sfx


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 2))

    def forward(self, x):
        return self.body(x)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.ff = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))

    def forward(self, x):
        return x + self.ff(self.norm(x))


class TransformerBlock(nn.Module):
    def __init__(self, d=8, heads=2):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q = q.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        k = k.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        v = v.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, -1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class TwoTargets(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
        self.b = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        return self.b(torch.sin(self.a(x)))


CASES = [
    (MLP, ["body"], lambda: torch.randn(64, 3)),
    (Residual, ["ff"], lambda: torch.randn(4, 16, 4)),
    (TransformerBlock, ["mlp"], lambda: torch.randn(2, 5, 8)),
    (TwoTargets, ["a", "b"], lambda: torch.randn(64, 2)),
    (TransformerBlock, [nn.GELU], lambda: torch.randn(2, 5, 8)),
]


def _symbolic(model, targets, x):
    """A symbolic model with quick (tiny-budget) equations: the rewrite is what is tested."""
    return sfx.compile(model, targets, [x], engine=sfx.Operon(population_size=50,
                       generations=3, max_rows=200), executor="inline", progress=False,
                       selection="accuracy")


@pytest.mark.parametrize("cls,targets,make_x", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_restore_is_bit_identical(cls, targets, make_x):
    torch.manual_seed(0)
    model = cls().eval()
    x = make_x()
    with torch.no_grad():
        expected = model(x)
    sym = _symbolic(model, targets, x)
    with torch.no_grad():
        assert not torch.equal(sym(x), expected)  # the equations really replaced something
        assert sym(x).shape == expected.shape
    orig = sfx.restore(sym)
    assert orig is model
    with torch.no_grad():
        assert torch.equal(orig(x), expected)
    # use() switches all or single regions, and back
    sym.use("neural")
    with torch.no_grad():
        assert torch.equal(sym(x), expected)
    sym.use("symbolic")
    with torch.no_grad():
        assert not torch.equal(sym(x), expected)


def test_restore_gives_back_the_users_model():
    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.randn(4, 16, 4)
    sym = _symbolic(model, ["ff"], x)
    assert "sfx_symbolic" in str(sym.graph)
    assert sfx.restore(sym) is model  # the user's own model, not a rebuilt graph


def test_use_per_region():
    torch.manual_seed(0)
    model = TwoTargets().eval()
    x = torch.randn(32, 2)
    sym = _symbolic(model, ["a", "b"], x)
    sym.use("neural", "a")
    assert sym.modes == {"a": "neural", "b": "symbolic"}
    with torch.no_grad():
        mixed = sym(x)
        expect = sym.symbolic_modules["b"](torch.sin(model.a(x)))
    torch.testing.assert_close(mixed, expect)
    with pytest.raises(sfx.SymTorchFXError, match="neural' or 'symbolic"):
        sym.use("half")


def test_untraceable_model_round_trip():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))

        def forward(self, x):
            return self.mlp(x) if x.sum() > 0 else self.mlp(-x)

    torch.manual_seed(0)
    model = Untraceable().eval()
    x = torch.rand(64, 2)
    sym = _symbolic(model, ["mlp"], x)
    assert isinstance(sym, Untraceable) and isinstance(sym, sfx.SymbolicModel)
    assert isinstance(sym.mlp, sfx.SymbolicModule)
    orig = sfx.restore(sym)
    with torch.no_grad():
        assert torch.equal(orig(x), model(x))
    assert isinstance(model.mlp, nn.Sequential)


def test_save_load_round_trip(tmp_path, distilled_law, trained_law, law_data):
    X, _ = law_data
    path = tmp_path / "law.sfx"
    sfx.save(distilled_law, path)
    loaded = sfx.load(path, trained_law)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), distilled_law(X), rtol=1e-6, atol=1e-6)
    a, b = distilled_law.equations["mlp"][0], loaded.equations["mlp"][0]
    assert a.chosen == b.chosen and a.complexities == b.complexities
    assert [e.text() for e in a] == [e.text() for e in b]


def test_save_keeps_tuned_constants_and_choice(tmp_path, trained_law, law_data):
    X, Y = law_data
    sym = _symbolic(trained_law, ["mlp"], X[:256])
    sym.select("mlp", complexity=3)
    module = sym.symbolic_modules["mlp"]
    with torch.no_grad():
        module.constants.add_(0.125)
    path = tmp_path / "tuned.sfx"
    sfx.save(sym, path)
    loaded = sfx.load(path, trained_law)
    assert str(loaded.equations["mlp"][0].equation) == str(sym.equations["mlp"][0].equation)
    torch.testing.assert_close(loaded.symbolic_modules["mlp"].constants, module.constants)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), sym(X))


def test_save_load_pattern_regions(tmp_path):
    import torch.nn.functional as F

    def lin_silu_lin(x, w1, b1, w2, b2):
        return F.linear(F.silu(F.linear(x, w1, b1)), w2, b2)

    torch.manual_seed(0)
    model = TransformerBlock().eval()
    x = torch.randn(2, 5, 8)
    model.mlp[1] = nn.SiLU()
    sym = _symbolic(model, [sfx.pattern(lin_silu_lin)], x)
    path = tmp_path / "pattern.sfx"
    sfx.save(sym, path)
    loaded = sfx.load(path, model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sym(x))


def test_tampered_file_is_rejected_and_runs_nothing(tmp_path, distilled_law, trained_law):
    path = tmp_path / "law.sfx"
    sfx.save(distilled_law, path)
    doc = json.loads(path.read_text())
    marker = tmp_path / "pwned"
    doc["regions"][0]["fronts"][0]["equations"][0]["expr"] = (
        f"__import__('os').system('touch {marker}')")
    path.write_text(json.dumps(doc))
    with pytest.raises(sfx.SerializationError, match="rejected equation"):
        sfx.load(path, trained_law)
    assert not marker.exists()
    doc["regions"][0]["fronts"][0]["equations"][0]["expr"] = "x0 + y9"
    path.write_text(json.dumps(doc))
    with pytest.raises(sfx.SerializationError, match="unknown name 'y9'"):
        sfx.load(path, trained_law)
    doc["regions"][0]["variables"] = ["x0; import os", "x1"]
    path.write_text(json.dumps(doc))
    with pytest.raises(sfx.SerializationError, match="identifiers"):
        sfx.load(path, trained_law)


def test_load_on_a_different_model_is_a_clear_error(tmp_path, distilled_law):
    path = tmp_path / "law.sfx"
    sfx.save(distilled_law, path)
    with pytest.raises(sfx.SerializationError, match="does not have"):
        sfx.load(path, nn.Sequential(nn.Linear(2, 1)))
    path.write_text("{not json")
    with pytest.raises(sfx.SerializationError, match="not a symtorch_fx file"):
        sfx.load(path, nn.Sequential(nn.Linear(2, 1)))


def test_symbolic_module_input_width_mismatch_is_clear(distilled_law):
    with pytest.raises(sfx.SymTorchFXError, match="distilled for 2 features"):
        distilled_law.symbolic_modules["mlp"](torch.randn(4, 3))


def test_equations_are_sympy(distilled_law):
    eqs = distilled_law.equations["mlp"].sympy()
    assert all(isinstance(e, sympy.Expr) for e in eqs)
