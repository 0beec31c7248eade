"""``autoreg-embed quickstart``: both AutoRegEmbed stages on the embedded model with the data the package ships,
evaluated before and after on held-out data.

The recipe is the stage 1 the frozen decoder reads at this scale (``examples/configs/smollm2_readable_stage1.yaml``,
docs/reproduce.md): autoencoding of short sentences, the PromptEOL layout with k = 5 compress tokens, the decoder
reading the states inside :data:`~autoreg_embed.trainers.recipes.CHATML_WORDS_DECODER_TEMPLATE`; then conditional
distribution alignment (stage 2) on the shipped sentence triplets. Three points are evaluated: the untrained encoder
(step 0), after stage 1 and after stage 2, each by STS Spearman on the shipped held-out STS pairs, the decoder's
readout gain on held-out sentences, and the mean cosine between the held-out sentences' embeddings (a collapse
alarm). Only the final model is saved (no optimizer state, no intermediate checkpoints) unless asked.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoreg_embed.cli.checks import check_model_source, check_output_dir, validate_data_file
from autoreg_embed.cli.errors import UserError
from autoreg_embed.default_model import DEFAULT_MODEL
from autoreg_embed.resources import QUICKSTART_FILES

SUMMARY = "both stages on the embedded model with the shipped data, evaluated before and after (about 6 min, 2 cores)"

POINTS = ("untrained (step 0)", "after stage 1", "after stage 2")
"""The evaluated points, in order."""

QUICKSTART_COLUMNS = {
    "sentences": ("context", "instruction", "target"),
    "heldout_sentences": ("context", "instruction", "target"),
    "cda": ("query", "pos", "neg"),
    "sts": ("sentence1", "sentence2"),
}
"""The text columns of each shipped data set the quickstart reads (keys of ``QUICKSTART_FILES``)."""


@dataclass
class QuickstartArguments:
    """The quickstart: stage 1 then stage 2 on the shipped data, evaluated on its held-out part before and after."""

    output_dir: str = field(
        default="runs/quickstart",
        metadata={"help": "Folder of the final model, quickstart_results.json and the loss plots of both stages."},
    )
    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "Base causal LM. The defaults (steps, learning rates, the decoder template) and the numbers in the "
            "README are for the embedded SmolLM2-135M-Instruct; other models need their own recipe."
        },
    )
    compression_steps: int = field(default=100, metadata={"help": "Stage-1 optimisation steps."})
    compression_learning_rate: float = field(default=1e-4, metadata={"help": "Stage-1 learning rate (constant)."})
    compression_warmup_steps: int = field(default=20, metadata={"help": "Stage-1 linear warm-up steps."})
    alignment_steps: int = field(default=30, metadata={"help": "Stage-2 (CDA) optimisation steps."})
    alignment_learning_rate: float = field(default=5e-6, metadata={"help": "Stage-2 learning rate (paper: 5e-6)."})
    batch_size: int = field(default=8, metadata={"help": "Rows per optimisation step in both stages."})
    num_compress_tokens: int = field(default=5, metadata={"help": "k, the compress tokens per text (paper: 5)."})
    collapse_threshold: float = field(
        default=0.98,
        metadata={
            "help": "Warn when the held-out sentences' mean pairwise embedding cosine rises above this value while "
            "the untrained encoder's was below it."
        },
    )
    keep_stage1: bool = field(
        default=False, metadata={"help": "Keep the stage-1 model in OUTPUT_DIR/stage1 (about 0.5 GB)."}
    )
    seed: int = field(default=0, metadata={"help": "Random seed (data order and initialisation)."})

    def __post_init__(self) -> None:
        for name in ("compression_steps", "alignment_steps", "batch_size", "num_compress_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if self.batch_size < 2:
            raise UserError("--batch_size must be at least 2 (the readout gain compares rows of a batch).")
        if not -1.0 <= self.collapse_threshold <= 1.0:
            raise UserError(f"--collapse_threshold is a cosine, between -1 and 1; got {self.collapse_threshold}.")


def shipped_rows() -> dict[str, Any]:
    """The shipped training and held-out rows as ``datasets.Dataset``s: ``sentences`` (stage 1),
    ``heldout_sentences`` (readout gain, collapse alarm) and ``cda`` (stage-2 triplets). The STS pairs are read by
    :func:`~autoreg_embed.evaluation.evaluate_sts` from their file."""
    from autoreg_embed.data.loading import load_rows

    return {name: load_rows(str(QUICKSTART_FILES[name])) for name in ("sentences", "heldout_sentences", "cda")}


def encoder_options(args: QuickstartArguments, output_dir: Path, steps: int, learning_rate: float) -> dict[str, Any]:
    """Training options both stages share: the PromptEOL layout, lengths, seed, and nothing saved but the model."""
    from autoreg_embed.sentence_transformers import PROMPTEOL_LAYOUT

    return {
        **PROMPTEOL_LAYOUT,
        "num_compress_tokens": args.num_compress_tokens,
        "output_dir": str(output_dir),
        "max_steps": steps,
        "learning_rate": learning_rate,
        "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": args.batch_size,
        "max_text_length": 64,
        "max_instruction_length": 16,
        "max_target_length": 64,
        "logging_steps": 5,
        "save_strategy": "no",
        "report_to": "none",
        "seed": args.seed,
    }


def in_memory_sentence_transformer(trainer: Any) -> Any:
    """The trainer's current encoder as a ``SentenceTransformer`` embedding with the PromptEOL instruction."""
    from sentence_transformers import SentenceTransformer

    from autoreg_embed.sentence_transformers import PROMPTEOL_INSTRUCTION, AutoRegEmbedModule

    module = AutoRegEmbedModule(trainer.model, trainer.processing_class, trainer.encoder_settings)
    prompts = {"query": PROMPTEOL_INSTRUCTION, "document": PROMPTEOL_INSTRUCTION}
    return SentenceTransformer(
        modules=[module],
        prompts=prompts,
        default_prompt_name="document",
        similarity_fn_name="cosine",
        device=str(trainer.args.device),
    )


