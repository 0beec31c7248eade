"""Small-scale reproduction of AutoRegEmbed's central claim on the embedded SmolLM2-135M (CPU friendly).

Recipes, each ending with an STS-B dev evaluation (Spearman x100 of cosine similarity):
  (a) untrained baselines: last-token, mean pooling, PromptEOL;
  (b) InfoNCE (ContrastiveTrainer) on NLI triplets;
  (c) compression on SQuAD/XQuAD/PubMedQA rows, then CDA on the same triplets as (b);
  (d) compression only (the stage-1 checkpoint of (c)).
Then a learning curve: STS-B dev Spearman against the number of training triplets, CDA vs InfoNCE.

Writes ``results.json``, ``results.md`` (table with wall-clock times), ``learning_curve.png`` and
``loss_curves.png`` into ``--output_dir``. Run from the repository root (data in ``../shared/data``)::

    python examples/reproduce.py --size small --output_dir runs/reproduce     # about an hour on 2 CPU cores
    python examples/reproduce.py --size smoke --output_dir runs/smoke         # minutes: checks the pipeline
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets

from autoreg_embed import (
    CDAConfig,
    CDATrainer,
    CompressionConfig,
    CompressionTrainer,
    ContrastiveConfig,
    ContrastiveTrainer,
    load,
)
from autoreg_embed.data.loading import load_rows
from autoreg_embed.evaluation import evaluate_sts
from autoreg_embed.sentence_transformers import PROMPTEOL_INSTRUCTION, PROMPTEOL_LAYOUT, PROMPTEOL_TEMPLATE, baseline


@dataclass(frozen=True)
class Sizes:
    """How much data and compute each recipe gets."""

    compression_rows: int
    triplets: int
    curve: tuple[int, ...]
    sts_pairs: int
    max_length: int
    batch_size: int
    readout_rows: int


SIZES = {
    "smoke": Sizes(
        compression_rows=16, triplets=16, curve=(8, 16), sts_pairs=40, max_length=48, batch_size=4, readout_rows=8
    ),
    "small": Sizes(
        compression_rows=400,
        triplets=600,
        curve=(150, 300, 600),
        sts_pairs=500,
        max_length=96,
        batch_size=8,
        readout_rows=48,
    ),
}


LAYOUTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "paper": ({}, {}),
    "prompteol": (PROMPTEOL_LAYOUT, {f"instruction_{key}": PROMPTEOL_INSTRUCTION for key in ("next", "self", "prev")}),
}
"""(encoder options, instruction options) of the trained recipes' layouts. ``paper``: ``{text}\\n{instruction}``
with the paper's STS instruction and vocabulary-mean compress tokens. ``prompteol``: the PromptEOL prompt around
the text with the compress tokens started from its closing ``:"`` token, so that with k = 1 the untrained encoder
*is* PromptEOL (step 0 = the prompt baseline)."""


COMPRESSION_FILES = ("squad2_devhalf_answerable.jsonl", "xquad_en.jsonl", "pubmedqa_pqal.jsonl")


def per_file(count: int) -> int:
    """Rows taken from each compression file for ``count`` rows in all."""
    return -(-count // len(COMPRESSION_FILES))


def compression_rows(data: Path, count: int, seed: int, skip: int = 0) -> Dataset:
    """``count`` rows drawn evenly from the SQuAD, XQuAD and PubMedQA compression files, after the first ``skip``
    rows of each file's shuffle (so ``skip=per_file(n)`` gives rows unseen by a stage 1 on ``n`` rows)."""
    parts = [load_rows(data / "compression" / name).shuffle(seed=seed) for name in COMPRESSION_FILES]
    stop = skip + per_file(count)
    return concatenate_datasets([part.select(range(skip, min(stop, len(part)))) for part in parts]).select(range(count))


def triplets(data: Path, count: int, seed: int) -> Dataset:
    """The first ``count`` rows of a fixed shuffle of the SNLI triplets (so smaller sets are prefixes)."""
    rows = load_rows(data / "nli" / "snli_devtest_triplets.jsonl").shuffle(seed=seed)
    return rows.select(range(count)).select_columns(["query", "pos", "neg"])


