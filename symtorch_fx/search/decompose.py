"""The network as an oracle: split a law of many variables into laws of few (AI Feynman's
separability tests, on the trained target itself).

A search on raw rows of 4-9 variables often settles for a look-alike. But we distil a network,
which can be asked for its output anywhere. If ``f(a, b) = g(a) + h(b)`` then for any two rows
``f(a1, b1) + f(a2, b2) - f(a1, b2) - f(a2, b1) = 0``; if ``f = g(a) h(b)``, then
``f(a1, b1) f(a2, b2) - f(a1, b2) f(a2, b1) = 0``. :func:`plan` tests every split of the
inputs on random pairs of recorded rows, takes the one that holds best (within ``tol`` of the
output's spread), and recurses into each part while the parts still split. A part that does not
vary at all is a constant: its inputs are irrelevant to that part and are not searched.

The two parts may share inputs ``c`` (``f = g(a, c) + h(b, c)``: the law
``sin(1.3 x0 + x1) exp(-x2^2/2) + x0 x3`` is such a sum, over ``{x0, x1, x2}`` and
``{x0, x3}``); the tests then pair rows with the same ``c``. Each part is a function of its own
inputs, with every other input held at an anchor row ``x*``: for a sum,
``g(a, c) = f(a, b*, c)`` and ``h(b, c) = f(a*, b, c) - f(a*, b*, c)``; for a product,
``g(a, c) = f(a, b*, c)`` and ``h(b, c) = f(a*, b, c) / f(a*, b*, c)``. Their sum (product) is
``f`` wherever ``f`` separates. A part's values come from its parent's (:meth:`Part.values`),
so a leaf's rows cost a few batched calls of the oracle. Each leaf is
searched on its own (fewer variables, shorter forms) by the same jobs as any search, and the
leaves' equations are put back together (:func:`compose`) into candidates that join the
output's front and are scored against the network like every other equation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: splits tested per node at most
MAX_SPLITS = 2048
#: pairs of rows per separability test
PAIRS = 256
#: a part whose values spread less than this (relative to the output's) is a constant
CONSTANT = 1e-3
#: inputs two parts may share: at most this many (and never all but one)
MAX_SHARED = 1


#: a symmetry holds when moving both units leaves the output within ``tol`` of its spread and
#: moves it less than this fraction of what moving either unit alone does
SYMMETRY_RATIO = 0.1
#: rows per symmetry test
SYMMETRY_ROWS = 512
#: the symmetries tested: ``f`` depends on ``u - v``, ``u + v``, ``u * v``, ``u / v`` or
#: ``sqrt(u^2 + v^2)`` (a rotation of the pair: a distance, a speed from its components) only
SYMMETRY_OPS = ("-", "+", "*", "/", "hypot")
#: a rotation test tries this many angles per row for one that keeps the pair in its ranges
ROTATION_TRIES = 16
#: rows a test moves by less than this are left out of it: a shift of 5% of the larger range,
#: a scaling by e^0.05, a turn of 0.05 rad
MIN_STEP = 0.05


@dataclass(frozen=True, eq=False)
class Unit:
    """A variable of the search after symmetry reduction: one input (``op`` None), or
    ``left op right`` of two units (``op`` one of ``SYMMETRY_OPS``). A test or a row sets it to
    a given value through its leftmost input (:meth:`set_to`)."""

    op: str | None = None
    index: int = -1
    left: Unit | None = None
    right: Unit | None = None

    @property
    def members(self) -> tuple[int, ...]:
        if self.op is None:
            return (self.index,)
        return tuple(sorted(self.left.members + self.right.members))

    def value(self, X: np.ndarray) -> np.ndarray:
        if self.op is None:
            return X[:, self.index]
        a, b = self.left.value(X), self.right.value(X)
        with np.errstate(all="ignore"):
            if self.op == "hypot":
                return np.hypot(a, b)
            return {"-": a - b, "+": a + b, "*": a * b, "/": a / b}[self.op]

    def text(self, names: list[str]) -> str:
        if self.op is None:
            return names[self.index]
        if self.op == "hypot":  # a rotation of rotations is one norm: sqrt(a^2 + b^2 + c^2)
            parts = sorted(self._components(), key=lambda w: w.members)
            return f"sqrt({' + '.join(f'{w.text(names)}^2' for w in parts)})"
        return f"({self.left.text(names)} {self.op} {self.right.text(names)})"

    def _components(self) -> list[Unit]:
        if self.op != "hypot":
            return [self]
        return self.left._components() + self.right._components()

    def set_to(self, X: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``X`` with its leftmost input moved so that this unit takes the values ``target``
        (NaN on rows where no value does: a distance shorter than its other component)."""
        if self.op is None:
            out = X.copy()
            out[:, self.index] = target
            return out
        b = self.right.value(X)
        with np.errstate(all="ignore"):
            if self.op == "hypot":
                a = self.left.value(X)
                side = np.where(a < 0, -1.0, 1.0)
                # a norm is never negative: no component gives it a value below 0
                want = np.where(target >= 0, side * np.sqrt(np.square(target) - np.square(b)),
                                np.nan)
            else:
                want = {"-": target + b, "+": target - b, "*": target / b,
                        "/": target * b}[self.op]
        return self.left.set_to(X, want)


