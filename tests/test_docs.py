"""The documentation: its tested code blocks run, and the generated option tables cover every option."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import QUIET_CPU_RUN, compression_rows, make_tiny_model, triplet_rows

from autoreg_embed import (
    CDAConfig,
    CompressionConfig,
    ContrastiveConfig,
    EncoderInputBuilder,
    EncoderSettings,
    encode,
    load_encoder,
)
from autoreg_embed.cli.arguments import DataArguments, EvaluateArguments, ModelArguments
from autoreg_embed.options import declared_options

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS / "hooks"))

import generated_tables  # noqa: E402  (the mkdocs hook, importable from its folder)

TESTED_BLOCK = re.compile(r"<!-- tested[^>]*-->\n```python\n(.*?)```", re.S)


def marked_blocks(page: str) -> list[str]:
    """The Python blocks of a docs page marked ``<!-- tested ... -->``, in order."""
    blocks = TESTED_BLOCK.findall((DOCS / page).read_text(encoding="utf-8"))
    assert blocks, f"no tested block in {page}"
    return blocks


def python_blocks_after(page: str, heading: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text[text.index(heading) :], re.S)


TINY_OPTIONS = dict(QUIET_CPU_RUN, max_steps=1, num_compress_tokens=2, max_text_length=32, max_target_length=16)


def test_subclassing_example_trains_and_is_cited_as_its_method(tmp_path, tokenizer):
    namespace: dict = {}
    exec(marked_blocks("subclassing.md")[0], namespace)
    trainer_class = namespace["LateTokensCompressionTrainer"]
    trainer = trainer_class(
        model=make_tiny_model("llama", tokenizer),
        args=CompressionConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, **TINY_OPTIONS),
        train_dataset=Dataset.from_list(compression_rows(4)),
        processing_class=tokenizer,
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()
    assert any("weighted_target_log_prob" in entry for entry in trainer.state.log_history)
    trainer.save_model(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text(encoding="utf-8")
    assert "LateTokensCompressionTrainer (a CompressionTrainer)" in card and "deng2025autoregembed" in card


def run_lora_recipe(tmp_path: Path, tokenizer, monkeypatch, save_stage2: bool) -> dict:
    """The two blocks of docs/lora.md, run as written on a tiny model (stage 2's final save optional)."""
    monkeypatch.chdir(tmp_path)
    base = make_tiny_model("llama", tokenizer)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    namespace = {
        "base_model": str(tmp_path / "base"),
        "options": TINY_OPTIONS,
        "compression_rows": Dataset.from_list(compression_rows(4)),
        "triplets": Dataset.from_list(triplet_rows(4)),
    }
    stage1_block, stage2_block = python_blocks_after("lora.md", "## Stage 1 with LoRA")[:2]
    exec(stage1_block, namespace)
    if not save_stage2:
        stage2_block = "\n".join(line for line in stage2_block.splitlines() if "stage2.save_model" not in line)
    exec(stage2_block, namespace)
    return namespace


def test_lora_through_both_stages_recipe_trains_the_second_adapter_only(tmp_path, tokenizer, monkeypatch):
    namespace = run_lora_recipe(tmp_path, tokenizer, monkeypatch, save_stage2=False)
    assert (tmp_path / "runs" / "stage1-lora" / "adapter_config.json").is_file()
    stage2 = namespace["stage2"]
    assert set(stage2.model.peft_config) == {"default", "align"}
    trainable = [name for name, parameter in stage2.model.named_parameters() if parameter.requires_grad]
    assert trainable and all(".align." in name for name in trainable)
    assert stage2.state.global_step == 1


def test_lora_through_both_stages_recipe_saves_merged_weights(tmp_path, tokenizer, monkeypatch):
    """The recipe's final save (stage-1 adapter with compress-token rows + 'align') merges both adapters: the saved
    folder embeds texts exactly as the in-memory two-adapter model does."""
    namespace = run_lora_recipe(tmp_path, tokenizer, monkeypatch, save_stage2=True)
    folder = tmp_path / "runs" / "stage2-lora"
    assert not (folder / "adapter_config.json").exists()  # merged on save
    loaded = load_encoder(folder)
    assert loaded.settings.num_compress_tokens == 2
    stage2 = namespace["stage2"]
    batch = EncoderInputBuilder(loaded.tokenizer, loaded.settings)(["A cat sat.", "Rain is wet."], "Repeat it.")
    with torch.no_grad():
        merged = encode(loaded.model, batch["input_ids"], batch["attention_mask"], loaded.settings).embedding
        in_memory = encode(stage2.model.eval(), batch["input_ids"], batch["attention_mask"], loaded.settings).embedding
    torch.testing.assert_close(merged, in_memory, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "config_class", [CompressionConfig, CDAConfig, ContrastiveConfig, ModelArguments, DataArguments, EvaluateArguments]
)
def test_every_option_has_help_and_appears_in_the_generated_table(config_class):
    path = f"{config_class.__module__}.{config_class.__qualname__}"
    table = generated_tables.options_table(path)
    own = declared_options(config_class)
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    for name in own:
        assert fields[name].metadata.get("help"), f"{config_class.__name__}.{name} has no help text"
        assert f"| `{name}` |" in table


def test_settings_table_lists_pooling_choices():
    table = generated_tables.options_table(f"{EncoderSettings.__module__}.EncoderSettings")
    assert "`compress_mean` / `compress_last` / `last` / `mean` / `eos`" in table
