"""Log-likelihood of target text under a frozen decoder conditioned on compress-token vectors.

The decoder reads ``inputs_embeds = [e_1 .. e_k ; embed(target + EOS)]``; the logits at positions
``k-1 .. k+T-2`` predict the T target tokens. Gradients flow into the prefix vectors (the encoder), never into
the decoder's weights.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from autoreg_embed.default_model import resolve_model_name_or_path
from autoreg_embed.modeling.checkpoint import load_causal_lm
from autoreg_embed.modeling.encoder import last_hidden_states, position_ids_from_mask
from autoreg_embed.modeling.settings import EncoderSettings

logger = logging.getLogger(__name__)


@dataclass
class ConditionalLogProbs:
    """Per-token and per-sequence log-probabilities of the targets."""

    token_log_probs: torch.Tensor
    """(B, T) log p(target_t | prefix, target_<t), zero at padding."""
    target_mask: torch.Tensor
    """(B, T) 1 for real target tokens (EOS included)."""
    log_probs: torch.Tensor | None = None
    """(B, T, V) full next-token log-distributions, only when asked for (KL / JS similarities)."""

    @property
    def sum(self) -> torch.Tensor:
        """(B,) summed log-probability of each target sequence."""
        return self.token_log_probs.sum(dim=1)

    @property
    def mean(self) -> torch.Tensor:
        """(B,) per-token mean log-probability of each target sequence."""
        return self.sum / self.target_mask.sum(dim=1).clamp(min=1)


def conditional_log_probs(
    decoder: nn.Module,
    prefix: torch.Tensor,
    target_ids: torch.Tensor,
    target_mask: torch.Tensor,
    return_distributions: bool = False,
) -> ConditionalLogProbs:
    """Log-probabilities of right-padded ``target_ids`` (B, T) given ``prefix`` vectors (B, k, H).

    Args:
        decoder: a causal LM (run as is: freeze it, or pass a PEFT model inside ``disable_adapter()``).
        prefix: the compress-token states from the encoder; cast to the decoder's dtype.
        target_ids: target token ids, EOS included, right-padded.
        target_mask: 1 for real target tokens.
        return_distributions: also return the full (B, T, V) log-softmax (memory: B*T*V floats).
    """
    if prefix.shape[0] != target_ids.shape[0]:
        raise ValueError(f"prefix has {prefix.shape[0]} rows but target_ids has {target_ids.shape[0]}.")
    num_prefix = prefix.shape[1]
    target_embeds = decoder.get_input_embeddings()(target_ids)
    inputs_embeds = torch.cat([prefix.to(target_embeds.dtype), target_embeds], dim=1)
    prefix_mask = torch.ones(prefix.shape[:2], dtype=target_mask.dtype, device=target_mask.device)
    attention_mask = torch.cat([prefix_mask, target_mask], dim=1)
    predicting_positions = slice(num_prefix - 1, num_prefix - 1 + target_ids.shape[1])
    if has_plain_lm_head(decoder):
        hidden = last_hidden_states(decoder, attention_mask, inputs_embeds=inputs_embeds)
        predicting, lm_head = hidden[:, predicting_positions], decoder.get_output_embeddings()
    else:  # the model post-processes its logits: take them from its own forward (B x T x V in memory)
        position_ids = position_ids_from_mask(attention_mask)
        logits = decoder(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).logits
        predicting, lm_head = logits[:, predicting_positions], nn.Identity()
    if return_distributions:
        log_probs = at_least_float32(lm_head(predicting)).log_softmax(dim=-1)
        token_log_probs = log_probs.gather(-1, target_ids[..., None]).squeeze(-1) * target_mask.to(log_probs.dtype)
        return ConditionalLogProbs(token_log_probs, target_mask, log_probs)
    # The vocabulary projection is the costliest layer per position: apply it to real target tokens only.
    real = target_mask.bool()
    logits = at_least_float32(lm_head(predicting[real]))
    token_log_probs = logits.new_zeros(target_ids.shape)
    targets = target_ids[real]
    token_log_probs[real] = logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(dim=-1)
    return ConditionalLogProbs(token_log_probs, target_mask)


_PLAIN_LM_HEAD: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def has_plain_lm_head(decoder: nn.Module) -> bool:
    """Whether ``decoder``'s logits are its output embedding applied to its last hidden states (checked once).

    True for Llama, Qwen2, GPT-2, SmolLM2, Mistral; False for models whose forward post-processes the logits
    (Gemma-2/3 soft-capping, Cohere and Granite logit scaling). :func:`conditional_log_probs` then takes the
    logits from the model's own forward instead of projecting only the real target positions.
    """
    if decoder not in _PLAIN_LM_HEAD:
        device = decoder.get_input_embeddings().weight.device
        input_ids = torch.arange(1, 4, device=device)[None]
        mask = torch.ones_like(input_ids)
        with torch.no_grad():
            logits = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).logits.float()
            projected = decoder.get_output_embeddings()(last_hidden_states(decoder, mask, input_ids=input_ids))
        _PLAIN_LM_HEAD[decoder] = torch.allclose(projected.float(), logits, rtol=1e-5, atol=1e-5)  # strict: safe side
    return _PLAIN_LM_HEAD[decoder]


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision logits for a stable softmax; keep float64 as is."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every parameter frozen (the decoder for full fine-tuning)."""
    clone = copy.deepcopy(model)
    clone.requires_grad_(False)
    return clone.eval()


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a PEFT model whose adapters can be disabled."""
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


class FrozenDecoder:
    """Provides the frozen original LLM, choosing the cheapest correct source.

    - an explicit ``decoder`` model: used as is (frozen here);
    - else, when ``encoder`` is a PEFT model: the encoder's own weights with all adapters disabled, so no
      second copy sits in memory;
    - else: a frozen deep copy of ``encoder`` taken now, i.e. before any training step.

    Use as ``with frozen_decoder() as decoder: ...``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module | None = None) -> None:
        self.encoder = encoder
        if decoder is None and not is_peft_model(encoder):
            decoder = frozen_copy(encoder)
        elif decoder is not None:
            decoder.requires_grad_(False)
            decoder.eval()
        self.decoder = decoder

    @property
    def shares_encoder_weights(self) -> bool:
        """True when the decoder is the encoder with its adapters disabled (no separate copy)."""
        return self.decoder is None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[nn.Module]:
        if self.decoder is not None:
            yield self.decoder
            return
        with preserved_trainability(self.encoder), self.encoder.disable_adapter(), eval_mode(self.encoder):
            yield self.encoder


