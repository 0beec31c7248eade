"""Write autoreg-embed encoders as sentence-transformers checkpoints, load them, and build prompt baselines."""

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
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import load_file_path
from torch import nn
from transformers import PreTrainedTokenizerBase

from autoreg_embed.data.instructions import INSTRUCTION_PRESETS
from autoreg_embed.default_model import DEFAULT_MODEL
from autoreg_embed.modeling.checkpoint import ADAPTER_CONFIG_FILE, load_causal_lm, load_tokenizer
from autoreg_embed.modeling.frozen import is_peft_model
from autoreg_embed.modeling.settings import EncoderSettings
from autoreg_embed.sentence_transformers.model_card import render_model_card
from autoreg_embed.sentence_transformers.module import (
    MODULE_CONFIG_FILE,
    AutoRegEmbedModule,
    embedding_dimension,
    split_dtype,
)


def prompts_from_instructions(instructions: Mapping[str, str]) -> dict[str, str]:
    """sentence-transformers prompts from CDA instructions: ``query`` = I_next, ``document`` = I_self."""
    return {"query": instructions["next"], "document": instructions["self"]}


DEFAULT_PROMPTS = prompts_from_instructions(INSTRUCTION_PRESETS["sts"])
"""Prompts saved when none are given: the paper's STS instruction 'This sentence means in one word: “' as both."""

DEFAULT_PROMPT_NAME = "document"
"""The prompt plain ``encode`` uses: I_self, "embed this text so that it can regenerate itself"."""

PROMPTEOL_TEMPLATE = 'This sentence : "{text}" means in one word:"'
"""The PromptEOL template (Jiang et al.), the usual training-free baseline with last-token pooling."""

PROMPTEOL_INSTRUCTION = "means in one word"
PROMPTEOL_LAYOUT = {"template": 'This sentence : "{text}" {instruction}', "compress_token_init": ':"'}
"""Trainer-config options that start the encoder from the PromptEOL prompt: with ``PROMPTEOL_INSTRUCTION`` as the
instruction(s) the input is PromptEOL's with its closing ``:"`` token replaced by compress tokens initialised from
it, so with ``num_compress_tokens=1`` the untrained encoder equals ``baseline(name, "last", PROMPTEOL_TEMPLATE)``."""

MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
MODEL_CARD_FILE = "README.md"
MODULE_CLASS_REF = f"{AutoRegEmbedModule.__module__}.{AutoRegEmbedModule.__qualname__}"
"""How ``modules.json`` names the module class (the same string sentence-transformers' own ``save`` writes)."""


def check_prompts(
    settings: EncoderSettings, prompts: Mapping[str, str], default_prompt_name: str | None
) -> tuple[dict[str, str], str | None]:
    """Validate prompts against the template; return them as a dict with the default name (``None`` if no prompts).

    Raises:
        ValueError: a non-empty prompt for a template without ``{instruction}`` (it would be ignored), or a
            default prompt name that is not among the prompts.
    """
    prompts = dict(prompts)
    for prompt in prompts.values():
        settings.split_template(prompt)  # raises for a prompt the template has no {instruction} slot for
    if not prompts:
        return prompts, None
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise ValueError(f"default_prompt_name={default_prompt_name!r} is not one of the prompts {list(prompts)}.")
    return prompts, default_prompt_name


def recorded_training_stages(model_name_or_path: str | os.PathLike | None) -> list[str]:
    """Training stages recorded in a local autoreg-embed checkpoint (``[]`` for anything else, e.g. a hub name)."""
    if not model_name_or_path:
        return []
    path = Path(model_name_or_path) / MODULE_CONFIG_FILE
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")).get("training_stages", []))


