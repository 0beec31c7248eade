"""Tiny random causal LMs for tests and benchmarks: every architecture family the package is checked on.

Not part of the training API; the test suite, ``benchmarks/`` and the CPU smoke modes of the GPU scripts build their
models here, so that there is one recipe for a tiny model.
"""

from __future__ import annotations

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

LLAMA_STYLE_MODELS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "gemma2": (
        Gemma2Config,
        Gemma2ForCausalLM,
        {"head_dim": 8, "final_logit_softcapping": 0.3},
    ),  # small cap: large effect
    "granite": (GraniteConfig, GraniteForCausalLM, {"logits_scaling": 4.0}),  # logits divided by logits_scaling
}
"""Architectures sharing Llama's config fields: (config class, model class, extra config of the tiny model)."""


def make_tiny_model(
    architecture: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0, **config_overrides: object
) -> PreTrainedModel:
    """A tiny random causal LM (2 layers, hidden 32) of the given architecture over ``tokenizer``'s vocabulary.

    ``config_overrides`` replace fields of the tiny config (e.g. a wider model with a larger init).
    """
    torch.manual_seed(seed)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if architecture == "gpt2":
        fields = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 1024, **config_overrides}
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), **special, **fields)).eval()
    if architecture not in LLAMA_STYLE_MODELS:
        raise ValueError(architecture)
    config_class, model_class, extra = LLAMA_STYLE_MODELS[architecture]
    fields = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **extra,
        **config_overrides,
    }
    return model_class(config_class(vocab_size=len(tokenizer), **special, **fields)).eval()
