"""Stage ``reduce``: wide regions -> a few input and output components to distill.

A transformer MLP maps 640 features to 640. Distilling 640 equations of 640 variables is
hopeless, so the recorded rows are projected first: inputs onto ``a`` components, outputs onto
``b``. Equations are found between the components, and the symbolic node computes
``y = out_mean + f((x - in_mean) @ in_basis) @ out_basis.T``. The projections are matmuls and
the equations are fused.

* :class:`PCA` -- the directions of largest variance of the inputs and of the outputs;
* :class:`LearnedProjection` -- input directions that predict the outputs and output
  directions that hold them, learned through a small bottleneck network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import SymTorchFXError


@dataclass
class Projection:
    """A fitted reduction. Bases have orthonormal columns.

    The symbolic node computes ``y = out_mean + f((x - in_mean) @ in_basis) @ out_basis.T``,
    ``f`` the equations distilled between the components.

    Attributes:
        in_mean: the mean input row, ``(F,)``.
        in_basis: the input directions, ``(F, a)``.
        out_mean: the mean output row, ``(K,)``.
        out_basis: the output directions, ``(K, b)``.
        in_explained: the fraction of the inputs' variance inside the span of ``in_basis``.
        out_explained: the fraction of the outputs' variance inside the span of ``out_basis``.
        method: ``"pca"`` or ``"learned"``.
    """

    in_mean: np.ndarray  # (F,)
    in_basis: np.ndarray  # (F, a)
    out_mean: np.ndarray  # (K,)
    out_basis: np.ndarray  # (K, b)
    in_explained: float  # fraction of input variance inside span(in_basis)
    out_explained: float  # fraction of output variance inside span(out_basis)
    method: str = "pca"

    @property
    def n_inputs(self) -> int:
        """The number of input components (``a``)."""
        return self.in_basis.shape[1]

    @property
    def n_outputs(self) -> int:
        """The number of output components (``b``)."""
        return self.out_basis.shape[1]

    def inputs(self, X: np.ndarray) -> np.ndarray:
        """Project input rows ``(n, F)`` onto the input components, ``(n, a)``."""
        return (X - self.in_mean) @ self.in_basis

    def targets(self, Y: np.ndarray) -> np.ndarray:
        """Project output rows ``(n, K)`` onto the output components, ``(n, b)``: what the
        equations are fitted to."""
        return (Y - self.out_mean) @ self.out_basis

    def outputs(self, W: np.ndarray) -> np.ndarray:
        """Map output components ``(n, b)`` back to output rows ``(n, K)``."""
        return W @ self.out_basis.T + self.out_mean

    def describe(self) -> str:
        """One line: the method, the widths before and after, and the variance kept."""
        F, a = self.in_basis.shape
        K, b = self.out_basis.shape
        return (f"{self.method}: inputs {F} -> {a} components ({100 * self.in_explained:.1f}% of "
                f"variance), outputs {K} -> {b} components ({100 * self.out_explained:.1f}%)")

    def to_json(self) -> dict:
        """The projection as plain JSON data (lists of floats), as ``sfx.save`` writes it."""
        return {"method": self.method, "in_mean": self.in_mean.tolist(),
                "in_basis": self.in_basis.tolist(), "out_mean": self.out_mean.tolist(),
                "out_basis": self.out_basis.tolist(), "in_explained": self.in_explained,
                "out_explained": self.out_explained}

    @classmethod
    def from_json(cls, d: dict) -> Projection:
        """The projection ``to_json`` wrote, checked: finite numbers, matrices for the bases,
        means that fit them; :class:`SymTorchFXError` otherwise."""
        arrays = {}
        for k in ("in_mean", "in_basis", "out_mean", "out_basis"):
            a = np.asarray(d[k], dtype=np.float64)
            if not np.all(np.isfinite(a)):
                raise SymTorchFXError(f"projection {k} holds non-finite values")
            arrays[k] = a
        if arrays["in_basis"].ndim != 2 or arrays["out_basis"].ndim != 2:
            raise SymTorchFXError("projection bases must be matrices")
        if (arrays["in_mean"].shape != (arrays["in_basis"].shape[0],)
                or arrays["out_mean"].shape != (arrays["out_basis"].shape[0],)):
            raise SymTorchFXError("projection means do not fit their bases")
        return cls(**arrays, in_explained=float(d["in_explained"]),
                   out_explained=float(d["out_explained"]), method=str(d.get("method", "pca")))


def _check(n: int | None, width: int, side: str, region: str) -> int:
    if n is None:
        return width
    if not isinstance(n, int) or n < 1:
        raise SymTorchFXError(f"{side}= must be a positive number of components, got {n!r}")
    if n > width:
        raise SymTorchFXError(
            f"target {region!r}: asked for {n} {side} components, but it has only {width} "
            f"{side[:-1]} features; use at most {width} (or None to keep them all)"
        )
    return n


def _explained(D: np.ndarray, basis: np.ndarray) -> float:
    total = float((D**2).sum())
    if total == 0.0:
        return 1.0
    return float(((D @ basis) ** 2).sum()) / total


def _pca_basis(D: np.ndarray, n: int) -> np.ndarray:
    if n == D.shape[1]:
        return np.eye(n)
    _, _, vt = np.linalg.svd(D, full_matrices=False)
    basis = vt[:n].T
    # a deterministic sign for each component: its largest loading is positive
    signs = np.sign(basis[np.abs(basis).argmax(0), np.arange(n)])
    return basis * np.where(signs == 0, 1.0, signs)


class PCA:
    """Principal components of the recorded inputs (``inputs=a``) and outputs (``outputs=b``).

    ``None`` keeps that side as it is (the identity).

    Args:
        inputs: the number of input components (``None``: every input feature).
        outputs: the number of output components (``None``: every output feature).
    """

    def __init__(self, inputs: int | None = None, outputs: int | None = None):
        for n, side in ((inputs, "inputs"), (outputs, "outputs")):
            if n is not None and (not isinstance(n, int) or n < 1):
                raise SymTorchFXError(
                    f"PCA({side}={n!r}): give a positive number of components or None")
        self.inputs = inputs
        self.outputs = outputs

    def __repr__(self) -> str:
        return f"PCA(inputs={self.inputs}, outputs={self.outputs})"

    def fit(self, X: np.ndarray, Y: np.ndarray, region: str = "") -> Projection:
        """Fit the projection to recorded input rows ``X`` ``(n, F)`` and output rows ``Y``
        ``(n, K)`` of ``region`` (named in errors)."""
        a = _check(self.inputs, X.shape[1], "inputs", region)
        b = _check(self.outputs, Y.shape[1], "outputs", region)
        mx, my = X.mean(0), Y.mean(0)
        Dx, Dy = X - mx, Y - my
        bx, by = _pca_basis(Dx, a), _pca_basis(Dy, b)
        return Projection(mx, bx, my, by, _explained(Dx, bx), _explained(Dy, by), "pca")


class LearnedProjection:
    """Input and output directions learned through a bottleneck network ``y ~ U g(V x)``.

    Unlike PCA, the input directions are chosen for how well they *predict* the outputs, not
    for their own variance. ``g`` is a small MLP that is thrown away after fitting: only ``V``
    and ``U`` are kept (orthonormalized), and the equations are distilled between them.

    Args:
        inputs: the number of input directions (``V`` has this many rows).
        outputs: the number of output directions (``U`` has this many columns).
        hidden: the width of ``g``'s hidden layer.
        steps: Adam steps (minibatches of up to 512 rows), starting from the PCA directions.
        lr: Adam's learning rate.
        seed: seeds the minibatches.
    """

    def __init__(self, inputs: int, outputs: int, hidden: int = 64, steps: int = 1000,
                 lr: float = 3e-3, seed: int = 0):
        for n, side in ((inputs, "inputs"), (outputs, "outputs")):
            if not isinstance(n, int) or n < 1:
                raise SymTorchFXError(
                    f"LearnedProjection({side}={n!r}): give a positive number of components")
        self.inputs, self.outputs = inputs, outputs
        self.hidden, self.steps, self.lr, self.seed = hidden, steps, lr, seed

    def __repr__(self) -> str:
        return f"LearnedProjection(inputs={self.inputs}, outputs={self.outputs})"

    def fit(self, X: np.ndarray, Y: np.ndarray, region: str = "") -> Projection:
        """Fit the projection to recorded input rows ``X`` ``(n, F)`` and output rows ``Y``
        ``(n, K)`` of ``region`` (named in errors)."""
        a = _check(self.inputs, X.shape[1], "inputs", region)
        b = _check(self.outputs, Y.shape[1], "outputs", region)
        mx, my = X.mean(0), Y.mean(0)
        sx = X.std(0).mean() or 1.0
        sy = Y.std(0).mean() or 1.0
        g = torch.Generator().manual_seed(self.seed)
        x = torch.as_tensor((X - mx) / sx, dtype=torch.float32)
        y = torch.as_tensor((Y - my) / sy, dtype=torch.float32)
        V = torch.nn.Linear(X.shape[1], a, bias=False)
        U = torch.nn.Linear(b, Y.shape[1], bias=False)
        net = torch.nn.Sequential(torch.nn.Linear(a, self.hidden), torch.nn.SiLU(),
                                  torch.nn.Linear(self.hidden, b))
        with torch.no_grad():  # start from PCA: the learned directions only have to improve it
            V.weight.copy_(torch.as_tensor(_pca_basis(X - mx, a).T, dtype=torch.float32))
            U.weight.copy_(torch.as_tensor(_pca_basis(Y - my, b), dtype=torch.float32))
        params = [*V.parameters(), *U.parameters(), *net.parameters()]
        opt = torch.optim.Adam(params, self.lr)
        n = len(x)
        with torch.enable_grad():
            for _ in range(self.steps):
                idx = torch.randint(0, n, (min(n, 512),), generator=g)
                loss = ((U(net(V(x[idx]))) - y[idx]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        bx = np.linalg.qr(V.weight.detach().double().numpy().T)[0]
        by = np.linalg.qr(U.weight.detach().double().numpy())[0]
        return Projection(mx, bx, my, by, _explained(X - mx, bx), _explained(Y - my, by),
                          "learned")


def fit_reduction(reduce, X: np.ndarray, Y: np.ndarray, region: str) -> Projection | None:
    if reduce is None:
        return None
    if isinstance(reduce, dict):
        return fit_reduction(reduce.get(region), X, Y, region)
    if not hasattr(reduce, "fit"):
        raise SymTorchFXError(
            f"reduce={reduce!r} is not a reduction; use sfx.PCA(inputs=.., outputs=..), "
            "sfx.LearnedProjection(...), or a dict {target: reduction}"
        )
    return reduce.fit(X, Y, region)
