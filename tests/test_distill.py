"""InstEmb (DistillTrainer): the loss components against float64 transcriptions of their equations, DAAP pooling,
the collator's layout, the trainer's loss against row-by-row encoding, gradients, the teacher sources, saving and
loading through every path, and bad input."""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
from datasets import Dataset
from helpers import (
    QUIET_CPU_RUN,
    SHARED_DATA,
    TINY_RUNS,
    distill_rows,
    make_config,
    make_tiny_model,
    make_trainer,
    requires_shared_data,
)
from peft import LoraConfig
from sentence_transformers import SentenceTransformer

import autoreg_embed
from autoreg_embed import (
    ContrastiveConfig,
    ContrastiveTrainer,
    DistillConfig,
    DistillTrainer,
    EncoderInputBuilder,
    EncoderSettings,
    add_compress_tokens,
    encode,
)
from autoreg_embed.data.distill_collator import DistillCollator, TeacherInputBuilder
from autoreg_embed.data.schema import DataValidationError
from autoreg_embed.losses.contrastive import info_nce_loss
from autoreg_embed.losses.distillation import (
    instemb_loss,
    output_span_targets,
    representation_distillation_loss,
)
from autoreg_embed.modeling.encoder import daap_pool, last_token_positions
from autoreg_embed.modeling.settings import SETTINGS_FILE
from autoreg_embed.trainers.distill_trainer import PROJECTION_FILE, input_embedding_dropout

M = TINY_RUNS[DistillConfig]["num_compress_tokens"]
"""Soft prompts in the tests' trainers."""
LORA_MODULES = ["q_proj", "v_proj"]

make_distill_trainer = partial(make_trainer, DistillTrainer)
"""A DistillTrainer on a tiny Llama with the shared tiny-run options (``tokenizer`` is copied)."""


# ---- 1. the loss components against float64 loops --------------------------------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def reference_distillation(student, teacher, mask, metric: str) -> float:
    """mean over counted states of 1 - cos(s, t) or mean_h (s_h - t_h)^2, one state at a time."""
    s, t = student.double().tolist(), teacher.double().tolist()
    if student.dim() == 2:
        s, t = [[row] for row in s], [[row] for row in t]
        mask = [[1] for _ in s]
    else:
        mask = mask.tolist()
    total, count = 0.0, 0
    for b in range(len(s)):
        for j in range(len(s[b])):
            if not mask[b][j]:
                continue
            if metric == "cosine":
                total += 1.0 - cosine(s[b][j], t[b][j])
            else:
                total += sum((x - y) ** 2 for x, y in zip(s[b][j], t[b][j], strict=True)) / len(s[b][j])
            count += 1
    return total / count


@pytest.mark.parametrize("metric", ["cosine", "mse"])
@pytest.mark.parametrize("positions", [False, True])
def test_distillation_loss_matches_the_float64_loop(metric, positions):
    generator = torch.Generator().manual_seed(0)
    shape = (4, M, 8) if positions else (4, 8)
    student, teacher = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator) * 3
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]]) if positions else None
    loss = representation_distillation_loss(student, teacher, mask, metric)
    assert loss.item() == pytest.approx(reference_distillation(student, teacher, mask, metric), rel=1e-6, abs=1e-6)


def test_distillation_loss_gives_the_teacher_no_gradient_and_rejects_bad_input():
    student = torch.randn(2, 8, requires_grad=True)
    teacher = torch.randn(2, 8, requires_grad=True)
    representation_distillation_loss(student, teacher).backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(ValueError, match="metric must be one of"):
        representation_distillation_loss(student, teacher, metric="l1")
    with pytest.raises(ValueError, match=r"student states \(2, 8\) and teacher targets \(2, 4\) differ"):
        representation_distillation_loss(student, teacher[:, :4])


def test_output_span_targets_match_a_loop():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 9, 5, generator=generator)
    spans = [(2, 7), (4, 5), (6, 8)]  # 5, 1 and 2 output tokens
    mask = torch.zeros(3, 9, dtype=torch.long)
    for row, (start, stop) in enumerate(spans):
        mask[row, start:stop] = 1
    targets = output_span_targets(hidden, mask, num_positions=M)
    for row, (start, stop) in enumerate(spans):
        expected_mean = [sum(hidden[row, t, h].item() for t in range(start, stop)) / (stop - start) for h in range(5)]
        assert targets.mean[row].tolist() == pytest.approx(expected_mean, abs=1e-6)
        for j in range(M):
            present = start + j < stop
            assert targets.position_mask[row, j].item() == int(present)
            expected = hidden[row, start + j] if present else torch.zeros(5)
            torch.testing.assert_close(targets.positions[row, j], expected)
    with pytest.raises(ValueError, match="at least one output token"):
        output_span_targets(hidden, torch.zeros(3, 9, dtype=torch.long), M)


