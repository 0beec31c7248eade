"""Stage 1 (information compression): CompressionTrainer's loss, gradients, training loop, saving and errors."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from datasets import Dataset
from helpers import SHARED_DATA, make_config, make_tiny_model, make_trainer, requires_shared_data
from peft import LoraConfig
from transformers import TrainerCallback

from autoreg_embed import (
    CDAConfig,
    CDATrainer,
    CompressionConfig,
    CompressionTrainer,
    EncoderInputBuilder,
    encode,
    load_encoder,
)
from autoreg_embed.data import DataValidationError, load_rows
from autoreg_embed.modeling import DecoderPrompt
from autoreg_embed.modeling.settings import SETTINGS_FILE

ROWS = [
    {"context": "The cat sat on the mat.", "instruction": "Where did the cat sit?", "target": "On the mat."},
    {"context": "Paris is the capital of France.", "instruction": "", "target": "Paris"},
    {"context": "Water boils at 100 degrees Celsius at sea level.", "instruction": "Boiling point?", "target": "100 C"},
    {"context": "Alice gave Bob a red book.", "instruction": "Who got the book?", "target": "Bob got a red book."},
    {"context": "The meeting moved to Tuesday.", "instruction": "When?", "target": "Tuesday"},
    {"context": "Seven plus five equals twelve.", "instruction": "Sum?", "target": "twelve"},
    {"context": "Rain is expected tomorrow in the north.", "instruction": "Weather?", "target": "Rain up north."},
    {"context": "The river froze in January.", "instruction": "What froze?", "target": "The river"},
]

# Rows whose targets are all one token long ("even"/"odd" + EOS), so that per-batch token means compose exactly.
PARITY_ROWS = [
    {
        "context": f"The number {i} is {'even' if i % 2 == 0 else 'odd'}.",
        "instruction": "Is it even?",
        "target": "even" if i % 2 == 0 else "odd",
    }
    for i in range(8)
]

LORA_MODULES = ["q_proj", "v_proj"]


def logged_losses(trainer: CompressionTrainer) -> list[tuple[int, float]]:
    return [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]


def compress_ids(tokenizer, k: int) -> list[int]:
    return tokenizer.convert_tokens_to_ids([f"<EMBED{i}>" for i in range(k)])


def grads_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------------------------------------------
# 1. The loss is the equation of METHOD.md §1
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_loss_equals_mean_target_nll_computed_independently(tmp_path, tokenizer, arch):
    k = 3
    trainer = make_trainer(
        CompressionTrainer,
        tmp_path,
        tokenizer,
        model=make_tiny_model(arch, tokenizer, seed=1),
        num_compress_tokens=k,
        rows=ROWS,
    )
    trainer.model.eval()  # gpt2 has dropout; the reference below runs without it
    rows = ROWS[:4]
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)

    # Independent reference: one unpadded row at a time, the model's own full forward, float64 log-softmax.
    ids_k = compress_ids(trainer.processing_class, k)
    decoder = trainer.frozen_decoder.model
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(len(rows)):
            ids = batch["input_ids"][b, : int(batch["attention_mask"][b].sum())]
            assert ids[-k:].tolist() == ids_k
            hidden = trainer.model(input_ids=ids[None], output_hidden_states=True).hidden_states[-1][0]
            compress_states = hidden[-k:]
            target = batch["target_ids"][b, : int(batch["target_mask"][b].sum())]
            assert target[-1].item() == tokenizer.eos_token_id
            expected_target = tokenizer(rows[b]["target"], add_special_tokens=False)["input_ids"]
            assert target[:-1].tolist() == expected_target
            inputs_embeds = torch.cat([compress_states, decoder.get_input_embeddings()(target)], dim=0)
            logits = decoder(inputs_embeds=inputs_embeds[None]).logits[0].double()
            log_probs = torch.log_softmax(logits, dim=-1)
            for j, token in enumerate(target.tolist()):
                total += log_probs[k - 1 + j, token].item()  # position k-1+j predicts target token j
                count += 1
    expected = -total / count
    assert count == int(batch["target_mask"].sum())
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # A random decoder over a ~49k vocabulary gives about log(V) nats per token: a sanity check of the scale.
    assert abs(expected - math.log(len(tokenizer))) < 2.0


def test_decoder_template_loss_computed_independently_and_kept_by_stage_2(tmp_path, tokenizer):
    """With decoder_template the frozen decoder reads [embed(before); states; embed(after); target]; the option is
    saved with the checkpoint, stage 2 reads the states the same way, and a different template there is refused."""
    k, template = 2, "Words: {states} Sentence:"
    trainer = make_trainer(
        CompressionTrainer,
        tmp_path / "a",
        tokenizer,
        model=make_tiny_model("llama", tokenizer, seed=3),
        num_compress_tokens=k,
        decoder_template=template,
        rows=ROWS,
        max_steps=1,
    )
    trainer.model.eval()
    rows = ROWS[:3]
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    before = tokenizer("Words: ", add_special_tokens=False)["input_ids"]
    after = tokenizer(" Sentence:", add_special_tokens=False)["input_ids"]
    decoder = trainer.frozen_decoder.model
    table = decoder.get_input_embeddings()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in range(len(rows)):
            ids = batch["input_ids"][b, : int(batch["attention_mask"][b].sum())]
            states = trainer.model(input_ids=ids[None], output_hidden_states=True).hidden_states[-1][0, -k:]
            target = batch["target_ids"][b, : int(batch["target_mask"][b].sum())]
            embeds = torch.cat([table(torch.tensor(before)), states, table(torch.tensor(after)), table(target)])
            log_probs = torch.log_softmax(decoder(inputs_embeds=embeds[None]).logits[0].double(), dim=-1)
            start = len(before) + k + len(after) - 1
            total += sum(log_probs[start + j, token].item() for j, token in enumerate(target.tolist()))
            count += len(target)
    assert loss.item() == pytest.approx(-total / count, rel=1e-5, abs=1e-5)

    trainer.train()
    trainer.save_model(str(tmp_path / "stage1"))
    assert json.loads((tmp_path / "stage1" / SETTINGS_FILE).read_text())["decoder_template"] == template
    original = {"decoder": trainer.frozen_decoder.model}  # the tiny model has no name to load the original from
    stage2 = CDATrainer(model=str(tmp_path / "stage1"), args=make_config(CDAConfig, tmp_path / "b"), **original)
    assert stage2.encoder_settings.decoder_template == template
    assert stage2.decoder_prompt == trainer.decoder_prompt == DecoderPrompt(tuple(before), tuple(after))
    other = make_config(CDAConfig, tmp_path / "c", decoder_template="{states}")
    with pytest.raises(ValueError, match=r"decoder_template='\{states\}' differs .*leave it unset"):
        CDATrainer(model=str(tmp_path / "stage1"), args=other, **original)


def test_readout_gain_is_own_minus_previous_rows_states_computed_independently(tmp_path, tokenizer):
    k = 2
    trainer = make_trainer(
        CompressionTrainer,
        tmp_path,
        tokenizer,
        model=make_tiny_model("llama", tokenizer, seed=2),
        num_compress_tokens=k,
        rows=ROWS,
    )
    trainer.model.eval()
    rows = ROWS[:4]
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    logged = trainer._metrics["eval"]["readout_gain"]
    assert len(logged) == 1

    # Independent reference: unpadded rows, float64 log-softmax; target i scored with row i's and row i-1's states.
    decoder = trainer.frozen_decoder.model
    with torch.no_grad():
        states, targets = [], []
        for b in range(len(rows)):
            ids = batch["input_ids"][b, : int(batch["attention_mask"][b].sum())]
            states.append(trainer.model(input_ids=ids[None], output_hidden_states=True).hidden_states[-1][0, -k:])
            targets.append(batch["target_ids"][b, : int(batch["target_mask"][b].sum())])

        def mean_log_prob(prefix, target):
            embeds = torch.cat([prefix, decoder.get_input_embeddings()(target)], dim=0)
            log_probs = torch.log_softmax(decoder(inputs_embeds=embeds[None]).logits[0].double(), dim=-1)
            return sum(log_probs[k - 1 + j, token].item() for j, token in enumerate(target.tolist())) / len(target)

        gains = [mean_log_prob(states[b], targets[b]) - mean_log_prob(states[b - 1], targets[b]) for b in range(4)]
    expected = sum(gains) / len(gains)
    assert logged[0] == pytest.approx(expected, abs=1e-5)
    assert any(abs(gain) > 1e-3 for gain in gains)  # the rows' states differ, so the check is not 0 == 0


def test_readout_gain_is_logged_in_evaluation_only(tmp_path, tokenizer):
    trainer = make_trainer(CompressionTrainer, tmp_path, tokenizer, max_steps=2, logging_steps=1, rows=ROWS)
    trainer.train()
    assert not any("readout_gain" in entry for entry in trainer.state.log_history)
    metrics = trainer.evaluate(Dataset.from_list(ROWS))
    assert "eval_readout_gain" in metrics and math.isfinite(metrics["eval_readout_gain"])
    assert -1.0 <= metrics["eval_embeddings/mean_cosine"] <= 1.0
    assert all("embeddings/mean_cosine" in entry for entry in trainer.state.log_history if "loss" in entry)


# --------------------------------------------------------------------------------------------------------------
# 2. Gradients reach only the encoder (full fine-tuning) / only LoRA + compress rows (PEFT)
# --------------------------------------------------------------------------------------------------------------


def test_full_finetuning_gradients_reach_encoder_only(tmp_path, tokenizer):
    trainer = make_trainer(CompressionTrainer, tmp_path, tokenizer, rows=ROWS)
    decoder = trainer.frozen_decoder.model
    assert decoder is not None and decoder is not trainer.model
    assert not trainer.frozen_decoder.shares_policy_weights
    assert not decoder.training
    encoder_ptrs = {p.data_ptr() for p in trainer.model.parameters()}
    assert not encoder_ptrs & {p.data_ptr() for p in decoder.parameters()}  # a real copy, not shared storage

    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, trainer.data_collator(ROWS[:4]))
    loss.backward()

    for name, param in decoder.named_parameters():
        assert not param.requires_grad, name
        assert param.grad is None, name
    grads = grads_of(trainer.model)
    for name, _ in trainer.model.model.named_parameters():  # the body: every weight takes part
        assert torch.count_nonzero(grads[f"model.{name}"]) > 0, name
    embedding_grad = trainer.model.get_input_embeddings().weight.grad
    for token_id in compress_ids(trainer.processing_class, 5):
        assert embedding_grad[token_id].abs().sum() > 0, token_id
    # The encoder's LM head is not used (the compress states come from the body), so it gets no gradient.
    assert trainer.model.lm_head.weight.grad is None


def test_lora_gradients_reach_only_adapters_and_compress_rows(tmp_path, tokenizer):
    base_copy = copy.deepcopy(make_tiny_model("llama", tokenizer))
    trainer = make_trainer(
        CompressionTrainer, tmp_path, tokenizer, peft_config=LoraConfig(r=4, target_modules=LORA_MODULES), rows=ROWS
    )
    assert trainer.frozen_decoder.shares_policy_weights
    assert trainer.frozen_decoder.model is None  # no second copy of the model
    with trainer.frozen_decoder() as decoder:
        assert decoder is trainer.model

    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    assert all("lora_" in name or "trainable_tokens_delta" in name for name in trainable), trainable
    assert any("trainable_tokens_delta" in name for name in trainable)

    trainer.model.train()
    trainer.compute_loss(trainer.model, trainer.data_collator(ROWS[:4])).backward()
    grads = grads_of(trainer.model)
    assert set(grads) == trainable
    # lora_B starts at zero, so lora_A's first gradient is zero; lora_B and the compress rows must move.
    for name, grad in grads.items():
        if "lora_B" in name or "trainable_tokens_delta" in name:
            assert torch.count_nonzero(grad) > 0, name
    delta_grad = next(g for n, g in grads.items() if "trainable_tokens_delta" in n)
    assert delta_grad.shape[0] == 5 and bool((delta_grad.abs().sum(dim=1) > 0).all())

    # The decoder is the original LLM: with (non-zero) adapters, it still gives the base model's log-probs.
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    trainer.model.eval()
    batch = trainer.data_collator(ROWS[:2])
    target = batch["target_ids"][:1, : int(batch["target_mask"][0].sum())]
    with torch.no_grad(), trainer.frozen_decoder() as decoder:
        logits = decoder(input_ids=target).logits
    with torch.no_grad():
        adapted_logits = trainer.model(input_ids=target).logits
        base_logits = base_copy(input_ids=target).logits
    base_vocab = base_logits.shape[-1]  # the compress rows were added after the copy; compare the original vocab
    torch.testing.assert_close(logits[..., :base_vocab], base_logits, rtol=1e-5, atol=1e-5)
    assert (adapted_logits - logits).abs().max() > 1e-3  # the adapters do change the encoder


def test_decoder_stays_the_original_model_during_full_finetuning(tmp_path, tokenizer):
    trainer = make_trainer(CompressionTrainer, tmp_path, tokenizer, max_steps=2, learning_rate=1e-2, rows=ROWS)
    decoder_before = {n: p.detach().clone() for n, p in trainer.frozen_decoder.model.named_parameters()}
    encoder_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    original = make_tiny_model("llama", tokenizer)  # the same seed: the weights the decoder must keep
    trainer.train()
    for name, param in trainer.frozen_decoder.model.named_parameters():
        torch.testing.assert_close(param, decoder_before[name], rtol=0, atol=0)
    q_name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(
        trainer.frozen_decoder.model.get_parameter(q_name), original.get_parameter(q_name), rtol=0, atol=0
    )
    assert (trainer.model.get_parameter(q_name) - encoder_before[q_name]).abs().max() > 1e-4


# --------------------------------------------------------------------------------------------------------------
# 3. Overfitting 8 rows lowers the loss
# --------------------------------------------------------------------------------------------------------------


def test_loss_decreases_when_overfitting_eight_rows(tmp_path, tokenizer):
    # With make_tiny_model (hidden 32, init std 0.02) the decoder's logits span < 1 nat, so the loss can only fall
    # from log(49157) ~ 10.8 to ~10.3. A wider model with a larger init lets the prefix move the logits: measured
    # over 30 steps (seeds 0 and 1): first ~11.7-12.6, last ~4.0-4.1 (drops of 7.7 and 8.6). We assert a drop of
    # 3 nats and a final loss under 8, well inside that.
    model = make_tiny_model("llama", tokenizer, seed=0, hidden_size=64, intermediate_size=128, initializer_range=0.2)
    trainer = make_trainer(
        CompressionTrainer,
        tmp_path,
        tokenizer,
        model=model,
        rows=PARITY_ROWS,
        num_train_epochs=15,
        learning_rate=1e-3,
        seed=0,
    )
    trainer.train()
    losses = [loss for _, loss in logged_losses(trainer)]
    assert len(losses) == 30
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0] - 3.0, losses
    assert losses[-1] < 8.0, losses
    # the logged metric is the same quantity with the opposite sign
    last = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert last["target_log_prob_per_token"] == pytest.approx(-last["loss"], rel=1e-4)
    # the loss fell because the decoder reads the states: the previous row (other parity) scores far lower
    assert trainer.evaluate(Dataset.from_list(PARITY_ROWS))["eval_readout_gain"] > 1.0  # measured: 3.07


# --------------------------------------------------------------------------------------------------------------
# 4. Gradient accumulation gives the same update as one big batch
# --------------------------------------------------------------------------------------------------------------


def _one_sgd_update(tmp_path, tokenizer, batch_size: int, accumulation: int) -> dict[str, torch.Tensor]:
    trainer = make_trainer(
        CompressionTrainer,
        tmp_path / f"b{batch_size}x{accumulation}",
        tokenizer,
        rows=PARITY_ROWS[:4],
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,  # clipping would hide a wrong loss scale
    )
    batch = trainer.data_collator(PARITY_ROWS[:4])
    assert len(set(batch["target_mask"].sum(dim=1).tolist())) == 1  # equal target lengths: means compose exactly
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 1
    return {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}


def test_gradient_accumulation_matches_one_large_batch(tmp_path, tokenizer):
    big = _one_sgd_update(tmp_path, tokenizer, batch_size=4, accumulation=1)
    accumulated = _one_sgd_update(tmp_path, tokenizer, batch_size=2, accumulation=2)
    largest = max(delta.abs().max().item() for delta in big.values())
    assert largest > 1e-3  # the update is large enough that a 2x scale error would show
    for name, delta in big.items():
        torch.testing.assert_close(accumulated[name], delta, rtol=0, atol=1e-5, msg=name)


# --------------------------------------------------------------------------------------------------------------
# 5. Gradient checkpointing
# --------------------------------------------------------------------------------------------------------------


class _CaptureFirstStep(TrainerCallback):
    """Keep the gradients of the first optimisation step (before the optimizer uses and clears them)."""

    def __init__(self) -> None:
        self.trainer: CompressionTrainer | None = None
        self.grads: dict[str, torch.Tensor] | None = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.grads is None:
            self.grads = grads_of(self.trainer.model)


def _first_step(tmp_path, tokenizer, checkpointing: bool, lora: bool):
    peft_config = LoraConfig(r=4, target_modules=LORA_MODULES, init_lora_weights=False) if lora else None
    torch.manual_seed(0)  # init_lora_weights=False draws random (non-zero) adapters: the same ones in both runs
    capture = _CaptureFirstStep()
    trainer = make_trainer(
        CompressionTrainer,
        tmp_path / f"gc{checkpointing}",
        tokenizer,
        max_steps=2,
        learning_rate=1e-3,
        gradient_checkpointing=checkpointing,
        peft_config=peft_config,
        rows=ROWS,
    )
    capture.trainer = trainer
    trainer.add_callback(capture)
    trainer.train()
    assert trainer.model.is_gradient_checkpointing == checkpointing
    losses = logged_losses(trainer)
    assert len(losses) == 2 and all(math.isfinite(loss) for _, loss in losses)
    return losses[0][1], capture.grads


def _assert_checkpointing_changes_nothing(tmp_path, tokenizer, lora: bool) -> None:
    loss, grads = _first_step(tmp_path, tokenizer, checkpointing=False, lora=lora)
    loss_gc, grads_gc = _first_step(tmp_path, tokenizer, checkpointing=True, lora=lora)
    assert loss_gc == pytest.approx(loss, abs=1e-5)
    assert set(grads_gc) == set(grads) and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grads_gc[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_gradient_checkpointing_full_finetuning_same_loss_and_grads(tmp_path, tokenizer):
    _assert_checkpointing_changes_nothing(tmp_path, tokenizer, lora=False)


def test_gradient_checkpointing_lora_same_loss_and_grads(tmp_path, tokenizer):
    # Regression: the shared PEFT decoder used to run in train mode, so checkpointing recomputed its layers during
    # backward outside disable_adapter() and torch raised CheckpointError.
    _assert_checkpointing_changes_nothing(tmp_path, tokenizer, lora=True)


@pytest.mark.parametrize("lora", [False, True])
def test_decoder_runs_in_eval_mode_while_the_encoder_trains(tmp_path, tokenizer, lora):
    # gpt2 has dropout: a frozen decoder in train mode would give random log-probs (and differ between LoRA and
    # full fine-tuning). The encoder's own mode must be restored afterwards.
    peft_config = LoraConfig(r=4, target_modules=["c_attn"]) if lora else None
    trainer = make_trainer(
        CompressionTrainer,
        tmp_path,
        tokenizer,
        model=make_tiny_model("gpt2", tokenizer),
        peft_config=peft_config,
        rows=ROWS,
    )
    trainer.model.train()
    batch = trainer.data_collator(ROWS[:2])
    target = batch["target_ids"][:1, : int(batch["target_mask"][0].sum())]
    with torch.no_grad(), trainer.frozen_decoder() as decoder:
        assert not decoder.training
        first, second = (decoder(input_ids=target).logits for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert trainer.model.training


# --------------------------------------------------------------------------------------------------------------
# 6. bf16 on CPU
# --------------------------------------------------------------------------------------------------------------


def _cpu_bf16_autocast_works() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    except Exception:  # any failure means "not available"
        return False


@pytest.mark.skipif(not _cpu_bf16_autocast_works(), reason="this CPU/torch build has no bf16 autocast")
def test_bf16_on_cpu_trains_with_finite_loss(tmp_path, tokenizer):
    trainer = make_trainer(
        CompressionTrainer, tmp_path, tokenizer, bf16=True, max_steps=2, learning_rate=1e-3, rows=ROWS
    )
    trainer.train()
    losses = [loss for _, loss in logged_losses(trainer)]
    assert len(losses) == 2
    assert all(math.isfinite(loss) and 5.0 < loss < 15.0 for loss in losses), losses


# --------------------------------------------------------------------------------------------------------------
# 7. Saving, loading and resuming
# --------------------------------------------------------------------------------------------------------------

ENCODE_TEXTS = ["hello there", "a longer sentence about the weather tomorrow"]


def _embeddings(model, tokenizer, settings) -> torch.Tensor:
    model.eval()
    batch = EncoderInputBuilder(tokenizer, settings)(ENCODE_TEXTS, "Summarize")
    with torch.no_grad():
        return encode(model, batch["input_ids"], batch["attention_mask"], settings).embedding


def _check_checkpoint_files(path, tokenizer_len: int, k: int, base: str) -> None:
    saved = json.loads((path / SETTINGS_FILE).read_text())
    assert saved["num_compress_tokens"] == k
    assert saved["base_model_name_or_path"] == base
    loaded = load_encoder(path)
    assert len(loaded.tokenizer) == tokenizer_len
    vocab = loaded.tokenizer.get_vocab()
    assert all(f"<EMBED{i}>" in vocab for i in range(k))
    assert loaded.settings.num_compress_tokens == k


def test_save_and_load_full_finetuned_encoder(tmp_path, tokenizer):
    base_dir = tmp_path / "base"
    make_tiny_model("llama", tokenizer).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    trainer = make_trainer(
        CompressionTrainer, tmp_path, tokenizer, model=str(base_dir), max_steps=2, learning_rate=1e-2, rows=ROWS
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    final = tmp_path / "final"
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
    _check_checkpoint_files(final, len(trainer.processing_class), 5, str(base_dir))

    loaded = load_encoder(final)
    expected = _embeddings(trainer.model, trainer.processing_class, trainer.encoder_settings)
    got = _embeddings(loaded.model, loaded.tokenizer, loaded.settings)
    assert (got - expected).abs().max().item() < 1e-6
    # the trained encoder differs from the base model, so the check above is not vacuous
    untrained = make_tiny_model("llama", tokenizer)
    untrained.resize_token_embeddings(len(loaded.tokenizer))
    assert (got - _embeddings(untrained, loaded.tokenizer, loaded.settings)).abs().max().item() > 1e-4


def test_save_and_load_lora_adapter_encoder(tmp_path, tokenizer):
    base_dir = tmp_path / "base"
    make_tiny_model("llama", tokenizer).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    trainer = make_trainer(
        CompressionTrainer,
        tmp_path,
        tokenizer,
        model=str(base_dir),
        max_steps=2,
        learning_rate=1e-2,
        peft_config=LoraConfig(r=4, target_modules=LORA_MODULES),
        rows=ROWS,
    )
    trainer.train()
    expected = _embeddings(trainer.model, trainer.processing_class, trainer.encoder_settings)
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    trainer.args.merge_adapter_on_save = False
    trainer.save_model(str(adapter))
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()
    trainer.args.merge_adapter_on_save = True  # the default: a final save writes merged, self-contained weights
    trainer.save_model(str(merged))
    assert (merged / "model.safetensors").is_file() and not list(merged.glob("adapter_*"))
    for folder in (adapter, merged):
        _check_checkpoint_files(folder, len(trainer.processing_class), 5, str(base_dir))
        loaded = load_encoder(folder)
        got = _embeddings(loaded.model, loaded.tokenizer, loaded.settings)
        assert (got - expected).abs().max().item() < 1e-5, folder.name
    assert trainer.model.peft_config  # the in-memory model keeps its adapter


def test_adapter_checkpoint_of_an_unnamed_model_fails_clearly_on_load(tmp_path, tokenizer):
    trainer = make_trainer(
        CompressionTrainer, tmp_path, tokenizer, peft_config=LoraConfig(r=4, target_modules=LORA_MODULES), rows=ROWS
    )
    assert trainer.model.get_base_model().name_or_path == ""
    trainer.args.merge_adapter_on_save = False
    trainer.save_model(str(tmp_path / "final"))
    # Regression: this used to end in from_pretrained('') with an unrelated OSError.
    with pytest.raises(ValueError, match=r"holds a PEFT adapter but records no base model.*export_sentence"):
        load_encoder(tmp_path / "final")


def test_resume_from_checkpoint_continues_at_saved_step(tmp_path, tokenizer):
    common = dict(
        rows=ROWS,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        seed=0,
    )
    # The reference: 6 uninterrupted steps.
    reference = make_trainer(CompressionTrainer, tmp_path / "ref", tokenizer, max_steps=6, **common)
    reference.train()
    reference_losses = dict(logged_losses(reference))

    output = tmp_path / "resumed"
    first = make_trainer(
        CompressionTrainer, output, tokenizer, max_steps=4, save_strategy="steps", save_steps=2, **common
    )
    first.train()
    checkpoint = output / "out" / "checkpoint-4"
    assert (checkpoint / SETTINGS_FILE).is_file() and (checkpoint / "optimizer.pt").is_file()

    steps_run: list[int] = []

    class RecordSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps_run.append(state.global_step)

    second = make_trainer(CompressionTrainer, output, tokenizer, max_steps=6, **common)
    second.add_callback(RecordSteps())
    second.train(resume_from_checkpoint=True)
    assert steps_run == [5, 6]
    assert second.state.global_step == 6
    resumed_losses = dict(logged_losses(second))
    assert sorted(resumed_losses) == [1, 2, 3, 4, 5, 6]  # the checkpoint's log history, then the new steps
    for step in (1, 2, 3, 4):
        assert resumed_losses[step] == pytest.approx(reference_losses[step], abs=1e-4)
    # Weights, optimizer state and data order were restored: the same losses as without interruption.
    for step in (5, 6):
        assert resumed_losses[step] == pytest.approx(reference_losses[step], abs=1e-4)


def test_decoder_is_original_llm_when_continuing_from_a_checkpoint(tmp_path, tokenizer):
    base_dir = tmp_path / "base"
    make_tiny_model("llama", tokenizer).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    first = make_trainer(
        CompressionTrainer, tmp_path / "a", tokenizer, model=str(base_dir), max_steps=2, learning_rate=1e-2, rows=ROWS
    )
    first.train()
    first.save_model(str(tmp_path / "stage1"))
    second = CompressionTrainer(
        model=str(tmp_path / "stage1"),
        args=make_config(CompressionConfig, tmp_path / "b"),
        train_dataset=Dataset.from_list(ROWS),
    )
    name = "model.layers.0.self_attn.q_proj.weight"
    original = make_tiny_model("llama", tokenizer).get_parameter(name)
    torch.testing.assert_close(second.frozen_decoder.model.get_parameter(name), original, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------
# 8. A non-finite loss stops training
# --------------------------------------------------------------------------------------------------------------


def test_non_finite_loss_raises_naming_the_step(tmp_path, tokenizer):
    trainer = make_trainer(
        CompressionTrainer,
        tmp_path,
        tokenizer,
        per_device_train_batch_size=2,
        max_steps=5,
        learning_rate=1e-3,
        rows=ROWS,
    )

    class PoisonAfterStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    trainer.model.model.norm.weight.fill_(float("nan"))

    trainer.add_callback(PoisonAfterStep2())
    with pytest.raises(FloatingPointError, match=r"Non-finite loss \(nan\) at optimisation step 3\b"):
        trainer.train()
    assert trainer.state.global_step == 2


# --------------------------------------------------------------------------------------------------------------
# 9. Bad input and bad options fail early with clear messages
# --------------------------------------------------------------------------------------------------------------


def _construct(tmp_path, tokenizer, rows_or_dataset, **overrides) -> CompressionTrainer:
    tokenizer = copy.deepcopy(tokenizer)
    dataset = rows_or_dataset if isinstance(rows_or_dataset, Dataset) else Dataset.from_list(rows_or_dataset)
    return CompressionTrainer(
        model=make_tiny_model("llama", tokenizer),
        args=make_config(CompressionConfig, tmp_path, **overrides),
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def test_missing_target_column_is_rejected(tmp_path, tokenizer):
    rows = [{"context": r["context"], "instruction": r["instruction"]} for r in ROWS]
    with pytest.raises(DataValidationError, match=r"train_dataset is missing column\(s\) \['target'\]"):
        _construct(tmp_path, tokenizer, rows)


def test_empty_context_is_rejected_naming_column_and_row(tmp_path, tokenizer):
    rows = copy.deepcopy(ROWS)
    rows[3]["context"] = "   "
    with pytest.raises(DataValidationError, match=r"Column 'context', row 3: empty text"):
        _construct(tmp_path, tokenizer, rows)


def test_non_string_target_is_rejected_naming_column_and_row(tmp_path, tokenizer):
    # Arrow keeps one type per column, so a dataset with an int target has ints throughout (e.g. numeric answers);
    # the row-level message for an int in the middle of string rows is tested on plain rows in test_data.py.
    dataset = Dataset.from_dict({"context": ["a b", "c d"], "instruction": ["", ""], "target": [7, 8]})
    with pytest.raises(DataValidationError, match=r"Column 'target', row 0: expected a string, got int \(7\)"):
        _construct(tmp_path, tokenizer, dataset)


def test_eval_dataset_is_validated_too(tmp_path, tokenizer):
    rows = copy.deepcopy(ROWS)
    rows[1]["target"] = ""
    with pytest.raises(DataValidationError, match=r"Column 'target', row 1: empty text"):
        CompressionTrainer(
            model=make_tiny_model("llama", tokenizer),
            args=make_config(CompressionConfig, tmp_path),
            train_dataset=Dataset.from_list(ROWS),
            eval_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )


def test_none_instruction_is_allowed_and_means_empty(tmp_path, tokenizer):
    rows = copy.deepcopy(ROWS[:3])
    rows[1]["instruction"] = None
    trainer = _construct(tmp_path, tokenizer, rows)
    batch = trainer.data_collator(rows)
    same_with_empty = trainer.data_collator([{**rows[1], "instruction": ""}])
    length = int(same_with_empty["attention_mask"][0].sum())
    assert batch["input_ids"][1, :length].tolist() == same_with_empty["input_ids"][0, :length].tolist()
    assert int(batch["attention_mask"][1].sum()) == length


def test_empty_dataset_is_rejected(tmp_path, tokenizer):
    empty = Dataset.from_dict({"context": [], "instruction": [], "target": []})
    with pytest.raises(DataValidationError, match="train_dataset has no rows"):
        _construct(tmp_path, tokenizer, empty)


@pytest.mark.parametrize(
    ("choice", "unk", "expected"),
    [("auto", "<|endoftext|>", "<|endoftext|>"), ("auto", None, "eos"), ("eos", "<|endoftext|>", "eos")],
)
def test_tokenizer_without_pad_token_gets_one(tmp_path, tokenizer, caplog, choice, unk, expected):
    """LLaMA-2 / Mistral tokenizers have no pad token: 'auto' takes UNK (else EOS); the choice is logged."""
    tokenizer.pad_token = None
    tokenizer.unk_token = unk
    assert tokenizer.pad_token_id is None
    with caplog.at_level("INFO"):
        trainer = _construct(tmp_path, tokenizer, ROWS, pad_token=choice)
    expected = tokenizer.eos_token if expected == "eos" else expected
    assert trainer.processing_class.pad_token == expected
    assert f"using its {'eos' if expected == tokenizer.eos_token else 'unk'} token" in caplog.text
    batch = trainer.data_collator(ROWS[:2])
    pad_id = trainer.processing_class.pad_token_id
    assert (batch["input_ids"][batch["attention_mask"] == 0] == pad_id).all()
    assert (batch["target_ids"][batch["target_mask"] == 0] == pad_id).all()
    lengths = batch["target_mask"].sum(dim=1)
    last = batch["target_ids"][torch.arange(2), lengths - 1]
    assert (last == tokenizer.eos_token_id).all()  # every target keeps its EOS, even when pad = EOS


def test_pad_token_choice_must_exist(tmp_path, tokenizer):
    tokenizer.pad_token = None
    tokenizer.unk_token = None
    with pytest.raises(ValueError, match="pad_token='unk': the tokenizer has no UNK token"):
        _construct(tmp_path, tokenizer, ROWS, pad_token="unk")
    with pytest.raises(ValueError, match="pad_token must be one of"):
        make_config(CompressionConfig, tmp_path, pad_token="bos")


def test_tokenizer_without_bos_with_add_bos(tmp_path, tokenizer):
    tokenizer.bos_token = None
    assert tokenizer.bos_token_id is None
    with pytest.raises(ValueError, match=r"add_bos=True but the tokenizer has no BOS token.*add_bos=False"):
        _construct(tmp_path, tokenizer, ROWS)
    # and add_bos=False is the documented way out
    trainer = _construct(tmp_path, tokenizer, ROWS, add_bos=False)
    batch = trainer.data_collator(ROWS[:1])
    first_text_token = tokenizer(ROWS[0]["context"], add_special_tokens=False)["input_ids"][0]
    assert batch["input_ids"][0, 0].item() == first_text_token


def test_num_compress_tokens_mismatch_with_checkpoint(tmp_path, tokenizer):
    trainer = _construct(tmp_path / "a", tokenizer, ROWS, num_compress_tokens=2)
    checkpoint = tmp_path / "stage1"
    trainer.save_model(str(checkpoint))
    expected = r"num_compress_tokens=3 differs .*trained with num_compress_tokens=2.*Set num_compress_tokens=2"
    with pytest.raises(ValueError, match=expected):
        CompressionTrainer(
            model=str(checkpoint),
            args=make_config(CompressionConfig, tmp_path / "b", num_compress_tokens=3),
            train_dataset=Dataset.from_list(ROWS),
        )
    # with the matching k the checkpoint loads, and its saved settings are kept
    again = CompressionTrainer(
        model=str(checkpoint),
        args=make_config(CompressionConfig, tmp_path / "c", num_compress_tokens=2),
        train_dataset=Dataset.from_list(ROWS),
    )
    assert again.encoder_settings.num_compress_tokens == 2
    assert len(again.processing_class) == len(trainer.processing_class) == len(tokenizer) + 2


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("instruction_position", "middle", r"instruction_position must be one of \['after_text', 'before_text'\]"),
        ("max_target_length", 0, r"max_target_length must be >= 1, got 0"),
        ("max_text_length", 0, r"max_text_length must be >= 1, got 0"),
        ("num_compress_tokens", -1, r"num_compress_tokens must be >= 0"),
        ("pooling", "max", r"pooling must be one of"),
        ("template", "{instruction} only", r"template must contain \{text\} exactly once"),
    ],
)
def test_invalid_config_options_raise_at_creation(tmp_path, option, value, message):
    with pytest.raises(ValueError, match=message):
        CompressionConfig(output_dir=str(tmp_path), report_to="none", **{option: value})


def test_custom_template_overrides_instruction_position(tmp_path):
    layout = 'This sentence : "{text}" {instruction}'
    config = CompressionConfig(output_dir=str(tmp_path), report_to="none", template=layout)
    assert config.encoder_settings().template == layout
    assert CompressionConfig(output_dir=str(tmp_path), report_to="none").encoder_settings().template == (
        "{text}\n{instruction}"
    )


def test_truncation_in_the_trainer_collator(tmp_path, tokenizer):
    trainer = _construct(tmp_path, tokenizer, ROWS, max_target_length=3, max_text_length=4)
    batch = trainer.data_collator(ROWS[:2])  # row 0 target "On the mat." > 3 tokens; row 1 "Paris" is not
    assert trainer.data_collator.truncations["target"] == 1
    assert batch["target_ids"][0, 3].item() == tokenizer.eos_token_id
    assert batch["target_ids"][0, :3].tolist() == tokenizer("On the mat.", add_special_tokens=False)["input_ids"][:3]
    assert int(batch["target_mask"][0].sum()) == 4
    ids = batch["input_ids"][0, : int(batch["attention_mask"][0].sum())].tolist()
    assert ids[-5:] == compress_ids(trainer.processing_class, 5)
    assert len(ids) == 1 + 4 + len(tokenizer("\nWhere did the cat sit?", add_special_tokens=False)["input_ids"]) + 5
    assert trainer.data_collator.truncations["text"] == 2


@requires_shared_data
def test_load_rows_shared_file_trains_in_trainer(tmp_path, tokenizer):
    rows = load_rows(SHARED_DATA / "compression" / "xquad_en.jsonl").select(range(4))
    trainer = CompressionTrainer(
        model=make_tiny_model("llama", tokenizer),
        args=make_config(CompressionConfig, tmp_path, max_steps=1, max_text_length=32, max_target_length=16),
        train_dataset=rows,
        processing_class=tokenizer,
    )
    trainer.train()
    assert math.isfinite(logged_losses(trainer)[0][1])


# --------------------------------------------------------------------------------------------------------------
# 11. Real SmolLM2 (slow)
# --------------------------------------------------------------------------------------------------------------


@requires_shared_data
@pytest.mark.slow
def test_real_smollm2_few_steps_lower_the_loss(tmp_path, default_model_dir):
    rows = load_rows(SHARED_DATA / "compression" / "squad2_devhalf_answerable.jsonl").select(range(8))
    trainer = CompressionTrainer(
        model=None,
        args=make_config(
            CompressionConfig,
            tmp_path,
            per_device_train_batch_size=2,
            per_device_eval_batch_size=4,
            max_steps=8,
            learning_rate=5e-5,
            lr_scheduler_type="constant",
            max_text_length=64,
            max_instruction_length=32,
            max_target_length=64,
            bf16=False,
        ),
        train_dataset=rows,
        eval_dataset=rows,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    losses = [loss for _, loss in logged_losses(trainer)]
    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)
    assert math.isfinite(before) and math.isfinite(after)
    # Measured (CPU, float32): eval loss 12.64 before -> 11.01 after 8 steps at lr 5e-5 (4 steps at 2e-5 gave
    # only 12.64 -> 12.07, and lr 1e-4 diverged). Require a 0.5-nat drop, a third of what was measured.
    assert after < before - 0.5, (before, after, losses)
