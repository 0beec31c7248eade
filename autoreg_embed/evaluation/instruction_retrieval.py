"""Instruction-following retrieval: does the embedding of one text follow the instruction it is embedded with?

Rows are (``context``, ``instruction``, ``target``) triples where one context comes with several questions, as in
SQuAD / XQuAD (4-5 questions per paragraph). Each (context, question) pair is embedded as a query, with the
question as the instruction, and ranks the answers of *the same context's* questions: the context alone cannot
tell them apart, only the instruction can. The same ranking with the instruction removed (the context embedded
once, without instruction) scores what the text alone gives; the gap is the instruction-following effect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from autoreg_embed.data.files import numbered_records

INSTRUCTION_RETRIEVAL_COLUMNS = ("context", "instruction", "target")
"""The fields every row needs: the text, the question (instruction) and its answer."""


@dataclass
class ContextQuestions:
    """One context with its questions and the distinct answers they are ranked against."""

    context: str
    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    """The candidates: the distinct answers of this context's questions."""
    gold: list[int] = field(default_factory=list)
    """Index into :attr:`answers` of each question's answer."""


def _checked_text(record: dict[str, Any], column: str, where: str) -> str:
    value = record[column]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: column {column!r} must be a non-empty string, got {value!r:.60}")
    return value


def load_instruction_retrieval_rows(
    path_or_rows: str | PathLike[str] | Iterable[Mapping[str, Any]], *, limit_contexts: int | None = None
) -> list[ContextQuestions]:
    """Group (``context``, ``instruction``, ``target``) rows by context, in order of first appearance.

    A question repeated within a context is kept once; answers are compared as exact strings, so two questions
    with the same answer share one candidate. Contexts with fewer than two distinct answers are dropped (there is
    nothing to rank).

    Args:
        path_or_rows: a JSONL file (e.g. ``../shared/data/compression/xquad_en.jsonl``) or the rows themselves.
        limit_contexts: keep only the first ``limit_contexts`` usable contexts.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a row is not an object, lacks a column or has an empty / non-string field (the message names
            the row), no context has two distinct answers, or ``limit_contexts`` < 1.
    """
    if limit_contexts is not None and limit_contexts < 1:
        raise ValueError(f"limit_contexts must be at least 1, got {limit_contexts}")
    source, numbered = numbered_records(path_or_rows, INSTRUCTION_RETRIEVAL_COLUMNS, "instruction-retrieval file")
    groups: dict[str, ContextQuestions] = {}
    for where, record in numbered:
        context, question, answer = (_checked_text(record, column, where) for column in INSTRUCTION_RETRIEVAL_COLUMNS)
        group = groups.setdefault(context, ContextQuestions(context))
        if question in group.questions:
            continue
        if answer not in group.answers:
            group.answers.append(answer)
        group.questions.append(question)
        group.gold.append(group.answers.index(answer))
    usable = [group for group in groups.values() if len(group.answers) >= 2]
    if not usable:
        raise ValueError(f"{source}: no context has two questions with different answers; nothing to rank.")
    return usable[:limit_contexts] if limit_contexts is not None else usable


def gold_ranks(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's gold candidate in (Q, C) ``scores``: the candidates scored at least as high.

    Ties count against the gold candidate, so a collapsed model (equal scores everywhere) ranks it last.
    """
    gold_scores = scores.gather(1, gold[:, None])
    return (scores >= gold_scores).sum(dim=1)


def _rank_metrics(ranks: torch.Tensor) -> dict[str, float]:
    ranks = ranks.double()
    return {"accuracy@1": 100 * float((ranks == 1).double().mean()), "mrr": 100 * float((1 / ranks).mean())}


def _unit(embeddings: Any) -> torch.Tensor:
    return F.normalize(torch.as_tensor(embeddings).float().cpu(), dim=-1)


def evaluate_instruction_retrieval(
    model: SentenceTransformer,
    path_or_rows: str | PathLike[str] | Iterable[Mapping[str, Any]],
    *,
    batch_size: int = 32,
    limit_contexts: int | None = None,
    show_progress_bar: bool = True,
) -> dict[str, Any]:
    """Accuracy@1 and MRR of ranking each question's answer among its context's answers, with and without it.

    Queries: ``model.encode_query([context], prompt=question)`` (for autoreg-embed models the question fills the
    template's ``{instruction}`` slot; other sentence-transformers models prepend it to the text). Without
    instruction: ``model.encode_query(context, prompt="")``, one embedding per context. Candidates:
    ``model.encode_document(answers)``. Similarity: cosine.

    Returns:
        ``{"with_instruction": {"accuracy@1", "mrr"}, "without_instruction": {...}, "gap": {...} (with minus
        without), "chance": {...} (the expectation under a random ranking), "n_queries", "n_contexts",
        "mean_candidates"}``; metrics x 100.

    Raises:
        FileNotFoundError, ValueError: bad input, see :func:`load_instruction_retrieval_rows`.
    """
    groups = load_instruction_retrieval_rows(path_or_rows, limit_contexts=limit_contexts)
    answers = [answer for group in groups for answer in group.answers]
    documents = _unit(model.encode_document(answers, batch_size=batch_size, convert_to_tensor=True))
    contexts = _unit(
        model.encode_query(
            [group.context for group in groups], prompt="", batch_size=batch_size, convert_to_tensor=True
        )
    )
    questions = [(index, question) for index, group in enumerate(groups) for question in group.questions]
    queries = torch.cat(
        [
            _unit(model.encode_query([groups[index].context], prompt=question, convert_to_tensor=True))
            for index, question in tqdm(questions, desc="Instruction retrieval", disable=not show_progress_bar)
        ]
    )
    ranks: dict[str, list[torch.Tensor]] = {"with_instruction": [], "without_instruction": []}
    chance: list[float] = []
    offset, row = 0, 0
    for index, group in enumerate(groups):
        candidates = documents[offset : offset + len(group.answers)]
        gold = torch.tensor(group.gold)
        count = len(group.questions)
        with_instruction = queries[row : row + count] @ candidates.T
        without_instruction = contexts[index].expand(count, -1) @ candidates.T
        ranks["with_instruction"].append(gold_ranks(with_instruction, gold))
        ranks["without_instruction"].append(gold_ranks(without_instruction, gold))
        candidates_count = len(group.answers)
        chance += [sum(1 / rank for rank in range(1, candidates_count + 1)) / candidates_count] * count
        offset, row = offset + candidates_count, row + count
    results: dict[str, Any] = {name: _rank_metrics(torch.cat(values)) for name, values in ranks.items()}
    results["gap"] = {
        metric: results["with_instruction"][metric] - results["without_instruction"][metric]
        for metric in ("accuracy@1", "mrr")
    }
    candidates_per_query = torch.tensor([len(group.answers) for group in groups for _ in group.questions]).double()
    results["chance"] = {
        "accuracy@1": 100 * float((1 / candidates_per_query).mean()),
        "mrr": 100 * sum(chance) / len(chance),
    }
    results["n_queries"] = len(questions)
    results["n_contexts"] = len(groups)
    results["mean_candidates"] = float(candidates_per_query.mean())
    return results
