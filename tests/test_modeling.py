"""Tests of the core modeling layer: settings, encoder inputs, the compressing encoder and the frozen decoder."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import ARCHITECTURES, LOGIT_POSTPROCESSING_ARCHITECTURES, make_tiny_model

from autoreg_embed.modeling import (
    SETTINGS_FILE,
    DecoderPrompt,
    EncoderInputBuilder,
    EncoderSettings,
    FrozenRole,
    add_compress_tokens,
    backbone_of,
    compress_positions,
    compress_token_ids,
    conditional_log_probs,
    encode,
    frozen_copy,
    last_hidden_states,
    original_decoder,
    pad_sequences,
)

TEXTS = [
    "A cat sat on the mat.",
    "Quantum chromodynamics describes the strong interaction between quarks and gluons in hadrons.",
    "Short.",
    "The weather in Paris was mild and sunny all week long.",
]
INSTRUCTIONS = [
    'This sentence means in one word: "',
    "Summarise the text.",
    "",
    "Repeat the text.",
]
TARGETS = [
    "A cat on a mat.",
    "Quarks and gluons.",
    "Sunny Paris weather this week, mild and pleasant, nothing more to say here.",
]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP contention makes
    each 32-wide matmul take tens of milliseconds; run this module on one thread and restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ids_of(tokenizer, text):
    """Plain-text token ids, exactly as the builder tokenizes a piece."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def tiny_encoder(architecture, tokenizer, settings, seed=0):
    model = make_tiny_model(architecture, tokenizer, seed=seed)
    add_compress_tokens(model, tokenizer, settings)
    return model


def target_batch(tokenizer, texts=TARGETS):
    """Right-padded target ids with EOS appended, plus the unpadded lists."""
    rows = [[*ids_of(tokenizer, text), tokenizer.eos_token_id] for text in texts]
    assert len({len(row) for row in rows}) == len(rows), "targets must have different lengths"
    return rows, pad_sequences(rows, tokenizer.pad_token_id, "right")


def random_prefix(batch, k, hidden, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, k, hidden, generator=generator)


# --------------------------------------------------------------------------------------------------------------
# EncoderSettings
# --------------------------------------------------------------------------------------------------------------


def test_settings_save_load_round_trip(tmp_path):
    settings = EncoderSettings(
        num_compress_tokens=3,
        compress_token_format="<C{index}>",
        template='This sentence : “{text}” means in one word: "{instruction}',
        add_bos=False,
        pooling="compress_last",
        normalize=False,
        max_text_length=100,
        max_instruction_length=7,
        base_model_name_or_path="some/base-model",
    )
    assert not EncoderSettings.exists_in(tmp_path)
    path = settings.save(tmp_path)
    assert path == tmp_path / SETTINGS_FILE
    assert EncoderSettings.exists_in(tmp_path)
    assert not list(tmp_path.glob("*.tmp")), "the atomic write left its temporary file behind"
    loaded = EncoderSettings.load(tmp_path)
    assert loaded == settings
    assert loaded.compress_tokens == ["<C0>", "<C1>", "<C2>"]
    assert json.loads(path.read_text(encoding="utf-8"))["template"] == settings.template


def test_settings_newer_options_are_written_only_when_set(tmp_path):
    """A checkpoint that does not use the options added after the first release writes exactly the first
    release's keys (so that release loads it); set, they are written and read back."""
    first_release = {
        "num_compress_tokens", "compress_token_format", "template", "add_bos", "pooling", "normalize",
        "max_text_length", "max_instruction_length", "base_model_name_or_path",
    }  # fmt: skip
    plain = EncoderSettings()
    (tmp_path / "a").mkdir()
    assert set(json.loads(plain.save(tmp_path / "a").read_text())) == first_release
    assert EncoderSettings.load(tmp_path / "a") == plain
    (tmp_path / "b").mkdir()
    used = EncoderSettings(decoder_template="Words: {states}", last_token_position="before_compress")
    saved = json.loads(used.save(tmp_path / "b").read_text())
    assert set(saved) == first_release | {"decoder_template", "last_token_position"}
    assert EncoderSettings.load(tmp_path / "b") == used


def test_settings_defaults_follow_the_paper():
    settings = EncoderSettings()
    assert settings.num_compress_tokens == 5
    assert settings.compress_tokens == [f"<EMBED{i}>" for i in range(5)]
    assert settings.pooling == "compress_mean"
    assert settings.add_bos and settings.normalize
    assert settings.split_template("Describe it.") == ("", "\nDescribe it.")
    assert settings.split_template("") == ("", "")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pooling": "max"}, r"pooling must be one of .*'max'"),
        ({"template": "no placeholder here"}, r"template must contain \{text\} exactly once"),
        ({"template": "{text} and {text}"}, r"template must contain \{text\} exactly once"),
        ({"num_compress_tokens": -1}, r"num_compress_tokens must be >= 0, got -1"),
        ({"pooling": "eos", "num_compress_tokens": 5}, r"pooling='eos'.*num_compress_tokens=0"),
        ({"pooling": "compress_mean", "num_compress_tokens": 0}, r"'compress_mean' needs num_compress_tokens >= 1"),
        ({"pooling": "compress_last", "num_compress_tokens": 0}, r"'compress_last' needs num_compress_tokens >= 1"),
        ({"compress_token_format": "<EMBED>"}, r"compress_token_format must contain \{index\}"),
        ({"max_text_length": 0}, r"max_text_length must be >= 1, got 0"),
        ({"max_instruction_length": 0}, r"max_instruction_length must be >= 1, got 0"),
    ],
)
def test_settings_reject_invalid_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EncoderSettings(**kwargs)


