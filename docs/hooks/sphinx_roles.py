"""Griffe extension: render the reStructuredText markup of our docstrings as Markdown cross-references.

The docstrings use Sphinx roles (``:class:`~autoreg_embed.CompressionTrainer```, ``:func:`encode```) and double
backticks for code. mkdocstrings reads Markdown, so, once the package is loaded, every role that names a public
object of the package becomes an autorefs link to that object's canonical path (shown as its last name with ``~``,
else as written); a role naming anything else (another library, a private helper) becomes inline code, and
double backticks become single ones.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")
DOUBLE_BACKTICKS = re.compile(r"``([^`]+)``")


class SphinxRoles(griffe.Extension):
    """Rewrites the docstrings of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = self.rewrite(obj.docstring.value, obj, pkg)

    def rewrite(self, text: str, obj: griffe.Object, pkg: griffe.Module) -> str:
        def link(match: re.Match[str]) -> str:
            short, path = match.group(1) == "~", match.group(2).rstrip("()")
            shown = path.rsplit(".", 1)[-1] if short else path
            target = _resolve(path, obj, pkg)
            return f"[`{shown}`][{target}]" if target else f"`{shown}`"

        return DOUBLE_BACKTICKS.sub(r"`\1`", ROLE.sub(link, text))


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found += _walk(member)
    return found


def _resolve(path: str, obj: griffe.Object, pkg: griffe.Module) -> str | None:
    """The canonical path of the documented public object ``path`` names (absolute, or relative to ``obj``)."""
    for base in ("", obj.path, *(parent.path for parent in _parents(obj))):
        candidate = f"{base}.{path}" if base else path
        if candidate != pkg.path and not candidate.startswith(pkg.path + "."):
            continue
        try:
            target = pkg.modules_collection[candidate]
            target = target.final_target if target.is_alias else target
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        rendered = target.docstring is not None  # mkdocstrings renders documented objects only
        if rendered and target.path.startswith(pkg.path) and not any(p.startswith("_") for p in target.path.split(".")):
            return target.path
    return None


def _parents(obj: griffe.Object) -> list[griffe.Object]:
    parents = []
    while obj.parent is not None:
        obj = obj.parent
        parents.append(obj)
    return parents
