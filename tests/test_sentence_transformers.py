"""sentence-transformers integration: export, loading with the flag and the helper, prompts, baselines, PEFT."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from helpers import ARCHITECTURES, make_tiny_model
from peft import LoraConfig, get_peft_model
from sentence_transformers import SentenceTransformer

import autoreg_embed
from autoreg_embed import (
    CDAConfig,
    CDATrainer,
    CompressionConfig,
    CompressionTrainer,
    EncoderInputBuilder,
    EncoderSettings,
    add_compress_tokens,
    encode,
    export_sentence_transformer,
)
from autoreg_embed.data.cda_collator import INSTRUCTION_PRESETS
from autoreg_embed.modeling.inputs import compress_token_ids
from autoreg_embed.sentence_transformers import (
    DEFAULT_PROMPTS,
    PROMPTEOL_INSTRUCTION,
    PROMPTEOL_LAYOUT,
    PROMPTEOL_TEMPLATE,
    AutoRegEmbedModule,
    baseline,
    prompts_from_instructions,
)
from autoreg_embed.sentence_transformers.prompts import check_prompts
from autoreg_embed.trainers.base_trainer import prepare_encoder

TEXTS = ["A cat sits on the mat.", "Stock markets fell sharply on Monday after the announcement.", "", "Hi"]
PROMPTS = {"query": "Find the text that answers this question:", "document": "This sentence means in one word: “"}
ATOL = 1e-5


def in_memory(model, tokenizer, settings, texts, instruction) -> torch.Tensor:
    """The reference: the in-memory encoder on inputs from EncoderInputBuilder."""
    with torch.no_grad():
        return encode(
            model, **EncoderInputBuilder(tokenizer, settings)(texts, instruction), settings=settings
        ).embedding


def assert_close(actual, expected, atol: float = ATOL) -> None:
    torch.testing.assert_close(torch.as_tensor(actual).float(), expected.float(), atol=atol, rtol=0)


def load_st(path: Path, loader: str, **kwargs) -> SentenceTransformer:
    if loader == "flag":
        return SentenceTransformer(str(path), trust_remote_code=True, device="cpu", **kwargs)
    return autoreg_embed.load(path, device="cpu", **kwargs)


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def encoder(_session_tokenizer):
    """A tiny random llama with k = 3 compress tokens, its tokenizer and settings."""
    tokenizer = copy.deepcopy(_session_tokenizer)
    model = make_tiny_model("llama", tokenizer)
    settings = EncoderSettings(num_compress_tokens=3)
    add_compress_tokens(model, tokenizer, settings)
    return model, tokenizer, settings


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory) -> Path:
    model, tokenizer, settings = encoder
    return export_sentence_transformer(
        model,
        tokenizer,
        settings,
        tmp_path_factory.mktemp("exported"),
        prompts=PROMPTS,
        training_stages=["CompressionTrainer"],
        eval_results={"sts_spearman": 0.4321},
    )


@pytest.mark.parametrize("loader", ["flag", "helper"])
def test_export_round_trip_matches_in_memory_encoder(encoder, exported, loader):
    model, tokenizer, settings = encoder
    st = load_st(exported, loader)
    assert isinstance(st[0], AutoRegEmbedModule)
    assert st.similarity_fn_name == "cosine"
    assert st.get_embedding_dimension() == model.config.hidden_size
    assert st.default_prompt_name == "document"
    expected = {name: in_memory(model, tokenizer, settings, TEXTS, prompt) for name, prompt in PROMPTS.items()}
    for name in PROMPTS:
        for batch_size in (1, 4):
            got = st.encode(TEXTS, prompt_name=name, batch_size=batch_size, convert_to_tensor=True)
            assert_close(got, expected[name])
    assert_close(st.encode_query(TEXTS, convert_to_tensor=True), expected["query"])
    assert_close(st.encode_document(TEXTS, convert_to_tensor=True), expected["document"])
    assert_close(st.encode(TEXTS, convert_to_tensor=True), expected["document"])  # the default prompt name
    custom = in_memory(model, tokenizer, settings, TEXTS, "Summarize:")
    assert_close(st.encode(TEXTS, prompt="Summarize:", convert_to_tensor=True), custom)
    st.tokenizer.padding_side = "left"
    assert st[0].preprocess(TEXTS)["attention_mask"][:, 0].tolist() == [0, 1, 0, 0]
    assert_close(st.encode_query(TEXTS, batch_size=4, convert_to_tensor=True), expected["query"])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_round_trip_across_architectures(tokenizer, tmp_path, architecture):
    model = make_tiny_model(architecture, tokenizer)
    settings = EncoderSettings(num_compress_tokens=2)
    add_compress_tokens(model, tokenizer, settings)
    export_sentence_transformer(model, tokenizer, settings, tmp_path)
    st = load_st(tmp_path, "flag")
    assert st.prompts["query"] == DEFAULT_PROMPTS["query"]
    expected = in_memory(model, tokenizer, settings, TEXTS, DEFAULT_PROMPTS["query"])
    assert_close(st.encode_query(TEXTS, batch_size=3, convert_to_tensor=True), expected)


def test_prompts_fill_the_instruction_slot_and_change_the_embedding(encoder, exported, monkeypatch):
    _, tokenizer, settings = encoder
    st = load_st(exported, "helper")
    module = st[0]
    seen = []
    original = module.preprocess

    def spy(inputs, prompt=None, **kwargs):
        features = original(inputs, prompt=prompt, **kwargs)
        seen.append((prompt, features["input_ids"][0].tolist()))
        return features

    monkeypatch.setattr(module, "preprocess", spy)
    query = st.encode_query(["Some text"], convert_to_tensor=True)
    document = st.encode_document(["Some text"], convert_to_tensor=True)
    text_ids = token_ids(tokenizer, "Some text")
    compress = compress_token_ids(tokenizer, settings)
    for (prompt, ids), name in zip(seen, ("query", "document"), strict=True):
        assert prompt == PROMPTS[name]
        # [BOS] + text + "\n" + instruction + compress tokens: the prompt comes after the text, not before it.
        assert ids == [tokenizer.bos_token_id, *text_ids, *token_ids(tokenizer, "\n" + PROMPTS[name]), *compress]
    assert seen[0][1] != seen[1][1]
    assert (query - document).abs().max() > 1e-3


def test_loads_in_a_clean_subprocess(encoder, exported, tmp_path):
    model, tokenizer, settings = encoder
    code = textwrap.dedent(
        f"""
        import json, sys
        import autoreg_embed
        from sentence_transformers import SentenceTransformer

        path = sys.argv[1]
        flag = SentenceTransformer(path, trust_remote_code=True, device="cpu").encode_query({TEXTS!r})
        helper = autoreg_embed.load(path, device="cpu").encode_query({TEXTS!r})
        print(json.dumps({{"flag": flag.tolist(), "helper": helper.tolist(), "package": autoreg_embed.__file__}}))
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, str(exported)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    expected = in_memory(model, tokenizer, settings, TEXTS, PROMPTS["query"])
    assert_close(torch.tensor(output["flag"]), expected)
    assert_close(torch.tensor(output["helper"]), expected)


