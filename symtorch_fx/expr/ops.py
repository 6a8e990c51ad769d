"""The equation vocabulary: which functions an equation may use, and what each one is in sympy.

This is the single source of truth for the restricted grammar (``expr.grammar``), and every code printer
(``kernels.lower`` for torch, ``kernels.triton`` for Triton) keeps its own table keyed by the sympy classes named
here. Adding an operator means: an entry in ``FUNCTIONS`` (and ``PRINT_NAMES`` if it is a new sympy
class), then one line in each printer's table.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import sympy


class sigmoid(sympy.Function):
    """The logistic function 1 / (1 + exp(-x)), kept as one node so printers emit one call."""

    nargs = 1

    def fdiff(self, argindex: int = 1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    @classmethod
    def eval(cls, x):
        if x.is_Number and x == 0:
            return sympy.Rational(1, 2)
        return None

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sympy.exp(-x))

    def _eval_is_real(self):
        return self.args[0].is_real

    def _latex(self, printer):
        return r"\sigma\left(%s\right)" % printer._print(self.args[0])


def _relu(x):
    return sympy.Max(0, x)


def _aq(a, b):
    # Operon's analytic quotient: a / sqrt(1 + b^2)
    return a / sympy.sqrt(1 + b**2)


# grammar name -> (number of arguments, builder of the sympy expression)
FUNCTIONS: dict[str, tuple[int, Callable[..., sympy.Expr]]] = {
    "sin": (1, sympy.sin),
    "cos": (1, sympy.cos),
    "tan": (1, sympy.tan),
    "asin": (1, sympy.asin),
    "acos": (1, sympy.acos),
    "atan": (1, sympy.atan),
    "sinh": (1, sympy.sinh),
    "cosh": (1, sympy.cosh),
    "tanh": (1, sympy.tanh),
    "exp": (1, sympy.exp),
    "log": (1, sympy.log),
    "log2": (1, lambda x: sympy.log(x) / sympy.log(2)),
    "log10": (1, lambda x: sympy.log(x) / sympy.log(10)),
    "log1p": (1, lambda x: sympy.log(1 + x)),
    "logabs": (1, lambda x: sympy.log(sympy.Abs(x))),
    "sqrt": (1, sympy.sqrt),
    "sqrtabs": (1, lambda x: sympy.sqrt(sympy.Abs(x))),
    "cbrt": (1, lambda x: sympy.sign(x) * sympy.Abs(x) ** sympy.Rational(1, 3)),
    "abs": (1, sympy.Abs),
    "sign": (1, sympy.sign),
    "erf": (1, sympy.erf),
    "sigmoid": (1, sigmoid),
    "relu": (1, _relu),
    "square": (1, lambda x: x**2),
    "cube": (1, lambda x: x**3),
    "inv": (1, lambda x: 1 / x),
    "neg": (1, lambda x: -x),
    "floor": (1, sympy.floor),
    "ceil": (1, sympy.ceiling),
    "min": (2, sympy.Min),
    "max": (2, sympy.Max),
    "fmin": (2, sympy.Min),
    "fmax": (2, sympy.Max),
    "pow": (2, lambda a, b: a**b),
    "aq": (2, _aq),
}

def _sigmoid(x: float) -> float:
    z = math.exp(-abs(x))  # never overflows
    return 1 / (1 + z) if x >= 0 else z / (1 + z)


def _sign(x: float) -> float:
    return float((x > 0) - (x < 0))


# grammar name -> the same function on Python floats. The parser computes the value of every
# number-only part of an equation with these (raising for values that are not finite reals),
# so a file's constants are checked without building anything symbolic.
NUMERIC: dict[str, Callable[..., float]] = {
    "sin": math.sin, "cos": math.cos, "tan": math.tan,
    "asin": math.asin, "acos": math.acos, "atan": math.atan,
    "sinh": math.sinh, "cosh": math.cosh, "tanh": math.tanh,
    "exp": math.exp, "log": math.log, "log2": math.log2, "log10": math.log10,
    "log1p": math.log1p, "logabs": lambda x: math.log(abs(x)),
    "sqrt": math.sqrt, "sqrtabs": lambda x: math.sqrt(abs(x)),
    "cbrt": lambda x: math.copysign(abs(x) ** (1 / 3), x),
    "abs": abs, "sign": _sign, "erf": math.erf, "sigmoid": _sigmoid,
    "relu": lambda x: max(0.0, x), "square": lambda x: x * x, "cube": lambda x: x * x * x,
    "inv": lambda x: 1 / x, "neg": lambda x: -x,
    "floor": lambda x: float(math.floor(x)), "ceil": lambda x: float(math.ceil(x)),
    "min": min, "max": max, "fmin": min, "fmax": max,
    "pow": lambda a, b: a**b, "aq": lambda a, b: a / math.sqrt(1 + b * b),
}

# Named numeric constants the grammar accepts (when no variable has the same name).
CONSTANTS: dict[str, sympy.Expr] = {"pi": sympy.pi, "E": sympy.E}

# sympy function class -> the grammar name printed for it (inverse of FUNCTIONS where it is 1:1).
PRINT_NAMES: dict[type, str] = {
    sympy.sin: "sin",
    sympy.cos: "cos",
    sympy.tan: "tan",
    sympy.asin: "asin",
    sympy.acos: "acos",
    sympy.atan: "atan",
    sympy.sinh: "sinh",
    sympy.cosh: "cosh",
    sympy.tanh: "tanh",
    sympy.exp: "exp",
    sympy.log: "log",
    sympy.Abs: "abs",
    sympy.sign: "sign",
    sympy.erf: "erf",
    sigmoid: "sigmoid",
    sympy.floor: "floor",
    sympy.ceiling: "ceil",
    sympy.Min: "min",
    sympy.Max: "max",
}

# The operator names users pass in ``Operon(operators=...)`` / ``PySR(unary_operators=...)``,
# checked against this set so a typo fails before any search starts.
UNARY_OPERATORS = frozenset(
    name for name, (arity, _) in FUNCTIONS.items() if arity == 1
)
BINARY_OPERATORS = frozenset({"add", "sub", "mul", "div", "pow", "min", "max", "aq"})
