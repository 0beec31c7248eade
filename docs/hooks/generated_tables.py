"""mkdocs hook: pages get their option tables and API listings from the code, never copied by hand.

Markers (HTML comments, so that a page still reads well on GitHub) are replaced when the site is built:

- ``<!-- options: dotted.path.Class -->``: a table of the options the autoreg-embed classes in ``Class``'s MRO
  declare (the inherited ``transformers.TrainingArguments`` options are left out), grouped by declaring class,
  with default, choices and the ``metadata["help"]`` text. ``<!-- options: dotted.path.Class declared -->``
  lists only the options ``Class`` itself declares.
- ``<!-- api: package -->``: one mkdocstrings ``:::`` block per public module of ``package``.
- ``<!-- cli-commands -->``: the subcommands of ``autoreg-embed`` with their one-line summaries.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from typing import Any, get_type_hints

from autoreg_embed.options import declared_options, literal_choices

MARKER = re.compile(r"<!-- (options|api|cli-commands):?\s*([\w.]*)\s*(declared)?\s*-->")


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(field: dataclasses.Field) -> str:
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    elif field.default is not dataclasses.MISSING:
        value = field.default
    else:
        return "required"
    return "unset" if value is None else f"`{_cell(repr(value))}`"


def _type(annotation: Any) -> str:
    choices = literal_choices(annotation)
    if choices is not None:
        return " / ".join(f"`{choice}`" for choice in choices if choice is not None)
    name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
    return f"`{_cell(name)}`"


def options_table(path: str, declared_only: bool = False) -> str:
    """The Markdown tables of the options ``path``'s class declares (its own and its autoreg-embed bases')."""
    cls = _import(path)
    hints = get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    declared = declared_options(cls)
    owners = [cls] if declared_only else list(dict.fromkeys(declared.values()))
    parts = []
    for owner in owners:
        names = [name for name in fields if declared.get(name) is owner]
        if not names:
            continue
        if len(owners) > 1:
            parts.append(f"**{owner.__name__}**\n")
        rows = ["| option | type / choices | default | description |", "|---|---|---|---|"]
        for name in names:
            field = fields[name]
            help_text = _cell(field.metadata.get("help", ""))
            rows.append(f"| `{name}` | {_type(hints[name])} | {_default(field)} | {help_text} |")
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def api_blocks(package: str) -> str:
    """A mkdocstrings block for each public module of ``package`` (the package itself first when it is a module)."""
    module = importlib.import_module(package)
    names = [package]
    if hasattr(module, "__path__"):
        names = [
            f"{package}.{info.name}" for info in pkgutil.iter_modules(module.__path__) if not info.name.startswith("_")
        ]
    return "\n".join(f"::: {name}\n" for name in names)


def cli_commands() -> str:
    from autoreg_embed.cli.main import commands

    rows = ["| command | what it does |", "|---|---|"]
    rows += [f"| `autoreg-embed {name}` | {_cell(summary)} |" for name, (summary, _) in commands().items()]
    return "\n".join(rows) + "\n"


def _expand(match: re.Match[str]) -> str:
    kind, argument, declared = match.groups()
    if kind == "options":
        return options_table(argument, declared_only=bool(declared))
    if kind == "api":
        return api_blocks(argument)
    return cli_commands()


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace every marker of the page (mkdocs calls this before the Markdown is rendered)."""
    return MARKER.sub(_expand, markdown)
