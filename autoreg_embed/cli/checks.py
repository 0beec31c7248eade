"""Checks the command line runs before it loads any model: files, model names and folders, data rows.

Each failed check raises :class:`UserError` with one line that says what is wrong and what to do; the command
prints it without a traceback.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path

from autoreg_embed.cli.errors import UserError
from autoreg_embed.default_model import DEFAULT_MODEL, check_default_model_available

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_MODEL_FILES = ("config.json", "adapter_config.json")
_SETTINGS_FILE = "autoreg_embed_config.json"  # modeling.settings.SETTINGS_FILE, without importing torch


def require_readable_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a ``Path`` if it is a readable file, else :class:`UserError` naming ``what``."""
    file = Path(path).expanduser()
    if not file.exists():
        raise UserError(f"{what} {str(path)!r} does not exist.")
    if not file.is_file():
        raise UserError(f"{what} {str(path)!r} is a folder, not a file.")
    if not os.access(file, os.R_OK):
        raise UserError(f"{what} {str(path)!r} is not readable (check its permissions).")
    return file


def looks_like_local_path(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a hub id (so a typo must not go to the hub).

    True for absolute or explicitly relative paths (``/``, ``./``, ``../``, ``~``), Windows paths, more than one
    ``/``, a trailing ``/``, and ``folder/name`` where ``folder`` exists here (e.g. ``runs/stage1`` next to ``runs/``).
    """
    if name.startswith((".", "/", "~")) or "\\" in name or re.match(r"^[A-Za-z]:", name):
        return True
    if name.count("/") > 1 or name.endswith("/"):
        return True
    return "/" in name and Path(name.split("/", 1)[0]).is_dir()


def _check_hub_model(name: str) -> None:
    """Raise :class:`UserError` unless ``name`` is in the local hub cache or is a model the hub can serve."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or os.environ.get("TRANSFORMERS_OFFLINE"):
        raise UserError(f"Model {name!r} is not a local folder and not in the hub cache, and offline mode is on.")
    try:
        HfApi().model_info(name, timeout=10)
    except GatedRepoError:
        raise UserError(
            f"Model {name!r} is gated: accept its terms on huggingface.co and log in (hf auth login)."
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"Unknown model {name!r}: not a local folder, and the Hugging Face hub has no such model."
        ) from None
    except Exception as error:  # no network, DNS, proxy, timeout: one attempt, no retries
        raise UserError(
            f"Model {name!r} is not a local folder, and the Hugging Face hub could not be reached to find it "
            f"({type(error).__name__}: {error}). Check the name or the connection."
        ) from error


def check_model_source(name: str, *, checkpoint: bool = False) -> None:
    """Check that ``name`` can be loaded, before anything is loaded.

    Args:
        name: :data:`~autoreg_embed.DEFAULT_MODEL`, a local folder, or a hub id.
        checkpoint: require an autoreg-embed checkpoint (a folder with ``autoreg_embed_config.json``).

    Raises:
        UserError: the embedded model's package is missing; a local-looking path that does not exist; a file or
            a folder that holds no model; not a checkpoint where one is required; an unknown hub name.
    """
    if name == DEFAULT_MODEL:
        if checkpoint:
            raise UserError("Give the checkpoint folder to evaluate (or --baseline to evaluate an untrained model).")
        try:
            check_default_model_available()
        except FileNotFoundError as error:
            raise UserError(str(error)) from None
        return
    path = Path(name).expanduser()
    if path.is_file():
        raise UserError(f"Model {name!r} is a file; give the folder that holds the model.")
    if path.is_dir():
        if checkpoint and not (path / _SETTINGS_FILE).is_file():
            raise UserError(
                f"{name!r} is not an autoreg-embed checkpoint (no {_SETTINGS_FILE}). To evaluate an untrained "
                "model, add --baseline last (or mean, eos)."
            )
        if not any((path / file).is_file() for file in _MODEL_FILES):
            raise UserError(f"Folder {name!r} holds no model ({' or '.join(_MODEL_FILES)} missing).")
        return
    if looks_like_local_path(name):
        raise UserError(f"Model folder {name!r} does not exist.")
    if checkpoint:
        raise UserError(f"Checkpoint folder {name!r} does not exist.")
    if not _HUB_ID.fullmatch(name):
        raise UserError(f"Model {name!r} is neither a local folder nor a hub model name (owner/name).")
    _check_hub_model(name)


def check_output_dir(path: str) -> None:
    """The output folder must be a folder (or not exist yet) inside a writable place."""
    output = Path(path).expanduser()
    if output.exists() and not output.is_dir():
        raise UserError(f"Output folder {path!r} is a file.")
    existing = next(parent for parent in (output, *output.parents) if parent.exists())
    if not os.access(existing, os.W_OK):
        raise UserError(f"Cannot write the output folder {path!r}: {str(existing)!r} is not writable.")


def validate_data_file(
    path: str,
    text_columns: Sequence[str],
    optional_columns: Sequence[str] = (),
    list_columns: Sequence[str] = (),
    optional_list_columns: Sequence[str] = (),
    limit: int | None = None,
) -> int:
    """Check every record (the first ``limit``) of a data file; errors name the file and 1-based line.

    Returns:
        The number of records checked.

    Raises:
        UserError: unreadable file, invalid JSON, a missing column or a wrong type, no rows.
    """
    from autoreg_embed.data.files import read_records
    from autoreg_embed.data.schema import validate_records

    file = require_readable_file(path, "Data file")
    try:
        return validate_records(
            itertools.islice(read_records(file), limit),
            str(path),
            text_columns,
            optional_columns=optional_columns,
            list_columns=list_columns,
            optional_list_columns=optional_list_columns,
        )
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(str(error)) from None
