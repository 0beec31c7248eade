"""Benchmark of one CDA (stage 2) optimisation step: the fused CDATrainer schedule vs the reference code's.

What is measured
----------------
Seconds per optimisation step (forward + backward + optimizer step) of two schedules that compute the *same*
CDA loss (METHOD.md §1, stage 2) on the same batch, with the same models and the same optimizer:

(A) ``trainer``: the real :class:`~autoreg_embed.CDATrainer`, ``trainer.compute_loss(model, batch)`` on a batch
    built by its own data collator, then ``backward()`` and ``optimizer.step()``. Per batch it runs one encoder
    pass over the distinct (text, instruction) rows and one decoder pass over the distinct (embedding, target)
    pairs for the policy, and the same (without gradients) for the reference.
(B) ``baseline``: the schedule of the reference code (TrustedLLM/AutoRegEmbed,
    ``ConditionDistributionAligmentTrainer.compute_loss``), which calls its encoder+decoder model once per term:
    the query is encoded separately for the positive and for the negatives, and the positive is encoded again
    for its self term, i.e. three encoder passes (q for d+, q for d-, d+ with I_self) and three decoder passes
    (d+ | e_q, d- | e_q, d+ | e_d+). The reference log-probs (which the reference code precomputes offline) are
    computed online the same unfused way: two encoder passes and two decoder passes, without gradients.

Why the comparison is fair
--------------------------
Both schedules use the same building blocks of the package (:func:`~autoreg_embed.modeling.encoder.encode`,
:func:`~autoreg_embed.modeling.decoder.conditional_log_probs`, :func:`~autoreg_embed.losses.cda.cda_loss` or
the equivalent ``strategy_loss``), the same model objects (policy, frozen decoder, reference), the same
optimizer object, dtype and thread count, and the same rows: each repeat uses a fresh batch, tokenized
*before* the clock starts for both (the collator for A, the same tokenizer helpers for B), so only the
scheduling of the passes differs. Before timing, the script asserts that the two schedules give the same loss
(to 1e-4) on the same batches (every batch with ``--quick``, the first one by default; ``--check-batches``),
which shows that the baseline computes the same thing. That check runs with the models temporarily cast to
float64: in float32 the schedules pad different sets of rows together, and the resulting rounding differences
reach ~1e-4 on the loss for SmolLM2 (reported as ``max_abs_diff_float32``). Padding is the one thing that
legitimately differs: A pads all its encoder rows (and all its targets) to one length, B pads each term's rows
separately; that is part of what the fused schedule costs, so it is kept.
The two schedules are interleaved within each repeat (order alternating A/B, B/A) after one untimed warm-up step
each, and medians over the repeats are reported, so that drift and noise from other processes hit both alike.
Both wall-clock and process CPU seconds are reported. The default is one torch thread: on a shared,
oversubscribed CPU, multi-threaded kernels wait at every barrier for a descheduled thread and steps become
several times slower and far noisier, while one thread's CPU time stays close to the work actually done.

``--memory`` measures instead the peak memory of a LoRA step (schedule A) for two set-ups, each in its own
subprocess so that peaks do not contaminate each other: ``shared`` (the package default for a PEFT policy: the
frozen decoder and the reference are the policy's own base weights with the adapter disabled) and ``separate``
(explicit full frozen copies for the decoder and the reference). It reports the exact parameter memory (bytes of
the distinct parameter and buffer tensors held by the trainer's models) and the process peak-RSS delta
(``ru_maxrss`` at the end minus the RSS before any model was built), and checks that both give the same loss.

Usage::

    python benchmarks/cda_step.py --quick               # tiny random llama over the real SmolLM2 tokenizer
    python benchmarks/cda_step.py --quick --memory
    python benchmarks/cda_step.py --repeats 3           # the embedded SmolLM2-135M, NLI rows
    python benchmarks/cda_step.py --memory              # LoRA memory with SmolLM2-135M
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from autoreg_embed import CDAConfig, CDATrainer, default_model_path
from autoreg_embed.losses.cda import cda_loss
from autoreg_embed.losses.cda_log_probs import POS_GIVEN_QUERY, LogProb
from autoreg_embed.modeling.checkpoint import load_causal_lm
from autoreg_embed.modeling.compress_tokens import add_compress_tokens
from autoreg_embed.modeling.decoder import conditional_log_probs
from autoreg_embed.modeling.encoder import encode
from autoreg_embed.testing import make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "nli" / "medi_nli.jsonl"
LOSS_TOLERANCE = 1e-4
TARGET = ">= 1.3"
TARGET_SPEEDUP = 1.3

Batch = dict[str, torch.Tensor]


# ---- models and data -------------------------------------------------------------------------------------------


def load_model(quick: bool, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> PreTrainedModel:
    """The benchmarked base model: the tiny llama (``quick``) or the embedded SmolLM2-135M-Instruct."""
    model = make_tiny_model("llama", tokenizer) if quick else load_causal_lm(None)
    return model.to(dtype)


def model_description(quick: bool) -> str:
    if quick:
        return "tiny random llama (2 layers, hidden 32, autoreg_embed.testing recipe) over the SmolLM2 tokenizer"
    return "SmolLM2-135M-Instruct (embedded default model, load_causal_lm(None))"


def load_rows(data: Path, count: int, negatives: int, quick: bool) -> tuple[list[dict[str, Any]], str]:
    """``count`` rows with ``query``, ``pos`` and ``negatives`` negatives (a list), and where they came from.

    NLI rows from ``data`` (cycled if there are fewer than ``count``); in quick mode, synthetic rows when the
    file is missing.
    """
    if not data.is_file():
        if not quick:
            raise SystemExit(f"NLI data not found at {data}; pass --data PATH (a jsonl with query/pos/neg).")
        rows = [
            {
                "query": f"Sentence number {i} is about cats sitting on the warm mat.",
                "pos": f"A statement {i} on felines resting.",
                "neg": [f"Unrelated text {i}.{j} on fast cars and boats." for j in range(negatives)],
            }
            for i in range(count)
        ]
        return rows, "synthetic"
    rows = []
    with data.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            neg = record["neg"] if isinstance(record["neg"], list) else [record["neg"]]
            if len(neg) < negatives:
                raise SystemExit(f"{data} has rows with {len(neg)} negatives; --negatives {negatives} is too many.")
            rows.append({"query": record["query"], "pos": record["pos"], "neg": list(neg[:negatives])})
            if len(rows) == count:
                break
    if not rows:
        raise SystemExit(f"{data} holds no rows.")
    rows = [rows[i % len(rows)] for i in range(count)]
    return rows, str(data)


def make_trainer(
    args: argparse.Namespace,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Mapping[str, Any]],
    output_dir: str,
    lora: bool,
    decoder: PreTrainedModel | None = None,
    ref_model: nn.Module | None = None,
) -> CDATrainer:
    """The real CDATrainer over ``model`` (LoRA when ``lora``), with its optimizer created and in train mode."""
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    config = CDAConfig(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        max_text_length=args.max_length,
        max_instruction_length=args.max_length,
        max_target_length=args.max_length,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        seed=0,
    )
    trainer = CDATrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(list(rows)),
        processing_class=tokenizer,
        decoder=decoder,
        ref_model=ref_model,
        peft_config=peft_config,
    )
    trainer.create_optimizer()
    trainer.model.train()
    return trainer


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---- the two schedules -----------------------------------------------------------------------------------------


def trainer_loss(trainer: CDATrainer, batch: Batch) -> torch.Tensor:
    """Schedule A: the trainer's own loss on a batch from its own collator."""
    return trainer.compute_loss(trainer.model, batch)


