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


def check_text(value: Any, column: str, row: int, allow_empty: bool = False) -> str:
    """Return ``value`` if it is a (non-empty) string, else raise naming column and row."""
    if not isinstance(value, str):
        raise DataValidationError(
            f"Column '{column}', row {row}: expected a string, got {type(value).__name__} ({value!r:.60}). "
            "Convert or drop this row."
        )
    if not allow_empty and not value.strip():
        raise DataValidationError(f"Column '{column}', row {row}: empty text. Drop or fill this row.")
    return value


def check_text_list(value: Any, column: str, row: int) -> list[str]:
    """A string or a non-empty list of strings (e.g. several negatives), returned as a list."""
    if isinstance(value, str):
        return [check_text(value, column, row)]
    if not isinstance(value, (list, tuple)) or not value:
        raise DataValidationError(
            f"Column '{column}', row {row}: expected a string or a non-empty list of strings, got {value!r:.60}."
        )
    return [check_text(item, column, row) for item in value]


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
        for column in text_columns:
            check_text(row[column], column, row_index)
        for column in list_columns:
            check_text_list(row[column], column, row_index)
        for column in optional_columns:
            if row.get(column) is not None:
                check_text(row[column], column, row_index, allow_empty=True)
        count += 1
    if count == 0:
        raise DataValidationError(f"{dataset_name} has no rows.")
    return count
