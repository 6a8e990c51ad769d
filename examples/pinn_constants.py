"""PINN constants: the closed-form solution, and the physical constant in it, read off a PINN.

    python examples/pinn_constants.py          # heat equation and damped oscillator (~1 min)
    python examples/pinn_constants.py --quick

Two physics-informed networks, each trained on 10 sparse observations plus the residual of its
differential equation, with the equation's constants learned alongside the network:

* **heat**: ``u_t = alpha*u_xx`` on x in [0, 1], t in [0, 1], ``u(x, 0) = sin(pi x)``,
  ``u(0, t) = u(1, t) = 0``, alpha = 0.2. The exact solution is
  ``sin(pi x) * exp(-alpha pi^2 t)``. The distilled ``u(x, t)`` should have the form
  ``A*sin(a*x)*exp(-b*t)``; then ``a/pi`` should be 1 and ``alpha_SR = b/pi^2`` 0.2.
* **oscillator**: ``x'' + c*x' + k*x = 0``, c = 0.4, k = 4, ``x(0) = 1``, ``x'(0) = 0``, t in
  [0, 6]. The solution is ``A*exp(-g*t)*cos(w*t + phi)`` with ``g = c/2`` and
  ``w = sqrt(k - g^2)``, so the distilled equation gives ``c_SR = 2g`` and ``k_SR = w^2 + g^2``.

symtorch_fx distills the whole PINN (target ``""``). The heat PINN's variables are the names of
its forward arguments, ``x, t``. A single input without a feature dimension is called ``x`` by
symtorch_fx, so the oscillator's time is ``x`` in its front; the report renames it ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sympy
import torch
import torch.nn as nn

import symtorch_fx as sfx

try:
    from _common import Clock, pyplot, stages, torch_threads
    from _common import main as common_main
except ImportError:  # imported as examples.pinn_constants
    from ._common import Clock, pyplot, stages, torch_threads
    from ._common import main as common_main

ALPHA = 0.2  # heat: diffusivity
C_DAMP, K_SPRING, T_OSC = 0.4, 4.0, 6.0  # oscillator: damping, stiffness, time span


@dataclass(frozen=True)
class Config:
    systems: tuple[str, ...] = ("heat", "oscillator")
    width: int = 32
    adam_steps: int = 3000
    lbfgs_steps: int = 300
    collocation: int = 1000
    population: int = 500
    generations: int = 100
    restarts: int = 2
    seed: int = 0


FULL = Config()
QUICK = Config(systems=("heat",), adam_steps=1500, lbfgs_steps=200, population=300,
               generations=40, restarts=1)


def mlp(d_in: int, width: int, depth: int = 3) -> nn.Sequential:
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.Tanh()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 1))


def grad(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(y.sum(), x, create_graph=True)[0]


# ----------------------------------------------------------------------------------------------
# the two PINNs


class HeatPINN(nn.Module):
    """u(x, t), with the diffusivity alpha learned (as log alpha, started at 0.05)."""

    def __init__(self, width: int):
        super().__init__()
        self.net = mlp(2, width)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(0.05)))

    def forward(self, x, t):
        return self.net(torch.stack([x, t], -1)).squeeze(-1)

    @property
    def constants(self) -> dict[str, float]:
        return {"alpha": float(self.log_alpha.detach().exp())}


def heat_exact(x, t):
    return torch.sin(math.pi * x) * torch.exp(-ALPHA * math.pi**2 * t)


class OscillatorPINN(nn.Module):
    """x(t) on [0, T_OSC] (the network sees t / T_OSC), with c and k learned (started at 1)."""

    def __init__(self, width: int):
        super().__init__()
        self.net = mlp(1, width)
        self.log_c = nn.Parameter(torch.tensor(0.0))
        self.log_k = nn.Parameter(torch.tensor(0.0))

    def forward(self, t):
        return self.net((t / T_OSC)[..., None]).squeeze(-1)

    @property
    def constants(self) -> dict[str, float]:
        return {"c": float(self.log_c.detach().exp()), "k": float(self.log_k.detach().exp())}


def oscillator_exact(t):
    g = C_DAMP / 2
    w = math.sqrt(K_SPRING - g * g)
    return torch.exp(-g * t) * (torch.cos(w * t) + g / w * torch.sin(w * t))


@dataclass
class Problem:
    """A PINN with its data and its loss (observations + physics + initial/boundary terms)."""

    name: str
    model: nn.Module
    observed: tuple  # (inputs..., values): 10 sparse observations
    loss: Callable[[], torch.Tensor]
    grid: tuple  # inputs on a regular grid, for distillation and error maps
    exact: torch.Tensor  # exact solution on the grid


def heat_problem(cfg: Config) -> Problem:
    g = torch.Generator().manual_seed(cfg.seed)
    model = HeatPINN(cfg.width)
    xo, to = torch.rand(10, generator=g), torch.rand(10, generator=g)
    uo = heat_exact(xo, to)
    xc, tc = torch.rand(cfg.collocation, generator=g), torch.rand(cfg.collocation, generator=g)
    s = torch.linspace(0, 1, 101)
    zero, one = torch.zeros_like(s), torch.ones_like(s)

    def loss():
        x, t = xc.clone().requires_grad_(True), tc.clone().requires_grad_(True)
        u = model(x, t)
        ux = grad(u, x)
        residual = grad(u, t) - model.log_alpha.exp() * grad(ux, x)
        return ((residual**2).mean() + ((model(xo, to) - uo) ** 2).mean()
                + ((model(s, zero) - torch.sin(math.pi * s)) ** 2).mean()
                + (model(zero, s) ** 2).mean() + (model(one, s) ** 2).mean())

    X, T = torch.meshgrid(torch.linspace(0, 1, 41), torch.linspace(0, 1, 41), indexing="ij")
    x, t = X.reshape(-1), T.reshape(-1)
    return Problem("heat", model, (xo, to, uo), loss, (x, t), heat_exact(x, t))


def oscillator_problem(cfg: Config) -> Problem:
    g = torch.Generator().manual_seed(cfg.seed)
    model = OscillatorPINN(cfg.width)
    to = torch.rand(10, generator=g) * T_OSC
    xo = oscillator_exact(to)
    tc = torch.rand(cfg.collocation // 2, generator=g) * T_OSC
    t0 = torch.zeros(1)

    def loss():
        t = tc.clone().requires_grad_(True)
        x = model(t)
        v = grad(x, t)
        residual = grad(v, t) + model.log_c.exp() * v + model.log_k.exp() * x
        s = t0.clone().requires_grad_(True)
        x0 = model(s)
        return ((residual**2).mean() + ((model(to) - xo) ** 2).mean()
                + ((x0 - 1) ** 2).sum() + (grad(x0, s) ** 2).sum())

    t = torch.linspace(0, T_OSC, 601)
    return Problem("oscillator", model, (to, xo), loss, (t,), oscillator_exact(t))


PROBLEMS = {"heat": heat_problem, "oscillator": oscillator_problem}


def train(problem: Problem, cfg: Config) -> list[dict[str, float]]:
    """Adam (cosine-decayed), then L-BFGS; returns the learned constants along the way."""
    model = problem.model
    history = [model.constants]
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.adam_steps, eta_min=1e-4)
    for step in range(cfg.adam_steps):
        loss = problem.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 49:
            history.append(model.constants)
    lbfgs = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=cfg.lbfgs_steps,
                              history_size=50, line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        loss = problem.loss()
        loss.backward()
        return loss

    lbfgs.step(closure)
    history.append(model.constants)
    return history


# ----------------------------------------------------------------------------------------------
# reading the constants off the distilled equation


def _linear(arg: sympy.Expr, var: sympy.Symbol) -> tuple[float, float] | None:
    """(slope, intercept) when ``arg`` is linear in ``var`` and has no other variable."""
    if arg.free_symbols != {var}:
        return None
    poly = sympy.Poly(sympy.expand(arg), var)
    if poly.degree() != 1:
        return None
    return float(poly.coeff_monomial(var)), float(poly.coeff_monomial(1))


def damped_wave(expr: sympy.Expr, space: sympy.Symbol | None, time: sympy.Symbol):
    """Match ``expr`` against ``offset + A * wave(a*space + phase) * exp(-b*time + e)``.

    ``wave`` is sin or cos; with ``space=None`` the wave is in ``time`` too (the oscillator).
    Returns ``dict(A, a, phase, b, offset)`` or None when ``expr`` has any other form.
    """
    variables = [v for v in (space, time) if v is not None]
    offset, term = expr.as_independent(*variables, as_Add=True)
    if term.is_Add or not term.free_symbols:
        return None
    amp, rest = term.as_independent(*variables, as_Add=False)
    factors = sympy.Mul.make_args(rest)
    waves = [f for f in factors if isinstance(f, (sympy.sin, sympy.cos))]
    exps = [f for f in factors if isinstance(f, sympy.exp)]
    if len(waves) != 1 or len(exps) != 1 or len(factors) != 2:
        return None
    w = _linear(waves[0].args[0], space if space is not None else time)
    e = _linear(exps[0].args[0], time)
    if w is None or e is None:
        return None
    phase = w[1] + (math.pi / 2 if isinstance(waves[0], sympy.cos) else 0.0)  # as a sine
    return dict(A=float(amp) * math.exp(e[1]), a=w[0], phase=phase, b=-e[0],
                offset=float(offset))


@dataclass
class SystemResult:
    name: str
    equation: str
    complexity: int
    form: dict | None  # the matched damped-wave form, None when the equation has another form
    pinn: dict[str, float]  # constants the PINN learned
    recovered: dict[str, float]  # constants read off the equation
    truth: dict[str, float]
    pinn_error: float  # RMS error against the exact solution on the grid
    equation_error: float
    seconds: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    plot: dict = field(default_factory=dict)
    sym: nn.Module | None = None

    def relative_errors(self) -> dict[str, float]:
        return {k: abs(v / self.truth[k] - 1) for k, v in self.recovered.items()}


def constants_from(name: str, form: dict | None) -> dict[str, float]:
    if form is None:
        return {}
    if name == "heat":
        return {"a/pi": form["a"] / math.pi, "alpha": form["b"] / math.pi**2}
    g, w = form["b"], abs(form["a"])
    return {"c": 2 * g, "k": w * w + g * g}


TRUTH = {"heat": {"a/pi": 1.0, "alpha": ALPHA}, "oscillator": {"c": C_DAMP, "k": K_SPRING}}


def run_system(name: str, cfg: Config, progress: bool = False) -> SystemResult:
    clock = Clock()
    torch.manual_seed(cfg.seed)
    problem = PROBLEMS[name](cfg)
    with clock("train"), torch_threads(1):
        history = train(problem, cfg)
    model = problem.model.eval()
    engine = sfx.Operon(operators=("add", "sub", "mul", "div", "sin", "exp"),
                        population_size=cfg.population, generations=cfg.generations,
                        max_length=20, max_rows=2000, transforms=())
    with clock("distill"):
        sym = sfx.compile(model, targets="", sample_inputs=[problem.grid], engine=engine,
                          restarts=cfg.restarts, seed=cfg.seed, prune=False, progress=progress)
    front = sym.equations[""][0]
    eq = front.equation
    # one input without a feature dimension is called x (see feature_names): for the
    # oscillator that x is time
    syms = {s.name: s for s in eq.expr.free_symbols}
    if name == "heat":
        space, time = syms.get("x", sympy.Symbol("x")), syms.get("t", sympy.Symbol("t"))
    else:
        space, time = None, syms.get("x", sympy.Symbol("x"))
    form = damped_wave(eq.expr, space, time)
    shown = eq.expr if name == "heat" else eq.expr.xreplace({time: sympy.Symbol("t")})
    with torch.no_grad():
        pinn_out = model(*problem.grid)
        sym_out = sym(*problem.grid)
    rms = lambda a: float(torch.sqrt(((a - problem.exact) ** 2).mean()))  # noqa: E731
    return SystemResult(
        name, sfx.Equation(shown, eq.complexity, eq.loss).text(4), eq.complexity, form,
        model.constants, constants_from(name, form), TRUTH[name], rms(pinn_out), rms(sym_out),
        dict(clock.stages), history,
        dict(grid=[g.numpy() for g in problem.grid], exact=problem.exact.numpy(),
             pinn=pinn_out.numpy(), sym=sym_out.numpy(),
             observed=[o.numpy() for o in problem.observed],
             front=dict(complexity=front.complexities, loss=[e.loss for e in front],
                        chosen=front.chosen)),
        sym)


def run(cfg: Config = FULL, progress: bool = False) -> dict[str, SystemResult]:
    return {name: run_system(name, cfg, progress) for name in cfg.systems}


def report(results: dict[str, SystemResult]) -> str:
    lines = []
    for res in results.values():
        lines.append(f"\n== {res.name}  ({stages(res.seconds)})")
        lines.append(f"   distilled (complexity {res.complexity}): {res.equation}")
        if res.form is None:
            lines.append("   the equation does not have the damped-wave form")
        lines.append(f"   {'constant':<10}{'truth':>10}{'PINN':>10}{'distilled':>11}"
                     f"{'error':>9}")
        errs = res.relative_errors()
        num = lambda v, w: f"{v:>{w}.5f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
        for k, v in res.truth.items():
            err = errs.get(k)
            lines.append(f"   {k:<10}{num(v, 10)}{num(res.pinn.get(k), 10)}"
                         f"{num(res.recovered.get(k), 11)}"
                         + (f"{100 * err:>8.3f}%" if err is not None else f"{'-':>9}"))
        lines.append(f"   RMS error vs exact solution: PINN {res.pinn_error:.2e}, "
                     f"distilled equation {res.equation_error:.2e}")
    return "\n".join(lines)


def figure(results: dict[str, SystemResult]):
    plt = pyplot()

    n = len(results)
    fig, axes = plt.subplots(n, 4, figsize=(17, 3.9 * n), squeeze=False)
    for i, res in enumerate(results.values()):
        p = res.plot
        if res.name == "heat":
            side = int(round(math.sqrt(len(p["exact"]))))
            ext = (0, 1, 0, 1)
            ax = axes[i, 0]
            im = ax.imshow(p["pinn"].reshape(side, side).T, origin="lower", extent=ext,
                           aspect="auto", cmap="viridis")
            ax.scatter(p["observed"][0], p["observed"][1], c="w", edgecolors="k", s=30,
                       label="10 observations")
            ax.set(xlabel="x", ylabel="t", title="heat: PINN u(x, t)")
            ax.legend(fontsize=7, loc="upper right")
            fig.colorbar(im, ax=ax)
            ax = axes[i, 1]
            err = np.abs(p["sym"] - p["exact"]).reshape(side, side).T
            im = ax.imshow(np.log10(err + 1e-12), origin="lower", extent=ext, aspect="auto",
                           cmap="magma", vmin=-7, vmax=-3)
            ax.set(xlabel="x", ylabel="t",
                   title=f"log10 |distilled - exact|: RMS {res.equation_error:.1e}\n"
                         f"(PINN: RMS {res.pinn_error:.1e})")
            fig.colorbar(im, ax=ax)
        else:
            t = p["grid"][0]
            ax = axes[i, 0]
            ax.plot(t, p["exact"], color="k", lw=2.5, alpha=0.35, label="exact")
            ax.plot(t, p["pinn"], color="C0", label="PINN")
            ax.plot(t, p["sym"], color="C3", ls="--", label="distilled")
            ax.scatter(p["observed"][0], p["observed"][1], c="w", edgecolors="k", s=30, zorder=5,
                       label="10 observations")
            ax.set(xlabel="t", ylabel="x(t)", title="oscillator: x'' + c x' + k x = 0")
            ax.legend(fontsize=7)
            ax = axes[i, 1]
            ax.semilogy(t, np.abs(p["pinn"] - p["exact"]) + 1e-12, color="C0", label="PINN")
            ax.semilogy(t, np.abs(p["sym"] - p["exact"]) + 1e-12, color="C3", ls="--",
                        label="distilled")
            ax.set(xlabel="t", ylabel="|error|", title="error against the exact solution")
            ax.legend(fontsize=7)
        ax = axes[i, 2]
        front = p["front"]
        ax.semilogy(front["complexity"], front["loss"], "o-", color="0.4", ms=4)
        k = front["chosen"]
        ax.semilogy([front["complexity"][k]], [front["loss"][k]], "*", color="C3", ms=14)
        ax.text(0.97, 0.97, "chosen (★):\n" + res.equation.replace("*", "·"), fontsize=7,
                ha="right", va="top", transform=ax.transAxes)
        ax.set(xlabel="complexity", ylabel="MSE against the PINN",
               title="Pareto front (symtorch_fx, Operon)")
        ax = axes[i, 3]
        steps = np.arange(len(res.history))
        for j, (name, v) in enumerate(res.truth.items()):
            if name not in res.pinn:
                continue
            learned = np.array([h[name] for h in res.history]) / v
            ax.plot(steps, learned, color=f"C{j}", label=f"PINN {name} / truth")
            if name in res.recovered:
                ax.axhline(res.recovered[name] / v, color=f"C{j}", ls="--",
                           label=f"distilled {name} / truth = {res.recovered[name] / v:.4f}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(xlabel="checkpoint (50 Adam steps each; last: L-BFGS)",
               ylabel="constant / truth", title="learned constants", ylim=(0, 2.7))
        ax.legend(fontsize=7)
    return fig


if __name__ == "__main__":
    common_main(__doc__, FULL, QUICK, run, report, figure, "pinn_constants.png",
                ("systems", sorted(PROBLEMS)))
