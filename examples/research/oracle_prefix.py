"""Which kinds of prefix does the frozen SmolLM2 decoder read? Oracle prefixes built from the sentence itself.

For the 64 held-out SNLI sentences, scores each sentence under the frozen decoder after a prefix made from its own
tokens (no encoder, no training), and reports log p per token and the readout gain (own prefix vs the previous
sentence's prefix):
- ``mean_embedding``: one vector, the mean of the sentence's token embeddings (a soft bag of words);
- ``mean_content_embedding``: the same over tokens of words longer than 3 characters;
- ``keywords_k``: the first k such content tokens as real token embeddings (a hard keyword prefix);
each with and without BOS before it. This bounds what a one-vector (k = 1) or few-token code can give when the
decoder reads it the way it reads text.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 1 python examples/research/oracle_prefix.py
"""

from __future__ import annotations

import json
import sys

import torch

from autoreg_embed.data.collators import TargetBuilder
from autoreg_embed.modeling.checkpoint import load_causal_lm, load_tokenizer
from autoreg_embed.modeling.decoder import conditional_log_probs

sys.path.insert(0, "examples/research")
from stage1_lab import nli_sentences


def main() -> None:
    _, held = nli_sentences()
    tokenizer = load_tokenizer(None)
    decoder = load_causal_lm(None).eval()
    table = decoder.get_input_embeddings().weight
    bos = table[tokenizer.bos_token_id]
    token_lists = tokenizer(held, add_special_tokens=False)["input_ids"]
    content_lists = [[t for t in ids if len(tokenizer.decode([t]).strip()) > 3] or ids[:1] for ids in token_lists]
    prefixes = {
        "mean_embedding": torch.stack([table[ids].mean(0) for ids in token_lists])[:, None],
        "mean_content_embedding": torch.stack([table[ids].mean(0) for ids in content_lists])[:, None],
    }
    for k in (1, 3, 5):
        prefixes[f"keywords_{k}"] = torch.stack(
            [table[(ids * k)[:k]] for ids in content_lists]  # repeat when a sentence has fewer than k
        )
    results = {}
    with torch.no_grad():
        for name, prefix in prefixes.items():
            for use_bos in (False, True):
                full = torch.cat([bos.expand(len(held), 1, -1), prefix], dim=1) if use_bos else prefix
                lps, gains = [], []
                for start in range(0, len(held), 16):
                    batch = TargetBuilder(tokenizer, 64)(held[start : start + 16])
                    part = full[start : start + 16]
                    own = conditional_log_probs(decoder, part, batch["target_ids"], batch["target_mask"])
                    other = conditional_log_probs(decoder, part.roll(1, 0), batch["target_ids"], batch["target_mask"])
                    lps.append(own.mean.mean())
                    gains.append((own.mean - other.mean).mean())
                results[f"{'bos+' if use_bos else ''}{name}"] = {
                    "lp": round(float(torch.stack(lps).mean()), 3),
                    "gain": round(float(torch.stack(gains).mean()), 3),
                }
                print(name, use_bos, results[f"{'bos+' if use_bos else ''}{name}"], flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
