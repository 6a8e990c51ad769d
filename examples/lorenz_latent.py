"""Lorenz from high-dimensional data: latent dynamics learnt by a network, then distilled.

    python examples/lorenz_latent.py           # ~1 min on 2 cores
    python examples/lorenz_latent.py --quick

1. Lorenz trajectories (sigma = 10, rho = 28, beta = 8/3; scipy ``solve_ivp``) are observed only
   through a fixed random linear embedding into 64 dimensions, ``obs = W z``. Time derivatives
   of the observations come from a 5-point finite difference of the observed series.
2. A network learns a 3-dimensional latent space and its dynamics: a linear encoder and decoder
   (the embedding is linear, so any invertible linear map of ``z`` is as good a latent as any
   other, and the network picks one) and an MLP ``dynamics(latent) -> d latent / dt``, trained
   on reconstruction, on the latent derivative ``encoder(d obs/dt)``, and on the observed
   derivative through the decoder.
3. symtorch_fx distills ``dynamics`` (polynomial operators; the network's own error on its
   training targets is passed as ``noise=``).
4. Evaluation, with the truth used only here: an affine map ``z = P latent + c`` is fitted by
   least squares, the distilled equations are carried into Lorenz coordinates
   (``dz/dt = P h(P^-1 (z - c))``, expanded) and their coefficients set next to Lorenz's. Then both
   dynamics forecast unseen trajectories from their encoded first observation: same encoder,
   same decoder, same integrator, only the dynamics differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import sympy
import torch
import torch.nn as nn
from scipy.integrate import solve_ivp

import symtorch_fx as sfx

try:
    from _common import Clock, pyplot, stages, torch_threads
    from _common import main as common_main
except ImportError:  # imported as examples.lorenz_latent
    from ._common import Clock, pyplot, stages, torch_threads
    from ._common import main as common_main

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0
DT = 0.01  # sampling interval of the observations
LYAPUNOV_TIME = 1 / 0.906  # 1 / the largest Lyapunov exponent of Lorenz-63


@dataclass(frozen=True)
class Config:
    dim: int = 64  # observed dimensions
    n_train: int = 16  # training trajectories
    duration: float = 10.0  # of each training trajectory
    width: int = 128
    steps: int = 5000  # Adam steps, 512 rows each
    population: int = 500
    generations: int = 100
    max_length: int = 35
    restarts: int = 1
    n_test: int = 20  # forecast initial states
    horizon: float = 8.0  # forecast length
    threshold: float = 0.3  # normalized error that ends a forecast's valid time
    seed: int = 0


FULL = Config()
QUICK = Config(n_train=8, steps=4000, population=300, generations=40, n_test=10, horizon=3.0)


def lorenz(z: np.ndarray) -> np.ndarray:
    x, y, w = np.moveaxis(np.asarray(z), -1, 0)
    return np.stack([SIGMA * (y - x), x * (RHO - w) - y, x * y - BETA * w], -1)


def trajectory(z0: np.ndarray, duration: float) -> np.ndarray:
    ts = np.arange(0.0, duration + DT / 2, DT)
    sol = solve_ivp(lambda t, z: lorenz(z), (0.0, ts[-1]), z0, t_eval=ts, method="DOP853",
                    rtol=1e-10, atol=1e-10)
    return sol.y.T


@dataclass
class Data:
    W: np.ndarray  # (dim, 3) the embedding
    obs: np.ndarray  # (n, dim) observations, normalized
    dobs: np.ndarray  # (n, dim) their time derivatives (finite differences), same scale
    z: np.ndarray  # (n, 3) the hidden Lorenz state (evaluation only)
    test_z: list[np.ndarray]  # forecast trajectories (hidden states)
    mean: np.ndarray
    scale: float

    def observe(self, z: np.ndarray) -> np.ndarray:
        return (z @ self.W.T - self.mean) / self.scale


def make_data(cfg: Config) -> Data:
    rng = np.random.default_rng(cfg.seed)
    on_attractor = trajectory(np.array([1.0, 1.0, 1.0]), 120.0)[1000::20]  # past the transient
    starts = on_attractor[rng.choice(len(on_attractor), cfg.n_train + cfg.n_test, replace=False)]
    W = rng.normal(size=(cfg.dim, 3)) / math.sqrt(3)
    obs, dobs, zs = [], [], []
    for z0 in starts[: cfg.n_train]:
        z = trajectory(z0, cfg.duration)
        o = z @ W.T
        # 5-point central difference: error O(DT^4)
        dobs.append((o[:-4] - 8 * o[1:-3] + 8 * o[3:-1] - o[4:]) / (12 * DT))
        obs.append(o[2:-2])
        zs.append(z[2:-2])
    obs, dobs = np.concatenate(obs), np.concatenate(dobs)
    mean, scale = obs.mean(0), float(obs.std())
    test = [trajectory(z0, cfg.horizon) for z0 in starts[cfg.n_train:]]
    return Data(W, (obs - mean) / scale, dobs / scale, np.concatenate(zs), test, mean, scale)


class LatentODE(nn.Module):
    def __init__(self, dim: int, width: int):
        super().__init__()
        self.encoder = nn.Linear(dim, 3)
        self.decoder = nn.Linear(3, dim)
        self.dynamics = nn.Sequential(nn.Linear(3, width), nn.SiLU(), nn.Linear(width, width),
                                      nn.SiLU(), nn.Linear(width, 3))

    def forward(self, obs):
        """d latent / dt at the observation ``obs``."""
        return self.dynamics(self.encoder(obs))

    def latent_rate(self, dobs):
        """d latent / dt seen through the (linear) encoder."""
        return dobs @ self.encoder.weight.T


def train(net: LatentODE, data: Data, cfg: Config) -> list[float]:
    """Reconstruction + latent-derivative + observed-derivative losses, each relative to its
    scale (so shrinking the latent space gains nothing), and a unit-variance, centred latent."""
    X = torch.tensor(data.obs, dtype=torch.float32)
    dX = torch.tensor(data.dobs, dtype=torch.float32)
    var_x, var_dx = X.var(), dX.var()
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=cfg.steps)
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(X), (512,), generator=g)
        x, dx = X[idx], dX[idx]
        z = net.encoder(x)
        rate = net.dynamics(z)
        target = net.latent_rate(dx)
        loss = (((net.decoder(z) - x) ** 2).mean() / var_x
                + ((rate @ net.decoder.weight.T - dx) ** 2).mean() / var_dx
                + ((rate - target) ** 2).mean() / (target**2).mean()
                + 0.1 * (((z.var(0) - 1) ** 2).sum() + (z.mean(0) ** 2).sum()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():  # the network's error on its own training targets, per latent
        rate = net(X)
        return ((rate - net.latent_rate(dX)) ** 2).mean(0).double().tolist()


# ----------------------------------------------------------------------------------------------
# evaluation


TERMS = ("1", "x", "y", "z", "x^2", "x*y", "x*z", "y^2", "y*z", "z^2")
LORENZ = [  # the true coefficients of each equation on TERMS
    {"x": -SIGMA, "y": SIGMA},
    {"x": RHO, "y": -1.0, "x*z": -1.0},
    {"x*y": 1.0, "z": -BETA},
]


def in_lorenz_coordinates(equations: list[sympy.Expr], P: np.ndarray, c: np.ndarray):
    """The distilled latent dynamics ``h`` as ``dz/dt = P h(P^-1 (z - c))``: one dict of
    coefficients on TERMS per equation (None when an equation is not a polynomial)."""
    x, y, w = sympy.symbols("x y z")
    zt = sympy.Matrix([x, y, w])
    latent = sympy.Matrix(np.linalg.inv(P)) * (zt - sympy.Matrix(c))
    h = []
    for e in equations:
        names = {s.name: s for s in e.free_symbols}
        h.append(e.xreplace({names[f"x{i}"]: latent[i] for i in range(3) if f"x{i}" in names}))
    rates = sympy.Matrix(P) * sympy.Matrix(h)
    monomials = dict(zip(TERMS, [sympy.Integer(1), x, y, w, x**2, x * y, x * w, y**2, y * w,
                                 w**2]))
    out = []
    for r in rates:
        try:
            poly = sympy.Poly(sympy.expand(r), x, y, w)
        except sympy.PolynomialError:
            out.append(None)
            continue
        if poly.total_degree() > 2:
            out.append(None)
            continue
        out.append({k: float(poly.coeff_monomial(m)) for k, m in monomials.items()})
    return out


def rk4(f, z0: torch.Tensor, steps: int, dt: float) -> torch.Tensor:
    zs = [z0]
    z = z0
    for _ in range(steps):
        k1 = f(z)
        k2 = f(z + 0.5 * dt * k1)
        k3 = f(z + 0.5 * dt * k2)
        k4 = f(z + dt * k3)
        z = z + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        zs.append(z)
    return torch.stack(zs, 1)


@dataclass
class Result:
    equations: list[str]
    complexities: list[int]
    coefficients: list[dict | None]  # in Lorenz coordinates, one dict per equation
    constants: dict[str, float]  # sigma, rho, beta read off the coefficients
    spurious: float  # the largest coefficient that Lorenz does not have, relative to its scale
    affine_r2: float
    network_error: list[float]  # the dynamics MLP on its training targets (MSE per latent)
    symbolic_error: list[float]  # the distilled equations on the same targets
    valid_time: dict[str, float]  # median time until the normalized forecast error > threshold
    error_at: dict[str, dict[float, float]]  # median normalized error at a few times
    seconds: dict[str, float]
    plot: dict = field(default_factory=dict)
    sym: nn.Module | None = None


def read_constants(coefs: list[dict | None]) -> tuple[dict[str, float], float]:
    if any(c is None for c in coefs):
        return {}, math.inf
    const = {"sigma": (coefs[0]["y"] - coefs[0]["x"]) / 2, "rho": coefs[1]["x"],
             "beta": -coefs[2]["z"], "dy/dt: y": coefs[1]["y"], "dy/dt: x*z": coefs[1]["x*z"],
             "dz/dt: x*y": coefs[2]["x*y"]}
    # the size of a term is its coefficient times the typical size of its monomial on the
    # attractor (|x|, |y| ~ 8, z ~ 24): so a constant 0.5 counts less than 0.5*x*z
    size = {"1": 1.0, "x": 8.0, "y": 8.0, "z": 24.0, "x^2": 64.0, "x*y": 64.0, "x*z": 192.0,
            "y^2": 64.0, "y*z": 192.0, "z^2": 576.0}
    spurious = 0.0
    for co, true in zip(coefs, LORENZ):
        scale = max(abs(v) * size[k] for k, v in true.items())
        for k, v in co.items():
            if k not in true:
                spurious = max(spurious, abs(v) * size[k] / scale)
    return const, spurious


def run(cfg: Config = FULL, progress: bool = False) -> Result:
    clock = Clock()
    with clock("simulate"):
        data = make_data(cfg)
    torch.manual_seed(cfg.seed)
    net = LatentODE(cfg.dim, cfg.width)
    with clock("train"), torch_threads(1):
        noise = train(net, data, cfg)
    net.eval()
    X = torch.tensor(data.obs, dtype=torch.float32)
    engine = sfx.Operon(operators=("add", "sub", "mul"), population_size=cfg.population,
                        generations=cfg.generations, max_length=cfg.max_length, max_rows=1000,
                        transforms=())
    with clock("distill"):
        sym = sfx.compile(net, targets="dynamics", sample_inputs=X.split(4096), engine=engine,
                          noise=noise, restarts=cfg.restarts, seed=cfg.seed, prune=False,
                          progress=progress)
    with clock("evaluate"), torch_threads(1):
        res = evaluate(net, sym, data, cfg, noise)
    res.seconds = dict(clock.stages)
    return res


def evaluate(net: LatentODE, sym, data: Data, cfg: Config, noise: list[float]) -> Result:
    chosen = sym.equations["dynamics"].chosen
    exprs = [e.expr for e in chosen]
    with torch.no_grad():
        X = torch.tensor(data.obs, dtype=torch.float32)
        latent = net.encoder(X).double().numpy()
        target = net.latent_rate(torch.tensor(data.dobs, dtype=torch.float32)).double().numpy()
    sym_error = [float(np.mean((e(latent) - target[:, k]) ** 2)) for k, e in enumerate(chosen)]
    # the affine map latent -> Lorenz state, by least squares (the only use of the truth)
    A = np.column_stack([latent, np.ones(len(latent))])
    sol, *_ = np.linalg.lstsq(A, data.z, rcond=None)
    P, c = sol[:3].T, sol[3]
    resid = data.z - A @ sol
    affine_r2 = float(1 - (resid**2).sum() / ((data.z - data.z.mean(0)) ** 2).sum())
    coefs = in_lorenz_coordinates(exprs, P, c)
    constants, spurious = read_constants(coefs)

    # forecasts from the encoded first observation of each unseen trajectory
    steps = len(data.test_z[0]) - 1
    truth = np.stack([data.observe(z) for z in data.test_z])  # (n, steps + 1, dim)
    z0 = net.encoder(torch.tensor(truth[:, 0], dtype=torch.float32))
    spread = float(np.sqrt(((data.obs - data.obs.mean(0)) ** 2).sum(1).mean()))
    neural = net.dynamics
    symbolic = sym.symbolic_modules["dynamics"]
    times = np.arange(steps + 1) * DT
    errors, valid, at, first_pred = {}, {}, {}, {}
    with torch.no_grad():
        for name, f in (("neural", neural), ("symbolic", symbolic)):
            pred = net.decoder(rk4(f, z0, steps, DT)).double().numpy()
            first_pred[name] = pred[0]  # the first trajectory, for the figure
            err = np.linalg.norm(pred - truth, axis=-1) / spread  # (n, steps + 1)
            err = np.where(np.isfinite(err), err, np.inf)
            errors[name] = err
            over = err > cfg.threshold
            first = np.where(over.any(1), over.argmax(1), steps)
            valid[name] = float(np.median(first * DT))
            at[name] = {t: float(np.median(err[:, int(round(t / DT))]))
                        for t in (0.5, 1.0, 2.0, 3.0, 5.0, 8.0) if t <= cfg.horizon}
        # the symbolic model's long run in latent space, mapped to Lorenz coordinates
        lat = rk4(symbolic, z0[:1], int(20 / DT), DT)[0].double().numpy()
    plot = dict(times=times, errors=errors, truth=truth[0], sym_attractor=lat @ P.T + c,
                true_attractor=data.z[:3000], pred=first_pred, threshold=cfg.threshold)
    return Result([e.text(4) for e in chosen], [e.complexity for e in chosen], coefs,
                  constants, spurious, affine_r2, noise, sym_error, valid, at, {}, plot, sym)


def report(res: Result) -> str:
    lines = [f"distilled latent dynamics ({stages(res.seconds)})"]
    for k, (eq, cx) in enumerate(zip(res.equations, res.complexities)):
        lines.append(f"   d x{k}/dt = {eq}   (complexity {cx})")
    lines.append("   MSE on the training targets (latent derivatives), per latent: network "
                 + ", ".join(f"{v:.2e}" for v in res.network_error) + "; distilled "
                 + ", ".join(f"{v:.2e}" for v in res.symbolic_error))
    lines.append(f"\nin Lorenz coordinates (affine map latent -> z, R^2 {res.affine_r2:.8f}):")
    names = ("dx/dt", "dy/dt", "dz/dt")
    for name, co, true in zip(names, res.coefficients, LORENZ):
        if co is None:
            lines.append(f"   {name}: not a quadratic polynomial")
            continue
        terms = [f"{v:+.4g}*{k}" if k != "1" else f"{v:+.4g}" for k, v in co.items()
                 if abs(v) >= 5e-3 or k in true]
        lines.append(f"   {name} = {' '.join(terms)}")
    if res.constants:
        lines.append(f"\n   {'':<12}{'truth':>9}{'recovered':>11}")
        truth = {"sigma": SIGMA, "rho": RHO, "beta": BETA, "dy/dt: y": -1.0,
                 "dy/dt: x*z": -1.0, "dz/dt: x*y": 1.0}
        for k, v in res.constants.items():
            off = 100 * (v / truth[k] - 1)
            lines.append(f"   {k:<12}{truth[k]:>9.4f}{v:>11.4f}   ({off:+.2f}%)")
        lines.append(f"   largest term Lorenz does not have: {100 * res.spurious:.2f}% of its "
                     "equation's largest term (typical sizes on the attractor)")
    lines.append(f"\nforecasts of {len(res.plot['errors']['neural'])} unseen trajectories "
                 "(normalized error, median):")
    lines.append(f"   {'':<10}" + "".join(f"{'t=' + str(t):>10}" for t in res.error_at["neural"])
                 + f"{'valid time':>12}")
    for name in ("neural", "symbolic"):
        lines.append(f"   {name:<10}" + "".join(f"{v:>10.3g}" for v in res.error_at[name].values())
                     + f"{res.valid_time[name]:>10.2f} t  "
                     f"({res.valid_time[name] / LYAPUNOV_TIME:.1f} Lyapunov times)")
    return "\n".join(lines)


def figure(res: Result):
    plt = pyplot()

    p = res.plot
    fig = plt.figure(figsize=(15, 4.4))
    ax = fig.add_subplot(1, 3, 1, projection="3d")
    t = p["true_attractor"]
    s = p["sym_attractor"]
    ax.plot(*t.T, color="k", lw=0.4, alpha=0.5, label="Lorenz (hidden state)")
    ax.plot(*s.T, color="C3", lw=0.4, alpha=0.8, label="distilled dynamics, 20 t")
    ax.set(xlabel="x", ylabel="y", zlabel="z", title="attractor, mapped to Lorenz coordinates")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 3, 2)
    times = p["times"]
    for name, color in (("neural", "C0"), ("symbolic", "C3")):
        err = p["errors"][name]
        label = "neural dynamics" if name == "neural" else "distilled dynamics"
        ax.semilogy(times, np.median(err, 0), color=color, label=f"{label} (median, quartiles)")
        ax.fill_between(times, np.percentile(err, 25, 0), np.percentile(err, 75, 0),
                        color=color, alpha=0.2)
    ax.axhline(p["threshold"], color="k", lw=0.8, ls=":")
    ax.set(xlabel="forecast time", ylabel="normalized error (64-d observations)",
           title="forecast error on unseen trajectories", ylim=(1e-4, 3))
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 3, 3)
    k = int(np.argmax(np.abs(p["truth"]).std(0)))
    ax.plot(times, p["truth"][:, k], color="k", lw=2.5, alpha=0.35, label="observed")
    ax.plot(times, p["pred"]["neural"][:, k], color="C0", label="neural dynamics")
    ax.plot(times, p["pred"]["symbolic"][:, k], color="C3", ls="--", label="distilled dynamics")
    ax.set(xlabel="t", ylabel=f"observation channel {k}", title="one forecast")
    ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    common_main(__doc__, FULL, QUICK, run, report, figure, "lorenz_latent.png")
