"""The science case studies in ``examples/``, run by their own code on small budgets.

Real simulations, real training, the real embedded engine, fixed seeds; each test asserts that
the law and its constants are recovered, not merely that something ran. The full runs (the
examples' default budgets) are marked slow: ``python -m pytest -m slow tests/test_science.py``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import gnn_forces  # noqa: E402
import lorenz_latent  # noqa: E402
import pinn_constants  # noqa: E402
from _common import linear_fit  # noqa: E402


def _check_law(res: gnn_forces.LawResult) -> None:
    report = gnn_forces.report({res.law: res})
    expected = gnn_forces.LAWS[res.law][2]
    assert len(res.components) == 2, report
    for c in res.components:
        # the distilled equation is a linear combination of the true force components, in the
        # training range and far outside it (where only the law itself, not an approximation of
        # it, stays linear in f), and it uses only the variables the law uses
        assert c.is_law(expected), report
        # closer to a linear combination of f than the network's messages it was distilled from
        assert 1 - c.r2_equation < 1 - c.r2_message, report
        assert c.r2_message > 0.999, report  # the network's messages are linear in f, too
        assert np.abs(c.coef[:2]).max() > 0.05, report  # not a constant that fits trivially
    assert res.recovered, report


def test_gnn_messages_are_the_spring_and_inverse_square_laws():
    results = gnn_forces.run(gnn_forces.QUICK)
    assert set(results) == {"spring", "r2"}
    for res in results.values():
        _check_law(res)
    # the check can fail: the 1/r^2 equations are not linear in the spring force
    Xf = gnn_forces.far_edges(5000, 1)
    eq = results["r2"].sym.equations["edge"][0].equation
    assert linear_fit(eq(Xf), gnn_forces.force_of("spring", Xf))[1] < 0.5


def _check_pinn(res: pinn_constants.SystemResult, tol: float) -> None:
    report = pinn_constants.report({res.name: res})
    assert res.form is not None, report  # A*sin(a*x + phase)*exp(-b*t) + offset, nothing else
    assert abs(res.form["offset"]) < 1e-3 * abs(res.form["A"]), report
    for name, err in res.relative_errors().items():
        assert err < tol, f"{name}: {100 * err:.2f}% off\n{report}"
    for name, value in res.pinn.items():  # the PINN learned its constant too
        assert abs(value / res.truth[name] - 1) < tol, report
    assert res.equation_error < 2 * res.pinn_error + 1e-4, report


def test_pinn_heat_equation_gives_alpha_within_two_percent():
    res = pinn_constants.run(pinn_constants.QUICK)["heat"]
    _check_pinn(res, tol=0.02)
    assert abs(res.form["phase"]) < 0.01 and abs(res.form["A"] - 1) < 0.01
    # the distilled equation carries the constant as exp(-alpha*pi^2*t)
    assert math.isclose(res.form["b"] / math.pi**2, res.recovered["alpha"])


def test_pinn_damped_oscillator_gives_c_and_k_within_one_percent():
    # the second PINN needs its full training budget (after 1500 Adam steps it is still in the
    # basin of an overdamped solution at seeds 0 and 2); only the search is the quick one
    cfg = replace(pinn_constants.QUICK, systems=("oscillator",),
                  adam_steps=pinn_constants.FULL.adam_steps,
                  lbfgs_steps=pinn_constants.FULL.lbfgs_steps)
    res = pinn_constants.run(cfg)["oscillator"]
    _check_pinn(res, tol=0.01)
    assert set(res.recovered) == {"c", "k"}


def _check_lorenz(res: lorenz_latent.Result, tol: dict[str, float], spurious: float) -> None:
    report = lorenz_latent.report(res)
    assert res.affine_r2 > 0.9999, report
    assert res.constants, report  # every distilled equation is a quadratic polynomial
    truth = {"sigma": 10.0, "rho": 28.0, "beta": 8 / 3, "dy/dt: y": -1.0, "dy/dt: x*z": -1.0,
             "dz/dt: x*y": 1.0}
    for name, v in truth.items():
        assert abs(res.constants[name] / v - 1) < tol.get(name, tol["other"]), f"{name}\n{report}"
    assert res.spurious < spurious, report  # no term Lorenz does not have, to that size
    # the distilled dynamics are closer to the true latent derivatives than the network they
    # were distilled from
    for sym_err, net_err in zip(res.symbolic_error, res.network_error):
        assert sym_err < net_err, report


def test_lorenz_latent_dynamics_are_lorenz_up_to_a_linear_map():
    res = lorenz_latent.run(lorenz_latent.QUICK)
    # The quick network is trained briefly, and its training and Operon's search are not
    # bit-identical across CPUs. Measured on the 2026-11-29 box (seeds 0-2): sigma, rho within
    # 1.4%, beta within 9.3%, the other coefficients within 7%. With 2500 training steps that
    # box gave dy/dt's y coefficient 15% off (the test then needed 4000). The full run
    # (test_lorenz_full_..., slow) holds them to 1-6%.
    _check_lorenz(res, dict(sigma=0.03, rho=0.03, beta=0.12, other=0.12), spurious=0.1)


# ----------------------------------------------------------------------------------------------
# the full runs, as the examples do them


@pytest.mark.slow
def test_gnn_full_all_four_laws():
    results = gnn_forces.run(gnn_forces.FULL)
    for res in results.values():
        _check_law(res)


@pytest.mark.slow
def test_pinn_full_heat_and_oscillator():
    results = pinn_constants.run(pinn_constants.FULL)
    _check_pinn(results["heat"], tol=0.01)
    _check_pinn(results["oscillator"], tol=0.01)


@pytest.mark.slow
def test_lorenz_full_and_symbolic_forecasts_beat_neural():
    res = lorenz_latent.run(lorenz_latent.FULL)
    _check_lorenz(res, dict(sigma=0.01, rho=0.01, beta=0.02, other=0.06), spurious=0.05)
    report = lorenz_latent.report(res)
    for t, err in res.error_at["symbolic"].items():
        if 1.0 <= t <= 5.0:
            assert err < res.error_at["neural"][t], report
    assert res.valid_time["symbolic"] > res.valid_time["neural"], report
