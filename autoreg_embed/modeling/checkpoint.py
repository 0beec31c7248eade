"""Load base models and saved encoder checkpoints (full weights or a PEFT adapter) with their settings."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import is_flash_attn_2_available

from autoreg_embed.default_model import resolve_model_name_or_path
from autoreg_embed.modeling.original import record_original_weights
from autoreg_embed.modeling.settings import EncoderSettings

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_FILE = "adapter_config.json"


def load_causal_lm(
    name_or_path: str | os.PathLike | None, dtype: str | torch.dtype | None = None, **model_kwargs: Any
) -> PreTrainedModel:
    """Load a causal LM by hub name or path (``None`` / ``DEFAULT_MODEL``: the embedded SmolLM2).

    ``model_kwargs`` (e.g. ``attn_implementation``, ``device_map``) go to ``from_pretrained``. An
    ``attn_implementation="flash_attention_2"`` without the flash-attn package falls back to ``"sdpa"`` with a
    warning, so that one config runs on machines with and without it.
    """
    if model_kwargs.get("attn_implementation") == "flash_attention_2" and not is_flash_attn_2_available():
        logger.warning("flash-attn is not installed (or unusable here): using attn_implementation='sdpa' instead.")
        model_kwargs = {**model_kwargs, "attn_implementation": "sdpa"}
    return AutoModelForCausalLM.from_pretrained(
        resolve_model_name_or_path(name_or_path), dtype=dtype or "float32", **model_kwargs
    )


def load_tokenizer(name_or_path: str | os.PathLike | None) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model (``None`` / ``DEFAULT_MODEL``: the embedded SmolLM2's)."""
    return AutoTokenizer.from_pretrained(resolve_model_name_or_path(name_or_path))


PadTokenChoice = Literal["auto", "unk", "eos"]
"""Which token pads a tokenizer that has no pad token (``auto``: UNK if it exists, else EOS)."""

PAD_TOKEN_CHOICES: tuple[str, ...] = get_args(PadTokenChoice)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, choice: str = "auto") -> None:
    """Give a tokenizer without a pad token one (LLaMA-2 and Mistral tokenizers have none); log the choice.

    Padding is masked out everywhere (encoder inputs and decoder targets carry attention masks, and every target
    ends with an explicit EOS id), so the pad token never changes a loss; it only has to exist. ``"auto"`` takes
    the UNK token when there is one (so that pad and EOS stay distinct), else EOS; ``"unk"`` / ``"eos"`` force
    one. A tokenizer that has a pad token keeps it.

    Raises:
        ValueError: an unknown choice, or the chosen token does not exist in the tokenizer.
    """
    if choice not in PAD_TOKEN_CHOICES:
        raise ValueError(f"pad_token must be one of {PAD_TOKEN_CHOICES}, got {choice!r}.")
    if tokenizer.pad_token is not None:
        return
    source = choice if choice != "auto" else ("unk" if tokenizer.unk_token is not None else "eos")
    token = getattr(tokenizer, f"{source}_token")
    if token is None:
        raise ValueError(f"pad_token={choice!r}: the tokenizer has no {source.upper()} token; choose another source.")
    tokenizer.pad_token = token
    logger.info("The tokenizer has no pad token; using its %s token %r for padding (masked out).", source, token)


@dataclass
class LoadedEncoder:
    """A trained encoder ready to :func:`~autoreg_embed.modeling.encoder.encode` text."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    settings: EncoderSettings


def load_encoder(
    path: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    is_trainable: bool = False,
    **model_kwargs: Any,
) -> LoadedEncoder:
    """Load a checkpoint written by an autoreg-embed trainer (a final save or any ``checkpoint-N`` folder).

    A full checkpoint loads directly. An adapter checkpoint loads its base model (recorded in the settings),
    grows the embedding matrix to the saved tokenizer, then applies the adapter, and any further adapter saved
    in a subfolder (LoRA through both stages: the stage-1 adapter and stage 2's ``align``), all active
    (``is_trainable``: the newest one trains further). ``model_kwargs`` go to the ``from_pretrained`` call of the
    (base) model.

    Raises:
        FileNotFoundError: the folder has no ``autoreg_embed_config.json``.
        ValueError: an adapter checkpoint that records no base model.
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
    record_original_weights(base)  # the base of an adapter is the original LLM (the decoder)
    if base.get_input_embeddings().weight.shape[0] < len(tokenizer):
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    # PEFT saves the adapter "default" in the folder and any further one (stage 2's) in a subfolder of its name.
    more = sorted(folder.name for folder in path.iterdir() if (folder / ADAPTER_CONFIG_FILE).is_file())
    model = PeftModel.from_pretrained(base, path, is_trainable=is_trainable and not more)
    for name in more:  # all active; only the last one (the newest stage) trainable
        with partial_token_adapters(model):
            model.load_adapter(str(path / name), adapter_name=name, is_trainable=is_trainable and name == more[-1])
    if more:
        model.base_model.set_adapter(["default", *more])
        for parameter_name, parameter in model.named_parameters():  # set_adapter marks every active adapter trainable
            parameter.requires_grad_(is_trainable and f".{more[-1]}." in f"{parameter_name}.")
    return LoadedEncoder(model if is_trainable else model.eval(), tokenizer, settings)


@contextlib.contextmanager
def partial_token_adapters(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, PEFT saves and loads every adapter of ``model``, even if only some train token rows.

    LoRA through both stages trains the compress-token rows in the stage-1 adapter only (PEFT's trainable tokens
    allow one active adapter per embedding). peft (0.21) then fails to save or load the stage-2 adapter: its
    ``TrainableTokensWrapper`` looks up a delta the adapter does not have (``KeyError:
    'token_adapter.trainable_tokens_delta.align'``). Such an adapter has no rows there to save or load, so within
    the block the wrapper maps it to nothing.
    """
    from peft.utils.other import TrainableTokensWrapper

    patched = []
    for module in model.modules():
        if not isinstance(module, TrainableTokensWrapper):
            continue
        deltas = module.token_adapter.trainable_tokens_delta
        save, load_map = module.adapter_state_dict, module.adapter_state_dict_load_map
        module.adapter_state_dict = lambda name, state, save=save, deltas=deltas: (
            save(name, state) if name in deltas else {}
        )
        module.adapter_state_dict_load_map = lambda name, load_map=load_map, deltas=deltas: (
            load_map(name) if name in deltas else {}
        )
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.adapter_state_dict, module.adapter_state_dict_load_map