def reference_info_nce(anchors, positives, negatives, temperature: float) -> float:
    """mean_b -log(exp(cos(a_b, p_b)/t) / sum over every positive and hard negative of exp(cos(a_b, d)/t))."""
    a, p = anchors.double().tolist(), positives.double().tolist()
    documents = p + ([] if negatives is None else [d for row in negatives.double().tolist() for d in row])
    losses = []
    for b, anchor in enumerate(a):
        log_denominator = math.log(sum(math.exp(cosine(anchor, d) / temperature) for d in documents))
        losses.append(log_denominator - cosine(anchor, p[b]) / temperature)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("projected", [False, True])
@pytest.mark.parametrize("position_target", [False, True])
def test_instemb_loss_matches_its_equation_in_float64(projected, position_target):
    """L = w_c * mean_v InfoNCE(a, P_v, N_v) + w_d * D(s, t); the teacher view takes the projection, no negatives."""
    generator = torch.Generator().manual_seed(2)
    batch, hidden, teacher_hidden, temperature = 4, 6, 10 if projected else 6, 0.1
    anchors = torch.randn(batch, hidden, generator=generator)
    soft_states = torch.randn(batch, M, hidden, generator=generator)
    views = {
        "dropout": anchors + 0.3 * torch.randn(batch, hidden, generator=generator),
        "output": torch.randn(batch, hidden, generator=generator) + anchors,
        "teacher": torch.randn(batch, teacher_hidden, generator=generator),
    }
    negatives = torch.randn(batch, 2, hidden, generator=generator)
    weight = torch.randn(teacher_hidden, hidden, generator=generator) if projected else None
    project = (lambda states: states @ weight.T) if projected else None
    if position_target:
        target = torch.randn(batch, M, teacher_hidden, generator=generator)
        mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    else:
        target, mask = torch.randn(batch, teacher_hidden, generator=generator), None
    output = instemb_loss(
        anchors,
        views,
        soft_states,
        target,
        mask,
        negatives,
        temperature=temperature,
        contrastive_weight=0.7,
        distillation_weight=1.3,
        distillation_metric="cosine",
        projection=project,
    )

    def to_teacher_space(states):
        return states.double() @ weight.double().T if projected else states.double()

    expected_views = {
        "dropout": reference_info_nce(anchors, views["dropout"], negatives, temperature),
        "output": reference_info_nce(anchors, views["output"], negatives, temperature),
        "teacher": reference_info_nce(to_teacher_space(anchors), views["teacher"], None, temperature),
    }
    student = to_teacher_space(soft_states if position_target else soft_states.double().mean(dim=1))
    expected_distillation = reference_distillation(student, target, mask, "cosine")
    for view, value in expected_views.items():
        assert output.contrastive[view].item() == pytest.approx(value, rel=1e-5, abs=1e-6), view
    assert output.distillation.item() == pytest.approx(expected_distillation, rel=1e-5, abs=1e-6)
    expected = 0.7 * sum(expected_views.values()) / 3 + 1.3 * expected_distillation
    assert output.loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert output.distillation_cosine.item() == pytest.approx(1 - expected_distillation, abs=1e-6)
    expected_cosines = [cosine(a, p) for a, p in zip(anchors.tolist(), views["output"].tolist(), strict=True)]
    assert output.positive_cosine["output"].tolist() == pytest.approx(expected_cosines, abs=1e-6)


def test_instemb_loss_without_a_component_and_with_nothing_to_optimise():
    anchors, positives = torch.randn(3, 4), {"output": torch.randn(3, 4)}
    only_contrastive = instemb_loss(anchors, positives, distillation_weight=0.0)
    assert only_contrastive.distillation is None
    assert only_contrastive.loss.item() == pytest.approx(info_nce_loss(anchors, positives["output"]).item())
    soft, target = torch.randn(3, 2, 4), torch.randn(3, 4)
    only_distillation = instemb_loss(anchors, {}, soft, target)
    assert only_distillation.loss.item() == pytest.approx(representation_distillation_loss(soft.mean(1), target).item())
    with pytest.raises(ValueError, match="nothing to optimise"):
        instemb_loss(anchors, {})
    with pytest.raises(ValueError, match="soft-prompt states"):
        instemb_loss(anchors, positives, None, target)


# ---- 2. DAAP pooling and the last-token position ---------------------------------------------------------------


@pytest.mark.parametrize("combination", ["concat", "sum"])
@pytest.mark.parametrize("weight", [0.5, 0.8])
def test_daap_pool_matches_its_definition_and_the_concat_cosine_identity(combination, weight):
    generator = torch.Generator().manual_seed(3)
    last, soft = torch.randn(2, 5, generator=generator), torch.randn(2, M, 5, generator=generator)
    pooled = daap_pool(last, soft, combination, weight).double()
    for b in range(2):
        anchor = last[b].double() / last[b].double().norm()
        mean = soft[b].double().mean(dim=0)
        mean = mean / mean.norm()
        if combination == "concat":
            expected = torch.cat([weight * anchor, (1 - weight) * mean])
        else:
            expected = weight * anchor + (1 - weight) * mean
        torch.testing.assert_close(pooled[b], expected, atol=1e-6, rtol=0)
    if combination == "concat":  # the cosine of two DAAP embeddings is a weighted mean of the anchors' cosines
        a = [row.double() / row.double().norm() for row in last]
        s = [row.double().mean(0) / row.double().mean(0).norm() for row in soft]
        expected = (weight**2 * float(a[0] @ a[1]) + (1 - weight) ** 2 * float(s[0] @ s[1])) / (
            weight**2 + (1 - weight) ** 2
        )
        similarity = float(torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0))
        assert similarity == pytest.approx(expected, abs=1e-6)