@pytest.fixture(scope="module")
def base_model_dir(_session_tokenizer, tmp_path_factory) -> Path:
    """A tiny random llama saved with its tokenizer, standing in for any causal LM."""
    directory = tmp_path_factory.mktemp("base")
    make_tiny_model("llama", _session_tokenizer).save_pretrained(directory)
    _session_tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("pooling", ["last", "mean", "eos"])
def test_baseline_poolings_match_direct_hidden_states(base_model_dir, pooling):
    st = baseline(base_model_dir, pooling, PROMPTEOL_TEMPLATE, device="cpu")
    module = st[0]
    tokenizer, body = module.tokenizer, module.model.model
    assert module.settings.num_compress_tokens == 0
    assert "<EMBED0>" not in tokenizer.get_vocab()
    prefix, suffix = PROMPTEOL_TEMPLATE.split("{text}")
    expected = []
    for text in TEXTS:
        ids = [tokenizer.bos_token_id, *token_ids(tokenizer, prefix), *token_ids(tokenizer, text)]
        ids += token_ids(tokenizer, suffix) + ([tokenizer.eos_token_id] if pooling == "eos" else [])
        with torch.no_grad():
            hidden = body(input_ids=torch.tensor([ids])).last_hidden_state[0]
        expected.append(hidden.mean(dim=0) if pooling == "mean" else hidden[-1])
    assert_close(st.encode(TEXTS, batch_size=4, convert_to_tensor=True), F.normalize(torch.stack(expected), dim=-1))
    with pytest.raises(ValueError, match="no \\{instruction\\} slot"):
        st.encode(TEXTS, prompt="Summarize:")


