"""The reproduction driver: layout options (fast) and an end-to-end smoke run on the embedded model (slow)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import SHARED_DATA, requires_shared_data

from autoreg_embed import CDAConfig, CompressionConfig
from autoreg_embed.sentence_transformers import PROMPTEOL_INSTRUCTION, PROMPTEOL_LAYOUT

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import instemb_table  # noqa: E402  (example scripts, importable from their folder)
import reproduce  # noqa: E402


@requires_shared_data
def test_held_out_compression_rows_are_unseen_by_stage_1():
    sizes = replace(reproduce.SIZES["small"], compression_rows=400)
    train, held_out = reproduce.qa_rows(SHARED_DATA, sizes, seed=0)
    assert len(train) == 400 and len(held_out) == sizes.readout_rows
    seen = {(row["context"], row["instruction"]) for row in train}
    assert not seen & {(row["context"], row["instruction"]) for row in held_out}
    everything, _ = reproduce.qa_rows(SHARED_DATA, reproduce.SIZES["gpu"], seed=0)  # the paper-size stage 1
    assert len(everything) == 4758 - sizes.readout_rows
    with pytest.raises(ValueError, match="compression_rows=5000, but the files hold 4710 rows"):
        reproduce.qa_rows(SHARED_DATA, replace(sizes, compression_rows=5000), seed=0)


def test_layout_options_build_valid_trainer_configs(tmp_path):
    encoder, instructions = reproduce.layout_options("prompteol", 1)
    assert encoder == {**PROMPTEOL_LAYOUT, "num_compress_tokens": 1}
    assert set(instructions.values()) == {PROMPTEOL_INSTRUCTION}
    stage1 = CompressionConfig(output_dir=str(tmp_path), report_to="none", **encoder)
    stage2 = CDAConfig(output_dir=str(tmp_path), report_to="none", **encoder, **instructions)
    assert stage1.encoder_settings() == stage2.encoder_settings()
    assert stage2.encoder_settings().template == PROMPTEOL_LAYOUT["template"]
    assert reproduce.layout_options("paper", 5) == ({"num_compress_tokens": 5}, {})


def test_triplets_option_sets_the_table_count_only_and_bf16_runs_on_cpu(tmp_path):
    small = reproduce.SIZES["small"]
    whole_file = reproduce.sizes_of(argparse.Namespace(size="small", triplets=6339))
    assert whole_file == replace(small, triplets=6339)  # stage-1 rows, STS pairs and lengths stay the size's
    assert reproduce.sizes_of(argparse.Namespace(size="small", triplets=None)) == small
    options = reproduce.common_options(small, tmp_path, {}, bf16=True)
    config = CompressionConfig(**options)  # transformers refuses bf16 on a CPU-only machine without use_cpu
    assert config.bf16 and config.use_cpu == (not torch.cuda.is_available())


@requires_shared_data
def test_triplet_counts_are_the_curve_and_table_count_and_impossible_counts_are_refused():
    def counts(triplets: int | None, curve: list[int] | None) -> list[int]:
        args = argparse.Namespace(size="small", triplets=triplets, curve=curve, data=str(SHARED_DATA))
        return reproduce.triplet_counts(args, reproduce.sizes_of(args))

    assert counts(None, None) == [150, 600]
    assert counts(3600, [3600]) == [3600]  # the size's own 600 is not run again
    assert counts(None, [1800]) == [600, 1800]
    for bad_triplets, bad_curve in ((7000, None), (0, [0]), (None, [6340])):
        with pytest.raises(ValueError, match=r"--triplets / --curve ask for .* the SNLI file holds 6339 rows"):
            counts(bad_triplets, bad_curve)


@requires_shared_data
def test_autoencoding_rows_are_none_of_the_triplets_and_held_out_rows_unseen():
    sizes = reproduce.SIZES["small"]
    train, held_out = reproduce.autoencoding_rows(SHARED_DATA, sizes, seed=1, instruction="means in one word")
    assert (len(train), len(held_out)) == (sizes.compression_rows, sizes.readout_rows)
    assert all(row["context"] == row["target"] for row in train)
    triplet_texts = {text for row in reproduce.triplets(SHARED_DATA, sizes.triplets, seed=1) for text in row.values()}
    train_texts = set(train["target"])
    assert not train_texts & triplet_texts and not train_texts & set(held_out["target"])


@requires_shared_data
def test_reproduce_smoke_run_writes_table_plots_and_curve(tmp_path, tiny_model_dir):
    """The script behind docs/reproduce.md still runs end to end at its smoke size (every recipe, on a tiny model:
    the code path, not the scores), and a second call reuses the finished seed instead of training again."""
    command = [
        sys.executable,
        str(EXAMPLES / "reproduce.py"),
        "--size",
        "smoke",
        "--seeds",
        "0",
        "--curve",
        "8",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(SHARED_DATA),
        "--output_dir",
        str(tmp_path),
    ]
    for methods in ("infonce", "cda"):  # as two processes of one seed would, one after the other here
        subprocess.run([*command, "--methods", methods], check=True, cwd=tmp_path, capture_output=True, text=True)
        if methods == "infonce":
            seed = json.loads((tmp_path / "seed-0" / "results.json").read_text())
            assert {method for scores in seed["curve"].values() for method in scores} == {"infonce"}
            assert (
                "(b) InfoNCE" in seed["recipes"] and "(e) stage 1 + CDA (paper sign) + InfoNCE" not in seed["recipes"]
            )
            assert "(d) stage 1 only" not in seed["recipes"] and not (tmp_path / "seed-0" / "compression").exists()
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["curve"]) == {"8", "16"}
    assert set(results["curve"]["16"]) == {"cda-paper", "cda-official", "infonce", "cda-then-infonce"}
    assert set(results["curve"]["8"]) == {"cda-paper", "infonce", "cda-then-infonce"}  # (e) at every curve point
    combined = results["recipes"]["(e) stage 1 + CDA (paper sign) + InfoNCE"]["spearman"]
    assert results["curve"]["16"]["cda-then-infonce"] == combined  # the full-size point is recipe (e)
    assert results["options"]["stage1"] == "autoencoding" and results["options"]["seeds"] == [0]
    recipes = results["recipes"]
    assert set(recipes) == {
        "(a) last token",
        "(a) mean pooling",
        "(a) PromptEOL",
        "(d) stage 1 only",
        "(b) InfoNCE",
        "(c) stage 1 + CDA, paper reference sign",
        "(c) stage 1 + CDA, official reference sign",
        "(e) stage 1 + CDA (paper sign) + InfoNCE",
    }
    trained = [r["spearman"] for name, r in recipes.items() if not name.startswith("(a)")]
    assert all(-100 <= r["mean"] <= 100 and r["std"] == 0.0 and len(r["values"]) == 1 for r in trained)
    table = (tmp_path / "results.md").read_text()
    assert "| (c) stage 1 + CDA, paper reference sign |" in table and "layout `prompteol`, k = 5" in table
    header = "| training triplets | stage 1 + CDA (paper sign) | official sign | InfoNCE | stage 1 + CDA + InfoNCE |"
    assert header in table
    assert "\n| 8 | " in table and "\n| 16 | " in table
    assert set(results["readout_gain"]) == {"stage 1", "after CDA (paper sign)", "after CDA (official sign)"}
    assert all(abs(gain["mean"]) < 20 for gain in results["readout_gain"].values())  # nats per token, finite
    steps = [step for step, _ in results["readout_curves"]["0"]]
    assert steps[0] == 0 and steps == sorted(steps) and len(steps) >= 2
    for plot in ("readout_curve.png", "learning_curve.png", "loss_curves.png"):
        assert (tmp_path / plot).stat().st_size > 0
    seed_file = tmp_path / "seed-0" / "results.json"
    finished = seed_file.stat().st_mtime_ns
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, text=True)
    assert seed_file.stat().st_mtime_ns == finished  # reused, not trained again


@requires_shared_data
def test_instemb_training_batches_group_questions_by_context_and_never_hold_xquad():
    sizes = instemb_table.SIZES["small"]
    rows = instemb_table.training_rows(SHARED_DATA / "compression", sizes, seed=0)
    batch_size = instemb_table.BATCH_SIZE
    assert len(rows) == (sizes.squad_batches + sizes.pubmed_batches) * batch_size
    xquad = {json.loads(line)["context"] for line in (SHARED_DATA / "compression" / "xquad_en.jsonl").open()}
    assert not xquad & {row["text"] for row in rows}
    kinds = {"squad": 0, "pubmed": 0}
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        contexts = [row["text"] for row in batch]
        if len(set(contexts)) == instemb_table.CONTEXTS_PER_BATCH:  # SQuAD: 2 contexts x 4 questions
            kinds["squad"] += 1
            for context in set(contexts):
                answers = [row["output"] for row in batch if row["text"] == context]
                assert len(answers) == instemb_table.QUESTIONS_PER_CONTEXT == len(set(answers))
        else:  # PubMedQA: 8 abstracts
            assert len(set(contexts)) == batch_size
            kinds["pubmed"] += 1
    assert kinds == {"squad": sizes.squad_batches, "pubmed": sizes.pubmed_batches}


@requires_shared_data
def test_instemb_table_smoke_run_writes_table_and_plot(tmp_path, tiny_model_dir):
    """examples/instemb_table.py runs every recipe at its smoke size (on a tiny model: the code path, not the
    scores) and writes its table and plot."""
    command = [sys.executable, str(EXAMPLES / "instemb_table.py"), "--size", "smoke", "--data", str(SHARED_DATA)]
    command += ["--model", str(tiny_model_dir), "--output_dir", str(tmp_path)]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True)
    results = json.loads((tmp_path / "results.json").read_text())
    recipes = results["recipes"]
    assert len(recipes) == 7 and all(-100 <= r["sts_spearman"] <= 100 for r in recipes.values())
    for recipe in recipes.values():
        retrieval = recipe["instruction_retrieval"]
        assert 0 <= retrieval["with_instruction"]["accuracy@1"] <= 100 and retrieval["n_contexts"] == 2
    assert sum(1 for r in recipes.values() if r["training"]) == 4
    table = (tmp_path / "results.md").read_text()
    assert "| (c) DistillTrainer, DAAP |" in table and "Training in total" in table
    assert (tmp_path / "instemb_table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_gpu_check_smoke_runs_both_stages_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.py --smoke: the GPU check's code path (2 steps of each stage, tiny model, CPU)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    command = [sys.executable, str(script), "--smoke", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout[result.stdout.rindex("\n{\n") :])  # the last printed object (logs precede it)
    for stage in ("compression", "cda"):
        assert report["sdpa"][stage]["seconds_per_step"] > 0
        assert math.isfinite(report["sdpa"][stage]["final_loss"])


def test_saving_a_seed_keeps_what_a_parallel_process_of_that_seed_wrote(tmp_path):
    file = tmp_path / "results.json"
    file.write_text(
        json.dumps({"seed": 0, "recipes": {"(b) InfoNCE": {"spearman": 1.0}}, "curve": {"16": {"infonce": 1.0}}})
    )
    ours = {"seed": 0, "recipes": {}, "curve": {"16": {"cda-paper": 2.0}}}
    curve = ours["curve"]["16"]
    reproduce.save_results(file, ours)
    expected = {
        "seed": 0,
        "recipes": {"(b) InfoNCE": {"spearman": 1.0}},
        "curve": {"16": {"cda-paper": 2.0, "infonce": 1.0}},
    }
    assert json.loads(file.read_text()) == ours == expected
    curve["cda-official"] = 3.0  # the caller's references stay live: later recipes land in what is saved next
    reproduce.save_results(file, ours)
    assert json.loads(file.read_text())["curve"]["16"] == {"cda-paper": 2.0, "infonce": 1.0, "cda-official": 3.0}
    assert not file.with_suffix(".tmp").exists()
