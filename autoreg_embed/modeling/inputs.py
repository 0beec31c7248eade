"""Tokenize text + instruction + compress tokens into encoder inputs, and pad batches."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from autoreg_embed.modeling.settings import EncoderSettings

logger = logging.getLogger(__name__)


def tokenize_text(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of user text; special-token strings inside it (e.g. "<EMBED0>") are split like plain text."""
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]


def pad_sequences(
    sequences: Sequence[Sequence[int]], pad_token_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad token-id lists to one length; returns ``input_ids`` and ``attention_mask`` (B, L) long tensors."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    length = max((len(s) for s in sequences), default=0)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, ids in enumerate(sequences):
        span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class EncoderInputBuilder:
    """Builds ``[BOS] + prefix + text + suffix + compress tokens`` token ids for a batch of texts.

    Text is truncated to ``settings.max_text_length`` tokens and the instruction part to
    ``settings.max_instruction_length``; the BOS and compress tokens are never truncated. Every truncation is
    counted in :attr:`truncations` (and logged once per kind), never silent.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, settings: EncoderSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.truncations: Counter[str] = Counter()
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "The tokenizer has no pad token. Set one before training, e.g. "
                "`tokenizer.pad_token = tokenizer.eos_token` (padding is masked out, so any token works)."
            )
        self.bos_ids: list[int] = []
        if settings.add_bos:
            if tokenizer.bos_token_id is None:
                raise ValueError(
                    "EncoderSettings.add_bos=True but the tokenizer has no BOS token. Set "
                    "`tokenizer.bos_token` or use add_bos=False (e.g. for Qwen2 tokenizers)."
                )
            self.bos_ids = [tokenizer.bos_token_id]
        self.compress_ids = compress_token_ids(tokenizer, settings)
        self.eos_ids = [tokenizer.eos_token_id] if settings.pooling == "eos" else []
        if settings.pooling == "eos" and tokenizer.eos_token_id is None:
            raise ValueError("pooling='eos' needs a tokenizer with an EOS token.")

    def truncate(self, ids: list[int], limit: int, kind: str) -> list[int]:
        """The head of ``ids`` up to ``limit`` tokens; a cut is counted in :attr:`truncations` under ``kind``."""
        if len(ids) <= limit:
            return ids
        if not self.truncations[kind]:
            logger.warning("Truncating %s to %d tokens (counted in builder.truncations).", kind, limit)
        self.truncations[kind] += 1
        return ids[:limit]

    def build(self, texts: Sequence[str], instructions: Sequence[str] | str = "") -> list[list[int]]:
        """Return one token-id list per text; ``instructions`` is one string for all or one per text."""
        if isinstance(instructions, str):
            instructions = [instructions] * len(texts)
        if len(instructions) != len(texts):
            raise ValueError(f"Got {len(texts)} texts but {len(instructions)} instructions.")
        parts = [self.settings.split_template(instruction) for instruction in instructions]
        unique_parts = sorted({piece for pair in parts for piece in pair})
        piece_ids = dict(zip(unique_parts, tokenize_text(self.tokenizer, unique_parts), strict=True))
        limit = self.settings.max_instruction_length
        rows = []
        for text_ids, (prefix, suffix) in zip(tokenize_text(self.tokenizer, texts), parts, strict=True):
            text_ids = self.truncate(text_ids, self.settings.max_text_length, "text")
            prefix_ids = self.truncate(piece_ids[prefix], limit, "instruction")
            suffix_ids = self.truncate(piece_ids[suffix], limit, "instruction")
            rows.append(self.bos_ids + prefix_ids + text_ids + suffix_ids + self.compress_ids + self.eos_ids)
        return rows

    def __call__(
        self, texts: Sequence[str], instructions: Sequence[str] | str = "", padding_side: str = "right"
    ) -> dict[str, torch.Tensor]:
        """Tokenize and pad: returns ``input_ids`` and ``attention_mask`` (B, L)."""
        return pad_sequences(self.build(texts, instructions), self.tokenizer.pad_token_id, padding_side)


def compress_token_ids(tokenizer: PreTrainedTokenizerBase, settings: EncoderSettings) -> list[int]:
    """Ids of the k compress tokens; an error says how to add them if the tokenizer lacks them."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in settings.compress_tokens if token not in vocab]
    if missing:
        raise ValueError(
            f"The tokenizer lacks the compress tokens {missing}. Call "
            "autoreg_embed.add_compress_tokens(model, tokenizer, settings) first, or load a checkpoint saved "
            f"with num_compress_tokens={settings.num_compress_tokens}."
        )
    return [vocab[token] for token in settings.compress_tokens]
