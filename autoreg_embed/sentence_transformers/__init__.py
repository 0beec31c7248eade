"""sentence-transformers integration: the AutoRegEmbed module, checkpoint export, loading and prompt baselines."""

from autoreg_embed.sentence_transformers.export import (
    DEFAULT_PROMPT_NAME,
    DEFAULT_PROMPTS,
    PROMPTEOL_INSTRUCTION,
    PROMPTEOL_LAYOUT,
    PROMPTEOL_TEMPLATE,
    baseline,
    export_sentence_transformer,
    load,
    prompts_from_instructions,
    recorded_training_stages,
    write_sentence_transformers_files,
)
from autoreg_embed.sentence_transformers.model_card import latest_eval_metrics, render_model_card
from autoreg_embed.sentence_transformers.module import AutoRegEmbedModule, embedding_dimension

__all__ = [
    "DEFAULT_PROMPTS",
    "DEFAULT_PROMPT_NAME",
    "PROMPTEOL_INSTRUCTION",
    "PROMPTEOL_LAYOUT",
    "PROMPTEOL_TEMPLATE",
    "AutoRegEmbedModule",
    "baseline",
    "embedding_dimension",
    "export_sentence_transformer",
    "latest_eval_metrics",
    "load",
    "prompts_from_instructions",
    "recorded_training_stages",
    "render_model_card",
    "write_sentence_transformers_files",
]
