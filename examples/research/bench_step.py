"""Time one stage-1 optimisation step on one core: encoder, decoder, optimiser; fp32 vs bf16 autocast; full vs LoRA.

Batch of 16 SNLI sentences, autoencoding (target = the text), prompteol layout, k = 1, decoder reads
[BOS ; state ; text]. Prints JSON with the median seconds per phase over 5 steps (after 2 warm-up steps).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 1 python examples/research/bench_step.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from autoreg_embed.data.collators import CompressionCollator
from autoreg_embed.modeling.checkpoint import load_causal_lm, load_tokenizer
from autoreg_embed.modeling.decoder import conditional_log_probs, frozen_copy
from autoreg_embed.modeling.encoder import add_compress_tokens, encode
from autoreg_embed.modeling.inputs import EncoderInputBuilder
from autoreg_embed.modeling.settings import EncoderSettings
from autoreg_embed.sentence_transformers import PROMPTEOL_INSTRUCTION

sys.path.insert(0, "examples/research")
from stage1_lab import nli_sentences


def bench(dtype_autocast: bool, lora: bool, batch_size: int = 16, steps: int = 7) -> dict:
    torch.manual_seed(0)
    model = load_causal_lm(None)
    tokenizer = load_tokenizer(None)
    settings = EncoderSettings(num_compress_tokens=1, template='This sentence : "{text}" {instruction}')
    add_compress_tokens(model, tokenizer, settings, init_from=':"')
    decoder = frozen_copy(model)
    if lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=16,
            lora_alpha=32,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        )
        model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    sentences, _ = nli_sentences()
    collate = CompressionCollator(EncoderInputBuilder(tokenizer, settings), 64)
    bos = decoder.get_input_embeddings().weight[tokenizer.bos_token_id].detach()
    times: dict[str, list[float]] = {"encoder_forward": [], "decoder_forward": [], "backward": [], "optimizer": []}
    for step in range(steps):
        rows = [
            {"context": s, "instruction": PROMPTEOL_INSTRUCTION, "target": s}
            for s in sentences[step * batch_size : (step + 1) * batch_size]
        ]
        batch = collate(rows)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype_autocast):
            t0 = time.perf_counter()
            states = encode(model, batch["input_ids"], batch["attention_mask"], settings).compress_states
            t1 = time.perf_counter()
            prefix = torch.cat([bos.expand(states.shape[0], 1, -1), states.float()], dim=1)
            out = conditional_log_probs(decoder, prefix, batch["target_ids"], batch["target_mask"])
            loss = -out.token_log_probs.sum() / batch["target_mask"].sum()
            t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        t4 = time.perf_counter()
        if step >= 2:
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                times[key].append(value)
    result = {key: round(statistics.median(values), 3) for key, values in times.items()}
    result["total"] = round(sum(result.values()), 3)
    return {"bf16_autocast": dtype_autocast, "lora": lora, "batch": batch_size, **result}


if __name__ == "__main__":
    results = [bench(autocast, lora) for lora in (False, True) for autocast in (False, True)]
    for result in results:
        print(json.dumps(result), flush=True)
    full32, full16 = results[0]["total"], results[1]["total"]
    print(
        json.dumps(
            {
                "bf16_speedup_full": round(full32 / full16, 2),
                "bf16_speedup_lora": round(results[2]["total"] / results[3]["total"], 2),
            }
        )
    )