def test_settings_load_rejects_unknown_keys(tmp_path):
    data = {"num_compress_tokens": 2, "pooling": "compress_mean", "future_option": 1, "another": True}
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown settings \['another', 'future_option'\]"):
        EncoderSettings.load(tmp_path)


def test_settings_load_validates_values(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"pooling": "max"}), encoding="utf-8")
    with pytest.raises(ValueError, match="pooling must be one of"):
        EncoderSettings.load(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# pad_sequences and compress_positions
# --------------------------------------------------------------------------------------------------------------


def test_pad_sequences_both_sides():
    right = pad_sequences([[5, 6, 7], [8]], pad_token_id=0, padding_side="right")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = pad_sequences([[5, 6, 7], [8]], pad_token_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert right["input_ids"].dtype == torch.long and right["attention_mask"].dtype == torch.long
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'"):
        pad_sequences([[1]], 0, padding_side="middle")


def test_compress_positions_on_hand_written_masks():
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    assert compress_positions(right, 2).tolist() == [[2, 3], [4, 5], [0, 1]]
    left = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]])
    assert compress_positions(left, 3).tolist() == [[3, 4, 5], [3, 4, 5]]
    assert compress_positions(right, 0).shape == (3, 0)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_compress_positions_select_the_compress_tokens(tokenizer, padding_side):
    settings = EncoderSettings(num_compress_tokens=4)
    tokenizer.add_tokens(settings.compress_tokens, special_tokens=True)
    compress_ids = compress_token_ids(tokenizer, settings)
    assert len(set(compress_ids)) == 4
    batch = EncoderInputBuilder(tokenizer, settings)(TEXTS, INSTRUCTIONS, padding_side=padding_side)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert len(set(lengths)) == len(TEXTS), "rows must have different lengths"
    positions = compress_positions(batch["attention_mask"], 4)
    width = batch["input_ids"].shape[1]
    if padding_side == "right":
        expected = [[n - 4 + i for i in range(4)] for n in lengths]
    else:
        expected = [[width - 4 + i for i in range(4)]] * len(TEXTS)
    assert positions.tolist() == expected
    assert batch["input_ids"].gather(1, positions).tolist() == [compress_ids] * len(TEXTS)


# --------------------------------------------------------------------------------------------------------------
# EncoderInputBuilder
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def settings_with_tokens(tokenizer):
    settings = EncoderSettings(num_compress_tokens=5)
    tokenizer.add_tokens(settings.compress_tokens, special_tokens=True)
    return settings


def test_builder_default_layout(tokenizer, settings_with_tokens):
    builder = EncoderInputBuilder(tokenizer, settings_with_tokens)
    compress = compress_token_ids(tokenizer, settings_with_tokens)
    assert compress == [49152, 49153, 49154, 49155, 49156]  # appended after SmolLM2's 49152 tokens
    row = builder.build(["Hello world"], "Represent it")[0]
    assert row == [1, 19556, 905, 198, 38932, 357, *compress]  # <|im_start|> Hello ␣world \n Represent ␣it
    text, suffix = ids_of(tokenizer, "Hello world"), ids_of(tokenizer, "\nRepresent it")
    assert row == [tokenizer.bos_token_id, *text, *suffix, *compress]
    assert builder.truncations == {}


def test_builder_one_instruction_per_text_and_padding(tokenizer, settings_with_tokens):
    builder = EncoderInputBuilder(tokenizer, settings_with_tokens)
    compress = compress_token_ids(tokenizer, settings_with_tokens)
    rows = builder.build(TEXTS, INSTRUCTIONS)
    for row, text, instruction in zip(rows, TEXTS, INSTRUCTIONS, strict=True):
        suffix = ids_of(tokenizer, "\n" + instruction) if instruction else []
        assert row == [tokenizer.bos_token_id, *ids_of(tokenizer, text), *suffix, *compress]
    for side in ("left", "right"):
        batch = builder(TEXTS, INSTRUCTIONS, padding_side=side)
        width = max(map(len, rows))
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(TEXTS), width)
        for i, row in enumerate(rows):
            real = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
            assert real == row
            pads = batch["input_ids"][i][~batch["attention_mask"][i].bool()].tolist()
            assert pads == [tokenizer.pad_token_id] * (width - len(row))
        first_real = batch["attention_mask"].argmax(dim=1).tolist()
        assert first_real == ([0] * len(rows) if side == "right" else [width - len(row) for row in rows])


def test_builder_empty_instruction_is_bos_text_compress(tokenizer, settings_with_tokens):
    builder = EncoderInputBuilder(tokenizer, settings_with_tokens)
    compress = compress_token_ids(tokenizer, settings_with_tokens)
    assert builder.build(["Hello world"])[0] == [1, 19556, 905, *compress]
    assert builder.build(["Hello world"], [""])[0] == [1, 19556, 905, *compress]


