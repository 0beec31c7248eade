"""Log-likelihood of target text under a frozen decoder conditioned on compress-token vectors.

The decoder reads ``[e_1 .. e_k ; embed(target + EOS)]``; the logits at positions ``k-1 .. k+T-2`` predict the
T target tokens. With a :class:`DecoderPrompt` (option ``decoder_template``, off by default; not in the paper)
it reads ``[embed(before) ; e_1 .. e_k ; embed(after) ; embed(target + EOS)]`` instead. The prefix vectors are
put in place of the k placeholder input embeddings inside the decoder's own forward (so that DDP, DeepSpeed and
FSDP engines run their hooks), and gradients flow into them (the encoder), never into the decoder's weights when
it is frozen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoreg_embed.modeling.encoder import position_ids_from_mask, unwrapped
from autoreg_embed.modeling.original import original_vocab_size
from autoreg_embed.modeling.settings import STATES_PLACEHOLDER, check_decoder_template


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


@dataclass(frozen=True)
class DecoderPrompt:
    """Token ids the frozen decoder reads around the k compress states: ``before + states + after + target``.

    The default (both empty) is the paper's decoder input, the states followed by the target. A template such as
    ``"<|im_start|>user\\nWrite one sentence using these words: {states}<|im_end|>\\n<|im_start|>assistant\\n"``
    lets an instruction-tuned decoder read the states as a user turn and the target as its answer (see
    ``docs/reproduce.md``: on SmolLM2-135M-Instruct, the stage 1 the decoder reads).
    """

    before: tuple[int, ...] = ()
    after: tuple[int, ...] = ()

    @classmethod
    def from_template(cls, template: str | None, tokenizer: Any) -> DecoderPrompt:
        """Tokenize the text around ``{states}`` in ``template`` (``None``: no prompt).

        No special tokens are added; special-token strings written in the template (e.g. ``<|im_start|>``) are
        recognised by the tokenizer.

        Raises:
            ValueError: ``template`` does not contain ``{states}`` exactly once.
        """
        if template is None:
            return cls()
        check_decoder_template(template)
        before, after = template.split(STATES_PLACEHOLDER)

        def ids(text: str) -> tuple[int, ...]:
            return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()

        return cls(ids(before), ids(after))


def conditional_log_probs(
    decoder: nn.Module,
    prefix: torch.Tensor,
    target_ids: torch.Tensor,
    target_mask: torch.Tensor,
    return_distributions: bool = False,
    prompt: DecoderPrompt = DecoderPrompt(),
) -> ConditionalLogProbs:
    """Log-probabilities of right-padded ``target_ids`` (B, T) given ``prefix`` vectors (B, k, H).

    The logits are the decoder's own (so models that post-process them, e.g. Gemma-2 soft-capping or Granite
    scaling, are scored correctly); the LM head projects the T predicting positions only. The softmax runs over
    the original LLM's vocabulary (:func:`~autoreg_embed.modeling.original.original_vocab_size`): a decoder that
    shares the encoder's grown embedding matrices (a frozen copy, or a PEFT model with adapters off) scores exactly
    as the original model loaded afresh.

    Args:
        decoder: a causal LM, possibly PEFT and/or engine-wrapped (run as is: freeze it, or pass a PEFT model
            inside ``disable_adapter()``).
        prefix: the compress-token states from the encoder; cast to the decoder's embedding dtype.
        target_ids: target token ids, EOS included, right-padded.
        target_mask: 1 for real target tokens.
        return_distributions: also return the full (B, T, V) log-softmax (memory: B*T*V floats).
        prompt: token ids read before and after the states (default: none, as in the paper).
    """
    if prefix.shape[0] != target_ids.shape[0]:
        raise ValueError(f"prefix has {prefix.shape[0]} rows but target_ids has {target_ids.shape[0]}.")
    batch, num_prefix = prefix.shape[:2]
    placeholders = target_ids[:, :1].expand(batch, num_prefix)  # any valid ids: their embeddings are replaced
    before, after = (
        torch.tensor(ids, dtype=target_ids.dtype, device=target_ids.device) for ids in (prompt.before, prompt.after)
    )
    input_ids = torch.cat([before.expand(batch, -1), placeholders, after.expand(batch, -1), target_ids], dim=1)
    num_read = input_ids.shape[1] - target_ids.shape[1]  # tokens before the first target token
    prefix_mask = torch.ones((batch, num_read), dtype=target_mask.dtype, device=target_mask.device)
    attention_mask = torch.cat([prefix_mask, target_mask], dim=1)
    predicting = torch.arange(num_read - 1, num_read - 1 + target_ids.shape[1], device=target_ids.device)
    with prefix_embeddings(decoder, prefix, offset=len(prompt.before)):
        logits = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
            logits_to_keep=predicting,
        ).logits
    vocab_size = original_vocab_size(unwrapped(decoder))
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    if return_distributions:
        log_probs = at_least_float32(logits).log_softmax(dim=-1)
        token_log_probs = log_probs.gather(-1, target_ids[..., None]).squeeze(-1) * target_mask.to(log_probs.dtype)
        return ConditionalLogProbs(token_log_probs, target_mask, log_probs)
    real = target_mask.bool()
    real_logits = at_least_float32(logits[real])  # the softmax over the vocabulary only where a target token is
    token_log_probs = real_logits.new_zeros(target_ids.shape)
    targets = target_ids[real]
    token_log_probs[real] = real_logits.gather(-1, targets[:, None]).squeeze(-1) - real_logits.logsumexp(dim=-1)
    return ConditionalLogProbs(token_log_probs, target_mask)


@contextlib.contextmanager
def prefix_embeddings(model: nn.Module, prefix: torch.Tensor, offset: int = 0) -> Iterator[None]:
    """Within the block, the k input embeddings from position ``offset`` of every forward of ``model`` are
    ``prefix`` (B, k, H).

    A forward hook on the input-embedding module (of the model inside any PEFT / engine wrapper) splices the
    vectors in, so the forward runs unchanged otherwise; whatever the model does after its embedding layer
    (e.g. Gemma's scaling) applies to them as to ``inputs_embeds``.
    """
    end = offset + prefix.shape[1]

    def splice(_module: nn.Module, _args: tuple, embeddings: torch.Tensor) -> torch.Tensor:
        return torch.cat([embeddings[:, :offset], prefix.to(embeddings.dtype), embeddings[:, end:]], dim=1)

    handle = unwrapped(model).get_input_embeddings().register_forward_hook(splice)
    try:
        yield
    finally:
        handle.remove()


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision logits for a stable softmax; keep float64 as is."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
