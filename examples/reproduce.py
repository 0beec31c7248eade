"""Small-scale reproduction of AutoRegEmbed's central claim on the embedded SmolLM2-135M (CPU friendly), over seeds.

Recipes, each ending with an STS-B dev evaluation (Spearman x100 of cosine similarity):
  (a) untrained baselines: last-token, mean pooling, PromptEOL;
  (b) InfoNCE (ContrastiveTrainer) on NLI triplets;
  (c) stage 1 (compression), then CDA on the same triplets as (b), with the paper's and the official reference
      sign;
  (d) stage 1 only (the checkpoint (c) starts from);
  (e) (c) with the paper's sign followed by one epoch of InfoNCE (the paper's retrieval recipe).
Stage 1 is either the paper's (``--stage1 qa``: regenerate answers of SQuAD/XQuAD/PubMedQA rows) or the one the
decoder reads at this scale (``--stage1 autoencoding``: regenerate short SNLI sentences that are not among the
triplets, with the frozen decoder reading the states inside ``--decoder_template``, see docs/reproduce.md). The
readout gain of stage 1 (nats per token the decoder gains from a row's own states) is measured on held-out rows
every ``--eval_steps`` and after stage 2. Every trained recipe runs once per ``--seeds`` value (data shuffle and
initialisation); a learning curve compares CDA (paper sign), InfoNCE and (e) at ``--curve`` triplet counts.

Writes, into ``--output_dir``: ``seed-N/`` (checkpoints and ``results.json`` of each seed, written after every
recipe; finished recipes are not run again, so seeds may run as parallel processes and a last call aggregates
them; ``--methods cda`` (stage 1, CDA and (e)) and ``--methods infonce`` also train one seed as two parallel
processes), ``results.json``, ``results.md`` (mean +- std over seeds, wall-clock times, the learning curve),
``readout_curve.png``,
``learning_curve.png`` and ``loss_curves.png``. Run from the repository root (data in ``../shared/data``)::

    python examples/reproduce.py --size small --stage1 autoencoding --seeds 0 1 2 --output_dir runs/reproduce
    python examples/reproduce.py --size smoke --stage1 autoencoding --seeds 0 --output_dir runs/smoke  # minutes
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
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
from autoreg_embed.trainers.recipes import CHATML_WORDS_DECODER_TEMPLATE


@dataclass(frozen=True)
class Sizes:
    """How much data and compute each recipe gets."""

    compression_rows: int | None
    """Stage-1 rows (``None``: all of them but the held-out rows)."""
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
        compression_rows=1200,
        triplets=600,
        curve=(150, 600),
        sts_pairs=500,
        max_length=96,
        batch_size=8,
        readout_rows=48,
    ),
    "gpu": Sizes(
        compression_rows=None,
        triplets=6339,
        curve=(600, 6339),
        sts_pairs=1500,
        max_length=256,
        batch_size=32,
        readout_rows=48,
    ),
}
"""``gpu`` is the paper-size stage 1 (all 4.7k compression rows; run it with ``--stage1 qa --compression_epochs 2
--bf16``) and all 6.3k SNLI triplets: ``benchmarks/gpu_reproduce.sh``."""


LAYOUTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "paper": ({}, {}),
    "prompteol": (PROMPTEOL_LAYOUT, {f"instruction_{key}": PROMPTEOL_INSTRUCTION for key in ("next", "self", "prev")}),
}
"""(encoder options, instruction options) of the trained recipes' layouts. ``paper``: ``{text}\\n{instruction}``
with the paper's STS instruction and vocabulary-mean compress tokens. ``prompteol``: the PromptEOL prompt around
the text with the compress tokens started from its closing ``:"`` token, so that with k = 1 the untrained encoder
*is* PromptEOL (step 0 = the prompt baseline)."""

DECODER_TEMPLATES = {"none": None, "chatml_words": CHATML_WORDS_DECODER_TEMPLATE}
"""``--decoder_template`` presets (any other value is used as the template itself)."""

REFERENCE_SIGNS = ("paper", "official")
COMPRESSION_FILES = ("squad2_devhalf_answerable.jsonl", "xquad_en.jsonl", "pubmedqa_pqal.jsonl")


CURVE_METHODS = {  # learning-curve methods (keys of a seed's ``curve[count]``) and their table / plot labels
    "cda-paper": "stage 1 + CDA (paper sign)",
    "cda-official": "official sign",
    "infonce": "InfoNCE",
    "cda-then-infonce": "stage 1 + CDA + InfoNCE",
}


def qa_rows(data: Path, sizes: Sizes, seed: int) -> tuple[Dataset, Dataset]:
    """(training, held-out) rows of the paper's stage 1 from the SQuAD, XQuAD and PubMedQA compression files,
    shuffled together: the held-out rows are the last ``sizes.readout_rows``, training the first
    ``sizes.compression_rows`` (``None``: all the others).

    Raises:
        ValueError: more training rows asked for than the files hold besides the held-out rows.
    """
    rows = concatenate_datasets([load_rows(data / "compression" / name) for name in COMPRESSION_FILES])
    rows = rows.shuffle(seed=seed)
    available = len(rows) - sizes.readout_rows
    count = available if sizes.compression_rows is None else sizes.compression_rows
    if count > available:
        raise ValueError(f"compression_rows={count}, but the files hold {available} rows besides the held-out ones.")
    return rows.select(range(count)), rows.select(range(available, len(rows)))


def shuffled_triplets(data: Path, seed: int) -> Dataset:
    return load_rows(data / "nli" / "snli_devtest_triplets.jsonl").shuffle(seed=seed)


def triplets(data: Path, count: int, seed: int) -> Dataset:
    """The first ``count`` rows of a fixed shuffle of the SNLI triplets (so smaller sets are prefixes)."""
    return shuffled_triplets(data, seed).select(range(count)).select_columns(["query", "pos", "neg"])


def autoencoding_rows(data: Path, sizes: Sizes, seed: int, instruction: str) -> tuple[Dataset, Dataset]:
    """(training, held-out) autoencoding rows: context = target = an SNLI sentence of none of the training triplets
    (which are the first ``sizes.triplets`` rows of the same shuffle); held-out sentences from the last rows."""
    rows = shuffled_triplets(data, seed)
    used = {text for row in rows.select(range(sizes.triplets)) for text in (row["query"], row["pos"], row["neg"])}
    sentences = [text for row in rows.select(range(sizes.triplets, len(rows))) for text in (row["query"], row["pos"])]
    unique = [text for text in dict.fromkeys(sentences) if text not in used]
    held_out, train = unique[-sizes.readout_rows :], unique[: sizes.compression_rows]

    def as_rows(texts: list[str]) -> Dataset:
        return Dataset.from_dict({"context": texts, "instruction": [instruction] * len(texts), "target": texts})

    return as_rows(train), as_rows(held_out)


def sizes_of(args: argparse.Namespace) -> Sizes:
    """The sizes of ``--size``, with ``--triplets`` (the triplet count of the table rows) where given."""
    sizes = SIZES[args.size]
    return replace(sizes, triplets=args.triplets) if args.triplets is not None else sizes


def triplet_counts(args: argparse.Namespace, sizes: Sizes) -> list[int]:
    """The triplet counts one seed trains on, ascending: the ``--curve`` points and the table's count.

    Raises:
        ValueError: a count below 1 or above the rows of the SNLI file, naming ``--triplets`` / ``--curve``.
    """
    counts = sorted({*(args.curve or sizes.curve), sizes.triplets})
    available = len(shuffled_triplets(Path(args.data), seed=0))
    if counts[0] < 1 or counts[-1] > available:
        raise ValueError(
            f"--triplets / --curve ask for {counts} triplets, but the SNLI file holds {available} rows: "
            f"give counts from 1 to {available}"
        )
    return counts


def layout_options(layout: str, num_compress_tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(encoder options of every trainer, instruction options of the triplet trainers) of a layout."""
    encoder, instructions = LAYOUTS[layout]
    return {**encoder, "num_compress_tokens": num_compress_tokens}, dict(instructions)


