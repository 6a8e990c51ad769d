"""The API reference (mkdocs.yml, docs/): every public name is documented, and the site builds.

The public API is ``symtorch_fx.__all__``. Each of its names must have a docstring and a
``::: symtorch_fx.NAME`` entry on one of the docs pages; the site must build with
``mkdocs build --strict`` (warnings are errors: a docstring griffe cannot parse, a parameter
documented that the signature lacks, a broken link). The build needs the ``docs`` extra (the
``dev`` extra includes it); without mkdocs that test is skipped, saying so.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import symtorch_fx as sfx

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DIRECTIVE = re.compile(r"^:::\s+symtorch_fx\.(\w+)\s*$", re.M)


def documented_names() -> dict[str, list[str]]:
    """Public name -> the docs pages that render it."""
    out: dict[str, list[str]] = {}
    for page in sorted(DOCS.rglob("*.md")):
        for name in DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            out.setdefault(name, []).append(str(page.relative_to(DOCS)))
    return out


@pytest.mark.parametrize("name", sfx.__all__)
def test_public_name_has_a_docstring(name):
    doc = inspect.getdoc(getattr(sfx, name))
    assert doc and doc.strip(), f"symtorch_fx.{name} has no docstring"


def test_every_public_name_is_on_a_docs_page():
    pages = documented_names()
    missing = [n for n in sfx.__all__ if n not in pages]
    assert not missing, f"public names with no `::: symtorch_fx.NAME` entry under docs/: {missing}"
    internal = sorted(set(pages) - set(sfx.__all__))
    assert not internal, f"docs/ documents names that symtorch_fx.__all__ does not export: {internal}"
    twice = {n: p for n, p in pages.items() if len(p) > 1}
    assert not twice, f"names documented on several pages (one anchor each): {twice}"


def test_docs_build_strict(tmp_path):
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f"{module} is not installed: the docs build needs the docs extra "
                        '(pip install -e ".[docs]"; the dev extra includes it)')
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    html = "\n".join(p.read_text(encoding="utf-8") for p in site.rglob("*.html"))
    unrendered = [n for n in sfx.__all__ if f'id="symtorch_fx.{n}"' not in html]
    assert not unrendered, f"public names the built site has no entry for: {unrendered}"
