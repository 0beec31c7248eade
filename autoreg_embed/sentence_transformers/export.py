"""Write autoreg-embed encoders as sentence-transformers checkpoints (weights, module files, model card)."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sentence_transformers
import torch
import transformers
from torch import nn
from transformers import PreTrainedTokenizerBase

from autoreg_embed.default_model import resolve_model_name_or_path
from autoreg_embed.modeling.checkpoint import ADAPTER_CONFIG_FILE, partial_token_adapters
from autoreg_embed.modeling.frozen import is_peft_model
from autoreg_embed.modeling.settings import EncoderSettings
from autoreg_embed.sentence_transformers.model_card import render_model_card, stage_record
from autoreg_embed.sentence_transformers.module import MODULE_CONFIG_FILE, AutoRegEmbedModule, embedding_dimension
from autoreg_embed.sentence_transformers.prompts import DEFAULT_PROMPT_NAME, DEFAULT_PROMPTS, check_prompts

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
MODEL_CARD_FILE = "README.md"
MODULE_CLASS_REF = f"{AutoRegEmbedModule.__module__}.{AutoRegEmbedModule.__qualname__}"
"""How ``modules.json`` names the module class (the same string sentence-transformers' own ``save`` writes)."""


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def recorded_training_stages(model_name_or_path: str | os.PathLike | None) -> list[dict[str, Any]]:
    """Training-stage records of a local autoreg-embed checkpoint, oldest first (``[]`` for anything else).

    Each record is what :func:`~autoreg_embed.sentence_transformers.model_card.training_stage_record` saved (a
    checkpoint from before records gives ``{"trainer": name, "method": name}``).
    """
    if not model_name_or_path:
        return []
    stages = _read_json(Path(model_name_or_path) / MODULE_CONFIG_FILE).get("training_stages", [])
    return [stage_record(stage) for stage in stages]


def framework_versions() -> dict[str, str]:
    """Versions of the packages that define a checkpoint's behaviour (for the config and the model card)."""
    from autoreg_embed import __version__

    return {
        "autoreg_embed": __version__,
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "pytorch": torch.__version__,
    }


def write_sentence_transformers_files(
    output_dir: str | os.PathLike,
    settings: EncoderSettings,
    embedding_dimension: int,
    prompts: Mapping[str, str] | None = None,
    default_prompt_name: str | None = DEFAULT_PROMPT_NAME,
    training_stages: Sequence[str | Mapping[str, Any]] = (),
    eval_results: Mapping[str, Any] | None = None,
) -> None:
    """Write the files that make a checkpoint folder a sentence-transformers model, and its model card.

    Writes ``modules.json`` (one :class:`AutoRegEmbedModule`, stored in the folder root),
    ``config_sentence_transformers.json`` (prompts, default prompt name, cosine similarity), the module config and
    ``README.md``. The weights, tokenizer and ``autoreg_embed_config.json`` must be in the folder already (a
    Trainer save or :func:`export_sentence_transformer` puts them there).

    Args:
        prompts: prompt name -> instruction; default :data:`DEFAULT_PROMPTS` (none for a template without
            ``{instruction}``).
        default_prompt_name: the prompt plain ``encode`` uses.
        training_stages: the stages the weights went through, in order: trainer names or the records of
            :func:`~autoreg_embed.sentence_transformers.model_card.training_stage_record` (for the model card).
        eval_results: metric name -> value (or nested mappings), shown in the model card.
    """
    if prompts is None:
        prompts = DEFAULT_PROMPTS if "{instruction}" in settings.template else {}
    prompts, default_prompt_name = check_prompts(settings, prompts, default_prompt_name)
    directory = Path(output_dir)
    modules = [{"idx": 0, "name": "0", "path": "", "type": MODULE_CLASS_REF}]
    versions = framework_versions()
    st_config = {
        "model_type": "SentenceTransformer",
        "__version__": {name: version for name, version in versions.items() if name != "autoreg_embed"},
        "prompts": prompts,
        "default_prompt_name": default_prompt_name,
        "similarity_fn_name": "cosine",
    }
    stages = [stage_record(stage) for stage in training_stages]
    card = render_model_card(
        settings, prompts, default_prompt_name, embedding_dimension, stages, eval_results, versions=versions
    )
    files = {
        MODULES_FILE: json.dumps(modules, indent=2),
        ST_CONFIG_FILE: json.dumps(st_config, indent=2, ensure_ascii=False),
        MODULE_CONFIG_FILE: json.dumps({"training_stages": stages}, indent=4, ensure_ascii=False),
        MODEL_CARD_FILE: card,
    }
    for name, text in files.items():
        (directory / name).write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")


def export_sentence_transformer(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    settings: EncoderSettings,
    output_dir: str | os.PathLike,
    prompts: Mapping[str, str] | None = None,
    default_prompt_name: str | None = DEFAULT_PROMPT_NAME,
    merge_adapter: bool = True,
    training_stages: Sequence[str | Mapping[str, Any]] = (),
    eval_results: Mapping[str, Any] | None = None,
) -> Path:
    """Save an in-memory encoder as a folder that loads with ``SentenceTransformer(path, trust_remote_code=True)``.

    Writes the weights (safetensors), tokenizer, ``autoreg_embed_config.json`` and the sentence-transformers files
    (see :func:`write_sentence_transformers_files` for ``prompts`` and the rest).

    Args:
        model: a causal LM or a PEFT model wrapping one, with the compress tokens added.
        merge_adapter: for a PEFT model, merge the adapter into a copy of the base weights (a self-contained folder;
            the in-memory model is untouched, at the cost of one extra copy of the weights in memory). ``False``
            writes only the adapter; loading then needs ``settings.base_model_name_or_path``.

    Returns:
        The output folder.
    """
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    peft = is_peft_model(model)
    if peft and not merge_adapter:
        if not settings.base_model_name_or_path:
            raise ValueError("An adapter-only export needs settings.base_model_name_or_path to load the base model.")
        weights = model
    else:
        if (directory / ADAPTER_CONFIG_FILE).is_file():
            raise ValueError(f"{directory} holds an adapter already; export full weights into a fresh folder.")
        weights = copy.deepcopy(model).merge_and_unload() if peft else model
    with partial_token_adapters(weights):
        weights.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    settings.save(directory)
    write_sentence_transformers_files(
        directory,
        settings,
        embedding_dimension(model),
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        training_stages=training_stages,
        eval_results=eval_results,
    )
    return directory


def refresh_model_card(checkpoint: str | os.PathLike, eval_results: Mapping[str, Any] | None = None) -> Path:
    """Rewrite a saved checkpoint's ``README.md`` from the files in the folder, with ``eval_results`` under Evaluation.

    ``autoreg-embed evaluate`` calls this after writing its results, so the card shows the latest scores.

    Raises:
        FileNotFoundError: the folder is not an autoreg-embed checkpoint (no ``autoreg_embed_config.json``).
    """
    directory = Path(checkpoint)
    if not EncoderSettings.exists_in(directory):
        raise FileNotFoundError(f"{directory} is not an autoreg-embed checkpoint (no autoreg_embed_config.json).")
    settings = EncoderSettings.load(directory)
    st_config = _read_json(directory / ST_CONFIG_FILE)
    weights = directory if (directory / "config.json").is_file() else settings.base_model_name_or_path  # an adapter
    model_config = transformers.AutoConfig.from_pretrained(resolve_model_name_or_path(weights))
    card = render_model_card(
        settings,
        st_config.get("prompts", {}),
        st_config.get("default_prompt_name"),
        model_config.get_text_config().hidden_size,
        recorded_training_stages(directory),
        eval_results,
        versions=framework_versions(),
    )
    path = directory / MODEL_CARD_FILE
    path.write_text(card + ("" if card.endswith("\n") else "\n"), encoding="utf-8")
    return path
