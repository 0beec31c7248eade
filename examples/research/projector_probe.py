"""How much readable content do the UNTRAINED encoder's states hold? Train only a map from states to decoder prefix.

The encoder (prompteol layout, k = 1) stays frozen; its states for N training SNLI sentences are computed once.
Only a map P from the state to the vector the decoder reads is trained (autoencoding CE on [P(state); text],
optionally with BOS first): ``scale`` (one scalar), ``linear`` (576 x 576, started at the identity) or ``mlp``.
Evaluated on the 64 held-out sentences every 50 steps (readout gain, CE). If a map alone reaches a readout gain
of 1 nat/token, the states already carry the content and the decoder can read it through that map.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 1 python examples/research/projector_probe.py --map linear
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch import nn

from autoreg_embed.data.collators import TargetBuilder
from autoreg_embed.modeling.checkpoint import load_causal_lm, load_tokenizer
from autoreg_embed.modeling.decoder import conditional_log_probs
from autoreg_embed.modeling.encoder import add_compress_tokens, encode
from autoreg_embed.modeling.inputs import EncoderInputBuilder
from autoreg_embed.modeling.settings import EncoderSettings
from autoreg_embed.sentence_transformers import PROMPTEOL_INSTRUCTION

sys.path.insert(0, "examples/research")
from stage1_lab import nli_sentences


def states_of(model, builder, settings, sentences, batch_size=32) -> torch.Tensor:
    parts = []
    with torch.no_grad():
        for start in range(0, len(sentences), batch_size):
            batch = builder(sentences[start : start + batch_size], PROMPTEOL_INSTRUCTION)
            parts.append(encode(model, batch["input_ids"], batch["attention_mask"], settings).compress_states)
    return torch.cat(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--map", choices=["scale", "linear", "mlp"], default="linear")
    parser.add_argument("--bos", action="store_true")
    parser.add_argument("--train_sentences", type=int, default=2400)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.manual_seed(0)
    train, held = nli_sentences()
    train = train[: args.train_sentences]
    model = load_causal_lm(None).eval()
    tokenizer = load_tokenizer(None)
    settings = EncoderSettings(num_compress_tokens=1, template='This sentence : "{text}" {instruction}')
    add_compress_tokens(model, tokenizer, settings, init_from=':"')
    builder = EncoderInputBuilder(tokenizer, settings)
    start = time.perf_counter()
    train_states, held_states = states_of(model, builder, settings, train), states_of(model, builder, settings, held)
    encode_seconds = time.perf_counter() - start
    del model
    decoder = load_causal_lm(None).eval().requires_grad_(False)
    bos = decoder.get_input_embeddings().weight[tokenizer.bos_token_id]
    targets = TargetBuilder(tokenizer, 64)
    hidden = train_states.shape[-1]
    if args.map == "scale":
        projector = nn.Linear(1, 1, bias=False)
        nn.init.ones_(projector.weight)
        apply = lambda s: s * projector.weight[0, 0]  # noqa: E731
    elif args.map == "linear":
        projector = nn.Linear(hidden, hidden)
        nn.init.eye_(projector.weight)
        nn.init.zeros_(projector.bias)
        apply = projector
    else:
        projector = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        apply = lambda s: s + projector(s)  # noqa: E731
    optimizer = torch.optim.AdamW(projector.parameters(), lr=args.lr, weight_decay=0.0)

    def prefix_of(states: torch.Tensor) -> torch.Tensor:
        prefix = apply(states)
        if args.bos:
            prefix = torch.cat([bos.expand(prefix.shape[0], 1, -1), prefix], dim=1)
        return prefix

    def evaluate() -> dict:
        gains, ces = [], []
        with torch.no_grad():
            for begin in range(0, len(held), 16):
                batch = targets(held[begin : begin + 16])
                prefix = prefix_of(held_states[begin : begin + 16])
                own = conditional_log_probs(decoder, prefix, batch["target_ids"], batch["target_mask"])
                other = conditional_log_probs(decoder, prefix.roll(1, 0), batch["target_ids"], batch["target_mask"])
                gains.append((own.mean - other.mean).mean())
                ces.append(-own.token_log_probs.sum() / batch["target_mask"].sum())
        return {"gain": round(float(torch.stack(gains).mean()), 3), "ce": round(float(torch.stack(ces).mean()), 3)}

    curve = [{"step": 0, **evaluate()}]
    print(json.dumps(curve[-1]), flush=True)
    order = torch.randperm(len(train))
    train_start = time.perf_counter()
    for step in range(1, args.steps + 1):
        index = order[((step - 1) * args.batch) % len(train) :][: args.batch]
        batch = targets([train[i] for i in index])
        own = conditional_log_probs(decoder, prefix_of(train_states[index]), batch["target_ids"], batch["target_mask"])
        loss = -own.token_log_probs.sum() / batch["target_mask"].sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            curve.append({"step": step, "train_seconds": round(time.perf_counter() - train_start, 1), **evaluate()})
            print(json.dumps(curve[-1]), flush=True)
    print(json.dumps({"args": vars(args), "encode_seconds": round(encode_seconds, 1), "curve": curve}))


if __name__ == "__main__":
    main()
