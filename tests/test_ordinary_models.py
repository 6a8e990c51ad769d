"""Ordinary models that used to crash or go wrong: adjacent targets, training mode, restore,
faults during the search, wide layers, impossible inputs. The engine here proposes fixed
equations (a user-defined Engine, for real): these tests are about the pass, not recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
import torch.nn as nn
from conftest import Candidates

import symtorch_fx as sfx

QUICK = dict(selection="accuracy", restarts=1, transforms=(), prune=False, executor="inline",
             progress=False)


class Affine(nn.Module):
    """y = 2x + 1 on one feature: a stage whose law the candidate gives exactly."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return self.w * x + 1


class Chain(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.enc = nn.ModuleList([Affine() for _ in range(n)])
        self.head = nn.Linear(1, 1)

    def forward(self, x):
        for m in self.enc:
            x = m(x)
        return self.head(x)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Affine()

    def forward(self, x):
        return self.block(self.block(x)) - 3


X = torch.linspace(-1, 1, 256)[:, None]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("model,targets", [
    (Chain(2), ["enc.*"]), (Chain(3), ["enc.*"]), (Chain(4), ["enc.*"]),
    (Chain(3), ["enc.0", "enc.2"]), (Twice(), ["block"]),
], ids=["chain2", "chain3", "chain4", "chain-gap", "block(block(x))"])
def test_adjacent_targets_in_every_path(model, targets, tmp_path):
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        want = model(X)
    sym = sfx.compile(model, targets, [X], engine=Candidates(["2*x0 + 1"]), **QUICK)
    with torch.no_grad():
        torch.testing.assert_close(sym(X), want)
        sym.use("neural")
        torch.testing.assert_close(sym(X), want)
        sym.use("symbolic")
        torch.testing.assert_close(sym(X), want)
    # load + use
    path = tmp_path / "m.sfx"
    sfx.save(sym, path)
    loaded = sfx.load(path, model)
    with torch.no_grad():
        loaded.use("neural")
        loaded.use("symbolic")
        torch.testing.assert_close(loaded(X), want)
    # the torch.compile backend, from the file
    compiled = torch.compile(model, backend=sfx.backend(equations=str(path), compiler="eager"))
    with torch.no_grad():
        torch.testing.assert_close(compiled(X), want)


def test_adjacent_targets_with_a_pattern_target():
    def double_plus_one(x):
        return x * 2 + 1

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = Affine()

        def forward(self, x):
            return double_plus_one(self.a(x))

    model = Mixed().eval()
    sym = sfx.compile(model, ["a", sfx.pattern(double_plus_one)], [X],
                      engine=Candidates(["2*x0 + 1"]), **QUICK)
    with torch.no_grad():
        torch.testing.assert_close(sym(X), model(X))


def test_backend_distills_adjacent_targets():
    model = Chain(3).eval()
    be = sfx.backend(targets=["enc.*"], engine=Candidates(["2*x0 + 1"]), compiler="eager",
                     **QUICK)
    compiled = torch.compile(model, backend=be)
    with torch.no_grad():
        want = model(X)
        compiled(X)
        be.distill()
        torch.testing.assert_close(compiled(X), want)


# ----------------------------------------------------------------------------------------------
# training mode


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(2)
        self.law = LawOf2()
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.law(self.norm(x)))


class LawOf2(nn.Module):
    def forward(self, x):
        return (x[:, :1] * x[:, 1:]) + 0.5