def _moves(op: str, u: np.ndarray, v: np.ndarray, ur, vr, rng) -> tuple | None:
    """New values ``(u', v')`` of two units for the test of ``op``, drawn per row inside the
    units' recorded ranges ``ur``/``vr``; None when the test does not apply (a ratio or
    product of units that change sign or touch 0). Additive tests move ``u + s, v -+ s``,
    multiplicative ones ``u e^s, v e^(-+s)``."""
    if op == "hypot":
        return _rotations(u, v, ur, vr, rng)
    if op in ("*", "/"):
        if not (ur[0] * ur[1] > 0 and vr[0] * vr[1] > 0):
            return None
        su, sv = np.sign(ur[0]), np.sign(vr[0])
        u, v = np.log(np.abs(u)), np.log(np.abs(v))
        ur = tuple(sorted(np.log(np.abs(ur))))
        vr = tuple(sorted(np.log(np.abs(vr))))
    same = op in ("-", "/")  # f(u - v), f(u / v): both move the same way
    lo = np.maximum(ur[0] - u, (vr[0] - v) if same else (v - vr[1]))
    hi = np.minimum(ur[1] - u, (vr[1] - v) if same else (v - vr[0]))
    step = lo + (hi - lo) * rng.random(len(u))
    nu, nv = u + step, (v + step) if same else (v - step)
    if op in ("*", "/"):
        return su * np.exp(nu), sv * np.exp(nv), step
    return nu, nv, step


def _rotations(u, v, ur, vr, rng) -> tuple:
    """``(u', v')`` of the same ``sqrt(u^2 + v^2)``, turned by a random angle that keeps both in
    their ranges (the first of ``ROTATION_TRIES`` that does; rows with none keep a turn of 0,
    which the test leaves out), and the angle turned."""
    radius, angle = np.hypot(u, v), np.arctan2(v, u)
    turn, new_u, new_v = np.zeros(len(u)), np.array(u, float), np.array(v, float)
    for _ in range(ROTATION_TRIES):
        trial = rng.uniform(-np.pi, np.pi, len(u))
        nu, nv = radius * np.cos(angle + trial), radius * np.sin(angle + trial)
        fits = ((turn == 0) & (np.abs(trial) > MIN_STEP) & (nu >= ur[0]) & (nu <= ur[1])
                & (nv >= vr[0]) & (nv <= vr[1]))
        turn, new_u, new_v = (np.where(fits, a, b) for a, b in ((trial, turn), (nu, new_u),
                                                                 (nv, new_v)))
    return new_u, new_v, turn


def symmetries(oracle, X: np.ndarray, tol: float, spread: float, seed: int = 0,
               ) -> tuple[list[Unit], float | None]:
    """The inputs of ``oracle`` reduced by the symmetries it has (AI Feynman's symmetry tests):
    while some pair of units ``u, v`` can be moved together, by ``u - v``, ``u + v``, ``u v``,
    ``u / v`` or ``sqrt(u^2 + v^2)`` held fixed, without moving the output (within ``tol`` of
    ``spread``, and ``SYMMETRY_RATIO`` of what moving either alone does), the pair becomes one
    unit. Returns the units (one per input when nothing holds) and the RMS of the accepted
    tests' residuals (two evaluations of the network: about 1.4 times its error), or None."""
    rng = np.random.default_rng(seed)
    X = np.asarray(X, np.float64)
    lo, hi = X.min(axis=0), X.max(axis=0)
    rows = X[rng.permutation(len(X))[: min(len(X), SYMMETRY_ROWS)]]
    base = oracle(rows)
    if not np.all(np.isfinite(base)):
        return [Unit(index=i) for i in range(X.shape[1])], None
    units = [Unit(index=i) for i in range(X.shape[1])]
    residuals = []
    while len(units) > 1:
        best = None
        values = [u.value(X) for u in units]  # each unit's values once per round
        ranges = [(float(np.min(v)), float(np.max(v))) for v in values]
        for (i, u), (j, v) in itertools.combinations(enumerate(units), 2):
            for op in SYMMETRY_OPS:
                got = _symmetry_test(oracle, rows, base, u, v, op, ranges[i], ranges[j],
                                     lo, hi, rng)
                if got is None:
                    continue
                r, alone = got
                if r < tol * spread and r < SYMMETRY_RATIO * alone:
                    key = r / alone
                    if best is None or key < best[0]:
                        best = (key, r, i, j, op)
        if best is None:
            break
        _, r, i, j, op = best
        residuals.append(r)
        left, right = units[i], units[j]
        if op in ("+", "*", "hypot"):  # commutative: written in the inputs' order
            left, right = sorted((left, right), key=lambda w: w.members)
        merged = Unit(op, left=left, right=right)
        units = [w for k, w in enumerate(units) if k not in (i, j)] + [merged]
    units.sort(key=lambda w: w.members)
    est = float(np.sqrt(np.mean(np.square(residuals)))) if residuals else None
    return units, est


