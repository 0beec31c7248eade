"""The command line: help, config files with flag overrides, and a tiny end-to-end run of each stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SHARED_DATA, make_tiny_model, requires_shared_data

from autoreg_embed.cli import DataArguments, ModelArguments, main, parse_stage_arguments
from autoreg_embed.trainers import CDAConfig, CompressionConfig


def test_top_level_help_lists_the_stages(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for stage in ("compress", "align", "contrastive", "distill", "evaluate"):
        assert stage in out


def test_stage_help_lists_method_and_trainer_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--num_compress_tokens", "--max_target_length", "--use_lora", "--train_file", "--config"):
        assert option in out


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_supplies_options_and_flags_override_it(tmp_path, suffix):
    options = {"output_dir": str(tmp_path / "run"), "num_compress_tokens": 3, "learning_rate": 1e-4, "use_lora": True}
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
    assert model_args.use_lora is True and model_args.peft_config().r == 16
    assert data_args.train_file == "quickstart"


def test_unknown_option_in_config_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f"output_dir: {tmp_path}\nnum_compres_tokens: 3\n")
    with pytest.raises(SystemExit, match="num_compres_tokens"):
        parse_stage_arguments((ModelArguments, DataArguments, CompressionConfig), ["--config", str(path)], "x")


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer):
    folder = tmp_path / "tiny-base"
    make_tiny_model("llama", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@requires_shared_data
def test_stages_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, capsys):
    common = ["--max_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "2", "--report_to", "none"]
    common += ["--use_cpu", "true"]
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    main(["compress", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(stage1), *common])
    out = capsys.readouterr().out
    assert "step  train_loss" in out and f"Saved the encoder to {stage1}" in out
    assert (stage1 / "loss_curve.png").is_file() and (stage1 / "modules.json").is_file()

    main(["align", "--model_name_or_path", str(stage1), "--output_dir", str(stage2), *common])
    assert (stage2 / "autoreg_embed_config.json").is_file()
    settings = json.loads((stage2 / "autoreg_embed_config.json").read_text())
    assert settings["base_model_name_or_path"] == str(tiny_model_dir)  # the decoder of both stages

    main(["evaluate", str(stage2), "--sts", str(SHARED_DATA / "sts" / "stsb_dev.jsonl"), "--sts_limit", "12"])
    out = capsys.readouterr().out
    assert "sts.spearman=" in out
    written = json.loads((stage2 / "eval" / "results.json").read_text())
    assert written["results"]["sts"]["n"] == 12


def test_distill_help_lists_the_instemb_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--positive_views", "--freeze_backbone", "--distillation_target", "--daap_combination", "--config"):
        assert option in out


@requires_shared_data
def test_distill_and_instruction_retrieval_end_to_end_on_a_tiny_model(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "qa.yaml"
    data.write_text(
        f"model_name_or_path: {tiny_model_dir}\noutput_dir: {tmp_path / 'distill'}\nmax_steps: 2\n"
        "per_device_train_batch_size: 2\nreport_to: none\nuse_cpu: true\nnum_compress_tokens: 2\n"
        "positive_views: [output, teacher]\n"
    )
    main(["distill", "--config", str(data), "--logging_steps", "1"])  # the quickstart rows, renamed
    out = capsys.readouterr().out
    assert "step  train_loss" in out and f"Saved the encoder to {tmp_path / 'distill'}" in out
    settings = json.loads((tmp_path / "distill" / "autoreg_embed_config.json").read_text())
    assert settings["pooling"] == "daap" and settings["num_compress_tokens"] == 2
    xquad = SHARED_DATA / "compression" / "xquad_en.jsonl"
    limit = ["--instruction_retrieval_contexts", "2"]
    main(["evaluate", str(tmp_path / "distill"), "--instruction-retrieval", str(xquad), *limit])  # the dash alias
    out = capsys.readouterr().out
    assert "instruction_retrieval.with_instruction.accuracy@1=" in out and "instruction_retrieval.gap.mrr=" in out
    written = json.loads((tmp_path / "distill" / "eval" / "results.json").read_text())
    assert written["results"]["instruction_retrieval"]["n_contexts"] == 2


def test_rename_columns_are_parsed_and_checked():
    assert DataArguments(rename_columns="context:text, target:output").column_renames() == {
        "context": "text",
        "target": "output",
    }
    with pytest.raises(SystemExit, match="expected old:new pairs"):
        DataArguments(rename_columns="context").column_renames()


def test_evaluate_needs_a_task(tiny_model_dir):
    with pytest.raises(SystemExit, match="at least one of"):
        main(["evaluate", str(tiny_model_dir)])


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


@pytest.mark.parametrize(
    ("config_file", "config_class"),
    [("paper_stage1.yaml", CompressionConfig), ("paper_stage2.yaml", CDAConfig)],
)
def test_example_configs_parse(config_file, config_class):
    """The paper-recipe configs in examples/ stay valid option files."""
    path = Path(__file__).resolve().parents[1] / "examples" / "configs" / config_file
    argv = ["--config", str(path), "--bf16", "false"]  # bf16 needs a GPU (or use_cpu) to pass validation here
    _, data_args, config = parse_stage_arguments((ModelArguments, DataArguments, config_class), argv, "x")
    assert config.gradient_checkpointing and config.per_device_train_batch_size == 8
    assert config.warmup_steps == 0.05 and config.lr_scheduler_type == "linear"  # the official scripts' schedule
    assert data_args.train_file.startswith("data/")
