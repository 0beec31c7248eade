"""``autoreg-embed quickstart``: the shipped data (valid rows, scores in range, held-out parts never trained on), the
report (table, verdict, collapse warning), and the command end to end on a tiny model (and, slow, the real one)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from autoreg_embed.cli import main
from autoreg_embed.cli.checks import validate_data_file
from autoreg_embed.cli.errors import UserError
from autoreg_embed.cli.quickstart import POINTS, QUICKSTART_COLUMNS, QuickstartArguments, format_table, verdict
from autoreg_embed.data.files import read_jsonl
from autoreg_embed.evaluation import load_sts_rows
from autoreg_embed.resources import QUICKSTART_FILES
from autoreg_embed.sentence_transformers import PROMPTEOL_INSTRUCTION


def records(name: str) -> list[dict]:
    return [record for _, record in read_jsonl(QUICKSTART_FILES[name])]


def normalised(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


# --- shipped data ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(QUICKSTART_COLUMNS))
def test_every_shipped_row_is_valid(name):
    rows = len(records(name))
    assert validate_data_file(str(QUICKSTART_FILES[name]), QUICKSTART_COLUMNS[name]) == rows
    assert rows >= {"sentences": 300, "heldout_sentences": 40, "cda": 32, "sts": 100}[name]


@pytest.mark.parametrize("name", ["sentences", "heldout_sentences"])
def test_autoencoding_rows_regenerate_the_sentence_with_the_prompteol_instruction(name):
    rows = records(name)
    assert all(row["context"] == row["target"] and row["instruction"] == PROMPTEOL_INSTRUCTION for row in rows)
    assert all(3 <= len(row["context"].split()) <= 20 for row in rows)  # short sentences


def test_sts_scores_are_in_range_and_spread_over_it():
    rows = load_sts_rows(QUICKSTART_FILES["sts"])
    scores = [row["score"] for row in rows]
    assert all(0.0 <= score <= 5.0 for score in scores)
    per_unit = Counter(min(int(score), 4) for score in scores)  # [0,1), [1,2), ..., [4,5]
    assert all(per_unit[unit] >= 0.12 * len(rows) for unit in range(5)), per_unit


def test_no_text_appears_twice_or_in_both_training_and_held_out_parts():
    sentences = [row["context"] for row in records("sentences")]
    heldout = [row["context"] for row in records("heldout_sentences")]
    triplets = [text for row in records("cda") for text in (row["query"], row["pos"], row["neg"])]
    sts = [text for row in records("sts") for text in (row["sentence1"], row["sentence2"])]
    pairs = [(row["sentence1"], row["sentence2"]) for row in records("sts")]
    assert len(set(map(normalised, sentences))) == len(sentences)
    assert len(set(map(normalised, heldout))) == len(heldout)
    assert len(set(pairs)) == len(pairs)
    trained = set(map(normalised, sentences + triplets))
    assert not trained & set(map(normalised, heldout))
    assert not trained & set(map(normalised, sts))


def test_held_out_sentences_are_not_near_copies_of_training_sentences():
    def words(text: str) -> set[str]:
        return set(normalised(text).split())

    trained = [words(row["context"]) for row in records("sentences")]
    trained += [words(row[column]) for row in records("cda") for column in ("query", "pos", "neg")]
    heldout = [words(row["context"]) for row in records("heldout_sentences")]
    heldout += [words(row[column]) for row in records("sts") for column in ("sentence1", "sentence2")]
    overlap = max(len(held & seen) / len(held | seen) for held in heldout for seen in trained)
    assert overlap < 0.8  # word-set Jaccard; shared everyday words, never the same sentence


# --- report ---------------------------------------------------------------------------------------------------------


def points(*values: tuple[float, float, float]) -> dict[str, dict[str, float]]:
    keys = ("sts_spearman", "readout_gain", "mean_cosine")
    return {point: dict(zip(keys, row, strict=True)) for point, row in zip(POINTS, values, strict=True)}


def test_table_has_one_row_per_point():
    table = format_table(points((76.28, 0.02, 0.957), (70.5, 1.0, 0.97), (77.0, 0.9, 0.96)))
    lines = table.splitlines()
    assert "STS Spearman" in lines[0] and "readout gain" in lines[0]
    assert lines[1].split() == ["untrained", "(step", "0)", "76.28", "0.020", "0.957"]
    assert lines[3].split()[-3:] == ["77.00", "0.900", "0.960"]


def test_verdict_says_above_or_below_honestly():
    above = verdict(points((76.0, 0.0, 0.9), (70.0, 1.0, 0.9), (76.5, 0.9, 0.9)), 0.99)
    assert above[0].startswith("STS: 76.50, +0.50 over the untrained")
    below = verdict(points((76.0, 0.0, 0.9), (70.0, 1.0, 0.9), (75.0, 0.9, 0.9)), 0.99)
    assert "-1.00 BELOW the untrained" in below[0] and "do not improve STS" in below[0]
    assert below[1].startswith("Readout gain: 0.000 -> 0.900")
    assert not any("WARNING" in line for line in above + below)


def test_collapse_warning_only_when_the_threshold_is_crossed_from_below():
    crossed = verdict(points((76.0, 0.0, 0.95), (70.0, 1.0, 0.995), (75.0, 0.9, 0.97)), 0.99)
    warnings = [line for line in crossed if line.startswith("WARNING")]
    assert len(warnings) == 1 and "after stage 1: mean cosine 0.995 > 0.99 (untrained: 0.950)" in warnings[0]
    already = verdict(points((76.0, 0.0, 0.995), (70.0, 1.0, 0.996), (75.0, 0.9, 0.997)), 0.99)
    assert not any(line.startswith("WARNING") for line in already)


@pytest.mark.parametrize(
    ("option", "message"),
    [({"compression_steps": 0}, "--compression_steps must be at least 1"), ({"collapse_threshold": 1.5}, "cosine")],
)
def test_bad_options_are_user_errors(option, message):
    with pytest.raises(UserError, match=message):
        QuickstartArguments(**option)


# --- the command ----------------------------------------------------------------------------------------------------


def run_quickstart(output_dir, *options: str) -> dict:
    main(["quickstart", "--output_dir", str(output_dir), *options])
    return json.loads((output_dir / "quickstart_results.json").read_text())


def assert_small_final_model_only(output_dir) -> None:
    names = {path.name for path in output_dir.iterdir()}
    assert {"model.safetensors", "autoreg_embed_config.json", "modules.json", "quickstart_results.json"} <= names
    assert not {"stage1", "readout"} & names and not any(name.startswith("checkpoint-") for name in names)
    assert not list(output_dir.rglob("optimizer.pt"))


def test_quickstart_on_a_tiny_model(tmp_path, tiny_model_dir, capsys):
    output_dir = tmp_path / "quickstart"
    options = ["--model_name_or_path", str(tiny_model_dir), "--batch_size", "2"]
    report = run_quickstart(output_dir, *options, "--compression_steps", "2", "--alignment_steps", "1")
    out = capsys.readouterr().out
    assert list(report["results"]) == list(POINTS)
    for row in report["results"].values():
        assert -100 <= row["sts_spearman"] <= 100 and -1 <= row["mean_cosine"] <= 1
    untrained = report["results"][POINTS[0]]
    table = out[out.index("STS Spearman") :]
    assert f"{untrained['sts_spearman']:.2f}" in table and "Readout gain:" in table and "Done in" in table
    assert "[quickstart" in out and "stage 1: 2 steps" in out and "stage 2: 1 steps" in out
    assert_small_final_model_only(output_dir)
    settings = json.loads((output_dir / "autoreg_embed_config.json").read_text())
    assert settings["num_compress_tokens"] == 5 and "{states}" in settings["decoder_template"]


def test_quickstart_keeps_stage1_when_asked(tmp_path, tiny_model_dir):
    output_dir = tmp_path / "quickstart"
    options = ["--model_name_or_path", str(tiny_model_dir), "--batch_size", "2", "--num_compress_tokens", "1"]
    run_quickstart(output_dir, *options, "--compression_steps", "1", "--alignment_steps", "1", "--keep_stage1")
    assert (output_dir / "stage1" / "model.safetensors").is_file()


def test_quickstart_checks_the_model_before_loading(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["quickstart", "--model_name_or_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


@pytest.mark.slow
def test_quickstart_on_the_embedded_model_with_reduced_steps(tmp_path, capsys):
    output_dir = tmp_path / "quickstart"
    report = run_quickstart(output_dir, "--compression_steps", "6", "--alignment_steps", "2")
    out = capsys.readouterr().out
    untrained = report["results"][POINTS[0]]
    assert 60 < untrained["sts_spearman"] < 90  # the PromptEOL layout already ranks the shipped pairs well
    assert abs(untrained["readout_gain"]) < 0.2  # the untrained decoder barely reads the states
    assert "after stage 2" in out and "STS:" in out
    assert_small_final_model_only(output_dir)
    assert sum(path.stat().st_size for path in output_dir.rglob("*") if path.is_file()) < 700e6
