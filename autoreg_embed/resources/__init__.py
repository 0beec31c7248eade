"""Small data files shipped with the package for the quickstart (written by the autoreg-embed authors)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

QUICKSTART_FILES = {
    "compression": _HERE / "quickstart_compression.jsonl",
    "cda": _HERE / "quickstart_nli.jsonl",
    "sentences": _HERE / "quickstart_sentences.jsonl",
    "heldout_sentences": _HERE / "quickstart_sentences_heldout.jsonl",
    "sts": _HERE / "quickstart_sts.jsonl",
}
"""Built-in data sets, all written for this package: ``compression``, 48 invented (context, instruction, target)
rows about fictional towns; ``cda``, 96 (query, pos, neg) sentence triplets (an entailed and a contradicted
sentence per premise); ``sentences``, 322 short everyday sentences as autoencoding rows (context = target, the
PromptEOL instruction "means in one word") and ``heldout_sentences``, 40 more (never trained on by
``autoreg-embed quickstart``: its readout gain and collapse alarm); ``sts``, 115 held-out sentence pairs with a
0-5 similarity score (sentence1, sentence2, score), spread over the range."""


def resolve_data_path(name: str, stage: str) -> str:
    """Map the name ``quickstart`` to the built-in file of ``stage``; return any other name unchanged."""
    if name == "quickstart":
        if stage not in QUICKSTART_FILES:
            raise ValueError(f"There is no built-in quickstart data for {stage!r}; pass a data file.")
        return str(QUICKSTART_FILES[stage])
    return name
