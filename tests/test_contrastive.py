"""The InfoNCE baseline: the loss against a hand-written loop, its gradient signs, the collator's row layout, and
ContrastiveTrainer (batched loss vs row-by-row encoding, training, metrics, saving, LoRA and errors)."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from helpers import make_config, make_trainer, triplet_rows
from peft import LoraConfig

import autoreg_embed
from autoreg_embed import ContrastiveConfig, ContrastiveTrainer, EncoderInputBuilder, EncoderSettings, encode
from autoreg_embed.data.collators import ContrastiveCollator
from autoreg_embed.data.instructions import INSTRUCTION_PRESETS
from autoreg_embed.data.schema import DataValidationError
from autoreg_embed.losses.contrastive import info_nce_loss
from autoreg_embed.trainers.base_trainer import mean_pairwise_cosine

RETRIEVAL = INSTRUCTION_PRESETS["retrieval"]
"""Distinct I_next / I_self, so that a query row and a document row of the same text differ."""
LORA_MODULES = ["q_proj", "v_proj"]


# ---- 1. info_nce_loss against a float64 loop ------------------------------------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def reference_info_nce(queries, positives, negatives, temperature: float, in_batch_negatives: bool) -> float:
    """``mean_b -log(exp(s(q_b, d+_b)/t) / sum_d exp(s(q_b, d)/t))``, one query and one candidate at a time."""
    q, p = queries.double().tolist(), positives.double().tolist()
    n = [] if negatives is None else negatives.double().tolist()
    every_document = p + [vector for row in n for vector in row]  # gathered rows included
    losses = []
    for b, query in enumerate(q):
        # in-batch: every positive and every hard negative; otherwise its own positive and hard negatives only
        candidates = every_document if in_batch_negatives else [p[b], *(n[b] if n else [])]
        positive = cosine(query, p[b]) / temperature
        log_denominator = math.log(sum(math.exp(cosine(query, d) / temperature) for d in candidates))
        losses.append(log_denominator - positive)
    return sum(losses) / len(losses)


LOSS_CASES = [  # (in_batch_negatives, hard negatives per query, extra gathered candidate rows)
    pytest.param(True, 0, 0, id="in-batch"),
    pytest.param(True, 1, 0, id="in-batch+1-hard"),
    pytest.param(True, 2, 0, id="in-batch+2-hard"),
    pytest.param(False, 1, 0, id="own-only+1-hard"),
    pytest.param(False, 2, 0, id="own-only+2-hard"),
    pytest.param(True, 0, 3, id="in-batch+gathered"),
    pytest.param(True, 2, 3, id="in-batch+2-hard+gathered"),
    pytest.param(False, 2, 3, id="own-only+2-hard+gathered-ignored"),
]


@pytest.mark.parametrize(("in_batch", "num_negatives", "extra"), LOSS_CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_info_nce_matches_the_float64_loop(in_batch, num_negatives, extra, seed):
    generator = torch.Generator().manual_seed(seed)
    batch, hidden = 4, 8
    queries = torch.randn(batch, hidden, generator=generator)
    positives = torch.randn(batch + extra, hidden, generator=generator)
    positives[:batch] += queries  # positives similar to their queries, as after some training
    negatives = torch.randn(batch + extra, num_negatives, hidden, generator=generator) if num_negatives else None
    for temperature in (0.05, 0.7):
        loss = info_nce_loss(queries, positives, negatives, temperature=temperature, in_batch_negatives=in_batch)
        expected = reference_info_nce(queries, positives, negatives, temperature, in_batch)
        assert loss.dim() == 0
        assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_info_nce_does_not_depend_on_embedding_norms():
    generator = torch.Generator().manual_seed(3)
    queries, positives = torch.randn(3, 8, generator=generator), torch.randn(3, 8, generator=generator)
    negatives = torch.randn(3, 2, 8, generator=generator)
    scales = torch.rand(3, 1, generator=generator) * 10 + 0.1
    loss = info_nce_loss(queries, positives, negatives)
    scaled = info_nce_loss(queries * scales, positives / scales, negatives * scales[:, :, None])
    assert scaled.item() == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize("temperature", [0.0, -0.05])
def test_info_nce_rejects_a_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        info_nce_loss(torch.randn(2, 4), torch.randn(2, 4), temperature=temperature)


def test_info_nce_rejects_fewer_positives_than_queries():
    with pytest.raises(ValueError, match=r"Got 3 queries but only 2 positives"):
        info_nce_loss(torch.randn(3, 4), torch.randn(2, 4))


# ---- 2. gradient signs --------------------------------------------------------------------------------------


def direction_changing_one_similarity(query: torch.Tensor, candidate: torch.Tensor, others: torch.Tensor):
    """A direction v such that moving ``candidate`` along v raises its cosine with ``query`` and, to first order,
    leaves its cosine with every row of ``others`` unchanged (v is orthogonal to ``others`` and to ``candidate``)."""
    basis, _ = torch.linalg.qr(torch.cat([others, candidate[None]]).T)
    direction = query - basis @ (basis.T @ query)
    assert direction.norm() > 1e-3
    return direction


@pytest.mark.parametrize("in_batch", [True, False])
def test_raising_a_positive_similarity_lowers_the_loss_and_a_negative_one_raises_it(in_batch):
    generator = torch.Generator().manual_seed(0)
    batch, num_negatives, hidden = 3, 2, 16
    queries = torch.randn(batch, hidden, generator=generator, dtype=torch.float64)
    positives = torch.randn(batch, hidden, generator=generator, dtype=torch.float64).requires_grad_()
    negatives = torch.randn(batch, num_negatives, hidden, generator=generator, dtype=torch.float64).requires_grad_()
    loss = info_nce_loss(queries, positives, negatives, temperature=0.1, in_batch_negatives=in_batch)
    grad_positives, grad_negatives = torch.autograd.grad(loss, [positives, negatives])
    checked = 0
    for b in range(batch):
        others = torch.cat([queries[:b], queries[b + 1 :]])
        # d loss / d eps of candidate + eps * v: the change of the loss when only s(q_b, candidate) rises
        v = direction_changing_one_similarity(queries[b], positives[b].detach(), others)
        assert float(grad_positives[b] @ v) < 0, b
        for j in range(num_negatives):
            v = direction_changing_one_similarity(queries[b], negatives[b, j].detach(), others)
            assert float(grad_negatives[b, j] @ v) > 0, (b, j)
            checked += 1
        for c in range(batch):  # another query's positive is an (in-batch) negative of query b
            if c == b:
                continue
            v = direction_changing_one_similarity(queries[b], positives[c].detach(), others)
            derivative = float(grad_positives[c] @ v)
            assert derivative > 0 if in_batch else abs(derivative) < 1e-6, (b, c, derivative)
    assert checked == batch * num_negatives


def test_moving_the_positive_towards_its_query_lowers_the_loss():
    generator = torch.Generator().manual_seed(1)
    queries, positives = torch.randn(1, 8, generator=generator), torch.randn(1, 8, generator=generator)
    negatives = torch.randn(1, 2, 8, generator=generator)
    loss = info_nce_loss(queries, positives, negatives)
    closer_positive = info_nce_loss(queries, positives + 0.3 * queries, negatives)
    closer_negative = info_nce_loss(queries, positives, negatives + 0.3 * queries[:, None])
    assert closer_positive < loss < closer_negative


# ---- 3. ContrastiveCollator -----------------------------------------------------------------------------------

K = 2


def make_collator(tokenizer, num_compress_tokens: int = K) -> ContrastiveCollator:
    settings = EncoderSettings(num_compress_tokens=num_compress_tokens)
    tokenizer.add_tokens(settings.compress_tokens, special_tokens=True)
    return ContrastiveCollator(EncoderInputBuilder(tokenizer, settings), RETRIEVAL["next"], RETRIEVAL["self"])


def encoder_texts(batch, tokenizer) -> list[str]:
    """Each row's text between BOS and the K compress tokens (checking both)."""
    compress = tokenizer.convert_tokens_to_ids([f"<EMBED{i}>" for i in range(K)])
    texts = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
        ids = ids[mask.bool()].tolist()
        assert ids[0] == tokenizer.bos_token_id and ids[-K:] == compress
        texts.append(tokenizer.decode(ids[1:-K]))
    return texts