def test_daap_settings_validation_and_embedding_size():
    assert EncoderSettings(num_compress_tokens=2, pooling="daap").embedding_size(32) == 64
    assert EncoderSettings(num_compress_tokens=2, pooling="daap", daap_combination="sum").embedding_size(32) == 32
    assert EncoderSettings(num_compress_tokens=2).embedding_size(32) == 32
    for options, message in [
        ({"pooling": "daap", "num_compress_tokens": 0}, "'daap' needs num_compress_tokens >= 1"),
        ({"daap_combination": "max"}, "daap_combination must be one of"),
        ({"daap_weight": 1.0}, r"daap_weight must be in \(0, 1\)"),
        ({"last_token_position": "first"}, "last_token_position must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            EncoderSettings(**options)


@pytest.mark.parametrize("position", ["final", "before_compress"])
def test_last_token_position_and_what_it_can_see(tokenizer, position):
    """``final`` is the last soft prompt (it sees every soft prompt); ``before_compress`` the last instruction token,
    which under causal attention does not change when the soft-prompt embeddings do."""
    model = make_tiny_model("llama", tokenizer)
    settings = EncoderSettings(num_compress_tokens=M, pooling="daap", last_token_position=position)
    add_compress_tokens(model, tokenizer, settings)
    inputs = EncoderInputBuilder(tokenizer, settings)(["A short text.", "A longer text with more words."], "Why?")
    lengths = inputs["attention_mask"].sum(1)
    expected = lengths - 1 - (M if position == "before_compress" else 0)
    assert last_token_positions(inputs["attention_mask"], settings).tolist() == expected.tolist()
    with torch.no_grad():
        before = encode(model, **inputs, settings=settings)
        model.get_input_embeddings().weight[-M:] += 1.0  # move every soft-prompt row
        after = encode(model, **inputs, settings=settings)
    moved = (before.last_state - after.last_state).abs().max().item()
    assert (moved < 1e-6) if position == "before_compress" else (moved > 1e-3)
    hidden = model.model(**inputs).last_hidden_state.detach()
    rows = torch.arange(2)
    torch.testing.assert_close(after.last_state, hidden[rows, expected])
    pooled = daap_pool(hidden[rows, expected], hidden[rows[:, None], (lengths - M)[:, None] + torch.arange(M)])
    torch.testing.assert_close(after.embedding, torch.nn.functional.normalize(pooled, dim=-1))


# ---- 3. the collator ---------------------------------------------------------------------------------------------


def soft_ids(tokenizer) -> list[int]:
    return tokenizer.convert_tokens_to_ids([f"<EMBED{i}>" for i in range(M)])


def make_collator(tokenizer, **options) -> DistillCollator:
    settings = EncoderSettings(num_compress_tokens=M, pooling="daap")
    tokenizer.add_tokens(settings.compress_tokens, special_tokens=True)
    builder = EncoderInputBuilder(tokenizer, settings)
    teacher = TeacherInputBuilder(tokenizer, settings, "\n", max_output_length=options.pop("max_output_length", 32))
    return DistillCollator(builder, teacher_inputs=teacher, **options)


def real_tokens(ids, mask) -> list[int]:
    return ids[mask.bool()].tolist()


def test_collator_lays_out_queries_documents_and_teacher_inputs(tokenizer):
    collator = make_collator(tokenizer, output_instruction="Embed the answer", encode_pos=True)
    rows = distill_rows(4, num_negatives=2, pos=True)
    batch = collator(rows)
    bos, soft = tokenizer.bos_token_id, soft_ids(tokenizer)
    for b, row in enumerate(rows):
        ids = real_tokens(batch["input_ids"][b], batch["attention_mask"][b])
        assert ids[0] == bos and ids[-M:] == soft
        expected = row["text"] + (f"\n{row['instruction']}" if row["instruction"] else "")
        assert tokenizer.decode(ids[1:-M]) == expected
        teacher = real_tokens(batch["teacher_input_ids"][b], batch["teacher_attention_mask"][b])
        assert tokenizer.decode(teacher) == tokenizer.bos_token + expected + "\n" + row["output"]
        span = batch["teacher_output_mask"][b].bool()
        assert tokenizer.decode(batch["teacher_input_ids"][b][span]) == row["output"]
        assert batch["teacher_output_mask"][b].sum() < batch["teacher_attention_mask"][b].sum()
    documents = [row["output"] for row in rows] + [row["pos"] for row in rows]
    documents += [negative for row in rows for negative in row["neg"]]
    assert int(batch["num_negatives"]) == 2
    assert batch["document_input_ids"].shape[0] == len(documents) == 4 * 4
    for d, text in enumerate(documents):
        ids = real_tokens(batch["document_input_ids"][d], batch["document_attention_mask"][d])
        assert ids[0] == bos and ids[-M:] == soft
        assert tokenizer.decode(ids[1:-M]) == f"{text}\nEmbed the answer"


def test_collator_without_documents_truncates_outputs_and_counts_it(tokenizer):
    collator = make_collator(tokenizer, encode_outputs=False, max_output_length=2)
    rows = distill_rows(2)
    rows[1]["output"] = "a much longer answer than two tokens"
    batch = collator(rows)
    assert "document_input_ids" not in batch and "num_negatives" not in batch
    assert batch["teacher_output_mask"].sum(1).tolist() == [2, 2]
    assert collator.truncations["output"] == 1


def test_teacher_inputs_use_the_teacher_tokenizer(tokenizer):
    settings = EncoderSettings(num_compress_tokens=M)
    teacher_tokenizer = copy.deepcopy(tokenizer)
    teacher_tokenizer.add_tokens(["zzqqx"])  # one token for the teacher, several for the student
    builder = TeacherInputBuilder(teacher_tokenizer, settings)
    batch = builder(["The zzqqx sleeps."], ["Who?"], ["zzqqx"])
    new_id = teacher_tokenizer.convert_tokens_to_ids("zzqqx")
    assert batch["teacher_input_ids"][0][batch["teacher_output_mask"][0].bool()].tolist() == [new_id]
    assert new_id >= len(tokenizer)


@pytest.mark.parametrize(
    ("column", "value", "pattern"),
    [
        ("output", "  ", r"Column 'output', row 1: empty text"),
        ("text", "", r"Column 'text', row 1: empty text"),
        ("output", None, r"Column 'output', row 1: expected a string"),
        ("instruction", 3, r"Column 'instruction', row 1: expected a string"),
    ],
)
def test_collator_names_column_and_row_of_bad_text(tokenizer, column, value, pattern):
    rows = distill_rows(2)
    rows[1][column] = value
    with pytest.raises(DataValidationError, match=pattern):
        make_collator(tokenizer)(rows)


# ---- 4. the trainer's loss against row-by-row encoding -------------------------------------------------------


def row_states(model, builder: EncoderInputBuilder, text: str, instruction: str) -> torch.Tensor:
    """The unpadded last-layer states of one input (the model's own forward, no padding at all)."""
    ids = torch.tensor([builder.build([text], [instruction])[0]])
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]


@pytest.mark.parametrize("target", ["mean", "position"])
@pytest.mark.parametrize("metric", ["cosine", "mse"])
def test_compute_loss_equals_instemb_loss_of_row_by_row_states(tmp_path, tokenizer, target, metric):
    rows = distill_rows(4, num_negatives=1)
    trainer = make_distill_trainer(
        tmp_path,
        tokenizer,
        positive_views=["output", "teacher"],
        distillation_target=target,
        distillation_metric=metric,
        temperature=0.1,
        output_instruction="Answer:",
        contrastive_weight=0.5,
    )
    model, settings = trainer.model.eval(), trainer.encoder_settings
    builder = EncoderInputBuilder(trainer.processing_class, settings)
    no_soft_prompts = EncoderSettings(num_compress_tokens=0, pooling="last")
    teacher_builder = EncoderInputBuilder(trainer.processing_class, no_soft_prompts)
    newline = trainer.processing_class("\n", add_special_tokens=False)["input_ids"]
    anchors, soft, outputs, negatives, means, positions, masks = [], [], [], [], [], [], []
    for row in rows:
        states = row_states(model, builder, row["text"], row["instruction"])
        anchors.append(states[-M - 1])  # the default anchor: the last input token, just before the soft prompts
        soft.append(states[-M:])
        outputs.append(row_states(model, builder, row["output"], "Answer:")[-M - 1])
        negatives.append(row_states(model, builder, row["neg"][0], "Answer:")[-M - 1][None])
        output_ids = trainer.processing_class(row["output"], add_special_tokens=False)["input_ids"]
        ids = teacher_builder.build([row["text"]], [row["instruction"]])[0] + newline + output_ids
        with torch.no_grad():  # the teacher is the original model: at step 0 the student's weights
            hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        span = hidden[-len(output_ids) :]
        means.append(span.mean(dim=0))
        count = min(M, len(output_ids))
        positions.append(torch.cat([span[:count], torch.zeros(M - count, span.shape[-1])]))
        masks.append(torch.tensor([1] * count + [0] * (M - count)))
    teacher_target = torch.stack(means) if target == "mean" else torch.stack(positions)
    expected = instemb_loss(
        torch.stack(anchors),
        {"output": torch.stack(outputs), "teacher": torch.stack(means)},
        torch.stack(soft),
        teacher_target,
        None if target == "mean" else torch.stack(masks),
        torch.stack(negatives),
        temperature=0.1,
        contrastive_weight=0.5,
        distillation_metric=metric,
    )
    batch = trainer.data_collator(rows)
    assert batch["attention_mask"].sum(1).unique().numel() > 1  # padded rows: the comparison is not vacuous
    with torch.no_grad():
        loss, output = trainer.compute_loss(model, batch, return_outputs=True)
    assert loss.item() == pytest.approx(expected.loss.item(), rel=1e-5, abs=1e-6)
    for view in ("output", "teacher"):
        assert output.contrastive[view].item() == pytest.approx(expected.contrastive[view].item(), abs=1e-5)
    assert output.distillation.item() == pytest.approx(expected.distillation.item(), rel=1e-5, abs=1e-6)
    logged = trainer._metrics["eval"]
    assert {"loss/contrastive", "loss/contrastive_output", "loss/contrastive_teacher", "loss/distillation"} <= set(
        logged
    )
    assert {"cosine/positive_output", "cosine/negative", "distillation/cosine", "embeddings/mean_cosine"} <= set(logged)
    assert logged["loss/distillation"][-1] == pytest.approx(expected.distillation.item(), abs=1e-5)


def test_the_dropout_view_is_a_second_noisy_pass_of_the_query(tmp_path, tokenizer):
    rows = distill_rows(4)
    trainer = make_distill_trainer(tmp_path, tokenizer, positive_views=["dropout"], distillation_weight=0.0)
    batch = trainer.data_collator(rows)
    anchors = trainer.encode_batch(trainer.model, batch).last_state.detach()
    trainer.args.dropout_view_rate = 0.0  # no noise: the view is the anchor itself
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    assert loss.item() == pytest.approx(info_nce_loss(anchors, anchors, temperature=0.05).item(), abs=1e-5)
    trainer.args.dropout_view_rate = 0.5
    with torch.no_grad():
        noisy = trainer.compute_loss(trainer.model, batch)
    assert noisy.item() > loss.item() + 1e-3
    assert trainer._metrics["eval"]["cosine/positive_dropout"][-1] < 1 - 1e-4
    embeddings = trainer.model.get_input_embeddings()
    with input_embedding_dropout(embeddings, 0.5):
        assert (embeddings(batch["input_ids"]) == 0).any()
    torch.testing.assert_close(embeddings(batch["input_ids"]), embeddings.weight[batch["input_ids"]])  # hook gone


def test_last_token_only_distill_equals_contrastive_trainer_with_per_row_instructions(tmp_path, tokenizer):
    """No soft prompts, no distillation, the output view only: InfoNCE of question + text -> answer, exactly the
    ContrastiveTrainer's loss on (query=text, instruction_next=question, pos=output)."""
    rows = distill_rows(4, num_negatives=1)
    options = {"num_compress_tokens": 0, "pooling": "last", "temperature": 0.1}
    distill = make_distill_trainer(tmp_path, tokenizer, positive_views=["output"], distillation_weight=0.0, **options)
    contrastive = ContrastiveTrainer(
        model=make_tiny_model("llama", tokenizer),
        args=ContrastiveConfig(
            **QUIET_CPU_RUN, output_dir=str(tmp_path / "c"), instruction_self="", max_text_length=48, **options
        ),
        train_dataset=None,
        processing_class=copy.deepcopy(tokenizer),
    )
    contrastive_rows = [
        {"query": row["text"], "instruction_next": row["instruction"], "pos": row["output"], "neg": row["neg"]}
        for row in rows
    ]
    with torch.no_grad():
        expected = contrastive.compute_loss(contrastive.model, contrastive.data_collator(contrastive_rows))
        loss = distill.compute_loss(distill.model, distill.data_collator(rows))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ---- 5. gradients and the teacher's sources ----------------------------------------------------------------------


def trainable_names(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad and parameter.numel()}


def test_full_fine_tuning_the_teacher_is_a_frozen_copy_and_gets_no_gradient(tmp_path, tokenizer):
    trainer = make_distill_trainer(tmp_path, tokenizer)
    teacher = trainer.teacher.model
    assert teacher is not None and not teacher.training
    assert not {p.data_ptr() for p in teacher.parameters()} & {p.data_ptr() for p in trainer.model.parameters()}
    trainer.model.train()
    trainer.compute_loss(trainer.model, trainer.data_collator(distill_rows(4))).backward()
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    grads = {name: p.grad for name, p in trainer.model.named_parameters() if p.grad is not None}
    assert all(torch.count_nonzero(grads[f"model.{name}"]) for name, _ in trainer.model.model.named_parameters())
    embedding_grad = trainer.model.get_input_embeddings().weight.grad
    assert all(embedding_grad[i].abs().sum() > 0 for i in soft_ids(trainer.processing_class))


def test_frozen_backbone_moves_only_the_soft_prompt_rows(tmp_path, tokenizer):
    rows = distill_rows(8)
    trainer = make_distill_trainer(
        tmp_path,
        tokenizer,
        rows=rows,
        freeze_backbone=True,
        last_token_position="final",
        max_steps=3,
        learning_rate=1e-2,
    )
    model = trainer.model
    assert trainer.teacher.shares_policy_weights  # the adapter-disabled student: no copy
    assert trainable_names(model) == {"base_model.model.model.embed_tokens.trainable_tokens_delta.default"}
    base = copy.deepcopy(model).merge_and_unload().state_dict()  # at step 0 the trainable rows are a no-op
    with trainer.teacher() as teacher:
        batch = trainer.data_collator(rows[:4])
        before = trainer.teacher_targets(batch).mean.clone()
        assert teacher is model
    trainer.train()
    after = trainer.teacher_targets(trainer.data_collator(rows[:4])).mean
    torch.testing.assert_close(after, before)  # the teacher did not move
    merged = copy.deepcopy(model).merge_and_unload()
    changed_rows = set()
    for name, value in merged.state_dict().items():
        reference = base[name]
        if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            changed_rows |= set((value - reference).abs().sum(-1).nonzero().flatten().tolist())
        else:
            assert torch.equal(value, reference), name
    assert changed_rows == set(soft_ids(trainer.processing_class))


def test_lora_trains_adapters_and_soft_prompt_rows_and_the_teacher_is_the_adapter_free_base(tmp_path, tokenizer):
    rows = distill_rows(4)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_MODULES, init_lora_weights=False)
    trainer = make_distill_trainer(tmp_path, tokenizer, rows=rows, peft_config=lora, learning_rate=1e-2)
    assert trainer.teacher.model is None
    trainable = trainable_names(trainer.model)
    assert trainable and all(".lora_" in name or "trainable_tokens" in name for name in trainable)
    batch = trainer.data_collator(rows)
    plain = make_tiny_model("llama", tokenizer)
    add_compress_tokens(plain, copy.deepcopy(tokenizer), trainer.encoder_settings)
    with torch.no_grad():
        hidden = plain.model(
            input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
        ).last_hidden_state
    expected = output_span_targets(hidden, batch["teacher_output_mask"], M).mean
    torch.testing.assert_close(trainer.teacher_targets(batch).mean, expected, atol=1e-5, rtol=0)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(before[name], p.detach())}
    assert changed == trainable


