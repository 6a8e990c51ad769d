"""PySR as an engine: every keyword goes to ``pysr.PySRRegressor`` unchanged.

PySR runs on Julia, which it downloads (with its Julia packages) the first time ``pysr`` is
imported. ``check()`` finds out whether Julia is there before anything is imported, so a machine
without it gets an error that says what to do instead of a hang or a half-finished download.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys

from ..errors import EngineUnavailableError
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
    """

    name = "pysr"
    parallel_jobs = False
    restarts = 1  # PySR runs many populations inside one search already

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return settings_repr(self)

    def check(self) -> None:
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
        model = PySRRegressor(**kwargs)
        model.fit(X, y, weights=weights, variable_names=list(variables))
        eqs = model.equations_
        if isinstance(eqs, list):  # several outputs at once: not how we call it, but be safe
            eqs = eqs[0]
        return [str(e) for e in eqs["equation"]]