def test_collator_orders_queries_positives_then_negatives_row_major(tokenizer):
    collator = make_collator(tokenizer)
    rows = triplet_rows(3, num_negatives=2)
    batch = collator(rows)
    assert int(batch["num_negatives"]) == 2
    assert batch["input_ids"].shape[0] == batch["attention_mask"].shape[0] == 3 * (2 + 2)
    expected = (
        [f"{row['query']}\n{RETRIEVAL['next']}" for row in rows]
        + [f"{row['pos']}\n{RETRIEVAL['self']}" for row in rows]
        + [f"{negative}\n{RETRIEVAL['self']}" for row in rows for negative in row["neg"]]
    )
    assert encoder_texts(batch, tokenizer) == expected


def test_collator_without_negatives_and_with_a_single_string_negative(tokenizer):
    collator = make_collator(tokenizer)
    rows = [{"query": row["query"], "pos": row["pos"]} for row in triplet_rows(2)]
    batch = collator(rows)
    assert int(batch["num_negatives"]) == 0
    assert encoder_texts(batch, tokenizer) == [
        f"{rows[0]['query']}\n{RETRIEVAL['next']}",
        f"{rows[1]['query']}\n{RETRIEVAL['next']}",
        f"{rows[0]['pos']}\n{RETRIEVAL['self']}",
        f"{rows[1]['pos']}\n{RETRIEVAL['self']}",
    ]
    single = [dict(row, neg=f"Lone negative {i}.") for i, row in enumerate(rows)]
    batch = collator(single)
    assert int(batch["num_negatives"]) == 1
    assert encoder_texts(batch, tokenizer)[4:] == [f"Lone negative {i}.\n{RETRIEVAL['self']}" for i in range(2)]


