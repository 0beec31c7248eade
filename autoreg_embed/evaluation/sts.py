"""Offline semantic textual similarity (STS): Spearman correlation of cosine similarity with gold scores.

The rows run through mteb's own STS evaluator (:class:`mteb.abstasks.sts.AbsTaskSTS`) as a local task, so the
numbers are computed exactly as for mteb's STS benchmarks, without the Hugging Face hub.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
from mteb.types import PromptType
from sentence_transformers import SentenceTransformer

from autoreg_embed.data.files import check_columns, read_jsonl, require_file
from autoreg_embed.evaluation.mteb_tasks import Encoder, run_local_task

STS_COLUMNS = ("sentence1", "sentence2", "score")
"""The fields every STS row needs."""


def _as_float(value: Any) -> float:
    """``value`` (a number or a numeric string) as a float; NaN for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return math.nan
    try:
        return float(value)
    except ValueError:
        return math.nan


def _checked_row(record: dict[str, Any], where: str) -> dict[str, Any]:
    for column in ("sentence1", "sentence2"):
        if not isinstance(record[column], str):
            raise ValueError(f"{where}: column {column!r} must be a string, got {record[column]!r}")
    score = _as_float(record["score"])
    if not math.isfinite(score):
        raise ValueError(f"{where}: column 'score' must be a finite number, got {record['score']!r}")
    return {"sentence1": record["sentence1"], "sentence2": record["sentence2"], "score": score}


def load_sts_rows(
    path_or_rows: str | PathLike[str] | Iterable[Mapping[str, Any]], *, limit: int | None = None
) -> list[dict[str, Any]]:
    """Read and check STS rows: ``sentence1`` and ``sentence2`` (strings) and a numeric ``score``.

    Args:
        path_or_rows: A JSONL file with one row per line, or the rows themselves.
        limit: Keep only the first ``limit`` rows.

    Returns:
        Rows with exactly ``sentence1``, ``sentence2`` and ``score`` (a float).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A row is not an object, lacks a column, has a non-string sentence or a non-numeric
            score (the message names the row: its line for a file, its 1-based position otherwise), or fewer
            than two rows remain (a correlation needs two).
    """
    if limit is not None and limit < 2:
        raise ValueError(f"limit must be at least 2 (a correlation needs two rows), got {limit}")
    if isinstance(path_or_rows, (str, PathLike)):
        path = Path(path_or_rows)
        require_file(path, "STS file")
        source = str(path)
        numbered = ((f"{path}, line {line}", record) for line, record in read_jsonl(path, STS_COLUMNS))
    else:
        source = "the given rows"
        numbered = (
            (f"row {row}", check_columns(record, STS_COLUMNS, f"row {row}"))
            for row, record in enumerate(path_or_rows, start=1)
        )
    rows: list[dict[str, Any]] = []
    for where, record in numbered:
        rows.append(_checked_row(record, where))
        if len(rows) == limit:
            break
    if len(rows) < 2:
        raise ValueError(f"{source}: need at least 2 STS rows, found {len(rows)}")
    return rows


class LocalSTSTask(AbsTaskSTS):
    """An mteb STS task over rows held in memory (split ``"test"``), run offline by ``mteb.evaluate``.

    Both sentences of a pair are encoded as documents, so mteb picks the model's prompt named
    ``"STS-document"``, else ``"STS"``, else ``"document"`` (mteb ignores prompt names that are not registered
    task names, task types or prompt types, so the task name ``"LocalSTS"`` itself cannot key a prompt).
    """

    metadata = TaskMetadata(
        name="LocalSTS",
        description="Sentence pairs with gold similarity scores, read from a local file.",
        type="STS",
        category="t2t",
        modalities=["text"],
        dataset={"path": "local", "revision": "local"},
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="cosine_spearman",
    )
    input1_prompt_type = PromptType.document
    input2_prompt_type = PromptType.document

    def __init__(self, rows: Sequence[Mapping[str, Any]], **kwargs: Any) -> None:
        """Wrap ``rows`` as returned by :func:`load_sts_rows`; ``kwargs`` go to ``AbsTaskSTS``."""
        super().__init__(**kwargs)
        self.rows = rows

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        """Build the ``test`` split from the rows (no download)."""
        columns = {column: [row[column] for row in self.rows] for column in STS_COLUMNS}
        self.dataset = DatasetDict({"test": Dataset.from_dict(columns)})
        self.data_loaded = True


def _with_named_prompt(model: Encoder, task: LocalSTSTask, prompt_name: str | None) -> Encoder:
    """``model`` wrapped for mteb so that ``task`` is encoded with the model's prompt ``prompt_name``."""
    if prompt_name is None:
        return model
    if not isinstance(model, SentenceTransformer):
        raise TypeError(f"prompt_name needs a SentenceTransformer, got {type(model).__name__}")
    if prompt_name not in model.prompts:
        raise ValueError(f"Unknown prompt_name {prompt_name!r}; the model has {sorted(model.prompts)}")
    wrapper = SentenceTransformerEncoderWrapper(model)
    # The task name outranks the task type and the prompt type in mteb's prompt lookup.
    wrapper.model_prompts = {task.metadata.name: model.prompts[prompt_name]}
    return wrapper


def evaluate_sts(
    model: Encoder,
    path_or_rows: str | PathLike[str] | Iterable[Mapping[str, Any]],
    *,
    prompt_name: str | None = None,
    batch_size: int = 32,
    limit: int | None = None,
    show_progress_bar: bool = False,
) -> dict[str, float | int]:
    """Score ``model`` on STS rows: correlation of the cosine similarity of each pair with its gold score.

    Args:
        model: A ``SentenceTransformer`` or any mteb encoder.
        path_or_rows: A JSONL file with ``sentence1``, ``sentence2`` and ``score`` per line (e.g.
            ``stsb_dev.jsonl``, scores 0-5), or such rows. The score range does not affect the correlations.
        prompt_name: Encode both sentences with this entry of ``model.prompts``; by default mteb picks the
            prompt (see :class:`LocalSTSTask`), which for our models is the ``"document"`` one.
        batch_size: Encoding batch size.
        limit: Use only the first ``limit`` rows.
        show_progress_bar: Show a progress bar over the encoding batches.

    Returns:
        ``{"spearman": ..., "pearson": ..., "n": ...}``: Spearman and Pearson correlations x 100 between
        cosine similarity and gold score, and the number of pairs.

    Raises:
        FileNotFoundError, ValueError: Bad input, see :func:`load_sts_rows`; an unknown ``prompt_name``.
    """
    task = LocalSTSTask(load_sts_rows(path_or_rows, limit=limit))
    scores = run_local_task(
        _with_named_prompt(model, task, prompt_name), task, batch_size=batch_size, show_progress_bar=show_progress_bar
    )
    return {
        "spearman": 100 * float(scores["cosine_spearman"]),
        "pearson": 100 * float(scores["cosine_pearson"]),
        "n": len(task.rows),
    }
