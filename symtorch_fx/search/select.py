"""Stage ``select``: a Pareto front -> the one equation that replaces the output.

Rules (``selection=`` in ``convert``/``compile``, or ``sym.select``):

* ``"auto"`` (default) -- the law, not the network's error. A trained network differs from the
  law it learned by a small, smooth error; past the law, longer equations fit that error and
  lower the loss only slowly. ``auto`` takes the simplest equation that no more complex one
  improves on by at least ``AUTO_RATE`` nats of log-loss per added node (averaged over the gap),
  or by a loss ratio of ``AUTO_GAIN`` or more whatever the added length (a law that needs many
  nodes spreads its gain thinly; fitting a network's error never buys a factor of 1000).
  When the network's error is known (``noise=``, or ``labels=`` in ``compile``), it takes the
  highest score among equations with loss <= max(1.5 x best, 2 x noise) instead. When it is
  only estimated (``front.info["network_error_estimate"]``, from the decomposition's tests),
  ``auto`` never returns an equation ``NEAR_BEST`` times worse than the best on the front while
  the best is within ``NEAR_NETWORK`` times that estimate: it chooses among the equations
  within ``NEAR_BEST`` of the best instead. Without either, it never returns an equation that
  leaves more than ``EXPLAINED_CHOSEN`` of the output's variance unexplained when the front
  holds one that leaves at most ``EXPLAINED_BEST``. Either way, a front whose best equation is far from
  the network's error is said in a warning;
* ``"best"`` -- PySR's rule: the highest score ``-dlog(loss)/dcomplexity`` among equations whose
  loss is at most 1.5x the best loss on the front;
* ``"accuracy"`` -- the lowest loss;
* ``"score"`` -- the highest score, whatever its loss;
* an ``int`` -- the most accurate equation of at most that complexity;
* a callable ``f(front) -> index or Equation``.

A list gives one rule per output. Equations that do not evaluate to finite values on every
recorded row are never chosen; when a rule would have picked one, the next choice is taken with a
warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from ..errors import SymTorchFXError
from ..expr.equations import Equation, ParetoFront, scores

RULES = ("auto", "best", "accuracy", "score")

#: nats of log-loss per added node that count as a real improvement for ``"auto"``
AUTO_RATE = 0.5
#: a loss ratio that counts as a real improvement for ``"auto"`` whatever the added length
AUTO_GAIN = 1000.0
#: ``auto`` with an estimate of the network's error: never an equation this many times worse
#: than the best on the front, when the best is within ``NEAR_NETWORK`` of the estimate
NEAR_BEST = 10.0
NEAR_NETWORK = 10.0
#: ``auto`` never returns an equation that leaves more than ``EXPLAINED_CHOSEN`` of the
#: variance unexplained when the front holds one that leaves at most ``EXPLAINED_BEST``
#: (a constant next to an equation of R^2 0.995: the rate rule alone can take it, when the
#: better equations are long)
EXPLAINED_BEST = 0.01
EXPLAINED_CHOSEN = 0.1
#: a best loss this many times the network's error (given or estimated) is said in a warning
FAR_FROM_NETWORK = 100.0


def _gain(a: Equation, b: Equation) -> float:
    """log(loss a / loss b): how much better ``b`` fits, in nats."""
    return math.log(max(a.loss, 1e-300)) - math.log(max(b.loss, 1e-300))


def _improves(a: Equation, b: Equation) -> bool:
    """Whether the more complex ``b`` improves on ``a`` by more than fitting an error can."""
    gain = _gain(a, b)
    return (gain >= AUTO_RATE * max(b.complexity - a.complexity, 1)
            or gain >= math.log(AUTO_GAIN))


def _auto(front: Sequence[Equation], idx: list[int], noise: float | None,
          estimate: float | None = None) -> int:
    if noise is not None and noise > 0:
        sc = scores(front)
        best = min(front[i].loss for i in idx)
        ok = [i for i in idx if front[i].loss <= max(1.5 * best, 2.0 * noise)] or idx
        return max(ok, key=lambda i: (sc[i], -i))
    best = min(front[i].loss for i in idx)
    if estimate is not None and estimate > 0 and best <= NEAR_NETWORK * estimate:
        idx = [i for i in idx if front[i].loss <= NEAR_BEST * best]
    # the simplest equation (the mean) has the largest loss: the output's variance, about
    worst = max(front[i].loss for i in idx)
    if worst > 0 and best <= EXPLAINED_BEST * worst:
        idx = [i for i in idx if front[i].loss <= EXPLAINED_CHOSEN * worst]
    for i in idx:
        if not any(_improves(front[i], front[j]) for j in idx if j > i):
            return i
    return idx[-1]


def _pick(front: Sequence[Equation], rule, allowed: list[bool], noise: float | None = None,
          estimate: float | None = None) -> int:
    idx = [i for i, ok in enumerate(allowed) if ok]
    if not idx:
        raise SymTorchFXError("no equation on the front evaluates to finite values")
    if rule == "auto":
        return _auto(front, idx, noise, estimate)
    if rule == "accuracy":
        return min(idx, key=lambda i: front[i].loss)
    sc = scores(front)
    if rule == "score":
        return max(idx, key=lambda i: (sc[i], -i))
    if rule == "best":
        best = min(front[i].loss for i in idx)
        ok = [i for i in idx if front[i].loss <= 1.5 * best] or idx
        return max(ok, key=lambda i: (sc[i], -i))
    if isinstance(rule, bool):
        raise SymTorchFXError(f"selection {rule!r} is not a rule")
    if isinstance(rule, int):
        within = [i for i in idx if front[i].complexity <= rule]
        if not within:
            raise SymTorchFXError(
                f"no equation of complexity <= {rule}; the front has complexities "
                f"{[e.complexity for e in front]}"
            )
        return min(within, key=lambda i: front[i].loss)
    if callable(rule):
        got = rule(front)
        if isinstance(got, Equation):
            for i, e in enumerate(front):
                if e is got:
                    return i
            raise SymTorchFXError("the selection callable returned an equation not on the front")
        if isinstance(got, int) and -len(front) <= got < len(front):
            return got % len(front)
        raise SymTorchFXError(
            f"the selection callable returned {got!r}; return an index into the front or one "
            "of its Equations"
        )
    raise SymTorchFXError(
        f"unknown selection {rule!r}; use one of {', '.join(RULES)}, a complexity (int), a "
        "list with one of these per output, or a callable front -> index"
    )


def pick(equations: Sequence[Equation], rule, noise: float | None = None,
         estimate: float | None = None) -> int:
    """The index ``rule`` chooses among the finite ones of ``equations`` (simplest first), with
    no warning and nothing recorded: for a front that replaces nothing (a part of a decomposed
    output). ``apply`` is the same choice for a region's front."""
    return _pick(equations, rule, [e.finite for e in equations], noise, estimate)


