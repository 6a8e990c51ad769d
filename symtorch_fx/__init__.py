"""symtorch_fx: symbolic distillation of neural-network components as a torch.fx compiler pass.

::

    import symtorch_fx as sfx
    sym = sfx.compile(model, targets=["blocks.*.mlp"], sample_inputs=batches)
    print(sym.equations)
    orig = sfx.restore(sym)  # the model itself

The public API is what this module re-exports (``__all__``). The subpackages -- ``graph``
(trace, match, instrument, rewrite), ``search`` (engines, distill, prune, select), ``kernels``
(lower and the fused kernels), ``expr`` (op table, grammar, equations) -- and every module and
name they hold are internal, as are the user-facing modules' own helpers: they may change in any
release.
"""

from .api import compile, convert, prepare, restore, run
from .dynamo import Backend, backend
from .errors import (
    EngineUnavailableError,
    EquationSyntaxError,
    RecordingError,
    SerializationError,
    SymTorchFXError,
    TargetError,
    UntraceableModelError,
)
from .expr.equations import Equation, Equations, ParetoFront, RegionEquations
from .graph.instrument import Recorder
from .graph.rewrite import SymbolicModule
from .graph.targets import Pattern, pattern
from .model import SymbolicModel
from .pruning import OutputPruning, prune_outputs
from .reduce import PCA, LearnedProjection, Projection
from .search.engine import Engine
from .search.operon import Operon
from .search.pysr import PySR
from .search.units import Units
from .serialize import load, save
from .slime import Explanation, explain, stand_in

__version__ = "0.1.0"

__all__ = [
    "compile", "prepare", "convert", "restore", "run", "save", "load",
    "pattern", "Pattern", "backend", "Backend",
    "Engine", "Operon", "PySR", "PCA", "LearnedProjection", "Projection",
    "Equation", "Equations", "ParetoFront", "RegionEquations",
    "SymbolicModel", "SymbolicModule", "Recorder",
    "SymTorchFXError", "TargetError", "UntraceableModelError", "RecordingError",
    "EngineUnavailableError", "EquationSyntaxError", "SerializationError",
    "explain", "Explanation", "stand_in", "prune_outputs", "OutputPruning", "Units",
]
