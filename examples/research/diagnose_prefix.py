"""Diagnose why the frozen SmolLM2 decoder does not read the compress states (issue 14).

Measures, on 32 SNLI sentences (untrained encoder, prompteol layout k = 1 and paper layout k = 5):
- norms of the compress states against the decoder's input token embeddings;
- the decoder's log-prob of each sentence (autoencoding target) and the readout gain (own states vs the
  previous row's) for decoder inputs [states; text], [BOS; states; text], and both with the states rescaled to
  the mean input-embedding norm;
- attention mass the target positions give to each prefix position, and the hidden-state norm there per layer
  (a Llama model makes its first position an attention sink with massive activations).

    OMP_NUM_THREADS=1 taskset -c 1 python examples/research/diagnose_prefix.py
"""

from __future__ import annotations

import json

import torch

from autoreg_embed.data.collators import TargetBuilder
from autoreg_embed.data.loading import load_rows
from autoreg_embed.modeling.checkpoint import load_causal_lm, load_tokenizer
from autoreg_embed.modeling.encoder import add_compress_tokens, encode
from autoreg_embed.modeling.inputs import EncoderInputBuilder
from autoreg_embed.modeling.settings import EncoderSettings
from autoreg_embed.sentence_transformers import PROMPTEOL_INSTRUCTION

torch.manual_seed(0)
rows = load_rows("../shared/data/nli/snli_devtest_triplets.jsonl").shuffle(seed=0).select(range(6300, 6316))
sentences = [row["query"] for row in rows] + [row["pos"] for row in rows]


def run(layout: str, k: int) -> dict:
    model = load_causal_lm(None, attn_implementation="eager").eval()
    tokenizer = load_tokenizer(None)
    if layout == "prompteol":
        settings = EncoderSettings(num_compress_tokens=k, template='This sentence : "{text}" {instruction}')
        init, instruction = ':"', PROMPTEOL_INSTRUCTION
    else:
        settings = EncoderSettings(num_compress_tokens=k)
        init, instruction = "mean", "This sentence means in one word: “"
    add_compress_tokens(model, tokenizer, settings, init_from=init)
    decoder = load_causal_lm(None, attn_implementation="eager").eval()
    batch = EncoderInputBuilder(tokenizer, settings)(sentences, instruction)
    targets = TargetBuilder(tokenizer, 64)(sentences)
    embed = decoder.get_input_embeddings()
    with torch.no_grad():
        states = encode(model, batch["input_ids"], batch["attention_mask"], settings).compress_states  # (B,k,H)
        vocab_norm = embed.weight.norm(dim=-1)
        text_norm = embed(targets["target_ids"])[targets["target_mask"].bool()].norm(dim=-1)
        bos = embed.weight[tokenizer.bos_token_id]
        result = {
            "layout": layout,
            "k": k,
            "state_norm_mean": states.norm(dim=-1).mean().item(),
            "state_norm_per_position": states.norm(dim=-1).mean(0).tolist(),
            "vocab_embedding_norm_mean": vocab_norm.mean().item(),
            "text_token_embedding_norm_mean": text_norm.mean().item(),
            "bos_embedding_norm": bos.norm().item(),
            "state_pairwise_cosine": torch.nn.functional.cosine_similarity(
                states[:, None, 0], states[None, :, 0], dim=-1
            )
            .mean()
            .item(),
            "variants": {},
        }
        scale = vocab_norm.mean() / states.norm(dim=-1, keepdim=True)
        logits = states @ decoder.get_output_embeddings().weight.T  # (B, k, V): what each state predicts
        top = logits.softmax(-1).max(-1)
        result["state_top_token_prob_mean"] = top.values.mean().item()
        result["state_top_tokens_first_rows"] = tokenizer.convert_ids_to_tokens(top.indices[:8, 0].tolist())
        for name, use_bos, rescale in (
            ("states", False, False),
            ("bos+states", True, False),
            ("rescaled", False, True),
            ("bos+rescaled", True, True),
            ("vocab_softmax T=1", False, "vocab1"),
            ("bos+vocab_softmax T=1", True, "vocab1"),
            ("bos+vocab_softmax T=2", True, "vocab2"),
            ("bos only (no states)", True, None),
        ):
            prefix = states * scale if rescale is True else states
            if isinstance(rescale, str):  # soft token: the decoder's embedding of the state's next-token mixture
                temperature = float(rescale[-1])
                prefix = (logits / temperature).softmax(-1) @ embed.weight
            if rescale is None:
                prefix = prefix[:, :0]
            if use_bos:
                prefix = torch.cat([bos.expand(prefix.shape[0], 1, -1), prefix], dim=1)
            own, attention, norms = score(decoder, prefix, targets)
            other, _, _ = score(decoder, prefix.roll(1, dims=0), targets) if prefix.shape[1] else (own, 0, 0)
            result["variants"][name] = {
                "log_prob_per_token": own.mean().item(),
                "readout_gain": (own - other).mean().item(),
                "attention_to_prefix_positions_by_layer(first,mid,last)": attention,
                "hidden_norm_at_prefix_positions_by_layer(0,1,2,mid,last)": norms,
            }
    return result


def score(decoder, prefix, targets):
    ids, mask = targets["target_ids"], targets["target_mask"]
    k = prefix.shape[1]
    if k == 0:  # BOS only case handled as prefix length 1 below
        raise ValueError
    inputs = torch.cat([prefix, decoder.get_input_embeddings()(ids)], dim=1)
    full_mask = torch.cat([torch.ones(ids.shape[0], k, dtype=mask.dtype), mask], dim=1)
    positions = (full_mask.cumsum(1) - 1).clamp(min=0)
    out = decoder(
        inputs_embeds=inputs,
        attention_mask=full_mask,
        position_ids=positions,
        output_attentions=True,
        output_hidden_states=True,
        use_cache=False,
    )
    logits = out.logits[:, k - 1 : k - 1 + ids.shape[1]].float().log_softmax(-1)
    token = logits.gather(-1, ids[..., None]).squeeze(-1) * mask
    per_row = token.sum(1) / mask.sum(1)
    layers = len(out.attentions)
    picks = [0, layers // 2, layers - 1]
    # attention from real target query positions to each prefix key position, averaged over heads and queries
    attention = []
    for layer in picks:
        att = out.attentions[layer].mean(1)[:, k:, :k]  # (B, T, k)
        weights = mask[..., None].float()
        attention.append([round(v, 3) for v in ((att * weights).sum((0, 1)) / weights.sum()).tolist()])
    norms = []
    for layer in (0, 1, 2, layers // 2, layers):
        norms.append([round(v, 1) for v in out.hidden_states[layer][:, :k].norm(dim=-1).mean(0).tolist()])
    return per_row, attention, norms


if __name__ == "__main__":
    for layout, k in (("prompteol", 1), ("paper", 5), ("prompteol", 5)):
        print(json.dumps(run(layout, k), indent=1), flush=True)