def _symmetry_test(oracle, rows, base, u: Unit, v: Unit, op, ur, vr, lo, hi, rng):
    """(residual of moving both, the smaller change from moving one alone), or None."""
    uv, vv = u.value(rows), v.value(rows)
    moved = _moves(op, uv, vv, ur, vr, rng)
    if moved is None:
        return None
    nu, nv, step = moved
    both = u.set_to(v.set_to(rows, nv), nu)
    only_u, only_v = u.set_to(rows, nu), v.set_to(rows, nv)
    span = max(ur[1] - ur[0], vr[1] - vr[0]) if op in ("-", "+") else 1.0
    ok = np.abs(step) > MIN_STEP * span
    for Z in (both, only_u, only_v):
        with np.errstate(invalid="ignore"):
            ok &= np.all(np.isfinite(Z), axis=1) & np.all((Z >= lo) & (Z <= hi), axis=1)
    if ok.sum() < 32:
        return None
    n = int(ok.sum())
    vals = oracle(np.concatenate([both[ok], only_u[ok], only_v[ok]]))
    if not np.all(np.isfinite(vals)):
        return None
    b = base[ok]
    r = float(np.sqrt(np.mean((vals[:n] - b) ** 2)))
    alone = min(float(np.sqrt(np.mean((vals[n:2 * n] - b) ** 2))),
                float(np.sqrt(np.mean((vals[2 * n:] - b) ** 2))))
    if alone <= 0:
        return None
    return r, alone


@dataclass
class Part:
    """A node of a decomposition over inputs ``inputs``: ``left op right`` when it splits
    (``op``: ``"+"`` or ``"*"``), a leaf otherwise; ``constant`` (its value) when it does not
    vary. ``side`` says which child of ``parent`` it is and ``other`` the inputs of the
    parent's other child that it does not share (held at the anchor)."""

    inputs: tuple[int, ...]
    oracle: Callable[[np.ndarray], np.ndarray] | None = None
    anchor: np.ndarray | None = None
    parent: Part | None = None
    side: str = ""
    other: tuple[int, ...] = ()
    op: str | None = None
    children: list[Part] = field(default_factory=list)
    constant: float | None = None
    #: a product with an offset: ``shift + left * right`` (a part of a sum keeps the constant
    #: of the other side; the test finds it, as the value that makes the product separate)
    shift: float = 0.0
    #: (on the root) the parts were not searched: the output's own searches reached the network
    skipped: bool = False
    #: the RMS of the accepted split's test (in the output's units): four evaluations of the
    #: network, so about twice its error where the law separates exactly
    residual: float | None = None
    #: the variables of the part: its inputs, grouped by the symmetries found (:class:`Unit`)
    units: tuple[Unit, ...] = ()
    #: (on the root) the RMS of the accepted symmetry tests' residuals (two evaluations)
    symmetry_residual: float | None = None
    #: what one unit of the part's values is worth in the output's units (:func:`_split`)
    scale: float = 1.0

    def values(self, rows: np.ndarray) -> np.ndarray:
        """The part on full-width ``rows`` (only its own inputs are read)."""
        if self.parent is None:
            return self.oracle(rows)
        p, anchor = self.parent, self.parent_anchor
        held = rows.copy()
        held[:, list(self.other)] = anchor[list(self.other)]
        v = p.values(held)
        if p.op == "*":
            v = v - p.shift
        if self.side == "left":
            return v
        base = held.copy()
        mine = [i for i in self.inputs if i not in p.children[0].inputs]
        base[:, mine] = anchor[mine]
        v0 = p.values(base)
        return v - v0 if p.op == "+" else v / (v0 - p.shift)

    @property
    def parent_anchor(self) -> np.ndarray:
        node = self
        while node.parent is not None:
            node = node.parent
        return node.anchor

    def leaves(self) -> list[Part]:
        if self.constant is not None:
            return []
        if not self.children:
            return [self]
        return [leaf for c in self.children for leaf in c.leaves()]

    def describe(self, names: list[str]) -> str:
        if self.constant is not None:
            return f"{self.constant:.4g}"
        if not self.children:
            return "f(" + ", ".join(_bare(u.text(names)) for u in self.units) + ")"
        unit = 0.0 if self.op == "+" else 1.0  # a part the output ignores: left out
        kept = [c for c in self.children
                if c.constant is None or abs(c.constant - unit) > 1e-9 * (1 + abs(unit))]
        shift = " + c" if self.op == "*" and self.shift else ""
        if len(kept) == 1:
            return kept[0].describe(names) + shift
        a, b = (c.describe(names) for c in kept)
        return f"({a} {self.op} {b}{shift})"

    @property
    def splits(self) -> bool:
        return bool(self.children)


def _bare(text: str) -> str:
    return text[1:-1] if text.startswith("(") and text.endswith(")") else text


def _splits(groups: list[tuple[int, ...]]):
    """Splits of the inputs, in ``groups`` that stay together (the units), into (A, B, C) of
    inputs: A and B non-empty, C shared (at most ``MAX_SHARED`` groups), fewest shared first;
    A holds the first group not in C."""
    count = 0
    flat = lambda gs: tuple(sorted(i for g in gs for i in g))  # noqa: E731
    for n_shared in range(0, MAX_SHARED + 1):
        if len(groups) - n_shared < 2:
            break
        for C in itertools.combinations(groups, n_shared):
            rest = [g for g in groups if g not in C]
            for r in range(0, len(rest) - 1):
                for extra in itertools.combinations(rest[1:], r):
                    A = (rest[0], *extra)
                    B = [g for g in rest if g not in A]
                    yield flat(A), flat(B), flat(C)
                    count += 1
                    if count >= MAX_SPLITS:
                        return