def baseline_inputs(trainer: CDATrainer, rows: Sequence[Mapping[str, Any]], negatives: int) -> dict[str, Batch]:
    """Tokenized inputs of the unfused schedule, built with the trainer's own tokenizer helpers.

    One encoder batch per term (the query for d+, the query repeated once per negative for the d-, the positive
    with I_self) and one target batch per target text (d+, d-), as the reference code's data collator does.
    """
    device = trainer.args.device
    next_instruction, self_instruction = trainer.instruction_texts["next"], trainer.instruction_texts["self"]
    queries = [row["query"] for row in rows]
    positives = [row["pos"] for row in rows]
    negative_texts = [text for row in rows for text in row["neg"]]
    inputs = {
        "query_for_pos": trainer.encoder_inputs(queries, next_instruction),
        "query_for_neg": trainer.encoder_inputs([q for q in queries for _ in range(negatives)], next_instruction),
        "pos_self": trainer.encoder_inputs(positives, self_instruction),
        "pos_target": trainer.target_builder(positives),
        "neg_target": trainer.target_builder(negative_texts),
    }
    return {name: {key: value.to(device) for key, value in part.items()} for name, part in inputs.items()}


def _term_log_probs(trainer: CDATrainer, encoder: nn.Module, source: Batch, target: Batch) -> torch.Tensor:
    """One term of the reference code: an encoder pass over ``source``, then a decoder pass scoring ``target``."""
    states = encode(encoder, source["input_ids"], source["attention_mask"], trainer.encoder_settings).compress_states
    with trainer.frozen_decoder() as decoder:
        scored = conditional_log_probs(decoder, states, target["target_ids"], target["target_mask"])
    return scored.mean if trainer.args.length_normalize else scored.sum


