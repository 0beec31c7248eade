"""Load an autoreg-embed checkpoint as a ``SentenceTransformer`` without ``trust_remote_code``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.util import load_file_path

from autoreg_embed.sentence_transformers.export import MODULE_CLASS_REF, MODULES_FILE, ST_CONFIG_FILE
from autoreg_embed.sentence_transformers.module import AutoRegEmbedModule


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
        FileNotFoundError: the folder (or hub repository) has no ``modules.json``.
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
