"""Can the frozen SmolLM2 decoder read a free prefix vector per sentence, and what do readable prefixes look like?

Optimises one free vector per sentence (k = 1; no encoder) against the frozen decoder to regenerate 16 held-out
SNLI sentences (Adam, lr 1e-2, 100 steps), for several decoder inputs: with or without BOS before the vector,
and with the vector's norm free or fixed (to the token-embedding norm 3.2, or to the encoder-state norm 50).
Reports, every 25 steps: log p per token, readout gain (own vector vs the previous sentence's), the vectors'
norm and mean pairwise cosine. Started from the untrained encoder's states (prompteol layout), so the distance
travelled is comparable to what an encoder would have to learn.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 1 python examples/research/free_prefix_probe.py
"""

from __future__ import annotations

import json
import sys

import torch

from autoreg_embed.data.collators import TargetBuilder
from autoreg_embed.modeling.checkpoint import load_causal_lm, load_tokenizer
from autoreg_embed.modeling.decoder import conditional_log_probs
from autoreg_embed.modeling.encoder import add_compress_tokens, encode
from autoreg_embed.modeling.inputs import EncoderInputBuilder
from autoreg_embed.modeling.settings import EncoderSettings
from autoreg_embed.sentence_transformers import PROMPTEOL_INSTRUCTION

sys.path.insert(0, "examples/research")
from stage1_lab import nli_sentences


def main(steps: int = 100, lr: float = 1e-2) -> None:
    torch.manual_seed(0)
    _, held = nli_sentences()
    sentences = held[:16]
    model = load_causal_lm(None).eval()
    tokenizer = load_tokenizer(None)
    settings = EncoderSettings(num_compress_tokens=1, template='This sentence : "{text}" {instruction}')
    add_compress_tokens(model, tokenizer, settings, init_from=':"')
    batch = EncoderInputBuilder(tokenizer, settings)(sentences, PROMPTEOL_INSTRUCTION)
    targets = TargetBuilder(tokenizer, 64)(sentences)
    decoder = load_causal_lm(None).eval().requires_grad_(False)
    bos = decoder.get_input_embeddings().weight[tokenizer.bos_token_id]
    with torch.no_grad():
        start = encode(model, batch["input_ids"], batch["attention_mask"], settings).compress_states
    for use_bos, norm in ((True, None), (True, 3.2), (False, None), (True, 50.0), (False, 3.2)):
        vectors = torch.nn.Parameter(start.clone())
        optimizer = torch.optim.Adam([vectors], lr=lr)
        curve = []
        for step in range(steps + 1):
            prefix = vectors if norm is None else vectors * (norm / vectors.norm(dim=-1, keepdim=True))
            if use_bos:
                prefix = torch.cat([bos.expand(prefix.shape[0], 1, -1), prefix], dim=1)
            own = conditional_log_probs(decoder, prefix, targets["target_ids"], targets["target_mask"])
            loss = -own.token_log_probs.sum() / targets["target_mask"].sum()
            if step % 25 == 0:
                with torch.no_grad():
                    other = conditional_log_probs(
                        decoder, prefix.roll(1, dims=0), targets["target_ids"], targets["target_mask"]
                    )
                    unit = torch.nn.functional.normalize(vectors[:, 0], dim=-1)
                    cosine = ((unit @ unit.T).sum() - len(unit)) / (len(unit) * (len(unit) - 1))
                curve.append(
                    {
                        "step": step,
                        "lp": round(own.mean.mean().item(), 3),
                        "gain": round((own.mean - other.mean).mean().item(), 3),
                        "norm": round(vectors.norm(dim=-1).mean().item(), 1),
                        "cosine": round(cosine.item(), 3),
                    }
                )
            if step < steps:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        print(json.dumps({"bos": use_bos, "fixed_norm": norm, "curve": curve}), flush=True)


if __name__ == "__main__":
    main()
