"""The reproduction driver: layout options (fast) and an end-to-end smoke run on the embedded model (slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SHARED_DATA, requires_shared_data

from autoreg_embed import CDAConfig, CompressionConfig
from autoreg_embed.sentence_transformers import PROMPTEOL_INSTRUCTION, PROMPTEOL_LAYOUT

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import reproduce  # noqa: E402  (an example script, importable from its folder)


@requires_shared_data
def test_held_out_compression_rows_are_unseen_by_stage_1():
    train = reproduce.compression_rows(SHARED_DATA, 400, seed=0)
    held_out = reproduce.compression_rows(SHARED_DATA, 48, seed=0, skip=reproduce.per_file(400))
    assert len(train) == 400 and len(held_out) == 48
    seen = {(row["context"], row["instruction"]) for row in train}
    assert not seen & {(row["context"], row["instruction"]) for row in held_out}


def test_layout_options_build_valid_trainer_configs(tmp_path):
    encoder, instructions = reproduce.layout_options("prompteol", 1)
    assert encoder == {**PROMPTEOL_LAYOUT, "num_compress_tokens": 1}
    assert set(instructions.values()) == {PROMPTEOL_INSTRUCTION}
    stage1 = CompressionConfig(output_dir=str(tmp_path), report_to="none", **encoder)
    stage2 = CDAConfig(output_dir=str(tmp_path), report_to="none", **encoder, **instructions)
    assert stage1.encoder_settings() == stage2.encoder_settings()
    assert stage2.encoder_settings().template == PROMPTEOL_LAYOUT["template"]
    assert reproduce.layout_options("paper", 5) == ({"num_compress_tokens": 5}, {})


@requires_shared_data
@pytest.mark.slow
def test_reproduce_smoke_run_writes_table_plots_and_curve(tmp_path):
    command = [
        sys.executable,
        str(EXAMPLES / "reproduce.py"),
        "--size",
        "smoke",
        "--layout",
        "prompteol",
        "--num_compress_tokens",
        "1",
        "--curve",
        "8",
        "--data",
        str(SHARED_DATA),
        "--output_dir",
        str(tmp_path),
    ]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, text=True)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["curve"]) == {"8", "16"}
    assert (results["layout"], results["num_compress_tokens"]) == ("prompteol", 1)
    recipes = results["recipes"]
    assert set(recipes) == {
        "(a) last token",
        "(a) mean pooling",
        "(a) PromptEOL",
        "(d) compression only",
        "(b) InfoNCE",
        "(c) compression + CDA",
    }
    assert all(-100 <= r["spearman"] <= 100 and r["seconds"] > 0 for r in recipes.values())
    table = (tmp_path / "results.md").read_text()
    assert "| (c) compression + CDA |" in table and "layout `prompteol`, k = 1" in table
    assert set(results["readout_gain"]) == {"untrained", "stage 1"}
    assert all(abs(gain) < 20 for gain in results["readout_gain"].values())  # nats per token, finite
    assert "Decoder readout gain" in table
    for name in ("learning_curve.png", "loss_curves.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
