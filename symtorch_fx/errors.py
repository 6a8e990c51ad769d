"""Exceptions raised by symtorch_fx.

Every error names what went wrong and what to do about it. They all derive from
:class:`SymTorchFXError`, which is a ``ValueError`` so that code catching bad-argument errors
keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SymTorchFXError(ValueError):
    """Base class of every error raised by symtorch_fx."""


class TargetError(SymTorchFXError):
    """A target specification is malformed or matches nothing."""


class UntraceableModelError(SymTorchFXError):
    """The model cannot be traced into a graph, and the requested targets need one."""


class RecordingError(SymTorchFXError):
    """Recorded activations are missing or unusable."""


class EngineUnavailableError(SymTorchFXError, ImportError):
    """A symbolic-regression engine cannot run in this environment."""


class EquationSyntaxError(SymTorchFXError):
    """Equation text does not conform to the restricted equation grammar."""


class KernelBuildError(SymTorchFXError):
    """A fused kernel could not be compiled on this machine."""


class SerializationError(SymTorchFXError):
    """A saved symtorch_fx file is malformed or does not fit the model."""


def nearest(word: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The ``n`` choices closest to ``word`` (for 'did you mean' lists)."""
    choices = list(dict.fromkeys(choices))
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.0)
    return close or choices[:n]