def common_options(
    sizes: Sizes, output_dir: Path, layout: dict[str, Any], seed: int = 0, bf16: bool = False
) -> dict[str, Any]:
    return {
        **layout,
        "output_dir": str(output_dir),
        "per_device_train_batch_size": sizes.batch_size,
        "per_device_eval_batch_size": 16,
        "max_text_length": sizes.max_length,
        "max_instruction_length": sizes.max_length,
        "logging_steps": 5,
        "save_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "bf16": bf16,
        "use_cpu": bf16 and not torch.cuda.is_available(),  # transformers refuses bf16 on CPU unless asked to
    }


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def sts_score(model: Any, data: Path, sizes: Sizes) -> float:
    return evaluate_sts(model, data / "sts" / "stsb_dev.jsonl", limit=sizes.sts_pairs)["spearman"]


def readout_gain(model: str, rows: Dataset, sizes: Sizes, output_dir: Path) -> float:
    """Nats per target token the frozen decoder gains from ``model``'s compress states, read the way ``model``
    was trained to be read (its saved layout and ``decoder_template``; see docs/compression.md)."""
    args = CompressionConfig(**common_options(sizes, output_dir, {}), max_target_length=sizes.max_length)
    return CompressionTrainer(model=model, args=args, train_dataset=rows).evaluate(rows)["eval_readout_gain"]