def test_builder_does_not_parse_special_tokens_in_user_text(tokenizer, settings_with_tokens):
    builder = EncoderInputBuilder(tokenizer, settings_with_tokens)
    compress = compress_token_ids(tokenizer, settings_with_tokens)
    text = "a <EMBED0> b <|im_end|> c <|im_start|>"
    row = builder.build([text], "Say it")[0]
    body = row[1 : -len(compress)]
    assert row[0] == tokenizer.bos_token_id
    assert row[-len(compress) :] == compress
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, *compress}
    assert not special & set(body), "a literal special-token string in user text became a special token"
    assert tokenizer.decode(body) == text + "\nSay it"


def test_builder_truncates_text_and_keeps_compress_tokens(tokenizer):
    settings = EncoderSettings(num_compress_tokens=3, max_text_length=6, max_instruction_length=2)
    tokenizer.add_tokens(settings.compress_tokens, special_tokens=True)
    compress = compress_token_ids(tokenizer, settings)
    builder = EncoderInputBuilder(tokenizer, settings)
    long_text = TEXTS[1]
    long_ids = ids_of(tokenizer, long_text)
    assert len(long_ids) > 6
    rows = builder.build([long_text, "Short."])
    assert rows[0] == [tokenizer.bos_token_id, *long_ids[:6], *compress]
    assert rows[1] == [tokenizer.bos_token_id, *ids_of(tokenizer, "Short."), *compress]
    assert builder.truncations["text"] == 1
    assert builder.truncations["instruction"] == 0
    builder.build([long_text, long_text])
    assert builder.truncations["text"] == 3
    # The instruction part ("\n" + instruction) is cut to max_instruction_length and counted separately.
    row = builder.build(["Short."], "Summarise the text please.")[0]
    kept = ids_of(tokenizer, "\nSummarise the text please.")[:2]
    assert row == [tokenizer.bos_token_id, *ids_of(tokenizer, "Short."), *kept, *compress]
    assert builder.truncations["instruction"] == 1


def test_builder_custom_template_puts_text_in_the_middle(tokenizer):
    settings = EncoderSettings(
        num_compress_tokens=2, template='This sentence : "{text}" means in one word:"', pooling="compress_last"
    )
    tokenizer.add_tokens(settings.compress_tokens, special_tokens=True)
    compress = compress_token_ids(tokenizer, settings)
    row = EncoderInputBuilder(tokenizer, settings).build(["Hello world"])[0]
    prefix = [1348, 6330, 1577, 476]  # This ␣sentence ␣: ␣"
    suffix = [18, 1530, 281, 582, 2229, 25898]  # " ␣means ␣in ␣one ␣word :"
    assert row == [1, *prefix, 19556, 905, *suffix, *compress]

    prompt_eol = EncoderSettings(
        num_compress_tokens=0, template='This sentence : "{text}" means in one word:"', pooling="last", add_bos=False
    )
    assert EncoderInputBuilder(tokenizer, prompt_eol).build(["Hello world"])[0] == [*prefix, 19556, 905, *suffix]
    with pytest.raises(ValueError, match=r"has no \{instruction\} slot, but the instruction 'Summarize\.'"):
        EncoderInputBuilder(tokenizer, prompt_eol).build(["Hello world"], "Summarize.")


def test_builder_template_with_instruction_before_text(tokenizer):
    settings = EncoderSettings(num_compress_tokens=0, pooling="last", template="Instruct: {instruction}\nQuery: {text}")
    row = EncoderInputBuilder(tokenizer, settings).build(["Hello world"], "Find it")[0]
    assert row == [tokenizer.bos_token_id, *ids_of(tokenizer, "Instruct: Find it\nQuery: "), 19556, 905]


def test_builder_eos_pooling_appends_eos(tokenizer):
    settings = EncoderSettings(num_compress_tokens=0, pooling="eos")
    row = EncoderInputBuilder(tokenizer, settings).build(["Hello world"], "Represent it")[0]
    assert row == [1, 19556, 905, 198, 38932, 357, tokenizer.eos_token_id]


