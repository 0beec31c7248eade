"""Training beyond one process: 2 gloo processes on CPU equal 1 process, and gradient accumulation weighs items.

Every scenario of ``multiprocess_worker.py`` (compression, compression with LoRA, CDA with a live frozen-copy,
an adapter-off, a two-adapter and a precomputed reference, contrastive with and without cross-process gathering)
trains 2 SGD steps over a global batch of 4 rows whose targets have 2, 3, 15 and 15 tokens: with
``torchrun`` (DDP over gloo; accelerate's own CPU launcher needs MPI for several processes) and with
``accelerate launch`` of the shipped DeepSpeed ZeRO-2 and ZeRO-3 configs forced onto 2 CPU processes (when
deepspeed is installed), one launch per engine for all scenarios, and in this process with batch 4 and with
batch 2 x gradient accumulation 2.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from multiprocess_worker import SCENARIOS, TARGET_WORDS, compression_rows, run_scenario

WORKER = Path(__file__).with_name("multiprocess_worker.py")
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
DEEPSPEED_SCENARIOS = {  # config file stem -> scenarios
    "zero2": [name for name in SCENARIOS if name != "cda-two-adapter"],
    "zero3": ["compression", "cda-copy", "cda-precomputed", "contrastive-gather"],
}
"""Scenarios run under DeepSpeed. ZeRO-3 leaves out LoRA: peft gathers the trainable compress-token rows of a
ZeRO-3 model on the current CUDA device, which a CPU run does not have."""
IN_BATCH_NEGATIVES_PER_MICRO_BATCH = {"contrastive"}
"""Without gathering, each process (or micro-batch) has its own in-batch negatives: 2 processes x 2 then equal
batch 2 x accumulation 2, not batch 4."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(launcher: list[str], out: Path, tag: str, scenarios: list[str]) -> Path:
    """Run the worker for ``scenarios`` with ``launcher`` (2 CPU processes); each rank writes its weights to ``out``."""
    command = [*launcher, str(WORKER), "--out", str(out), "--tag", tag, "--scenarios", *scenarios]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return launch(torchrun, tmp_path_factory.mktemp("two-processes"), "ddp", list(SCENARIOS))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, dict[str, dict]]:
    out = tmp_path_factory.mktemp("one-process")
    return {
        name: {"batch4": run_scenario(name, out, 4, tag="batch4"), "ga": run_scenario(name, out, 2, 2, tag="ga")}
        for name in SCENARIOS
    }


def relative_difference(run: dict, reference: dict) -> float:
    """|w_run - w_ref| / |w_ref - w_initial| over all trainable weights: the difference relative to the update."""
    initial, expected, got = reference["initial"], reference["final"], run["final"]
    assert expected.keys() == got.keys() and expected
    difference = torch.cat([(got[k] - expected[k]).flatten() for k in expected]).double().norm()
    update = torch.cat([(expected[k] - initial[k]).flatten() for k in expected]).double().norm()
    return float(difference / update)


def test_target_lengths_differ_so_token_weighting_matters(tokenizer):
    lengths = [len(tokenizer(row["target"], add_special_tokens=False)["input_ids"]) + 1 for row in compression_rows()]
    assert lengths[: len(TARGET_WORDS)] == [2, 3, 15, 15]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_processes_end_with_identical_weights(two_processes, name):
    rank0 = torch.load(two_processes / f"{name}.ddp.rank0.pt")["final"]
    rank1 = torch.load(two_processes / f"{name}.ddp.rank1.pt")["final"]
    assert rank0.keys() == rank1.keys() and rank0
    assert max(float((rank0[k] - rank1[k]).abs().max()) for k in rank0) <= 1e-6


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_processes_equal_one_process_over_the_same_global_batch(two_processes, one_process, name):
    two = torch.load(two_processes / f"{name}.ddp.rank0.pt")
    reference = one_process[name]["ga" if name in IN_BATCH_NEGATIVES_PER_MICRO_BATCH else "batch4"]
    assert relative_difference(two, reference) <= 1e-5
    moved = max(float((two["final"][k] - two["initial"][k]).abs().max()) for k in two["final"])
    assert moved > 1e-3  # the steps really changed the weights


@pytest.mark.parametrize("name", [name for name in SCENARIOS if not name.startswith("contrastive")])
def test_gradient_accumulation_equals_the_full_batch(one_process, name):
    """Batch 2 x GA 2 = batch 4, also with targets of 2, 3, 15 and 15 tokens: the loss averages over the step's
    tokens (compression) or queries (CDA), not over micro-batches. (Contrastive in-batch negatives are those of
    the micro-batch, so there GA differs by design: see the next test.)"""
    assert relative_difference(one_process[name]["ga"], one_process[name]["batch4"]) <= 1e-5


def test_in_batch_negatives_without_gathering_differ_from_the_full_batch(one_process):
    """The contrast of the tests above: per-micro-batch in-batch negatives do change the update."""
    runs = one_process["contrastive"]
    assert relative_difference(runs["ga"], runs["batch4"]) > 1e-2


def test_logged_loss_is_the_global_mean(two_processes, tmp_path):
    """The logged training loss of 2 processes is the 1-process loss (metrics are averaged over processes)."""
    two = json.loads((two_processes / "compression.ddp.losses.json").read_text())
    run_scenario("compression", tmp_path, 4, tag="log")
    one = json.loads((tmp_path / "compression.log.losses.json").read_text())
    assert two == pytest.approx(one, rel=1e-4)


def test_precomputed_reference_cache_is_written_once_and_shared(two_processes, one_process):
    files = list((two_processes / "cache-ddp").glob("*.json"))
    assert len(files) == 1  # one cache file, written by the main process; no staging leftovers
    columns = json.loads(files[0].read_text())
    single = json.loads(next((two_processes.parent).glob("one-process*/cache-batch4/*.json")).read_text())
    assert columns.keys() == single.keys()
    for name in columns:
        assert len(columns[name]) == len(compression_rows())  # every row once, in order
        assert torch.allclose(torch.tensor(columns[name]), torch.tensor(single[name]), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(DEEPSPEED_SCENARIOS))
def test_deepspeed_two_cpu_processes_equal_one_process(tmp_path, one_process, stage):
    """The shipped ZeRO-2 / ZeRO-3 configs, put on 2 CPU processes: identical ranks, equal to 1 process."""
    pytest.importorskip("deepspeed")
    names = DEEPSPEED_SCENARIOS[stage]
    config = yaml.safe_load((ACCELERATE_CONFIGS / f"{stage}.yaml").read_text())
    config.update(use_cpu=True, num_processes=2, mixed_precision="no", main_process_port=free_port())
    cpu_config = tmp_path / f"{stage}-cpu.yaml"
    cpu_config.write_text(yaml.safe_dump(config))
    out = launch(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cpu_config)], tmp_path, stage, names
    )
    for name in names:
        rank0 = torch.load(out / f"{name}.{stage}.rank0.pt")
        rank1 = torch.load(out / f"{name}.{stage}.rank1.pt")
        assert max(float((rank0["final"][k] - rank1["final"][k]).abs().max()) for k in rank0["final"]) <= 1e-6, name
        reference = one_process[name]["ga" if name in IN_BATCH_NEGATIVES_PER_MICRO_BATCH else "batch4"]
        assert relative_difference(rank0, reference) <= 1e-5, name