def test_a_wider_explicit_teacher_gets_a_trained_projection_and_no_gradient(tmp_path, tokenizer):
    rows = distill_rows(8)
    teacher = make_tiny_model("llama", tokenizer, seed=5, hidden_size=48)
    trainer = make_distill_trainer(
        tmp_path, tokenizer, rows=rows, teacher_model=teacher, max_steps=2, save_strategy="steps"
    )
    assert trainer.teacher.model is teacher and tuple(trainer.projection.weight.shape) == (48, 32)
    before = trainer.projection.weight.detach().clone()
    teacher_before = copy.deepcopy(teacher.state_dict())
    trainer.args.save_steps = 1
    trainer.train()
    assert not torch.equal(before, trainer.projection.weight.detach())
    assert all(torch.equal(teacher_before[name], value) for name, value in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / PROJECTION_FILE).is_file()
    resumed = make_distill_trainer(tmp_path, tokenizer, rows=rows, teacher_model=teacher, max_steps=2)
    resumed._load_from_checkpoint(str(checkpoint))
    torch.testing.assert_close(resumed.projection.weight, trainer.projection.weight)


def test_precomputed_teacher_targets_equal_the_live_teacher_and_are_cached(tmp_path, tokenizer, monkeypatch):
    rows = distill_rows(6)
    live = make_distill_trainer(tmp_path, tokenizer, rows=rows, positive_views=["output", "teacher"])
    cached = make_distill_trainer(
        tmp_path, tokenizer, rows=rows, positive_views=["output", "teacher"], precompute_teacher_targets=True
    )
    assert cached.teacher is None  # the separate frozen copy is released once the targets are cached
    assert {"teacher_mean"} <= set(cached.train_dataset.column_names)
    with torch.no_grad():
        expected = live.compute_loss(live.model, live.data_collator(rows[:4]))
        loss = cached.compute_loss(cached.model, cached.data_collator(cached.train_dataset.select(range(4))))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert len(list((tmp_path / "teacher-cache").glob("*.safetensors"))) == 1

    def no_teacher_pass(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(DistillTrainer, "compute_teacher_targets", no_teacher_pass)
    again = make_distill_trainer(
        tmp_path, tokenizer, rows=rows, positive_views=["output", "teacher"], precompute_teacher_targets=True
    )
    assert again.train_dataset["teacher_mean"] == cached.train_dataset["teacher_mean"]
    with pytest.raises(ValueError, match="teacher model was released"):
        again.evaluate(Dataset.from_list(distill_rows(4)))


# ---- 6. training, metrics, saving and the three embedding paths --------------------------------------------------


def test_loss_falls_when_overfitting_and_every_component_is_logged(tmp_path, tokenizer):
    rows = distill_rows(16, num_negatives=1)
    trainer = make_distill_trainer(
        tmp_path, tokenizer, rows=rows, max_steps=-1, num_train_epochs=3, per_device_train_batch_size=8
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 6
    losses = [entry["loss"] for entry in logs]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0] - 0.3, losses
    keys = {"loss/contrastive", "loss/distillation", "distillation/cosine", "anchors/cosine", "cosine/negative"}
    keys |= {f"{kind}_{view}" for kind in ("loss/contrastive", "cosine/positive") for view in ("dropout", "teacher")}
    keys |= {"loss/contrastive_output", "embeddings/mean_cosine"}
    for entry in logs:
        assert keys <= entry.keys(), keys - entry.keys()
    assert logs[-1]["distillation/cosine"] > logs[0]["distillation/cosine"]
    metrics = trainer.evaluate(Dataset.from_list(rows[:4]))
    assert math.isfinite(metrics["eval_loss"]) and "eval_loss/distillation" in metrics


@pytest.mark.parametrize(
    ("options", "lora"),
    [
        pytest.param({}, False, id="daap-concat-full"),
        pytest.param({"daap_combination": "sum", "daap_weight": 0.7}, False, id="daap-sum"),
        pytest.param({"last_token_position": "final"}, False, id="daap-final"),
        pytest.param({}, True, id="daap-concat-lora-merged"),
        pytest.param({"num_compress_tokens": 0, "pooling": "last", "distillation_weight": 0.0}, False, id="last"),
    ],
)
def test_training_save_model_load_and_sentence_transformers_embed_alike(tmp_path, tokenizer, options, lora):
    """DAAP (and the other poolings) are identical in training, after save_model with autoreg_embed.load, and
    with SentenceTransformer(trust_remote_code=True); encode_query carries the instruction."""
    rows = distill_rows(8)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_MODULES, init_lora_weights=False) if lora else None
    trainer = make_distill_trainer(tmp_path, tokenizer, rows=rows, peft_config=peft_config, max_steps=2, **options)
    trainer.train()
    trainer.model.eval()
    final = tmp_path / "final"
    trainer.save_model(str(final))
    assert (final / SETTINGS_FILE).is_file()
    texts = [rows[1]["text"], "A text it never saw, a little longer than the others."]
    instruction = rows[1]["instruction"]
    with torch.no_grad():
        batch = trainer.data_collator([{"text": text, "instruction": instruction, "output": "x"} for text in texts])
        in_training = trainer.encode_batch(trainer.model, batch).embedding
    hidden_size = trainer.model.config.hidden_size
    assert in_training.shape[-1] == trainer.encoder_settings.embedding_size(hidden_size)
    for model in (autoreg_embed.load(final, device="cpu"), SentenceTransformer(str(final), trust_remote_code=True)):
        assert model.get_embedding_dimension() == in_training.shape[-1]
        for batch_size in (1, 2):
            query = model.encode_query(texts, prompt=instruction, batch_size=batch_size, convert_to_tensor=True)
            torch.testing.assert_close(query.float(), in_training.float(), atol=1e-6, rtol=0)
    plain = autoreg_embed.load(final, device="cpu").encode_query(texts, convert_to_tensor=True)
    assert (plain - in_training).abs().max() > 1e-4  # no instruction: a different embedding