def test_builder_errors(tokenizer, settings_with_tokens):
    builder = EncoderInputBuilder(tokenizer, settings_with_tokens)
    with pytest.raises(ValueError, match="Got 2 texts but 3 instructions"):
        builder.build(["a", "b"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="Got 2 texts but 1 instructions"):
        builder(["a", "b"], ["x"])

    missing = EncoderSettings(num_compress_tokens=2, compress_token_format="<NEVER{index}>")
    with pytest.raises(ValueError, match=r"lacks the compress tokens \['<NEVER0>', '<NEVER1>'\].*add_compress_tokens"):
        EncoderInputBuilder(tokenizer, missing)

    no_bos = EncoderSettings(num_compress_tokens=5)
    tokenizer.bos_token = None
    assert tokenizer.bos_token_id is None
    with pytest.raises(ValueError, match="add_bos=True but the tokenizer has no BOS token"):
        EncoderInputBuilder(tokenizer, no_bos)
    # Without BOS the row starts with the text.
    no_bos = EncoderSettings(num_compress_tokens=5, add_bos=False)
    assert EncoderInputBuilder(tokenizer, no_bos).build(["Hello world"])[0][:2] == [19556, 905]

    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    with pytest.raises(ValueError, match="tokenizer has no pad token"):
        EncoderInputBuilder(tokenizer, no_bos)


# --------------------------------------------------------------------------------------------------------------
# add_compress_tokens
# --------------------------------------------------------------------------------------------------------------


def test_add_compress_tokens_mean_init_tied_and_untied(tokenizer):
    settings = EncoderSettings(num_compress_tokens=3)
    vocab = len(tokenizer)
    gpt2 = make_tiny_model("gpt2", tokenizer)
    copy_tokenizer = copy.deepcopy(tokenizer)
    llama = make_tiny_model("llama", copy_tokenizer)
    assert gpt2.config.tie_word_embeddings and not llama.config.tie_word_embeddings

    for model, tok in ((gpt2, tokenizer), (llama, copy_tokenizer)):
        tied = model.config.tie_word_embeddings
        original_in = model.get_input_embeddings().weight.detach().clone()
        original_out = model.get_output_embeddings().weight.detach().clone()
        ids = add_compress_tokens(model, tok, settings)
        assert ids == [vocab, vocab + 1, vocab + 2]
        assert tok.convert_tokens_to_ids(settings.compress_tokens) == ids
        assert len(tok) == vocab + 3
        weight_in = model.get_input_embeddings().weight
        weight_out = model.get_output_embeddings().weight
        assert weight_in.shape == weight_out.shape == (vocab + 3, 32)
        assert model.config.vocab_size == vocab + 3
        assert (weight_in.data_ptr() == weight_out.data_ptr()) == tied
        torch.testing.assert_close(weight_in[:vocab], original_in, rtol=0, atol=0)
        for i in ids:
            torch.testing.assert_close(weight_in[i], original_in.mean(dim=0), rtol=0, atol=1e-6)
            torch.testing.assert_close(weight_out[i], original_out.mean(dim=0), rtol=0, atol=1e-6)
        if not tied:
            torch.testing.assert_close(weight_out[:vocab], original_out, rtol=0, atol=0)
            assert not torch.allclose(original_in.mean(dim=0), original_out.mean(dim=0))


def test_add_compress_tokens_init_from_string(tokenizer):
    settings = EncoderSettings(num_compress_tokens=2)
    tok2 = copy.deepcopy(tokenizer)
    model = make_tiny_model("llama", tokenizer)
    assert not model.config.tie_word_embeddings
    quote = ids_of(tokenizer, '"')[-1]
    original_in = model.get_input_embeddings().weight.detach().clone()
    original_out = model.get_output_embeddings().weight.detach().clone()
    ids = add_compress_tokens(model, tokenizer, settings, init_from='"')
    for i in ids:
        torch.testing.assert_close(model.get_input_embeddings().weight[i], original_in[quote], rtol=0, atol=0)
        torch.testing.assert_close(model.get_output_embeddings().weight[i], original_out[quote], rtol=0, atol=0)
    # A multi-token string uses its last token (here a tied GPT-2).
    model2 = make_tiny_model("gpt2", tok2)
    last = ids_of(tok2, 'in one word: "')[-1]
    row = model2.get_input_embeddings().weight[last].detach().clone()
    ids2 = add_compress_tokens(model2, tok2, settings, init_from='in one word: "')
    torch.testing.assert_close(model2.get_input_embeddings().weight[ids2], row.expand(2, -1), rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 3])
def test_add_compress_tokens_init_from_string_any_k(tokenizer, k):
    """k = 1 once failed: writing one row copied from the same matrix is an overlapping in-place copy."""
    model = make_tiny_model("gpt2", tokenizer)
    source = model.get_input_embeddings().weight[ids_of(tokenizer, ':"')[-1]].detach().clone()
    ids = add_compress_tokens(model, tokenizer, EncoderSettings(num_compress_tokens=k), init_from=':"')
    torch.testing.assert_close(model.get_input_embeddings().weight[ids], source.expand(k, -1), rtol=0, atol=0)


def test_add_compress_tokens_is_idempotent(tokenizer):
    settings = EncoderSettings(num_compress_tokens=3)
    model = make_tiny_model("qwen2", tokenizer)
    ids = add_compress_tokens(model, tokenizer, settings)
    with torch.no_grad():  # mark the rows: a second call must neither grow the matrix nor re-initialise them
        model.get_input_embeddings().weight[ids] = 7.0
    size = model.get_input_embeddings().weight.shape
    assert add_compress_tokens(model, tokenizer, settings) == ids
    assert add_compress_tokens(model, tokenizer, settings, init_from='"') == ids
    assert model.get_input_embeddings().weight.shape == size
    assert len(tokenizer) == size[0]
    assert bool((model.get_input_embeddings().weight[ids] == 7.0).all())