def train(trainer: Any, output_dir: Path) -> list[dict[str, float]]:
    trainer.train()
    trainer.save_model(str(output_dir))
    return trainer.state.log_history


def stage1_data(args: argparse.Namespace, sizes: Sizes, seed: int) -> tuple[Dataset, Dataset]:
    """(training rows, held-out readout rows) of stage 1."""
    if args.stage1 == "autoencoding":
        instruction = PROMPTEOL_INSTRUCTION if args.layout == "prompteol" else ""
        return autoencoding_rows(Path(args.data), sizes, seed, instruction)
    return qa_rows(Path(args.data), sizes, seed)


def run_seed(args: argparse.Namespace, seed: int, out: Path, counts: list[int]) -> dict[str, Any]:
    """Every trained recipe of one seed, at the triplet ``counts`` (:func:`triplet_counts`); returns (and writes to
    ``out/results.json`` after each recipe) scores, times and logs. Recipes that file already holds are not run
    again (an interrupted seed continues)."""
    sizes, data = sizes_of(args), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    layout, instructions = layout_options(args.layout, args.num_compress_tokens)
    stage1_layout = {**layout, "decoder_template": DECODER_TEMPLATES.get(args.decoder_template, args.decoder_template)}
    file = out / "results.json"
    empty = {"seed": seed, "recipes": {}, "readout_gain": {}, "curve": {}, "logs": {}}
    result: dict[str, Any] = json.loads(file.read_text()) if file.is_file() else empty
    recipes = result["recipes"]

    def save() -> None:
        save_results(file, result)
        gc.collect()  # the finished recipe's trainer and models

    stage1_dir = out / "compression"
    train_rows, held_out = stage1_data(args, SIZES[args.size], seed)  # the same stage 1 whatever --triplets is
    if "(d) stage 1 only" not in recipes and "cda" in args.methods:  # stage 1 is the start of CDA only
        stage1 = CompressionTrainer(
            model=args.model,
            args=CompressionConfig(
                **common_options(sizes, stage1_dir, stage1_layout, seed, args.bf16),
                max_target_length=sizes.max_length,
                learning_rate=args.compression_lr,
                num_train_epochs=args.compression_epochs,
                warmup_steps=args.compression_warmup_steps,
                lr_scheduler_type=args.compression_scheduler,
                eval_strategy="steps",
                eval_steps=args.eval_steps,
                eval_on_start=True,
            ),
            train_dataset=train_rows,
            eval_dataset=held_out,
        )
        result["logs"]["compression"], seconds = timed(lambda: train(stage1, stage1_dir))
        result["readout_gain"]["stage 1"] = stage1.evaluate()["eval_readout_gain"]
        del stage1  # one process runs every recipe: free each trainer's models before the next one
        score, eval_seconds = timed(lambda: sts_score(load(stage1_dir), data, sizes))
        recipes["(d) stage 1 only"] = {"spearman": score, "seconds": seconds + eval_seconds}
        save()

    for count in counts:
        rows = triplets(data, count, seed)
        curve = result["curve"].setdefault(str(count), {})
        signs = args.reference_signs if count == sizes.triplets else args.reference_signs[:1]
        for sign in (sign for sign in signs if f"cda-{sign}" not in curve and "cda" in args.methods):
            cda_dir = out / f"cda-{sign}-{count}"
            cda = CDATrainer(
                model=str(stage1_dir),
                args=CDAConfig(
                    **common_options(sizes, cda_dir, {}, seed, args.bf16),
                    **instructions,
                    max_target_length=sizes.max_length,
                    learning_rate=args.cda_lr,
                    beta=args.cda_beta,
                    num_train_epochs=args.cda_epochs,
                    reference_sign=sign,
                    precompute_ref_log_probs=True,
                ),
                train_dataset=rows,
            )
            logs, cda_seconds = timed(lambda t=cda, d=cda_dir: train(t, d))
            del cda
            curve[f"cda-{sign}"] = sts_score(load(cda_dir), data, sizes)
            if count == sizes.triplets:
                recipes[f"(c) stage 1 + CDA, {sign} reference sign"] = {
                    "spearman": curve[f"cda-{sign}"],
                    "seconds": recipes["(d) stage 1 only"]["seconds"] + cda_seconds,
                }
                result["readout_gain"][f"after CDA ({sign} sign)"] = readout_gain(
                    str(cda_dir), held_out, sizes, out / "readout"
                )
                result["logs"][f"cda-{sign}"] = logs
            save()
        if "infonce" not in curve and "infonce" in args.methods:
            infonce_dir = out / f"infonce-{count}"
            logs, seconds = timed(
                lambda r=rows, d=infonce_dir: train(infonce(args, r, d, layout, instructions, seed), d)
            )
            curve["infonce"] = sts_score(load(infonce_dir), data, sizes)
            if count == sizes.triplets:
                recipes["(b) InfoNCE"] = {"spearman": curve["infonce"], "seconds": seconds}
                result["logs"]["infonce"] = logs
            save()
        if "cda-then-infonce" not in curve and "paper" in signs and "cda" in args.methods:
            # the paper's retrieval recipe: one epoch of InfoNCE after CDA, on the same triplets
            then_dir, cda_dir = out / f"cda-then-infonce-{count}", str(out / f"cda-paper-{count}")
            _, seconds = timed(
                lambda r=rows, d=then_dir, m=cda_dir: train(infonce(args, r, d, {}, instructions, seed, m), d)
            )
            curve["cda-then-infonce"] = sts_score(load(then_dir), data, sizes)
            if count == sizes.triplets:
                recipes["(e) stage 1 + CDA (paper sign) + InfoNCE"] = {
                    "spearman": curve["cda-then-infonce"],
                    "seconds": recipes["(c) stage 1 + CDA, paper reference sign"]["seconds"] + seconds,
                }
            save()

    return result