def queries(n_inputs: int) -> int:
    """About how many rows :func:`plan` asks the oracle for, for ``n_inputs`` inputs (the tests
    of the top split; the parts' tests and rows cost about as much again)."""
    splits = sum(1 for _ in _splits([(i,) for i in range(n_inputs)]))
    pairs = n_inputs * (n_inputs - 1) // 2
    symmetry = 3 * len(SYMMETRY_OPS) * SYMMETRY_ROWS * pairs * max(n_inputs - 1, 1) // 2
    return 2 * 4 * PAIRS * splits + symmetry


def _residuals(part: Part, X, A, B, pairs) -> tuple[float, float, float]:
    """Relative residuals of the additive and multiplicative tests of splitting ``part`` into
    ``A`` and ``B`` (shared inputs from row ``i`` of each pair), and the product's offset.

    A product with an offset ``k``, ``k + g(a) h(b)``, fails the plain product test by
    ``k (f11 + f22 - f12 - f21)``: the test is linear in ``k``, which is fitted by least
    squares (and kept only when it is needed)."""
    i, j = pairs
    n = len(i)
    rows = np.tile(X[i], (4, 1)).reshape(4, n, -1)
    a, b = list(A), list(B)
    # (a_i, b_i), (a_j, b_j), (a_i, b_j), (a_j, b_i); c_i throughout
    rows[1][:, a] = X[j][:, a]
    rows[1][:, b] = X[j][:, b]
    rows[2][:, b] = X[j][:, b]
    rows[3][:, a] = X[j][:, a]
    v = part.values(rows.reshape(4 * n, -1))
    f11, f22, f12, f21 = v[:n], v[n:2 * n], v[2 * n:3 * n], v[3 * n:]
    if not np.all(np.isfinite(v)):
        return np.inf, np.inf, 0.0
    spread = np.std(np.concatenate([f11, f22])) or 1.0
    S = f11 + f22 - f12 - f21
    D = f11 * f22 - f12 * f21
    add = np.sqrt(np.mean(S**2)) / spread
    both = np.concatenate([f11, f22])

    def product(k: float) -> float:
        # in units of (size of f - k) x (spread of f): a large k gains nothing by itself
        size = np.sqrt(np.mean((both - k) ** 2)) or 1.0
        return float(np.sqrt(np.mean((D - k * S) ** 2)) / (size * spread))

    mul, shift = product(0.0), 0.0
    if np.mean(S**2) > 0:
        k = float(np.sum(D * S) / np.sum(S * S))
        if product(k) < 0.5 * mul:
            mul, shift = product(k), k
    return float(add), float(mul), shift


def plan(oracle: Callable[[np.ndarray], np.ndarray], X: np.ndarray, tol: float = 0.02,
         seed: int = 0, max_depth: int = 4, symmetric: bool = True) -> Part:
    """The decomposition of ``oracle`` (rows of every input -> one output) over the recorded
    rows ``X``: a tree of :class:`Part` (a single leaf when nothing splits). With
    ``symmetric``, the inputs are first grouped by the symmetries the oracle has
    (:func:`symmetries`); the splits keep each group together and the leaves are searched on
    the groups' values."""
    rng = np.random.default_rng(seed)
    X = np.asarray(X, np.float64)
    root = Part(tuple(range(X.shape[1])), oracle=oracle, anchor=np.median(X, axis=0))
    spread = float(np.std(oracle(X[: min(len(X), 1024)]))) or 1.0
    if symmetric and X.shape[1] >= 2:
        units, root.symmetry_residual = symmetries(oracle, X, tol, spread, seed)
        root.units = tuple(units)
    else:
        root.units = tuple(Unit(index=i) for i in range(X.shape[1]))
    _split(X, root, tol, rng, max_depth, spread)
    return root


def _split(X, part: Part, tol, rng, depth, spread, scale: float = 1.0,
           vals: np.ndarray | None = None) -> None:
    """Split ``part`` (and its parts, ``depth`` levels down). ``scale``: what one unit of the
    part's values is worth in the output's units (the right part of a product is a ratio,
    ``h(b)/h(b*)``, worth the left part's size), so that a part is a constant only where the
    output does not move with it, whatever its own units. ``vals``: the part's values on the
    sample, when its parent has them already."""
    part.scale = scale
    sample = X[: min(len(X), 512)]
    if vals is None:
        vals = part.values(sample)
    if not np.all(np.isfinite(vals)):
        return
    if np.std(vals) * scale < CONSTANT * spread:
        part.constant = float(np.mean(vals))
        return
    if depth == 0 or len(part.inputs) < 2:
        return
    n = min(PAIRS, len(X))
    pairs = (rng.integers(0, len(X), n), rng.integers(0, len(X), n))
    best = None
    for A, B, C in _splits([u.members for u in part.units]):
        if best is not None and len(C) > best[0]:
            break  # a split that shares fewer inputs already holds
        add, mul, shift = _residuals(part, X, A, B, pairs)
        for op, r in (("+", add), ("*", mul)):
            if r < tol and (best is None or (len(C), r) < best[:2]):
                best = (len(C), r, op, A, B, C, shift if op == "*" else 0.0)
    if best is None:
        return
    _, r, op, A, B, C, shift = best
    part.residual = scale * r * (float(np.std(vals)) if op == "+" else
                                 float(np.sqrt(np.mean(vals**2))))
    left = Part(tuple(sorted(A + C)), parent=part, side="left", other=B,
                units=tuple(u for u in part.units if set(u.members) <= set(A + C)))
    right = Part(tuple(sorted(B + C)), parent=part, side="right", other=A,
                 units=tuple(u for u in part.units if set(u.members) <= set(B + C)))
    part.op, part.children, part.shift = op, [left, right], shift
    if op == "*":  # the right part divides by the parent at (a*, b*, c): never near 0
        base = sample.copy()
        base[:, list(A + B)] = part.parent_anchor[list(A + B)]
        v0 = part.values(base) - shift
        if not np.all(np.abs(v0) > 1e-3 * (np.abs(vals - shift).max() or 1.0)):
            part.op, part.children, part.shift = None, [], 0.0
            return
    left_vals, right_scale = None, scale
    if op == "*":  # the right part is h(b)/h(b*): worth the left part's size (g(a) h(b*))
        left_vals = left.values(sample)
        right_scale = scale * float(np.sqrt(np.mean(left_vals**2)))
    _split(X, left, tol, rng, depth - 1, spread, scale, left_vals)
    _split(X, right, tol, rng, depth - 1, spread, right_scale)
    if all(c.constant is not None for c in part.children):
        a, b = (c.constant for c in part.children)
        part.constant = float(a + b if op == "+" else shift + a * b)
        part.op, part.children, part.shift = None, [], 0.0


