"""The paper's STS evaluation: its 10 mteb STS tasks, English subsets, test splits, and its reported averages.

The paper (Table 1) averages the cosine Spearman x 100 of BIOSSES, SICK-R, STS12-16, STS17, STS22 and
STSBenchmark. The official evaluation (``eval/eval_autoregembed.py`` with mteb 1.12) loads the tasks with
``languages=["eng"]``, which in that mteb version still keeps cross-lingual pairs such as STS17 en-de; its
``show_results.py`` then reports only the subset ``default``, ``en`` or ``en-en`` of the test split. So the
paper's figures are STS17 en-en and STS22 en, on the test split: the task set below evaluates exactly those.
"""

from __future__ import annotations

from collections.abc import Mapping

import mteb
from mteb.abstasks.abstask import AbsTask

PAPER_STS = "paper-sts"
"""The name of the task set (``autoreg-embed evaluate --mteb paper-sts``)."""

PAPER_STS_SUBSETS: dict[str, str | None] = {
    "BIOSSES": None,
    "SICK-R": None,
    "STS12": None,
    "STS13": None,
    "STS14": None,
    "STS15": None,
    "STS16": None,
    "STS17": "en-en",
    "STS22": "en",
    "STSBenchmark": None,
}
"""The paper's 10 STS tasks (mteb names; STS22 and STSBenchmark in their original versions, as the paper used) and
the English subset of the two multilingual ones (None: the task's single subset)."""

PAPER_STS_AVERAGES: dict[str, float] = {
    "AutoRegEmbed-LLaMA2-7B, MEDI-NLI 50k": 83.24,
    "AutoRegEmbed-Mistral-7B, MEDI-NLI 50k": 83.18,
    "AutoRegEmbed-LLaMA2-7B, BGE-NLI 275k": 84.31,
    "AutoRegEmbed-Mistral-7B, BGE-NLI 275k": 84.59,
    "LLaMA2-7B, compression only (no CDA)": 73.90,
    "LLaMA2-7B untrained, last token": 56.91,
}
"""The paper's reported 10-task averages (Spearman x 100), as summarised in the project's METHOD.md."""


def paper_sts_tasks() -> list[AbsTask]:
    """The paper's 10 STS tasks as mteb task objects: test split only, English subsets only (no download here;
    the data is fetched from the Hugging Face hub when the tasks run)."""
    return [
        mteb.get_task(name, eval_splits=["test"], hf_subsets=None if subset is None else [subset])
        for name, subset in PAPER_STS_SUBSETS.items()
    ]


def paper_sts_average(scores: Mapping[str, float]) -> float:
    """The mean of the 10 paper tasks' scores in ``scores`` (``{task name: score x 100}``).

    Raises:
        ValueError: a paper task is missing from ``scores``.
    """
    missing = [name for name in PAPER_STS_SUBSETS if name not in scores]
    if missing:
        raise ValueError(f"The {PAPER_STS} average needs all 10 tasks; missing: {missing}.")
    return sum(scores[name] for name in PAPER_STS_SUBSETS) / len(PAPER_STS_SUBSETS)


def format_paper_sts(scores: Mapping[str, float]) -> str:
    """A table of the 10 tasks' scores, their average, and the paper's reported averages next to it."""
    lines = [f"{PAPER_STS} (test split, English subsets; Spearman x 100):"]
    lines += [f"  {name:<14}{scores[name]:6.2f}" for name in PAPER_STS_SUBSETS if name in scores]
    lines.append(f"  {'average':<14}{paper_sts_average(scores):6.2f}   this model")
    lines += [f"  {'':<14}{value:6.2f}   paper: {label}" for label, value in PAPER_STS_AVERAGES.items()]
    return "\n".join(lines)