def rule_name(rule) -> str:
    if isinstance(rule, str):
        return rule
    if isinstance(rule, int):
        return f"complexity <= {rule}"
    return getattr(rule, "__name__", "callable")


def per_output(rule, n: int) -> list:
    """Expand ``rule`` to one rule per output (a list must have one entry per output)."""
    if isinstance(rule, (list, tuple)):
        if len(rule) != n:
            raise SymTorchFXError(
                f"{len(rule)} selection rules given for {n} outputs; give one per output"
            )
        return list(rule)
    return [rule] * n


def apply(front: ParetoFront, rule, noise: float | None = None, warn_far: bool = True) -> None:
    """Choose on ``front`` by ``rule``, warning when a non-finite equation had to be skipped.

    ``noise``: the network's error (MSE) on this output, when known; used by ``"auto"``.
    ``warn_far``: warn when the best equation is far from that error (not for a floor that is
    only float rounding, as SLIME's).
    """
    if noise is None:
        noise = front.info.get("noise")
    estimate = front.info.get("network_error_estimate")
    unrestricted = _pick(front.equations, rule, [True] * len(front), noise, estimate)
    chosen = pick(front.equations, rule, noise, estimate)
    reference = noise if noise else estimate
    finite = [e.loss for e in front if e.finite]
    if warn_far and reference and finite and min(finite) > FAR_FROM_NETWORK * reference:
        warnings.warn(
            f"{front.region} / {front.output}: the best equation found has loss "
            f"{min(finite):.3g}, {min(finite) / reference:.0f} times the network's error "
            f"({'given' if noise else 'estimated'}: {reference:.3g}); the front holds nothing "
            "near what the network computes. Search longer (Operon(generations=...), more "
            "restarts) or with other operators", stacklevel=3)
    if chosen != unrestricted:
        bad = front[unrestricted]
        warnings.warn(
            f"{front.region} / {front.output}: the equation {bad.text(4)!r} (complexity "
            f"{bad.complexity}) gives non-finite values on recorded inputs; using "
            f"{front[chosen].text(4)!r} (complexity {front[chosen].complexity}) instead",
            stacklevel=3,
        )
    front.chosen = chosen
    front.rule = rule_name(rule)
    if noise is not None:
        front.info["noise"] = noise

