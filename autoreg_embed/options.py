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


PACKAGE = "autoreg_embed"


def declared_options(cls: type, package: str = PACKAGE) -> dict[str, type]:
    """Option name -> the class of ``package`` that declares it, for every option ``cls``'s MRO declares there.

    Most specific class first; options inherited from other libraries (``TrainingArguments``) are left out. An
    option a package class re-declares (e.g. a stage's own ``learning_rate`` default) counts as the package's.
    """
    owners: dict[str, type] = {}
    for owner in cls.__mro__:
        if owner.__module__.startswith(package):
            for name in vars(owner).get("__annotations__", {}):
                owners.setdefault(name, owner)
    return owners


def check_choices(options: Any, package: str = PACKAGE) -> None:
    """Raise ``ValueError`` naming the option if a ``Literal``-typed field holds a value outside its choices.

    Only fields declared by classes of ``package`` are checked (a ``TrainingArguments`` subclass leaves the
    Trainer's own options to the Trainer). Dataclasses do not check their field types themselves, so a config built
    in Python with a misspelt choice would otherwise pass silently.
    """
    hints = get_type_hints(type(options))
    for name in declared_options(type(options), package):
        choices = literal_choices(hints.get(name))
        value = getattr(options, name, None)
        if choices is not None and value not in choices:
            shown = [choice for choice in choices if choice is not None]
            raise ValueError(f"{name} must be one of {shown}, got {value!r}.")
