"""Collator of stage 2 (CDA): plans, per batch, which texts to encode and which targets to score, once each.

Every log-probability the loss needs is named in :data:`autoreg_embed.losses.cda.LOG_PROB_MEANINGS`, e.g.
``policy_pos_next`` = lp(d+ | e_{q,I_next}). :data:`LOG_PROB_SPECS` spells each name out as (which encoder,
which target text, which conditioning text, which instruction). The collator tokenizes every distinct
(text, instruction) pair once (``input_ids``) and every distinct target text once (``target_ids``), and for each
name returns index tensors into them, so the trainer runs one encoder pass and one decoder pass per role.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from autoreg_embed.data.collators import TargetBuilder
from autoreg_embed.data.instructions import INSTRUCTION_PRESETS  # noqa: F401  (re-exported)
from autoreg_embed.data.schema import DataValidationError, check_text, check_text_list
from autoreg_embed.modeling.inputs import EncoderInputBuilder


@dataclass(frozen=True)
class LogProbSpec:
    """lp(target | e_{source, instruction}) under the ``role`` encoder (policy or reference)."""

    role: str
    target: str
    source: str
    instruction: str

    @property
    def per_negative(self) -> bool:
        """Whether there is one value per negative, shape (B, n), rather than (B,)."""
        return "neg" in (self.target, self.source)


def _spec(name: str) -> LogProbSpec:
    role, target, *rest = name.split("_")
    role = "policy" if role == "policy" else "ref"
    if target == "query":  # query_prev_pos, query_self, query_prev_neg
        instruction = rest[0]
        source = rest[1] if len(rest) > 1 else "query"
    else:  # pos_next, pos_self, neg_next, neg_self_pos, pos_self_neg, neg_self
        instruction = rest[0]
        source = rest[1] if len(rest) > 1 else "query" if instruction == "next" else target
    return LogProbSpec(role, target, source, instruction)


def log_prob_spec(name: str) -> LogProbSpec:
    """The :class:`LogProbSpec` of a log-probability name from ``LOG_PROB_MEANINGS``."""
    from autoreg_embed.losses.cda import LOG_PROB_MEANINGS

    if name not in LOG_PROB_MEANINGS:
        raise KeyError(f"Unknown log-prob name {name!r}; valid: {sorted(LOG_PROB_MEANINGS)}.")
    return _spec(name)


def texts_of_row(row: Mapping[str, Any], row_index: int) -> dict[str, list[str]]:
    """The query, positive and negatives of a row, checked: ``{"query": [q], "pos": [d+], "neg": [d-_1..]}``."""
    return {
        "query": [check_text(row["query"], "query", row_index)],
        "pos": [check_text(row["pos"], "pos", row_index)],
        "neg": check_text_list(row["neg"], "neg", row_index),
    }


class CDACollator:
    """Rows with ``query``, ``pos``, ``neg`` (a string or a list) -> one deduplicated encoder batch + targets.

    Args:
        encoder_inputs: builds the encoder rows (text + instruction + compress tokens).
        targets: builds decoder targets (text + EOS).
        log_prob_names: the names to plan (from ``STRATEGY_LOG_PROBS``).
        instructions: the ``next`` / ``self`` / ``prev`` instructions. Rows may override them with columns
            ``instruction_next`` / ``instruction_self`` / ``instruction_prev``.
        precomputed: names whose values come from dataset columns of the same name (precomputed reference
            log-probs); they are passed through as tensors rather than planned.
    """

    def __init__(
        self,
        encoder_inputs: EncoderInputBuilder,
        targets: TargetBuilder,
        log_prob_names: Sequence[str],
        instructions: Mapping[str, str],
        precomputed: Sequence[str] = (),
        padding_side: str = "right",
    ) -> None:
        self.encoder_inputs = encoder_inputs
        self.targets = targets
        self.precomputed = list(precomputed)
        self.specs = {name: log_prob_spec(name) for name in log_prob_names if name not in self.precomputed}
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
        for name, spec in self.specs.items():
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
            batch[f"{name}.prefix_index"] = torch.tensor(prefix_index)
            batch[f"{name}.target_index"] = torch.tensor(target_index)
        texts, instructions = zip(*encoder_rows, strict=True) if encoder_rows else ((), ())
        batch.update(self.encoder_inputs(list(texts), list(instructions), padding_side=self.padding_side))
        batch.update(self.targets(list(target_rows)))
        for name in self.precomputed:
            batch[name] = torch.tensor([feature[name] for feature in features], dtype=torch.float32)
        return batch
