"""The search: distil recordings into Pareto fronts of equations, prune them, pick one.

``engine`` (the protocol every symbolic-regression engine meets) with ``operon`` (the embedded
default) and ``pysr``; ``distill`` (jobs through any executor, fronts rescored by us),
``transforms`` (searches of a transform of the output, mapped back), ``prune`` (simpler forms of
each candidate), ``select`` (the rules that choose an equation from a front).

Internal: the public names are re-exported by ``symtorch_fx``; everything here may change.
"""
