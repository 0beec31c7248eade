"""Data: row validation, the stage-1 collator (layout, padding, truncation) and loading rows from files."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset
from helpers import SHARED_DATA, compression_rows, requires_shared_data

from autoreg_embed import EncoderInputBuilder, EncoderSettings
from autoreg_embed.data import CompressionCollator, DataValidationError, TargetBuilder, load_rows, validate_rows
from autoreg_embed.data.schema import check_text_list, require_columns

COLUMNS = ("context", "instruction", "target")


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def make_collator(tokenizer, k: int = 3, max_target_length: int = 512, **settings) -> CompressionCollator:
    encoder_settings = EncoderSettings(num_compress_tokens=k, **settings)
    tokenizer.add_tokens(encoder_settings.compress_tokens, special_tokens=True)
    return CompressionCollator(EncoderInputBuilder(tokenizer, encoder_settings), max_target_length)


def compress_ids(tokenizer, k: int) -> list[int]:
    return tokenizer.convert_tokens_to_ids([f"<EMBED{i}>" for i in range(k)])


# --------------------------------------------------------------------------------------------------------------
# Row validation: every message names the column and the row
# --------------------------------------------------------------------------------------------------------------


def test_valid_rows_are_counted():
    assert (
        validate_rows(compression_rows(4), ("context", "target"), "train_dataset", optional_columns=("instruction",))
        == 4
    )


def test_missing_column_names_it_and_suggests_rename():
    with pytest.raises(DataValidationError, match=r"train_dataset is missing column\(s\) \['target'\]") as error:
        require_columns(["context", "instruction", "answer"], ("context", "target"), "train_dataset")
    assert "rename_column('old', 'target')" in str(error.value)
    assert "'answer'" in str(error.value)  # the columns it does have are listed


def test_empty_context_at_row_3():
    data = compression_rows()
    data[3]["context"] = ""
    with pytest.raises(DataValidationError, match=r"^Column 'context', row 3: empty text"):
        validate_rows(data, ("context", "target"), "train_dataset")


def test_whitespace_only_text_counts_as_empty():
    data = compression_rows()
    data[1]["target"] = " \n\t"
    with pytest.raises(DataValidationError, match=r"^Column 'target', row 1: empty text"):
        validate_rows(data, ("context", "target"), "train_dataset")


def test_int_target_at_row_2():
    data = compression_rows()
    data[2]["target"] = 7
    with pytest.raises(DataValidationError, match=r"^Column 'target', row 2: expected a string, got int \(7\)"):
        validate_rows(data, ("context", "target"), "train_dataset")


def test_none_instruction_is_allowed_but_a_non_string_one_is_not():
    data = compression_rows()
    data[0]["instruction"] = None
    data[1]["instruction"] = ""
    assert validate_rows(data, ("context", "target"), "d", optional_columns=("instruction",)) == 5
    data[4]["instruction"] = ["not", "a", "string"]
    with pytest.raises(DataValidationError, match=r"^Column 'instruction', row 4: expected a string, got list"):
        validate_rows(data, ("context", "target"), "d", optional_columns=("instruction",))


def test_empty_dataset_is_rejected():
    with pytest.raises(DataValidationError, match=r"^train_dataset has no rows"):
        validate_rows([], ("context", "target"), "train_dataset")
    empty = Dataset.from_dict({column: [] for column in COLUMNS})
    with pytest.raises(DataValidationError, match=r"^eval_dataset has no rows"):
        validate_rows(empty, ("context", "target"), "eval_dataset")


def test_validation_error_is_a_value_error():
    assert issubclass(DataValidationError, ValueError)


def test_text_lists():
    assert check_text_list("one", "negatives", 0) == ["one"]
    assert check_text_list(["a", "b"], "negatives", 0) == ["a", "b"]
    with pytest.raises(DataValidationError, match=r"^Column 'negatives', row 5: expected a string or a non-empty"):
        check_text_list([], "negatives", 5)
    with pytest.raises(DataValidationError, match=r"^Column 'negatives', row 2: empty text"):
        check_text_list(["a", ""], "negatives", 2)


# --------------------------------------------------------------------------------------------------------------
# CompressionCollator
# --------------------------------------------------------------------------------------------------------------


def test_collator_layout_and_padding(tokenizer):
    collator = make_collator(tokenizer, k=3)
    features = [
        {"context": "A short one.", "instruction": "Why?", "target": "Because it is."},
        {"context": "A much longer context sentence with more words in it.", "instruction": "", "target": "Yes"},
    ]
    batch = collator(features)
    assert set(batch) == {"input_ids", "attention_mask", "target_ids", "target_mask"}
    k_ids = compress_ids(tokenizer, 3)
    bos = tokenizer.bos_token_id
    expected = [
        [bos, *ids(tokenizer, "A short one."), *ids(tokenizer, "\nWhy?"), *k_ids],
        # an empty instruction drops the separator too: just BOS + text + compress tokens
        [bos, *ids(tokenizer, "A much longer context sentence with more words in it."), *k_ids],
    ]
    width = max(map(len, expected))
    assert batch["input_ids"].shape == (2, width)
    for row, want in enumerate(expected):
        assert batch["attention_mask"][row].tolist() == [1] * len(want) + [0] * (width - len(want))
        assert batch["input_ids"][row, : len(want)].tolist() == want
        assert set(batch["input_ids"][row, len(want) :].tolist()) <= {tokenizer.pad_token_id}

    eos = tokenizer.eos_token_id
    targets = [[*ids(tokenizer, "Because it is."), eos], [*ids(tokenizer, "Yes"), eos]]
    width = max(map(len, targets))
    for row, want in enumerate(targets):
        assert batch["target_ids"][row, : len(want)].tolist() == want
        assert batch["target_mask"][row].tolist() == [1] * len(want) + [0] * (width - len(want))
    assert not collator.truncations  # nothing was cut


def test_collator_none_or_missing_instruction_means_empty(tokenizer):
    collator = make_collator(tokenizer)
    with_none = collator([{"context": "Some text.", "instruction": None, "target": "t"}])
    missing = collator([{"context": "Some text.", "target": "t"}])
    empty = collator([{"context": "Some text.", "instruction": "", "target": "t"}])
    for batch in (with_none, missing):
        assert batch["input_ids"].tolist() == empty["input_ids"].tolist()


def test_collator_instruction_before_text(tokenizer):
    collator = make_collator(tokenizer, k=2, template="{instruction}\n{text}")
    batch = collator([{"context": "Body.", "instruction": "Title", "target": "t"}])
    want = [tokenizer.bos_token_id, *ids(tokenizer, "Title\n"), *ids(tokenizer, "Body."), *compress_ids(tokenizer, 2)]
    assert batch["input_ids"][0].tolist() == want


def test_collator_compress_token_strings_in_user_text_are_plain_text(tokenizer):
    collator = make_collator(tokenizer, k=2)
    batch = collator([{"context": "look: <EMBED0>", "instruction": "", "target": "<EMBED1>"}])
    k_ids = compress_ids(tokenizer, 2)
    inputs = batch["input_ids"][0].tolist()
    assert inputs[-2:] == k_ids
    assert not set(inputs[:-2]) & set(k_ids)  # only the appended compress tokens are special
    assert not set(batch["target_ids"][0].tolist()) & set(k_ids)


def test_long_target_is_truncated_counted_and_keeps_eos(tokenizer):
    collator = make_collator(tokenizer, max_target_length=4)
    long_target = "one two three four five six seven eight"
    assert len(ids(tokenizer, long_target)) > 4
    batch = collator(
        [
            {"context": "c", "instruction": "", "target": long_target},
            {"context": "c", "instruction": "", "target": "one"},
        ]
    )
    assert batch["target_ids"][0].tolist() == [*ids(tokenizer, long_target)[:4], tokenizer.eos_token_id]
    assert batch["target_mask"][0].tolist() == [1] * 5
    assert collator.truncations["target"] == 1
    collator([{"context": "c", "instruction": "", "target": long_target}] * 2)
    assert collator.truncations["target"] == 3  # counted per target, cumulatively


def test_long_context_is_truncated_with_compress_tokens_intact(tokenizer):
    collator = make_collator(tokenizer, k=4, max_text_length=5, max_instruction_length=3)
    context = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    instruction = "a rather long instruction that goes on"
    batch = collator([{"context": context, "instruction": instruction, "target": "t"}])
    suffix = ids(tokenizer, "\n" + instruction)[:3]
    want = [tokenizer.bos_token_id, *ids(tokenizer, context)[:5], *suffix, *compress_ids(tokenizer, 4)]
    assert batch["input_ids"][0].tolist() == want
    assert collator.truncations["text"] == 1
    assert collator.truncations["instruction"] == 1
    assert collator.truncations["target"] == 0


def test_left_padding_keeps_compress_tokens_last(tokenizer):
    encoder_settings = EncoderSettings(num_compress_tokens=2)
    tokenizer.add_tokens(encoder_settings.compress_tokens, special_tokens=True)
    collator = CompressionCollator(EncoderInputBuilder(tokenizer, encoder_settings), padding_side="left")
    batch = collator(
        [
            {"context": "short", "instruction": "", "target": "t"},
            {"context": "a considerably longer context", "instruction": "", "target": "t"},
        ]
    )
    assert batch["attention_mask"][0, 0].item() == 0 and batch["attention_mask"][0, -1].item() == 1
    assert batch["input_ids"][:, -2:].tolist() == [compress_ids(tokenizer, 2)] * 2
    assert batch["target_mask"][:, 0].tolist() == [1, 1]  # targets stay right-padded


def test_collator_rejects_bad_rows_naming_column_and_row(tokenizer):
    collator = make_collator(tokenizer)
    features = compression_rows(4)
    features[2]["target"] = 7
    with pytest.raises(DataValidationError, match=r"^Column 'target', row 2: expected a string, got int"):
        collator(features)
    features = compression_rows(4)
    features[1]["context"] = ""
    with pytest.raises(DataValidationError, match=r"^Column 'context', row 1: empty text"):
        collator(features)


def test_target_builder_needs_eos_and_a_positive_length(tokenizer):
    with pytest.raises(ValueError, match=r"max_target_length must be >= 1, got 0"):
        TargetBuilder(tokenizer, 0)
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match=r"no EOS token.*Set tokenizer\.eos_token"):
        TargetBuilder(tokenizer, 8)


def test_builder_without_pad_or_bos_token_says_how_to_fix(tokenizer):
    settings = EncoderSettings(num_compress_tokens=1)
    tokenizer.add_tokens(settings.compress_tokens, special_tokens=True)
    tokenizer.bos_token = None
    with pytest.raises(ValueError, match=r"add_bos=True but the tokenizer has no BOS token.*add_bos=False"):
        EncoderInputBuilder(tokenizer, settings)
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match=r"no pad token.*tokenizer\.pad_token = tokenizer\.eos_token"):
        EncoderInputBuilder(tokenizer, settings)


def test_builder_without_compress_tokens_says_how_to_add_them(tokenizer):
    with pytest.raises(ValueError, match=r"lacks the compress tokens \['<EMBED0>', '<EMBED1>'\].*add_compress_tokens"):
        EncoderInputBuilder(tokenizer, EncoderSettings(num_compress_tokens=2))


# --------------------------------------------------------------------------------------------------------------
# load_rows
# --------------------------------------------------------------------------------------------------------------


def test_load_rows_jsonl(tmp_path):
    path = tmp_path / "tiny.jsonl"
    data = compression_rows(3)
    data[1]["instruction"] = ""
    path.write_text("".join(json.dumps(row) + "\n" for row in data), encoding="utf-8")
    loaded = load_rows(path)
    assert isinstance(loaded, Dataset)
    assert loaded.num_rows == 3
    assert sorted(loaded.column_names) == sorted(COLUMNS)
    assert loaded.to_list() == data
    assert load_rows(str(path)).to_list() == data  # a str path too


def test_load_rows_csv(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_text('context,instruction,target\n"Hello, world",Say hi,hi\nBye,,bye\n', encoding="utf-8")
    loaded = load_rows(path)
    assert loaded.num_rows == 2
    assert loaded[0] == {"context": "Hello, world", "instruction": "Say hi", "target": "hi"}


def test_load_rows_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl does not exist"):
        load_rows(missing)


def test_load_rows_passes_a_dataset_through():
    dataset = Dataset.from_list(compression_rows(2))
    assert load_rows(dataset) is dataset


@requires_shared_data
def test_load_rows_shared_compression_file():
    loaded = load_rows(SHARED_DATA / "compression" / "xquad_en.jsonl")
    assert set(COLUMNS) <= set(loaded.column_names)
    assert loaded.num_rows > 100
    first = loaded[0]
    assert first["context"].startswith("The Panthers defense gave up just 308 points")
    assert all(isinstance(first[column], str) for column in COLUMNS)
    # and the whole file passes stage-1 validation
    assert validate_rows(loaded, ("context", "target"), "xquad", optional_columns=("instruction",)) == loaded.num_rows
