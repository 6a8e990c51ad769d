"""The Engine protocol: what a symbolic-regression backend must provide.

An engine is a small, picklable settings object (sklearn style: every setting in ``__init__``,
nothing fitted on it) with one method, ``search``, that runs in a worker and returns candidate
equations as text in the restricted grammar (see ``expr.grammar``). symtorch_fx parses the text and
recomputes complexity and loss itself, so fronts from different engines compare.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Engine(Protocol):
    """What ``convert(engine=...)`` accepts: ``sfx.Operon``, ``sfx.PySR``, or your own class.

    Required: ``name`` (shown in progress bars and reports), ``parallel_jobs`` (whether
    independent searches may run at once in worker processes or threads), ``check()`` and
    ``search(X, y, variables, seed, weights=None)``, which fits ``y ~ f(X)`` and returns
    candidate equations as text in the equation grammar. An engine must be picklable to run in
    worker processes: settings in ``__init__``, nothing fitted on it.

    Optional, read when present: ``restarts``, the independent searches per output that
    ``convert`` runs and merges unless its ``restarts=`` says otherwise (default 1);
    ``transforms``, the transforms of the output searched beside them, one search per entry
    (default none; see ``search.transforms.TRANSFORMS``); ``for_transform(t)``, the engine to
    use for a search through transform ``t`` (default: the engine, its vocabulary narrowed by
    ``with_operators(t.operators)`` when it has that method).

    Example::

        class Fixed:
            name, parallel_jobs = "fixed", False
            def check(self): pass
            def search(self, X, y, variables, seed, weights=None):
                return ["x0*x1 + 0.5"]

        sym = sfx.compile(model, ["mlp"], batches, engine=Fixed())
    """

    #: short name shown in progress bars and reports
    name: str
    #: whether independent jobs may run concurrently in worker processes/threads
    parallel_jobs: bool

    def check(self) -> None:
        """Raise :class:`EngineUnavailableError` (saying how to fix it) if the engine cannot run."""

    def search(
        self,
        X: np.ndarray,
        y: np.ndarray,
        variables: list[str],
        seed: int,
        weights: np.ndarray | None = None,
    ) -> list[str]:
        """Fit ``y ~ f(X)``; return candidate equations over ``variables`` (grammar text)."""


def default_restarts(engine) -> int:
    """The engine's own number of searches per output (1 for engines that do not say)."""
    return getattr(engine, "restarts", 1)


def default_transforms(engine):
    """The engine's own transforms of the output to search as well, as it gives them (a list
    of names or ``{name: searches}``; none for engines that do not say)."""
    return getattr(engine, "transforms", ())


def settings_repr(obj) -> str:
    """``Name(k=v, ...)`` showing only settings that differ from their defaults."""
    import inspect

    sig = inspect.signature(type(obj).__init__)
    parts = []
    for name, p in sig.parameters.items():
        if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        v = getattr(obj, name, p.default)
        if p.default is p.empty or v != p.default:
            parts.append(f"{name}={v!r}")
    extra = getattr(obj, "kwargs", None)
    if extra:
        parts.extend(f"{k}={v!r}" for k, v in extra.items())
    return f"{type(obj).__name__}({', '.join(parts)})"


def resample_by_weight(X, y, weights, seed: int, n: int | None = None):
    """Rows drawn with probability proportional to ``weights`` (for engines without weights).

    Least squares on such a sample estimates the weighted least-squares loss without bias.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(y),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative, one per row, not all zero")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y), size=n or len(y), replace=True, p=w / w.sum())
    return X[idx], y[idx]
