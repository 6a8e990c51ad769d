"""GNN n-body forces: the interaction law read off a graph network's messages.

    python examples/gnn_forces.py            # spring, 1/r, 1/r^2, charge (~3 min on 2 cores)
    python examples/gnn_forces.py --laws spring r2 --quick

The result of Cranmer et al. (2020), "Discovering Symbolic Models from Deep Learning with
Inductive Biases", which SymTorch reproduces, here offline on 2 CPU cores:

1. Simulate 2-D systems of 4 particles with random masses and charges (velocity Verlet, numpy) under
   one pairwise law, and record (state, acceleration) snapshots.
2. Train a message-passing GNN to predict the accelerations. The edge model sees the physical
   features of a pair, ``dx, dy, r`` (sender minus receiver) and the sender's ``m, q``; its
   message has as many components as space has dimensions (the bottleneck that makes messages
   interpretable). The node model turns the summed messages and the receiver's ``m, q`` into
   an acceleration.
3. Distill the edge model with symtorch_fx (variables ``dx, dy, r, m, q``, the names of its
   forward arguments) and show that each message component, and each distilled equation, is a
   linear combination of the true pair force ``f`` (R^2 of that fit, in range and far outside it).

``f`` is the force on the receiver from the sender with the receiver's own factor divided out,
which is all a message that sees only the sender can carry: ``(r - 1) * d / r`` (spring, rest
length 1), ``m * d / r^2`` (1/r, force m_i m_j / r), ``m * d / r^3`` (1/r^2, gravity),
``q * d / r^3`` (charge, q_i q_j / r^2); ``d = (dx, dy)``, ``m, q`` the sender's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

import symtorch_fx as sfx

try:
    from _common import Clock, linear_fit, pyplot, stages, torch_threads
    from _common import main as common_main
except ImportError:  # imported as examples.gnn_forces
    from ._common import Clock, linear_fit, pyplot, stages, torch_threads
    from ._common import main as common_main

N_PARTICLES = 4
VARIABLES = ("dx", "dy", "r", "m", "q")

# law -> (the pair force f as a factor times d, the receiver's factor, variables f depends on)
LAWS = {
    "spring": (lambda r, m, q: (r - 1) / r, lambda m, q: 1 / m, {"dx", "dy", "r"}),
    "r1": (lambda r, m, q: m / r**2, lambda m, q: np.ones_like(m), {"dx", "dy", "r", "m"}),
    "r2": (lambda r, m, q: m / r**3, lambda m, q: np.ones_like(m), {"dx", "dy", "r", "m"}),
    "charge": (lambda r, m, q: q / r**3, lambda m, q: -q / m, {"dx", "dy", "r", "q"}),
}
TRUTH = {
    "spring": "f = (r - 1)*(dx, dy)/r",
    "r1": "f = m*(dx, dy)/r^2",
    "r2": "f = m*(dx, dy)/r^3",
    "charge": "f = q*(dx, dy)/r^3",
}


@dataclass(frozen=True)
class Config:
    laws: tuple[str, ...] = ("spring", "r1", "r2", "charge")
    n_systems: int = 2000  # simulated systems per law (10 snapshots each, before filtering)
    width: int = 128  # hidden width of the edge and node MLPs
    steps: int = 4000  # Adam steps, 128 systems each
    lr: float = 3e-3
    population: int = 500  # Operon, one search per message component
    generations: int = 100
    max_length: int = 25
    restarts: int = 1
    seed: int = 0


FULL = Config()
QUICK = Config(laws=("spring", "r2"), n_systems=600, width=64, steps=3000, population=300,
               generations=40)


# ----------------------------------------------------------------------------------------------
# simulation

_SRC, _DST = zip(*[(j, i) for i in range(N_PARTICLES) for j in range(N_PARTICLES) if i != j])
SRC, DST = np.array(_SRC), np.array(_DST)  # edge e carries a message from SRC[e] to DST[e]


def pair_force(law: str, d: np.ndarray, m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``f`` on each receiver from each sender: ``d`` (..., 2) = sender - receiver; ``m, q``
    the sender's."""
    r = np.linalg.norm(d, axis=-1)
    return LAWS[law][0](r, m, q)[..., None] * d


