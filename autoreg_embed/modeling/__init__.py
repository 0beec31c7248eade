"""Compressing encoder, conditional log-probs under a frozen decoder, pooling, and encoder settings."""

from autoreg_embed.modeling.decoder import ConditionalLogProbs, FrozenDecoder, conditional_log_probs, frozen_copy
from autoreg_embed.modeling.encoder import (
    EncoderOutput,
    add_compress_tokens,
    backbone_of,
    compress_positions,
    daap_pool,
    encode,
    last_hidden_states,
)
from autoreg_embed.modeling.inputs import EncoderInputBuilder, compress_token_ids, pad_sequences
from autoreg_embed.modeling.settings import SETTINGS_FILE, EncoderSettings

__all__ = [
    "SETTINGS_FILE",
    "ConditionalLogProbs",
    "EncoderInputBuilder",
    "EncoderOutput",
    "EncoderSettings",
    "FrozenDecoder",
    "add_compress_tokens",
    "backbone_of",
    "compress_positions",
    "compress_token_ids",
    "conditional_log_probs",
    "daap_pool",
    "encode",
    "frozen_copy",
    "last_hidden_states",
    "pad_sequences",
]
