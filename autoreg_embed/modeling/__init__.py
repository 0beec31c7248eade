"""Compressing encoder, conditional log-probs under a frozen decoder, frozen roles, pooling, and encoder settings."""

from autoreg_embed.modeling.compress_tokens import add_compress_tokens
from autoreg_embed.modeling.decoder import ConditionalLogProbs, DecoderPrompt, conditional_log_probs
from autoreg_embed.modeling.encoder import (
    EncoderOutput,
    backbone_of,
    compress_positions,
    daap_pool,
    encode,
    last_hidden_states,
)
from autoreg_embed.modeling.frozen import FrozenRole, frozen_copy, original_decoder, reference_role
from autoreg_embed.modeling.inputs import EncoderInputBuilder, compress_token_ids, pad_sequences
from autoreg_embed.modeling.settings import SETTINGS_FILE, EncoderSettings

__all__ = [
    "SETTINGS_FILE",
    "ConditionalLogProbs",
    "DecoderPrompt",
    "EncoderInputBuilder",
    "EncoderOutput",
    "EncoderSettings",
    "FrozenRole",
    "add_compress_tokens",
    "backbone_of",
    "compress_positions",
    "compress_token_ids",
    "conditional_log_probs",
    "daap_pool",
    "encode",
    "frozen_copy",
    "last_hidden_states",
    "original_decoder",
    "pad_sequences",
    "reference_role",
]
