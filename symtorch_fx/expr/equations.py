"""What distillation produces: equations, Pareto fronts, and the report ``sym.equations``."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import sympy
import torch

from .grammar import parse, to_text


def _round(expr: sympy.Expr, digits: int) -> sympy.Expr:
    floats = expr.atoms(sympy.Float)
    if not floats:
        return expr
    return expr.xreplace({f: sympy.Float(f"{float(f):.{digits}g}", digits) for f in floats})


class Equation:
    """One candidate equation for one output.

    Attributes:
        expr: the sympy expression (numeric constants inlined), over ``variables``.
        complexity: node count, as PySR counts it, of the sympy-folded expression.
        loss: mean squared error against the network on held-out recorded rows.
        finite: whether it evaluates to finite values on every recorded row.
    """

    def __init__(self, expr: sympy.Expr | None, complexity: int, loss: float,
                 variables: tuple[sympy.Symbol, ...] = (), finite: bool = True):
        self._expr = expr
        self._text: str | None = None
        self.complexity = complexity
        self.loss = loss
        self.variables = tuple(variables)
        self.finite = finite

    @classmethod
    def from_text(cls, text: str, variables: tuple[sympy.Symbol, ...], complexity: int,
                  loss: float, finite: bool = True) -> Equation:
        """An equation whose text has been checked (``grammar.check``) but not yet built:
        ``expr`` parses it on first use (a front read from a file builds only its chosen
        equations when it loads)."""
        eq = cls(None, complexity, loss, variables, finite)
        eq._text = text
        return eq

    @property
    def expr(self) -> sympy.Expr:
        """The sympy expression (numeric constants inlined), over ``variables``."""
        if self._expr is None:
            self._expr = parse(self._text, {v.name: v for v in self.variables})
        return self._expr

    @expr.setter
    def expr(self, value: sympy.Expr) -> None:
        self._expr, self._text = value, None

    def __eq__(self, other) -> bool:
        if not isinstance(other, Equation):
            return NotImplemented
        return (self.expr, self.complexity, self.loss, self.variables, self.finite) == (
            other.expr, other.complexity, other.loss, other.variables, other.finite)

    __hash__ = None

    @property
    def sympy(self) -> sympy.Expr:
        """The same as ``expr``."""
        return self.expr

    def text(self, digits: int | None = None) -> str:
        """The equation in the restricted grammar; ``digits`` rounds constants for display."""
        return to_text(self.expr, digits)

    def latex(self, digits: int = 4) -> str:
        """The equation as LaTeX, constants rounded to ``digits`` significant digits."""
        return sympy.latex(_round(self.expr, digits))

    def __str__(self) -> str:
        return self.text(4)

    def __repr__(self) -> str:
        return f"Equation({self.text(4)!r}, complexity={self.complexity}, loss={self.loss:.4g})"

    def __call__(self, X) -> np.ndarray:
        """Evaluate on rows ``X`` of shape (n, n_features) (float64)."""
        from ..kernels.lower import evaluate

        x = torch.as_tensor(np.asarray(X, dtype=np.float64))
        if x.ndim == 1:
            x = x[:, None]
        return evaluate([self.expr], x, self.variables)[:, 0].numpy()


def scores(front: Sequence[Equation]) -> list[float]:
    """PySR's score: -d log(loss) / d complexity between neighbours on the front (first: 0)."""
    out = [0.0]
    for a, b in zip(front, front[1:]):
        la, lb = math.log(max(a.loss, 1e-300)), math.log(max(b.loss, 1e-300))
        out.append(-(lb - la) / max(b.complexity - a.complexity, 1))
    return out


@dataclass
class ParetoFront(Sequence):
    """The equations found for one output, simplest first, each more accurate than the last.

    A sequence of :class:`Equation`; ``front[i]`` is the i-th simplest.

    Attributes:
        region: the target region's name.
        output: the output's name.
        equations: the front, simplest first.
        chosen: the index of the chosen equation (see ``equation``).
        rule: the selection rule that chose it, as text.
        info: details of how the front was found, e.g. ``info["searches"]`` (what each search
            gave) and ``info["noise"]`` (the network error ``selection="auto"`` used).
    """

    region: str
    output: str
    equations: list[Equation]
    chosen: int = 0
    rule: str = ""
    info: dict = field(default_factory=dict)

    def __getitem__(self, i):
        return self.equations[i]

    def __len__(self) -> int:
        return len(self.equations)

    def __iter__(self) -> Iterator[Equation]:
        return iter(self.equations)

    @property
    def equation(self) -> Equation:
        """The chosen equation."""
        return self.equations[self.chosen]

    @property
    def complexities(self) -> list[int]:
        """The complexity of each equation on the front, in order."""
        return [e.complexity for e in self.equations]

    def scores(self) -> list[float]:
        """PySR's score of each equation: ``-d log(loss) / d complexity`` from the one before
        it on the front (0 for the first)."""
        return scores(self.equations)

    def __repr__(self) -> str:
        rows = [("", "complexity", "loss", "score", "equation")]
        for i, (e, s) in enumerate(zip(self.equations, self.scores())):
            mark = ">" if i == self.chosen else (" " if e.finite else "!")
            rows.append((mark, str(e.complexity), f"{e.loss:.3e}", f"{s:.3f}", e.text(4)))
        head = f"{self.region} / {self.output}" + (f"  (chosen by {self.rule})" if self.rule else "")
        return head + "\n" + _table(rows)

    def plot(self, ax=None):
        """Loss against complexity (log scale), the front as a staircase and the chosen
        equation marked; on ``ax`` or a new figure. Returns the axes. Needs matplotlib."""
        ax = _axes(ax)
        cx = [e.complexity for e in self.equations]
        loss = [max(e.loss, 1e-300) if math.isfinite(e.loss) else math.nan for e in self.equations]
        ax.step(cx, loss, where="post", color="0.6", lw=1)
        ax.plot(cx, loss, "o", color="C0", ms=4, label="front")
        c = self.equation
        ax.plot([c.complexity], [max(c.loss, 1e-300)], "*", color="C3", ms=12,
                label=f"chosen: {c.text(3)}" if len(c.text(3)) <= 60 else "chosen")
        ax.set_yscale("log")
        ax.set_xlabel("complexity (nodes)")
        ax.set_ylabel("held-out MSE")
        ax.set_title(f"{self.region} / {self.output}", fontsize=10)
        ax.legend(fontsize=7, loc="lower left")  # a front falls to the right: empty there
        return ax


