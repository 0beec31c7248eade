"""Data files read record by record: every error names the file and its 1-based line (CLI checks before loading)."""

from __future__ import annotations

import json

import pytest
from helpers import write_jsonl

from autoreg_embed.data.files import read_records
from autoreg_embed.data.schema import DataValidationError, validate_records

COLUMNS = {"text_columns": ("context", "target"), "optional_columns": ("instruction",)}


def test_jsonl_lines_are_numbered_from_one_counting_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"context": "a", "target": "b"}\n\n{"context": "c", "target": 3}\n', encoding="utf-8")
    assert [where for where, _ in read_records(path)] == [f"{path}, line 1", f"{path}, line 3"]
    with pytest.raises(DataValidationError, match=rf"^{path}, line 3, column 'target': expected a string, got int"):
        validate_records(read_records(path), str(path), **COLUMNS)


def test_csv_lines_count_the_header_and_multiline_fields(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('context,target\n"two\nlines",b\nc,\n', encoding="utf-8")
    records = list(read_records(path))
    assert [where for where, _ in records] == [f"{path}, line 2", f"{path}, line 4"]
    assert records[1][1] == {"context": "c", "target": None}
    with pytest.raises(DataValidationError, match=rf"{path}, line 4, column 'target': expected a string, got NoneType"):
        validate_records(records, str(path), **COLUMNS)


def test_json_array_and_parquet(tmp_path):
    rows = [{"context": "a", "target": "b"}, {"context": "c"}]
    array = tmp_path / "rows.json"
    array.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(DataValidationError, match=rf"{array}, item 2: missing column 'target'"):
        validate_records(read_records(array), str(array), **COLUMNS)
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = tmp_path / "rows.parquet"
    pq.write_table(pyarrow.Table.from_pylist([{"context": "a", "target": "b"}, {"context": "", "target": "d"}]), table)
    with pytest.raises(DataValidationError, match=rf"{table}, row 2, column 'context': empty text"):
        validate_records(read_records(table), str(table), **COLUMNS)


def test_optional_list_column_present_in_the_first_record_is_required_in_all(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"query": "q", "pos": "p", "neg": ["n"]}, {"query": "q", "pos": "p"}])
    with pytest.raises(DataValidationError, match=rf"{path}, line 2: missing column 'neg'"):
        validate_records(read_records(path), str(path), ("query", "pos"), optional_list_columns=("neg",))
    good = write_jsonl(tmp_path / "g.jsonl", [{"query": "q", "pos": "p"}])
    assert validate_records(read_records(good), str(good), ("query", "pos"), optional_list_columns=("neg",)) == 1


def test_bad_files(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"context": "a"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{broken}, line 2: invalid JSON"):
        list(read_records(broken))
    with pytest.raises(ValueError, match=r"unsupported data file type '\.txt'"):
        list(read_records(write_jsonl(tmp_path / "rows.txt", [])))
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataValidationError, match="has no rows"):
        validate_records(read_records(empty), str(empty), **COLUMNS)
