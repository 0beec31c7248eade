"""Does a decoder-side instruction around the prefix make the frozen decoder read it? Oracle keyword prefixes.

Like ``oracle_prefix.py`` (64 held-out SNLI sentences, prefix = the sentence's first k content tokens as real
token embeddings, readout gain = own prefix vs the previous sentence's), but the decoder reads the prefix inside
a fixed text template: ``template.format(kw=<prefix>)`` then the target. ``copy`` uses the whole sentence as the
prefix (what a perfect code would give).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 1 python examples/research/oracle_template.py
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

CHAT = "<|im_start|>user\n{instruction}{kw}<|im_end|>\n<|im_start|>assistant\n"
TEMPLATES = {
    "bare": "{kw}",
    "bos_bare": "<|im_start|>{kw}",
    "chat_repeat": CHAT.replace("{instruction}", "Repeat this text: "),
    "chat_sentence_with_words": CHAT.replace("{instruction}", "Write one sentence using these words: "),
    "chat_no_instruction": CHAT.replace("{instruction}", ""),
    "plain_keywords": "<|im_start|>Keywords: {kw}\nSentence:",
}


def main() -> None:
    _, held = nli_sentences()
    tokenizer = load_tokenizer(None)
    decoder = load_causal_lm(None).eval()
    table = decoder.get_input_embeddings().weight
    token_lists = tokenizer(held, add_special_tokens=False)["input_ids"]
    content_lists = [[t for t in ids if len(tokenizer.decode([t]).strip()) > 3] or ids[:1] for ids in token_lists]
    codes = {f"keywords_{k}": [(ids * k)[:k] for ids in content_lists] for k in (1, 3, 5)}
    codes["copy"] = token_lists
    results = {}
    with torch.no_grad():
        for template_name, template in TEMPLATES.items():
            before, after = template.split("{kw}")
            before_ids = tokenizer(before, add_special_tokens=False)["input_ids"]
            after_ids = tokenizer(after, add_special_tokens=False)["input_ids"]
            for code_name, code in codes.items():
                lps, gains = [], []
                for start in range(0, len(held), 16):
                    rows = [before_ids + ids + after_ids for ids in code[start : start + 16]]
                    length = max(len(r) for r in rows)
                    # left-pad the prefixes with copies of their first token so every row has the same length
                    prefix = torch.stack([table[[r[0]] * (length - len(r)) + r] for r in rows])
                    batch = TargetBuilder(tokenizer, 64)(held[start : start + 16])
                    own = conditional_log_probs(decoder, prefix, batch["target_ids"], batch["target_mask"])
                    other = conditional_log_probs(decoder, prefix.roll(1, 0), batch["target_ids"], batch["target_mask"])
                    lps.append(own.mean.mean())
                    gains.append((own.mean - other.mean).mean())
                key = f"{template_name}/{code_name}"
                results[key] = {
                    "lp": round(float(torch.stack(lps).mean()), 3),
                    "gain": round(float(torch.stack(gains).mean()), 3),
                }
                print(key, results[key], flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
