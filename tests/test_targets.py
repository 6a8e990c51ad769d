"""Trace and match: every kind of target matches what it should and nothing else."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import symtorch_fx as sfx


class Block(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, 8), nn.GELU(), nn.Linear(8, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class Encoder(nn.Module):
    def __init__(self, n=3, d=4):
        super().__init__()
        self.encoder = nn.ModuleList([Block(d) for _ in range(n)])
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        for b in self.encoder:
            x = b(x)
        return self.head(x)


def regions(targets, model=None):
    prepared = sfx.prepare(model or Encoder(), targets)
    return sorted(prepared._sfx_prepared.recorders)


def test_exact_name():
    assert regions("encoder.1.mlp") == ["encoder.1.mlp"]


def test_glob_one_component_per_star():
    assert regions("encoder.*.mlp") == ["encoder.0.mlp", "encoder.1.mlp", "encoder.2.mlp"]
    assert regions("encoder.*.mlp.1") == ["encoder.0.mlp.1", "encoder.1.mlp.1", "encoder.2.mlp.1"]
    assert regions("**.norm") == ["encoder.0.norm", "encoder.1.norm", "encoder.2.norm"]


def test_module_class():
    assert regions(nn.GELU) == ["encoder.0.mlp.1", "encoder.1.mlp.1", "encoder.2.mlp.1"]
    # a class matching nested modules keeps the outermost
    assert regions(nn.Sequential) == ["encoder.0.mlp", "encoder.1.mlp", "encoder.2.mlp"]


def test_predicate():
    def first_two_mlps(name, module):
        return name in ("encoder.0.mlp", "encoder.1.mlp")

    assert regions(first_two_mlps) == ["encoder.0.mlp", "encoder.1.mlp"]
    assert regions([first_two_mlps, "head"]) == ["encoder.0.mlp", "encoder.1.mlp", "head"]


def silu_mlp(x, w1, b1, w2, b2):
    return F.linear(F.silu(F.linear(x, w1, b1)), w2, b2)


class ModuleMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.act, self.down = nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 3)
        self.out = nn.Linear(3, 1)

    def forward(self, x):
        return self.out(self.down(self.act(self.up(x))) + x)


class FunctionalMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(16, 3)), nn.Parameter(torch.zeros(16))
        self.w2, self.b2 = nn.Parameter(torch.randn(3, 16)), nn.Parameter(torch.zeros(3))
        self.gate = nn.Linear(3, 3)

    def forward(self, x):
        h = F.linear(F.silu(F.linear(x, self.w1, self.b1)), self.w2, self.b2)
        return F.silu(self.gate(h))  # linear -> silu, but not followed by linear: no match


@pytest.mark.parametrize("cls", [ModuleMLP, FunctionalMLP])
def test_op_pattern_matches_module_and_functional_code(cls):
    model = cls()
    prepared = sfx.prepare(model, [sfx.pattern(silu_mlp)])
    recs = prepared._sfx_prepared.recorders
    assert len(recs) == 1
    x = torch.randn(7, 3)
    torch.testing.assert_close(prepared(x), model(x))  # recording changes nothing
    rec = next(iter(recs.values()))
    X, Y = rec.data()
    assert X.shape == (7, 3) and Y.shape == (7, 3)  # the weights are not features


def test_op_pattern_region_is_named_after_its_module():
    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = ModuleMLP()

        def forward(self, x):
            return self.block(x)

    assert regions([sfx.pattern(silu_mlp)], Outer()) == ["block"]


def test_no_match_lists_nearest_names():
    with pytest.raises(sfx.TargetError, match="encoder.0.mlp"):
        regions("encoder.0.mpl")
    with pytest.raises(sfx.TargetError, match="nearest module names"):
        regions("decoder.*.mlp")
    with pytest.raises(sfx.TargetError, match="GELU"):
        regions(nn.ReLU)
    with pytest.raises(sfx.TargetError, match="matched no module"):
        regions(lambda name, m: False)


def test_pattern_no_match_lists_ops():
    def tanh_mlp(x, w, b):
        return torch.tanh(F.linear(x, w, b))

    with pytest.raises(sfx.TargetError, match="ops present are: .*linear"):
        regions([sfx.pattern(tanh_mlp)], ModuleMLP())


def test_no_targets_means_the_whole_model():
    """As a SymTorch user wraps a whole block: no targets= distils the model itself."""
    (region,) = sfx.prepare(Encoder())._sfx_prepared.regions
    assert region.kind == "model" and region.name == ""


def test_bad_target_specs():
    with pytest.raises(sfx.TargetError, match="targets= is empty"):
        sfx.prepare(Encoder(), [])
    with pytest.raises(sfx.TargetError, match="cannot use 3"):
        sfx.prepare(Encoder(), [3])
    with pytest.raises(sfx.TargetError, match="sfx.pattern"):
        sfx.prepare(Encoder(), [silu_mlp])  # a pattern function passed without sfx.pattern
    with pytest.raises(sfx.TargetError, match="overlap"):
        sfx.prepare(Encoder(), ["encoder.0", "encoder.0.mlp"])


class Untraceable(nn.Module):
    """Data-dependent control flow outside the targets: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        if x.sum() > 0:
            return self.mlp(x)
        return self.mlp(-x)


def test_untraceable_model_module_targets_swap_in_parent():
    model = Untraceable()
    prepared = sfx.prepare(model, ["mlp"])
    assert prepared._sfx_prepared.host.kind == "swap"
    x = torch.randn(10, 2)
    torch.testing.assert_close(prepared(x), model(x))
    X, Y = prepared._sfx_prepared.recorders["mlp"].data()
    assert X.shape == (10, 2) and Y.shape == (10, 1)
    assert isinstance(model.mlp, nn.Sequential)  # the user's model is untouched


def test_untraceable_model_op_pattern_names_the_construct():
    def lin_tanh(x, w, b):
        return torch.tanh(F.linear(x, w, b))

    with pytest.raises(sfx.UntraceableModelError, match=r"if x.sum\(\) > 0"):
        sfx.prepare(Untraceable(), [sfx.pattern(lin_tanh)])


def test_control_flow_inside_a_target_is_fine():
    class Inner(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x * 3

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return self.inner(x) + 1

    prepared = sfx.prepare(Outer(), ["inner"])
    assert prepared._sfx_prepared.host.kind == "graph"


def test_whole_model_target():
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    assert regions("", model) == [""]
