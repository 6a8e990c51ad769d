"""Shared fixtures: small trained networks and a small-budget real engine.

Everything is seeded. The engine is the real embedded Operon with budgets small enough for CI
(seconds per search); nothing here mocks it.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch
import torch.nn as nn

import symtorch_fx as sfx

torch.set_num_threads(2)


def fast_engine(**kw) -> sfx.Operon:
    # one search of each output itself, no transformed searches, unless a test asks for them
    settings = dict(population_size=300, generations=60, max_length=20, max_rows=1000,
                    restarts=1, transforms=())
    settings.update(kw)
    return sfx.Operon(**settings)


def mlp(d_in: int, d_out: int, width: int = 64, depth: int = 2, act=nn.SiLU) -> nn.Sequential:
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), act()]
        d = width
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


def train(net: nn.Module, X: torch.Tensor, Y: torch.Tensor, steps: int = 2000, lr: float = 3e-3,
          seed: int = 0) -> float:
    """Full-batch-ish Adam with cosine decay; returns the final MSE on (X, Y)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(0, len(X), (512,), generator=g)
        loss = ((net(X[idx]) - Y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return float(((net(X) - Y) ** 2).mean())


def train_pruned(model: nn.Module, X, Y, pruner, steps: int, every: int = 1,
                 sample_inputs=None) -> list[int]:
    """Adam on (X, Y) in batches of 256 (seeded), calling ``pruner.step`` every ``every`` steps
    (with ``sample_inputs`` when given); returns how many dimensions each call kept."""
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    kept = []
    for step in range(steps):
        idx = torch.randint(0, len(X), (256,), generator=g)
        loss = ((model(X[idx]) - Y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            kept.append(len(pruner.step(step, sample_inputs=sample_inputs)))
    return kept


class Candidates:
    """A user-defined engine that proposes fixed equations (the Engine protocol, for real)."""

    name = "candidates"
    parallel_jobs = False

    def __init__(self, texts):
        self.texts = texts

    def check(self):
        pass

    def search(self, X, y, variables, seed, weights=None):
        return list(self.texts)


class Wrapped(nn.Module):
    """A model with a distillable MLP inside and other work around it: the MLP learns half the
    law, because the model doubles what it returns."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.mlp = mlp(d_in, d_out)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        return self.mlp(x) * self.scale


class ExactLaw(nn.Module):
    """y = 0.5 + 2*x0*x1 on two features, exactly: the candidate '0.5 + 2*x0*x1' fits it with no
    error, so tests of the pass (files, copies, names) know which equation is chosen. Its one
    parameter lets load() find the model's device."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        return (0.5 + 2 * x[..., 0] * x[..., 1]).unsqueeze(-1)


class PartlyLaw(nn.Module):
    """``n_outputs`` outputs (3 or more): output 0 is ``x0*x1`` and output 2 is ``x0 + 0.5``
    exactly; the others come from a trainable layer (for distilling some outputs only)."""

    def __init__(self, n_outputs: int = 4):
        super().__init__()
        self.lin = nn.Linear(2, n_outputs)

    def forward(self, x):
        cols = list(torch.tanh(self.lin(x)).unbind(-1))
        cols[0], cols[2] = x[:, 0] * x[:, 1], x[:, 0] + 0.5
        return torch.stack(cols, -1)


def round_constants(expr: sympy.Expr, digits: int = 1) -> sympy.Expr:
    return expr.xreplace({f: sympy.Float(round(float(f), digits)) for f in expr.atoms(sympy.Float)})


#: a constant whose removal moves the equation by less than this (relative RMS on the rows
#: it is checked on) is a leftover of the search and counts as zero; any other term is kept
NEGLIGIBLE = 0.01
#: a constant within this relative distance of a simple fraction p/q (q <= 10) is that fraction
SNAP = 0.05


def _values(expr: sympy.Expr, symbols, rows: np.ndarray) -> np.ndarray:
    """``expr`` on ``rows`` by the project's own evaluator (it knows every op of the grammar,
    sigmoid included); nan where it is not real."""
    from symtorch_fx.kernels.lower import evaluate

    with np.errstate(all="ignore"):
        out = evaluate([expr], torch.from_numpy(rows), list(symbols))[:, 0].numpy()
    return np.where(np.isfinite(out), out, np.nan)


def _snapped(c: float) -> sympy.Rational | None:
    if c == 0:
        return sympy.Integer(0)
    best = min((abs(round(c * q) / q - c), q) for q in range(1, 11))
    q = best[1]
    p = round(c * q)
    if p == 0 or abs(p / q - c) > SNAP * abs(c):
        return None
    return sympy.Rational(p, q)


def equivalent(expr: sympy.Expr, truth: sympy.Expr, rows: np.ndarray | None = None,
               names=None) -> bool:
    """The equation is the law: every constant either does not matter (removing it moves the
    equation by less than ``NEGLIGIBLE`` of its spread on ``rows``, default uniform in
    [-2, 2]; the columns of ``rows`` are the variables ``names``, or all of them sorted by name) or is within ``SNAP`` (5%) of a fraction p/q with q <= 10; and after replacing
    the ones that matter by those fractions, sympy finds the difference to the law zero.

    A spurious term fails however small its coefficient, as long as it changes the values:
    ``0.5*x0*x1 + 0.5*sin(x0) + 0.04*exp(x1**2)`` is not ``(x0*x1 + sin(x0))/2``."""
    by_name = {s.name: s for s in expr.free_symbols}
    truth = truth.xreplace({s: by_name.get(s.name, s) for s in truth.free_symbols})
    symbols = sorted(expr.free_symbols | truth.free_symbols, key=lambda s: s.name)
    if names is not None:  # the columns of rows, by name
        by_name.update({s.name: s for s in truth.free_symbols if s.name not in by_name})
        symbols = [by_name.get(n, sympy.Symbol(n, real=True)) for n in names]
    if rows is None:
        rows = np.random.default_rng(0).uniform(-2, 2, (512, len(symbols)))
    rows = np.asarray(rows, np.float64).reshape(len(rows), -1)
    # constants a search splits over a product (20.6 / (10.3 x0)) are one constant once
    # expanded: judged either way
    flat = sympy.expand(expr, mul=True, power_base=True, multinomial=False, power_exp=False,
                        log=False, deep=True)
    return any(_equivalent(e, truth, symbols, rows) for e in dict.fromkeys([expr, flat]))


def _equivalent(expr, truth, symbols, rows) -> bool:
    base = _values(expr, symbols, rows)
    ok = np.isfinite(base)
    if ok.any():  # judged where the values are typical: a pole in the rows does not set the scale
        lo, hi = np.percentile(base[ok], [5, 95])
        ok &= (base >= lo) & (base <= hi)
    spread = float(np.std(base[ok])) if ok.any() else 0.0
    e = expr
    for c in sorted(expr.atoms(sympy.Float), key=lambda f: abs(float(f))):
        if c not in e.atoms(sympy.Float):
            continue
        without = e.xreplace({c: sympy.Integer(0)})
        moved = _values(without, symbols, rows) - base
        if spread > 0 and np.all(np.isfinite(moved[ok])) and \
                float(np.sqrt(np.mean(moved[ok] ** 2))) < NEGLIGIBLE * spread:
            e = without
    snaps = {}
    for c in e.atoms(sympy.Float):
        s = _snapped(float(c))
        if s is None:
            return False  # a constant that matters and is no simple number
        snaps[c] = s
    e = e.xreplace(snaps)
    # numbers first: a different equation is told apart at once (sympy can take minutes on
    # a power of 16 that is not the law)
    a, b = _values(e, symbols, rows), _values(truth, symbols, rows)
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < len(rows) // 2 or not np.allclose(a[both], b[both], rtol=1e-6, atol=1e-9):
        return False
    return sympy.simplify(e - truth) == 0


@pytest.fixture(scope="session")
def law_data():
    torch.manual_seed(0)
    X = torch.rand(4096, 2) * 4 - 2
    Y = (X[:, 0] * X[:, 1] + torch.sin(X[:, 0]))[:, None]
    return X, Y


@pytest.fixture(scope="session")
def trained_law(law_data):
    """A Wrapped MLP trained on y = x0*x1 + sin(x0)."""
    torch.manual_seed(0)
    X, Y = law_data
    net = Wrapped(2, 1)
    net.train_mse = train(net, X, Y)
    net.eval()
    return net


@pytest.fixture(scope="session")
def distilled_law(trained_law, law_data):
    """The trained law distilled once (two restarts on two threads), shared by tests."""
    X, _ = law_data
    return sfx.compile(trained_law, targets=["mlp"], sample_inputs=[X[:2048], X[2048:]],
                       engine=fast_engine(), executor="threads", restarts=2, progress=False)


def pytest_report_header(config):
    return f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