def ignored(root: Part) -> list[int]:
    """The inputs no part of the decomposition depends on (the output ignores them)."""
    used = {i for leaf in root.leaves() for i in leaf.inputs}
    return [i for i in root.inputs if i not in used]


def network_error(root: Part) -> float | None:
    """An estimate of the network's error (MSE) from the top split's test (each term of the
    test is the law plus the network's error, so its RMS is about twice that error), else from
    the symmetry tests (a difference of two evaluations: 1.4 times it), or None."""
    if root.residual is not None and root.splits:
        return (root.residual / 2) ** 2
    if root.symmetry_residual is not None:
        return root.symmetry_residual ** 2 / 2
    return None


def reduced(root: Part) -> bool:
    """Whether the decomposition says anything: the output splits, or inputs were grouped by
    a symmetry."""
    return root.splits or any(u.op is not None for u in root.units)


def leaf_names(leaf: Part, names: list[str]) -> list[str]:
    """The names of a leaf's variables: an input's own name, ``s0``, ``s1``, ... for a group
    (numbered over the whole decomposition, never an input's name)."""
    root = leaf
    while root.parent is not None:
        root = root.parent
    from ..expr.grammar import fresh_names

    groups = [u for u in root.units if u.op is not None]
    by_unit = {id(u): n for u, n in zip(groups, fresh_names("s", len(groups), names))}
    return [names[u.index] if u.op is None else by_unit[id(u)] for u in leaf.units]


def in_inputs(text: str, leaf: Part, names: list[str]) -> str:
    """A leaf's equation (over :func:`leaf_names`) as an equation of the inputs: each group's
    name replaced by the group's expression."""
    from ..expr.grammar import rewrite_variables

    own = leaf_names(leaf, names)
    if own == [names[i] for i in leaf.inputs]:
        return text
    return rewrite_variables(text, {n: u.text(names) for n, u in zip(own, leaf.units)
                                    if u.op is not None}, names)


def leaf_rows(X: np.ndarray, leaf: Part) -> tuple[np.ndarray, np.ndarray]:
    """The rows a leaf is searched on: its variables' values (:func:`leaf_names`) on the
    recorded rows, and the leaf's values there."""
    X = np.asarray(X, np.float64)
    return np.column_stack([u.value(X) for u in leaf.units]), leaf.values(X)


def compose(part: Part, texts: dict[int, str]) -> str | None:
    """The equation of ``part`` from its leaves' equations (``texts``: ``id(leaf)`` -> text
    over the leaf's own variables); None when a leaf has none."""
    if part.constant is not None:
        return repr(part.constant)
    if not part.children:
        return texts.get(id(part))
    a, b = (compose(c, texts) for c in part.children)
    if a is None or b is None:
        return None
    if part.op == "*" and part.shift:
        return f"({part.shift!r}) + ({a}) * ({b})"
    return f"({a}) {part.op} ({b})"


#: the monomials fitted to a part: each variable's power in ``POLY_POWERS`` (negative ones
#: only for a variable of one sign, away from 0), the powers' magnitudes summing to at most
#: ``POLY_DEGREE``; parts of at most ``POLY_INPUTS`` variables
POLY_DEGREE = 3
POLY_POWERS = (-2, -1, 0, 1, 2, 3)
POLY_INPUTS = 2
#: the transforms of a part's values fitted by such polynomials (``search.transforms``):
#: ``g(y) = P(x)``, mapped back as ``y = g^-1(P(x))``. ``omega^4/(omega^2 - omega0^2)^2`` over
#: ``s = omega/omega0`` is ``(1/s^2 - 1)^-2``; ``1/sqrt(1 - s^2)`` is ``(1 - s^2)^(-1/2)``
POLY_TRANSFORMS = ("identity", "inverse", "square", "inverse_square", "sqrt", "inverse_sqrt",
                   "log")