def accelerations(law: str, x: np.ndarray, m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``x`` (systems, 4, 2), ``m, q`` (systems, 4) -> accelerations (systems, 4, 2)."""
    f = pair_force(law, x[:, SRC] - x[:, DST], m[:, SRC], q[:, SRC])
    total = np.zeros_like(x)
    for e, i in enumerate(DST):
        total[:, i] += f[:, e]
    return total * LAWS[law][1](m, q)[..., None]


@dataclass
class Snapshots:
    pos: torch.Tensor  # (n, 4, 2)
    m: torch.Tensor  # (n, 4)
    q: torch.Tensor  # (n, 4)
    acc: torch.Tensor  # (n, 4, 2)

    def __len__(self) -> int:
        return len(self.pos)

    def batch(self, idx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.pos[idx], self.m[idx], self.q[idx]


def simulate(law: str, n_systems: int, seed: int, steps: int = 100, every: int = 10,
             dt: float = 0.01, r_min: float = 0.5) -> Snapshots:
    """Velocity-Verlet trajectories, a snapshot every ``every`` steps, each labelled with the
    exact accelerations of its state. A system is followed until two of its particles come
    closer than ``r_min``: there 1/r^2 forces outgrow the step size, and a close encounter
    flings particles far out of the box the others stay in."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_systems, N_PARTICLES, 2))
    v = 0.5 * rng.normal(size=(n_systems, N_PARTICLES, 2))
    m = rng.uniform(0.5, 2.0, (n_systems, N_PARTICLES))
    q = rng.uniform(-1.0, 1.0, (n_systems, N_PARTICLES))
    alive = np.ones(n_systems, bool)
    pos, which = [], []
    a = accelerations(law, x, m, q)
    for step in range(steps):
        alive &= np.linalg.norm(x[:, SRC] - x[:, DST], axis=-1).min(1) > r_min
        if step % every == 0:
            pos.append(x[alive])
            which.append(np.flatnonzero(alive))
        v += 0.5 * dt * a
        x += dt * v
        a = accelerations(law, x, m, q)
        v += 0.5 * dt * a
    pos, which = np.concatenate(pos), np.concatenate(which)
    m, q = m[which], q[which]
    acc = accelerations(law, pos, m, q)
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return Snapshots(t(pos), t(m), t(q), t(acc))


# ----------------------------------------------------------------------------------------------
# the network


def mlp(d_in: int, d_out: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                         nn.Linear(width, d_out))


class EdgeModel(nn.Module):
    """The message from a sender to a receiver, from the pair's physical features."""

    def __init__(self, width: int, dim: int = 2):
        super().__init__()
        self.mlp = mlp(len(VARIABLES), dim, width)

    def forward(self, dx, dy, r, m, q):
        return self.mlp(torch.stack([dx, dy, r, m, q], -1))


class GNN(nn.Module):
    """Fully connected message passing over the 4 particles of each system."""

    def __init__(self, width: int):
        super().__init__()
        self.edge = EdgeModel(width)
        self.node = mlp(2 + 2, 2, width)
        self.register_buffer("src", torch.tensor(SRC))
        self.register_buffer("dst", torch.tensor(DST))

    def messages(self, pos, m, q):
        d = pos[:, self.src] - pos[:, self.dst]
        dx, dy = d[..., 0], d[..., 1]
        r = torch.sqrt(dx * dx + dy * dy)
        return self.edge(dx, dy, r, m[:, self.src], q[:, self.src])

    def forward(self, pos, m, q):
        msg = self.messages(pos, m, q)
        total = torch.zeros(pos.shape[0], pos.shape[1], msg.shape[-1], dtype=msg.dtype,
                            device=msg.device).index_add(1, self.dst, msg)
        return self.node(torch.cat([m[..., None], q[..., None], total], -1))


def train(net: GNN, data: Snapshots, cfg: Config) -> None:
    """Adam on the L1 error of the accelerations (as Cranmer et al.)."""
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(net.parameters(), cfg.lr / 3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps)
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(data), (128,), generator=g)
        loss = (net(*data.batch(idx)) - data.acc[idx]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


# ----------------------------------------------------------------------------------------------
# analysis


def edge_features(data: Snapshots) -> np.ndarray:
    """Every edge of every snapshot as a row ``(dx, dy, r, m, q)``, float64."""
    pos, m, q = data.pos.double().numpy(), data.m.double().numpy(), data.q.double().numpy()
    d = pos[:, SRC] - pos[:, DST]
    r = np.linalg.norm(d, axis=-1)
    return np.stack([d[..., 0], d[..., 1], r, m[:, SRC], q[:, SRC]], -1).reshape(-1, 5)


def far_edges(n: int, seed: int) -> np.ndarray:
    """Pairs far outside the training distribution: r up to 10 (training: 99% below 5),
    masses 0.25 to 4 (0.5 to 2), charges -2 to 2 (-1 to 1)."""
    rng = np.random.default_rng(seed)
    r = rng.uniform(0.5, 10.0, n)
    th = rng.uniform(0, 2 * math.pi, n)
    return np.stack([r * np.cos(th), r * np.sin(th), r, rng.uniform(0.25, 4.0, n),
                     rng.uniform(-2.0, 2.0, n)], -1)


def force_of(law: str, X: np.ndarray) -> np.ndarray:
    return pair_force(law, X[:, :2], X[:, 3], X[:, 4])


def messages_at(net: GNN, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        cols = [torch.tensor(X[:, i], dtype=torch.float32) for i in range(5)]
        return net.edge(*cols).double().numpy()


@dataclass
class Component:
    """One message component: its distilled equation and how it relates to the true force."""

    index: int
    std: float  # spread of the message over the data: its significance
    equation: str
    complexity: int
    coef: np.ndarray  # equation ~ coef[0]*f_x + coef[1]*f_y + coef[2]
    r2_message: float  # network message vs best linear combination of f, test data
    r2_equation: float  # distilled equation vs best linear combination of f, test data
    r2_message_far: float  # the same far outside the training distribution
    r2_equation_far: float
    variables: set[str] = field(default_factory=set)

    def is_law(self, expected: set[str]) -> bool:
        """The law itself, not an approximation of it: a linear combination of f to within
        0.01% of its variance, in range and far outside it, in the law's variables only (a
        message with a small second component fails when that component is missing)."""
        return min(self.r2_equation, self.r2_equation_far) > 1 - 1e-4 and self.variables <= expected

    def law(self) -> str:
        a, b, c = self.coef
        return f"{a:+.4f}*f_x {b:+.4f}*f_y {c:+.4f}"


@dataclass
class LawResult:
    law: str
    n_train: int
    network_l1: float
    hybrid_l1: float  # the GNN with the distilled equations in place of the edge MLP
    components: list[Component]
    recovered: bool
    seconds: dict[str, float]
    plot: dict = field(default_factory=dict)
    sym: nn.Module | None = None  # the GNN with the distilled edge model


def analyse(law: str, net: GNN, sym, test: Snapshots, cfg: Config) -> LawResult:
    X = edge_features(test)
    F = force_of(law, X)
    Xf = far_edges(20_000, cfg.seed + 1)
    Ff = force_of(law, Xf)
    msg, msg_far = messages_at(net, X), messages_at(net, Xf)
    expected = LAWS[law][2]
    comps = []
    fronts = sym.equations["edge"]
    for k in np.argsort(-msg.std(0)):  # most significant first
        eq = fronts[int(k)].equation
        coef, r2_eq = linear_fit(eq(X), F)
        _, r2_eq_far = linear_fit(eq(Xf), Ff)
        _, r2_msg = linear_fit(msg[:, k], F)
        _, r2_msg_far = linear_fit(msg_far[:, k], Ff)
        comps.append(Component(int(k), float(msg[:, k].std()), eq.text(4), eq.complexity, coef,
                               r2_msg, r2_eq, r2_msg_far, r2_eq_far,
                               {s.name for s in eq.expr.free_symbols}))
    with torch.no_grad():
        hybrid = float((sym(test.pos, test.m, test.q) - test.acc).abs().mean())
        net_l1 = float((net(test.pos, test.m, test.q) - test.acc).abs().mean())
    recovered = all(c.is_law(expected) for c in comps)
    # a ray through the pair space for the figure: fixed direction, sender m = q = 1
    r = np.linspace(0.3, 10.0, 300)
    ray = np.stack([r * math.cos(0.6), r * math.sin(0.6), r, np.ones_like(r), np.ones_like(r)],
                   -1)
    top = comps[0]
    plot = dict(msg=msg[:, top.index], fit=np.column_stack([F, np.ones(len(F))]) @ top.coef,
                r=r, ray_msg=messages_at(net, ray)[:, top.index],
                ray_eq=fronts[top.index].equation(ray),
                ray_true=np.column_stack([force_of(law, ray), np.ones(len(r))]) @ top.coef,
                r_range=np.percentile(X[:, 2], [1, 99]), r2=top.r2_message)
    return LawResult(law, 0, net_l1, hybrid, comps, recovered, {}, plot)


def message_noise(net: GNN, data: Snapshots) -> list[float]:
    """How far each message component is from the law, estimated without the law.

    The messages have no labels, but the accelerations do: take the network's error on held-out
    accelerations relative to their spread, and assume each message is as accurate relative to
    its own spread. ``selection="auto"`` needs this only to within a factor of a few: it keeps
    the equations within max(1.5 x best, 2 x noise) of the network and picks the sharpest drop
    in loss among them (without it, a law with a small second term loses to its first term).
    """
    with torch.no_grad():
        acc = net(data.pos, data.m, data.q)
        rel = float(((acc - data.acc) ** 2).mean() / data.acc.var())
        msg = net.messages(data.pos, data.m, data.q).reshape(-1, 2)
    return [rel * float(v) for v in msg.var(0)]


# ----------------------------------------------------------------------------------------------
# the study


def run_law(law: str, cfg: Config, progress: bool = False) -> LawResult:
    clock = Clock()
    with clock("simulate"):
        data = simulate(law, cfg.n_systems, cfg.seed)
        test = simulate(law, max(200, cfg.n_systems // 4), cfg.seed + 1000)
    torch.manual_seed(cfg.seed)
    net = GNN(cfg.width)
    with clock("train"), torch_threads(1):
        train(net, data, cfg)
    net.eval()
    engine = sfx.Operon(operators=("add", "sub", "mul", "div"), population_size=cfg.population,
                        generations=cfg.generations, max_length=cfg.max_length, max_rows=1000,
                        transforms=())
    sample = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))[:500]
    with clock("distill"):
        sym = sfx.compile(net, targets="edge", sample_inputs=[data.batch(sample)],
                          engine=engine, noise={"edge": message_noise(net, test)},
                          restarts=cfg.restarts, seed=cfg.seed, prune=False, progress=progress)
    with clock("analyse"):
        res = analyse(law, net, sym, test, cfg)
    res.n_train = len(data)
    res.seconds = dict(clock.stages)
    res.sym = sym
    return res


def run(cfg: Config = FULL, progress: bool = False) -> dict[str, LawResult]:
    return {law: run_law(law, cfg, progress) for law in cfg.laws}


def report(results: dict[str, LawResult]) -> str:
    lines = []
    for res in results.values():
        lines.append(f"\n== {res.law}: truth {TRUTH[res.law]}  "
                     f"({res.n_train} snapshots, {stages(res.seconds)})")
        lines.append(f"   acceleration L1 error on test systems: network {res.network_l1:.4f}, "
                     f"network with distilled messages {res.hybrid_l1:.4f}")
        for c in res.components:
            lines.append(f"   message y{c.index} (std {c.std:.3f}), complexity {c.complexity}: "
                         f"{c.equation}")
            lines.append(f"      = {c.law()}   R^2 of that fit {c.r2_equation:.6f} "
                         f"(far out of range {c.r2_equation_far:.6f})")
            lines.append(f"      network message vs f: R^2 {c.r2_message:.5f} "
                         f"(far out of range {c.r2_message_far:.4f})")
        lines.append(f"   recovered: {'yes' if res.recovered else 'NO'}")
    return "\n".join(lines)


def figure(results: dict[str, LawResult]):
    plt = pyplot()

    n = len(results)
    fig, axes = plt.subplots(2, n, figsize=(3.6 * n, 6.6), squeeze=False)
    for j, res in enumerate(results.values()):
        p, c = res.plot, res.components[0]
        ax = axes[0, j]
        ax.scatter(p["fit"], p["msg"], s=2, alpha=0.3, color="C0", rasterized=True)
        lo, hi = np.percentile(p["fit"], [0.5, 99.5])
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(f"{res.law}: message y{c.index} vs force")
        ax.set_xlabel(f"{c.coef[0]:.2f} f_x {c.coef[1]:+.2f} f_y {c.coef[2]:+.2f}")
        ax.set_ylabel("network message")
        ax.text(0.04, 0.92, f"R² = {p['r2']:.5f}", transform=ax.transAxes)
        ax = axes[1, j]
        ax.axvspan(*p["r_range"], color="0.92", label="training r (1-99%)")
        ax.plot(p["r"], p["ray_true"], color="k", lw=2.5, alpha=0.35, label="true law (fitted)")
        ax.plot(p["r"], p["ray_msg"], color="C0", label="network message")
        ax.plot(p["r"], p["ray_eq"], color="C3", ls="--", label="distilled equation")
        span = np.ptp(p["ray_true"])
        mid = np.median(p["ray_true"])
        ax.set_ylim(mid - 0.8 * span - 0.1, mid + 0.8 * span + 0.1)
        ax.set_xlabel("r (direction fixed, sender m = q = 1)")
        ax.set_ylabel(f"message y{c.index}")
        if j == 0:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("GNN messages are linear in the true pair force; the distilled equations are "
                 "the law, far outside the training range too", fontsize=10)
    return fig


if __name__ == "__main__":
    common_main(__doc__, FULL, QUICK, run, report, figure, "gnn_forces.png",
                ("laws", sorted(LAWS)))
