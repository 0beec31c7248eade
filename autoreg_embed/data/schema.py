"""Validation of training rows: every problem names the column and the row, and says what to do."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class DataValidationError(ValueError):
    """A training or evaluation row does not have the expected shape."""


def require_columns(column_names: Iterable[str], required: Sequence[str], dataset_name: str) -> None:
    """Raise if any of ``required`` is not among ``column_names``."""
    present = set(column_names)
    missing = [column for column in required if column not in present]
    if missing:
        raise DataValidationError(
            f"{dataset_name} is missing column(s) {missing}; it has {sorted(present)}. "
            f"Rename your columns (e.g. dataset.rename_column('old', '{missing[0]}'))."
        )


def _location(column: str, row: int | str) -> str:
    """``Column 'c', row 3`` for a dataset index, ``data.jsonl, line 4, column 'c'`` for a place in a file."""
    return f"Column '{column}', row {row}" if isinstance(row, int) else f"{row}, column '{column}'"


def check_text(value: Any, column: str, row: int | str, allow_empty: bool = False) -> str:
    """Return ``value`` if it is a (non-empty) string, else raise naming column and row.

    ``row`` is a dataset index, or a place in a file such as ``"data.jsonl, line 4"``.
    """
    if not isinstance(value, str):
        raise DataValidationError(
            f"{_location(column, row)}: expected a string, got {type(value).__name__} ({value!r:.60}). "
            "Convert or drop this row."
        )
    if not allow_empty and not value.strip():
        raise DataValidationError(f"{_location(column, row)}: empty text. Drop or fill this row.")
    return value


def check_text_list(value: Any, column: str, row: int | str) -> list[str]:
    """A string or a non-empty list of strings (e.g. several negatives), returned as a list."""
    if isinstance(value, str):
        return [check_text(value, column, row)]
    if not isinstance(value, (list, tuple)) or not value:
        raise DataValidationError(
            f"{_location(column, row)}: expected a string or a non-empty list of strings, got {value!r:.60}."
        )
    return [check_text(item, column, row) for item in value]


def _check_row(
    row: Mapping[str, Any],
    where: int | str,
    text_columns: Sequence[str],
    list_columns: Sequence[str],
    optional_columns: Sequence[str],
) -> None:
    for column in text_columns:
        check_text(row[column], column, where)
    for column in list_columns:
        check_text_list(row[column], column, where)
    for column in optional_columns:
        if row.get(column) is not None:
            check_text(row[column], column, where, allow_empty=True)


def validate_rows(
    rows: Iterable[Mapping[str, Any]],
    text_columns: Sequence[str],
    dataset_name: str,
    optional_columns: Sequence[str] = (),
    list_columns: Sequence[str] = (),
) -> int:
    """Check every row up front (before any training step); return the number of rows.

    ``text_columns`` must hold non-empty strings, ``list_columns`` a string or a non-empty list of strings, and
    ``optional_columns`` either a string (possibly empty) or ``None``.
    """
    count = 0
    for row_index, row in enumerate(rows):
        _check_row(row, row_index, text_columns, list_columns, optional_columns)
        count += 1
    if count == 0:
        raise DataValidationError(f"{dataset_name} has no rows.")
    return count


def validate_records(
    records: Iterable[tuple[str, Mapping[str, Any]]],
    source: str,
    text_columns: Sequence[str],
    optional_columns: Sequence[str] = (),
    list_columns: Sequence[str] = (),
    optional_list_columns: Sequence[str] = (),
) -> int:
    """:func:`validate_rows` for records read from a file: every error names the file and 1-based line.

    ``records`` yields ``(where, record)`` as :func:`autoreg_embed.data.files.read_records` does. A column in
    ``optional_list_columns`` may be absent from the file; where one record has it, every record must.

    Raises:
        DataValidationError: a record lacks a required column or holds a wrong type; the file has no records.
    """
    required = [*text_columns, *list_columns]
    present_optional: list[str] | None = None
    count = 0
    for where, record in records:
        if present_optional is None:
            present_optional = [column for column in optional_list_columns if column in record]
        missing = [column for column in [*required, *present_optional] if column not in record]
        if missing:
            raise DataValidationError(
                f"{where}: missing column {missing[0]!r} (has {sorted(record)}). Every row needs {required}."
            )
        _check_row(record, where, text_columns, [*list_columns, *present_optional], optional_columns)
        count += 1
    if count == 0:
        raise DataValidationError(f"{source} has no rows.")
    return count
