"""Train each trainer for a few steps on a tiny Llama, in one process or under ``torchrun`` (gloo, CPU).

Each process writes the trainable parameters it ends with to ``OUT/SCENARIO.rankR.pt``, so a test can check that
all ranks agree and that 2 processes x batch 2 equal 1 process x batch 4 (or batch 2 x gradient accumulation 2).
``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/multiprocess_worker.py --out DIR``
runs every scenario; the tests import :func:`run_scenario` for the one-process runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset
from helpers import QUIET_CPU_RUN, make_tiny_model
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer

from autoreg_embed import (
    CDAConfig,
    CDATrainer,
    CompressionConfig,
    CompressionTrainer,
    ContrastiveConfig,
    ContrastiveTrainer,
    EncoderSettings,
    add_compress_tokens,
    default_model_path,
)

GLOBAL_BATCH = 4
NUM_COMPRESS_TOKENS = 2
STEPS = 2
TARGET_WORDS = (1, 2, 14, 14)
"""Targets of very different lengths (2, 3, 15 and 15 tokens with EOS): a per-micro-batch mean would weigh the
tokens of short rows more than a per-token mean over the step."""


def compression_rows() -> list[dict]:
    return [
        {
            "context": f"Row {i}: the town of Ber{i} has {i + 3} bridges and a market on Sundays.",
            "instruction": "How many bridges?" if i % 2 else "",
            "target": " ".join(["yes"] * TARGET_WORDS[i % len(TARGET_WORDS)]),
        }
        for i in range(2 * GLOBAL_BATCH)
    ]


def triplet_rows() -> list[dict]:
    return [
        {
            "query": f"Query {i}: where do {'cats' if i % 2 else 'old dogs'} sleep at night?",
            "pos": f"They sleep {i} hours on warm sofas" + " and rugs" * (i % 3) + ".",
            "neg": f"Car number {i} needs diesel fuel.",
        }
        for i in range(2 * GLOBAL_BATCH)
    ]


def lora() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def tiny_llama(tokenizer) -> torch.nn.Module:
    return make_tiny_model("llama", tokenizer)


def stage1_lora_model(tokenizer) -> torch.nn.Module:
    """A tiny Llama with the compress tokens and a (random) stage-1 LoRA adapter, as stage 1 with LoRA leaves it."""
    model = make_tiny_model("llama", tokenizer)
    add_compress_tokens(model, tokenizer, EncoderSettings(num_compress_tokens=NUM_COMPRESS_TOKENS))
    return get_peft_model(model, lora())


SCENARIOS: dict[str, tuple[type, type, Callable[[], list[dict]], dict]] = {
    "compression": (CompressionTrainer, CompressionConfig, compression_rows, {}),
    "compression-lora": (CompressionTrainer, CompressionConfig, compression_rows, {"peft_config": lora}),
    "cda-copy": (CDATrainer, CDAConfig, triplet_rows, {}),
    "cda-adapter": (CDATrainer, CDAConfig, triplet_rows, {"peft_config": lora}),
    "cda-precomputed": (CDATrainer, CDAConfig, triplet_rows, {"precompute_ref_log_probs": True}),
    "cda-two-adapter": (CDATrainer, CDAConfig, triplet_rows, {"peft_config": lora, "model": stage1_lora_model}),
    "contrastive": (ContrastiveTrainer, ContrastiveConfig, triplet_rows, {"gather_across_processes": False}),
    "contrastive-gather": (ContrastiveTrainer, ContrastiveConfig, triplet_rows, {"gather_across_processes": True}),
}
"""Scenario name -> (trainer, config, rows, options); ``peft_config`` and ``model`` (given the tokenizer) are
factories, the rest config options. The default model is a fresh tiny Llama (seed 0)."""


def build_trainer(name: str, out: Path, per_device_batch: int, accumulation: int = 1, tag: str = "run", **options):
    """The trainer of scenario ``name`` on a fresh tiny Llama (seed 0), SGD at a constant lr; ``options`` override."""
    trainer_class, config_class, rows, scenario_options = SCENARIOS[name]
    scenario_options = dict(scenario_options)
    peft_config = scenario_options.pop("peft_config", lambda: None)()
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    model = scenario_options.pop("model", tiny_llama)(tokenizer)
    config = config_class(
        **{
            **QUIET_CPU_RUN,
            "output_dir": str(out / f"{name}-{tag}"),
            "per_device_train_batch_size": per_device_batch,
            "per_device_eval_batch_size": per_device_batch,
            "gradient_accumulation_steps": accumulation,
            "max_steps": STEPS,
            "optim": "sgd",
            "learning_rate": 0.5,
            "lr_scheduler_type": "constant",
            "num_compress_tokens": NUM_COMPRESS_TOKENS,
            "seed": 0,
            **({"ref_log_probs_cache_dir": str(out / f"cache-{tag}")} if name == "cda-precomputed" else {}),
            **scenario_options,
            **options,
        }
    )
    return trainer_class(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows()),
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def trainable_weights(trainer) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters of the (unwrapped) model being trained (gathered under ZeRO-3)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainable = [(key, value) for key, value in model.named_parameters() if value.requires_grad]
    gathered = contextlib.nullcontext()
    if any(hasattr(value, "ds_id") for _, value in trainable):
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters([value for _, value in trainable])
    with gathered:
        return {key: value.detach().clone() for key, value in trainable}


def run_scenario(
    name: str, out: Path, per_device_batch: int, accumulation: int = 1, tag: str = "run"
) -> dict[str, dict[str, torch.Tensor]]:
    """Train scenario ``name`` for :data:`STEPS` steps; return (and save, per rank) the initial and final weights."""
    trainer = build_trainer(name, out, per_device_batch, accumulation, tag)
    initial = trainable_weights(trainer)
    trainer.train()
    weights = {"initial": initial, "final": trainable_weights(trainer)}
    torch.save(weights, out / f"{name}.{tag}.rank{trainer.accelerator.process_index}.pt")
    if trainer.accelerator.is_main_process:
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        (out / f"{name}.{tag}.losses.json").write_text(json.dumps(losses))
    return weights


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIOS))
    parser.add_argument("--tag", default="ddp")
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for name in args.scenarios:
        run_scenario(name, Path(args.out), GLOBAL_BATCH // world, tag=args.tag)


if __name__ == "__main__":
    main()
