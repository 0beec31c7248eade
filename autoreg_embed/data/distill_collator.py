"""The collator of :class:`~autoreg_embed.DistillTrainer`: student queries and documents, and the teacher's inputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from autoreg_embed.data.collators import hard_negatives
from autoreg_embed.data.schema import check_text
from autoreg_embed.modeling.inputs import EncoderInputBuilder, pad_sequences, tokenize_text
from autoreg_embed.modeling.settings import EncoderSettings

TEACHER_TARGET_COLUMNS = ("teacher_mean", "teacher_positions", "teacher_position_mask")
"""Dataset columns of precomputed teacher targets (see ``DistillTrainer.with_teacher_targets``)."""


class TeacherInputBuilder:
    """The teacher's input: ``[BOS] + prefix + text + suffix + output_prefix + output``, and where the output is.

    The text/instruction part is laid out exactly as the student's (same template, BOS and truncation), without
    the soft prompts; ``output_prefix`` (e.g. ``"\\n"``) separates it from the gold output, whose tokens (the head,
    up to ``max_output_length``; cuts counted in :attr:`truncations`) form the output span.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        settings: EncoderSettings,
        output_prefix: str = "\n",
        max_output_length: int = 128,
    ) -> None:
        if max_output_length < 1:
            raise ValueError(f"max_output_length must be >= 1, got {max_output_length}.")
        self.encoder_inputs = EncoderInputBuilder(tokenizer, replace(settings, num_compress_tokens=0, pooling="last"))
        self.prefix_ids = tokenize_text(tokenizer, [output_prefix])[0] if output_prefix else []
        self.max_output_length = max_output_length

    @property
    def truncations(self) -> Counter[str]:
        """How many texts, instructions and outputs of the teacher's inputs were truncated so far."""
        return self.encoder_inputs.truncations

    def __call__(
        self, texts: Sequence[str], instructions: Sequence[str], outputs: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Right-padded ``teacher_input_ids``, ``teacher_attention_mask`` and ``teacher_output_mask`` (B, L)."""
        rows, spans = [], []
        output_ids = tokenize_text(self.encoder_inputs.tokenizer, outputs)
        for ids, output in zip(self.encoder_inputs.build(texts, instructions), output_ids, strict=True):
            output = self.encoder_inputs.truncate(output, self.max_output_length, "output")
            start = len(ids) + len(self.prefix_ids)
            rows.append(ids + self.prefix_ids + output)
            spans.append((start, start + len(output)))
        padded = pad_sequences(rows, self.encoder_inputs.tokenizer.pad_token_id, "right")
        output_mask = torch.zeros_like(padded["attention_mask"])
        for row, (start, stop) in enumerate(spans):
            output_mask[row, start:stop] = 1
        return {
            "teacher_input_ids": padded["input_ids"],
            "teacher_attention_mask": padded["attention_mask"],
            "teacher_output_mask": output_mask,
        }


class DistillCollator:
    """Rows with ``text``, ``instruction`` (optional), ``output``, optional ``pos`` / ``neg`` -> one training batch.

    Keys of the batch:

    - ``input_ids`` / ``attention_mask`` (B, L): the student's queries, ``text + instruction + soft prompts``;
    - ``document_input_ids`` / ``document_attention_mask``: the documents embedded with ``output_instruction``, in
      the order outputs (B, when ``encode_outputs``), ``pos`` (B, when ``encode_pos``), hard negatives (B * n,
      row-major); ``num_negatives`` says n (absent when there are no documents);
    - ``teacher_input_ids`` / ``teacher_attention_mask`` / ``teacher_output_mask`` from ``teacher_inputs`` (a live
      teacher), or the precomputed ``teacher_mean`` (B, H), ``teacher_positions`` (B, m, H) and
      ``teacher_position_mask`` (B, m) columns when ``precomputed_targets``.
    """

    def __init__(
        self,
        encoder_inputs: EncoderInputBuilder,
        output_instruction: str = "",
        teacher_inputs: TeacherInputBuilder | None = None,
        encode_outputs: bool = True,
        encode_pos: bool = False,
        precomputed_targets: bool = False,
        padding_side: str = "right",
    ) -> None:
        self.encoder_inputs = encoder_inputs
        self.output_instruction = output_instruction
        self.teacher_inputs = teacher_inputs
        self.encode_outputs = encode_outputs
        self.encode_pos = encode_pos
        self.precomputed_targets = precomputed_targets
        self.padding_side = padding_side

    @property
    def truncations(self) -> Counter[str]:
        """How many texts, instructions and outputs were truncated so far (student and teacher inputs)."""
        teacher = self.teacher_inputs.truncations if self.teacher_inputs is not None else Counter()
        return self.encoder_inputs.truncations + teacher

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [check_text(f["text"], "text", i) for i, f in enumerate(features)]
        instructions = [
            check_text(f.get("instruction") or "", "instruction", i, allow_empty=True) for i, f in enumerate(features)
        ]
        outputs = [check_text(f["output"], "output", i) for i, f in enumerate(features)]
        batch = self.encoder_inputs(texts, instructions, padding_side=self.padding_side)
        negatives = hard_negatives(features)
        documents = outputs if self.encode_outputs else []
        if self.encode_pos:
            documents = documents + [check_text(f["pos"], "pos", i) for i, f in enumerate(features)]
        documents = documents + [text for row in negatives for text in row]
        if documents:
            encoded = self.encoder_inputs(documents, self.output_instruction, padding_side=self.padding_side)
            batch["document_input_ids"], batch["document_attention_mask"] = (
                encoded["input_ids"],
                encoded["attention_mask"],
            )
            batch["num_negatives"] = torch.tensor(len(negatives[0]) if negatives else 0)
        if self.teacher_inputs is not None:
            batch.update(self.teacher_inputs(texts, instructions, outputs))
        if self.precomputed_targets:
            for column in TEACHER_TARGET_COLUMNS:
                if column in features[0]:
                    batch[column] = torch.tensor([f[column] for f in features])
        return batch
