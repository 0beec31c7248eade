"""Stage 2 (CDA): the trainer's batch planning, loss against the equation, reference sources, reference cache,
gradients (full fine-tuning and two PEFT adapters), training, the original-LLM decoder, and errors."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch
from datasets import Dataset
from helpers import (
    QUIET_CPU_RUN,
    SHARED_DATA,
    TINY_RUNS,
    make_config,
    make_tiny_model,
    make_trainer,
    requires_shared_data,
    triplet_rows,
)
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from autoreg_embed import (
    CDAConfig,
    CDATrainer,
    CompressionConfig,
    CompressionTrainer,
    EncoderInputBuilder,
    EncoderSettings,
    FrozenRole,
    add_compress_tokens,
    conditional_log_probs,
    encode,
)
from autoreg_embed.data.cda_collator import INSTRUCTION_PRESETS, CDACollator, one_positive_per_row
from autoreg_embed.data.collators import TargetBuilder
from autoreg_embed.data.schema import DataValidationError
from autoreg_embed.losses.cda import DIVERGENCE_LOG_PROBS, STRATEGIES
from autoreg_embed.losses.cda_log_probs import NEG_GIVEN_QUERY, POS_GIVEN_POS, POS_GIVEN_QUERY

K = TINY_RUNS[CDAConfig]["num_compress_tokens"]
"""Compress tokens of the tiny models."""
LORA_MODULES = ["q_proj", "v_proj"]
STS = INSTRUCTION_PRESETS["sts"]
METRICS = (
    "s1",
    "s2",
    "rewards/margins",
    "rewards/accuracies",
    "logps/positive",
    "logps/negative",
    "logps/alignment_gap",
    "embeddings/mean_cosine",
)
DIVERGENCE_METRICS = ("s1", "s2", "logps/positive", "logps/negative", "divergence/positive", "embeddings/mean_cosine")
"""What the KL / JS similarity logs: no reference, so no rewards."""
REFERENCE_PAIRS = [POS_GIVEN_QUERY.reference, NEG_GIVEN_QUERY.reference]


def lora(**overrides) -> LoraConfig:
    options = dict(r=4, lora_alpha=8, target_modules=LORA_MODULES, init_lora_weights=False)
    options.update(overrides)
    return LoraConfig(**options)


def assert_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tol: float = 1e-5) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name].double(), expected[name].double(), rtol=tol, atol=tol, msg=name)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[name] - b[name]).detach().abs().max()) for name in a)


# ---- 1. the collator's plan ---------------------------------------------------------------------------------


def planning_collator(tokenizer, instructions=STS) -> CDACollator:
    settings = EncoderSettings(num_compress_tokens=K)
    tokenizer.add_tokens(settings.compress_tokens, special_tokens=True)
    return CDACollator(
        EncoderInputBuilder(tokenizer, settings), TargetBuilder(tokenizer, 64), STRATEGIES[0].log_probs, instructions
    )


PLANNING_ROWS = [
    {"query": "Cats purr softly.", "pos": "Dogs bark loudly.", "neg": ["Birds sing at dawn.", "Fish swim fast."]},
    {"query": "Dogs bark loudly.", "pos": "Cats purr softly.", "neg": ["Birds sing at dawn.", "Cows moo."]},
    {"query": "Cats purr softly.", "pos": "Dogs bark loudly.", "neg": ["Fish swim fast.", "Cows moo."]},
]


def test_collator_encodes_each_distinct_pair_and_target_once(tokenizer):
    collator = planning_collator(tokenizer)
    batch = collator(PLANNING_ROWS)
    # sts: I_next == I_self, so a text used as a query and as a positive is one encoder row
    assert batch["input_ids"].shape[0] == len({"Cats purr softly.", "Dogs bark loudly."}) == 2
    distinct_targets = {text for row in PLANNING_ROWS for text in [row["pos"], *row["neg"]]}
    assert batch["target_ids"].shape[0] == len(distinct_targets) == 5
    planned = {spec.key for spec in STRATEGIES[0].log_probs}  # the reference reads the policy's plan
    assert planned == {POS_GIVEN_QUERY.key, POS_GIVEN_POS.key, NEG_GIVEN_QUERY.key}
    for spec in STRATEGIES[0].log_probs:
        shape = (3, 2) if spec.per_negative else (3, 1)
        assert batch[f"{spec.key}.prefix_index"].shape == shape, spec
        assert batch[f"{spec.key}.target_index"].shape == shape, spec

    compress = tokenizer.convert_tokens_to_ids([f"<EMBED{i}>" for i in range(K)])

    def encoder_text(row: int) -> str:
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert ids[0] == tokenizer.bos_token_id and ids[-K:] == compress
        return tokenizer.decode(ids[1:-K])

    def target_text(row: int) -> str:
        return tokenizer.decode(batch["target_ids"][row][batch["target_mask"][row].bool()].tolist())

    pos_next, pos_self, neg_next = POS_GIVEN_QUERY.key, POS_GIVEN_POS.key, NEG_GIVEN_QUERY.key
    for b, row in enumerate(PLANNING_ROWS):
        assert encoder_text(batch[f"{pos_next}.prefix_index"][b, 0]) == f"{row['query']}\n{STS['next']}"
        assert encoder_text(batch[f"{pos_self}.prefix_index"][b, 0]) == f"{row['pos']}\n{STS['self']}"
        assert target_text(batch[f"{pos_next}.target_index"][b, 0]) == row["pos"] + tokenizer.eos_token
        assert target_text(batch[f"{pos_self}.target_index"][b, 0]) == row["pos"] + tokenizer.eos_token
        for i, negative in enumerate(row["neg"]):
            assert encoder_text(batch[f"{neg_next}.prefix_index"][b, i]) == f"{row['query']}\n{STS['next']}"
            assert target_text(batch[f"{neg_next}.target_index"][b, i]) == negative + tokenizer.eos_token


def test_collator_with_distinct_instructions_and_row_overrides(tokenizer):
    retrieval = INSTRUCTION_PRESETS["retrieval"]
    collator = planning_collator(tokenizer, retrieval)
    batch = collator(PLANNING_ROWS)
    # I_next != I_self: each text is one row as a query (I_next) and one as a positive (I_self)
    assert batch["input_ids"].shape[0] == 4
    rows = [dict(PLANNING_ROWS[0], instruction_next="Custom query instruction:"), PLANNING_ROWS[1]]
    batch = collator(rows)
    row = batch[f"{POS_GIVEN_QUERY.key}.prefix_index"][0, 0]
    text = tokenizer.decode(batch["input_ids"][row][batch["attention_mask"][row].bool()][1:-K])
    assert text == "Cats purr softly.\nCustom query instruction:"


def test_collator_rejects_rows_with_different_numbers_of_negatives(tokenizer):
    collator = planning_collator(tokenizer)
    rows = [PLANNING_ROWS[0], dict(PLANNING_ROWS[1], neg=["Only one negative."])]
    with pytest.raises(DataValidationError, match=r"different numbers of negatives \[1, 2\].*'neg'"):
        collator(rows)


# ---- 2. the loss against the equation ---------------------------------------------------------------------


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize(
    ("num_negatives", "length_normalize", "reference_sign"),
    [(1, False, "paper"), (3, True, "paper"), (3, False, "official")],
)
def test_loss_matches_the_equation(tmp_path, tokenizer, num_negatives, length_normalize, reference_sign):
    rows = triplet_rows(2, num_negatives)
    rows[1]["pos"] = "A much longer positive passage, so that the two targets differ in length by several tokens."
    beta, tau = 0.1, 0.05
    trainer = make_trainer(
        CDATrainer, tmp_path, tokenizer, length_normalize=length_normalize, reference_sign=reference_sign, beta=beta
    )
    decoder, reference = trainer.frozen_decoder.model, trainer.reference.model
    policy = trainer.model
    for model in (decoder, reference, policy):  # float64 end to end, so that 1e-6 checks the equation, not rounding
        model.double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the policy away from the reference (and the decoder), so that every term matters
        for parameter in policy.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    tok = trainer.processing_class
    encoder_inputs = EncoderInputBuilder(tok, trainer.encoder_settings)
    targets = TargetBuilder(tok, trainer.args.max_target_length)

    @torch.no_grad()
    def lp(encoder, text: str, instruction: str, target: str) -> float:
        """lp(target | e_{text, instruction}), one text and one target at a time."""
        inputs = encoder_inputs([text], [instruction])
        states = encode(encoder, inputs["input_ids"], inputs["attention_mask"], trainer.encoder_settings)
        target_ids = targets([target])
        scored = conditional_log_probs(
            decoder, states.compress_states, target_ids["target_ids"], target_ids["target_mask"]
        )
        return float(scored.mean if length_normalize else scored.sum)

    losses = []
    for row in rows:
        q, pos, negs = row["query"], row["pos"], row["neg"]
        pi_pos, pi_self = lp(policy, q, STS["next"], pos), lp(policy, pos, STS["self"], pos)
        ref_pos = lp(reference, q, STS["next"], pos)
        assert abs(pi_pos - ref_pos) > 1e-3  # the perturbation reached the policy, not the reference
        s1 = -sigmoid(beta * abs(pi_pos - pi_self))
        s2 = []
        for neg in negs:
            pi_neg, ref_neg = lp(policy, q, STS["next"], neg), lp(reference, q, STS["next"], neg)
            if reference_sign == "paper":
                x = (pi_pos - ref_pos) - (pi_neg - ref_neg)
            else:
                x = (pi_pos - pi_neg) + (ref_pos - ref_neg)
            s2.append(-sigmoid(beta * x))
        numerator = math.exp(s1 / tau)
        losses.append(-math.log(numerator / (numerator + sum(math.exp(s / tau) for s in s2))))
    expected = sum(losses) / len(losses)

    batch = trainer.data_collator(rows)
    loss, output = trainer.compute_loss(policy, batch, return_outputs=True)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-8)
    assert output.s2.shape == (2, num_negatives)
    assert output.per_example.double().tolist() == pytest.approx(losses, rel=1e-6, abs=1e-8)


# ---- 3. the four reference sources ------------------------------------------------------------------------


def prepared_tiny_model(tokenizer, seed: int = 0):
    """A tiny Llama over a copy of ``tokenizer`` with the K compress tokens added (as a trainer would)."""
    tok = copy.deepcopy(tokenizer)
    model = make_tiny_model("llama", tokenizer, seed)
    add_compress_tokens(model, tok, EncoderSettings(num_compress_tokens=K))
    return model, tok


def test_every_reference_source_gives_the_same_reference_log_probs(tmp_path, tokenizer):
    rows = triplet_rows(4, num_negatives=2)

    copy_trainer = make_trainer(CDATrainer, tmp_path, tokenizer)  # (d) no PEFT, no ref_model: a frozen copy
    assert not copy_trainer.reference.shares_policy_weights
    assert copy_trainer.reference.model is not copy_trainer.model
    batch = copy_trainer.data_collator(rows)
    from_copy = copy_trainer.reference_log_probs(copy_trainer.model, batch)
    assert from_copy[REFERENCE_PAIRS[0]].shape == (4,) and from_copy[REFERENCE_PAIRS[1]].shape == (4, 2)

    model, tok = prepared_tiny_model(tokenizer)  # (a) an explicit ref_model
    ref_model = copy.deepcopy(model)
    explicit = CDATrainer(model=model, ref_model=ref_model, args=make_config(CDAConfig, tmp_path), processing_class=tok)
    assert explicit.reference.model is ref_model
    assert not any(p.requires_grad for p in ref_model.parameters())
    assert_close(explicit.reference_log_probs(explicit.model, batch), from_copy)

    adapter = make_trainer(CDATrainer, tmp_path, tokenizer, peft_config=lora())  # (b) PEFT policy, adapter switched off
    assert adapter.reference.shares_policy_weights and adapter.reference.model is None
    from_adapter = adapter.reference_log_probs(adapter.model, batch)
    assert_close(from_adapter, from_copy)
    policy = adapter.role_log_probs(adapter.model, [POS_GIVEN_QUERY, NEG_GIVEN_QUERY], batch).values
    # the random (init_lora_weights=False) adapter changes the policy, but not the reference
    assert max_difference({"a": policy[POS_GIVEN_QUERY]}, {"a": from_adapter[REFERENCE_PAIRS[0]]}) > 1e-3
    trainable = [name for name, p in adapter.model.named_parameters() if p.requires_grad]
    assert any("trainable_tokens" in name for name in trainable)  # the compress-token rows train too
    with torch.no_grad():  # as if trained: the adapter, compress-token rows included, must not reach the reference
        for parameter in adapter.model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(2)))
    assert_close(adapter.reference_log_probs(adapter.model, batch), from_copy)

    precomputed = make_trainer(
        CDATrainer,  # (c) precomputed before training, in batches of 3 (other padding)
        tmp_path,
        tokenizer,
        rows=rows,
        precompute_ref_log_probs=True,
        ref_log_probs_cache_dir=str(tmp_path / "cache"),
        per_device_eval_batch_size=3,
    )
    assert {spec.name for spec in REFERENCE_PAIRS} <= set(precomputed.train_dataset.column_names)
    assert precomputed.reference is None  # released after precomputing
    columns = {spec: torch.tensor(precomputed.train_dataset[spec.name]) for spec in REFERENCE_PAIRS}
    assert_close(columns, from_copy)
    precomputed_batch = precomputed.data_collator([precomputed.train_dataset[i] for i in range(4)])
    assert_close(precomputed.reference_log_probs(precomputed.model, precomputed_batch), from_copy)


# ---- 4. the reference cache -------------------------------------------------------------------------------


def test_precomputed_reference_log_probs_are_cached_and_reused(tmp_path, tokenizer, monkeypatch):
    cache = tmp_path / "cache"
    rows = triplet_rows(4, num_negatives=2)
    options = dict(precompute_ref_log_probs=True, ref_log_probs_cache_dir=str(cache))
    calls = []
    role_log_probs = CDATrainer.role_log_probs

    def counting(self, *args, **kwargs):
        calls.append(1)
        return role_log_probs(self, *args, **kwargs)

    monkeypatch.setattr(CDATrainer, "role_log_probs", counting)
    first = make_trainer(CDATrainer, tmp_path, tokenizer, rows=rows, **options)
    files = sorted(cache.glob("*.json"))
    assert len(files) == 1 and len(calls) == 2  # two eval batches of 2
    stored = json.loads(files[0].read_text())
    pos_column = REFERENCE_PAIRS[0].name
    assert stored[pos_column] == first.train_dataset[pos_column]
    mtime = files[0].stat().st_mtime_ns

    calls.clear()  # same data, same (freshly built) model: read from the cache
    second = make_trainer(CDATrainer, tmp_path, tokenizer, rows=triplet_rows(4, num_negatives=2), **options)
    assert calls == []
    assert sorted(cache.glob("*.json")) == files and files[0].stat().st_mtime_ns == mtime
    for spec in REFERENCE_PAIRS:
        assert second.train_dataset[spec.name] == first.train_dataset[spec.name]

    changed = triplet_rows(4, num_negatives=2)  # other data: another key, computed again
    changed[3]["pos"] = "Something else entirely."
    third = make_trainer(CDATrainer, tmp_path, tokenizer, rows=changed, **options)
    assert len(calls) == 2 and len(list(cache.glob("*.json"))) == 2
    assert third.train_dataset[pos_column][:3] == pytest.approx(first.train_dataset[pos_column][:3], rel=1e-5)
    assert third.train_dataset[pos_column][3] != pytest.approx(first.train_dataset[pos_column][3], abs=1e-3)

    calls.clear()  # other weights: another key
    make_trainer(CDATrainer, tmp_path, tokenizer, rows=rows, model_seed=1, **options)
    assert len(calls) == 2 and len(list(cache.glob("*.json"))) == 3


# ---- 5. gradients -----------------------------------------------------------------------------------------


def test_full_fine_tuning_gradients_reach_the_encoder_only(tmp_path, tokenizer):
    trainer = make_trainer(CDATrainer, tmp_path, tokenizer)
    batch = trainer.data_collator(triplet_rows(2, num_negatives=2))
    trainer.compute_loss(trainer.model, batch).backward()
    decoder, reference = trainer.frozen_decoder.model, trainer.reference.model
    assert decoder is not None and decoder is not trainer.model and reference is not trainer.model
    for frozen in (decoder, reference):
        assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    grads = {name: p.grad for name, p in trainer.model.named_parameters() if p.grad is not None}
    assert any(name.startswith("model.layers.") for name in grads)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    embedding_grad = trainer.model.get_input_embeddings().weight.grad
    compress = trainer.processing_class.convert_tokens_to_ids([f"<EMBED{i}>" for i in range(K)])
    assert embedding_grad[compress].abs().sum() > 0


def two_adapter_trainer(tmp_path, tokenizer, rows=None, **overrides) -> tuple[CDATrainer, torch.nn.Module]:
    """A CDATrainer on a PEFT stage-1 model (adapter "default") that adds the stage-2 adapter "align"; also
    returns an untouched copy of the stage-1 model (base + "default")."""
    base, tok = prepared_tiny_model(tokenizer)
    stage1 = get_peft_model(base, lora())
    stage1_only = copy.deepcopy(stage1)
    trainer = CDATrainer(
        model=stage1,
        args=make_config(CDAConfig, tmp_path, **overrides),
        train_dataset=None if rows is None else Dataset.from_list(rows),
        processing_class=tok,
        peft_config=lora(),
    )
    return trainer, stage1_only


def test_two_adapters_train_align_only_and_reference_is_base_plus_stage1(tmp_path, tokenizer):
    trainer, stage1_only = two_adapter_trainer(tmp_path, tokenizer)
    model = trainer.model
    assert set(model.peft_config) == {"default", "align"}
    assert trainer.frozen_decoder.shares_policy_weights is True
    assert trainer.reference.shares_policy_weights and trainer.reference.adapters == ["default"]
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".align." in name for name in trainable)

    batch = trainer.data_collator(triplet_rows(2, num_negatives=2))
    trainer.compute_loss(model, batch).backward()  # first step after init
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(trainable)
    assert not any(".default." in name for name in with_grad)
    assert all(
        float(p.grad.abs().sum()) > 0 for name, p in model.named_parameters() if ".lora_" in name and name in with_grad
    )

    reference_specs = trainer.reference_specs
    reference = trainer.reference_log_probs(trainer.model, batch)
    assert sorted(model.base_model.active_adapters) == ["align", "default"]  # restored after the reference pass
    stage1_role = FrozenRole(model, stage1_only)
    expected = trainer.role_log_probs(model, reference_specs, batch, encoder_role=stage1_role).values
    assert_close(reference, expected)
    with stage1_only.disable_adapter():
        base_only = trainer.role_log_probs(model, reference_specs, batch, encoder_role=stage1_role).values
    assert max_difference(reference, base_only) > 1e-3  # the stage-1 adapter is part of the reference
    policy = trainer.role_log_probs(model, [POS_GIVEN_QUERY, NEG_GIVEN_QUERY], batch).values
    assert max_difference({"x": policy[POS_GIVEN_QUERY]}, {"x": reference[REFERENCE_PAIRS[0]]}) > 1e-3

    # the decoder is the base alone (both adapters off)
    fresh, tok = prepared_tiny_model(tokenizer)
    prefix = torch.randn(1, K, 32, generator=torch.Generator().manual_seed(0))
    target = TargetBuilder(tok, 16)(["Cats sleep on sofas."])
    with torch.no_grad(), trainer.frozen_decoder() as decoder:
        shared = conditional_log_probs(decoder, prefix, target["target_ids"], target["target_mask"]).sum
    with torch.no_grad():
        original = conditional_log_probs(fresh, prefix, target["target_ids"], target["target_mask"]).sum
    torch.testing.assert_close(shared, original, rtol=1e-6, atol=1e-5)


def test_stage1_adapter_stays_frozen_across_steps(tmp_path, tokenizer):
    rows = triplet_rows(4)
    trainer, _ = two_adapter_trainer(tmp_path, tokenizer, rows=rows, max_steps=2, learning_rate=1e-2)
    model = trainer.model
    stage1_weights = {name: p.detach().clone() for name, p in model.named_parameters() if ".default." in name}
    batch = trainer.data_collator(rows[:2])
    for _ in range(2):
        trainer.compute_loss(model, batch).backward()
    assert [name for name, p in model.named_parameters() if p.requires_grad and ".default." in name] == []
    assert [name for name, p in model.named_parameters() if p.grad is not None and ".default." in name] == []
    model.zero_grad(set_to_none=True)
    trainer.evaluate(Dataset.from_list(rows))
    trainer.train()
    params = dict(model.named_parameters())
    changed = [name for name, weight in stage1_weights.items() if not torch.equal(params[name], weight)]
    assert changed == []


# ---- 6. training --------------------------------------------------------------------------------------------


def test_loss_falls_when_overfitting_and_metrics_are_logged(tmp_path, tokenizer):
    rows = triplet_rows(16)
    trainer = make_trainer(
        CDATrainer,
        tmp_path,
        tokenizer,
        rows=rows,
        max_steps=-1,
        num_train_epochs=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=4,
        learning_rate=3e-3,
    )
    output = trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4 and trainer.state.global_step == 4
    losses = [entry["loss"] for entry in logs]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0] - 0.1, losses
    assert math.isfinite(output.training_loss)
    for entry in logs:
        assert set(METRICS) <= entry.keys(), entry
        assert 0.0 <= entry["rewards/accuracies"] <= 1.0
    assert logs[-1]["rewards/accuracies"] >= 0.5, logs  # the preference for d+ over d- is learned
    assert logs[-1]["rewards/margins"] > 0
    metrics = trainer.evaluate(Dataset.from_list(rows[:4]))
    assert math.isfinite(metrics["eval_loss"])
    logged = trainer.state.log_history[-1]
    assert logged["eval_loss"] == metrics["eval_loss"]
    for key in METRICS:
        assert f"eval_{key}" in logged, key
    assert -1.0 <= logged["eval_s1"] <= -0.5  # sigmoid bound: S1 = -sigma(non-negative)


def test_evaluate_returns_the_cda_metrics(tmp_path, tokenizer):
    trainer = make_trainer(CDATrainer, tmp_path, tokenizer, rows=triplet_rows(2))
    metrics = trainer.evaluate(Dataset.from_list(triplet_rows(2)))
    assert math.isfinite(metrics["eval_loss"])
    for key in METRICS:
        assert f"eval_{key}" in metrics, key


def test_evaluate_a_new_dataset_with_precomputed_reference(tmp_path, tokenizer):
    """The released reference copy cannot score a new dataset: a clear error, not a KeyError in the collator."""
    trainer = make_trainer(
        CDATrainer,
        tmp_path,
        tokenizer,
        rows=triplet_rows(2),
        precompute_ref_log_probs=True,
        ref_log_probs_cache_dir=str(tmp_path / "cache"),
    )
    assert trainer.reference is None
    with pytest.raises(ValueError, match="no precomputed reference log-probs"):
        trainer.evaluate(Dataset.from_list(triplet_rows(3)[1:]))


def test_evaluate_a_new_dataset_with_precomputed_reference_from_an_adapter(tmp_path, tokenizer):
    """A PEFT reference costs nothing to keep, so a new evaluation dataset gets its reference columns."""
    trainer = make_trainer(
        CDATrainer,
        tmp_path,
        tokenizer,
        rows=triplet_rows(2),
        precompute_ref_log_probs=True,
        ref_log_probs_cache_dir=str(tmp_path / "cache"),
        peft_config=lora(),
    )
    assert trainer.reference.shares_policy_weights
    metrics = trainer.evaluate(Dataset.from_list(triplet_rows(3)[1:]))
    assert math.isfinite(metrics["eval_loss"])


# ---- 7. every strategy, similarity and bound --------------------------------------------------------------


STRATEGY_CASES = [  # every strategy, similarity and bound at least once (each bound with two similarities)
    (0, "log_prob", "sigmoid"),
    (1, "log_prob", "tanh"),
    (2, "log_prob", "log_sigmoid"),
    (3, "log_prob", "sigmoid"),
    (4, "log_prob", "tanh"),
    (0, "kl", "log_sigmoid"),
    (0, "kl", "sigmoid"),
    (0, "js", "tanh"),
]


def strategy_combinations() -> list:
    return [pytest.param(*case) for case in STRATEGY_CASES]


@pytest.mark.parametrize(("strategy", "similarity", "bound"), strategy_combinations())
def test_every_strategy_similarity_and_bound_trains_one_step(tmp_path, tokenizer, strategy, similarity, bound):
    trainer = make_trainer(
        CDATrainer,
        tmp_path,
        tokenizer,
        rows=triplet_rows(1, num_negatives=2),
        per_device_train_batch_size=1,
        strategy=strategy,
        similarity=similarity,
        bound=bound,
    )
    needed = STRATEGIES[strategy].log_probs if similarity == "log_prob" else DIVERGENCE_LOG_PROBS
    assert set(trainer.policy_specs + trainer.reference_specs) == set(needed)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    output = trainer.train()
    assert trainer.state.global_step == 1
    assert math.isfinite(output.training_loss)
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert set(METRICS if similarity == "log_prob" else DIVERGENCE_METRICS) <= logged.keys()
    assert any(not torch.equal(before[name], p) for name, p in trainer.model.named_parameters())


# ---- 8. the decoder is the original LLM --------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage1_checkpoint(tmp_path_factory, _session_tokenizer):
    """(base dir, stage-1 dir): a tiny Llama saved with its tokenizer, and one full-FT CompressionTrainer step."""
    root = tmp_path_factory.mktemp("stage1")
    base_dir, stage1_dir = root / "base", root / "stage1"
    make_tiny_model("llama", _session_tokenizer).save_pretrained(base_dir)
    _session_tokenizer.save_pretrained(base_dir)
    trainer = CompressionTrainer(
        model=str(base_dir),
        args=CompressionConfig(
            output_dir=str(root / "out"),
            max_steps=1,
            learning_rate=1e-2,
            per_device_train_batch_size=2,
            num_compress_tokens=K,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
        ),
        train_dataset=Dataset.from_list(
            [
                {"context": "The cat sat on the mat.", "instruction": "Where?", "target": "On the mat."},
                {"context": "Paris is the capital of France.", "instruction": "", "target": "Paris"},
            ]
        ),
    )
    trainer.train()
    trainer.save_model(str(stage1_dir))
    return base_dir, stage1_dir


def test_decoder_is_the_original_llm_not_the_stage1_checkpoint(tmp_path, stage1_checkpoint):
    base_dir, stage1_dir = stage1_checkpoint
    trainer = CDATrainer(
        model=str(stage1_dir), args=make_config(CDAConfig, tmp_path), train_dataset=Dataset.from_list(triplet_rows(2))
    )
    assert trainer.encoder_settings.base_model_name_or_path == str(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir).state_dict()
    stage1 = AutoModelForCausalLM.from_pretrained(stage1_dir).state_dict()
    decoder = trainer.frozen_decoder.model
    assert decoder is not None and not any(p.requires_grad for p in decoder.parameters())
    decoder_state = decoder.state_dict()
    assert decoder_state.keys() == base.keys()
    for name, value in base.items():
        assert torch.equal(decoder_state[name], value), name
    changed = [
        name for name in base if base[name].shape == stage1[name].shape and not torch.equal(base[name], stage1[name])
    ]
    assert any(name.startswith("model.layers.") for name in changed)  # stage 1 really moved the encoder
    # the reference, unlike the decoder, is the stage-1 encoder
    reference_state = trainer.reference.model.state_dict()
    assert all(torch.equal(reference_state[name], value) for name, value in stage1.items())
    assert math.isfinite(trainer.train().training_loss)


# ---- 9. bad input --------------------------------------------------------------------------------------------


def test_missing_neg_column_is_an_error(tmp_path, tokenizer):
    rows = [{"query": row["query"], "pos": row["pos"]} for row in triplet_rows(3)]
    with pytest.raises(DataValidationError, match=r"train_dataset is missing column\(s\) \['neg'\]"):
        make_trainer(CDATrainer, tmp_path, tokenizer, rows=rows)


def test_empty_negative_list_names_column_and_row(tmp_path, tokenizer):
    rows = triplet_rows(4)
    rows[2]["neg"] = []
    with pytest.raises(DataValidationError, match=r"Column 'neg', row 2"):
        make_trainer(CDATrainer, tmp_path, tokenizer, rows=rows)
    eval_rows = triplet_rows(2)
    eval_rows[1]["query"] = "   "
    with pytest.raises(DataValidationError, match=r"Column 'query', row 1: empty text"):
        make_trainer(CDATrainer, tmp_path, tokenizer, rows=triplet_rows(2), eval_rows=eval_rows)


def test_compress_token_count_mismatch_with_stage1_checkpoint(tmp_path, stage1_checkpoint):
    _, stage1_dir = stage1_checkpoint
    expected = rf"num_compress_tokens=3 differs from the checkpoint .*trained with num_compress_tokens={K}"
    with pytest.raises(ValueError, match=expected):
        CDATrainer(model=str(stage1_dir), args=make_config(CDAConfig, tmp_path, num_compress_tokens=3))
    loaded = AutoModelForCausalLM.from_pretrained(stage1_dir)  # a loaded model object is checked too
    with pytest.raises(ValueError, match=rf"Set num_compress_tokens={K} or leave it unset"):
        CDATrainer(
            model=loaded,
            args=make_config(CDAConfig, tmp_path, num_compress_tokens=3),
            processing_class=AutoTokenizer.from_pretrained(stage1_dir),
        )


def test_checkpoint_settings_take_set_lengths_and_refuse_other_layouts(tmp_path, stage1_checkpoint):
    """A saved checkpoint's layout is used unless set: set lengths apply, a different k/template/BOS/pooling is an
    error naming the option and the saved value; the same value set explicitly is fine."""
    _, stage1_dir = stage1_checkpoint
    saved = EncoderSettings.load(stage1_dir)
    trainer = CDATrainer(
        model=str(stage1_dir), args=make_config(CDAConfig, tmp_path, max_text_length=4, max_instruction_length=40)
    )
    assert trainer.encoder_settings == replace(saved, max_text_length=4, max_instruction_length=40)
    trainer.data_collator(triplet_rows(1))
    assert trainer.data_collator.truncations["text"] > 0  # the new length is the one in use
    unset = {"max_text_length": None, "max_instruction_length": None}
    assert CDATrainer(model=str(stage1_dir), args=make_config(CDAConfig, tmp_path, **unset)).encoder_settings == saved
    same = {"template": saved.template, "pooling": saved.pooling, "add_bos": saved.add_bos}
    CDATrainer(model=str(stage1_dir), args=make_config(CDAConfig, tmp_path, **same))
    continued = CompressionTrainer(
        model=str(stage1_dir),
        args=CompressionConfig(output_dir=str(tmp_path / "again"), max_text_length=16, **QUIET_CPU_RUN),
    )
    assert continued.encoder_settings == replace(saved, max_text_length=16)

    refused = [
        ({"pooling": "compress_last"}, r"pooling='compress_last' differs .*trained with pooling='compress_mean'"),
        ({"add_bos": False}, r"add_bos=False differs .*trained with add_bos=True"),
        ({"template": "{instruction}: {text}"}, r"template='\{instruction\}: \{text\}' differs"),
        ({"instruction_position": "before_text"}, r"\(from instruction_position='before_text', recipe='paper'\)"),
        ({"recipe": "official"}, r"template='\{text\}\\n\{instruction\}\\n' \(from recipe='official'\) differs"),
    ]
    for options, pattern in refused:
        with pytest.raises(ValueError, match=pattern + ".*leave it unset"):
            CDATrainer(model=str(stage1_dir), args=make_config(CDAConfig, tmp_path, **options))


def test_retrieval_instructions_are_the_papers():
    retrieval = INSTRUCTION_PRESETS["retrieval"]
    assert retrieval["next"] == "Use one word to represent the query in a retrieval task. The word is: “"
    assert retrieval["self"] == "Use one word to represent the passage in a retrieval task. The word is: “"
    assert retrieval["prev"] == "Use a word to express the question that this article can answer:“"
    assert all(text.endswith("“") for preset in INSTRUCTION_PRESETS.values() for text in preset.values())


LIST_ROWS = [
    {"query": "Cats purr.", "pos": ["A cat is content."], "neg": ["Cars need fuel."], "id": 0},
    {"query": "Dogs bark.", "pos": ["A dog is loud.", "Dogs make noise."], "neg": ["Fish swim."], "id": 1},
]


def test_a_list_of_positives_gives_one_row_per_positive_or_its_first(tmp_path, tokenizer):
    each = one_positive_per_row(Dataset.from_list(LIST_ROWS))
    assert [(row["query"], row["pos"], row["neg"], row["id"]) for row in each] == [
        ("Cats purr.", "A cat is content.", ["Cars need fuel."], 0),
        ("Dogs bark.", "A dog is loud.", ["Fish swim."], 1),
        ("Dogs bark.", "Dogs make noise.", ["Fish swim."], 1),
    ]
    first = one_positive_per_row(Dataset.from_list(LIST_ROWS), "first")
    assert first["pos"] == ["A cat is content.", "A dog is loud."]
    strings = Dataset.from_list(triplet_rows(2))
    assert one_positive_per_row(strings) is strings

    trainer = make_trainer(CDATrainer, tmp_path, tokenizer, rows=LIST_ROWS, eval_rows=LIST_ROWS)
    assert trainer.train_dataset["pos"] == each["pos"] and trainer.eval_dataset["pos"] == each["pos"]
    assert trainer.train().training_loss > 0
    with pytest.raises(DataValidationError, match=r"Column 'pos', row 1: 2 positives.*one_positive_per_row"):
        trainer.data_collator(LIST_ROWS)
    assert (
        make_trainer(CDATrainer, tmp_path, tokenizer, rows=LIST_ROWS, positives="first").train_dataset["pos"]
        == first["pos"]
    )
    bad = [dict(LIST_ROWS[0]), dict(LIST_ROWS[1], pos=[])]
    with pytest.raises(DataValidationError, match=r"Column 'pos', row 1: expected a string or a non-empty list"):
        make_trainer(CDATrainer, tmp_path, tokenizer, rows=bad)


@pytest.mark.parametrize(
    ("option", "pattern"),
    [
        ({"strategy": 7}, r"strategy must be one of \[0, 1, 2, 3, 4\], got 7"),
        ({"bound": "relu"}, r"bound must be one of .*'sigmoid'.*got 'relu'"),
        ({"temperature": 0}, r"temperature must be > 0"),
        ({"temperature": -0.1}, r"temperature must be > 0"),
        ({"beta": 0}, r"beta must be > 0"),
        ({"similarity": "kl", "strategy": 1}, r"similarity='kl' is the paper's variant .* no strategy 1"),
        ({"similarity": "js", "strategy": 3}, r"similarity='js' is the paper's variant .* no strategy 3"),
        ({"multi_negative": "max"}, r"multi_negative must be one of"),
        ({"positives": "all"}, r"positives must be one of"),
        ({"recipe": "mine"}, r"recipe must be one of \['paper', 'official'\]"),
        ({"similarity": "cosine"}, r"similarity must be one of"),
        ({"reference_sign": "minus"}, r"reference_sign must be one of"),
        ({"instructions": "chat"}, r"instructions must be one of"),
        ({"max_target_length": 0}, r"max_target_length must be >= 1"),
    ],
)
def test_invalid_options_raise_at_config_creation(tmp_path, option, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_config(CDAConfig, tmp_path, **option)


# ---- 10. the real model, stage 1 then stage 2 ----------------------------------------------------------------


@requires_shared_data
@pytest.mark.slow
def test_stage1_then_stage2_on_the_real_model(tmp_path, default_model_dir):
    common = dict(
        max_steps=2,
        per_device_train_batch_size=2,
        max_text_length=48,
        max_instruction_length=48,
        max_target_length=48,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        logging_steps=1,
    )
    compression_rows = Dataset.from_json(str(SHARED_DATA / "compression" / "xquad_en.jsonl")).select(range(4))
    stage1 = CompressionTrainer(
        model=None,
        args=CompressionConfig(output_dir=str(tmp_path / "stage1-out"), learning_rate=1e-4, **common),
        train_dataset=compression_rows,
    )
    stage1.train()
    stage1_losses = [entry["loss"] for entry in stage1.state.log_history if "loss" in entry]
    assert len(stage1_losses) == 2 and all(math.isfinite(loss) for loss in stage1_losses)
    checkpoint = tmp_path / "stage1"
    stage1.save_model(str(checkpoint))
    del stage1

    nli = Dataset.from_json(str(SHARED_DATA / "nli" / "medi_nli.jsonl")).select(range(4))
    nli = nli.select_columns(["query", "pos", "neg"])
    stage2 = CDATrainer(
        model=str(checkpoint),
        args=CDAConfig(output_dir=str(tmp_path / "stage2-out"), learning_rate=1e-5, **common),
        train_dataset=nli,
    )
    decoder = stage2.frozen_decoder.model
    original = AutoModelForCausalLM.from_pretrained(default_model_dir)
    trained = AutoModelForCausalLM.from_pretrained(checkpoint)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(decoder.state_dict()[name], original.state_dict()[name])
    assert not torch.equal(trained.state_dict()[name], original.state_dict()[name])
    assert all(torch.equal(p, original.state_dict()[n]) for n, p in decoder.state_dict().items())
    del original, trained
    stage2.train()
    losses = [entry["loss"] for entry in stage2.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert stage2.state.global_step == 2


def test_template_without_instruction_slot_rejects_instructions(tmp_path):
    layout = 'This sentence : "{text}" means in one word:"'
    with pytest.raises(ValueError, match=r"instruction_next: The template .* has no \{instruction\} slot"):
        CDAConfig(output_dir=str(tmp_path), report_to="none", template=layout)
    empty = {f"instruction_{key}": "" for key in ("next", "self", "prev")}
    assert CDAConfig(output_dir=str(tmp_path), report_to="none", template=layout, **empty).template == layout
