"""The command line: help, version, config files, one-line errors checked before any model loads, and a tiny
end-to-end run of every stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_jsonl, write_sts_file

import autoreg_embed
from autoreg_embed.cli import main
from autoreg_embed.cli.arguments import DataArguments, ModelArguments, parse_stage_arguments
from autoreg_embed.cli.checks import looks_like_local_path
from autoreg_embed.cli.errors import UserError
from autoreg_embed.cli.training import TRAINING_STAGES
from autoreg_embed.trainers import CDAConfig, CompressionConfig

REPO = Path(__file__).resolve().parents[1]


def run_cli(*argv: str) -> int:
    """``main(argv)`` as the console script runs it; the exit status."""
    try:
        main(list(argv))
    except SystemExit as exit_info:
        return int(exit_info.code or 0)
    return 0


def fail(capsys, *argv: str) -> str:
    """Run a command that must fail with status 1 and one line on stderr; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"autoreg-embed {argv[0]}: error: ")
    return err[0]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if anything tries to load a model or reach the hub."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded or the hub was asked")

    monkeypatch.setattr("autoreg_embed.modeling.checkpoint.AutoModelForCausalLM.from_pretrained", refuse)
    monkeypatch.setattr("huggingface_hub.HfApi.model_info", refuse)


# --- help and version ---------------------------------------------------------------------------------------------


