"""autoreg-embed: text embeddings from decoder-only LLMs via compression and conditional distribution alignment.

The public names below are imported on first use (PEP 562 module ``__getattr__``, as trl's lazy module does), so
``import autoreg_embed`` and ``autoreg-embed --help`` do not import torch, transformers or sentence-transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoreg_embed._lazy import lazy_exports

__version__ = "0.1.0.dev0"
"""The package version; ``pyproject.toml`` reads it from here (the one place it is defined)."""

_PUBLIC_NAMES: dict[str, tuple[str, ...]] = {
    "autoreg_embed.default_model": ("DEFAULT_MODEL", "default_model_path", "resolve_model_name_or_path"),
    "autoreg_embed.modeling": (
        "EncoderInputBuilder",
        "EncoderSettings",
        "FrozenRole",
        "add_compress_tokens",
        "conditional_log_probs",
        "encode",
    ),
    "autoreg_embed.modeling.checkpoint": ("LoadedEncoder", "load_encoder"),
    "autoreg_embed.sentence_transformers": ("AutoRegEmbedModule", "baseline", "export_sentence_transformer", "load"),
    "autoreg_embed.trainers": (
        "CDAConfig",
        "CDATrainer",
        "CompressionConfig",
        "CompressionTrainer",
        "ContrastiveConfig",
        "ContrastiveTrainer",
    ),
}
__getattr__, __dir__, _names = lazy_exports(__name__, _PUBLIC_NAMES)
__all__ = ["__version__", *_names]

if TYPE_CHECKING:  # the names as type checkers and documentation tools see them
    from autoreg_embed.default_model import (
        DEFAULT_MODEL as DEFAULT_MODEL,
    )
    from autoreg_embed.default_model import (
        default_model_path as default_model_path,
    )
    from autoreg_embed.default_model import (
        resolve_model_name_or_path as resolve_model_name_or_path,
    )
    from autoreg_embed.modeling import (
        EncoderInputBuilder as EncoderInputBuilder,
    )
    from autoreg_embed.modeling import (
        EncoderSettings as EncoderSettings,
    )
    from autoreg_embed.modeling import (
        FrozenRole as FrozenRole,
    )
    from autoreg_embed.modeling import (
        add_compress_tokens as add_compress_tokens,
    )
    from autoreg_embed.modeling import (
        conditional_log_probs as conditional_log_probs,
    )
    from autoreg_embed.modeling import (
        encode as encode,
    )
    from autoreg_embed.modeling.checkpoint import LoadedEncoder as LoadedEncoder
    from autoreg_embed.modeling.checkpoint import load_encoder as load_encoder
    from autoreg_embed.sentence_transformers import (
        AutoRegEmbedModule as AutoRegEmbedModule,
    )
    from autoreg_embed.sentence_transformers import (
        baseline as baseline,
    )
    from autoreg_embed.sentence_transformers import (
        export_sentence_transformer as export_sentence_transformer,
    )
    from autoreg_embed.sentence_transformers import (
        load as load,
    )
    from autoreg_embed.trainers import (
        CDAConfig as CDAConfig,
    )
    from autoreg_embed.trainers import (
        CDATrainer as CDATrainer,
    )
    from autoreg_embed.trainers import (
        CompressionConfig as CompressionConfig,
    )
    from autoreg_embed.trainers import (
        CompressionTrainer as CompressionTrainer,
    )
    from autoreg_embed.trainers import (
        ContrastiveConfig as ContrastiveConfig,
    )
    from autoreg_embed.trainers import (
        ContrastiveTrainer as ContrastiveTrainer,
    )
