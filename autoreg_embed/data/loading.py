"""Load training data from a JSONL/JSON/CSV/Parquet file, a local dataset folder, or a hub dataset name."""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, load_dataset

from autoreg_embed.data.files import DATA_FILE_SUFFIXES


def load_rows(source: str | os.PathLike | Dataset, split: str = "train") -> Dataset:
    """Return a :class:`datasets.Dataset` from a file path, a folder, a hub name, or a Dataset (returned as is)."""
    if isinstance(source, Dataset):
        return source
    path = Path(source)
    file_format = DATA_FILE_SUFFIXES.get(path.suffix.lower())
    if file_format is not None:
        if not path.is_file():
            raise FileNotFoundError(f"Data file {path} does not exist.")
        return load_dataset(file_format, data_files=str(path), split="train")
    return load_dataset(str(source), split=split)