#: fits kept per transform: the last ones of the backward elimination, of at most this many
#: terms besides the constant
POLY_TERMS = 4
#: rows a backward elimination is fitted on at most (evenly spaced over the part's rows)
POLY_ROWS = 1000
#: the smallest weight of a row, relative to the largest, in the fit of a transform
POLY_WEIGHTS = 1e-6
#: rows this many times the network's error (RMS, the part's units) from 0 or closer are left
#: out of the fits of a transform that needs one sign, when the others have one: the largest
#: of a thousand draws of an error is 3 to 4 times its RMS, and the estimate is rough
POLY_NEAR_ZERO = 5.0


def _monomials(X: np.ndarray) -> list[tuple[int, ...]]:
    """The powers of the monomials fitted on ``X``'s variables (:data:`POLY_POWERS`)."""
    allowed = []
    for col in X.T:
        top = float(np.max(np.abs(col), initial=0.0))
        away = bool(np.all(col > 0) or np.all(col < 0)) and np.min(np.abs(col)) > 1e-3 * top
        allowed.append([p for p in POLY_POWERS if p >= 0 or away])
    return [p for p in itertools.product(*allowed)
            if 0 < sum(abs(k) for k in p) <= POLY_DEGREE]


def _eliminate(cols: list[np.ndarray], z: np.ndarray, w: np.ndarray, most: int,
               fixed: tuple[np.ndarray, ...] = ()) -> list[tuple[list[int], np.ndarray]]:
    """Weighted least-squares fits of ``z`` by a constant, the ``fixed`` columns and the
    columns, then with the weakest column dropped, one at a time, down to the constant and
    the fixed ones: ``[(kept columns, coefficients)]`` for the kept sets of at most ``most``
    columns (besides the constant; the fixed ones count). Which column is weakest is read off
    the normal equations of the (unit-norm) columns; each kept set returned is then fitted by
    ``lstsq``. The coefficients are the constant's, the fixed columns', the kept ones'."""
    f = len(fixed)
    cols = list(fixed) + list(cols)
    A = np.column_stack([w] + [c * w for c in cols])
    zw = z * w
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(zw))):
        return []
    out: list[tuple[list[int], np.ndarray]] = []
    with np.errstate(all="ignore"):  # columns of 1e150 overflow their products: no fits
        try:
            _drop_weakest(A, zw, f, len(cols), most, out)
        except np.linalg.LinAlgError:
            pass
    return out


def _drop_weakest(A, zw, f: int, n: int, most: int, out: list) -> None:
    """:func:`_eliminate`'s steps, its fits appended to ``out``."""
    norms = np.linalg.norm(A, axis=0)
    norms[norms == 0] = 1.0
    An = A / norms
    G, b = An.T @ An, An.T @ zw
    if not (np.all(np.isfinite(G)) and np.all(np.isfinite(b))):
        return
    keep = list(range(f, n))
    while True:
        idx = list(range(f + 1)) + [k + 1 for k in keep]
        if len(keep) + f <= most:
            coef, *_ = np.linalg.lstsq(A[:, idx], zw, rcond=None)
            if not np.all(np.isfinite(coef)):
                return
            out.append(([k - f for k in keep], coef))
        if not keep:
            return
        costs = []
        for k in keep:  # what dropping k leaves unexplained: -b_S' G_S^-1 b_S, up to a constant
            sub = [i for i in idx if i != k + 1]
            c, *_ = np.linalg.lstsq(G[np.ix_(sub, sub)], b[sub], rcond=None)
            cost = -float(b[sub] @ c)
            costs.append(cost if np.isfinite(cost) else np.inf)
        keep.remove(keep[int(np.argmin(costs))])


def polynomial_candidates(X: np.ndarray, y: np.ndarray, names: list[str],
                          noise: float | None = None) -> list[str]:
    """Sparse polynomials fitted to a part of few inputs and to transforms of it (AI Feynman's
    first tries), as text. For each transform ``g`` of :data:`POLY_TRANSFORMS` that the
    values allow (one sign, away from 0, for all but the identity): the least-squares fit of
    ``g(y)`` by every monomial of :func:`_monomials` (powers -2 to 3, a Laurent polynomial),
    then the fits with the weakest monomial dropped, one at a time; the last fits of at most
    ``POLY_TERMS`` terms are kept, mapped back through ``g``. A search of one variable can
    settle for ``1161 - 1161 cos(0.0415 x)`` where the part is ``x^2``, or miss
    ``(1/s^2 - 1)^-2`` altogether; a fit finds either at once, and the front keeps whichever
    is better. Then the sparse rational fits of the values (:func:`_rationals`). Nothing
    here is read from a user: the texts are numbers and ``names``.

    ``noise``: the network's error (RMS) in the part's units, when known. A part that is of
    one sign but for rows within ``POLY_NEAR_ZERO`` times it of 0 (``exp(-1/s)`` dips to
    -0.08 where the law is 1e-9, of a part of Feynman I.40.1 that reaches 16.6) is fitted
    through the transforms that need one sign without those rows: their transformed values
    are the network's error, not the law's."""
    from .transforms import TRANSFORMS

    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    if X.ndim != 2 or X.shape[1] > POLY_INPUTS or len(y) < 20:
        return []
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        return []
    rows = np.unique(np.linspace(0, len(y) - 1, min(len(y), POLY_ROWS)).astype(int))
    X, y = X[rows], y[rows]
    powers = _monomials(X)
    cols = [_column(X, p) for p in powers]
    far = np.abs(y) > POLY_NEAR_ZERO * noise if noise else np.ones(len(y), bool)
    texts = []
    for name in POLY_TRANSFORMS:
        t = TRANSFORMS[name]
        yt, ct = y, cols
        if not t.applies(y):
            if far.all() or far.sum() < 20 or not t.applies(y[far]):
                continue
            yt, ct = y[far], [c[far] for c in cols]
        sign = t.sign(yt)
        with np.errstate(all="ignore"):
            z = t.forward(sign * yt)
            # rows weighted by dy/dz, so that the fit of g(y) is, to first order, the fit of y:
            # 1/sqrt(y) of a small y moves with the network's error far more than y does
            h = 1e-4 * (np.abs(yt) + float(np.std(yt)) * 1e-3)
            dz = (t.forward(sign * (yt + h)) - t.forward(sign * (yt - h))) / (2 * h)
            w = 1.0 / np.abs(dz)
        if not (np.all(np.isfinite(z)) and np.all(np.isfinite(w)) and np.all(w > 0)):
            continue
        # within POLY_WEIGHTS of the largest: the log of an output over decades would leave
        # the fit to its top rows alone (and ill-conditioned)
        w = np.maximum(w / np.max(w), POLY_WEIGHTS)
        for keep, coef in _eliminate(ct, z, w, POLY_TERMS):
            texts.append(t.back(_sum(coef, [powers[k] for k in keep], names), sign))
    return texts + _rationals(X, y, powers, cols, names)


