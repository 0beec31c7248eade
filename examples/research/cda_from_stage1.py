"""Issue 14, item 2 (one seed): CDA from a readable stage 1 vs InfoNCE vs PromptEOL on STS-B dev (first 500 pairs).

From a stage-1 checkpoint saved by ``stage1_lab.py --save`` (prompteol layout, k compress tokens, the decoder
reading the states inside ``--decoder_template``), runs on the same N SNLI triplets as ``examples/reproduce.py``
(first N of the seed-0 shuffle):
- the stage-1 encoder alone (STS-B dev, readout gain on the 64 held-out AE sentences);
- CDA from it (``CDATrainer`` whose frozen decoder reads the states inside the same template; paper defaults
  beta 0.1, tau 0.05, lr 5e-6, 1 epoch, precomputed reference), then STS-B dev and readout gain again;
- InfoNCE (``ContrastiveTrainer``, same layout and k, from the base model, lr 2e-5, 1 epoch);
- the untrained PromptEOL prompt.
Every encoder is evaluated with the instruction it was trained with (PromptEOL's "means in one word").
Writes ``results.json`` to ``--output_dir`` with Spearman x100 and wall-clock seconds of every row.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 1 python examples/research/cda_from_stage1.py \
        --stage1 runs/issue14/long1/model --decoder_template CHAT_WORDS --output_dir runs/issue14/cda1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoreg_embed import CDAConfig, CDATrainer, CompressionConfig, ContrastiveConfig, ContrastiveTrainer, load
from autoreg_embed.data.cda_collator import log_prob_spec
from autoreg_embed.evaluation import evaluate_sts
from autoreg_embed.modeling.decoder import conditional_log_probs
from autoreg_embed.modeling.encoder import encode
from autoreg_embed.sentence_transformers import PROMPTEOL_INSTRUCTION, PROMPTEOL_TEMPLATE, baseline
from autoreg_embed.trainers.cda_trainer import RoleLogProbs

sys.path.insert(0, "examples")
sys.path.insert(0, "examples/research")
from reproduce import SIZES, common_options, layout_options, triplets
from stage1_lab import CHAT_TEMPLATES, LabCompressionTrainer, autoencoding_rows, nli_sentences, wrap_in_template

DATA = Path("../shared/data")
PROMPTS = {"query": PROMPTEOL_INSTRUCTION, "document": PROMPTEOL_INSTRUCTION}


class TemplateCDATrainer(CDATrainer):
    """CDATrainer whose frozen decoder reads the compress states inside a text template (as in stage 1)."""

    def __init__(self, *args: Any, decoder_template: str, **kwargs: Any) -> None:
        self.decoder_template = decoder_template
        super().__init__(*args, **kwargs)

    def role_log_probs(
        self, encoder: nn.Module, names: Any, inputs: dict[str, torch.Tensor], distributions: bool = False
    ) -> RoleLogProbs:
        """``CDATrainer.role_log_probs`` with one change: the decoder prefix is the templated states."""
        prefix = torch.cat([inputs[f"{name}.prefix_index"].flatten() for name in names])
        target = torch.cat([inputs[f"{name}.target_index"].flatten() for name in names])
        rows, row_of = prefix.unique(return_inverse=True)
        encoded = encode(encoder, inputs["input_ids"][rows], inputs["attention_mask"][rows], self.encoder_settings)
        states = encoded.compress_states
        pairs, pair_of = torch.stack([row_of, target]).unique(dim=1, return_inverse=True)
        target_ids, target_mask = inputs["target_ids"][pairs[1]], inputs["target_mask"][pairs[1]]
        with self.frozen_decoder() as decoder:
            templated = wrap_in_template(
                states[pairs[0]], self.decoder_template, self.processing_class, decoder.get_input_embeddings()
            )
            scored = conditional_log_probs(decoder, templated, target_ids, target_mask, distributions)
        per_pair = scored.mean if self.args.length_normalize else scored.sum
        values, offsets, offset = {}, {}, 0
        for name in names:
            shape = inputs[f"{name}.prefix_index"].shape
            index = pair_of[offset : offset + shape.numel()]
            offsets[name] = index
            offset += shape.numel()
            value = per_pair[index].view(shape)
            values[name] = value if log_prob_spec(name).per_negative else value.squeeze(1)

        def distributions_of(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            index = offsets[name]
            return scored.log_probs[index], target_mask[index]

        return RoleLogProbs(values, distributions_of, encoded.embedding)


def sts(model: Any) -> float:
    return evaluate_sts(model, DATA / "sts" / "stsb_dev.jsonl", limit=500)["spearman"]


def readout(path: str, template: str, k: int, out: Path) -> dict[str, float]:
    """Readout gain and CE on the 64 held-out AE sentences, the decoder reading the states inside ``template``."""
    _, held = nli_sentences()
    layout, _ = layout_options("prompteol", k)
    lab = argparse.Namespace(
        decoder_template=template, decoder_bos=False, state_scale="none", prefix_map="identity",
        center_state_grad=False, ce_weight=1.0, contrastive_weight=0.0, contrastive_only_steps=0,
        contrastive_negatives=0, contrastive_tau=1.0,
    )  # fmt: skip
    args = CompressionConfig(
        output_dir=str(out), **layout, per_device_eval_batch_size=16, max_target_length=64, report_to="none"
    )
    trainer = LabCompressionTrainer(model=path, args=args, lab=lab)
    metrics = trainer.evaluate(autoencoding_rows(held, PROMPTEOL_INSTRUCTION))
    return {"readout_gain": metrics["eval_readout_gain"], "ce": metrics["eval_loss"]}


def timed(function: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, round(time.perf_counter() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1", required=True)
    parser.add_argument("--decoder_template", default="CHAT_WORDS")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--triplets", type=int, default=600)
    parser.add_argument("--cda_lr", type=float, default=5e-6)
    parser.add_argument("--cda_epochs", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--reference_sign", default="paper")
    parser.add_argument("--infonce_lr", type=float, default=2e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], help="rows to skip: prompteol infonce stage1 cda")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    template = CHAT_TEMPLATES.get(args.decoder_template, args.decoder_template)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"args": vars(args), "rows": {}}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(json.dumps(results["rows"], indent=1), flush=True)

    sizes = SIZES["small"]
    layout, instructions = layout_options("prompteol", args.k)
    rows = triplets(DATA, args.triplets, 0)
    if "prompteol" not in args.skip:
        score, seconds = timed(lambda: sts(baseline(None, "last", PROMPTEOL_TEMPLATE)))
        results["rows"]["PromptEOL (untrained)"] = {"spearman": score, "seconds": seconds}
        save()
    if "stage1" not in args.skip:
        score, seconds = timed(lambda: sts(load(args.stage1, prompts=PROMPTS)))
        results["rows"]["stage 1 only"] = {"spearman": score, "eval_seconds": seconds}
        results["rows"]["stage 1 only"].update(readout(args.stage1, template, args.k, out / "readout"))
        save()
    if "cda" not in args.skip:
        cda_dir = out / "cda"
        options = {**common_options(sizes, cda_dir, layout), "seed": args.seed}
        trainer = TemplateCDATrainer(
            model=args.stage1,
            args=CDAConfig(
                **options,
                **instructions,
                max_target_length=sizes.max_length,
                learning_rate=args.cda_lr,
                num_train_epochs=args.cda_epochs,
                beta=args.beta,
                temperature=args.tau,
                reference_sign=args.reference_sign,
                precompute_ref_log_probs=True,
                ref_log_probs_cache_dir=str(out / "ref_cache"),
            ),
            train_dataset=rows,
            decoder_template=template,
        )
        _, seconds = timed(lambda: (trainer.train(), trainer.save_model(str(cda_dir))))
        history = [entry for entry in trainer.state.log_history if "loss" in entry]
        score = sts(load(str(cda_dir), prompts=PROMPTS))
        results["rows"]["stage 1 + CDA"] = {"spearman": score, "train_seconds": seconds, "log": history}
        results["rows"]["stage 1 + CDA"].update(readout(str(cda_dir), template, args.k, out / "readout"))
        save()
    if "infonce" not in args.skip:
        infonce_dir = out / "infonce"
        trainer = ContrastiveTrainer(
            model=None,
            args=ContrastiveConfig(
                **{**common_options(sizes, infonce_dir, layout), "seed": args.seed},
                **instructions,
                learning_rate=args.infonce_lr,
                num_train_epochs=1,
            ),
            train_dataset=rows,
        )
        _, seconds = timed(lambda: (trainer.train(), trainer.save_model(str(infonce_dir))))
        score = sts(load(str(infonce_dir), prompts=PROMPTS))
        results["rows"]["InfoNCE"] = {"spearman": score, "train_seconds": seconds}
        save()


if __name__ == "__main__":
    main()