def test_collator_rejects_rows_with_different_numbers_of_negatives(tokenizer):
    collator = make_collator(tokenizer)
    rows = triplet_rows(2, num_negatives=2)
    rows[1]["neg"] = ["Only one negative."]
    with pytest.raises(DataValidationError, match=r"different numbers of negatives \[1, 2\]"):
        collator(rows)
    with pytest.raises(DataValidationError, match=r"different numbers of negatives \[0, 2\]"):
        collator([triplet_rows(1, 2)[0], {"query": "A query.", "pos": "A positive."}])


def test_collator_names_column_and_row_of_bad_text(tokenizer):
    collator = make_collator(tokenizer)
    rows = triplet_rows(3)
    rows[2]["pos"] = " "
    with pytest.raises(DataValidationError, match=r"Column 'pos', row 2: empty text"):
        collator(rows)


# ---- 4. ContrastiveTrainer: the batched loss against row-by-row encoding ---------------------------------------


def row_by_row_embeddings(trainer: ContrastiveTrainer, texts: list[str], instruction: str) -> torch.Tensor:
    builder = EncoderInputBuilder(trainer.processing_class, trainer.encoder_settings)
    embeddings = []
    with torch.no_grad():
        for text in texts:  # batch of one: no padding at all
            inputs = builder([text], [instruction])
            embeddings.append(encode(trainer.model, **inputs, settings=trainer.encoder_settings).embedding[0])
    return torch.stack(embeddings)