def layout_options(layout: str, num_compress_tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(encoder options of every trainer, instruction options of the triplet trainers) of a layout."""
    encoder, instructions = LAYOUTS[layout]
    return {**encoder, "num_compress_tokens": num_compress_tokens}, dict(instructions)


def common_options(sizes: Sizes, output_dir: Path, layout: dict[str, Any]) -> dict[str, Any]:
    return {
        **layout,
        "output_dir": str(output_dir),
        "per_device_train_batch_size": sizes.batch_size,
        "max_text_length": sizes.max_length,
        "max_instruction_length": sizes.max_length,
        "logging_steps": 5,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
    }


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def sts_score(model: Any, data: Path, sizes: Sizes) -> float:
    return evaluate_sts(model, data / "sts" / "stsb_dev.jsonl", limit=sizes.sts_pairs)["spearman"]


def readout_gain(model: str | None, rows: Dataset, sizes: Sizes, output_dir: Path, layout: dict[str, Any]) -> float:
    """Nats per target token the frozen decoder gains from ``model``'s compress states (see docs/compression.md)."""
    args = CompressionConfig(**common_options(sizes, output_dir, layout), max_target_length=sizes.max_length)
    return CompressionTrainer(model=model, args=args, train_dataset=rows).evaluate(rows)["eval_readout_gain"]


def train(trainer: Any, output_dir: Path) -> list[dict[str, float]]:
    trainer.train()
    trainer.save_model(str(output_dir))
    return trainer.state.log_history


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes, data, out = SIZES[args.size], Path(args.data), Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"size": args.size, "sizes": sizes.__dict__, "recipes": {}, "curve": {}}
    recipes, losses = results["recipes"], {}
    results["layout"], results["num_compress_tokens"] = args.layout, args.num_compress_tokens
    layout, instructions = layout_options(args.layout, args.num_compress_tokens)

    for name, pooling, template in (
        ("(a) last token", "last", "{text}"),
        ("(a) mean pooling", "mean", "{text}"),
        ("(a) PromptEOL", "last", PROMPTEOL_TEMPLATE),
    ):
        score, seconds = timed(lambda p=pooling, t=template: sts_score(baseline(None, p, t), data, sizes))
        recipes[name] = {"spearman": score, "seconds": seconds}

    stage1_dir = Path(args.stage1_checkpoint) if args.stage1_checkpoint else out / "compression"
    if args.stage1_checkpoint:  # reuse an earlier stage 1 (its training time is not counted again)
        losses["compression"], seconds = [], 0.0
    else:
        stage1 = CompressionTrainer(
            model=None,
            args=CompressionConfig(
                **common_options(sizes, stage1_dir, layout),
                max_target_length=sizes.max_length,
                learning_rate=args.compression_lr,
                num_train_epochs=args.compression_epochs,
            ),
            train_dataset=compression_rows(data, sizes.compression_rows, args.seed),
        )
        losses["compression"], seconds = timed(lambda: train(stage1, stage1_dir))
    score, eval_seconds = timed(lambda: sts_score(load(stage1_dir), data, sizes))
    recipes["(d) compression only"] = {"spearman": score, "seconds": seconds + eval_seconds}
    held_out = compression_rows(data, sizes.readout_rows, args.seed, skip=per_file(sizes.compression_rows))
    results["readout_gain"] = {
        "untrained": readout_gain(None, held_out, sizes, out / "readout", layout),
        "stage 1": readout_gain(str(stage1_dir), held_out, sizes, out / "readout", layout),
    }

    for count in sorted({*(args.curve or sizes.curve), sizes.triplets}):
        rows = triplets(data, count, args.seed)
        cda_dir, infonce_dir = out / f"cda-{count}", out / f"infonce-{count}"
        cda = CDATrainer(
            model=str(stage1_dir),
            args=CDAConfig(
                **common_options(sizes, cda_dir, layout),
                **instructions,
                max_target_length=sizes.max_length,
                learning_rate=args.cda_lr,
                num_train_epochs=args.cda_epochs,
                precompute_ref_log_probs=True,
            ),
            train_dataset=rows,
        )
        cda_losses, cda_seconds = timed(lambda t=cda, d=cda_dir: train(t, d))
        cda_score = sts_score(load(cda_dir), data, sizes)
        infonce = ContrastiveTrainer(
            model=None,
            args=ContrastiveConfig(
                **common_options(sizes, infonce_dir, layout),
                **instructions,
                learning_rate=args.infonce_lr,
                num_train_epochs=args.infonce_epochs,
            ),
            train_dataset=rows,
        )
        infonce_losses, infonce_seconds = timed(lambda t=infonce, d=infonce_dir: train(t, d))
        infonce_score = sts_score(load(infonce_dir), data, sizes)
        results["curve"][count] = {"cda": cda_score, "infonce": infonce_score}
        if count == sizes.triplets:
            recipes["(b) InfoNCE"] = {"spearman": infonce_score, "seconds": infonce_seconds}
            recipes["(c) compression + CDA"] = {
                "spearman": cda_score,
                "seconds": recipes["(d) compression only"]["seconds"] + cda_seconds,
            }
            losses["cda"], losses["infonce"] = cda_losses, infonce_losses
    write_outputs(results, losses, out)
    return results


