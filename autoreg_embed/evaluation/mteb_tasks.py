"""Running mteb tasks: registered benchmark tasks by name, and the local tasks of this package offline.

Registered tasks (``"STSBenchmark"``, ``"SICK-R"``, ``"SciFact"``, ...) download their data from the Hugging
Face hub; the local tasks in :mod:`autoreg_embed.evaluation.sts` and :mod:`autoreg_embed.evaluation.retrieval`
hold their data in memory and run without network.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import TYPE_CHECKING, Any, TypeAlias

import mteb
from mteb.abstasks.abstask import AbsTask
from mteb.models import EncoderProtocol
from sentence_transformers import SentenceTransformer

from autoreg_embed.evaluation.paper_sts import PAPER_STS, paper_sts_tasks

if TYPE_CHECKING:
    from mteb.results import ModelResult

Encoder: TypeAlias = SentenceTransformer | EncoderProtocol
"""A model mteb can evaluate: a ``SentenceTransformer`` (mteb wraps it) or any mteb encoder."""


def get_mteb_tasks(tasks: Sequence[str | AbsTask], languages: Sequence[str] | None = None) -> list[AbsTask]:
    """Resolve task names to mteb task objects; task objects are passed through.

    Args:
        tasks: mteb task names (e.g. ``"STSBenchmark"``), task objects, or ``"paper-sts"``: the paper's 10 STS
            tasks, test split, English subsets (:func:`~autoreg_embed.evaluation.paper_sts.paper_sts_tasks`).
        languages: Keep only these languages of multilingual tasks (ISO 639-3, e.g. ``["eng"]``); the
            ``paper-sts`` tasks keep their own subsets.

    Raises:
        ValueError: No tasks were given, or some names are unknown to mteb (the message suggests close
            matches).
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise ValueError("No mteb tasks given.")
    resolved: list[AbsTask] = []
    unknown: list[str] = []
    for task in tasks:
        if isinstance(task, AbsTask):
            resolved.append(task)
            continue
        if task == PAPER_STS:
            resolved.extend(paper_sts_tasks())
            continue
        try:
            resolved.append(mteb.get_task(task, languages=languages))
        except KeyError as error:
            unknown.append(str(error.args[0]).removeprefix("KeyError: "))
    if unknown:
        raise ValueError("Unknown mteb task name(s): " + " ".join(unknown))
    return resolved


def run_mteb(
    model: Encoder,
    tasks: Sequence[AbsTask],
    *,
    batch_size: int = 32,
    output_folder: str | PathLike[str] | None = None,
    show_progress_bar: bool = False,
) -> ModelResult:
    """Run ``tasks`` through ``mteb.evaluate``, always recomputing the scores.

    Args:
        model: The model to evaluate.
        tasks: mteb task objects.
        batch_size: Encoding batch size.
        output_folder: When given, mteb also writes its result files there (an ``mteb.ResultCache``:
            ``<output_folder>/results/<model name>/<revision>/<task>.json``); existing files are overwritten,
            since a retrained checkpoint keeps its name.
        show_progress_bar: Show a progress bar over the encoding batches.
    """
    return mteb.evaluate(
        model,
        list(tasks),
        cache=None if output_folder is None else mteb.ResultCache(output_folder),
        overwrite_strategy="always",
        encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress_bar},
        co2_tracker=False,
        show_progress_bar=False,
    )


def run_local_task(
    model: Encoder, task: AbsTask, *, batch_size: int = 32, show_progress_bar: bool = False
) -> dict[str, Any]:
    """Run one single-split, single-subset task offline and return mteb's score dict for it.

    The dict holds every metric mteb computes for the task type (e.g. ``cosine_spearman`` for STS,
    ``ndcg_at_10`` for retrieval) plus ``main_score``; values are fractions in [0, 1] as mteb reports them.
    """
    (split,) = task.eval_splits
    (task_result,) = run_mteb(model, [task], batch_size=batch_size, show_progress_bar=show_progress_bar).task_results
    (scores,) = task_result.scores[split]
    return scores


def evaluate_mteb(
    model: Encoder,
    task_names: Sequence[str | AbsTask],
    output_folder: str | PathLike[str] | None = None,
    *,
    languages: Sequence[str] | None = None,
    batch_size: int = 32,
    show_progress_bar: bool = False,
) -> dict[str, float]:
    """Evaluate ``model`` on mteb tasks and return each task's main score x 100.

    Registered tasks download their data from the Hugging Face hub, so this needs hub access (or a filled
    ``HF_DATASETS_CACHE``). Prompts follow mteb's rules: the model's ``prompts`` entry for the task name, then
    for the task type (``"STS"``, ``"Retrieval"``), then ``"query"``/``"document"`` where the task encodes
    queries and documents. mteb's STS tasks do not ask for a query or document prompt, so a model whose
    ``prompts`` has no ``"STS"`` (or task-name) entry embeds their sentences through ``encode`` (with its
    ``default_prompt_name``, if any).

    Args:
        model: The model to evaluate.
        task_names: mteb task names, e.g. ``["STSBenchmark", "SICK-R", "SciFact"]``, ``"paper-sts"`` (the
            paper's 10 STS tasks, see :func:`get_mteb_tasks`), or task objects (e.g. a
            :class:`~autoreg_embed.evaluation.sts.LocalSTSTask`).
        output_folder: Where mteb writes its own result files (see :func:`run_mteb`); none if None.
        languages: Keep only these languages of multilingual tasks (ISO 639-3, e.g. ``["eng"]``).
        batch_size: Encoding batch size.
        show_progress_bar: Show a progress bar over the encoding batches.

    Returns:
        ``{task name: main score x 100}`` (e.g. cosine Spearman for STS, nDCG@10 for retrieval), averaged by
        mteb over the task's evaluation splits and language subsets.

    Raises:
        ValueError: A task name is unknown to mteb; the message suggests the closest registered name.
    """
    tasks = get_mteb_tasks(task_names, languages=languages)
    result = run_mteb(
        model, tasks, batch_size=batch_size, output_folder=output_folder, show_progress_bar=show_progress_bar
    )
    return {task.task_name: 100 * float(task.get_score()) for task in result.task_results}