def test_add_compress_tokens_uses_spare_rows(tokenizer):
    settings = EncoderSettings(num_compress_tokens=3)
    vocab = len(tokenizer)
    model = make_tiny_model("llama", tokenizer)
    model.resize_token_embeddings(vocab + 64, mean_resizing=False)  # e.g. a matrix padded to a multiple of 64
    original = model.get_input_embeddings().weight.detach().clone()
    ids = add_compress_tokens(model, tokenizer, settings)
    assert ids == [vocab, vocab + 1, vocab + 2]
    assert model.get_input_embeddings().weight.shape == (vocab + 64, 32)
    assert model.get_output_embeddings().weight.shape == (vocab + 64, 32)
    weight = model.get_input_embeddings().weight
    for i in ids:
        torch.testing.assert_close(weight[i], original[:vocab].mean(dim=0), rtol=0, atol=1e-6)
    torch.testing.assert_close(weight[vocab + 3 :], original[vocab + 3 :], rtol=0, atol=0)


def test_add_compress_tokens_errors(tokenizer):
    settings = EncoderSettings(num_compress_tokens=3)
    tokenizer.add_tokens(settings.compress_tokens[:2], special_tokens=True)
    with pytest.raises(ValueError, match="only some compress tokens"):
        add_compress_tokens(make_tiny_model("llama", tokenizer), tokenizer, settings)
    tokenizer.add_tokens(settings.compress_tokens[2:], special_tokens=True)
    model = make_tiny_model("llama", tokenizer)
    model.resize_token_embeddings(len(tokenizer) - 3)
    with pytest.raises(ValueError, match="no embedding rows"):
        add_compress_tokens(model, tokenizer, settings)


def test_add_compress_tokens_with_zero_tokens_is_a_no_op(tokenizer):
    settings = EncoderSettings(num_compress_tokens=0, pooling="last")
    model = make_tiny_model("llama", tokenizer)
    size = model.get_input_embeddings().weight.shape
    assert add_compress_tokens(model, tokenizer, settings) == []
    assert model.get_input_embeddings().weight.shape == size


# --------------------------------------------------------------------------------------------------------------
# encode: padding and batch invariance, pooling
# --------------------------------------------------------------------------------------------------------------


