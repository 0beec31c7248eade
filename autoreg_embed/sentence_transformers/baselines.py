"""Training-free baselines: any causal LM with a prompt template and last / mean / EOS pooling (k = 0)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sentence_transformers import SentenceTransformer

from autoreg_embed.default_model import DEFAULT_MODEL
from autoreg_embed.modeling.checkpoint import load_causal_lm, load_tokenizer
from autoreg_embed.modeling.settings import EncoderSettings, Pooling
from autoreg_embed.sentence_transformers.module import AutoRegEmbedModule, split_dtype
from autoreg_embed.sentence_transformers.prompts import check_prompts


def baseline(
    model_name_or_path: str | os.PathLike | None = None,
    pooling: Pooling = "last",
    template: str = "{text}",
    *,
    add_bos: bool | None = None,
    normalize: bool = True,
    max_text_length: int = 512,
    prompts: Mapping[str, str] | None = None,
    default_prompt_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> SentenceTransformer:
    """An untrained causal LM as a :class:`~sentence_transformers.SentenceTransformer` (k = 0 compress tokens).

    Examples: PromptEOL is ``baseline(name, "last", PROMPTEOL_TEMPLATE)``; plain mean pooling is
    ``baseline(name, "mean")``; ``"eos"`` appends the EOS token and takes its state.

    Args:
        model_name_or_path: any causal LM (hub name or path; ``None``: the embedded SmolLM2-135M-Instruct).
        pooling: ``"last"``, ``"mean"`` or ``"eos"``.
        template: the input layout with ``{text}`` (and optionally ``{instruction}``, filled by the prompt).
        add_bos: start inputs with BOS; ``None``: when the tokenizer has a BOS token.
        normalize: L2-normalise the embeddings.
        max_text_length: text tokens kept per input (the head).
        prompts: prompts for a template with ``{instruction}`` (default: none).
        default_prompt_name: the prompt plain ``encode`` uses.
        model_kwargs: passed to ``from_pretrained`` (e.g. ``{"dtype": torch.bfloat16}``).
        **kwargs: passed to ``SentenceTransformer`` (e.g. ``device``).

    Raises:
        ValueError: a ``compress_*`` pooling (those need trained compress tokens), or a prompt for a template
            without ``{instruction}``.
    """
    tokenizer = load_tokenizer(model_name_or_path)
    if tokenizer.pad_token is None:  # padding is masked out, so any token works
        tokenizer.pad_token = tokenizer.eos_token
    settings = EncoderSettings(
        num_compress_tokens=0,
        template=template,
        add_bos=tokenizer.bos_token_id is not None if add_bos is None else add_bos,
        pooling=pooling,
        normalize=normalize,
        max_text_length=max_text_length,
        base_model_name_or_path=str(model_name_or_path or DEFAULT_MODEL),
    )
    prompts, default_prompt_name = check_prompts(settings, prompts or {}, default_prompt_name)
    dtype, model_kwargs = split_dtype(model_kwargs)
    model = load_causal_lm(model_name_or_path, dtype, **model_kwargs)
    return SentenceTransformer(
        modules=[AutoRegEmbedModule(model.eval(), tokenizer, settings)],
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        similarity_fn_name="cosine",
        **kwargs,
    )