def write_sentence_transformers_files(
    output_dir: str | os.PathLike,
    settings: EncoderSettings,
    embedding_dimension: int,
    prompts: Mapping[str, str] | None = None,
    default_prompt_name: str | None = DEFAULT_PROMPT_NAME,
    training_stages: Sequence[str] = (),
    eval_results: Mapping[str, float | int | str] | None = None,
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
        training_stages: the stages the weights went through, in order (for the model card).
        eval_results: metric name -> value, shown in the model card.
    """
    if prompts is None:
        prompts = DEFAULT_PROMPTS if "{instruction}" in settings.template else {}
    prompts, default_prompt_name = check_prompts(settings, prompts, default_prompt_name)
    directory = Path(output_dir)
    modules = [{"idx": 0, "name": "0", "path": "", "type": MODULE_CLASS_REF}]
    st_config = {
        "model_type": "SentenceTransformer",
        "__version__": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "pytorch": torch.__version__,
        },
        "prompts": prompts,
        "default_prompt_name": default_prompt_name,
        "similarity_fn_name": "cosine",
    }
    card = render_model_card(settings, prompts, default_prompt_name, embedding_dimension, training_stages, eval_results)
    files = {
        MODULES_FILE: json.dumps(modules, indent=2),
        ST_CONFIG_FILE: json.dumps(st_config, indent=2, ensure_ascii=False),
        MODULE_CONFIG_FILE: json.dumps({"training_stages": list(training_stages)}, indent=4),
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
    training_stages: Sequence[str] = (),
    eval_results: Mapping[str, float | int | str] | None = None,
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
    weights.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    settings.save(directory)
    write_sentence_transformers_files(
        directory,
        settings,
        embedding_dimension(model, settings),
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        training_stages=training_stages,
        eval_results=eval_results,
    )
    return directory


def load(
    model_name_or_path: str | os.PathLike,
    *,
    model_kwargs: dict[str, Any] | None = None,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    similarity_fn_name: str | None = None,
    truncate_dim: int | None = None,
    cache_folder: str | None = None,
    revision: str | None = None,
    token: bool | str | None = None,
    local_files_only: bool = False,
    **kwargs: Any,
) -> SentenceTransformer:
    """Load an autoreg-embed checkpoint as a :class:`~sentence_transformers.SentenceTransformer`, no flag needed.

    Gives the same model as ``SentenceTransformer(path, trust_remote_code=True)``: the module class is ours, so
    nothing from the checkpoint is imported. Saved prompts, default prompt name and similarity apply unless given
    here (given prompts override saved ones of the same name). ``model_kwargs`` go to ``from_pretrained``
    (``dtype``/``torch_dtype`` pick the dtype); other keyword arguments (``device``, ...) go to
    ``SentenceTransformer``. A ``device_map`` is not supported here; use the ``trust_remote_code`` path for it.

    Raises:
        ValueError: if the folder's ``modules.json`` is not the single :class:`AutoRegEmbedModule` we write (for
            other module stacks, load with ``SentenceTransformer(path, trust_remote_code=True)``).
    """
    name = str(model_name_or_path)
    hub_kwargs = {
        "token": token,
        "cache_folder": cache_folder,
        "revision": revision,
        "local_files_only": local_files_only,
    }
    modules_path = load_file_path(name, MODULES_FILE, **hub_kwargs)
    if modules_path is None:
        raise FileNotFoundError(f"{name} has no {MODULES_FILE}; it is not a sentence-transformers checkpoint.")
    entries = json.loads(Path(modules_path).read_text(encoding="utf-8"))
    if [entry["type"] for entry in entries] != [MODULE_CLASS_REF]:
        raise ValueError(
            f"{name} has the modules {[entry['type'] for entry in entries]}; autoreg_embed.load reads checkpoints "
            f"with the single module {MODULE_CLASS_REF}. Load it with SentenceTransformer(path, "
            "trust_remote_code=True)."
        )
    config_path = load_file_path(name, ST_CONFIG_FILE, **hub_kwargs)
    saved = json.loads(Path(config_path).read_text(encoding="utf-8")) if config_path else {}
    module = AutoRegEmbedModule.load(name, subfolder=entries[0]["path"], model_kwargs=model_kwargs, **hub_kwargs)
    return SentenceTransformer(
        modules=[module],
        prompts={**saved.get("prompts", {}), **(prompts or {})},
        default_prompt_name=default_prompt_name or saved.get("default_prompt_name"),
        similarity_fn_name=similarity_fn_name or saved.get("similarity_fn_name"),
        truncate_dim=truncate_dim or saved.get("truncate_dim"),
        **kwargs,
    )


def baseline(
    model_name_or_path: str | os.PathLike | None = None,
    pooling: str = "last",
    template: str = "{text}",
    *,
    add_bos: bool | None = None,
    normalize: bool = True,
    max_text_length: int = 512,
    prompts: Mapping[str, str] | None = None,
    default_prompt_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> SentenceTransformer:
    """An untrained causal LM as a :class:`~sentence_transformers.SentenceTransformer` (k = 0 compress tokens).

    Examples: PromptEOL is ``baseline(name, "last", PROMPTEOL_TEMPLATE)``; plain mean pooling is
    ``baseline(name, "mean")``; ``"eos"`` appends the EOS token and takes its state.

    Args:
        model_name_or_path: any causal LM (hub name or path; ``None``: the embedded SmolLM2-135M-Instruct).
        pooling: ``"last"``, ``"mean"`` or ``"eos"``.
        template: the input layout with ``{text}`` (and optionally ``{instruction}``, filled by the prompt).
        add_bos: start inputs with BOS; ``None``: when the tokenizer has a BOS token.
        prompts / default_prompt_name: prompts for a template with ``{instruction}`` (default: none).
        model_kwargs: passed to ``from_pretrained`` (e.g. ``{"dtype": torch.bfloat16}``).
        **kwargs: passed to ``SentenceTransformer`` (e.g. ``device``).
    """
    tokenizer = load_tokenizer(model_name_or_path)
    if tokenizer.pad_token is None:  # padding is masked out, so any token works
        tokenizer.pad_token = tokenizer.eos_token
    settings = EncoderSettings(
        num_compress_tokens=0,
        template=template,
        add_bos=tokenizer.bos_token_id is not None if add_bos is None else add_bos,
        pooling=pooling,
        normalize=normalize,
        max_text_length=max_text_length,
        base_model_name_or_path=str(model_name_or_path or DEFAULT_MODEL),
    )
    prompts, default_prompt_name = check_prompts(settings, prompts or {}, default_prompt_name)
    dtype, model_kwargs = split_dtype(model_kwargs)
    model = load_causal_lm(model_name_or_path, dtype, **model_kwargs)
    return SentenceTransformer(
        modules=[AutoRegEmbedModule(model.eval(), tokenizer, settings)],
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        similarity_fn_name="cosine",
        **kwargs,
    )
