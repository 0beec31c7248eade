"""Reading data files record by record, with locations (file and 1-based line) for error messages.

Every problem is reported as ``"<file>, line <n>: ..."`` so that it can be fixed in an editor. Supported: JSON
Lines (one object per line), a JSON array of objects, CSV with a header line, and Parquet (``row <n>``, 1-based).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DATA_FILE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
"""File suffixes read as data files, with the ``datasets`` builder that loads each."""


def require_file(path: Path, what: str) -> None:
    """Raise ``FileNotFoundError`` naming ``what`` (e.g. "STS file") unless ``path`` is an existing file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")


def check_columns(record: Any, columns: tuple[str, ...], where: str) -> dict[str, Any]:
    """Return ``record`` if it is a JSON object holding every one of ``columns``, else raise ``ValueError``.

    ``where`` locates the record in messages, e.g. ``"data.jsonl, line 3"``.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for column in columns:
        if column not in record:
            raise ValueError(f"{where}: missing column {column!r} (has {sorted(record)})")
    return record


def read_jsonl(path: Path, columns: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, record)`` for each non-blank line of ``path``; ``line`` is the 1-based line number.

    Raises:
        ValueError: A line is not valid JSON, not an object, or lacks one of ``columns``.
    """
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: invalid JSON ({error.msg})") from error
            yield number, check_columns(record, columns, where)


def _json_array_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Records of a ``.json`` file: a JSON array of objects (item n is named by its line), or JSON Lines."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:  # datasets also reads JSON Lines from a .json file
        yield from ((f"{path}, line {number}", record) for number, record in read_jsonl(path))
        return
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}, as datasets' json builder accepts with field=
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of objects or one object per line")
    for index, record in enumerate(data, start=1):
        yield f"{path}, item {index}", record


def read_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` for every record of a data file, ``where`` being e.g. ``"data.jsonl, line 4"``.

    CSV values are strings (empty cells are ``None``); the header is line 1. Parquet rows are numbered from 1.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: an unsupported suffix, invalid JSON, or a record that is not an object.
    """
    path = Path(path)
    require_file(path, "Data file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        numbered: Iterator[tuple[str, Any]] = ((f"{path}, line {n}", record) for n, record in read_jsonl(path))
    elif suffix == ".json":
        numbered = _json_array_records(path)
    elif suffix == ".csv":
        numbered = _csv_records(path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        numbered = ((f"{path}, row {index}", row) for index, row in enumerate(table.to_pylist(), start=1))
    else:
        raise ValueError(f"{path}: unsupported data file type {suffix!r}; use one of {sorted(DATA_FILE_SUFFIXES)}")
    for where, record in numbered:
        yield where, check_columns(record, (), where)


def _csv_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:  # reads the header line
            return
        line = reader.line_num
        for row in reader:
            where = f"{path}, line {line + 1}"  # the line the record starts on
            line = reader.line_num
            if None in row:
                raise ValueError(f"{where}: more fields than the header names")
            yield where, {key: (value if value != "" else None) for key, value in row.items()}