def test_peft_export_merged_and_adapter_match_unmerged_model(tokenizer, base_model_dir, tmp_path):
    model = make_tiny_model("llama", tokenizer)
    settings = EncoderSettings(num_compress_tokens=2, base_model_name_or_path=str(base_model_dir))
    ids = add_compress_tokens(model, tokenizer, settings)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, trainable_token_indices=ids)
    peft_model = get_peft_model(model, config).eval()
    with torch.no_grad():  # trained compress-token rows, so that the adapter carries them
        for name, parameter in peft_model.named_parameters():
            if "trainable_tokens_delta" in name:
                parameter.add_(torch.randn_like(parameter))
    expected = in_memory(peft_model, tokenizer, settings, TEXTS, PROMPTS["document"])

    merged_dir = export_sentence_transformer(peft_model, tokenizer, settings, tmp_path / "merged", prompts=PROMPTS)
    assert not (merged_dir / "adapter_config.json").exists()
    assert_close(load_st(merged_dir, "flag").encode_document(TEXTS, convert_to_tensor=True), expected)
    assert_close(in_memory(peft_model, tokenizer, settings, TEXTS, PROMPTS["document"]), expected, atol=0)

    adapter_dir = tmp_path / "adapter"
    export_sentence_transformer(peft_model, tokenizer, settings, adapter_dir, prompts=PROMPTS, merge_adapter=False)
    assert (adapter_dir / "adapter_config.json").exists()
    assert_close(load_st(adapter_dir, "helper").encode_document(TEXTS, convert_to_tensor=True), expected)


def test_truncation_keeps_instruction_and_compress_tokens(encoder, exported, tmp_path):
    model, tokenizer, settings = encoder
    st = load_st(exported, "helper")
    st.max_seq_length = 4
    assert st[0].settings.max_text_length == 4
    text = TEXTS[1]
    ids = st[0].preprocess([text, ""], prompt=PROMPTS["query"])["input_ids"].tolist()
    tail = [*token_ids(tokenizer, "\n" + PROMPTS["query"]), *compress_token_ids(tokenizer, settings)]
    assert ids[0] == [tokenizer.bos_token_id, *token_ids(tokenizer, text)[:4], *tail]
    assert ids[1][: 1 + len(tail)] == [tokenizer.bos_token_id, *tail]  # empty text: BOS + instruction + compress
    assert st[0].builder.truncations["text"] == 1
    short = replace(settings, max_text_length=4)
    assert_close(
        st.encode_query(TEXTS, convert_to_tensor=True), in_memory(model, tokenizer, short, TEXTS, PROMPTS["query"])
    )
    st.save(str(tmp_path))
    assert load_st(tmp_path, "flag").max_seq_length == 4


@pytest.mark.parametrize(("loader", "key"), [("flag", "dtype"), ("helper", "torch_dtype")])
def test_bfloat16_model_kwargs(exported, loader, key):
    st = load_st(exported, loader, model_kwargs={key: torch.bfloat16})
    assert st.dtype == torch.bfloat16
    full = load_st(exported, loader).encode_document(TEXTS, convert_to_tensor=True)
    half = st.encode_document(TEXTS, convert_to_tensor=True)
    assert F.cosine_similarity(half.float(), full, dim=-1).min() > 0.99


def test_model_card_records_settings_prompts_and_results(exported):
    card = (exported / "README.md").read_text(encoding="utf-8")
    for expected in ("1. CompressionTrainer", "compress tokens k | 3", '"compress_mean"', "sts_spearman | 0.4321"):
        assert expected in card
    assert json.dumps(PROMPTS["query"], ensure_ascii=False) in card
    config = json.loads((exported / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    assert config["prompts"] == PROMPTS
    assert (config["default_prompt_name"], config["similarity_fn_name"]) == ("document", "cosine")


def test_helper_refuses_other_module_stacks(exported, tmp_path):
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "evil.Module"}]))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        autoreg_embed.load(tmp_path)


