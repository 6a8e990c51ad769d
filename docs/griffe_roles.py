"""Griffe extension for the API reference: Sphinx roles in docstrings become links.

The docstrings use Sphinx cross-reference roles (:func:`convert`, :class:`~.x.Equation`,
:meth:`ParetoFront.plot`). mkdocstrings renders Markdown, so this rewrites each role, before
the docstrings are parsed, into an autorefs link to the public name it points at
(``[`convert`][symtorch_fx.convert]``), or into plain code when it names something internal or
undocumented -- a link that did not resolve would fail the strict build.

Loaded from mkdocs.yml (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|class|meth|attr|mod|exc|data|obj):`~?([^`]+)`")


def _public_map(pkg: griffe.Module) -> dict[str, str]:
    """Path of each re-exported object -> the public path it is documented under."""
    out = {}
    for name in pkg.exports or ():
        name = str(name)
        try:
            obj = pkg[name]
            path = obj.final_target.path if obj.is_alias else obj.path
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        out[path] = f"{pkg.path}.{name}"
    return out


def _documented(obj) -> bool:
    try:
        return bool(obj.docstring and obj.docstring.value.strip())
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return False


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of the package into Markdown."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        public = _public_map(pkg)

        def link(target: str, where) -> str:
            name = target.rsplit(".", 1)[-1] if target.startswith(".") else target
            candidates = [f"{pkg.path}.{name}"]
            # a bare member name in a public class's docstring: that class's member
            cls = where if where.is_class else where.parent
            if cls is not None and cls.is_class and cls.path in public:
                candidates.append(f"{public[cls.path]}.{name}")
            for path in candidates:
                head, _, rest = path[len(pkg.path) + 1:].partition(".")
                if head not in public.values() and f"{pkg.path}.{head}" not in public.values():
                    continue
                try:
                    obj = pkg[head]
                    for part in filter(None, rest.split(".")):
                        if part.startswith("_"):
                            raise KeyError(part)
                        obj = obj[part]
                except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                    continue
                if _documented(obj):
                    return f"[`{name}`][{path}]"
            return f"`{name}`"

        def walk(obj) -> None:
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = ROLE.sub(lambda m: link(m.group(1), obj), obj.docstring.value)
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)

        walk(pkg)