class RegionEquations(Sequence):
    """The fronts of one region, one per output: a sequence of :class:`ParetoFront`.

    Attributes:
        region: the region's name.
        fronts: one front per output.
        variables: the names of the equations' variables (the region's input features).
        projection: how the inputs and outputs were reduced (a description), or None.
    """

    def __init__(self, region: str, fronts: list[ParetoFront], variables: Sequence[str],
                 projection: str | None = None):
        self.region = region
        self.fronts = fronts
        self.variables = tuple(variables)
        self.projection = projection  # how inputs/outputs were reduced, if they were

    def __getitem__(self, i) -> ParetoFront:
        return self.fronts[i]

    def __len__(self) -> int:
        return len(self.fronts)

    @property
    def chosen(self) -> list[Equation]:
        """The chosen equation of each output, in output order."""
        return [f.equation for f in self.fronts]

    def sympy(self) -> list[sympy.Expr]:
        """The chosen equations as sympy expressions, one per output."""
        return [e.expr for e in self.chosen]

    def latex(self, digits: int = 4) -> str:
        """One line per output, ``output = equation`` in LaTeX, constants rounded to
        ``digits`` significant digits."""
        return "\n".join(f"{f.output} = {f.equation.latex(digits)}" for f in self.fronts)

    def _head(self) -> str:
        head = f"{self.region}  (variables: {', '.join(self.variables)})"
        if self.projection:
            head += f"\n  {self.projection}"
        return head

    def summary(self) -> str:
        """One line per output: its chosen equation."""
        rows = [("output", "complexity", "loss", "equation")]
        for f in self.fronts:
            e = f.equation
            rows.append((f.output, str(e.complexity), f"{e.loss:.3e}", e.text(4)))
        return self._head() + "\n" + _table(rows)

    def __repr__(self) -> str:
        # every output's Pareto front, its chosen equation marked ">"
        return self._head() + "\n" + "\n".join(repr(f) for f in self.fronts)

    def plot(self, axes=None):
        """Each output's front (see :meth:`ParetoFront.plot`), one panel an output. Returns
        the matplotlib ``Figure``."""
        return _grid(self.fronts, axes)


class Equations(Mapping):
    """``sym.equations``: region name -> :class:`RegionEquations`. Prints as a table."""

    def __init__(self, regions: dict[str, RegionEquations]):
        self._regions = regions

    def __getitem__(self, name: str) -> RegionEquations:
        return self._regions[name]

    def __iter__(self):
        return iter(self._regions)

    def __len__(self) -> int:
        return len(self._regions)

    def latex(self, digits: int = 4) -> str:
        """Every region's chosen equations in LaTeX (see :meth:`RegionEquations.latex`),
        each region headed by a ``% name`` comment line."""
        return "\n\n".join(f"% {k}\n{v.latex(digits)}" for k, v in self._regions.items())

    def __repr__(self) -> str:
        return "\n\n".join(repr(v) for v in self._regions.values()) or "(no equations)"

    def summary(self) -> str:
        """Per region, one line per output: its chosen equation."""
        return "\n\n".join(v.summary() for v in self._regions.values()) or "(no equations)"

    def plot(self, axes=None):
        """Every front of every region, one panel a front. Returns the matplotlib ``Figure``."""
        return _grid([f for v in self._regions.values() for f in v.fronts], axes)


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting fronts needs matplotlib: pip install matplotlib") from e
    return plt


def _axes(ax):
    return ax if ax is not None else _pyplot().subplots(figsize=(5, 3.5))[1]


def _grid(fronts, axes):
    """One panel per front, at most 4 a row; ``axes``: an array of axes to draw into."""
    n = len(fronts)
    if axes is None:
        cols = min(n, 4)
        rows = -(-n // cols) if n else 1
        fig, axes = _pyplot().subplots(rows, max(cols, 1), figsize=(4.5 * max(cols, 1), 3.3 * rows),
                                       squeeze=False)
    axes = np.asarray(axes).ravel()
    if len(axes) < n:
        raise ValueError(f"{n} fronts to plot, but {len(axes)} axes were given")
    for front, ax in zip(fronts, axes):
        front.plot(ax)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig = axes[0].figure
    fig.tight_layout()
    return fig


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells + [r[-1]]).rstrip())
    return "\n".join(lines)