def _column(X: np.ndarray, p: tuple[int, ...]) -> np.ndarray:
    """The monomial of powers ``p`` on the rows ``X`` (inf where it overflows)."""
    with np.errstate(all="ignore"):
        return np.prod([X[:, i] ** float(k) for i, k in enumerate(p)], axis=0)


def _monomial(p: tuple[int, ...], names: list[str]) -> str:
    return "*".join(names[i] if e == 1 else f"{names[i]}^({e})" for i, e in enumerate(p) if e)


def _sum(coef, monomials, names: list[str]) -> str:
    """``c0 + c1*m1 + ...``: ``coef[0]`` the constant, the rest those of ``monomials``."""
    return " + ".join([repr(float(coef[0]))] + [f"({float(c)!r})*{_monomial(p, names)}"
                                                 for c, p in zip(coef[1:], monomials)])


#: rational fits ``P(x) / (1 + Q(x))``: ``P`` of the Laurent monomials of the polynomial fits,
#: ``Q`` of monomials of powers >= 0 and degree 1 to ``RATIONAL_DEGREE``; at most
#: ``POLY_TERMS`` monomials in all, one of them in ``Q``
RATIONAL_DEGREE = 2
#: reweighted refits of a rational fit (Sanathanan-Koerner): the linearised fit of
#: ``y (1 + Q) = P`` weighs each row by ``|1 + Q|``; each refit divides by the last ``1 + Q``
RATIONAL_REFITS = 3


def _rationals(X, y, powers, cols, names) -> list[str]:
    """Sparse rational fits of a part's values, ``P(x) / (1 + Q(x))``, as text: the
    linearised least squares ``y = P(x) - y Q(x)``, pruned by backward elimination like the
    polynomials, then refitted with rows weighted by ``1 / |1 + Q|``. ``n alpha / (1 -
    n alpha / 3)`` (Feynman II.11.27) is such a part, of ``u = n alpha`` from 0 to 1: no
    transform of it is a polynomial in ``u``, nor of ``1 / u``. A fit whose ``1 + Q``
    changes sign, or comes near 0, on the rows (a pole among them) is left out. One monomial
    over the same one plus a constant, ``(a + b m) / (1 + d m)``, is written ``A + B / (m +
    C)``: the same law, shorter."""
    den, dcols, ycols = [], [], []
    for p in itertools.product(range(RATIONAL_DEGREE + 1), repeat=X.shape[1]):
        c = _column(X, p)
        with np.errstate(all="ignore"):
            yc = -y * c
        # a monomial that does not vary on the rows is a constant: 1 + d m would be too
        if 0 < sum(p) <= RATIONAL_DEGREE and np.all(np.isfinite(yc)) and np.ptp(c) > 0:
            den, dcols, ycols = den + [p], dcols + [c], ycols + [yc]
    n, ones = len(cols), np.ones_like(y)
    sets = []  # (numerator's monomials, denominator's, linearised coefficients)
    for j, yc in enumerate(ycols):  # Q of one monomial: the elimination runs over P's alone
        for keep, coef in _eliminate(cols, y, ones, POLY_TERMS, fixed=(yc,)):
            sets.append((keep, [j], np.concatenate([coef[:1], coef[2:], coef[1:2]])))
    for keep, coef in _eliminate(cols + ycols, y, ones, POLY_TERMS):
        sets.append(([k for k in keep if k < n], [k - n for k in keep if k >= n], coef))
    texts, seen = _small_rationals(y, den, dcols, ycols, names), set()
    for num, dk, coef in sets:
        if not dk or (tuple(num), tuple(dk)) in seen:
            continue
        seen.add((tuple(num), tuple(dk)))
        A = np.column_stack([ones] + [cols[k] for k in num] + [ycols[k] for k in dk])
        fit = _reweighted(A, y, coef, [dcols[k] for k in dk])
        if fit is not None:
            texts.append(_rational_text(fit[0], [powers[k] for k in num],
                                        [den[k] for k in dk], names))
    return texts