def write_outputs(results: dict[str, Any], losses: dict[str, list[dict[str, float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autoreg_embed.reporting import loss_points

    (out / "results.json").write_text(json.dumps(results, indent=2))
    sizes = results["sizes"]
    lines = [
        f"STS-B dev (first {sizes['sts_pairs']} pairs), Spearman x100; size `{results['size']}`, "
        f"{sizes['compression_rows']} compression rows, {sizes['triplets']} SNLI triplets; layout "
        f"`{results['layout']}`, k = {results['num_compress_tokens']}.",
        "",
        "| recipe | Spearman | wall-clock (s) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {r['spearman']:.2f} | {r['seconds']:.0f} |" for name, r in results["recipes"].items()]
    gains = ", ".join(f"{name} {gain:.3f}" for name, gain in results["readout_gain"].items())
    lines += [
        "",
        f"Decoder readout gain (nats per target token, {sizes['readout_rows']} held-out compression rows): {gains}.",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")

    counts = sorted(results["curve"], key=int)
    figure, axis = plt.subplots(figsize=(6, 4))
    for method, label in (("cda", "compression + CDA"), ("infonce", "InfoNCE")):
        axis.plot([int(c) for c in counts], [results["curve"][c][method] for c in counts], marker="o", label=label)
    prompt = results["recipes"]["(a) PromptEOL"]["spearman"]
    axis.axhline(prompt, linestyle="--", color="gray", label="PromptEOL (untrained)")
    axis.set(xlabel="training triplets", ylabel="STS-B dev Spearman x100", xscale="log")
    axis.set_xticks([int(c) for c in counts], [str(c) for c in counts])
    axis.minorticks_off()
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "learning_curve.png", dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(1, len(losses), figsize=(4 * len(losses), 3.5))
    for axis, (name, history) in zip(list(getattr(axes, "flat", [axes])), losses.items(), strict=True):
        points = loss_points(history)
        if points:
            axis.plot(*zip(*points, strict=True), marker=".")
        axis.set(title=name, xlabel="step", ylabel="loss")
    figure.tight_layout()
    figure.savefig(out / "loss_curves.png", dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--output_dir", default="runs/reproduce")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compression_lr", type=float, default=5e-5)
    parser.add_argument("--cda_lr", type=float, default=5e-6)
    parser.add_argument("--infonce_lr", type=float, default=2e-5)
    parser.add_argument("--compression_epochs", type=float, default=2.0, help="paper: 2")
    parser.add_argument("--stage1_checkpoint", default=None, help="reuse this stage-1 checkpoint for (c) and (d)")
    parser.add_argument("--curve", type=int, nargs="*", default=None, help="triplet counts of the learning curve")
    parser.add_argument("--cda_epochs", type=float, default=1.0, help="paper: 4 (over 50k triplets)")
    parser.add_argument("--infonce_epochs", type=float, default=1.0)
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="paper", help="encoder layout of (b)-(d)")
    parser.add_argument("--num_compress_tokens", type=int, default=5, help="k of (b)-(d) (paper: 5)")
    args = parser.parse_args()
    results = run(args)
    print((Path(args.output_dir) / "results.md").read_text())
    print(json.dumps(results["curve"], indent=2))


if __name__ == "__main__":
    main()