@contextlib.contextmanager
def preserved_trainability(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every parameter's ``requires_grad`` on exit.

    PEFT's ``disable_adapter()`` and ``set_adapter()`` mark all active adapters trainable again, which would
    un-freeze a frozen stage-1 adapter.
    """
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    try:
        yield model
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in trainable)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (no dropout: a frozen role must be deterministic), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def original_decoder(model: nn.Module, settings: EncoderSettings, decoder: nn.Module | None) -> FrozenDecoder:
    """The frozen *original* LLM (the decoder of both stages), from the cheapest correct source.

    An explicit ``decoder`` wins. If ``model`` (or a PEFT model's base) is not the original recorded in the
    settings, e.g. a fully fine-tuned stage-1 checkpoint, the original is loaded from
    ``settings.base_model_name_or_path`` (the decoder, unlike the reference, *is* the original). Otherwise the
    model's own weights serve, with adapters disabled (PEFT) or as a frozen copy.
    """
    if decoder is None and settings.base_model_name_or_path:
        own = (model.get_base_model() if is_peft_model(model) else model).name_or_path
        original = resolve_model_name_or_path(settings.base_model_name_or_path)
        if os.path.normpath(resolve_model_name_or_path(own)) != os.path.normpath(original):
            logger.info("Loading the original LLM %s as the frozen decoder.", settings.base_model_name_or_path)
            decoder = load_causal_lm(settings.base_model_name_or_path, next(model.parameters()).dtype)
    return FrozenDecoder(model, decoder)
