"""Choice-valued options: ``Literal`` field types (so that the command line lists the choices) and their check."""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` (or ``Literal[...] | None``, then with ``None``) type, else ``None``."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        members = get_args(annotation)
        literals = [member for member in members if get_origin(member) is Literal]
        if len(literals) == 1 and len(members) == 2 and type(None) in members:
            return (*get_args(literals[0]), None)
    return None


def check_choices(options: Any, package: str = "autoreg_embed") -> None:
    """Raise ``ValueError`` naming the option if a ``Literal``-typed field holds a value outside its choices.

    Only fields declared by classes of ``package`` are checked (a ``TrainingArguments`` subclass leaves the
    Trainer's own options to the Trainer). Dataclasses do not check their field types themselves, so a config built
    in Python with a misspelt choice would otherwise pass silently.
    """
    hints = get_type_hints(type(options))
    declared = {
        name
        for cls in type(options).__mro__
        if cls.__module__.startswith(package)
        for name in vars(cls).get("__annotations__", {})
    }
    for name in sorted(declared):
        choices = literal_choices(hints.get(name))
        value = getattr(options, name, None)
        if choices is not None and value not in choices:
            shown = [choice for choice in choices if choice is not None]
            raise ValueError(f"{name} must be one of {shown}, got {value!r}.")