def test_compression_trainer_save_loads_as_sentence_transformer(tokenizer, tmp_path):
    rows = [{"context": f"Fact number {i}.", "instruction": "Repeat it.", "target": f"Fact {i}."} for i in range(4)]
    args = CompressionConfig(
        output_dir=str(tmp_path / "run"),
        num_compress_tokens=2,
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=1e-3,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = CompressionTrainer(
        model=make_tiny_model("llama", tokenizer),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "stage1"))
    model, settings = trainer.model.eval(), trainer.encoder_settings
    expected = in_memory(model, tokenizer, settings, TEXTS, DEFAULT_PROMPTS["document"])
    for loader in ("flag", "helper"):
        st = load_st(tmp_path / "stage1", loader)
        assert_close(st.encode(TEXTS, batch_size=1, convert_to_tensor=True), expected)
        assert_close(st.encode(TEXTS, batch_size=4, convert_to_tensor=True), expected)
    assert "1. CompressionTrainer" in (tmp_path / "stage1" / "README.md").read_text(encoding="utf-8")

    args.output_dir = str(tmp_path / "run2")
    # The original was an in-memory model without a name: continuing from the trained checkpoint needs it given.
    with pytest.raises(ValueError, match=r"no longer the original LLM's.*decoder="):
        CompressionTrainer(model=str(tmp_path / "stage1"), args=args, train_dataset=Dataset.from_list(rows))
    again = CompressionTrainer(
        model=str(tmp_path / "stage1"),
        args=args,
        train_dataset=Dataset.from_list(rows),
        decoder=make_tiny_model("llama", tokenizer),
    )
    again.save_model(str(tmp_path / "stage1b"))
    card = (tmp_path / "stage1b" / "README.md").read_text(encoding="utf-8")
    assert "1. CompressionTrainer\n2. CompressionTrainer" in card


def test_cda_trainer_save_stores_its_instructions_as_prompts(tokenizer, tmp_path):
    args = CDAConfig(
        output_dir=str(tmp_path / "run"), num_compress_tokens=2, instructions="retrieval", report_to="none"
    )
    trainer = CDATrainer(model=make_tiny_model("llama", tokenizer), args=args, processing_class=tokenizer)
    trainer.save_model(str(tmp_path / "stage2"))
    instructions = INSTRUCTION_PRESETS["retrieval"]
    st = load_st(tmp_path / "stage2", "helper")
    assert st.prompts == {"query": instructions["next"], "document": instructions["self"]}
    expected = in_memory(trainer.model.eval(), tokenizer, trainer.encoder_settings, TEXTS, instructions["next"])
    assert_close(st.encode_query(TEXTS, convert_to_tensor=True), expected)
    assert "1. CDATrainer" in (tmp_path / "stage2" / "README.md").read_text(encoding="utf-8")


def test_an_empty_input_row_is_an_error_not_a_pad_state(base_model_dir):
    st = baseline(base_model_dir, "last", add_bos=False, device="cpu")  # template "{text}": "" has no tokens at all
    with pytest.raises(ValueError, match="empty"):
        st.encode([""])


def test_prompteol_layout_with_one_compress_token_is_the_prompteol_baseline_at_step_0(base_model_dir, tmp_path):
    instructions = {f"instruction_{key}": PROMPTEOL_INSTRUCTION for key in ("next", "self", "prev")}
    config = CDAConfig(
        output_dir=str(tmp_path), report_to="none", num_compress_tokens=1, **PROMPTEOL_LAYOUT, **instructions
    )
    model, tokenizer, settings = prepare_encoder(str(base_model_dir), None, config)
    prompts = prompts_from_instructions(config.instruction_texts())
    export_sentence_transformer(model, tokenizer, settings, tmp_path / "step0", prompts=prompts)
    texts = ["A man is playing a guitar.", 'She said "hi".', "x"]
    untrained = autoreg_embed.load(tmp_path / "step0", device="cpu").encode(texts, convert_to_tensor=True)
    prompt_eol = baseline(base_model_dir, "last", PROMPTEOL_TEMPLATE, device="cpu").encode(
        texts, convert_to_tensor=True
    )
    torch.testing.assert_close(untrained, prompt_eol, rtol=0, atol=1e-6)


def test_export_refuses_prompts_for_a_template_without_instruction_slot():
    settings = EncoderSettings(num_compress_tokens=0, pooling="last", template=PROMPTEOL_TEMPLATE)
    with pytest.raises(ValueError, match=r"has no \{instruction\} slot, but the instruction 'Find it:'"):
        check_prompts(settings, {"query": "Find it:"}, "query")
    assert check_prompts(settings, {"query": ""}, "query") == ({"query": ""}, "query")
