"""Offline retrieval on a BEIR-style folder: nDCG@10, recall@10 and MRR@10.

The folder runs through mteb's own retrieval evaluator (:class:`mteb.abstasks.retrieval.AbsTaskRetrieval`,
scored by ``pytrec_eval``) as a local task: queries are encoded with ``encode_query`` and documents with
``encode_document``, each with the prompt mteb picks from the model's ``prompts``.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

from datasets import Dataset
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata

from autoreg_embed.data.files import read_jsonl, require_file
from autoreg_embed.evaluation.mteb_tasks import Encoder, run_local_task

QRELS_HEADER = ("query-id", "corpus-id", "score")
"""The header line of a qrels file (tab-separated)."""


def _read_texts(path: Path, what: str) -> dict[str, dict[str, str]]:
    """``{_id: {"title": ..., "text": ...}}`` from a corpus or queries JSONL file (``title`` is optional)."""
    require_file(path, what)
    records: dict[str, dict[str, str]] = {}
    for line, record in read_jsonl(path, ("_id", "text")):
        where = f"{path}, line {line}"
        doc_id = str(record["_id"])
        if doc_id in records:
            raise ValueError(f"{where}: duplicate _id {doc_id!r}")
        title = record.get("title") or ""
        if not isinstance(record["text"], str) or not isinstance(title, str):
            raise ValueError(f"{where}: columns 'text' and 'title' must be strings")
        records[doc_id] = {"title": title, "text": record["text"]}
    if not records:
        raise ValueError(f"{path}: no {what} rows")
    return records


def _read_qrels(path: Path, query_ids: set[str], corpus_ids: set[str]) -> dict[str, dict[str, int]]:
    """``{query id: {corpus id: relevance}}`` from a qrels TSV, checking every id against the known ids."""
    relevant: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as lines:
        header = tuple(next(lines, "").rstrip("\r\n").split("\t"))
        if header != QRELS_HEADER:
            expected = "<TAB>".join(QRELS_HEADER)
            raise ValueError(f"{path}, line 1: expected the header {expected!r}, got {header}")
        for number, text in enumerate(lines, start=2):
            if not text.strip():
                continue
            where = f"{path}, line {number}"
            fields = text.rstrip("\r\n").split("\t")
            if len(fields) != len(QRELS_HEADER):
                raise ValueError(f"{where}: expected 3 tab-separated fields, got {len(fields)}")
            query_id, corpus_id, score = fields
            if query_id not in query_ids:
                raise ValueError(f"{where}: query-id {query_id!r} is not in queries.jsonl")
            if corpus_id not in corpus_ids:
                raise ValueError(f"{where}: corpus-id {corpus_id!r} is not in corpus.jsonl")
            try:
                relevance = int(score)
            except ValueError:
                raise ValueError(f"{where}: score {score!r} is not an integer") from None
            relevant.setdefault(query_id, {})[corpus_id] = relevance
    if not relevant:
        raise ValueError(f"{path}: no relevance judgements")
    return relevant


def load_beir_folder(folder: str | PathLike[str], *, split: str = "test") -> RetrievalSplitData:
    """Read and check a BEIR-style folder into mteb's retrieval split format.

    The folder holds ``corpus.jsonl`` (``_id``, ``text``, optional ``title``), ``queries.jsonl`` (``_id``,
    ``text``) and ``qrels.tsv`` (header ``query-id corpus-id score``, tab-separated, integer scores); a folder
    without ``qrels.tsv`` may use BEIR's own layout, ``qrels/<split>.tsv``. Ids are compared as strings.
    Queries without judgements are left out of the scores.

    Raises:
        FileNotFoundError: The folder or one of its files is missing.
        ValueError: A row lacks a column, an id is duplicated, the qrels header is wrong, a qrels score is not
            an integer, or the qrels reference a query or document id the folder does not have (the message
            names the file and line).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"BEIR folder not found: {root}")
    corpus = _read_texts(root / "corpus.jsonl", "corpus")
    queries = _read_texts(root / "queries.jsonl", "queries")
    qrels_path = root / "qrels.tsv"
    if not qrels_path.is_file():
        qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise FileNotFoundError(f"qrels not found: neither {root / 'qrels.tsv'} nor {qrels_path} exists")
    relevant = _read_qrels(qrels_path, set(queries), set(corpus))
    return RetrievalSplitData(
        corpus=Dataset.from_list([{"id": doc_id, **fields} for doc_id, fields in corpus.items()]),
        queries=Dataset.from_list([{"id": qid, "text": query["text"]} for qid, query in queries.items()]),
        relevant_docs=relevant,
        top_ranked=None,
    )


class LocalRetrievalTask(AbsTaskRetrieval):
    """An mteb retrieval task over a split held in memory (split ``"test"``), run offline by mteb.

    mteb encodes queries with the model's ``"Retrieval-query"``, else ``"Retrieval"``, else ``"query"``
    prompt, and documents (title and text joined by a space) with ``"Retrieval-document"``, else
    ``"Retrieval"``, else ``"document"``.
    """

    metadata = TaskMetadata(
        name="LocalRetrieval",
        description="Queries, documents and relevance judgements read from a local BEIR-style folder.",
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        dataset={"path": "local", "revision": "local"},
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
    )

    def __init__(self, split: RetrievalSplitData, **kwargs: Any) -> None:
        """Wrap ``split`` as returned by :func:`load_beir_folder`; ``kwargs`` go to ``AbsTaskRetrieval``."""
        super().__init__(**kwargs)
        self.split = split

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        """Use the split held in memory (no download); mteb edits its copy, not ``self.split``."""
        self.dataset = {"default": {"test": RetrievalSplitData(**self.split)}}
        self.data_loaded = True


def evaluate_retrieval(
    model: Encoder,
    folder: str | PathLike[str],
    *,
    split: str = "test",
    batch_size: int = 32,
    show_progress_bar: bool = False,
) -> dict[str, float | int]:
    """Score ``model`` on a BEIR-style folder (see :func:`load_beir_folder`) by exact search over the corpus.

    Args:
        model: A ``SentenceTransformer`` or any mteb encoder.
        folder: The BEIR-style folder.
        split: The qrels file to use in BEIR's ``qrels/<split>.tsv`` layout (ignored if ``qrels.tsv`` exists).
        batch_size: Encoding batch size.
        show_progress_bar: Show a progress bar over the encoding batches.

    Returns:
        ``{"ndcg@10", "recall@10", "mrr@10"}`` x 100 (averaged over the judged queries; mteb rounds the
        fractions to 5 decimals) plus ``"n_queries"`` (judged queries) and ``"n_documents"``.

    Raises:
        FileNotFoundError, ValueError: Bad input, see :func:`load_beir_folder`.
    """
    data = load_beir_folder(folder, split=split)
    scores = run_local_task(model, LocalRetrievalTask(data), batch_size=batch_size, show_progress_bar=show_progress_bar)
    return {
        "ndcg@10": 100 * float(scores["ndcg_at_10"]),
        "recall@10": 100 * float(scores["recall_at_10"]),
        "mrr@10": 100 * float(scores["mrr_at_10"]),
        "n_queries": len(data["relevant_docs"]),
        "n_documents": len(data["corpus"]),
    }
