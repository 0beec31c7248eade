"""``recipe="official"`` reproduces the official research code (github TrustedLLM/AutoRegEmbed).

The functions below are our own line-by-line port of its CDA loss computation: the tokenization and collation
(``src/condition_distribution_alignment/data.py``), the encoder/decoder forward
(``ConditionDistributionAlignmentModel._compress`` / ``forward`` and ``_get_batch_logps``), the reference
scores (``compute_reference_score.py``) and the loss (``ConditionDistributionAligmentTrainer.compute_loss``),
run in float64 on a tiny Llama and compared with ``CDATrainer``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from helpers import QUIET_CPU_RUN, make_tiny_model

from autoreg_embed import CDAConfig, CDATrainer
from autoreg_embed.data.instructions import STS_INSTRUCTION
from autoreg_embed.losses.cda_log_probs import POS_GIVEN_QUERY

K = 3
BETA = 0.1
ROWS = [
    {
        "query": "A man is playing a guitar on stage.",
        "pos": ["Someone performs music for an audience."],
        "neg": ["A woman is slicing onions.", "The stadium is empty tonight."],
    },
    {
        "query": "Two dogs run across a snowy field.",
        "pos": ["Animals are outside in the winter.", "A second positive that the official code ignores."],
        "neg": ["The cat sleeps on a warm sofa indoors.", "Nobody is outside."],
    },
]
"""MEDI-style rows: ``pos`` a list (the official code takes its first element), two hard negatives each."""


# ---- the port ----------------------------------------------------------------------------------------------


def official_features(tokenizer, row: dict, instruction: str, num_hn: int) -> dict:
    """pretrain_tokenize_function: a newline after the text and after the instruction, targets + EOS."""
    negatives = row["neg"] if isinstance(row["neg"], list) else [row["neg"]]
    negatives = negatives[:num_hn]
    pos = row["pos"][0] if isinstance(row["pos"], list) else row["pos"]

    def tok(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    query_input_ids = tok(row["query"] + "\n")
    instruction_ids = tok(instruction + "\n")
    pos_output_ids = tok(pos)
    pos_input_ids = tok(pos + "\n")
    neg_output_ids = [tok(negative) for negative in negatives]
    input_ids = [tokenizer.bos_token_id, *query_input_ids, *instruction_ids]
    pos_ids = [tokenizer.bos_token_id, *pos_input_ids, *instruction_ids]
    eos = tokenizer.eos_token_id
    return {
        "pos_output": {
            "input_ids": input_ids,
            "pos_ids": pos_ids,
            "target_ids": [*pos_output_ids, eos],
            "labels": [-100] * K + pos_output_ids + [eos],
        },
        "neg_output": {
            "input_ids": input_ids,
            "target_ids": [[*ids, eos] for ids in neg_output_ids],
            "labels": [[-100] * K + ids + [eos] for ids in neg_output_ids],
        },
    }


def dynamic_padding(sequences: list[torch.Tensor], fill_value: int = -100) -> torch.Tensor:
    max_length = max(len(x) for x in sequences)
    padded = torch.full((len(sequences), max_length), fill_value, dtype=torch.long)
    for i, seq in enumerate(sequences):
        padded[i, : len(seq)] = seq
    return padded


def official_collate(features: list[dict], pad: int) -> tuple[dict, dict]:
    """DataCollatorForDynamicPadding: masks are ``ids != pad`` (pad = EOS, so the target's EOS gets mask 0)."""
    examples = [feature["pos_output"] for feature in features]
    input_ids = dynamic_padding([torch.tensor(e["input_ids"]) for e in examples], pad)
    pos_ids = dynamic_padding([torch.tensor(e["pos_ids"]) for e in examples], pad)
    target_ids = dynamic_padding([torch.tensor(e["target_ids"]) for e in examples], pad)
    pos_batch = {
        "input_ids": input_ids,
        "attention_mask": (input_ids != pad).long(),
        "target_ids": target_ids,
        "target_attention_mask": (target_ids != pad).long(),
        "labels": dynamic_padding([torch.tensor(e["labels"]) for e in examples]),
        "pos_ids": pos_ids,
        "pos_attention_mask": (pos_ids != pad).long(),
    }
    examples = [feature["neg_output"] for feature in features]
    input_ids = dynamic_padding([torch.tensor(e["input_ids"]) for e in examples for _ in e["target_ids"]], pad)
    target_ids = dynamic_padding([torch.tensor(ids) for e in examples for ids in e["target_ids"]], pad)
    neg_batch = {
        "input_ids": input_ids,
        "attention_mask": (input_ids != pad).long(),
        "target_ids": target_ids,
        "target_attention_mask": (target_ids != pad).long(),
        "labels": dynamic_padding([torch.tensor(ids) for e in examples for ids in e["labels"]]),
    }
    return pos_batch, neg_batch


def get_batch_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """_get_batch_logps (summed log-probs of the labels that are not -100)."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != -100
    labels[labels == -100] = 0
    per_token_logps = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    return (per_token_logps * loss_mask).sum(-1)


def official_score(encoder, decoder, embed_token_ids, pad, input_ids, attention_mask, target_ids, target_mask, labels):
    """ConditionDistributionAlignmentModel.forward: _compress (compress tokens scattered in at the text's length),
    then the decoder on [compress states; target embeddings], then _get_batch_logps."""
    batch_size = input_ids.size(0)
    lengths = attention_mask.sum(dim=1)
    embedding_ids = torch.cat((input_ids, torch.full((batch_size, K), pad)), dim=1)
    embedding_attention_mask = torch.cat((attention_mask, torch.zeros((batch_size, K), dtype=torch.long)), dim=1)
    insert_indices = lengths.unsqueeze(1) + torch.arange(K).unsqueeze(0)
    embedding_ids.scatter_(1, insert_indices, torch.tensor(embed_token_ids).unsqueeze(0).repeat(batch_size, 1))
    embedding_attention_mask.scatter_(1, insert_indices, 1)
    hidden = encoder(embedding_ids, attention_mask=embedding_attention_mask).last_hidden_state
    compress_embedding = torch.gather(hidden, 1, insert_indices.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))
    compress_attention_mask = torch.ones(batch_size, K, dtype=torch.long)
    target_embeddings = decoder.model.embed_tokens(target_ids)
    decoder_embeddings = torch.cat([compress_embedding, target_embeddings], dim=1)
    decoder_attention_mask = torch.cat([compress_attention_mask, target_mask], dim=1)
    logits = decoder(inputs_embeds=decoder_embeddings, attention_mask=decoder_attention_mask).logits
    return get_batch_logps(logits, labels)


def official_loss(policy, reference, decoder, tokenizer, rows: list[dict], beta: float, temperature: float) -> float:
    """compute_reference_score.py (reference scores from the stage-1 encoder), then the trainer's compute_loss."""
    embed_token_ids = tokenizer.convert_tokens_to_ids([f"<EMBED{i}>" for i in range(K)])
    pad = tokenizer.pad_token_id
    features = [official_features(tokenizer, row, STS_INSTRUCTION, num_hn=2) for row in rows]
    pos_batch, neg_batch = official_collate(features, pad)

    def score(encoder, batch: dict, input_ids: str = "input_ids", attention_mask: str = "attention_mask"):
        inputs = (batch[input_ids], batch[attention_mask], batch["target_ids"], batch["target_attention_mask"])
        return official_score(encoder, decoder, embed_token_ids, pad, *inputs, batch["labels"])

    with torch.no_grad():
        reference_chosen = score(reference, pos_batch).unsqueeze(-1)
        reference_rejected = score(reference, neg_batch).view(len(reference_chosen), -1)
        reference_score = torch.cat([reference_chosen, reference_rejected], dim=1)
        query_chosen_logps = score(policy, pos_batch).unsqueeze(1)
        pos_chosen_logps = score(policy, pos_batch, "pos_ids", "pos_attention_mask").unsqueeze(1)
        query_rejected_logps = score(policy, neg_batch).view(len(query_chosen_logps), -1)
    ref_pos, ref_neg = reference_score[:, :1], reference_score[:, 1:]
    logits = (query_chosen_logps - query_rejected_logps) + (ref_pos - ref_neg)
    s2 = torch.sigmoid(beta * logits)
    s1 = torch.sigmoid(beta * torch.abs(query_chosen_logps - pos_chosen_logps))
    loss = -torch.log(torch.exp(-s1 / temperature) / (torch.exp(-s1 / temperature) + torch.exp(-s2 / temperature)))
    return loss.mean().item()


# ---- the comparison ----------------------------------------------------------------------------------------


def float64_trainer(tmp_path, tokenizer, recipe: str) -> CDATrainer:
    """A CDATrainer on a tiny Llama in float64, with the policy moved away from the reference and the decoder."""
    trainer = CDATrainer(
        model=make_tiny_model("llama", tokenizer, seed=0),
        args=CDAConfig(
            output_dir=str(tmp_path / recipe),
            recipe=recipe,
            num_compress_tokens=K,
            beta=BETA,
            per_device_train_batch_size=2,
            max_steps=1,
            **QUIET_CPU_RUN,
        ),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=copy.deepcopy(tokenizer),
    )
    for model in (trainer.model, trainer.frozen_decoder.model, trainer.reference.model):
        model.double()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return trainer


def test_official_recipe_reproduces_the_official_loss(tmp_path, tokenizer):
    trainer = float64_trainer(tmp_path, tokenizer, "official")
    args = trainer.args
    assert (args.temperature, args.reference_sign, args.multi_negative) == (0.1, "official", "mean_of_binary")
    assert (args.positives, args.warmup_steps) == ("first", 0.05)
    assert trainer.encoder_settings.template == "{text}\n{instruction}\n"
    assert len(trainer.train_dataset) == len(ROWS)  # positives="first": the second positive is dropped
    tok = trainer.processing_class
    policy, reference = trainer.model, trainer.reference.model
    original = make_tiny_model("llama", tokenizer, seed=0).double()  # decoder_name_or_path, loaded afresh
    assert original.get_output_embeddings().weight.shape[0] == len(tok) - K  # no compress tokens in its vocabulary
    expected = official_loss(policy.model, reference.model, original, tok, ROWS, BETA, 0.1)

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    official_input = official_features(tok, ROWS[0], STS_INSTRUCTION, 2)["pos_output"]["input_ids"]
    row = batch[f"{POS_GIVEN_QUERY.key}.prefix_index"][0, 0]
    layout = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
    assert layout == official_input + tok.convert_tokens_to_ids([f"<EMBED{i}>" for i in range(K)])
    with torch.no_grad():
        loss = trainer.compute_loss(policy, batch).item()
    assert loss == pytest.approx(expected, rel=1e-10, abs=1e-12)

    paper = float64_trainer(tmp_path, tokenizer, "paper")  # the same weights under the paper's settings
    paper_batch = paper.data_collator([paper.train_dataset[i] for i in range(len(paper.train_dataset))])
    with torch.no_grad():
        paper_loss = paper.compute_loss(paper.model, paper_batch).item()
    assert abs(paper_loss - expected) > 1e-3
