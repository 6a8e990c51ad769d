"""Pruning constants: simpler forms of fitted equations (``search.prune``), and their use in convert."""

import numpy as np
import pytest
import sympy
import torch
import torch.nn as nn
from conftest import Candidates
from hypothesis import given, settings
from hypothesis import strategies as st

import symtorch_fx as sfx
from symtorch_fx.expr.grammar import parse, variable
from symtorch_fx.search.prune import prune_candidates, simpler_forms

x0, x1, x2 = (variable(f"x{i}") for i in range(3))
SYMS = {"x0": x0, "x1": x1, "x2": x2}


def _data(f, n=500, seed=0):
    X = np.random.default_rng(seed).uniform(1, 3, (n, 3))
    return X, f(X[:, 0], X[:, 1], X[:, 2])


def test_engine_constants_fall_away_and_the_law_remains():
    X, y = _data(lambda a, b, c: a * b)
    forms = simpler_forms(parse("1.0003*x0*x1 + 0.0002", SYMS), [x0, x1, x2], X, y)
    assert forms[-1] == x0 * x1  # both constants gone: exactly the law
    assert all(len(f.atoms(sympy.Float)) < 2 for f in forms)  # one fewer at each step


def test_redundant_constants_are_refit_onto_the_rest():
    # c*(a*x1 + b*x2)^2 has one constant too many: fixing a at 1 costs nothing once c and b
    # are refit, and b then goes to -1
    X, y = _data(lambda a, b, c: 0.5 * (b - c) ** 2)
    expr = parse("0.0174*(-5.3624*x1 + 5.3636*x2)^2", SYMS)
    forms = simpler_forms(expr, [x0, x1, x2], X, y)
    law = 0.5 * (x1 - x2) ** 2
    close = [f for f in forms if len(f.atoms(sympy.Float)) == 1]
    assert close, forms
    f = close[0]
    c = next(iter(f.atoms(sympy.Float)))
    assert float(c) == pytest.approx(0.5, rel=1e-6)
    assert sympy.simplify(f.xreplace({c: sympy.Rational(1, 2)}) - law) == 0


def test_the_walk_stops_where_the_fit_is_lost_and_skips_what_it_cannot_walk():
    X, y = _data(lambda a, b, c: np.exp(0.7 * a) + 3.1)
    forms = simpler_forms(parse("exp(0.7*x0) + 3.1", SYMS), [x0, x1, x2], X, y)
    # fixing 0.7 or 3.1 at 0 or +-1 costs far more than 1000x the loss of an exact fit
    assert forms == []
    assert simpler_forms(x0 * x1, [x0, x1, x2], X, y) == []  # nothing fitted to prune
    # rows where it is not finite: nothing offered, nothing raised
    assert simpler_forms(parse("log(0.5 - x0)", SYMS), [x0, x1, x2], X, y) == []


def test_weights_decide_which_rows_the_refit_follows():
    X, y = _data(lambda a, b, c: a * b)
    w = np.where(X[:, 0] < 2, 1.0, 0.0)
    y = np.where(w > 0, y, 100.0)  # rows with no weight are far off: they must not count
    forms = simpler_forms(parse("1.0003*x0*x1 + 0.0002", SYMS), [x0, x1, x2], X, y, w)
    assert forms[-1] == x0 * x1


def test_prune_candidates_walks_texts_near_the_front_and_skips_bad_ones():
    X, y = _data(lambda a, b, c: a * b)
    texts = ["1.0003*x0*x1 + 0.0002", "x0 + (", "x0 + 0.5*sin(3.1*x2)"]
    out = prune_candidates(texts, X, y, ["x0", "x1", "x2"], seed=0)
    assert "x0*x1" in out
    # far from the front (over 3x the best loss at its complexity or below, polished or not):
    # not walked (its polished copy, both constants refit, may be offered)
    assert all(len(parse(t, SYMS).atoms(sympy.Float)) == 2 for t in out if "sin" in t)


def test_a_candidate_of_the_law_s_form_is_polished_to_the_law_s_constants():
    # the engine's constants are off by 0.4% (a few LM steps on a subsample): the polished copy
    # has the law's, and a candidate that fits already gets no copy
    law = lambda a, b, c: np.exp(-0.5 * b**2 / a**2) / (np.sqrt(2 * np.pi) * a)  # noqa: E731
    X, y = _data(law)
    out = prune_candidates(["0.39987*exp(-0.50188*x1^2/x0^2)/x0", "x0*x1"], X, y,
                           ["x0", "x1", "x2"], seed=0)
    polished = [parse(t, SYMS) for t in out if "exp" in t and len(parse(t, SYMS).atoms(sympy.Float)) == 2]
    assert len(polished) == 1
    got = sorted(abs(float(c)) for c in polished[0].atoms(sympy.Float))
    assert got == pytest.approx(sorted([1 / np.sqrt(2 * np.pi), 0.5]), rel=1e-6)
    exact = f"{1 / np.sqrt(2 * np.pi)!r}*exp(-0.5*x1^2/x0^2)/x0"
    again = prune_candidates([exact], X, y, ["x0", "x1", "x2"], seed=0)
    assert all(len(parse(t, SYMS).atoms(sympy.Float)) < 2 for t in again)