def add_missing(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Add to ``ours``, in place and at every nesting level, the entries of ``theirs`` it lacks (``ours`` wins on
    a clash; its nested dictionaries stay the same objects)."""
    for key, value in theirs.items():
        if key not in ours:
            ours[key] = value
        elif isinstance(ours[key], dict) and isinstance(value, dict):
            add_missing(ours[key], value)


def save_results(file: Path, result: dict[str, Any]) -> None:
    """Write a seed's ``result`` to ``file``, with what another process of the same seed (``--methods``) has
    written there since this one read it added to ``result`` first; under a lock, replaced atomically (an
    interrupted write loses nothing)."""
    from filelock import FileLock

    with FileLock(f"{file}.lock"):
        if file.is_file():
            add_missing(result, json.loads(file.read_text()))
        temporary = file.with_suffix(".tmp")
        temporary.write_text(json.dumps(result, indent=2))
        temporary.replace(file)


def infonce(
    args: argparse.Namespace,
    rows: Dataset,
    output_dir: Path,
    layout: dict[str, Any],
    instructions: dict[str, Any],
    seed: int,
    model: str | None = None,
) -> ContrastiveTrainer:
    """InfoNCE on ``rows`` from ``model`` (default: the base LLM with ``layout``), with the triplet trainers'
    ``instructions``."""
    sizes = sizes_of(args)
    return ContrastiveTrainer(
        model=model or args.model,
        args=ContrastiveConfig(
            **common_options(sizes, output_dir, layout, seed, args.bf16),
            **instructions,
            learning_rate=args.infonce_lr,
            num_train_epochs=args.infonce_epochs,
        ),
        train_dataset=rows,
    )


def baselines(model: str | None, data: Path, sizes: Sizes) -> dict[str, dict[str, float]]:
    """(a): the untrained model with last-token, mean pooling and the PromptEOL prompt."""
    scores = {}
    for name, pooling, template in (
        ("(a) last token", "last", "{text}"),
        ("(a) mean pooling", "mean", "{text}"),
        ("(a) PromptEOL", "last", PROMPTEOL_TEMPLATE),
    ):
        score, seconds = timed(lambda p=pooling, t=template: sts_score(baseline(model, p, t), data, sizes))
        scores[name] = {"spearman": score, "seconds": seconds}
    return scores


def mean_std(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or reuse) every seed, then aggregate: mean and std over seeds of every trained recipe."""
    sizes, out = sizes_of(args), Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.aggregate_only:  # what the seeds' runs have finished, nothing trained
        seeds = [json.loads((out / f"seed-{seed}" / "results.json").read_text()) for seed in args.seeds]
    else:
        counts = triplet_counts(args, sizes)  # a count the file cannot give fails here, before any training
        seeds = [run_seed(args, seed, out / f"seed-{seed}", counts) for seed in args.seeds]
    results: dict[str, Any] = {
        "size": args.size,
        "sizes": sizes.__dict__,
        "options": {
            key: value for key, value in vars(args).items() if key not in ("output_dir", "data", "aggregate_only")
        },
        "recipes": baselines(args.model, Path(args.data), sizes),
    }

    def over_seeds(part: str, name: str, key: str | None = None) -> list[float]:
        """The values of a recipe / readout gain over the seeds that ran it (all, unless some seeds skipped it)."""
        found = [seed[part][name] for seed in seeds if name in seed[part]]
        return [value[key] for value in found] if key else found

    names = dict.fromkeys(name for seed in seeds for name in seed["recipes"])
    for name in names:
        results["recipes"][name] = {
            "spearman": mean_std(over_seeds("recipes", name, "spearman")),
            "seconds": statistics.fmean(
                [seconds for seconds in over_seeds("recipes", name, "seconds") if not math.isnan(seconds)] or [math.nan]
            ),
        }
    gains = dict.fromkeys(name for seed in seeds for name in seed["readout_gain"])
    results["readout_gain"] = {name: mean_std(over_seeds("readout_gain", name)) for name in gains}
    counts = sorted({count for seed in seeds for count in seed["curve"]}, key=int)
    results["curve"] = {  # a count run by some seeds only (e.g. a --curve given to one seed) averages those seeds
        count: {
            method: mean_std([seed["curve"][count][method] for seed in seeds if method in seed["curve"].get(count, {})])
            for method in dict.fromkeys(method for seed in seeds for method in seed["curve"].get(count, {}))
        }
        for count in counts
    }
    results["readout_curves"] = {
        seed["seed"]: sorted(
            {
                entry["step"]: entry["eval_readout_gain"]
                for entry in seed["logs"]["compression"]
                if "eval_readout_gain" in entry
            }.items()
        )
        for seed in seeds
        if "compression" in seed["logs"]  # a seed run with --methods infonce only has no stage 1
    }
    write_outputs(results, seeds, out)
    return results


def spearman_cell(score: float | dict[str, Any]) -> str:
    """``mean ± std (n = number of seeds that ran it)``, or a single value."""
    if isinstance(score, float):
        return f"{score:.2f}"
    return f"{score['mean']:.2f} ± {score['std']:.2f} (n = {len(score['values'])})"


def write_outputs(results: dict[str, Any], seeds: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autoreg_embed.reporting import loss_points

    (out / "results.json").write_text(json.dumps(results, indent=2))
    sizes, options = results["sizes"], results["options"]
    lines = [
        f"STS-B dev (first {sizes['sts_pairs']} pairs), Spearman x100, mean ± std over seeds {options['seeds']}; "
        f"size `{results['size']}`, stage 1 `{options['stage1']}` ({sizes['compression_rows']} rows, "
        f"{options['compression_epochs']} epoch, lr {options['compression_lr']}, decoder "
        f"template `{options['decoder_template']}`), {sizes['triplets']} SNLI triplets; layout "
        f"`{options['layout']}`, k = {options['num_compress_tokens']}.",
        "",
        "| recipe | Spearman | wall-clock per seed (s) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {spearman_cell(r['spearman'])} | {r['seconds']:.0f} |" for name, r in results["recipes"].items()
    ]
    gains = ", ".join(
        f"{name} {gain['mean']:.3f} ± {gain['std']:.3f}" for name, gain in results["readout_gain"].items()
    )
    lines += ["", f"Decoder readout gain (nats per target token, {sizes['readout_rows']} held-out rows): {gains}."]
    shown = [method for method in CURVE_METHODS if any(method in scores for scores in results["curve"].values())]
    lines += [
        "",
        "| training triplets | " + " | ".join(CURVE_METHODS[m] for m in shown) + " |",
        "|---" * (len(shown) + 1) + "|",
    ]
    lines += [
        f"| {count} | " + " | ".join(spearman_cell(scores[m]) if m in scores else "" for m in shown) + " |"
        for count, scores in sorted(results["curve"].items(), key=lambda item: int(item[0]))
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")

    figure, axis = plt.subplots(figsize=(6, 4))
    for seed, points in results["readout_curves"].items():
        axis.plot(*zip(*points, strict=True), marker="o", label=f"seed {seed}")
    axis.axhline(0.0, linestyle="--", color="gray")
    axis.set(xlabel="stage-1 step", ylabel="held-out readout gain (nats/token)", title="Does the decoder read?")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "readout_curve.png", dpi=120)
    plt.close(figure)

    counts = sorted(results["curve"], key=int)
    figure, axis = plt.subplots(figsize=(6, 4))
    for method, label in CURVE_METHODS.items():
        if method == "cda-official":  # run at the size's triplet count only: a single point, in the table
            continue
        points = [(int(c), results["curve"][c][method]) for c in counts if method in results["curve"][c]]
        x, means, stds = [c for c, _ in points], [p["mean"] for _, p in points], [p["std"] for _, p in points]
        axis.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=label)
    prompt = results["recipes"]["(a) PromptEOL"]["spearman"]
    axis.axhline(prompt, linestyle="--", color="gray", label="PromptEOL (untrained)")
    axis.set(xlabel="training triplets", ylabel="STS-B dev Spearman x100", xscale="log")
    axis.set_xticks([int(c) for c in counts], [str(c) for c in counts])
    axis.minorticks_off()
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "learning_curve.png", dpi=120)
    plt.close(figure)

    shown = max(seeds, key=lambda seed: sum(len(loss_points(history)) for history in seed["logs"].values()))
    logs = shown["logs"]  # the seed with the most logged losses (a recovered seed may have none)
    figure, axes = plt.subplots(1, len(logs), figsize=(4 * len(logs), 3.5))
    for axis, (name, history) in zip(list(getattr(axes, "flat", [axes])), logs.items(), strict=True):
        points = loss_points(history)
        if points:
            axis.plot(*zip(*points, strict=True), marker=".")
        axis.set(title=f"{name} (seed {shown['seed']})", xlabel="step", ylabel="loss")
    figure.tight_layout()
    figure.savefig(out / "loss_curves.png", dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--output_dir", default="runs/reproduce")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default=None, help="base LLM (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--stage1", choices=["qa", "autoencoding"], default="autoencoding")
    parser.add_argument(
        "--decoder_template", default="chatml_words", help=f"{sorted(DECODER_TEMPLATES)} or a template with {{states}}"
    )
    parser.add_argument("--compression_lr", type=float, default=1e-4, help="paper: 2e-5 (for 7B models)")
    parser.add_argument(
        "--compression_epochs",
        type=float,
        default=0.5,
        help="paper: 2; 0.5 (75 steps at size small) gave the best STS-B dev in the stage-1 length study "
        "(docs/reproduce.md), 1.0 the most readable states",
    )
    parser.add_argument("--compression_warmup_steps", type=float, default=20)
    parser.add_argument("--compression_scheduler", default="constant_with_warmup")
    parser.add_argument("--eval_steps", type=int, default=25, help="stage-1 steps between readout-gain evaluations")
    parser.add_argument("--cda_lr", type=float, default=5e-6)
    parser.add_argument("--cda_beta", type=float, default=0.1, help="beta of CDA's S1 and S2 (paper: 0.1)")
    parser.add_argument("--infonce_lr", type=float, default=2e-5)
    parser.add_argument(
        "--triplets",
        type=int,
        default=None,
        help="triplet count of the table rows (default: the size's, 600 at small; 6339 = the whole SNLI file); "
        "stage 1 stays the size's",
    )
    parser.add_argument("--curve", type=int, nargs="*", default=None, help="triplet counts of the learning curve")
    parser.add_argument("--cda_epochs", type=float, default=1.0, help="paper: 4 (over 50k triplets)")
    parser.add_argument("--infonce_epochs", type=float, default=1.0)
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="prompteol", help="encoder layout of (b)-(d)")
    parser.add_argument("--num_compress_tokens", type=int, default=5, help="k of (b)-(d) (paper: 5)")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (paper; GPU)")
    parser.add_argument(
        "--aggregate_only", action="store_true", help="aggregate what the seeds' runs have finished; train nothing"
    )
    parser.add_argument(
        "--reference_signs",
        nargs="+",
        choices=REFERENCE_SIGNS,
        default=list(REFERENCE_SIGNS),
        help="CDA runs at the largest triplet count (the learning curve uses the first)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=("cda", "infonce"),
        default=["cda", "infonce"],
        help="triplet methods this process trains (cda: with stage 1, which it starts from, and (e)); one process "
        "per method with the same --output_dir and --seeds trains them in parallel",
    )
    args = parser.parse_args()
    run(args)
    print((Path(args.output_dir) / "results.md").read_text())


if __name__ == "__main__":
    main()
