"""Checkpoints: resuming equals not stopping, saves are atomic, and every folder the package writes is a next model=."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import QUIET_CPU_RUN, make_config
from multiprocess_worker import (
    NUM_COMPRESS_TOKENS,
    build_trainer,
    compression_rows,
    lora,
    trainable_weights,
    triplet_rows,
)
from transformers import AutoModelForCausalLM, Trainer
from transformers.trainer_utils import get_last_checkpoint

from autoreg_embed import (
    CDAConfig,
    CDATrainer,
    CompressionConfig,
    CompressionTrainer,
    EncoderInputBuilder,
    conditional_log_probs,
    encode,
    load_encoder,
)
from autoreg_embed.cli import main as cli_main
from autoreg_embed.data.collators import TargetBuilder

RESUME = {
    "optim": "adamw_torch",
    "learning_rate": 1e-2,
    "lr_scheduler_type": "linear",
    "max_steps": 4,
    "save_strategy": "steps",
    "save_steps": 2,
}
"""Adam moments and a decaying learning rate: resuming must restore optimizer and scheduler, not just weights."""


@pytest.mark.parametrize(
    "name", ["compression", "compression-lora", "cda-copy", "cda-two-adapter", "cda-precomputed", "contrastive"]
)
def test_resuming_from_checkpoint_equals_the_uninterrupted_run(tmp_path, name):
    full = build_trainer(name, tmp_path, 2, tag="full", **RESUME)
    full.train()
    expected = trainable_weights(full)
    checkpoint = tmp_path / f"{name}-full" / "checkpoint-2"
    assert checkpoint.is_dir()
    assert not list((tmp_path / f"{name}-full").glob(".staging*"))

    resumed = build_trainer(name, tmp_path, 2, tag="resumed", **RESUME)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    got = trainable_weights(resumed)
    assert got.keys() == expected.keys()
    assert max(float((got[k] - expected[k]).abs().max()) for k in got) <= 1e-6
    halfway = build_trainer(name, tmp_path, 2, tag="halfway", **{**RESUME, "max_steps": 2})
    halfway.train()
    moved = trainable_weights(halfway)
    assert max(float((moved[k] - expected[k]).abs().max()) for k in got) > 1e-4  # steps 3-4 did change weights


def test_a_crash_during_a_save_leaves_no_checkpoint_folder(tmp_path, monkeypatch):
    def crash(self, output_dir):
        raise OSError("disk full")

    monkeypatch.setattr(Trainer, "_save_rng_state", crash)  # after the weights and the optimizer were written
    trainer = build_trainer("compression", tmp_path, 2, tag="crash", **RESUME)
    with pytest.raises(OSError, match="disk full"):
        trainer.train()
    run_dir = tmp_path / "compression-crash"
    assert not (run_dir / "checkpoint-2").exists()
    assert get_last_checkpoint(str(run_dir)) is None  # resume_from_checkpoint=True finds nothing to resume
    assert (run_dir / ".staging-checkpoint-2" / "checkpoint-2").is_dir()  # the partial save, under a staging name

    monkeypatch.undo()
    trainer = build_trainer("compression", tmp_path, 2, tag="crash", **{**RESUME, "save_total_limit": 1})
    trainer.train()
    assert sorted(path.name for path in run_dir.iterdir()) == ["checkpoint-4"]  # staging gone, older rotated out


# ---- every folder the package writes is a valid next model= -----------------------------------------------------


@pytest.fixture
def base_model_dir(tiny_model_dir):
    """A tiny Llama saved with the SmolLM2 tokenizer: the 'original LLM' that adapter checkpoints refer to."""
    return tiny_model_dir


def checkpointing_config(config_class: type, output_dir: Path):
    """2 steps at batch 2 with a checkpoint at step 2 (the tiny runs whose folders the tests below continue)."""
    return make_config(
        config_class,
        output_dir,
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
        learning_rate=1e-2,
        num_compress_tokens=NUM_COMPRESS_TOKENS,
    )


def stage1_folders(tmp_path, base_model_dir, peft_config=None) -> dict[str, str]:
    """Run stage 1 with a checkpoint at step 2; return its checkpoint-2, a final merged and a final adapter save."""
    args = checkpointing_config(CompressionConfig, tmp_path / "stage1")
    trainer = CompressionTrainer(
        model=str(base_model_dir),
        args=args,
        train_dataset=Dataset.from_list(compression_rows()),
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    folders = {"checkpoint-2": str(tmp_path / "stage1" / "checkpoint-2"), "final": str(tmp_path / "final")}
    if peft_config is not None:
        trainer.args.merge_adapter_on_save = False
        trainer.save_model(str(tmp_path / "final-adapter"))
        folders["final-adapter"] = str(tmp_path / "final-adapter")
    return folders


def embeddings_of(model, tokenizer, settings) -> torch.Tensor:
    batch = EncoderInputBuilder(tokenizer, settings)(["A cat sat on the mat.", "Rain is wet."], "Summarize.")
    with torch.no_grad():
        return encode(model.eval(), batch["input_ids"], batch["attention_mask"], settings).embedding


def decoder_log_probs(decoder, tokenizer) -> torch.Tensor:
    """Log-probs of a fixed target under ``decoder`` given a fixed random prefix (to compare decoders)."""
    target = TargetBuilder(tokenizer, 16)(["Cats sleep on warm sofas."])
    prefix = torch.randn(1, NUM_COMPRESS_TOKENS, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return conditional_log_probs(decoder, prefix, target["target_ids"], target["target_mask"]).token_log_probs


@pytest.mark.parametrize("use_lora", [False, True])
def test_every_saved_folder_continues_into_both_stages(tmp_path, base_model_dir, use_lora):
    """checkpoint-N and final saves, full or adapter-only: each loads as ``model=`` of both trainers with the weights
    it holds, trains, and gets the original LLM as its decoder."""
    folders = stage1_folders(tmp_path, base_model_dir, lora() if use_lora else None)
    if use_lora:
        assert (tmp_path / "stage1" / "checkpoint-2" / "adapter_config.json").is_file()  # adapter-only
        assert (tmp_path / "final-adapter" / "adapter_config.json").is_file()
    original = AutoModelForCausalLM.from_pretrained(base_model_dir)
    for label, folder in folders.items():
        loaded = load_encoder(folder)
        expected = embeddings_of(loaded.model, loaded.tokenizer, loaded.settings)
        original_log_probs = decoder_log_probs(original, loaded.tokenizer)
        for trainer_class, config_class, rows in (
            (CDATrainer, CDAConfig, triplet_rows()),
            (CompressionTrainer, CompressionConfig, compression_rows()),
        ):
            where = f"{label} -> {trainer_class.__name__}"
            trainer = trainer_class(
                model=folder,
                args=config_class(
                    **QUIET_CPU_RUN,
                    output_dir=str(tmp_path / f"next-{label}"),
                    per_device_train_batch_size=2,
                    max_steps=1,
                    num_compress_tokens=NUM_COMPRESS_TOKENS,
                ),
                train_dataset=Dataset.from_list(rows),
            )
            start = embeddings_of(trainer.model, trainer.processing_class, trainer.encoder_settings)
            torch.testing.assert_close(start, expected, rtol=0, atol=1e-6, msg=where)
            assert trainable_weights(trainer), f"{where}: nothing to train"
            trainer.train()
            with trainer.frozen_decoder() as decoder:
                got = decoder_log_probs(decoder, trainer.processing_class)
            torch.testing.assert_close(got, original_log_probs, rtol=0, atol=1e-5, msg=where)


def test_in_memory_chain_equals_checkpoint_chain(tmp_path, base_model_dir):
    """A fully fine-tuned stage-1 model handed over in memory gets the same (original) decoder as its saved folder,
    not a frozen copy of its trained weights."""
    args = CompressionConfig(
        **QUIET_CPU_RUN,
        output_dir=str(tmp_path / "stage1"),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        num_compress_tokens=NUM_COMPRESS_TOKENS,
    )
    stage1 = CompressionTrainer(
        model=str(base_model_dir), args=args, train_dataset=Dataset.from_list(compression_rows())
    )
    stage1.train()
    stage1.save_model(str(tmp_path / "final"))
    original = decoder_log_probs(AutoModelForCausalLM.from_pretrained(base_model_dir), stage1.processing_class)
    trained = decoder_log_probs(stage1.model, stage1.processing_class)
    assert (trained - original).abs().max() > 1e-3  # stage 1 changed the weights
    cda_args = CDAConfig(
        **QUIET_CPU_RUN, output_dir=str(tmp_path / "cda"), num_compress_tokens=NUM_COMPRESS_TOKENS, max_steps=1
    )
    in_memory = CDATrainer(model=stage1.model, args=cda_args, processing_class=stage1.processing_class)
    from_folder = CDATrainer(model=str(tmp_path / "final"), args=cda_args)
    for trainer in (in_memory, from_folder):
        assert not trainer.frozen_decoder.shares_policy_weights
        with trainer.frozen_decoder() as decoder:
            torch.testing.assert_close(
                decoder_log_probs(decoder, trainer.processing_class), original, rtol=0, atol=1e-5
            )


def test_align_command_accepts_an_adapter_checkpoint(tmp_path, base_model_dir):
    folders = stage1_folders(tmp_path, base_model_dir, lora())
    output = tmp_path / "stage2"
    cli_main(
        [
            "align",
            "--model_name_or_path",
            folders["checkpoint-2"],
            "--output_dir",
            str(output),
            "--max_steps",
            "1",
            "--per_device_train_batch_size",
            "2",
            "--num_compress_tokens",
            str(NUM_COMPRESS_TOKENS),
            "--report_to",
            "none",
            "--use_cpu",
            "--save_strategy",
            "no",
        ]
    )
    assert load_encoder(output).settings.num_compress_tokens == NUM_COMPRESS_TOKENS


def test_two_adapter_checkpoint_loads_both_adapters_and_continues(tmp_path, base_model_dir):
    """LoRA through both stages: stage 1's adapter trains the compress-token rows, stage 2 adds 'align'. Its
    adapter-only checkpoint-N (PEFT puts 'align' in a subfolder) loads with both adapters active and continues."""
    folders = stage1_folders(tmp_path, base_model_dir, lora())
    args = checkpointing_config(CDAConfig, tmp_path / "stage2")
    stage2 = CDATrainer(
        model=folders["final-adapter"], args=args, train_dataset=Dataset.from_list(triplet_rows()), peft_config=lora()
    )
    stage2.train()
    checkpoint = tmp_path / "stage2" / "checkpoint-2"
    assert (checkpoint / "align" / "adapter_config.json").is_file()
    expected = embeddings_of(stage2.model, stage2.processing_class, stage2.encoder_settings)
    loaded = load_encoder(checkpoint)
    assert sorted(loaded.model.base_model.active_adapters) == ["align", "default"]
    torch.testing.assert_close(
        embeddings_of(loaded.model, loaded.tokenizer, loaded.settings), expected, atol=1e-6, rtol=0
    )
    args.output_dir = str(tmp_path / "again")
    again = CDATrainer(model=str(checkpoint), args=args)
    trainable = [name for name, parameter in again.model.named_parameters() if parameter.requires_grad]
    assert trainable and all(".align." in name for name in trainable)
