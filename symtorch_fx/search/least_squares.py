"""One least-squares refit of an equation's constants, used by pruning and by SLIME.

Levenberg-Marquardt with Marquardt's scaling (the damping is proportional to the diagonal of
``J^T J``, so constants of any magnitude move alike). Callers give the residuals and their
Jacobian as two functions; a caller that computes both at once memoizes (``SLIME`` does: one
generated torch function gives the equation and its exact derivatives), and a caller with a
finite-difference Jacobian (pruning) pays for it only at accepted steps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: the damping's factor after a rejected step, and its divisor after an accepted one
_UP, _DOWN = 4.0, 3.0
#: the relative gain below which an accepted step ends the fit
_TOL = 1e-10


def squared_norm(r: np.ndarray) -> float:
    """``||r||^2``, or ``inf`` where it is not finite."""
    with np.errstate(all="ignore"):
        v = float(np.dot(r, r)) if np.all(np.isfinite(r)) else np.inf
    return v if np.isfinite(v) else np.inf


def levenberg_marquardt(
    residual: Callable[[np.ndarray], np.ndarray],
    jacobian: Callable[[np.ndarray], np.ndarray],
    c: np.ndarray,
    max_iter: int = 40,
) -> tuple[np.ndarray, float]:
    """Minimize ``||residual(c)||^2`` from ``c``: (the best constants found, their loss).

    ``jacobian(c)`` is ``d residual / d c`` (rows, len(c)). A start whose loss is not finite is
    returned as it is, with loss ``inf``; the loss never rises, and a Jacobian that is not finite
    ends the fit where it stands.
    """
    c = np.array(c, np.float64)
    r = residual(c)
    loss = squared_norm(r)
    if not len(c) or not np.isfinite(loss):
        return c, loss
    lam = 1e-3
    for _ in range(max_iter):
        with np.errstate(all="ignore"):
            J = jacobian(c)
        if not np.all(np.isfinite(J)):
            break
        g, H = J.T @ r, J.T @ J
        damp = np.diag(H).copy() + 1e-12 * (np.trace(H) / len(H) + 1e-300)
        improved = False
        while lam < 1e10:
            try:
                step = np.linalg.solve(H + lam * np.diag(damp), -g)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            trial = c + step
            r2 = residual(trial)
            l2 = squared_norm(r2)
            if l2 < loss:
                improved = loss - l2 > _TOL * loss
                c, r, loss, lam = trial, r2, l2, max(lam / _DOWN, 1e-12)
                break
            lam *= _UP
        if not improved:
            break
    return c, loss