#: laws of two constants (a, b), their true values, as the engine's text would carry them
POLISH_LAWS = [
    ("{a}*exp(-{b}*x1^2/x0^2)/x0", lambda X, a, b: a * np.exp(-b * X[:, 1] ** 2 / X[:, 0] ** 2)
     / X[:, 0], (0.4, 0.5)),
    ("{a}*x0*x1/({b}*x2 + 1)", lambda X, a, b: a * X[:, 0] * X[:, 1] / (b * X[:, 2] + 1),
     (1.5, 0.25)),
    ("sqrt({a}*x0^2 + {b}*x1^2)", lambda X, a, b: np.sqrt(a * X[:, 0] ** 2 + b * X[:, 1] ** 2),
     (2.0, 3.0)),
]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(POLISH_LAWS), *2 * [st.one_of(st.just(0.0), st.floats(1e-4, 0.04),
                                                    st.floats(-0.04, -1e-4))])
def test_a_polished_copy_fits_better_and_has_the_true_constants(law, da, db):
    # the engine's constants off by up to 4% each: the copy offered is polished to the truth
    # (noise-free data), and no copy is offered for constants that fit already
    text, f, (a, b) = law
    X = np.random.default_rng(3).uniform(1, 3, (500, 3))
    y = f(X, a, b)
    rough = text.format(a=repr(a * (1 + da)), b=repr(b * (1 + db)))
    out = prune_candidates([rough], X, y, ["x0", "x1", "x2"], seed=0)

    def fits(t):  # the simpler forms fix a constant at 0 or +-1, and none of these fits then
        with np.errstate(all="ignore"):
            got = sympy.lambdify([x0, x1, x2], parse(t, SYMS), "numpy")(*X.T)
        return np.allclose(got, y, rtol=1e-6, atol=0)

    polished = [t for t in out if fits(t)]
    assert len(polished) == (0 if da == db == 0 else 1), out


class Product(nn.Module):
    def forward(self, x):
        return x[:, :1] * x[:, 1:2]


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = Product()

    def forward(self, x):
        return self.net(x)


def test_convert_prunes_by_default_and_can_be_told_not_to():
    xs = torch.rand(600, 2) * 2 + 1
    engine = Candidates(["x0", "1.0003*x0*x1 + 0.0002"])
    # decompose=False: the oracle's candidates (a product's scalings give x0*x1 too) are not
    # the engine's, and pruning is about the engine's
    sym = sfx.compile(Wrapper(), ["net"], xs, engine=engine, decompose=False, progress=False)
    assert str(sym.equations["net"][0].equation) == "x0*x1"
    raw = sfx.compile(Wrapper(), ["net"], xs, engine=engine, prune=False, decompose=False,
                      progress=False)
    assert "x0*x1" not in [str(e) for e in raw.equations["net"][0]]
    with pytest.raises(sfx.SymTorchFXError, match="prune must be True or False"):
        sfx.compile(Wrapper(), ["net"], xs, engine=engine, prune="yes", progress=False)


def test_each_front_records_what_each_search_gave():
    # front.info["searches"]: per search, its seed and time, the engine's equations and the
    # pruned forms apart (in the text they are read back in), and the front equations it found
    xs = torch.rand(600, 2) * 2 + 1
    engine = Candidates(["x0", "1.0003*x0*x1 + 0.0002"])
    sym = sfx.compile(Wrapper(), ["net"], xs, engine=engine, restarts=2, executor="inline",
                      progress=False)
    front = sym.equations["net"][0]
    searches = [s for s in front.info["searches"] if "part" not in s]  # the output's own
    assert len(searches) == 2 and searches[0]["seed"] != searches[1]["seed"]
    for s in searches:
        assert s["transform"] == "identity" and s["seconds"] >= 0
        assert s["equations"] == ["x0", "1.0003*x0*x1 + 0.0002"]
        assert "x0*x1" in s["pruned"] and not set(s["pruned"]) & set(s["equations"])
        # x0 ties the mean at complexity 1, the engine's own law is dominated by its pruned form
        assert [front[i].text() for i in s["on_front"]] == ["x0*x1"]
        assert 0 not in s["on_front"]  # the mean is the front builder's, no search's
    assert front.chosen in searches[0]["on_front"]