def measure(trainer: Any, readout_trainer: Any, heldout: Any) -> dict[str, float]:
    """STS Spearman x100 (shipped held-out pairs), readout gain (nats/token) and mean embedding cosine of
    ``trainer``'s encoder; ``readout_trainer`` is a :class:`~autoreg_embed.CompressionTrainer` over the same
    encoder, whose frozen decoder reads the states with the stage-1 decoder template."""
    from autoreg_embed.evaluation import evaluate_sts
    from autoreg_embed.trainers.base_trainer import mean_pairwise_cosine

    model = in_memory_sentence_transformer(trainer)
    sts = evaluate_sts(model, QUICKSTART_FILES["sts"], batch_size=32)["spearman"]
    embeddings = model.encode(list(heldout["context"]), convert_to_tensor=True, batch_size=32)
    gain = readout_trainer.evaluate(heldout)["eval_readout_gain"]
    trainer.model.train()
    return {"sts_spearman": sts, "readout_gain": gain, "mean_cosine": float(mean_pairwise_cosine(embeddings))}


def format_table(results: dict[str, dict[str, float]]) -> str:
    """The evaluated points as a text table."""
    lines = [f"{'':<20} {'STS Spearman':>12} {'readout gain':>12} {'mean cosine':>11}"]
    lines += [
        f"{point:<20} {row['sts_spearman']:>12.2f} {row['readout_gain']:>12.3f} {row['mean_cosine']:>11.3f}"
        for point, row in results.items()
    ]
    return "\n".join(lines)


def verdict(results: dict[str, dict[str, float]], collapse_threshold: float) -> list[str]:
    """One line on STS (above or below the untrained encoder, honestly), one on the readout gain, and a collapse
    warning where the mean cosine crossed ``collapse_threshold`` from below."""
    start, end = results[POINTS[0]], results[POINTS[-1]]
    change = end["sts_spearman"] - start["sts_spearman"]
    if change >= 0:
        lines = [f"STS: {end['sts_spearman']:.2f}, {change:+.2f} over the untrained encoder (held-out pairs)."]
    else:
        lines = [
            f"STS: {end['sts_spearman']:.2f}, {change:+.2f} BELOW the untrained encoder (held-out pairs): at this "
            "size (a 135M model, a few minutes of CPU training) the two stages do not improve STS."
        ]
    lines.append(
        f"Readout gain: {start['readout_gain']:.3f} -> {end['readout_gain']:.3f} nats/token (how much the frozen "
        "decoder reads the embedding: the precondition of stage 2)."
    )
    for point in POINTS[1:]:
        cosine = results[point]["mean_cosine"]
        if cosine > collapse_threshold >= start["mean_cosine"]:
            lines.append(
                f"WARNING: embeddings collapse {point}: mean cosine {cosine:.3f} > {collapse_threshold} "
                f"(untrained: {start['mean_cosine']:.3f}); texts get nearly the same embedding."
            )
    return lines


