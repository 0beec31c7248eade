"""Command line: ``autoreg-embed <stage> [--flags | config.yaml]``.

Each stage parses its dataclasses with :class:`transformers.HfArgumentParser`. Options come from flags, from a
YAML/JSON file given as ``--config FILE`` (flags on the command line override the file), or both.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from autoreg_embed.default_model import DEFAULT_MODEL
from autoreg_embed.resources import resolve_data_path

logger = logging.getLogger("autoreg_embed")


@dataclass
class ModelArguments:
    """Which model to train and whether to train it with LoRA."""

    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": f"Hub name or local path of a causal LM; {DEFAULT_MODEL} is the embedded SmolLM2-135M."},
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Comma-separated module names, or 'all-linear'."}
    )

    def peft_config(self) -> Any | None:
        """A LoraConfig when ``use_lora`` is set."""
        if not self.use_lora:
            return None
        from peft import LoraConfig

        targets = self.lora_target_modules
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=targets if targets == "all-linear" else [name.strip() for name in targets.split(",")],
            task_type="CAUSAL_LM",
        )


@dataclass
class DataArguments:
    """Training and evaluation data: a JSONL/JSON/CSV/Parquet file, a dataset folder, or a hub dataset name."""

    train_file: str = field(
        default="quickstart", metadata={"help": "Training data; 'quickstart' is the small built-in example set."}
    )
    eval_file: str | None = field(default=None, metadata={"help": "Evaluation data (same columns)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    rename_columns: str | None = field(
        default=None,
        metadata={"help": "Comma-separated old:new column renames, e.g. 'context:text,target:output'."},
    )

    def column_renames(self) -> dict[str, str]:
        """``rename_columns`` as a mapping (empty when not set)."""
        renames = {}
        for pair in (self.rename_columns or "").split(","):
            if not pair.strip():
                continue
            old, sep, new = pair.partition(":")
            if not sep or not old.strip() or not new.strip():
                raise SystemExit(f"rename_columns: expected old:new pairs, got {pair!r}.")
            renames[old.strip()] = new.strip()
        return renames


def _read_config_file(path: str) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) if Path(path).suffix.lower() in (".yaml", ".yml") else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values.")
    return data


def parse_stage_arguments(dataclass_types: Sequence[type], argv: Sequence[str], prog: str) -> tuple[Any, ...]:
    """Parse ``argv`` into instances of ``dataclass_types``; ``--config FILE`` supplies defaults."""
    parser = HfArgumentParser(dataclass_types, prog=prog)
    parser.add_argument("--config", default=None, help="YAML or JSON file of options (flags override it).")
    known, _ = parser.parse_known_args(argv)
    if known.config:
        options = _read_config_file(known.config)
        valid = {action.dest for action in parser._actions}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise SystemExit(f"{prog}: unknown option(s) in {known.config}: {unknown}")
        parser.set_defaults(**options)
    *parsed, namespace = parser.parse_args_into_dataclasses(args=list(argv), return_remaining_strings=False)
    del namespace  # the --config value
    return tuple(parsed)


QUICKSTART_DISTILL_RENAMES = {"context": "text", "target": "output"}
"""The distill quickstart reads the compression quickstart rows as (text, instruction, output)."""


def _load_data(data_args: DataArguments, stage: str) -> tuple[Any, Any]:
    from autoreg_embed.data.loading import load_rows

    train_dataset = load_rows(resolve_data_path(data_args.train_file, stage))
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
    eval_dataset = load_rows(data_args.eval_file) if data_args.eval_file else None
    renames = data_args.column_renames()
    if stage == "distill" and data_args.train_file == "quickstart" and not renames:
        renames = QUICKSTART_DISTILL_RENAMES
    if renames:
        train_dataset = train_dataset.rename_columns(renames)
        eval_dataset = eval_dataset.rename_columns(renames) if eval_dataset is not None else None
    return train_dataset, eval_dataset


def _train_and_report(trainer: Any, title: str) -> None:
    """Train (resuming if asked), save, print the loss curve and truncation counts, and plot the curve."""
    from autoreg_embed.reporting import format_loss_curve, plot_loss_curve

    config = trainer.args
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    print(format_loss_curve(trainer.state.log_history))
    plot = plot_loss_curve(trainer.state.log_history, Path(config.output_dir) / "loss_curve.png", title)
    print(f"Saved the encoder to {config.output_dir}" + (f"; loss plot: {plot}" if plot else ""))
    truncated = dict(trainer.data_collator.truncations)
    if truncated:
        print(f"Truncated during training (counts): {truncated}")


def _run_training_stage(
    argv: Sequence[str], config_class: type, trainer_class: type, stage: str, data_stage: str, title: str
) -> None:
    model_args, data_args, config = parse_stage_arguments(
        (ModelArguments, DataArguments, config_class), argv, f"autoreg-embed {stage}"
    )
    train_dataset, eval_dataset = _load_data(data_args, data_stage)
    trainer = trainer_class(
        model=model_args.model_name_or_path,
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=model_args.peft_config(),
    )
    _train_and_report(trainer, title)


def run_compress(argv: Sequence[str]) -> None:
    """Stage 1: information compression (rows: context, instruction, target)."""
    from autoreg_embed.trainers import CompressionConfig, CompressionTrainer

    _run_training_stage(argv, CompressionConfig, CompressionTrainer, "compress", "compression", "compression")


def run_align(argv: Sequence[str]) -> None:
    """Stage 2: conditional distribution alignment (rows: query, pos, neg); start from a stage-1 checkpoint."""
    from autoreg_embed.trainers import CDAConfig, CDATrainer

    _run_training_stage(argv, CDAConfig, CDATrainer, "align", "cda", "conditional distribution alignment")


def run_distill(argv: Sequence[str]) -> None:
    """InstEmb-style instruction-aware embeddings (rows: text, instruction, output, optional pos / neg)."""
    from autoreg_embed.trainers import DistillConfig, DistillTrainer

    _run_training_stage(argv, DistillConfig, DistillTrainer, "distill", "distill", "instruction-aware distillation")


def run_contrastive(argv: Sequence[str]) -> None:
    """The InfoNCE baseline (rows: query, pos, optional neg)."""
    from autoreg_embed.trainers import ContrastiveConfig, ContrastiveTrainer

    _run_training_stage(argv, ContrastiveConfig, ContrastiveTrainer, "contrastive", "cda", "InfoNCE")


@dataclass
class EvaluateArguments:
    """What to evaluate: a saved checkpoint (or, with --baseline, any causal LM as an untrained baseline)."""

    model_name_or_path: str = field(
        default=DEFAULT_MODEL, metadata={"help": "Checkpoint folder (also the first positional argument)."}
    )
    sts: str | None = field(default=None, metadata={"help": "STS JSONL file (sentence1, sentence2, score)."})
    sts_limit: int | None = field(default=None, metadata={"help": "Use only the first N STS pairs."})
    retrieval: str | None = field(
        default=None, metadata={"help": "BEIR-style folder (corpus.jsonl, queries.jsonl, qrels.tsv)."}
    )
    instruction_retrieval: str | None = field(
        default=None,
        metadata={
            "help": "JSONL of (context, instruction, target) rows with several questions per context (e.g. XQuAD): "
            "rank each question's answer among its context's answers, with and without the instruction.",
            "aliases": ["--instruction-retrieval"],
        },
    )
    instruction_retrieval_contexts: int | None = field(
        default=None, metadata={"help": "Use only the first N contexts of --instruction_retrieval."}
    )
    mteb: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated mteb task names, or paper-sts: the paper's 10 STS tasks (English, test split), "
            "printed next to the paper's averages (needs hub access)."
        },
    )
    baseline: str | None = field(
        default=None, metadata={"help": "Evaluate the model untrained with this pooling: last, mean or eos."}
    )
    template: str = field(
        default="{text}",
        metadata={
            "help": "Baseline input template with {text}, e.g. PromptEOL's; add {instruction} for "
            "--instruction_retrieval (the question fills it)."
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Encoding batch size."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Folder whose eval/ subfolder gets the JSON (default: the model, or ./baselines/NAME)."},
    )


def run_evaluate(argv: Sequence[str]) -> None:
    """Evaluate a model on offline STS / retrieval data and/or mteb tasks; write JSON and print a summary."""
    from autoreg_embed.evaluation import (
        PAPER_STS,
        evaluate_instruction_retrieval,
        evaluate_mteb,
        evaluate_retrieval,
        evaluate_sts,
        format_paper_sts,
        format_summary,
        paper_sts_average,
        write_results,
    )
    from autoreg_embed.sentence_transformers import baseline, load

    if argv and not argv[0].startswith("-"):
        argv = ["--model_name_or_path", argv[0], *argv[1:]]
    (args,) = parse_stage_arguments((EvaluateArguments,), argv, "autoreg-embed evaluate")
    if not (args.sts or args.retrieval or args.instruction_retrieval or args.mteb):
        raise SystemExit(
            "autoreg-embed evaluate: give at least one of --sts, --retrieval, --instruction_retrieval, --mteb."
        )
    if args.baseline:
        model = baseline(args.model_name_or_path, args.baseline, args.template)
        default_output = Path("baselines") / Path(args.model_name_or_path).name.replace(":", "_")
    else:
        model = load(args.model_name_or_path)
        default_output = Path(args.model_name_or_path)
    output = Path(args.output_dir) if args.output_dir else default_output
    output.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    if args.sts:
        results["sts"] = evaluate_sts(model, args.sts, batch_size=args.batch_size, limit=args.sts_limit)
    if args.retrieval:
        results["retrieval"] = evaluate_retrieval(model, args.retrieval, batch_size=args.batch_size)
    if args.instruction_retrieval:
        results["instruction_retrieval"] = evaluate_instruction_retrieval(
            model,
            args.instruction_retrieval,
            batch_size=args.batch_size,
            limit_contexts=args.instruction_retrieval_contexts,
        )
    if args.mteb:
        tasks = [name.strip() for name in args.mteb.split(",") if name.strip()]
        results["mteb"] = evaluate_mteb(model, tasks, batch_size=args.batch_size)
        if PAPER_STS in tasks:
            results[PAPER_STS] = {"average": paper_sts_average(results["mteb"])}
    name = "baseline-" + args.baseline if args.baseline else "results"
    path = write_results(results, output, name)
    print(f"{args.model_name_or_path}: {format_summary(results)} (written to {path})")
    if args.mteb and PAPER_STS in tasks:
        print(format_paper_sts(results["mteb"]))


STAGES: dict[str, Callable[[Sequence[str]], None]] = {
    "compress": run_compress,
    "align": run_align,
    "contrastive": run_contrastive,
    "distill": run_distill,
    "evaluate": run_evaluate,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``autoreg-embed`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="autoreg-embed",
        description="Train decoder LLMs into embedding models (AutoRegEmbed). Run 'autoreg-embed STAGE --help'.",
    )
    parser.add_argument(
        "stage",
        choices=sorted(STAGES),
        help="compress: stage 1 (information compression); align: stage 2 (conditional distribution alignment); "
        "contrastive: the InfoNCE baseline; distill: instruction-aware embeddings (InstEmb: soft prompts, teacher "
        "distillation, multi-view InfoNCE); evaluate: STS / retrieval / instruction-retrieval / mteb scores.",
    )
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return
    stage = parser.parse_args(argv[:1]).stage
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    STAGES[stage](argv[1:])


if __name__ == "__main__":
    main()
