"""The graph pass: trace a model, match targets to regions, instrument them, rewrite them.

``trace`` (a tracer that keeps target modules as leaves) -> ``targets`` (what a user may name)
-> ``match`` (targets to :class:`~.match.Region`\\ s of the graph) -> ``instrument`` (a recorder
submodule per region) -> ``rewrite`` (each region to one ``call_module`` of its
:class:`~.rewrite.SymbolicModule`, reversibly).

Internal: the public names are re-exported by ``symtorch_fx``; everything here may change.
"""