def test_recording_runs_in_eval_mode_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = Noisy()
    model.norm.running_mean.fill_(0.25)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X2 = torch.randn(512, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recording through sfx.compile warns about nothing
        prepared = sfx.prepare(model, ["law"])
        sfx.run(prepared, [X2])
    feats, outs = prepared.sfx_recorders.law.data()
    model.eval()
    with torch.no_grad():
        expected = LawOf2()(model.norm(X2)).numpy()
    model.train()
    assert abs(outs - expected).max() < 1e-5  # no dropout, running statistics
    assert all(m.training for m in model.modules())  # each module's own mode is back
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no buffer moved
    # train-mode recording, asked for: still no buffer of the user's model moves
    prepared = sfx.prepare(model, ["law"])
    sfx.run(prepared, [X2], mode="train")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(sfx.SymTorchFXError, match="mode"):
        sfx.run(prepared, [X2], mode="training")


def test_recording_a_training_model_by_hand_warns():
    model = Noisy().train()
    prepared = sfx.prepare(model, ["law"])
    with pytest.warns(RuntimeWarning, match="training mode"):
        with torch.no_grad():
            prepared(torch.randn(8, 2))


def test_compile_on_a_training_model_finds_the_law_not_the_dropout():
    torch.manual_seed(0)
    model = Noisy().train()
    sym = sfx.compile(model, ["law"], [torch.randn(512, 2)],
                      engine=Candidates(["x0*x1 + 0.5", "0.25"]), **QUICK)
    assert str(sym.equations["law"].fronts[0].equation) in ("x0*x1 + 0.5", "x0 * x1 + 0.5")
    assert model.training


# ----------------------------------------------------------------------------------------------
# restore


class Full(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
        self.unused = nn.Linear(3, 3)
        self.alias = self.block  # the same module under two names
        self.enc = nn.Linear(2, 2)
        self.dec = nn.Linear(2, 2)
        self.dec.weight = self.enc.weight  # tied
        self.register_buffer("scale", torch.tensor(3.0))
        self.register_buffer("spare", torch.arange(4.0))

    def forward(self, x):
        return self.block(self.dec(self.enc(x))) * self.scale


def test_restore_gives_back_the_users_own_model():
    torch.manual_seed(0)
    model = Full().eval()
    x = torch.randn(64, 2)
    with torch.no_grad():
        want = model(x)
    keys = list(model.state_dict())
    params = {k: id(p) for k, p in model.named_parameters()}
    sym = sfx.compile(model, ["block"], [x], engine=Candidates(["x0 + x1"]), **QUICK)
    # training the neural parts through the symbolic model
    sym.use("neural")
    opt = torch.optim.SGD([p for n, p in sym.named_parameters() if "enc" in n], lr=0.1)
    sym(x).sum().backward()
    opt.step()
    orig = sfx.restore(sym)
    assert orig is model and isinstance(orig, Full)
    assert list(orig.state_dict()) == keys
    assert {k: id(p) for k, p in orig.named_parameters()} == params
    assert orig.alias is orig.block and orig.dec.weight is orig.enc.weight
    with torch.no_grad():
        assert not torch.equal(orig(x), want)  # the training through sym is kept
        torch.testing.assert_close(sfx.restore(sym)(x), orig(x))


# ----------------------------------------------------------------------------------------------
# faults during distillation


class Flaky:
    """An engine whose searches with some seeds raise (as Operon's 'Input contains NaN' can)."""

    name = "flaky"
    parallel_jobs = False

    def __init__(self, bad_seeds, texts=("x0*x1 + 0.5",)):
        self.bad_seeds = bad_seeds
        self.texts = list(texts)
        self.seeds = []

    def check(self):
        pass

    def search(self, X, y, variables, seed, weights=None):
        self.seeds.append(seed)
        if self.bad_seeds == "all" or seed in self.bad_seeds:
            raise ValueError("Input contains NaN")
        return self.texts


def _law_model():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.law = LawOf2()

        def forward(self, x):
            return self.law(x)

    return M().eval()


def test_a_search_that_raises_is_retried_with_another_seed():
    probe = Flaky(())
    sfx.compile(_law_model(), ["law"], [torch.randn(256, 2)], engine=probe, **QUICK,
                decompose=False)
    engine = Flaky({probe.seeds[0]})
    sym = sfx.compile(_law_model(), ["law"], [torch.randn(256, 2)], engine=engine, **QUICK,
                      decompose=False)  # only the output's own search, failing once
    assert len(engine.seeds) == 2 and engine.seeds[1] != engine.seeds[0]
    assert "x0" in str(sym.equations["law"].fronts[0].equation)


def test_a_search_that_raises_twice_is_dropped_with_a_warning():
    probe = Flaky(())
    kw = {**QUICK, "restarts": 2}
    sfx.compile(_law_model(), ["law"], [torch.randn(256, 2)], engine=probe, **kw)
    first = probe.seeds[0]
    engine = Flaky({first, first + sfx.search.distill.RETRY_SEED})
    with pytest.warns(RuntimeWarning, match="dropped.*law"):
        sym = sfx.compile(_law_model(), ["law"], [torch.randn(256, 2)], engine=engine, **kw)
    records = [r for r in sym.equations["law"].fronts[0].info["searches"]
               if not r.get("dimensionless") and r.get("part") is None]  # the output's own
    assert [r["error"] is not None for r in records] == [True, False]
    with pytest.raises(ValueError, match="Input contains NaN") as info:
        sfx.compile(_law_model(), ["law"], [torch.randn(256, 2)], engine=Flaky("all"), **kw)
    assert any("every other search" in n for n in info.value.__notes__)


def test_a_failure_after_the_search_keeps_the_fronts(tmp_path, monkeypatch):
    from symtorch_fx.graph import rewrite

    calls = []
    real = rewrite.GraphHost.symbolic

    def second_call_fails(self, modules, modes):
        calls.append(1)
        if len(calls) == 2:  # the first is the dry run before the search
            raise RuntimeError("rewrite failed")
        return real(self, modules, modes)

    monkeypatch.setattr(rewrite.GraphHost, "symbolic", second_call_fails)
    path = tmp_path / "kept.sfx"
    model = _law_model()
    with pytest.raises(RuntimeError, match="rewrite failed") as info:
        sfx.compile(model, ["law"], [torch.randn(256, 2)], engine=Candidates(["x0*x1 + 0.5"]),
                    checkpoint=path, **QUICK)
    assert "law" in info.value.sfx_results
    assert any(str(path) in n for n in info.value.__notes__)
    monkeypatch.undo()
    loaded = sfx.load(path, model)
    assert str(loaded.equations["law"].fronts[0].equation) == "x0*x1 + 0.5"


def test_a_rewrite_that_would_fail_fails_before_the_search(monkeypatch):
    from symtorch_fx.graph import rewrite

    def fails(self, modules, modes):
        raise RuntimeError("rewrite failed")

    monkeypatch.setattr(rewrite.GraphHost, "symbolic", fails)
    engine = Flaky(())
    with pytest.raises(RuntimeError, match="rewrite failed"):
        sfx.compile(_law_model(), ["law"], [torch.randn(256, 2)], engine=engine, **QUICK)
    assert engine.seeds == []  # no search ran


_CTRL_C = textwrap.dedent('''
    import os, signal, sys, time
    import torch, torch.nn as nn
    import symtorch_fx as sfx

    class Stubborn:
        """Searches that ignore SIGINT and spin, as a C++ engine does."""
        name = "stubborn"
        parallel_jobs = True
        def check(self):
            pass
        def search(self, X, y, variables, seed, weights=None):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            t = time.time()
            while time.time() - t < 120:
                pass
            return ["x0"]

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 8)
        def forward(self, x):
            return self.lin(x)

    # Ctrl-C as a terminal's python gets it, even when this test runs under a runner that
    # ignores SIGINT (a background job of a non-interactive shell does; a child inherits it)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("ready", flush=True)
    try:
        sfx.compile(M(), ["lin"], [torch.randn(64, 2)], engine=Stubborn(), restarts=1,
                    transforms=(), prune=False, executor="processes", progress=False)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
''')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups, fork")
def test_ctrl_c_stops_the_search_at_once_and_leaves_no_worker(tmp_path):
    script = tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(4)  # the workers are spinning by now
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        out, _ = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 5
        assert "interrupted" in out
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):  # nothing of the group is left
            os.killpg(proc.pid, 0)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------------------------
# wide layers, impossible inputs


def test_a_wide_layer_without_reduce_is_refused_before_the_search():
    model = nn.Sequential(nn.Linear(4, 80))
    engine = Flaky(())
    with pytest.raises(sfx.SymTorchFXError, match=r"80 searches.*sfx\.PCA.*allow_wide"):
        sfx.compile(model, ["0"], [torch.randn(64, 4)], engine=engine, **QUICK)
    assert engine.seeds == []
    sym = sfx.compile(model, ["0"], [torch.randn(64, 4)], engine=Candidates(["x0"]),
                      allow_wide=True, **QUICK)
    assert len(sym.equations["0"].fronts) == 80


@pytest.mark.parametrize("make,word", [
    (lambda: torch.randn(8, 2, device="meta"), "meta"),
    (lambda: torch.randn(8, 2, dtype=torch.complex64), "complex"),
    (lambda: torch.randn(8, 2).to_sparse(), "dense"),
])
def test_impossible_inputs_are_named(make, word):
    prepared = sfx.prepare(nn.Sequential(nn.Identity(), nn.Identity()), ["0"])
    with pytest.raises(sfx.SymTorchFXError, match=word):
        prepared.eval()(make())


class WholeOnly:
    """An engine that answers a search of the whole output poorly and breaks on any other (a
    decomposition's part, searched over the part's own inputs)."""

    name = "whole-only"
    parallel_jobs = False

    def check(self):
        pass

    def search(self, X, y, variables, seed, weights=None):
        if list(variables) != ["x0", "x1"]:
            raise RuntimeError(f"cannot search over {variables}")
        return ["exp(x1)"]


def test_parts_that_all_fail_leave_the_first_round_standing():
    """The decomposition's parts are a second round: when every one of them raises, the
    output keeps what its own searches found, with a warning (it used to raise)."""
    X = torch.rand(400, 2) + 1
    with pytest.warns(RuntimeWarning, match="dropped.*part"):
        sym = sfx.compile(lambda x: torch.sin(x[:, :1]) * torch.exp(x[:, 1:2]), sample_inputs=X,
                          engine=WholeOnly(), restarts=1, transforms=(), executor="inline",
                          progress=False)
    front = sym.equations["function"][0]
    assert front.info["decomposition"] == "(f(x0) * f(x1))"
    assert "exp(x1)" in [e.text() for e in front]
    searches = front.info["searches"]
    assert [s["error"] is None for s in searches] == [True] + [False] * (len(searches) - 1)
