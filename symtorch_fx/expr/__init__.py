"""The expression language: the op table, the grammar of equation text, equations and fronts.

``ops`` (one table of functions and constants every printer reads), ``grammar`` (our own bounded
parser and printer of equation text: no ``eval``, no ``sympify``), ``equations``
(:class:`~.equations.Equation`, :class:`~.equations.ParetoFront` and their collections).

Internal: the public names are re-exported by ``symtorch_fx``; everything here may change.
"""
