"""Reading JSONL records with errors that name the file, the row and the offending column."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from os import PathLike
from pathlib import Path
from typing import Any


def require_file(path: Path, what: str) -> None:
    """Raise ``FileNotFoundError`` naming ``what`` (e.g. "STS file") unless ``path`` is an existing file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")


def check_columns(record: Any, columns: tuple[str, ...], where: str) -> dict[str, Any]:
    """Return ``record`` if it is a JSON object holding every one of ``columns``, else raise ``ValueError``.

    ``where`` locates the record in messages, e.g. ``"data.jsonl, row 3"``.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for column in columns:
        if column not in record:
            raise ValueError(f"{where}: missing column {column!r} (has {sorted(record)})")
    return record


def read_jsonl(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row, record)`` for each non-blank line of ``path``; ``row`` is the 1-based line number.

    Raises:
        ValueError: A line is not valid JSON, not an object, or lacks one of ``columns``.
    """
    with path.open(encoding="utf-8") as lines:
        for row, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}, row {row}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: invalid JSON ({error.msg})") from error
            yield row, check_columns(record, columns, where)


def numbered_records(
    path_or_rows: str | PathLike[str] | Iterable[Mapping[str, Any]], columns: tuple[str, ...], what: str
) -> tuple[str, Iterator[tuple[str, dict[str, Any]]]]:
    """``(source, records)``: where the rows come from, and ``(where, record)`` pairs with every one of ``columns``.

    ``path_or_rows`` is a JSONL file (``where`` = ``"<path>, row <line>"``; a missing file is a
    ``FileNotFoundError`` naming ``what``) or the rows themselves (``where`` = ``"row <1-based position>"``).
    """
    if isinstance(path_or_rows, (str, PathLike)):
        path = Path(path_or_rows)
        require_file(path, what)
        return str(path), ((f"{path}, row {row}", record) for row, record in read_jsonl(path, columns))
    return "the given rows", (
        (f"row {row}", check_columns(record, columns, f"row {row}")) for row, record in enumerate(path_or_rows, start=1)
    )
