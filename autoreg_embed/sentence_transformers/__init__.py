"""sentence-transformers integration: the AutoRegEmbed module, checkpoint export, loading and prompt baselines.

Modules: :mod:`~autoreg_embed.sentence_transformers.module` (the input module), ``prompts`` (instructions as
prompts, PromptEOL), ``export`` (writing checkpoints), ``loading`` (:func:`load`), ``baselines`` (untrained
prompt baselines) and ``model_card``.
"""

from autoreg_embed.sentence_transformers.baselines import baseline
from autoreg_embed.sentence_transformers.export import (
    export_sentence_transformer,
    recorded_training_stages,
    refresh_model_card,
    write_sentence_transformers_files,
)
from autoreg_embed.sentence_transformers.loading import load
from autoreg_embed.sentence_transformers.model_card import (
    latest_eval_metrics,
    render_model_card,
    training_stage_record,
)
from autoreg_embed.sentence_transformers.module import AutoRegEmbedModule, embedding_dimension
from autoreg_embed.sentence_transformers.prompts import (
    DEFAULT_PROMPT_NAME,
    DEFAULT_PROMPTS,
    PROMPTEOL_INSTRUCTION,
    PROMPTEOL_LAYOUT,
    PROMPTEOL_TEMPLATE,
    check_prompts,
    prompts_from_instructions,
)

__all__ = [
    "DEFAULT_PROMPTS",
    "DEFAULT_PROMPT_NAME",
    "PROMPTEOL_INSTRUCTION",
    "PROMPTEOL_LAYOUT",
    "PROMPTEOL_TEMPLATE",
    "AutoRegEmbedModule",
    "baseline",
    "check_prompts",
    "embedding_dimension",
    "export_sentence_transformer",
    "latest_eval_metrics",
    "load",
    "prompts_from_instructions",
    "recorded_training_stages",
    "refresh_model_card",
    "render_model_card",
    "training_stage_record",
    "write_sentence_transformers_files",
]
