"""The package surface: lazy public names, one version, the abstract base trainer, choice checks, the [eval] extra,
and the model card's stage records."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
from helpers import compression_rows, make_trainer, triplet_rows

import autoreg_embed
from autoreg_embed import CompressionConfig, CompressionTrainer, ContrastiveTrainer
from autoreg_embed.sentence_transformers import recorded_training_stages, refresh_model_card
from autoreg_embed.sentence_transformers.model_card import AUTOREGEMBED_BIBTEX, INFONCE_BIBTEX
from autoreg_embed.trainers import AutoRegTrainer

REPO = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves_and_is_listed():
    for name in autoreg_embed.__all__:
        assert getattr(autoreg_embed, name) is not None
    assert set(autoreg_embed.__all__) <= set(dir(autoreg_embed))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        autoreg_embed.nope  # noqa: B018


def test_version_is_defined_once():
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject and '\nversion = "' not in pyproject
    assert 'version = { attr = "autoreg_embed.__version__" }' in pyproject
    assert autoreg_embed.__version__.count(".") >= 2


def test_base_trainer_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        AutoRegTrainer()


@pytest.mark.parametrize(("option", "value"), [("pooling", "maxpool"), ("instruction_position", "middle")])
def test_choice_options_are_checked_in_python_too(tmp_path, option, value):
    with pytest.raises(ValueError, match=rf"{option} must be one of .*got '{value}'"):
        CompressionConfig(output_dir=str(tmp_path), **{option: value})


def test_missing_eval_extra_is_named(monkeypatch):
    for name in [module for module in sys.modules if module.startswith("autoreg_embed.evaluation")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mteb", None)  # as if mteb were not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'autoreg-embed\[eval\]'"):
        importlib.import_module("autoreg_embed.evaluation")


def test_model_card_records_each_stage_with_data_hyperparameters_and_citation(tmp_path, tokenizer):
    stage1 = make_trainer(
        CompressionTrainer,
        tmp_path,
        tokenizer,
        rows=compression_rows(6),
        eval_rows=compression_rows(2),
        max_steps=1,
        learning_rate=3e-4,
        num_compress_tokens=2,
        eval_strategy="steps",
        eval_steps=1,
    )
    stage1.train()
    stage1.save_model(str(tmp_path / "stage1"))
    (record,) = recorded_training_stages(tmp_path / "stage1")
    assert record["trainer"] == record["method"] == "CompressionTrainer"
    assert record["train_dataset"] == {"rows": 6, "columns": ["context", "instruction", "target"]}
    assert record["eval_dataset"]["rows"] == 2 and record["steps"] == 1
    assert record["method_options"]["num_compress_tokens"] == 2
    assert record["hyperparameters"]["learning_rate"] == pytest.approx(3e-4)
    assert "report_to" not in record["hyperparameters"] and "hub_token" not in record["hyperparameters"]
    assert "eval_loss" in record["eval_results"]

    stage2 = make_trainer(
        ContrastiveTrainer,
        tmp_path,
        tokenizer,
        model=str(tmp_path / "stage1"),
        processing_class=None,
        rows=triplet_rows(4),
        max_steps=1,
        num_compress_tokens=2,
    )
    stage2.train()
    stage2.save_model(str(tmp_path / "stage2"))
    card = (tmp_path / "stage2" / "README.md").read_text(encoding="utf-8")
    assert "1. CompressionTrainer\n2. ContrastiveTrainer" in card
    assert "### Stage 1: CompressionTrainer" in card and "### Stage 2: ContrastiveTrainer" in card
    assert "- **Training dataset:** 4 rows; columns `query`, `pos`, `neg`" in card
    assert "| learning_rate | `0.0003` |" in card
    assert AUTOREGEMBED_BIBTEX in card and INFONCE_BIBTEX in card
    assert card.startswith("---\nlibrary_name: sentence-transformers\n")
    assert "\n### Framework Versions\n\n- autoreg_embed: " in card

    refresh_model_card(tmp_path / "stage2", {"sts": {"spearman": 12.5, "n": 20}})
    card = (tmp_path / "stage2" / "README.md").read_text(encoding="utf-8")
    assert "| sts.spearman | 12.5 |" in card and "2. ContrastiveTrainer" in card
    config = json.loads((tmp_path / "stage2" / "sentence_bert_config.json").read_text())
    assert [stage["trainer"] for stage in config["training_stages"]] == ["CompressionTrainer", "ContrastiveTrainer"]


def test_declared_dependencies_are_the_imported_packages():
    """pyproject's dependencies (plus the eval / gguf / plot extras) are exactly the distributions the code imports."""
    import ast
    from importlib.metadata import packages_distributions

    tomllib = pytest.importorskip("tomllib")
    imported = set()
    for path in (REPO / "autoreg_embed").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"autoreg_embed"}
    distributions = packages_distributions()

    def normalized(name: str) -> str:
        return name.lower().replace("_", "-")

    imported_distributions = {normalized(distributions[module][0]) for module in third_party}
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(requirements: list[str]) -> set[str]:
        return {normalized(re.split(r"[<>=\[ ]", requirement)[0]) for requirement in requirements}

    extras = project["optional-dependencies"]
    declared = names(project["dependencies"]) | names(extras["eval"] + extras["gguf"] + extras["plot"])
    assert imported_distributions == declared