def baseline_loss(trainer: CDATrainer, inputs: Mapping[str, Batch], negatives: int) -> torch.Tensor:
    """Schedule B: three policy encoder+decoder passes and two reference ones, then ``cda_loss``."""
    model = trainer.model
    batch_size = inputs["query_for_pos"]["input_ids"].shape[0]
    policy_pos_next = _term_log_probs(trainer, model, inputs["query_for_pos"], inputs["pos_target"])
    policy_neg_next = _term_log_probs(trainer, model, inputs["query_for_neg"], inputs["neg_target"])
    policy_pos_self = _term_log_probs(trainer, model, inputs["pos_self"], inputs["pos_target"])
    with torch.no_grad(), trainer.reference() as reference:
        ref_pos_next = _term_log_probs(trainer, reference, inputs["query_for_pos"], inputs["pos_target"])
        ref_neg_next = _term_log_probs(trainer, reference, inputs["query_for_neg"], inputs["neg_target"])
    options = trainer.args
    return cda_loss(
        policy_pos_next,
        policy_pos_self,
        policy_neg_next.view(batch_size, negatives),
        ref_pos_next,
        ref_neg_next.view(batch_size, negatives),
        beta=options.beta,
        temperature=options.temperature,
        bound=options.bound,
        reference_sign=options.reference_sign,
        multi_negative=options.multi_negative,
    ).loss


def compare_losses(
    trainer: CDATrainer, batch: Batch, inputs: Mapping[str, Batch], negatives: int, dtype: torch.dtype
) -> tuple[float, float]:
    """The losses of schedules A and B on one batch, with the trainer's models cast to ``dtype`` meanwhile.

    In float32 the two differ by padding-dependent rounding (the schedules pad different row sets together),
    which reaches ~1e-4 on the loss for SmolLM2 (tau = 0.05 amplifies it); float64 shows that they compute the
    same function. Casting float32 -> float64 -> float32 is exact, so the weights are unchanged afterwards.
    """
    models = [trainer.model, trainer.frozen_decoder.decoder, trainer.reference.model]
    models = [model for model in models if model is not None]
    original = next(trainer.model.parameters()).dtype
    for model in models:
        model.to(dtype)
    try:
        with torch.no_grad():
            return float(trainer_loss(trainer, batch)), float(baseline_loss(trainer, inputs, negatives))
    finally:
        for model in models:
            model.to(original)


