"""Collators: turn rows into padded encoder inputs and decoder targets, tokenizing on the fly."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from autoreg_embed.data.schema import DataValidationError, check_text, check_text_list
from autoreg_embed.modeling.inputs import EncoderInputBuilder, pad_sequences, tokenize_text

logger = logging.getLogger(__name__)


class TargetBuilder:
    """Token ids of decoder targets: the text (head kept up to ``max_length`` tokens) followed by EOS."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError(
                "The tokenizer has no EOS token; the decoder targets end with EOS. Set tokenizer.eos_token."
            )
        if max_length < 1:
            raise ValueError(f"max_target_length must be >= 1, got {max_length}.")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncations: Counter[str] = Counter()

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Right-padded ``target_ids`` and ``target_mask`` (B, T) with EOS at the end of every row."""
        rows = []
        for ids in tokenize_text(self.tokenizer, texts):
            if len(ids) > self.max_length:
                if not self.truncations["target"]:
                    logger.warning("Truncating targets to %d tokens (counted in truncations).", self.max_length)
                self.truncations["target"] += 1
                ids = ids[: self.max_length]
            rows.append([*ids, self.tokenizer.eos_token_id])
        padded = pad_sequences(rows, self.tokenizer.pad_token_id, "right")
        return {"target_ids": padded["input_ids"], "target_mask": padded["attention_mask"]}


class CompressionCollator:
    """Rows with ``context``, ``instruction``, ``target`` -> encoder inputs + decoder targets (dynamic padding).

    The encoder reads ``context`` with ``instruction`` and the compress tokens; the frozen decoder must then
    regenerate ``target`` from the k compress states.
    """

    columns = ("context", "instruction", "target")

    def __init__(
        self,
        encoder_inputs: EncoderInputBuilder,
        max_target_length: int = 512,
        padding_side: str = "right",
    ) -> None:
        self.encoder_inputs = encoder_inputs
        self.targets = TargetBuilder(encoder_inputs.tokenizer, max_target_length)
        self.padding_side = padding_side

    @property
    def truncations(self) -> Counter[str]:
        """How many texts, instructions and targets were truncated so far."""
        return self.encoder_inputs.truncations + self.targets.truncations

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        contexts = [check_text(f["context"], "context", i) for i, f in enumerate(features)]
        instructions = [
            check_text(f.get("instruction") or "", "instruction", i, allow_empty=True) for i, f in enumerate(features)
        ]
        targets = [check_text(f["target"], "target", i) for i, f in enumerate(features)]
        batch = self.encoder_inputs(contexts, instructions, padding_side=self.padding_side)
        batch.update(self.targets(targets))
        return batch


def hard_negatives(features: Sequence[Mapping[str, Any]], column: str = "neg") -> list[list[str]]:
    """Each row's hard negatives (a string or a list in ``column``; none if the column is absent).

    Raises:
        DataValidationError: rows of one batch with different numbers of negatives, or bad text.
    """
    negatives = [check_text_list(f[column], column, i) if column in f else [] for i, f in enumerate(features)]
    counts = {len(row) for row in negatives}
    if len(counts) > 1:
        raise DataValidationError(
            f"Rows of one batch have different numbers of negatives {sorted(counts)} in column '{column}'; give "
            "every row the same number."
        )
    return negatives


def row_instructions(features: Sequence[Mapping[str, Any]], column: str, default: str) -> list[str]:
    """Each row's instruction from ``column`` where it holds a string (possibly empty), else ``default``."""
    return [
        default if f.get(column) is None else check_text(f[column], column, i, allow_empty=True)
        for i, f in enumerate(features)
    ]


class ContrastiveCollator:
    """Rows with ``query``, ``pos`` and optionally ``neg`` (a string or a list) -> one encoder batch.

    Queries get the ``query_instruction``, positives and negatives the ``document_instruction``; a row's optional
    ``instruction_next`` / ``instruction_self`` columns override them for that row's query / documents. The rows
    come out in the order queries (B), positives (B), negatives (B * n, row-major); ``num_negatives`` says n.
    """

    def __init__(
        self,
        encoder_inputs: EncoderInputBuilder,
        query_instruction: str,
        document_instruction: str,
        padding_side: str = "right",
    ) -> None:
        self.encoder_inputs = encoder_inputs
        self.query_instruction = query_instruction
        self.document_instruction = document_instruction
        self.padding_side = padding_side

    @property
    def truncations(self) -> Counter[str]:
        """How many texts and instructions were truncated so far."""
        return self.encoder_inputs.truncations

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        queries = [check_text(f["query"], "query", i) for i, f in enumerate(features)]
        positives = [check_text(f["pos"], "pos", i) for i, f in enumerate(features)]
        negatives = hard_negatives(features)
        query_instructions = row_instructions(features, "instruction_next", self.query_instruction)
        document_instructions = row_instructions(features, "instruction_self", self.document_instruction)
        documents = positives + [text for row in negatives for text in row]
        instructions = (
            query_instructions
            + document_instructions
            + [instruction for instruction, row in zip(document_instructions, negatives, strict=True) for _ in row]
        )
        batch = self.encoder_inputs(queries + documents, instructions, padding_side=self.padding_side)
        batch["num_negatives"] = torch.tensor(len(negatives[0]) if negatives else 0)
        return batch