def progress(message: str, started: float) -> None:
    print(f"[quickstart {time.perf_counter() - started:5.0f} s] {message}", flush=True)


def run_quickstart(args: QuickstartArguments) -> dict[str, Any]:
    """Run both stages and the three evaluations; write the final model and ``results.json`` to ``args.output_dir``.

    Returns:
        ``{"results": {point: {"sts_spearman", "readout_gain", "mean_cosine"}}, "seconds": ..., "options": ...}``.
    """
    from autoreg_embed.cli.training import train_and_report
    from autoreg_embed.sentence_transformers import PROMPTEOL_INSTRUCTION
    from autoreg_embed.trainers import CDAConfig, CDATrainer, CompressionConfig, CompressionTrainer
    from autoreg_embed.trainers.recipes import CHATML_WORDS_DECODER_TEMPLATE

    started = time.perf_counter()
    output_dir, stage1_dir = Path(args.output_dir), Path(args.output_dir) / "stage1"
    rows = shipped_rows()
    results: dict[str, dict[str, float]] = {}

    progress(f"loading {args.model_name_or_path}", started)
    stage1 = CompressionTrainer(
        model=args.model_name_or_path,
        args=CompressionConfig(
            **encoder_options(args, stage1_dir, args.compression_steps, args.compression_learning_rate),
            decoder_template=CHATML_WORDS_DECODER_TEMPLATE,
            warmup_steps=args.compression_warmup_steps,
            lr_scheduler_type="constant_with_warmup",
        ),
        train_dataset=rows["sentences"],
    )
    progress("evaluating the untrained encoder", started)
    results[POINTS[0]] = measure(stage1, stage1, rows["heldout_sentences"])
    progress(f"stage 1: {args.compression_steps} steps of autoencoding the shipped sentences", started)
    train_and_report(stage1, "stage 1: autoencoding")
    results[POINTS[1]] = measure(stage1, stage1, rows["heldout_sentences"])
    del stage1

    progress(f"stage 2: {args.alignment_steps} steps of CDA on the shipped triplets", started)
    stage2 = CDATrainer(
        model=str(stage1_dir),
        args=CDAConfig(
            **encoder_options(args, output_dir, args.alignment_steps, args.alignment_learning_rate),
            instruction_next=PROMPTEOL_INSTRUCTION,
            instruction_self=PROMPTEOL_INSTRUCTION,
            instruction_prev=PROMPTEOL_INSTRUCTION,
            precompute_ref_log_probs=True,
        ),
        train_dataset=rows["cda"],
    )
    train_and_report(stage2, "stage 2: conditional distribution alignment")
    progress("evaluating the final model", started)
    readout = CompressionTrainer(
        model=str(output_dir),
        args=CompressionConfig(**encoder_options(args, output_dir / "readout", 1, 1e-5)),
        train_dataset=rows["heldout_sentences"],
    )
    results[POINTS[2]] = measure(stage2, readout, rows["heldout_sentences"])
    if (stage1_dir / "loss_curve.png").is_file():
        shutil.copyfile(stage1_dir / "loss_curve.png", output_dir / "stage1_loss_curve.png")
    if not args.keep_stage1:
        shutil.rmtree(stage1_dir, ignore_errors=True)
    shutil.rmtree(output_dir / "readout", ignore_errors=True)

    seconds = time.perf_counter() - started
    report = {"results": results, "seconds": seconds, "options": asdict(args)}
    (output_dir / "quickstart_results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print()
    print(format_table(results))
    for line in verdict(results, args.collapse_threshold):
        print(line)
    print(f"Done in {seconds / 60:.1f} min; final model in {output_dir}.")
    return report


def run_quickstart_command(argv: Sequence[str]) -> None:
    """Parse the options, check the output folder, the model and the shipped data, then run the quickstart."""
    from autoreg_embed.cli.arguments import parse_stage_arguments

    (args,) = parse_stage_arguments((QuickstartArguments,), argv, "autoreg-embed quickstart")
    check_output_dir(args.output_dir)
    check_model_source(args.model_name_or_path)
    import autoreg_embed.evaluation  # noqa: F401  (a missing eval extra is one line, before any model loads)

    for name, columns in QUICKSTART_COLUMNS.items():
        validate_data_file(str(QUICKSTART_FILES[name]), columns)
    run_quickstart(args)
