"""Evaluating embedding models: offline STS and BEIR-folder retrieval, mteb benchmark tasks, result files.

Everything runs through mteb's evaluators, so local and benchmark numbers are computed the same way. mteb is an
optional dependency: ``pip install 'autoreg-embed[eval]'``.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from autoreg_embed._lazy import lazy_exports

EVAL_EXTRA_HINT = "pip install 'autoreg-embed[eval]'"
"""How to install what evaluation needs (mteb) on top of a minimal install."""

if importlib.util.find_spec("mteb") is None:
    raise ModuleNotFoundError(
        f"autoreg_embed.evaluation needs mteb, which a minimal install leaves out: {EVAL_EXTRA_HINT}", name="mteb"
    )

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "autoreg_embed.evaluation.mteb_tasks": ("evaluate_mteb", "get_mteb_tasks"),
        "autoreg_embed.evaluation.paper_sts": ("PAPER_STS", "format_paper_sts", "paper_sts_average", "paper_sts_tasks"),
        "autoreg_embed.evaluation.results": ("format_summary", "read_results", "write_results"),
        "autoreg_embed.evaluation.retrieval": ("LocalRetrievalTask", "evaluate_retrieval", "load_beir_folder"),
        "autoreg_embed.evaluation.sts": ("LocalSTSTask", "evaluate_sts", "load_sts_rows"),
    },
)

if TYPE_CHECKING:  # the names as type checkers and documentation tools see them
    from autoreg_embed.evaluation.mteb_tasks import evaluate_mteb as evaluate_mteb
    from autoreg_embed.evaluation.mteb_tasks import get_mteb_tasks as get_mteb_tasks
    from autoreg_embed.evaluation.paper_sts import PAPER_STS as PAPER_STS
    from autoreg_embed.evaluation.paper_sts import format_paper_sts as format_paper_sts
    from autoreg_embed.evaluation.paper_sts import paper_sts_average as paper_sts_average
    from autoreg_embed.evaluation.paper_sts import paper_sts_tasks as paper_sts_tasks
    from autoreg_embed.evaluation.results import (
        format_summary as format_summary,
    )
    from autoreg_embed.evaluation.results import (
        read_results as read_results,
    )
    from autoreg_embed.evaluation.results import (
        write_results as write_results,
    )
    from autoreg_embed.evaluation.retrieval import (
        LocalRetrievalTask as LocalRetrievalTask,
    )
    from autoreg_embed.evaluation.retrieval import (
        evaluate_retrieval as evaluate_retrieval,
    )
    from autoreg_embed.evaluation.retrieval import (
        load_beir_folder as load_beir_folder,
    )
    from autoreg_embed.evaluation.sts import (
        LocalSTSTask as LocalSTSTask,
    )
    from autoreg_embed.evaluation.sts import (
        evaluate_sts as evaluate_sts,
    )
    from autoreg_embed.evaluation.sts import (
        load_sts_rows as load_sts_rows,
    )
