"""symtorch_fx: symbolic distillation of neural-network components as a torch.fx compiler pass.

::

    import symtorch_fx as sfx
    sym = sfx.compile(model, targets=["blocks.*.mlp"], sample_inputs=batches)
    print(sym.equations)
    orig = sfx.restore(sym)
"""

from ._api import compile, convert, prepare, restore, run
from ._backend import Backend, backend
from ._engine import Engine
from ._equations import Equation, Equations, ParetoFront, RegionEquations
from ._errors import (
    EngineUnavailableError,
    EquationSyntaxError,
    RecordingError,
    SerializationError,
    SymTorchFXError,
    TargetError,
    UntraceableModelError,
)
from ._instrument import Recorder
from ._model import SymbolicModel
from ._operon import Operon
from ._pysr import PySR
from ._reduce import PCA, LearnedProjection, Projection
from ._rewrite import SymbolicModule
from ._serialize import load, save
from ._slime import Explanation, explain
from ._targets import Pattern, pattern

__version__ = "0.1.0"

__all__ = [
    "compile", "prepare", "convert", "restore", "run", "save", "load",
    "pattern", "Pattern", "backend", "Backend",
    "Engine", "Operon", "PySR", "PCA", "LearnedProjection", "Projection",
    "Equation", "Equations", "ParetoFront", "RegionEquations",
    "SymbolicModel", "SymbolicModule", "Recorder",
    "SymTorchFXError", "TargetError", "UntraceableModelError", "RecordingError",
    "EngineUnavailableError", "EquationSyntaxError", "SerializationError",
    "explain", "Explanation",
]
