"""Which weights are the original LLM: recorded in the model's config when the compress tokens are added.

The frozen decoder of both AutoRegEmbed stages is the *original* LLM (METHOD.md, stage 1). A trainer given a
model (a name, a checkpoint folder or an in-memory model, possibly already trained) must therefore know whether
its weights are still the original ones. :func:`record_original_weights` stores the original's name and a
fingerprint of its transformer-layer weights in ``model.config`` (saved with every checkpoint as the
``autoreg_embed_original`` entry of ``config.json``); :func:`holds_original_weights` compares against it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn

from autoreg_embed.modeling.encoder import backbone_of

ORIGINAL_WEIGHTS_KEY = "autoreg_embed_original"
"""Entry of ``model.config`` holding ``{"name_or_path", "fingerprint", "vocab_size"}`` of the original LLM."""


def _config(model: nn.Module):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config


def parameters_fingerprint(named_parameters: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A hash of parameters: their names, shapes, sums and sums of squares (in float64), in the given order."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, parameter in named_parameters:
            values = parameter.detach().double()
            digest.update(f"{name}{tuple(parameter.shape)}{values.sum().item():.12e}".encode())
            digest.update(f"{values.square().sum().item():.12e}".encode())
    return digest.hexdigest()


def layer_weights_fingerprint(model: nn.Module) -> str:
    """A hash of the base weights of ``model``'s transformer layers (names, shapes, sums, sums of squares).

    Adapter weights (PEFT) and the embedding matrices (which grow by the compress-token rows) are left out, so a
    model keeps its fingerprint when compress tokens are added or a LoRA adapter is attached, and loses it when
    the layers are fine-tuned. PEFT's ``.base_layer`` wrapping does not change the names hashed.
    """
    body = backbone_of(model)
    layer_lists = [module for module in body.children() if isinstance(module, nn.ModuleList)]
    if not layer_lists:
        raise ValueError(f"{type(body).__name__} has no list of transformer layers to fingerprint.")
    layers = max(layer_lists, key=len)
    adapters = set(getattr(model, "peft_config", {}) or {})
    base_weights = (
        (name.replace(".base_layer", ""), parameter)
        for name, parameter in layers.named_parameters()
        if not adapters.intersection(name.split(".")) and not any(p.startswith("lora_") for p in name.split("."))
    )
    return parameters_fingerprint(base_weights)


def record_original_weights(model: nn.Module) -> None:
    """Record in ``model.config`` that the model's current weights are the original LLM: its name, a fingerprint
    of its layer weights, and its vocabulary size (the rows of its output embedding, before compress tokens).

    Called by :func:`~autoreg_embed.modeling.compress_tokens.add_compress_tokens` before it adds the tokens, i.e.
    before any autoreg-embed training. An existing record (a model that had compress tokens before) is kept.
    """
    config = _config(model)
    if getattr(config, ORIGINAL_WEIGHTS_KEY, None):
        return
    head = model.get_output_embeddings() or model.get_input_embeddings()
    record = {
        "name_or_path": str(getattr(config, "_name_or_path", "") or ""),
        "fingerprint": None,
        "vocab_size": int(head.weight.shape[0]),
    }
    if not is_partitioned(model):
        record["fingerprint"] = layer_weights_fingerprint(model)
    setattr(config, ORIGINAL_WEIGHTS_KEY, record)


def original_record(model: nn.Module) -> dict[str, str | int | None] | None:
    """The ``{"name_or_path", "fingerprint", "vocab_size"}`` record of the original LLM, or ``None`` if none."""
    record = getattr(_config(model), ORIGINAL_WEIGHTS_KEY, None)
    return dict(record) if record else None


def original_vocab_size(model: nn.Module) -> int | None:
    """The vocabulary size of the original LLM, before compress tokens were added (``None`` if not recorded).

    The frozen decoder scores targets over this vocabulary: the compress tokens are not words of the original
    LLM, even when the decoder shares the (grown) embedding matrices of the encoder.
    """
    return (original_record(model) or {}).get("vocab_size")


def holds_original_weights(model: nn.Module) -> bool | None:
    """Whether the base weights of ``model`` (adapters aside) are still the recorded original LLM.

    ``None`` when it cannot be told: no record (a model from before this record existed), or weights sharded by
    DeepSpeed ZeRO-3 (the fingerprint needs the full tensors).
    """
    record = original_record(model)
    if not record or not record.get("fingerprint") or is_partitioned(model):
        return None
    return layer_weights_fingerprint(model) == record["fingerprint"]


def is_partitioned(model: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 has sharded ``model``'s parameters (each process then holds empty placeholders)."""
    return any(hasattr(parameter, "ds_id") for parameter in model.parameters())