# ---- 7. bad input and configuration ----------------------------------------------------------------------------


def test_missing_output_column_is_an_error(tmp_path, tokenizer):
    rows = [{"text": row["text"], "instruction": row["instruction"]} for row in distill_rows(3)]
    with pytest.raises(DataValidationError, match=r"train_dataset is missing column\(s\) \['output'\]"):
        make_distill_trainer(tmp_path, tokenizer, rows=rows)


@pytest.mark.parametrize(
    ("column", "value", "pattern"),
    [
        ("output", "", r"Column 'output', row 2: empty text"),
        ("text", " \n", r"Column 'text', row 2: empty text"),
        ("pos", "", r"Column 'pos', row 2: empty text"),
        ("neg", [], r"Column 'neg', row 2"),
    ],
)
def test_empty_strings_are_rejected_before_training(tmp_path, tokenizer, column, value, pattern):
    rows = distill_rows(3, num_negatives=1, pos=True)
    rows[2][column] = value
    with pytest.raises(DataValidationError, match=pattern):
        make_distill_trainer(tmp_path, tokenizer, rows=rows, positive_views=["output", "pos"])


def test_empty_or_missing_instructions_are_allowed(tmp_path, tokenizer):
    rows = distill_rows(4)
    rows[0]["instruction"] = None
    del rows[1]["instruction"]
    trainer = make_distill_trainer(tmp_path, tokenizer, rows=[{k: v for k, v in r.items()} for r in rows[2:]])
    with torch.no_grad():
        assert math.isfinite(trainer.compute_loss(trainer.model, trainer.data_collator(rows)).item())