def test_backbone_of(tokenizer):
    llama = make_tiny_model("llama", tokenizer)
    gpt2 = make_tiny_model("gpt2", tokenizer)
    assert backbone_of(llama) is llama.model
    assert backbone_of(gpt2) is gpt2.transformer
    assert backbone_of(llama.model) is llama.model


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_encode_batch_rows_equal_single_rows(architecture, tokenizer, padding_side):
    settings = EncoderSettings(num_compress_tokens=3)
    model = tiny_encoder(architecture, tokenizer, settings)
    builder = EncoderInputBuilder(tokenizer, settings)
    with torch.no_grad():
        batch = builder(TEXTS, INSTRUCTIONS, padding_side=padding_side)
        assert len(set(batch["attention_mask"].sum(dim=1).tolist())) == len(TEXTS)
        out = encode(model, batch["input_ids"], batch["attention_mask"], settings)
        assert out.embedding.shape == (len(TEXTS), 32)
        assert out.compress_states.shape == (len(TEXTS), 3, 32)
        assert torch.isfinite(out.embedding).all() and torch.isfinite(out.compress_states).all()
        torch.testing.assert_close(out.embedding.norm(dim=-1), torch.ones(len(TEXTS)))
        torch.testing.assert_close(out.embedding, F.normalize(out.compress_states.mean(dim=1), dim=-1))
        for i, (text, instruction) in enumerate(zip(TEXTS, INSTRUCTIONS, strict=True)):
            single = builder([text], [instruction])
            alone = encode(model, single["input_ids"], single["attention_mask"], settings)
            torch.testing.assert_close(out.embedding[i], alone.embedding[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(out.compress_states[i], alone.compress_states[0], rtol=0, atol=1e-5)
    # The rows are genuinely different (so equality above is not trivial).
    assert torch.cdist(out.embedding, out.embedding).fill_diagonal_(1).min() > 1e-3


def reference_pool(model, ids, settings):
    """Pool one unpadded row by hand from its last-layer states."""
    ids = torch.tensor([ids])
    hidden = backbone_of(model)(input_ids=ids).last_hidden_state[0]
    k = settings.num_compress_tokens
    if settings.pooling == "mean":
        pooled = hidden.mean(dim=0)
    elif settings.pooling == "compress_mean":
        pooled = hidden[-k:].mean(dim=0)
    else:  # last, compress_last, eos
        pooled = hidden[-1]
    return F.normalize(pooled, dim=-1), (hidden[-k:] if k else None)


@pytest.mark.parametrize(
    ("pooling", "k"), [("mean", 3), ("mean", 0), ("last", 0), ("compress_last", 3), ("compress_mean", 2), ("eos", 0)]
)
def test_pooling_methods_are_padding_invariant(architecture, tokenizer, pooling, k):
    settings = EncoderSettings(num_compress_tokens=k, pooling=pooling)
    model = make_tiny_model(architecture, tokenizer)
    if k:
        add_compress_tokens(model, tokenizer, settings)
    builder = EncoderInputBuilder(tokenizer, settings)
    rows = builder.build(TEXTS, INSTRUCTIONS)
    if pooling == "eos":
        assert all(row[-1] == tokenizer.eos_token_id for row in rows)
    with torch.no_grad():
        expected = [reference_pool(model, row, settings) for row in rows]
        for side in ("left", "right"):
            batch = builder(TEXTS, INSTRUCTIONS, padding_side=side)
            out = encode(model, batch["input_ids"], batch["attention_mask"], settings)
            assert torch.isfinite(out.embedding).all()
            for i, (embedding, states) in enumerate(expected):
                torch.testing.assert_close(out.embedding[i], embedding, rtol=0, atol=1e-5)
                if k:
                    torch.testing.assert_close(out.compress_states[i], states, rtol=0, atol=1e-5)
            if not k:
                assert out.compress_states is None


def test_encode_without_normalization_and_short_rows(tokenizer):
    settings = EncoderSettings(num_compress_tokens=2, pooling="compress_last", normalize=False)
    model = tiny_encoder("llama", tokenizer, settings)
    batch = EncoderInputBuilder(tokenizer, settings)(TEXTS[:2])
    with torch.no_grad():
        out = encode(model, batch["input_ids"], batch["attention_mask"], settings)
        hidden = last_hidden_states(model, batch["attention_mask"], input_ids=batch["input_ids"])
    torch.testing.assert_close(out.embedding, out.compress_states[:, -1])
    lengths = batch["attention_mask"].sum(dim=1)
    torch.testing.assert_close(out.embedding, hidden[torch.arange(2), lengths - 1])
    assert not torch.allclose(out.embedding.norm(dim=-1), torch.ones(2))
    short = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.tensor([[0, 0, 1]])}
    with pytest.raises(ValueError, match="shorter than the compress tokens"):
        encode(model, short["input_ids"], short["attention_mask"], settings)
    # With k = 0 an empty row (empty text, no BOS, no template text) has no token to pool.
    prompt = EncoderSettings(num_compress_tokens=0, pooling="last", add_bos=False)
    empty = EncoderInputBuilder(tokenizer, prompt)(["", "Hello"])
    assert empty["attention_mask"].sum(dim=1).tolist() == [0, 1]
    with pytest.raises(ValueError, match="empty"):
        encode(model, empty["input_ids"], empty["attention_mask"], prompt)


# --------------------------------------------------------------------------------------------------------------
# conditional_log_probs
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ARCHITECTURES + LOGIT_POSTPROCESSING_ARCHITECTURES)
def test_conditional_log_probs_matches_independent_computation(architecture, tokenizer):
    decoder = make_tiny_model(architecture, tokenizer, seed=1)
    rows, targets = target_batch(tokenizer)
    k = 3
    prefix = random_prefix(len(rows), k, 32)
    with torch.no_grad():
        out = conditional_log_probs(decoder, prefix, targets["input_ids"], targets["attention_mask"])
        assert out.token_log_probs.shape == targets["input_ids"].shape
        assert out.log_probs is None
        for b, row in enumerate(rows):
            embeds = decoder.get_input_embeddings()(torch.tensor(row))
            inputs_embeds = torch.cat([prefix[b], embeds])[None]
            logits = decoder(inputs_embeds=inputs_embeds).logits[0].double()
            expected = []
            for t, token in enumerate(row):
                expected.append(logits[k - 1 + t].log_softmax(dim=-1)[token].item())
            got = out.token_log_probs[b]
            assert got[: len(row)].tolist() == pytest.approx(expected, abs=1e-5)
            assert got[len(row) :].tolist() == [0.0] * (got.shape[0] - len(row))
            assert out.sum[b].item() == pytest.approx(sum(expected), abs=1e-4)
            assert out.mean[b].item() == pytest.approx(sum(expected) / len(row), abs=1e-5)
    assert (out.token_log_probs[targets["attention_mask"].bool()] < 0).all()


def test_conditional_log_probs_with_decoder_prompt_matches_independent_computation(tokenizer):
    """With a decoder prompt the decoder reads [embed(before); prefix; embed(after); target]: checked against a
    float64 loop over inputs_embeds built by hand, one row at a time (no padding)."""
    decoder = make_tiny_model("llama", tokenizer, seed=6)
    rows, targets = target_batch(tokenizer)
    k = 2
    prefix = random_prefix(len(rows), k, 32, seed=7)
    prompt = DecoderPrompt(before=(5, 9, 11), after=(12, 4))
    with torch.no_grad():
        out = conditional_log_probs(decoder, prefix, targets["input_ids"], targets["attention_mask"], prompt=prompt)
        plain = conditional_log_probs(decoder, prefix, targets["input_ids"], targets["attention_mask"])
        table = decoder.get_input_embeddings()
        for b, row in enumerate(rows):
            pieces = [table(torch.tensor(prompt.before)), prefix[b], table(torch.tensor(prompt.after))]
            inputs_embeds = torch.cat([*pieces, table(torch.tensor(row))])[None]
            logits = decoder(inputs_embeds=inputs_embeds).logits[0].double()
            start = len(prompt.before) + k + len(prompt.after) - 1
            expected = [logits[start + t].log_softmax(dim=-1)[token].item() for t, token in enumerate(row)]
            assert out.token_log_probs[b, : len(row)].tolist() == pytest.approx(expected, abs=1e-5)
    assert (out.sum - plain.sum).abs().max() > 1e-3  # the prompt is really read