@pytest.mark.parametrize(
    ("k", "pooling", "in_batch"),
    [(5, "compress_mean", True), (0, "last", True), (5, "compress_mean", False)],
)
def test_compute_loss_equals_info_nce_of_row_by_row_embeddings(tmp_path, tokenizer, k, pooling, in_batch):
    rows = triplet_rows(3, num_negatives=2)
    trainer = make_trainer(
        ContrastiveTrainer,
        tmp_path,
        tokenizer,
        num_compress_tokens=k,
        pooling=pooling,
        in_batch_negatives=in_batch,
        temperature=0.1,
    )
    assert trainer.encoder_settings.num_compress_tokens == k and trainer.encoder_settings.pooling == pooling
    queries = row_by_row_embeddings(trainer, [row["query"] for row in rows], RETRIEVAL["next"])
    positives = row_by_row_embeddings(trainer, [row["pos"] for row in rows], RETRIEVAL["self"])
    negatives = row_by_row_embeddings(trainer, [n for row in rows for n in row["neg"]], RETRIEVAL["self"])
    negatives = negatives.view(3, 2, -1)
    expected = info_nce_loss(queries, positives, negatives, temperature=0.1, in_batch_negatives=in_batch)

    batch = trainer.data_collator(rows)
    assert batch["attention_mask"].sum(1).unique().numel() > 1  # padded rows: the comparison is not vacuous
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    embeddings = torch.cat([queries, positives, negatives.flatten(0, 1)])
    torch.testing.assert_close(outputs["embedding"], embeddings, rtol=0, atol=1e-5)
    metrics = trainer._metrics["eval"]  # the model is in eval mode outside train()
    assert metrics["cosine/positive"][-1] == pytest.approx((queries * positives).sum(-1).mean().item(), abs=1e-5)
    expected_negative = torch.einsum("bh,bnh->bn", queries, negatives).mean().item()
    assert metrics["cosine/negative"][-1] == pytest.approx(expected_negative, abs=1e-5)
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]  # the collapse alarm: the queries' spread
    expected_spread = sum(float(queries[i].double() @ queries[j].double()) for i, j in pairs) / len(pairs)
    assert metrics["embeddings/mean_cosine"][-1] == pytest.approx(expected_spread, abs=1e-6)


def test_in_batch_negatives_change_the_loss(tmp_path, tokenizer):
    rows = triplet_rows(4, num_negatives=1)
    losses = {}
    for in_batch in (True, False):
        trainer = make_trainer(ContrastiveTrainer, tmp_path, tokenizer, in_batch_negatives=in_batch)
        with torch.no_grad():
            losses[in_batch] = trainer.compute_loss(trainer.model, trainer.data_collator(rows)).item()
    assert all(math.isfinite(loss) for loss in losses.values())
    # more candidates in the denominator: strictly larger loss
    assert losses[True] > losses[False] + 1e-3, losses


def test_rows_without_negatives_use_in_batch_negatives_only(tmp_path, tokenizer):
    rows = [{"query": row["query"], "pos": row["pos"]} for row in triplet_rows(3)]
    trainer = make_trainer(ContrastiveTrainer, tmp_path, tokenizer, rows=rows)
    queries = row_by_row_embeddings(trainer, [row["query"] for row in rows], RETRIEVAL["next"])
    positives = row_by_row_embeddings(trainer, [row["pos"] for row in rows], RETRIEVAL["self"])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, trainer.data_collator(rows))
    expected = info_nce_loss(queries, positives, temperature=trainer.args.temperature)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert "cosine/negative" not in trainer._metrics["eval"]


# ---- 5. training, metrics and saving ----------------------------------------------------------------------------


