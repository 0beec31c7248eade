"""Collator of stage 2 (CDA): plans, per batch, which texts to encode and which targets to score, once each.

Every log-probability the loss needs is a :class:`~autoreg_embed.losses.cda_log_probs.LogProb`, e.g.
``POS_GIVEN_QUERY`` = lp(d+ | e_{q,I_next}): which target text, which conditioning text, which instruction. The
collator tokenizes every distinct (text, instruction) pair once (``input_ids``) and every distinct target text
once (``target_ids``), and for each log-prob returns index tensors into them (``"<key>.prefix_index"``,
``"<key>.target_index"``, shared by policy and reference), so the trainer runs one encoder pass and one decoder
pass per role.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from datasets import Dataset, Value

from autoreg_embed.data.collators import TargetBuilder
from autoreg_embed.data.instructions import INSTRUCTION_PRESETS  # noqa: F401  (re-exported)
from autoreg_embed.data.schema import DataValidationError, check_text, check_text_list
from autoreg_embed.losses.cda_log_probs import LogProb
from autoreg_embed.modeling.inputs import EncoderInputBuilder

logger = logging.getLogger(__name__)

PositivesUse = Literal["each", "first"]
"""How a row with several positives is used: ``each`` positive as its own row, or only the ``first``."""


def texts_of_row(row: Mapping[str, Any], row_index: int) -> dict[str, list[str]]:
    """The query, positive and negatives of a row, checked: ``{"query": [q], "pos": [d+], "neg": [d-_1..]}``.

    Raises:
        DataValidationError: a text is missing or empty, or ``pos`` holds more than one positive (split such rows
            with :func:`one_positive_per_row` first; ``CDATrainer`` does).
    """
    positives = check_text_list(row["pos"], "pos", row_index)
    if len(positives) != 1:
        raise DataValidationError(
            f"Column 'pos', row {row_index}: {len(positives)} positives, but a CDA example has one. Split the rows "
            "first with autoreg_embed.data.one_positive_per_row(dataset) (CDATrainer does this itself)."
        )
    return {
        "query": [check_text(row["query"], "query", row_index)],
        "pos": positives,
        "neg": check_text_list(row["neg"], "neg", row_index),
    }


def one_positive_per_row(dataset: Dataset, use: PositivesUse = "each") -> Dataset:
    """``dataset`` with a string ``pos`` in every row, for a ``pos`` column of lists (BGE / MEDI-style files).

    ``each``: a row with m positives becomes m rows (q, d+_j, the same negatives, the other columns copied), so
    that every positive gets its own S1 = -g(beta |lp(d+_j | e_q) - lp(d+_j | e_{d+_j})|) and InfoNCE term.
    ``first``: only the first positive is kept, as the official code does. A column of strings is returned as
    is. Rows must have been validated (non-empty lists of non-empty strings).
    """
    if "pos" not in dataset.column_names or isinstance(dataset.features["pos"], Value):
        return dataset

    def split(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {column: [] for column in batch}
        for row, positives in enumerate(batch["pos"]):
            for positive in positives if use == "each" else positives[:1]:
                for column, values in batch.items():
                    out[column].append(positive if column == "pos" else values[row])
        return out

    expanded = dataset.map(split, batched=True, desc="One positive per row")
    if len(expanded) != len(dataset):
        logger.info("Split %d rows with lists of positives into %d rows, one each.", len(dataset), len(expanded))
    return expanded


class CDACollator:
    """Rows with ``query``, ``pos``, ``neg`` (a string or a list) -> one deduplicated encoder batch + targets.

    Args:
        encoder_inputs: builds the encoder rows (text + instruction + compress tokens).
        targets: builds decoder targets (text + EOS).
        log_probs: the log-probs to plan (e.g. ``STRATEGIES[s].log_probs``); policy and reference versions of one
            log-prob share their plan.
        instructions: the ``next`` / ``self`` / ``prev`` instructions. Rows may override them with columns
            ``instruction_next`` / ``instruction_self`` / ``instruction_prev``.
        precomputed: log-probs whose values come from dataset columns named ``LogProb.name`` (precomputed
            reference log-probs); they are passed through as tensors under that name rather than planned.
    """

    def __init__(
        self,
        encoder_inputs: EncoderInputBuilder,
        targets: TargetBuilder,
        log_probs: Sequence[LogProb],
        instructions: Mapping[str, str],
        precomputed: Sequence[LogProb] = (),
        padding_side: str = "right",
    ) -> None:
        self.encoder_inputs = encoder_inputs
        self.targets = targets
        self.precomputed = tuple(precomputed)
        planned = [spec for spec in log_probs if spec not in self.precomputed]
        self.plans = {spec.key: spec for spec in planned}
        self.instructions = dict(instructions)
        self.padding_side = padding_side

    @property
    def truncations(self):
        """How many texts, instructions and targets were truncated so far."""
        return self.encoder_inputs.truncations + self.targets.truncations

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [texts_of_row(feature, index) for index, feature in enumerate(features)]
        num_negatives = {len(row["neg"]) for row in rows}
        if len(num_negatives) > 1:
            raise DataValidationError(
                f"Rows of one batch have different numbers of negatives {sorted(num_negatives)}; give every row "
                "the same number (column 'neg')."
            )
        encoder_rows: dict[tuple[str, str], int] = {}
        target_rows: dict[str, int] = {}
        batch: dict[str, torch.Tensor] = {}
        for key, spec in self.plans.items():
            prefix_index, target_index = [], []
            for feature, texts in zip(features, rows, strict=True):
                instruction = feature.get(f"instruction_{spec.instruction}") or self.instructions[spec.instruction]
                sources, targets = texts[spec.source], texts[spec.target]
                if spec.source == spec.target == "neg":  # lp(d-_i | e_{d-_i}): pair each negative with itself
                    pairs = list(zip(sources, targets, strict=True))
                else:
                    pairs = [(source, target) for source in sources for target in targets]
                prefix_index.append([encoder_rows.setdefault((s, instruction), len(encoder_rows)) for s, _ in pairs])
                target_index.append([target_rows.setdefault(t, len(target_rows)) for _, t in pairs])
            batch[f"{key}.prefix_index"] = torch.tensor(prefix_index)
            batch[f"{key}.target_index"] = torch.tensor(target_index)
        texts, instructions = zip(*encoder_rows, strict=True) if encoder_rows else ((), ())
        batch.update(self.encoder_inputs(list(texts), list(instructions), padding_side=self.padding_side))
        batch.update(self.targets(list(target_rows)))
        for spec in self.precomputed:
            batch[spec.name] = torch.tensor([feature[spec.name] for feature in features], dtype=torch.float32)
        return batch
