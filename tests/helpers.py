"""Helpers shared by the tests: one factory per kind of row, config, trainer and tiny model; the shared data folder.

Test files import from here (``from helpers import ...``); ``conftest.py`` only holds fixtures.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from autoreg_embed import CDAConfig, CompressionConfig, ContrastiveConfig
from autoreg_embed.testing import LLAMA_STYLE_MODELS, make_tiny_model  # noqa: F401  (re-exported for the tests)

ARCHITECTURES = ("llama", "qwen2", "gpt2")
LOGIT_POSTPROCESSING_ARCHITECTURES = ("gemma2", "granite")
"""Models whose forward changes the logits after the LM head (tested where the decoder's logits matter)."""
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The project's shared data (``../shared/data`` from the repository root); absent on a bare clone."""

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"needs the shared data folder {SHARED_DATA} (absent on a bare clone)"
)
"""Mark for tests that read :data:`SHARED_DATA`."""


QUIET_CPU_RUN = {
    "report_to": "none",
    "save_strategy": "no",
    "disable_tqdm": True,
    "use_cpu": True,
    "logging_steps": 1,
    "train_sampling_strategy": "sequential",
}
"""TrainingArguments of the tests' tiny runs: CPU, batches in dataset order, a log every step, no saves or bars."""


# --- rows --------------------------------------------------------------------------------------------------------


def compression_rows(count: int = 5) -> list[dict[str, str]]:
    """Stage-1 rows (``context``, ``instruction``, ``target``), all different."""
    return [
        {"context": f"Context number {i}.", "instruction": f"Question {i}?", "target": f"Answer {i}"}
        for i in range(count)
    ]


def triplet_rows(count: int, num_negatives: int = 1) -> list[dict[str, Any]]:
    """(``query``, ``pos``, ``neg``) rows for CDA and InfoNCE; ``neg`` is a list, and texts differ in length."""
    return [
        {
            "query": f"Query {i}: where do cats sleep?" + " Really." * (i % 3),
            "pos": f"Cats sleep {i} hours on warm sofas.",
            "neg": [f"Car number {i}.{j} needs diesel fuel" + "!" * j for j in range(num_negatives)],
        }
        for i in range(count)
    ]


def sts_rows(count: int) -> list[dict[str, Any]]:
    """Synthetic STS pairs (``sentence1``, ``sentence2``, ``score`` in 0-5) that need no shared data.

    Every sentence is different (it carries its row number), so no two pairs get exactly the same similarity.
    """
    subjects = ["A man", "A woman", "A child", "The dog", "Two cats", "An old farmer"]
    actions = ["is playing a guitar", "is cooking pasta", "runs in the park", "reads a book", "sleeps on a sofa"]
    rows = []
    for i in range(count):
        first = f"{subjects[i % len(subjects)]} {actions[i % len(actions)]} on day {i}."
        second = f"{subjects[(i * 5) % len(subjects)]} {actions[(i * 3 + i // 7) % len(actions)]} at hour {i}."
        rows.append({"sentence1": first, "sentence2": second, "score": float(i % 6)})
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write ``rows`` as JSON Lines and return ``path``."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_sts_file(path: Path, count: int) -> Path:
    """A JSONL file of :func:`sts_rows`."""
    return write_jsonl(path, sts_rows(count))


# --- configs and trainers -------------------------------------------------------------------------------------------

TINY_RUNS: dict[type, dict[str, Any]] = {
    CompressionConfig: {"per_device_train_batch_size": 4},
    CDAConfig: {
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "max_steps": 1,
        "learning_rate": 1e-3,
        "num_compress_tokens": 2,
        "max_text_length": 32,
        "max_instruction_length": 32,
        "max_target_length": 24,
    },
    ContrastiveConfig: {
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "max_steps": 1,
        "learning_rate": 1e-3,
        "instructions": "retrieval",
        "max_text_length": 32,
        "max_instruction_length": 32,
    },
}
"""Per config class, the options of the tests' tiny runs on top of :data:`QUIET_CPU_RUN`."""

TRAINER_ARGUMENTS = ("ref_model", "decoder", "peft_config", "callbacks", "data_collator", "processing_class")
"""Keyword arguments :func:`make_trainer` passes to the trainer rather than to its config."""


def make_config(config_class: type, tmp_path: Path, **overrides: Any) -> Any:
    """A config of ``config_class`` for a tiny CPU run writing into ``tmp_path / "out"``; ``overrides`` win."""
    options = {**QUIET_CPU_RUN, "output_dir": str(tmp_path / "out"), **TINY_RUNS.get(config_class, {}), **overrides}
    return config_class(**options)


def make_trainer(
    trainer_class: type,
    tmp_path: Path,
    tokenizer: PreTrainedTokenizerBase,
    *,
    rows: list[dict[str, Any]] | None = None,
    model: Any = None,
    model_seed: int = 0,
    eval_rows: list[dict[str, Any]] | None = None,
    **overrides: Any,
) -> Any:
    """A trainer of ``trainer_class`` on a tiny Llama (seeded ``model_seed``) or ``model``, :func:`make_config` options.

    It works on a copy of ``tokenizer`` (the trainer adds its compress tokens; later models must not see them;
    use ``trainer.processing_class``), unless ``processing_class`` is given (``None``: loaded with the model).
    Keywords in :data:`TRAINER_ARGUMENTS` go to the trainer, the others to the config.
    """
    trainer_kwargs = {name: overrides.pop(name) for name in TRAINER_ARGUMENTS if name in overrides}
    trainer_kwargs.setdefault("processing_class", copy.deepcopy(tokenizer))
    return trainer_class(
        model=make_tiny_model("llama", tokenizer, model_seed) if model is None else model,
        args=make_config(trainer_class.config_class, tmp_path, **overrides),
        train_dataset=None if rows is None else Dataset.from_list(rows),
        eval_dataset=None if eval_rows is None else Dataset.from_list(eval_rows),
        **trainer_kwargs,
    )
