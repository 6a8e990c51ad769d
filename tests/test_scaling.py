"""Scalings found on the target itself (``search.scaling``): the units of its inputs, without
``units=``."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import sympy
from conftest import equivalent, fast_engine
from hypothesis import given, settings
from hypothesis import strategies as st

import symtorch_fx as sfx
from symtorch_fx.search import scaling


def _find(f, X, tol=0.02):
    y = f(X)
    return scaling.find(lambda r: f(r), X, tol, float(np.std(y)))


def _holds(found, f, X):
    """Every scaling found is one: f(l^a x) == l^k f(x) to float rounding."""
    for a, k in zip(found.powers, found.output):
        lam = 1.3
        moved = X * lam ** np.array([float(e) for e in a])
        assert np.allclose(f(moved), lam ** float(k) * f(X), rtol=1e-9, atol=1e-12), (a, k)


def velocity_addition(x):  # Feynman I.16.6 over (c, v, u)
    c, v, u = x.T
    return (u + v) / (1 + u * v / c**2)


def test_a_law_of_one_scaling_gives_one_group_fewer():
    X = np.random.default_rng(0).uniform(1, 5, (2000, 3))
    found = _find(velocity_addition, X)
    assert found is not None
    assert found.powers == ((1, 1, 1),) and found.output == (1,)
    _holds(found, velocity_addition, X)
    groups = found.groups()
    assert len(groups.groups) == 2  # c g(u/c, v/c): two variables instead of three
    assert found.describe(["c", "v", "u"]) == ["l c, l v, l u -> l y"]


def test_two_scalings_and_a_fractional_output_power():
    # m c^2 / sqrt(1 - v^2/c^2): m scales y, (v, c) together scale it twice
    X = np.column_stack([np.random.default_rng(1).uniform(1, 5, 2000),
                         np.random.default_rng(2).uniform(1, 2, 2000),
                         np.random.default_rng(3).uniform(3, 10, 2000)])
    energy = lambda x: x[:, 0] * x[:, 2] ** 2 / np.sqrt(1 - x[:, 1] ** 2 / x[:, 2] ** 2)  # noqa
    found = _find(energy, X)
    assert found is not None and len(found.powers) == 2
    _holds(found, energy, X)
    assert [g for g in found.groups().group_texts(["m", "v", "c"])] in (["v/c"], ["c/v"])
    # sin(x2) added: only the scaling that keeps x0 x1 (power 0 of the output) is left
    root = lambda x: np.sqrt(x[:, 0] * x[:, 1]) + np.sin(x[:, 2])  # noqa: E731
    found = _find(root, np.random.default_rng(4).uniform(1, 5, (2000, 3)))
    assert found is not None and found.output == (0,)
    assert found.powers in (((1, -1, 0),), ((-1, 1, 0),))
    # sqrt(x0 x1) sin(x2): the output scales by l^(1/2)
    root = lambda x: np.sqrt(x[:, 0] * x[:, 1]) * np.sin(x[:, 2])  # noqa: E731
    X = np.random.default_rng(4).uniform(1, 5, (2000, 3))
    found = _find(root, X)
    assert found is not None
    _holds(found, root, X)
    assert Fraction(1, 2) in found.output


def test_a_law_with_no_scaling_has_none():
    rng = np.random.default_rng(5)
    X = rng.uniform(1, 5, (2000, 3))
    for f in (lambda x: np.sin(x[:, 0]) + x[:, 1] * x[:, 2] + x[:, 2],
              lambda x: np.exp(x[:, 0] - x[:, 1]) + x[:, 2],
              lambda x: x[:, 0] ** 2 + x[:, 0] * x[:, 2] + x[:, 1] + 1.0):
        assert _find(f, X) is None


def test_a_weak_input_is_not_taken_for_a_scaling():
    # y barely moves with x1 (a derivative test alone would call it a symmetry): a finite
    # move of x1 by up to e changes y by more than the tolerance
    X = np.random.default_rng(6).uniform(1, 3, (2000, 2))
    f = lambda x: x[:, 0] * (1 + 0.08 * x[:, 1])  # noqa: E731
    found = _find(f, X)
    assert found is not None and found.powers == ((1, 0),) and found.output == (1,), found
    _holds(found, f, X)


def test_inputs_of_both_signs_and_hostile_values():
    rng = np.random.default_rng(7)
    X = np.column_stack([rng.uniform(-3, 3, 2000), rng.uniform(1, 4, 2000)])
    f = lambda x: x[:, 0] ** 3 / x[:, 1]  # noqa: E731  # crosses 0: scales all the same
    found = _find(f, X)
    assert found is not None
    _holds(found, f, X)
    # an oracle that gives NaN, or constant rows: nothing, and no error
    assert scaling.find(lambda r: np.full(len(r), np.nan), X, 0.02, 1.0) is None
    # a constant ignores every input: each input alone is a scaling of power 0
    flat = scaling.find(lambda r: np.ones(len(r)), X, 0.02, 1.0)
    assert flat is not None and set(flat.output) == {0} and len(flat.powers) == 2


@settings(max_examples=25, deadline=None)
@given(p=st.lists(st.integers(-2, 2), min_size=3, max_size=3),
       q=st.lists(st.sampled_from([-3, -2, -1, 1, 2, 3]), min_size=3, max_size=3),
       h=st.sampled_from(["rational", "exp", "log"]))
def test_every_scaling_of_a_monomial_times_a_function_of_a_group_is_found(p, q, h):
    """``y = x^p g(x^q)`` (``g`` nonlinear) has exactly the scalings ``a`` with ``a . q = 0``
    (and ``k = a . p``): two of them over three inputs, found as such."""
    g = {"rational": lambda t: 1 / (1 + t), "exp": lambda t: np.exp(-t),
         "log": lambda t: np.log(1 + t)}[h]

    def f(x):
        return np.prod(x ** np.array(p, float), axis=1) * g(np.prod(x ** np.array(q, float),
                                                                   axis=1))

    X = np.random.default_rng(8).uniform(1, 2, (2000, 3))
    found = _find(f, X)
    assert found is not None, (p, q, h)
    assert len(found.powers) == 2
    for a, k in zip(found.powers, found.output):
        assert sum(ai * qi for ai, qi in zip(a, q)) == 0
        assert k == sum(ai * pi for ai, pi in zip(a, p))


def test_compile_finds_a_law_through_its_scaling():
    """Feynman I.16.6 (relativistic addition of velocities): the plain search of this budget
    misses it; the scaling makes it a rational of two variables."""
    rng = np.random.default_rng(9)
    X = np.column_stack([rng.uniform(1, 5, 1500), rng.uniform(1, 5, 1500),
                         rng.uniform(1, 5, 1500)])
    c, v, u = sympy.symbols("c v u")
    law = (u + v) / (1 + u * v / c**2)
    got = {}
    for decompose in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sym = sfx.compile(velocity_addition, sample_inputs=X,
                              engine=fast_engine(generations=30), decompose=decompose,
                              variable_names=["c", "v", "u"], executor="inline",
                              progress=False)
        got[decompose] = sym.equations["function"][0]
    assert not equivalent(got[False].equation.expr, law, X, names="cvu"), got[False]
    assert equivalent(got[True].equation.expr, law, X, names="cvu"), got[True]
    info = got[True].info["scaling"]
    assert info["scalings"] == ["l c, l v, l u -> l y"]
    assert len(info["groups"]) == 2
    assert info["searched"] == ["identity"]  # this engine searches no transforms


def test_g_is_searched_as_it_is_when_the_output_reached_the_network(monkeypatch):
    """Searches that reached the network (here: always, by the rule's factor) may hold the
    law only in a bloated form; g over the groups is still searched, as it is, once."""
    from symtorch_fx import api

    monkeypatch.setattr(api, "DECOMPOSE_NEAR", math.inf)
    rng = np.random.default_rng(9)
    X = rng.uniform(1, 5, (1500, 3))
    c, v, u = sympy.symbols("c v u")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sym = sfx.compile(velocity_addition, sample_inputs=X,
                          engine=fast_engine(generations=30, transforms=("inverse",)),
                          variable_names=["c", "v", "u"], executor="inline", progress=False)
    front = sym.equations["function"][0]
    assert front.info["scaling"]["searched"] == ["identity"]  # not "inverse"
    assert "parts not searched" in front.info.get("decomposition", "parts not searched")
    searches = front.info["searches"]
    assert sum(1 for s in searches if s.get("dimensionless")) == 1
    assert equivalent(front.equation.expr, (u + v) / (1 + u * v / c**2), X, names="cvu")


def test_inputs_that_cannot_be_moved_are_in_no_scaling_and_hide_none():
    """A constant input, one recorded over a sliver of its range, or one that is always 0: the
    scalings of the others are found all the same (the unmovable one stays a variable of g)."""
    rng = np.random.default_rng(10)
    f = lambda x: x[:, 0] * x[:, 2] ** 2 / (1 + x[:, 0] / x[:, 2]) * (1 + x[:, 1])  # noqa
    for column in (np.full(1500, 2.0), rng.uniform(2.0, 2.03, 1500), np.zeros(1500)):
        X = np.column_stack([rng.uniform(1, 4, 1500), column, rng.uniform(1, 4, 1500)])
        found = _find(f, X)
        assert found is not None and found.powers == ((1, 0, 1),), found
        assert found.output == (3,) and found.residual < 1e-9
        _holds(found, f, X)
        assert "x1" in found.groups().group_texts(["x0", "x1", "x2"])

    def fragile(x):  # inf as soon as a row leaves the recorded ranges
        out = x[:, 0] / x[:, 2]
        return np.where((x >= 1).all(axis=1) & (x <= 4).all(axis=1), out, np.inf)

    Y = rng.uniform(1, 4, (1500, 3))
    assert scaling.find(fragile, Y, 0.02, float(np.std(fragile(Y)))) is None


def test_the_oracle_estimate_is_the_closer_of_the_two_tests():
    from symtorch_fx import api
    from symtorch_fx.search import decompose as D

    X = np.random.default_rng(11).uniform(1, 4, (800, 3))
    y = velocity_addition(X)
    root = D.Part((0, 1, 2))
    root.symmetry_residual = 0.3  # a structure that holds only roughly: a large residual
    found = scaling.Scalings(((1, 1, 1),), (1,), residual=0.01)
    scaled = api._grouped(found.groups(), X, y, np.arange(600), ["c", "v", "u"], found)
    assert scaled is not None and scaled.names == ["pi0", "pi1"]
    assert np.isclose(api._oracle_estimate(None, scaled, y[:600]), 0.01**2 / 2)
    assert np.isclose(api._oracle_estimate(((root), []), scaled, y[:600]), 0.01**2 / 2)
    root.symmetry_residual = 0.001
    assert np.isclose(api._oracle_estimate(((root), []), scaled, y[:600]), 0.001**2 / 2)
    assert api._oracle_estimate(None, None, y[:600]) is None


def test_composed_equations_are_offered_shorter_when_sympy_cancels_them():
    from symtorch_fx import api
    from symtorch_fx.expr.grammar import complexity, parse, variable

    syms = [variable(n) for n in ("c", "v", "u")]
    texts = ["(c)*((c/v + c/u)/(c^2/(u*v) + 1))", "(c)*(0.5*sin(c/u))", "c*(", "x9 + 1"]
    got = api._cancelled(texts, syms, 1.0)
    assert len(got) == 1, got  # the others are no shorter, or do not parse: left out quietly
    by = {s.name: s for s in syms}
    assert complexity(parse(got[0], by)) < complexity(parse(texts[0], by))
    X = np.random.default_rng(12).uniform(1, 5, (50, 3))
    assert equivalent(parse(got[0], by), sympy.sympify("(u + v)/(1 + u*v/c**2)",
                                                       locals={s.name: s for s in syms}),
                      X, names="cvu")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-0.009, 0.009), min_size=3, max_size=3),
       st.sampled_from([0.02, 0.05, -0.03]))
def test_near_integer_constants_are_snapped_before_cancelling(shifts, far):
    """A search's constants a hair off 1 (``1.00003*c/v``) block sympy's cancellation; within
    1% of an integer they are tried as it, and the cancelled law is offered. A constant
    further off is kept as found: nothing shorter comes of it."""
    from symtorch_fx import api
    from symtorch_fx.expr.grammar import complexity, parse, variable

    syms = [variable(n) for n in ("c", "v", "u")]
    by = {s.name: s for s in syms}
    a, b, d = (1 + s for s in shifts)
    near = f"(c)*(({a!r}*c/v + {b!r}*c/u)/({d!r}*c^2/(u*v) + 1))"
    got = api._cancelled([near], syms, 1.0)
    law = sympy.sympify("c**2*(u + v)/(c**2 + u*v)", locals=by)
    assert any(sympy.simplify(parse(t, by) - law) == 0 for t in got), got
    assert all(complexity(parse(t, by)) < complexity(parse(near, by)) for t in got)
    off = f"(c)*(({1 + far!r}*c/v + c/u)/(c^2/(u*v) + 1))"
    assert not any(sympy.simplify(parse(t, by) - law) == 0
                   for t in api._cancelled([off], syms, 1.0))


def test_a_trained_network_shows_the_scalings_of_its_law():
    """The network's error (here about 1e-4 of the output's variance) is within what the
    derivatives and the finite tests allow: a network trained on a law with one scaling and on
    a law with two shows them, and one trained on a law with none shows none. (A network 5
    times worse, NMSE 5e-4, fails the finite test's 2% of the spread: ``convert(noise=)``
    widens it, as it widens the decomposition's tests.)"""
    import torch
    from conftest import mlp, train

    torch.manual_seed(0)
    rng = np.random.default_rng(13)
    X = rng.uniform(1, 3, (3000, 3))
    laws = {
        "one": (velocity_addition, [((1, 1, 1), 1)]),
        "two": (lambda x: x[:, 0] * x[:, 1] / (1 + x[:, 1] / x[:, 2]),
                [((1, 0, 0), 1), ((0, 1, 1), 1)]),
        "none": (lambda x: np.sin(x[:, 0]) + x[:, 1] * x[:, 2] + x[:, 2], []),
    }
    for name, (law, expected) in laws.items():
        y = law(X)
        mu, sd = y.mean(), y.std()
        net = mlp(3, 1)
        Xt = torch.as_tensor(X, dtype=torch.float32)
        train(net, Xt, torch.as_tensor((y[:, None] - mu) / sd, dtype=torch.float32),
              steps=4000)

        def oracle(rows):
            with torch.no_grad():
                out = net(torch.as_tensor(rows, dtype=torch.float32))
            return out.double().numpy()[:, 0] * sd + mu

        found = scaling.find(oracle, X, 0.02, float(np.std(y)))
        if not expected:
            assert found is None, (name, found)
            continue
        assert found is not None, name
        # the span found is the law's: each expected scaling is a combination of those found
        got = np.array([[float(e) for e in a] + [float(k)] for a, k in
                        zip(found.powers, found.output)])
        assert len(got) == len(expected), (name, found)
        for a, k in expected:
            want = np.array([*a, k], float)
            coef, *_ = np.linalg.lstsq(got.T, want, rcond=None)
            assert np.allclose(got.T @ coef, want, atol=1e-9), (name, found)