def test_decoder_prompt_from_template(tokenizer):
    template = "Words: {states} Sentence:"
    prompt = DecoderPrompt.from_template(template, tokenizer)
    assert prompt.before == tuple(tokenizer("Words: ", add_special_tokens=False)["input_ids"])
    assert prompt.after == tuple(tokenizer(" Sentence:", add_special_tokens=False)["input_ids"])
    assert DecoderPrompt.from_template(None, tokenizer) == DecoderPrompt()
    assert DecoderPrompt.from_template("{states}", tokenizer) == DecoderPrompt()
    for bad in ("no placeholder", "{states} twice {states}"):
        with pytest.raises(ValueError, match=r"decoder_template must contain \{states\} exactly once"):
            DecoderPrompt.from_template(bad, tokenizer)
        with pytest.raises(ValueError, match="decoder_template"):
            EncoderSettings(decoder_template=bad)


@pytest.mark.parametrize("architecture", LOGIT_POSTPROCESSING_ARCHITECTURES)
def test_post_processed_logits_differ_from_the_plain_lm_head(architecture, tokenizer):
    """Scoring with the model's own logits matters: these models' logits are not lm_head(hidden)."""
    decoder = make_tiny_model(architecture, tokenizer, seed=1)
    input_ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        outputs = decoder(input_ids=input_ids, output_hidden_states=True)
        plain = decoder.get_output_embeddings()(outputs.hidden_states[-1])
    assert (plain - outputs.logits).abs().max() > 0.1


