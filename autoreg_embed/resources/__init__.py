"""Small data files shipped with the package for the quickstart (written by the autoreg-embed authors)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

QUICKSTART_FILES = {
    "compression": _HERE / "quickstart_compression.jsonl",
    "cda": _HERE / "quickstart_nli.jsonl",
}
"""Built-in example sets by stage: 48 invented (context, instruction, target) rows about fictional towns, and 32
(query, pos, neg) sentence triplets (an entailed and a contradicted sentence per premise)."""


def resolve_data_path(name: str, stage: str) -> str:
    """Map the name ``quickstart`` to the built-in file of ``stage``; return any other name unchanged."""
    if name == "quickstart":
        if stage not in QUICKSTART_FILES:
            raise ValueError(f"There is no built-in quickstart data for {stage!r}; pass a data file.")
        return str(QUICKSTART_FILES[stage])
    return name
