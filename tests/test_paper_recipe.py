"""The paper's recipe as shipped (examples/configs/paper_stage*.yaml) runs end to end on a tiny LLaMA-2-style model.

LLaMA-2 and Mistral tokenizers have BOS ``<s>``, EOS ``</s>``, UNK ``<unk>`` and no pad token; the configs ask for
FlashAttention-2 through ``model_init_kwargs``, which falls back to sdpa where flash-attn is absent (here).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers import make_tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from autoreg_embed import CompressionConfig, CompressionTrainer, load_encoder
from autoreg_embed.cli import main
from autoreg_embed.resources import QUICKSTART_FILES

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"


@pytest.fixture(scope="module")
def llama2_style_dir(tmp_path_factory) -> Path:
    """A tiny Llama saved with a BPE tokenizer trained on the quickstart texts: <s>, </s>, <unk>, and no pad."""
    texts = [line for path in QUICKSTART_FILES.values() for line in path.read_text(encoding="utf-8").splitlines()]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert tokenizer.pad_token is None
    path = tmp_path_factory.mktemp("llama2-style")
    make_tiny_model("llama", tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_stage(stage: str, config_file: str, model: Path | str, output_dir: Path) -> None:
    main(
        [
            stage,
            "--config",
            str(CONFIGS / config_file),
            "--model_name_or_path",
            str(model),
            "--train_file",
            "quickstart",
            "--output_dir",
            str(output_dir),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--max_text_length",
            "64",
            "--max_target_length",
            "32",
            "--bf16",
            "false",
            "--use_cpu",
            "true",
            "--save_strategy",
            "no",
        ]
    )


def test_paper_configs_run_both_stages_on_a_tokenizer_without_pad_token(tmp_path, llama2_style_dir, caplog):
    with caplog.at_level(logging.INFO):
        run_stage("compress", "paper_stage1.yaml", llama2_style_dir, tmp_path / "stage1")
    assert "using its unk token '<unk>' for padding" in caplog.text
    assert "using attn_implementation='sdpa' instead" in caplog.text  # flash_attention_2 asked, absent here
    stage1 = load_encoder(tmp_path / "stage1")
    assert stage1.tokenizer.pad_token == "<unk>"  # saved with the checkpoint, so stage 2 pads the same way
    assert stage1.settings.num_compress_tokens == 5
    run_stage("align", "paper_stage2.yaml", tmp_path / "stage1", tmp_path / "stage2")
    stage2 = load_encoder(tmp_path / "stage2")
    assert stage2.tokenizer.pad_token == "<unk>"
    assert stage2.settings.base_model_name_or_path == str(llama2_style_dir)


def test_model_init_kwargs_reach_from_pretrained(tmp_path, llama2_style_dir):
    args = CompressionConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        model_init_kwargs='{"attn_implementation": "eager"}',  # a JSON string, as from the command line
    )
    trainer = CompressionTrainer(model=str(llama2_style_dir), args=args)
    assert trainer.model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="model_dtype, not inside model_init_kwargs"):
        CompressionConfig(output_dir=str(tmp_path / "x"), model_init_kwargs={"dtype": "bfloat16"})
