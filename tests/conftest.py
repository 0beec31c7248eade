"""Shared fixtures: the real SmolLM2 tokenizer (from the embedded default model) and the architecture parameter."""

from __future__ import annotations

import copy
import os

if "PYTEST_XDIST_WORKER" in os.environ:  # ``pytest -n N``: one thread per worker (and its subprocesses), so that
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # N workers on N cores do not spin against each other
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # the imports below load torch: after the thread settings
from helpers import ARCHITECTURES, make_tiny_model
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from autoreg_embed import default_model_path


@pytest.fixture(scope="session")
def default_model_dir():
    """The embedded SmolLM2-135M-Instruct as a cached safetensors folder (converted once per cache)."""
    return default_model_path()


@pytest.fixture(scope="session")
def _session_tokenizer(default_model_dir) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture
def tokenizer(_session_tokenizer) -> PreTrainedTokenizerBase:
    """A fresh copy of the real SmolLM2 tokenizer (tests may add tokens to it)."""
    return copy.deepcopy(_session_tokenizer)


@pytest.fixture(params=ARCHITECTURES)
def architecture(request) -> str:
    return request.param


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer):
    """A tiny random Llama over the real SmolLM2 tokenizer, saved as a model folder."""
    folder = tmp_path / "tiny-base"
    make_tiny_model("llama", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