def test_top_level_help_and_version_do_not_import_torch():
    """The console script answers --help and --version without importing torch (a fresh interpreter)."""
    code = (
        "import sys\nfrom autoreg_embed.cli import main\n"
        "for option in ('--help', '--version'):\n"
        "    try:\n        main([option])\n    except SystemExit:\n        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().endswith("NO-TORCH")
    assert f"autoreg-embed {autoreg_embed.__version__}" in out
    for command in (*TRAINING_STAGES, "evaluate"):
        assert command in out


def test_import_autoreg_embed_does_not_import_torch():
    code = (
        "import sys, autoreg_embed\nprint(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"


def test_stage_help_lists_own_options_first_with_defaults_and_choices(capsys):
    assert run_cli("compress", "--help") == 0
    out = capsys.readouterr().out
    own = out.index("CompressionConfig options")
    assert out.index("ModelArguments options") < own < out.index("transformers.TrainingArguments options")
    for option in ("--num_compress_tokens", "--max_target_length", "--use_peft", "--train_file", "--config FILE"):
        assert option in out[: out.index("transformers.TrainingArguments options")]
    assert "--pooling {compress_mean,compress_last,last,mean,eos,daap}" in out
    assert "--instruction_position {after_text,before_text}" in out
    no_merge = next(line for line in out.splitlines() if line.strip().startswith("--no_merge_adapter_on_save"))
    assert "Turn merge_adapter_on_save off." in no_merge and "writes merged" not in no_merge
    assert "k, the number of compress tokens (paper: 5). Unset: 5" in out
    assert "Log every N optimisation steps. (default: 10)" in out  # defaults are shown
    assert "--num-compress-tokens" not in out  # the hyphenated aliases parse but are not listed


def test_evaluate_help_lists_baseline_choices(capsys):
    assert run_cli("evaluate", "--help") == 0
    out = capsys.readouterr().out
    assert "--baseline {last,mean,eos}" in out and "--instruction_retrieval INSTRUCTION_RETRIEVAL" in out


def test_distill_help_lists_the_instemb_options(capsys):
    assert run_cli("distill", "--help") == 0
    out = capsys.readouterr().out
    own = out[: out.index("transformers.TrainingArguments options")]
    assert "DistillConfig options" in own and "--rename_columns" in own
    for option in ("--positive_views", "--freeze_backbone", "--distillation_target", "--daap_combination", "--config"):
        assert option in own


# --- options --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_supplies_options_and_flags_override_it(tmp_path, suffix):
    options = {"output_dir": str(tmp_path / "run"), "num_compress_tokens": 3, "learning_rate": 1e-4, "use_peft": True}
    path = tmp_path / f"stage1{suffix}"
    if suffix == ".yaml":
        path.write_text("\n".join(f"{key}: {value}" for key, value in options.items()))
    else:
        path.write_text(json.dumps(options))
    model_args, data_args, config = parse_stage_arguments(
        (ModelArguments, DataArguments, CompressionConfig), ["--config", str(path), "--learning_rate", "3e-4"], "x"
    )
    assert config.num_compress_tokens == 3
    assert config.learning_rate == pytest.approx(3e-4)  # the flag wins over the file
    assert config.output_dir == str(tmp_path / "run")
    assert data_args.train_file == "quickstart"
    lora = model_args.peft_config()  # built by trl's get_peft_config
    assert (lora.r, lora.lora_alpha, lora.target_modules, lora.task_type) == (16, 32, "all-linear", "CAUSAL_LM")


def test_lora_target_modules_list(tmp_path):
    model_args, _, _ = parse_stage_arguments(
        (ModelArguments, DataArguments, CompressionConfig),
        ["--output_dir", str(tmp_path), "--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj"],
        "x",
    )
    lora = model_args.peft_config()
    assert lora.r == 4 and set(lora.target_modules) == {"q_proj", "v_proj"}
    assert ModelArguments().peft_config() is None


def test_unknown_option_in_config_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f"output_dir: {tmp_path}\nnum_compres_tokens: 3\n")
    with pytest.raises(UserError, match=r"Unknown option\(s\) in .*bad.yaml: num_compres_tokens"):
        parse_stage_arguments((ModelArguments, DataArguments, CompressionConfig), ["--config", str(path)], "x")


@pytest.mark.parametrize(
    ("config_file", "config_class"),
    [("paper_stage1.yaml", CompressionConfig), ("paper_stage2.yaml", CDAConfig)],
)
def test_example_configs_parse(config_file, config_class):
    """The paper-recipe configs in examples/ stay valid option files."""
    path = REPO / "examples" / "configs" / config_file
    argv = ["--config", str(path), "--bf16", "false"]  # bf16 needs a GPU (or use_cpu) to pass validation here
    _, data_args, config = parse_stage_arguments((ModelArguments, DataArguments, config_class), argv, "x")
    assert config.gradient_checkpointing and config.per_device_train_batch_size == 8
    assert config.warmup_steps == 0.05 and config.lr_scheduler_type == "linear"  # the official scripts' schedule
    assert data_args.train_file.startswith("data/")


def test_evaluate_paper_sts_prints_the_average_next_to_the_paper(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """The task selection is real; mteb's run is replaced by fixed scores (the tasks' data is on the hub)."""
    from types import SimpleNamespace

    import autoreg_embed.evaluation.mteb_tasks as mteb_tasks

    ran = []

    def fake_run(model, tasks, **kwargs):
        ran.extend(tasks)
        results = [SimpleNamespace(task_name=task.metadata.name, get_score=lambda: 0.8) for task in tasks]
        return SimpleNamespace(task_results=results)

    monkeypatch.setattr(mteb_tasks, "run_mteb", fake_run)
    main(["evaluate", str(tiny_model_dir), "--baseline", "last", "--mteb", "paper-sts", "--output_dir", str(tmp_path)])
    assert len(ran) == 10 and {task.metadata.name: task.hf_subsets for task in ran}["STS17"] == ["en-en"]
    out = capsys.readouterr().out
    assert "paper-sts.average=80.00" in out and "83.24   paper: AutoRegEmbed-LLaMA2-7B" in out
    written = json.loads((tmp_path / "eval" / "baseline-last.json").read_text())
    assert written["results"]["paper-sts"] == {"average": pytest.approx(80.0)}


def test_python_dash_m_runs_the_command_line():
    """``accelerate launch -m autoreg_embed.cli`` (docs/multi_gpu.md) and ``python -m autoreg_embed`` both work."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for module in ("autoreg_embed.cli", "autoreg_embed"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--version"], capture_output=True, text=True, env=env, check=True
        )
        assert result.stdout.strip() == f"autoreg-embed {autoreg_embed.__version__}"


# --- one-line errors, before any model loads -----------------------------------------------------------------------


def test_user_errors_are_one_line_and_checked_before_the_model_loads(tmp_path, capsys, no_model_loading, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    bad_type = write_jsonl(tmp_path / "bad.jsonl", [{"context": "a", "target": "b"}, {"context": 7, "target": "x"}])
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"context": "a", "target": "b"}, {"context": "c"}])
    out = ["--output_dir", str(tmp_path / "out")]

    assert "Data file 'nope.jsonl' does not exist" in fail(capsys, "compress", *out, "--train_file", "nope.jsonl")
    message = fail(capsys, "compress", *out, "--train_file", str(bad_type))
    assert f"{bad_type}, line 2, column 'context': expected a string, got int (7)" in message
    message = fail(capsys, "compress", *out, "--train_file", str(missing))
    assert f"{missing}, line 2: missing column 'target'" in message
    message = fail(capsys, "compress", *out, "--model_name_or_path", "runs/stage1-typo")
    assert "Model folder 'runs/stage1-typo' does not exist" in message  # no hub retries for a local-looking path
    assert "holds no model" in fail(capsys, "compress", *out, "--model_name_or_path", str(tmp_path / "runs"))
    assert "Config file 'nope.yaml' does not exist" in fail(capsys, "align", "--config", "nope.yaml")
    assert "num_compress_tokens must be >= 0, got -1" in fail(capsys, "compress", *out, "--num_compress_tokens", "-1")
    assert "is not an autoreg-embed checkpoint" in fail(capsys, "evaluate", str(tmp_path / "runs"), "--sts", "x.jsonl")
    assert "at least one of --sts" in fail(capsys, "evaluate", str(tmp_path))
    assert "Unrecognized arguments: a b" in fail(capsys, "evaluate", "--sts", "x.jsonl", "a", "b")
    assert not (tmp_path / "out").exists()


def test_distill_and_instruction_retrieval_errors_are_one_line(
    tmp_path, tiny_model_dir, capsys, no_model_loading, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    no_output = write_jsonl(tmp_path / "no_output.jsonl", [{"text": "a", "output": "b"}, {"text": "c"}])
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": "a", "output": "b"}, {"text": " ", "output": "d"}])
    compression = write_jsonl(tmp_path / "compression.jsonl", [{"context": "a", "instruction": "q", "target": "b"}])
    out = ["--output_dir", str(tmp_path / "out")]

    message = fail(capsys, "distill", *out, "--train_file", str(no_output))
    assert f"{no_output}, line 2: missing column 'output'" in message
    assert f"{empty}, line 2, column 'text': empty text" in fail(capsys, "distill", *out, "--train_file", str(empty))
    message = fail(capsys, "distill", *out, "--train_file", str(compression))
    assert "line 1: missing column 'text'" in message
    message = fail(capsys, "distill", *out, "--train_file", str(compression), "--rename_columns", "context")
    assert "--rename_columns: expected old:new pairs, got 'context'" in message
    renamed = ["--train_file", str(compression), "--rename_columns", "context:text,answer:output"]
    assert "line 1: missing column 'output'" in fail(capsys, "distill", *out, *renamed)

    bad = write_jsonl(tmp_path / "ir.jsonl", [{"context": "c", "instruction": "q", "target": ""}])
    baseline = ["evaluate", str(tiny_model_dir), "--baseline", "last"]
    message = fail(capsys, *baseline, "--instruction_retrieval", str(bad))
    assert f"{bad}, line 1: column 'target' must be a non-empty string" in message
    message = fail(capsys, *baseline, "--instruction-retrieval", "nope.jsonl")
    assert "Instruction-retrieval file 'nope.jsonl' does not exist" in message
    assert not (tmp_path / "out").exists()


def test_unknown_hub_name_is_one_line(capsys, monkeypatch, tmp_path):
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(self, name, **kwargs):
        error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # the hub's answer for an unknown repo
        Exception.__init__(error, f"404 Client Error: {name}")
        raise error

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", not_found)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    message = fail(capsys, "compress", "--output_dir", str(tmp_path), "--model_name_or_path", "someone/no-such-model")
    assert "Unknown model 'someone/no-such-model'" in message


def test_usage_errors_are_one_line_with_status_2(capsys):
    for argv in (["compress", "--pooling", "nope"], ["frobnicate"], ["--nope"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0] and "--help" in err[0], err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        main(["--debug", "compress", "--output_dir", str(tmp_path), "--train_file", "nope.jsonl"])


@pytest.mark.parametrize(
    ("name", "local"),
    [("runs/x", True), ("./x", True), ("../x", True), ("/abs/x", True), ("~/x", True), ("a/b/c", True),
     ("x/", True), ("Qwen/Qwen2.5-0.5B", False), ("gpt2", False)],
)  # fmt: skip
def test_local_looking_paths(name, local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_like_local_path(name) is local


# --- end to end on a tiny model -------------------------------------------------------------------------------------


def test_stages_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--max_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "2", "--report_to", "none"]
    common += ["--use_cpu", "true", "--save_strategy", "no"]
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    main(["compress", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(stage1), *common])
    out = capsys.readouterr().out
    assert "step  train_loss" in out and f"Saved the encoder to {stage1}" in out
    assert (stage1 / "loss_curve.png").is_file() and (stage1 / "modules.json").is_file()

    main(["align", "--model_name_or_path", str(stage1), "--output_dir", str(stage2), *common])
    settings = json.loads((stage2 / "autoreg_embed_config.json").read_text())
    assert settings["base_model_name_or_path"] == str(tiny_model_dir)  # the decoder of both stages
    card = (stage2 / "README.md").read_text()
    assert "1. CompressionTrainer\n2. CDATrainer" in card and "@inproceedings{deng2025autoregembed" in card

    sts = write_sts_file(tmp_path / "sts.jsonl", 12)
    before = set(tmp_path.iterdir())
    main(["evaluate", "--sts", str(sts), "--baseline", "last", str(tiny_model_dir)])
    assert "not written" in capsys.readouterr().out
    assert set(tmp_path.iterdir()) == before  # a baseline writes nothing unless --output_dir is given

    main(["evaluate", str(stage2), "--sts", str(sts)])
    out = capsys.readouterr().out
    assert "sts.spearman=" in out
    written = json.loads((stage2 / "eval" / "results.json").read_text())
    assert written["results"]["sts"]["n"] == 12
    assert "| sts.spearman |" in (stage2 / "README.md").read_text()  # the model card shows the scores
    assert set(tmp_path.iterdir()) == before


def test_distill_and_instruction_retrieval_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "distill.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\noutput_dir: {tmp_path / 'distill'}\nmax_steps: 2\n"
        "per_device_train_batch_size: 2\nreport_to: none\nuse_cpu: true\nsave_strategy: 'no'\n"
        "num_compress_tokens: 2\npositive_views: [output, teacher]\n"
    )
    main(["distill", "--config", str(config), "--logging_steps", "1"])  # the quickstart rows, renamed
    out = capsys.readouterr().out
    assert "step  train_loss" in out and f"Saved the encoder to {tmp_path / 'distill'}" in out
    settings = json.loads((tmp_path / "distill" / "autoreg_embed_config.json").read_text())
    assert settings["pooling"] == "daap" and settings["num_compress_tokens"] == 2
    card = (tmp_path / "distill" / "README.md").read_text()
    assert "1. DistillTrainer" in card and "@inproceedings{gao2026instemb" in card  # the InstEmb citation

    rows = [
        {"context": f"Town {town} has {n} bridges and {n + 3} parks.", "instruction": question, "target": answer}
        for town, n in (("Ash", 2), ("Elm", 5))
        for question, answer in ((f"How many bridges in {town}?", f"{n} bridges"), ("And parks?", f"{n + 3} parks"))
    ]
    questions = write_jsonl(tmp_path / "questions.jsonl", rows)
    limit = ["--instruction_retrieval_contexts", "1"]
    main(["evaluate", str(tmp_path / "distill"), "--instruction-retrieval", str(questions), *limit])  # dash alias
    out = capsys.readouterr().out
    assert "instruction_retrieval.with_instruction.accuracy@1=" in out and "instruction_retrieval.gap.mrr=" in out
    written = json.loads((tmp_path / "distill" / "eval" / "results.json").read_text())
    assert written["results"]["instruction_retrieval"]["n_contexts"] == 1