def timed_step(trainer: CDATrainer, loss_fn: Callable[[], torch.Tensor]) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of one optimisation step: loss, backward, optimizer step, zero_grad."""
    gc.collect()
    synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    loss = loss_fn()
    loss.backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def pass_counts(trainer: CDATrainer, batch: Batch, negatives: int) -> dict[str, dict[str, int]]:
    """Rows fed to the encoder and the decoder per step by each schedule (policy + reference)."""

    def rows_of(specs: Sequence[LogProb]) -> tuple[int, int]:
        prefix = torch.cat([batch[f"{spec.key}.prefix_index"].flatten() for spec in specs])
        target = torch.cat([batch[f"{spec.key}.target_index"].flatten() for spec in specs])
        rows, row_of = prefix.unique(return_inverse=True)
        pairs = torch.stack([row_of, target]).unique(dim=1)
        return int(rows.numel()), int(pairs.shape[1])

    policy_rows, policy_pairs = rows_of(trainer.policy_specs)
    ref_rows, ref_pairs = rows_of(trainer.reference_specs)
    size = batch[f"{POS_GIVEN_QUERY.key}.prefix_index"].shape[0]
    return {
        "trainer": {
            "encoder_passes": 2,
            "decoder_passes": 2,
            "encoder_rows": policy_rows + ref_rows,
            "decoder_rows": policy_pairs + ref_pairs,
        },
        "baseline": {
            "encoder_passes": 5,
            "decoder_passes": 5,
            "encoder_rows": 3 * size + 2 * size * negatives,
            "decoder_rows": 3 * size + 2 * size * negatives,
        },
    }


def run_speed(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    batches = args.repeats + 1  # one warm-up batch, then one fresh batch per repeat
    rows, source = load_rows(args.data, batches * args.batch_size, args.negatives, args.quick)
    model = load_model(args.quick, tokenizer, dtype)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = make_trainer(args, model, tokenizer, rows, output_dir, lora=args.lora)
        chunks = [rows[i * args.batch_size : (i + 1) * args.batch_size] for i in range(batches)]
        fused = [trainer._prepare_inputs(trainer.data_collator(chunk)) for chunk in chunks]
        unfused = [baseline_inputs(trainer, chunk, args.negatives) for chunk in chunks]

        # Same loss, batch by batch, before any optimizer step: asserted in float64, reported in both.
        checked = range(min(args.check_batches, len(chunks)))
        losses = [compare_losses(trainer, fused[i], unfused[i], args.negatives, torch.float64) for i in checked]
        max_diff = max(abs(a - b) for a, b in losses)
        if max_diff > LOSS_TOLERANCE:
            raise AssertionError(f"The two schedules disagree: losses {losses} (max |diff| {max_diff:.2e}).")
        native = [compare_losses(trainer, fused[i], unfused[i], args.negatives, dtype) for i in checked]
        native_diff = max(abs(a - b) for a, b in native)

        schedules: dict[str, Callable[[int], Callable[[], torch.Tensor]]] = {
            "trainer": lambda i: lambda: trainer_loss(trainer, fused[i]),
            "baseline": lambda i: lambda: baseline_loss(trainer, unfused[i], args.negatives),
        }
        for name in schedules:  # warm-up (untimed): allocator, kernels, optimizer state
            timed_step(trainer, schedules[name](0))
        times: dict[str, list[float]] = {name: [] for name in schedules}
        cpu_times: dict[str, list[float]] = {name: [] for name in schedules}
        order = list(schedules)
        for repeat in range(args.repeats):
            for name in order if repeat % 2 == 0 else reversed(order):
                wall, cpu = timed_step(trainer, schedules[name](repeat + 1))
                times[name].append(wall)
                cpu_times[name].append(cpu)
        counts = pass_counts(trainer, fused[0], args.negatives)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_times.items()}
    speedup = medians["baseline"] / medians["trainer"]
    return {
        "benchmark": "cda_step",
        "mode": "quick" if args.quick else "default",
        "config": {
            "model": model_description(args.quick),
            "fine_tuning": "lora (r=16, all-linear)" if args.lora else "full",
            "trainable_parameters": trainable,
            "batch_size": args.batch_size,
            "negatives": args.negatives,
            "max_text_length": args.max_length,
            "max_instruction_length": args.max_length,
            "max_target_length": args.max_length,
            "num_compress_tokens": trainer.encoder_settings.num_compress_tokens,
            "dtype": args.dtype,
            "device": str(trainer.args.device),
            "threads": torch.get_num_threads(),
            "data": source,
            "repeats": args.repeats,
            "warmup_steps_per_schedule": 1,
            "optimizer": type(trainer.optimizer).__name__,
            "torch": torch.__version__,
        },
        "passes_per_step": counts,
        "loss_check": {
            "batches": len(losses),
            "dtype": "float64 (asserted)",
            "max_abs_diff": max_diff,
            "tolerance": LOSS_TOLERANCE,
            "trainer_losses": [a for a, _ in losses],
            "baseline_losses": [b for _, b in losses],
            f"max_abs_diff_{args.dtype}": native_diff,
        },
        "seconds_per_step": {
            name: {"median": medians[name], "min": min(values), "all": [round(t, 4) for t in values]}
            for name, values in times.items()
        },
        "cpu_seconds_per_step": {
            name: {"median": cpu_medians[name], "all": [round(t, 4) for t in values]}
            for name, values in cpu_times.items()
        },
        "speedup_baseline_over_trainer": speedup,
        "speedup_cpu_time": cpu_medians["baseline"] / cpu_medians["trainer"],
        "speedup_of_minima": min(times["baseline"]) / min(times["trainer"]),
        "target": TARGET,
        "meets_target": speedup >= TARGET_SPEEDUP,
    }


# ---- LoRA memory -----------------------------------------------------------------------------------------------


def current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def parameter_bytes(modules: Sequence[nn.Module]) -> int:
    """Bytes of the distinct parameter and buffer tensors of ``modules`` (shared or tied tensors counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            key = (tensor.data_ptr(), tensor.numel())
            if key in seen:
                continue
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def memory_worker(args: argparse.Namespace) -> dict[str, Any]:
    """One LoRA set-up (``args.memory_worker``): build it, run ``args.memory_steps`` steps, report memory."""
    variant = args.memory_worker
    dtype = getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    rows, source = load_rows(args.data, args.batch_size * args.memory_steps, args.negatives, args.quick)
    gc.collect()
    rss_before, peak_before = current_rss(), peak_rss()
    model = load_model(args.quick, tokenizer, dtype)
    decoder = ref_model = None
    if variant == "separate":
        # Full frozen copies of the base model (with the compress-token rows the reference encoder needs).
        settings = CDAConfig(output_dir=tempfile.gettempdir(), report_to="none").encoder_settings()
        add_compress_tokens(model, tokenizer, settings)
        decoder, ref_model = copy.deepcopy(model), copy.deepcopy(model)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = make_trainer(args, model, tokenizer, rows, output_dir, True, decoder, ref_model)
        del model, decoder, ref_model
        models = [trainer.model]
        models += [m for m in (trainer.frozen_decoder.decoder, trainer.reference.model) if m is not None]
        held = parameter_bytes(models)
        loader_rows = [rows[i * args.batch_size : (i + 1) * args.batch_size] for i in range(args.memory_steps)]
        losses = []
        for chunk in loader_rows:
            batch = trainer._prepare_inputs(trainer.data_collator(chunk))
            loss = trainer_loss(trainer, batch)
            losses.append(float(loss))
            loss.backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        peak = peak_rss()
        return {
            "variant": variant,
            "decoder": "adapter-disabled policy" if trainer.frozen_decoder.shares_encoder_weights else "separate copy",
            "reference": "adapter-disabled policy" if trainer.reference.kind == "adapter" else "separate copy",
            "models_held": len(models),
            "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "parameter_bytes": held,
            "rss_before_bytes": rss_before,
            "peak_rss_bytes": peak,
            "peak_rss_delta_bytes": peak - rss_before,
            "peak_rss_before_build_bytes": peak_before,
            "first_loss": losses[0],
            "steps": len(losses),
            "data": source,
        }


def run_memory(args: argparse.Namespace) -> dict[str, Any]:
    """Run each LoRA set-up in its own subprocess (fair, uncontaminated peaks) and compare them."""
    variants = {}
    for variant in ("shared", "separate"):
        command = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", variant]
        command += ["--data", str(args.data), "--batch-size", str(args.batch_size), "--negatives", str(args.negatives)]
        command += ["--max-length", str(args.max_length), "--dtype", args.dtype, "--threads", str(args.threads)]
        command += ["--memory-steps", str(args.memory_steps)] + (["--quick"] if args.quick else [])
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"memory worker {variant} failed:\n{done.stderr[-4000:]}")
        variants[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    shared, separate = variants["shared"], variants["separate"]
    loss_diff = abs(shared["first_loss"] - separate["first_loss"])
    if loss_diff > LOSS_TOLERANCE:
        raise AssertionError(f"shared and separate set-ups disagree on the first loss ({loss_diff:.2e}).")
    mib = 2**20
    return {
        "benchmark": "cda_lora_memory",
        "mode": "quick" if args.quick else "default",
        "config": {
            "model": model_description(args.quick),
            "fine_tuning": "lora (r=16, all-linear, trainable compress-token rows)",
            "batch_size": args.batch_size,
            "negatives": args.negatives,
            "max_length": args.max_length,
            "dtype": args.dtype,
            "threads": args.threads,
            "steps": args.memory_steps,
            "schedule": "trainer (A)",
            "peak_measure": "ru_maxrss at end minus RSS before building models, one subprocess per variant",
        },
        "variants": variants,
        "summary_mib": {
            name: {
                "parameters": round(v["parameter_bytes"] / mib, 2),
                "peak_rss_delta": round(v["peak_rss_delta_bytes"] / mib, 2),
            }
            for name, v in variants.items()
        },
        "first_loss_abs_diff": loss_diff,
        "ratio_separate_over_shared": {
            "parameter_bytes": separate["parameter_bytes"] / shared["parameter_bytes"],
            "peak_rss_delta": separate["peak_rss_delta_bytes"] / max(shared["peak_rss_delta_bytes"], 1),
        },
    }


# ---- command line ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny random llama instead of SmolLM2-135M")
    parser.add_argument("--memory", action="store_true", help="LoRA peak memory: shared base vs separate copies")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="jsonl with query/pos/neg (NLI)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64, help="max text, instruction and target tokens")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per schedule (quick 10, else 5)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: robust on a shared, oversubscribed CPU)"
    )
    parser.add_argument("--lora", action="store_true", help="time a LoRA policy instead of full fine-tuning")
    parser.add_argument("--check-batches", type=int, default=None, help="batches of the loss check (quick: all)")
    parser.add_argument("--memory-steps", type=int, default=2, help="optimisation steps per memory variant")
    parser.add_argument("--memory-worker", choices=("shared", "separate"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 10 if args.quick else 5
    if args.check_batches is None:
        args.check_batches = args.repeats + 1 if args.quick else 1
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(json.dumps(memory_worker(args)))
        return
    result = run_memory(args) if args.memory else run_speed(args)
    result["machine"] = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
