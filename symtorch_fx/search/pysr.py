"""PySR as an engine: every keyword goes to ``pysr.PySRRegressor`` unchanged.

PySR runs on Julia, which it downloads (with its Julia packages) the first time ``pysr`` is
imported. ``check()`` finds out whether Julia is there before anything is imported, so a machine
without it gets an error that says what to do instead of a hang or a half-finished download.
"""

from __future__ import annotations

import copy
import glob
import importlib.util
import os
import shutil
import sys

from ..errors import EngineUnavailableError, SymTorchFXError
from .engine import settings_repr


def julia_executable() -> str | None:
    """A Julia executable that juliacall would use, without installing anything."""
    exe = os.environ.get("PYTHON_JULIAPKG_EXE")
    if exe and os.path.exists(exe):
        return exe
    for name in ("julia", "juliaup"):
        found = shutil.which(name)
        if found:
            return found
    projects = [os.environ.get("PYTHON_JULIAPKG_PROJECT")]
    if sys.prefix != sys.base_prefix:
        projects.append(os.path.join(sys.prefix, "julia_env"))
    if os.environ.get("CONDA_PREFIX"):
        projects.append(os.path.join(os.environ["CONDA_PREFIX"], "julia_env"))
    depot = os.environ.get("JULIA_DEPOT_PATH", os.path.expanduser("~/.julia")).split(os.pathsep)[0]
    projects.append(os.path.join(depot, "environments", "pyjuliapkg"))
    for project in filter(None, projects):
        hits = glob.glob(os.path.join(project, "pyjuliapkg", "install", "bin", "julia*"))
        if hits:
            return hits[0]
    return None


class PySR:
    """Symbolic regression with PySR (Julia). ``PySR(**kwargs)`` -> ``PySRRegressor(**kwargs)``.

    ``random_state`` defaults to the job's seed. Each job runs in the calling process (PySR
    parallelizes inside Julia), so the default executor for this engine is inline.

    ``X_units`` (one unit per variable, in the order of the target's variables, e.g.
    ``["m", "s"]``) and ``y_units`` (``"m/s"``) go to ``PySRRegressor.fit``, for its
    dimensional-analysis penalty (``dimensional_constraint_penalty=``). A search of a transform
    of the output (``y^2``, ``log|y|``, ``y/m(x)``) drops ``y_units``, which the transformed
    output no longer has.
    """

    name = "pysr"
    parallel_jobs = False
    restarts = 1  # PySR runs many populations inside one search already

    def __init__(self, X_units=None, y_units=None, **kwargs):
        if X_units is not None and (isinstance(X_units, str) or not all(
                isinstance(u, str) for u in X_units)):
            raise SymTorchFXError(f"X_units is a list of unit strings, one per variable, got "
                                  f"{X_units!r}")
        if y_units is not None and not isinstance(y_units, str):
            raise SymTorchFXError(f"y_units is a unit string such as 'm/s', got {y_units!r}")
        self.X_units = None if X_units is None else list(X_units)
        self.y_units = y_units
        self.kwargs = kwargs

    def with_units(self, X_units, y_units) -> "PySR":
        """This engine with the units ``convert(units=)`` gives (``X_units``, ``y_units``),
        unless it was made with units of its own."""
        engine = copy.copy(self)
        if engine.X_units is None and engine.y_units is None:
            engine.X_units, engine.y_units = list(X_units), y_units
        return engine

    def for_transform(self, transform) -> "PySR":
        """This engine for a search of a transform of the output: without ``y_units``."""
        engine = copy.copy(self)
        engine.y_units = None
        return engine

    def __repr__(self) -> str:
        return settings_repr(self)

    def check(self) -> None:
        """Raise :class:`EngineUnavailableError`, saying how to install what is missing, if the
        pysr package or Julia cannot be found (``SYMTORCH_FX_SKIP_JULIA_CHECK=1`` skips the
        Julia check)."""
        if importlib.util.find_spec("pysr") is None:
            raise EngineUnavailableError(
                "the PySR engine needs the pysr package: pip install 'symtorch_fx[pysr]' "
                "(PySR then installs Julia on its first import, which needs internet access). "
                "The embedded engine sfx.Operon() needs neither"
            )
        if os.environ.get("SYMTORCH_FX_SKIP_JULIA_CHECK") != "1" and julia_executable() is None:
            raise EngineUnavailableError(
                "the PySR engine needs Julia, and none was found (not on PATH, not in "
                "PYTHON_JULIAPKG_EXE, not installed by juliapkg). On a machine with internet "
                "access run `python -c 'import pysr'` once to install Julia and PySR's Julia "
                "packages, or install Julia (https://julialang.org/downloads/) and put it on "
                "PATH; set SYMTORCH_FX_SKIP_JULIA_CHECK=1 to skip this check. Offline, use the "
                "embedded engine sfx.Operon()"
            )

    def search(self, X, y, variables, seed, weights=None) -> list[str]:
        """One ``PySRRegressor`` fit of ``y ~ f(X)`` (per-row ``weights`` passed natively,
        ``random_state`` from ``seed`` unless set); returns its equations (the hall of fame) over ``variables``
        as grammar text."""
        self.check()
        try:
            from pysr import PySRRegressor
        except Exception as e:  # noqa: BLE001 - juliacall raises many kinds of errors
            raise EngineUnavailableError(
                f"importing pysr failed ({type(e).__name__}: {e}); PySR needs a working Julia "
                "with its packages installed (run `python -c 'import pysr'` once online)"
            ) from e
        kwargs = dict(self.kwargs)
        kwargs.setdefault("random_state", int(seed) % (2**31))
        kwargs.setdefault("progress", False)
        kwargs.setdefault("verbosity", 0)
        units = {}
        if self.X_units is not None:
            if len(self.X_units) != len(variables):
                raise SymTorchFXError(
                    f"X_units gives {len(self.X_units)} units, but the target has "
                    f"{len(variables)} variables ({', '.join(variables)}); give one per variable")
            units["X_units"] = self.X_units
        if self.y_units is not None:
            units["y_units"] = self.y_units
        model = PySRRegressor(**kwargs)
        model.fit(X, y, weights=weights, variable_names=list(variables), **units)
        eqs = model.equations_
        if isinstance(eqs, list):  # several outputs at once: not how we call it, but be safe
            eqs = eqs[0]
        return [str(e) for e in eqs["equation"]]