def test_views_must_match_the_columns(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="positive_views has 'pos' but train_dataset has no 'pos' column"):
        make_distill_trainer(tmp_path, tokenizer, rows=distill_rows(3), positive_views=["pos"])
    with pytest.raises(ValueError, match="in_batch_negatives=False leaves each query only its own positive"):
        make_distill_trainer(
            tmp_path, tokenizer, rows=distill_rows(3), positive_views=["output"], in_batch_negatives=False
        )


@pytest.mark.parametrize(
    ("option", "pattern"),
    [
        ({"positive_views": ["simcse"]}, "positive_views must be distinct names"),
        ({"positive_views": ["output", "output"]}, "positive_views must be distinct names"),
        ({"positive_views": []}, "needs at least one positive view"),
        ({"contrastive_weight": 0.0, "distillation_weight": 0.0}, "nothing to train"),
        ({"distillation_weight": -1.0}, "distillation_weight must be >= 0"),
        ({"num_compress_tokens": 0, "pooling": "last"}, "Set distillation_weight=0 for the last-token-only"),
        ({"distillation_target": "first"}, "distillation_target must be one of"),
        ({"distillation_metric": "l1"}, "distillation_metric must be one of"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"dropout_view_rate": 1.0}, r"dropout_view_rate must be in \[0, 1\)"),
        ({"in_batch_negatives": False}, "'teacher' view has no hard negatives"),
        ({"max_output_length": 0}, "max_output_length must be >= 1"),
        ({"pooling": "daap", "num_compress_tokens": 0, "distillation_weight": 0.0}, "'daap' needs num_compress"),
        ({"template": "{text}", "output_instruction": "Embed:"}, "no {instruction} slot"),
        ({"freeze_backbone": True}, "set last_token_position='final'"),
    ],
)
def test_invalid_options_raise_at_config_creation(tmp_path, option, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_config(DistillConfig, tmp_path, **option)


def test_freeze_backbone_with_a_peft_config_is_an_error(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="freeze_backbone trains the soft prompts alone"):
        lora = LoraConfig(r=2, target_modules=LORA_MODULES)
        make_distill_trainer(tmp_path, tokenizer, peft_config=lora, freeze_backbone=True, last_token_position="final")


def test_a_checkpoint_keeps_its_layout_unless_an_option_contradicts_it(tmp_path, tokenizer):
    """Unset layout options take a checkpoint's saved values (not the distill defaults); a different one is an
    error; and the losses are checked against the checkpoint's settings."""
    model = make_tiny_model("llama", tokenizer)
    settings = EncoderSettings(num_compress_tokens=M, pooling="compress_mean")
    add_compress_tokens(model, tokenizer, settings)
    autoreg_embed.export_sentence_transformer(model, tokenizer, settings, tmp_path / "stage1")
    trainer = DistillTrainer(model=str(tmp_path / "stage1"), args=make_config(DistillConfig, tmp_path))
    saved = (trainer.encoder_settings.num_compress_tokens, trainer.encoder_settings.pooling)
    assert saved == (M, "compress_mean") and trainer.encoder_settings.last_token_position == "final"
    with pytest.raises(ValueError, match="pooling='daap' differs from the checkpoint"):
        DistillTrainer(model=str(tmp_path / "stage1"), args=make_config(DistillConfig, tmp_path, pooling="daap"))
    settings = EncoderSettings(num_compress_tokens=0, pooling="last")
    autoreg_embed.export_sentence_transformer(make_tiny_model("llama", tokenizer), tokenizer, settings, tmp_path / "k0")
    with pytest.raises(ValueError, match="distillation_weight > 0 distils into the soft prompts"):
        DistillTrainer(model=str(tmp_path / "k0"), args=make_config(DistillConfig, tmp_path, num_compress_tokens=None))


def test_positive_views_from_a_comma_separated_string(tmp_path):
    assert make_config(DistillConfig, tmp_path, positive_views="output, teacher").positive_views == [
        "output",
        "teacher",
    ]


# ---- 8. the real model (slow) -------------------------------------------------------------------------------


@pytest.mark.slow
@requires_shared_data
def test_real_smollm2_distill_lowers_the_loss_and_evaluates_instruction_retrieval(tmp_path, default_model_dir):
    from autoreg_embed.data import load_rows
    from autoreg_embed.evaluation import evaluate_instruction_retrieval

    rows = load_rows(SHARED_DATA / "compression" / "squad2_devhalf_answerable.jsonl").select(range(8))
    rows = rows.rename_columns({"context": "text", "target": "output"})
    args = DistillConfig(
        **QUIET_CPU_RUN,
        output_dir=str(tmp_path / "real"),
        per_device_train_batch_size=4,
        max_steps=8,  # 4 passes over the same 2 batches (sequential sampling): the last pass must beat the first
        learning_rate=2e-4,
        max_text_length=96,
        teacher_targets_cache_dir=str(tmp_path / "cache"),
        precompute_teacher_targets=True,
    )
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    trainer = DistillTrainer(model=str(default_model_dir), args=args, train_dataset=rows, peft_config=lora)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    trainer.save_model(str(tmp_path / "final"))
    model = autoreg_embed.load(tmp_path / "final", device="cpu")
    result = evaluate_instruction_retrieval(
        model, SHARED_DATA / "compression" / "xquad_en.jsonl", limit_contexts=3, show_progress_bar=False
    )
    assert result["n_contexts"] == 3 and 0 <= result["with_instruction"]["mrr"] <= 100
