"""Load base models and saved encoder checkpoints (full weights or a PEFT adapter) with their settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from autoreg_embed.default_model import resolve_model_name_or_path
from autoreg_embed.modeling.settings import EncoderSettings

ADAPTER_CONFIG_FILE = "adapter_config.json"


def load_causal_lm(
    name_or_path: str | os.PathLike | None, dtype: str | torch.dtype | None = None, **model_kwargs: Any
) -> PreTrainedModel:
    """Load a causal LM by hub name or path (``None`` / ``DEFAULT_MODEL``: the embedded SmolLM2).

    ``model_kwargs`` (e.g. ``attn_implementation``, ``device_map``) go to ``from_pretrained``.
    """
    return AutoModelForCausalLM.from_pretrained(
        resolve_model_name_or_path(name_or_path), dtype=dtype or "float32", **model_kwargs
    )


def load_tokenizer(name_or_path: str | os.PathLike | None) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model (``None`` / ``DEFAULT_MODEL``: the embedded SmolLM2's)."""
    return AutoTokenizer.from_pretrained(resolve_model_name_or_path(name_or_path))


@dataclass
class LoadedEncoder:
    """A trained encoder ready to :func:`~autoreg_embed.modeling.encoder.encode` text."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    settings: EncoderSettings


def load_encoder(path: str | os.PathLike, dtype: str | torch.dtype | None = None, **model_kwargs: Any) -> LoadedEncoder:
    """Load a checkpoint written by an autoreg-embed trainer.

    A full checkpoint loads directly. An adapter checkpoint loads its base model (recorded in the settings),
    grows the embedding matrix to the saved tokenizer, then applies the adapter. ``model_kwargs`` go to the
    ``from_pretrained`` call of the (base) model.
    """
    path = Path(path)
    if not EncoderSettings.exists_in(path):
        raise FileNotFoundError(f"{path} is not an autoreg-embed checkpoint (no autoreg_embed_config.json).")
    settings = EncoderSettings.load(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not (path / ADAPTER_CONFIG_FILE).is_file():
        return LoadedEncoder(load_causal_lm(path, dtype, **model_kwargs).eval(), tokenizer, settings)
    from peft import PeftModel

    if not settings.base_model_name_or_path:
        raise ValueError(
            f"{path} holds a PEFT adapter but records no base model to apply it to. Save a merged checkpoint with "
            "autoreg_embed.export_sentence_transformer(model, tokenizer, settings, output_dir) instead."
        )
    base = load_causal_lm(settings.base_model_name_or_path, dtype, **model_kwargs)
    if base.get_input_embeddings().weight.shape[0] < len(tokenizer):
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return LoadedEncoder(PeftModel.from_pretrained(base, path).eval(), tokenizer, settings)