def _reweighted(A, y, coef, qcols) -> tuple[np.ndarray, np.ndarray] | None:
    """The linearised rational fit ``coef`` of ``y ~ A coef`` (its last ``len(qcols)``
    coefficients are ``Q``'s, over the columns ``qcols``) refitted ``RATIONAL_REFITS`` times
    with rows weighted by ``1 / |1 + Q|`` (Sanathanan-Koerner): (the coefficients, ``1 + Q``),
    or None when ``1 + Q`` has a pole or comes near 0 on the rows at some step."""
    for refit in range(RATIONAL_REFITS + 1):
        q = 1.0 + sum(c * col for c, col in zip(coef[len(coef) - len(qcols):], qcols))
        if not (np.all(np.isfinite(coef)) and _one_sign_away(q)):
            return None
        if refit < RATIONAL_REFITS:
            coef, *_ = np.linalg.lstsq(A / np.abs(q)[:, None], y / np.abs(q), rcond=None)
    return coef, q


#: the small rational fits tried exhaustively: numerators of up to this many terms (the
#: constant and the denominator's monomials), over one monomial; the best
#: ``SMALL_RATIONALS_KEPT`` of each size by their own residual are kept
SMALL_RATIONAL_TERMS = 3
SMALL_RATIONALS_KEPT = 2


def _small_rationals(y, den, dcols, ycols, names) -> list[str]:
    """Every rational ``P/(1 + d m)`` whose numerator has at most ``SMALL_RATIONAL_TERMS``
    terms among the constant and the monomials ``den`` (powers >= 0, degree 1 to
    ``RATIONAL_DEGREE``), over one of those monomials ``m``: each fitted as
    :func:`_rationals` fits (linearised, then refitted with rows weighted by ``1/|1 + Q|``),
    and ranked by the residual of ``y`` itself. The backward elimination of :func:`_rationals`
    selects on the linearised residual ``y (1 + Q) - P``, which multiplies each row's error
    by ``|1 + Q|``: within 0.3% of noise it loses ``(p0 + p1)/(1 + p0 p1)`` (Feynman I.16.6
    over its groups) among 40 monomials, which this finds at 1%."""
    ones = np.ones_like(y)
    terms = [ones] + dcols  # the numerator's candidates: the constant, then den's monomials
    best: dict[int, list] = {}
    for size in range(1, SMALL_RATIONAL_TERMS + 1):
        for num in itertools.combinations(range(len(terms)), size):
            for j, yc in enumerate(ycols):
                A = np.column_stack([terms[i] for i in num] + [yc])
                try:
                    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
                    fit = _reweighted(A, y, coef, [dcols[j]])
                except np.linalg.LinAlgError:
                    continue
                if fit is None:
                    continue
                coef, q = fit
                with np.errstate(all="ignore"):
                    mse = float(np.mean((y - A[:, :-1] @ coef[:-1] / q) ** 2))
                if np.isfinite(mse):
                    best.setdefault(size, []).append((mse, num, j, coef))
    texts = []
    for fits in best.values():
        for _, num, j, coef in sorted(fits, key=lambda f: f[0])[:SMALL_RATIONALS_KEPT]:
            const = coef[0] if 0 in num else 0.0
            mons = [den[i - 1] for i in num if i]
            terms_coef = [c for i, c in zip(num, coef) if i]
            texts.append(_rational_text(np.array([const, *terms_coef, coef[-1]]), mons,
                                        [den[j]], names))
    return texts


def _one_sign_away(q: np.ndarray) -> bool:
    """``1 + Q`` over the rows: finite, of one sign (no pole among them) and nowhere near 0
    (against its own size and against the 1 in it: ``1 - 0.333 m`` of an ``m`` near 3 on
    every row is ``0/0``, not a law)."""
    a = np.abs(q)
    return bool(np.all(np.isfinite(q)) and (np.all(q > 0) or np.all(q < 0))
                and np.min(a) > 1e-3 * max(float(np.max(a)), 1.0))


def _rational_text(coef, num, den, names: list[str]) -> str:
    """The text of ``P/(1 + Q)``; ``(a + b m)/(1 + d m)`` as ``A + B/(m + C)``."""
    a, b, d = coef[0], coef[1:1 + len(num)], coef[1 + len(num):]
    if len(den) == 1 and num in ([], [den[0]]) and d[0] != 0:
        bm = float(b[0]) if num else 0.0
        with np.errstate(all="ignore"):
            shift, top, bottom = (np.float64(v) for v in (bm / d[0], (a - bm / d[0]) / d[0],
                                                          1.0 / d[0]))
        if np.isfinite(shift) and np.isfinite(top) and np.isfinite(bottom):
            return (f"{float(shift)!r} + ({float(top)!r})/({_monomial(den[0], names)} + "
                    f"({float(bottom)!r}))")
    q = " + ".join(["1"] + [f"({float(c)!r})*{_monomial(p, names)}" for c, p in zip(d, den)])
    return f"({_sum(coef[:1 + len(num)], num, names)})/({q})"