def test_conditional_log_probs_right_padding_invariance_and_mean(tokenizer):
    decoder = make_tiny_model("llama", tokenizer, seed=2)
    rows, targets = target_batch(tokenizer)
    prefix = random_prefix(len(rows), 4, 32, seed=3)
    with torch.no_grad():
        out = conditional_log_probs(decoder, prefix, targets["input_ids"], targets["attention_mask"])
        longest = max(len(row) for row in rows)
        wider = pad_sequences([*rows, [5] * (longest + 6)], tokenizer.pad_token_id)
        wide_prefix = torch.cat([prefix, random_prefix(1, 4, 32, seed=4)])
        wide = conditional_log_probs(decoder, wide_prefix, wider["input_ids"], wider["attention_mask"])
        for b, row in enumerate(rows):
            alone = conditional_log_probs(
                decoder, prefix[b : b + 1], torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long)
            )
            torch.testing.assert_close(out.sum[b], alone.sum[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(wide.sum[b], alone.sum[0], rtol=0, atol=1e-5)
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.float32)
    assert out.target_mask.sum(dim=1).tolist() == lengths.tolist()
    torch.testing.assert_close(out.mean, out.sum / lengths)
    torch.testing.assert_close(out.sum, out.token_log_probs.sum(dim=1))
    # Different prefixes give different likelihoods: the prefix is really read.
    with torch.no_grad():
        other = conditional_log_probs(decoder, prefix.flip(0), targets["input_ids"], targets["attention_mask"])
    assert (other.sum - out.sum).abs().max() > 1e-3


def test_conditional_log_probs_distributions(tokenizer):
    decoder = make_tiny_model("qwen2", tokenizer, seed=5)
    rows, targets = target_batch(tokenizer)
    prefix = random_prefix(len(rows), 2, 32, seed=6)
    with torch.no_grad():
        plain = conditional_log_probs(decoder, prefix, targets["input_ids"], targets["attention_mask"])
        full = conditional_log_probs(
            decoder, prefix, targets["input_ids"], targets["attention_mask"], return_distributions=True
        )
    batch, length = targets["input_ids"].shape
    assert full.log_probs.shape == (batch, length, len(tokenizer))
    assert full.log_probs.dtype == torch.float32
    torch.testing.assert_close(full.token_log_probs, plain.token_log_probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(full.log_probs.exp().sum(dim=-1), torch.ones(batch, length), rtol=0, atol=1e-5)
    gathered = full.log_probs.gather(-1, targets["input_ids"][..., None]).squeeze(-1)
    mask = targets["attention_mask"].bool()
    torch.testing.assert_close(gathered[mask], full.token_log_probs[mask], rtol=0, atol=1e-6)


def test_conditional_log_probs_rejects_mismatched_rows(tokenizer):
    decoder = make_tiny_model("llama", tokenizer)
    _, targets = target_batch(tokenizer)
    with pytest.raises(ValueError, match="prefix has 2 rows but target_ids has 3"):
        conditional_log_probs(decoder, torch.zeros(2, 3, 32), targets["input_ids"], targets["attention_mask"])


# --------------------------------------------------------------------------------------------------------------
# Frozen roles: gradients and PEFT
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_gradients_reach_only_the_encoder(architecture, tokenizer):
    settings = EncoderSettings(num_compress_tokens=3)
    encoder = tiny_encoder(architecture, tokenizer, settings)
    compress = compress_token_ids(tokenizer, settings)
    frozen = original_decoder(encoder, settings)
    assert not frozen.shares_policy_weights
    batch = EncoderInputBuilder(tokenizer, settings)(TEXTS[:3], INSTRUCTIONS[:3])
    _, targets = target_batch(tokenizer)
    with frozen() as decoder:
        assert decoder is not encoder and not decoder.training
        encoder_ptrs = {p.data_ptr() for p in encoder.parameters()}
        assert not encoder_ptrs & {p.data_ptr() for p in decoder.parameters()}
        decoder_before = {name: p.detach().clone() for name, p in decoder.named_parameters()}
        out = encode(encoder, batch["input_ids"], batch["attention_mask"], settings)
        lp = conditional_log_probs(decoder, out.compress_states, targets["input_ids"], targets["attention_mask"])
        loss = -lp.sum.mean()
        loss.backward()
        for name, p in decoder.named_parameters():
            assert not p.requires_grad, name
            assert p.grad is None, name
    backbone = backbone_of(encoder)
    for name, p in backbone.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    embedding_grad = encoder.get_input_embeddings().weight.grad
    assert (embedding_grad[compress].abs().sum(dim=-1) > 0).all()
    unused = torch.ones(embedding_grad.shape[0], dtype=torch.bool)
    unused[batch["input_ids"].unique()] = False
    assert embedding_grad[unused].abs().sum() == 0
    # A training step moves the encoder but not the frozen decoder.
    torch.optim.SGD(encoder.parameters(), lr=1.0).step()
    with frozen() as decoder:
        for name, p in decoder.named_parameters():
            assert torch.equal(p, decoder_before[name]), name
    with frozen() as decoder:
        original_rows = decoder.get_input_embeddings().weight[compress]
    assert not torch.equal(encoder.get_input_embeddings().weight[compress], original_rows)


def test_frozen_decoder_with_explicit_decoder(tokenizer):
    encoder = make_tiny_model("llama", tokenizer)
    other = make_tiny_model("llama", tokenizer, seed=1).train()
    frozen = FrozenRole(encoder, other)
    assert not frozen.shares_policy_weights
    assert not other.training
    assert not any(p.requires_grad for p in other.parameters())
    assert all(p.requires_grad for p in encoder.parameters())
    with frozen() as decoder:
        assert decoder is other
    clone = frozen_copy(encoder)
    assert clone is not encoder and not clone.training
    assert all(torch.equal(a, b) for a, b in zip(clone.parameters(), encoder.parameters(), strict=True))


def test_peft_decoder_with_adapters_disabled_equals_frozen_copy(tokenizer):
    peft = pytest.importorskip("peft")
    settings = EncoderSettings(num_compress_tokens=3)
    model = tiny_encoder("llama", tokenizer, settings)
    reference = frozen_copy(model)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = peft.get_peft_model(model, config)
    frozen = FrozenRole(peft_model)
    assert frozen.shares_policy_weights
    assert frozen.model is None

    rows, targets = target_batch(tokenizer)
    prefix = random_prefix(len(rows), 3, 32, seed=7)
    args = (prefix, targets["input_ids"], targets["attention_mask"])
    batch = EncoderInputBuilder(tokenizer, settings)(TEXTS[:3], INSTRUCTIONS[:3], padding_side="left")
    enc_args = (batch["input_ids"], batch["attention_mask"], settings)
    with torch.no_grad():
        expected = conditional_log_probs(reference, *args)
        expected_encoding = encode(reference, *enc_args)
        with frozen() as decoder:
            disabled = conditional_log_probs(decoder, *args)
            disabled_encoding = encode(decoder, *enc_args)
        adapted = conditional_log_probs(peft_model, *args)
        adapted_encoding = encode(peft_model, *enc_args)

    torch.testing.assert_close(disabled.token_log_probs, expected.token_log_probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(disabled_encoding.compress_states, expected_encoding.compress_states, rtol=0, atol=1e-6)
    # With the adapters on (after the context exits) the numbers differ, so the comparison above can fail.
    assert (adapted.token_log_probs - expected.token_log_probs).abs().max() > 1e-3
    assert (adapted_encoding.compress_states - expected_encoding.compress_states).abs().max() > 1e-3


def test_peft_decoder_is_deterministic_while_the_encoder_trains(tokenizer):
    peft = pytest.importorskip("peft")
    model = make_tiny_model("gpt2", tokenizer)  # GPT-2 has dropout 0.1 (Llama and Qwen2 default to 0)
    assert model.config.resid_pdrop > 0
    reference = frozen_copy(model)
    config = peft.LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    peft_model = peft.get_peft_model(model, config).train()  # as inside a Trainer step
    frozen = FrozenRole(peft_model)
    rows, targets = target_batch(tokenizer)
    args = (random_prefix(len(rows), 3, 32, seed=8), targets["input_ids"], targets["attention_mask"])
    torch.manual_seed(0)
    with torch.no_grad():
        expected = conditional_log_probs(reference, *args)
        with frozen() as decoder:
            first = conditional_log_probs(decoder, *args)
            second = conditional_log_probs(decoder, *args)
    assert peft_model.training, "the encoder's train mode must be restored after the decoder pass"
    torch.testing.assert_close(first.token_log_probs, second.token_log_probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(first.token_log_probs, expected.token_log_probs, rtol=0, atol=1e-6)
