"""Evaluating embedding models: offline STS, BEIR-folder retrieval, instruction-following retrieval, mteb tasks.

Everything runs through mteb's evaluators, so local and benchmark numbers are computed the same way.
"""

from autoreg_embed.evaluation.instruction_retrieval import (
    evaluate_instruction_retrieval,
    load_instruction_retrieval_rows,
)
from autoreg_embed.evaluation.mteb_tasks import evaluate_mteb, get_mteb_tasks
from autoreg_embed.evaluation.paper_sts import PAPER_STS, format_paper_sts, paper_sts_average, paper_sts_tasks
from autoreg_embed.evaluation.results import format_summary, write_results
from autoreg_embed.evaluation.retrieval import LocalRetrievalTask, evaluate_retrieval, load_beir_folder
from autoreg_embed.evaluation.sts import LocalSTSTask, evaluate_sts, load_sts_rows

__all__ = [
    "PAPER_STS",
    "LocalRetrievalTask",
    "LocalSTSTask",
    "evaluate_instruction_retrieval",
    "evaluate_mteb",
    "evaluate_retrieval",
    "evaluate_sts",
    "format_paper_sts",
    "format_summary",
    "get_mteb_tasks",
    "load_beir_folder",
    "load_instruction_retrieval_rows",
    "load_sts_rows",
    "paper_sts_average",
    "paper_sts_tasks",
    "write_results",
]
