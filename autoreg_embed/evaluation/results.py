"""Saving evaluation results next to a model and summarising them on one line."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from importlib.metadata import version
from os import PathLike
from pathlib import Path
from typing import Any

RESULTS_SUBDIR = "eval"
"""The folder inside a model folder that holds the result files."""

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _json_ready(value: Any) -> Any:
    """``value`` with mappings as dicts, tuples as lists and NaN/inf as None (strict JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(results: Mapping[str, Any], model_path: str | PathLike[str], name: str) -> Path:
    """Save ``results`` as ``<model_path>/eval/<name>.json`` and return that path.

    The file is written to a temporary file in the same folder and moved into place, so readers never see a
    partial file. It holds ``{"name", "date" (UTC, ISO 8601), "versions" (mteb, sentence_transformers),
    "results"}``, where non-finite floats in ``results`` become ``null``.

    Args:
        results: JSON-serialisable results, e.g. the dict returned by ``evaluate_sts``.
        model_path: The saved model's folder; ``eval/`` is created inside it.
        name: The file's stem, e.g. ``"stsb_dev"``: letters, digits, ``_``, ``.`` and ``-``.

    Raises:
        FileNotFoundError: ``model_path`` is not a folder.
        ValueError: ``name`` is not a plain file stem.
        TypeError: ``results`` holds something JSON cannot represent.
    """
    model_dir = Path(model_path)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"Model folder not found: {model_dir}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"Invalid results name {name!r}: use letters, digits, '_', '.' and '-' only")
    payload = {
        "name": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"mteb": version("mteb"), "sentence_transformers": version("sentence-transformers")},
        "results": _json_ready(results),
    }
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    out_dir = model_dir / RESULTS_SUBDIR
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{name}.json"
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
        os.chmod(tmp_name, 0o644)  # mkstemp creates the file private to its owner
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def read_results(model_path: str | PathLike[str]) -> dict[str, Any]:
    """``{name: results}`` of every file :func:`write_results` wrote for a model (``{}`` when there are none)."""
    results: dict[str, Any] = {}
    for path in sorted((Path(model_path) / RESULTS_SUBDIR).glob("*.json")):
        payload = json.loads(path.read_text(encoding="utf-8"))
        results[payload.get("name", path.stem)] = payload.get("results")
    return results


def _flatten(results: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in results.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _format_value(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def format_summary(results: Mapping[str, Any]) -> str:
    """One line ``key=value ...`` for printing; nested mappings give dotted keys, floats show 2 decimals.

    Example: ``{"spearman": 81.234, "pearson": 80.0, "n": 1500}`` gives
    ``"spearman=81.23 pearson=80.00 n=1500"``.
    """
    return " ".join(f"{key}={_format_value(value)}" for key, value in _flatten(results))
