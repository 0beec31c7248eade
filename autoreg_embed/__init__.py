"""autoreg-embed: text embeddings from decoder-only LLMs via compression and conditional distribution alignment."""

from autoreg_embed.default_model import DEFAULT_MODEL, default_model_path, resolve_model_name_or_path
from autoreg_embed.modeling import (
    EncoderInputBuilder,
    EncoderSettings,
    FrozenRole,
    add_compress_tokens,
    conditional_log_probs,
    encode,
)
from autoreg_embed.modeling.checkpoint import LoadedEncoder, load_encoder
from autoreg_embed.sentence_transformers import AutoRegEmbedModule, export_sentence_transformer, load
from autoreg_embed.trainers import (
    CDAConfig,
    CDATrainer,
    CompressionConfig,
    CompressionTrainer,
    ContrastiveConfig,
    ContrastiveTrainer,
    DistillConfig,
    DistillTrainer,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT_MODEL",
    "AutoRegEmbedModule",
    "CDAConfig",
    "CDATrainer",
    "CompressionConfig",
    "CompressionTrainer",
    "ContrastiveConfig",
    "ContrastiveTrainer",
    "DistillConfig",
    "DistillTrainer",
    "EncoderInputBuilder",
    "EncoderSettings",
    "FrozenRole",
    "LoadedEncoder",
    "__version__",
    "add_compress_tokens",
    "conditional_log_probs",
    "default_model_path",
    "encode",
    "export_sentence_transformer",
    "load",
    "load_encoder",
    "resolve_model_name_or_path",
]
