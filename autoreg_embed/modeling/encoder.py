"""The compressing encoder: an LLM body whose last-layer states at k compress tokens form the embedding.

These are functions over any Hugging Face causal LM (or a PEFT model wrapping one, or either wrapped by a
distributed engine), not a wrapper class, so that trainers keep the plain model (its saving, gradient
checkpointing, PEFT and DeepSpeed handling intact). Every pass runs the model's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autoreg_embed.modeling.settings import EncoderSettings


def unwrapped(model: nn.Module) -> nn.Module:
    """``model`` without a DDP / DeepSpeed / FSDP wrapper (accelerate's ``extract_model_from_parallel``).

    Without accelerate installed (an app that only loads a checkpoint to embed text) nothing can be wrapped.
    """
    try:
        from accelerate.utils import extract_model_from_parallel
    except ImportError:
        return model
    return extract_model_from_parallel(model)


def backbone_of(model: nn.Module) -> nn.Module:
    """The transformer body (no LM head) of a causal LM, looking through a PEFT wrapper.

    Adapters injected by PEFT live inside the body, so calling it runs them (and ``disable_adapter()`` on the
    PEFT model still switches them off).
    """
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    body = getattr(model, "base_model", model)
    if body is model and hasattr(model, "get_decoder"):
        body = model.get_decoder()
    return body


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, ... counted over real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def last_hidden_states(
    model: nn.Module,
    attention_mask: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Last-layer hidden states (B, L, H) of a causal LM's body, with padding-independent position ids.

    ``model`` runs through its own forward, so it may be a causal LM, a PEFT model, or either wrapped by DDP,
    DeepSpeed or FSDP: the engine's hooks then run (gradient synchronisation, parameter gathering). The body's
    output is read with a forward hook, and the LM head projects a single position (``logits_to_keep=1``).
    """
    captured: list[torch.Tensor] = []
    body = backbone_of(unwrapped(model))
    handle = body.register_forward_hook(lambda _module, _args, output: captured.append(output[0]))
    try:
        model(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
            logits_to_keep=1,
        )
    finally:
        handle.remove()
    return captured[0]


def last_token_indices(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, for left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


def compress_positions(attention_mask: torch.Tensor, num_compress_tokens: int) -> torch.Tensor:
    """Positions (B, k) of the compress tokens, which end every row: right after the last real token."""
    offsets = torch.arange(num_compress_tokens, device=attention_mask.device) - (num_compress_tokens - 1)
    return last_token_indices(attention_mask)[:, None] + offsets


@dataclass
class EncoderOutput:
    """What :func:`encode` returns."""

    embedding: torch.Tensor
    """(B, H) pooled embedding (L2-normalised when the settings say so)."""
    compress_states: torch.Tensor | None
    """(B, k, H) last-layer states at the compress tokens; ``None`` when k = 0."""


def pool_hidden_states(
    hidden: torch.Tensor, attention_mask: torch.Tensor, settings: EncoderSettings
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reduce (B, L, H) states to (B, H) by ``settings.pooling``; also return the (B, k, H) compress states."""
    compress_states = None
    if settings.num_compress_tokens:
        index = compress_positions(attention_mask, settings.num_compress_tokens)
        compress_states = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
    if settings.pooling == "compress_mean":
        pooled = compress_states.mean(dim=1)
    elif settings.pooling == "mean":
        weights = attention_mask.to(hidden.dtype)[..., None]
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    else:  # compress_last, last, eos: the last real token (the builder appended EOS for "eos")
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_indices(attention_mask)]
    return pooled, compress_states


def encode(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: EncoderSettings
) -> EncoderOutput:
    """Run the encoder on inputs built by :class:`~autoreg_embed.modeling.inputs.EncoderInputBuilder`."""
    lengths = attention_mask.sum(dim=1)
    if bool((lengths < max(settings.num_compress_tokens, 1)).any()):
        raise ValueError(
            "An encoder row is empty or shorter than the compress tokens; build inputs with EncoderInputBuilder "
            "(with k = 0, an empty text needs add_bos=True or fixed template text around {text})."
        )
    hidden = last_hidden_states(model, attention_mask, input_ids=input_ids)
    pooled, compress_states = pool_hidden_states(hidden, attention_mask, settings)
    if settings.normalize:
        pooled = F.normalize(pooled.float(), dim=-1).to(pooled.dtype)
    return EncoderOutput(embedding=pooled, compress_states=compress_states)