def test_loss_falls_when_overfitting_and_the_saved_model_embeds_like_the_trainer(tmp_path, tokenizer):
    rows = triplet_rows(16)
    trainer = make_trainer(
        ContrastiveTrainer,
        tmp_path,
        tokenizer,
        rows=rows,
        max_steps=-1,
        num_train_epochs=3,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
    )
    output = trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == 6 and len(logs) == 6
    losses = [entry["loss"] for entry in logs]
    assert all(math.isfinite(loss) for loss in losses) and math.isfinite(output.training_loss)
    assert losses[-1] < losses[0] - 0.3, losses
    for entry in logs:
        assert {"cosine/positive", "cosine/negative", "embeddings/mean_cosine"} <= entry.keys(), entry
        assert -1.0 <= entry["cosine/negative"] <= 1.0 and -1.0 <= entry["cosine/positive"] <= 1.0
    margins = [entry["cosine/positive"] - entry["cosine/negative"] for entry in logs]
    assert margins[-1] > margins[0], margins  # positives pulled closer than the hard negatives
    metrics = trainer.evaluate(Dataset.from_list(rows[:4]))
    assert math.isfinite(metrics["eval_loss"])
    assert {"eval_cosine/positive", "eval_cosine/negative"} <= metrics.keys()

    final = tmp_path / "final"
    trainer.save_model(str(final))
    st = autoreg_embed.load(final, device="cpu")
    texts = [rows[0]["query"], rows[5]["pos"], "A sentence it never saw."]
    query_expected = row_by_row_embeddings(trainer, texts, RETRIEVAL["next"])
    document_expected = row_by_row_embeddings(trainer, texts, RETRIEVAL["self"])
    query = st.encode_query(texts, convert_to_tensor=True)
    document = st.encode_document(texts, convert_to_tensor=True)
    torch.testing.assert_close(query.float(), query_expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(document.float(), document_expected, rtol=0, atol=1e-5)
    assert (query - document).abs().max() > 1e-4  # the two prompts really differ
    untrained = make_trainer(ContrastiveTrainer, tmp_path, tokenizer)
    assert (row_by_row_embeddings(untrained, texts, RETRIEVAL["self"]) - document).abs().max() > 1e-4


# ---- 6. LoRA --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "pooling"),
    [
        (5, "compress_mean"),
        (0, "last"),
    ],
)
def test_lora_trains_only_the_adapters_and_compress_rows(tmp_path, tokenizer, k, pooling):
    rows = triplet_rows(4)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_MODULES, init_lora_weights=False)
    trainer = make_trainer(
        ContrastiveTrainer,
        tmp_path,
        tokenizer,
        rows=rows,
        peft_config=lora,
        num_compress_tokens=k,
        pooling=pooling,
        learning_rate=1e-2,
    )
    model = trainer.model
    # with k = 0, PEFT still wraps the embeddings with an empty (0, H) trainable-tokens delta: nothing to train
    trainable = {name for name, p in model.named_parameters() if p.requires_grad and p.numel()}
    assert trainable and all(".lora_" in name or "trainable_tokens" in name for name in trainable), trainable
    assert any(".lora_" in name for name in trainable)
    assert any("trainable_tokens" in name for name in trainable) == (k > 0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p.detach())}
    assert changed == trainable


# ---- 7. bad input and configuration -------------------------------------------------------------------------


def test_missing_pos_column_is_an_error(tmp_path, tokenizer):
    rows = [{"query": row["query"], "neg": row["neg"]} for row in triplet_rows(3)]
    with pytest.raises(DataValidationError, match=r"train_dataset is missing column\(s\) \['pos'\]"):
        make_trainer(ContrastiveTrainer, tmp_path, tokenizer, rows=rows)


def test_empty_query_names_column_and_row(tmp_path, tokenizer):
    rows = triplet_rows(3)
    rows[1]["query"] = "  "
    with pytest.raises(DataValidationError, match=r"Column 'query', row 1: empty text"):
        make_trainer(ContrastiveTrainer, tmp_path, tokenizer, rows=rows)
    rows = triplet_rows(3)
    rows[2]["neg"] = []
    with pytest.raises(DataValidationError, match=r"Column 'neg', row 2"):
        make_trainer(ContrastiveTrainer, tmp_path, tokenizer, rows=rows)


@pytest.mark.parametrize(
    ("option", "pattern"),
    [
        ({"temperature": 0}, r"temperature must be > 0, got 0"),
        ({"temperature": -0.1}, r"temperature must be > 0"),
        ({"instructions": "chat"}, r"instructions must be one of"),
        ({"num_compress_tokens": 0}, r"pooling='compress_mean' needs num_compress_tokens >= 1"),
    ],
)
def test_invalid_options_raise_at_config_creation(tmp_path, option, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_config(ContrastiveConfig, tmp_path, **option)


def test_mean_pairwise_cosine_equals_a_float64_loop_and_flags_a_collapse():
    torch.manual_seed(0)
    embeddings = torch.randn(5, 7) * torch.arange(1, 6)[:, None]  # unnormalised rows of different lengths
    unit = [row.double() / row.double().norm() for row in embeddings]
    expected = sum(float(unit[i] @ unit[j]) for i in range(5) for j in range(5) if i != j) / 20
    assert mean_pairwise_cosine(embeddings).item() == pytest.approx(expected, abs=1e-12)
    assert mean_pairwise_cosine(embeddings[:1].expand(4, -1)).item() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 rows"):
        mean_pairwise_cosine(embeddings[:1])
