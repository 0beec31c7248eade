"""Issue 14 lab harness: stage-1 (compression) variants on the embedded SmolLM2-135M, each run a readout curve.

Every run trains a :class:`CompressionTrainer` subclass and evaluates, every ``--eval_steps`` steps, on fixed
held-out rows never trained on: 64 NLI sentences to regenerate (``ae``) and 48 QA compression rows (``qa``,
the rows ``examples/reproduce.py`` reports). Logged per evaluation: ``readout_gain`` (nats per target token the
frozen decoder gains from a row's own compress states over the previous row's; ``CompressionTrainer``'s
metric), ``embeddings/mean_cosine`` (collapse alarm), the loss. The curve goes to ``<out>/curve.jsonl`` (one
line per log, with wall-clock seconds) and the config to ``<out>/config.json``.

Options that change the method (all off by default, i.e. the package's stage 1):
- ``--decoder_bos``: the decoder reads ``[BOS ; states ; target]`` (the BOS embedding is the decoder's own), so
  the states are not at the attention-sink position 0 of the Llama decoder.
- ``--decoder_template``: text around the states in the decoder input (``{states}`` marks them; the names in
  ``CHAT_TEMPLATES`` give SmolLM2's chat format, the states as the user turn and the target as the answer).
- ``--state_scale fixed|learned``: the states are rescaled before the decoder reads them: ``fixed`` sets every
  state vector's norm to the mean norm of the decoder's input token embeddings (3.2 for SmolLM2, while the
  last-layer states have norm ~50); ``learned`` multiplies by a trained scalar started at that ratio.
- ``--prefix_map vocab_softmax``: the decoder reads, for each state h, the soft token softmax(h E_out^T / T) E_in
  (its own LM head and input embeddings; tied for SmolLM2): the embedding of the mixture of next tokens the
  state predicts, ``--prefix_temperature`` T.
- ``--contrastive_weight w --contrastive_tau t --contrastive_negatives m``: adds an InfoNCE term over the
  decoder's per-token log-likelihoods, for each row its own states vs the states of m other rows of the batch
  (logits = nats/token / t); the target is its own states. This rewards exactly what readout gain measures.
  ``--ce_weight`` scales the plain cross-entropy; ``--contrastive_only_steps`` trains with the contrastive term
  alone for the first steps.

Run (core 1 only, one torch job at a time)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 1 python examples/research/stage1_lab.py --name base \
        --data ae --max_steps 150 --eval_steps 25
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset, concatenate_datasets
from torch import nn
from transformers import TrainerCallback

from autoreg_embed import CompressionConfig, CompressionTrainer
from autoreg_embed.data.loading import load_rows
from autoreg_embed.modeling.decoder import conditional_log_probs
from autoreg_embed.sentence_transformers import PROMPTEOL_INSTRUCTION, PROMPTEOL_LAYOUT

DATA = Path("../shared/data")
PAPER_INSTRUCTION = "This sentence means in one word: “"
QA_FILES = ("squad2_devhalf_answerable.jsonl", "xquad_en.jsonl", "pubmedqa_pqal.jsonl")
RESERVED_TRIPLETS = 600
"""The first 600 rows of the seed-0 SNLI shuffle are the CDA / InfoNCE triplets of reproduce.py: not trained on."""
CHAT_TEMPLATES = {
    "CHAT_WORDS": "<|im_start|>user\nWrite one sentence using these words: {states}<|im_end|>\n<|im_start|>assistant\n",
    "CHAT_REPEAT": "<|im_start|>user\nRepeat this text: {states}<|im_end|>\n<|im_start|>assistant\n",
    "CHAT": "<|im_start|>user\n{states}<|im_end|>\n<|im_start|>assistant\n",
}
"""Decoder templates (the frozen SmolLM2-Instruct reads the states as a user turn and the target as its answer)."""
HELD_OUT_TRIPLET_ROWS = 64
"""The last rows of that shuffle give the held-out autoencoding sentences."""


def nli_sentences(skip_last: int = HELD_OUT_TRIPLET_ROWS) -> tuple[list[str], list[str]]:
    """(training sentences, 64 held-out sentences) from the SNLI triplets, premises and hypotheses, unique."""
    rows = load_rows(DATA / "nli" / "snli_devtest_triplets.jsonl").shuffle(seed=0)
    train_rows = rows.select(range(RESERVED_TRIPLETS, len(rows) - skip_last))
    held_rows = rows.select(range(len(rows) - skip_last, len(rows)))
    held = list(dict.fromkeys(s for row in held_rows for s in (row["query"], row["pos"])))[:64]
    seen = set(held)
    train = [s for row in train_rows for s in (row["query"], row["pos"], row["neg"]) if s not in seen]
    return list(dict.fromkeys(train)), held


def qa_rows(count: int, skip: int = 0) -> Dataset:
    """``count`` QA rows drawn evenly from the three compression files after ``skip`` rows of each shuffle."""
    parts = [load_rows(DATA / "compression" / name).shuffle(seed=0) for name in QA_FILES]
    per = -(-count // len(QA_FILES))
    return concatenate_datasets([p.select(range(skip, min(skip + per, len(p)))) for p in parts]).select(range(count))


QA_HELD_OUT_SKIP = 700
"""Held-out QA rows start at row 700 of each file's shuffle; training QA rows are taken before it."""


def autoencoding_rows(sentences: list[str], instruction: str) -> Dataset:
    return Dataset.from_dict({"context": sentences, "instruction": [instruction] * len(sentences), "target": sentences})


def continuation_rows(sentences: list[str], instruction: str, tokenizer: Any) -> Dataset:
    """Context = the first half of a sentence's words, target = the rest (needs >= 6 words)."""
    contexts, targets = [], []
    for sentence in sentences:
        words = sentence.split()
        if len(words) >= 6:
            cut = len(words) // 2
            contexts.append(" ".join(words[:cut]))
            targets.append(" ".join(words[cut:]))
    return Dataset.from_dict({"context": contexts, "instruction": [instruction] * len(contexts), "target": targets})


class CenteredGradient(torch.autograd.Function):
    """Identity forward; backward removes the batch mean of the gradient (no common-mode push on the states)."""

    @staticmethod
    def forward(ctx: Any, states: torch.Tensor) -> torch.Tensor:
        return states.view_as(states)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad - grad.mean(dim=0, keepdim=True)


class LabCompressionTrainer(CompressionTrainer):
    """CompressionTrainer with the lab options (decoder BOS, state scaling, contrastive readout term)."""

    def __init__(self, *args: Any, lab: argparse.Namespace, **kwargs: Any) -> None:
        self.lab = lab
        super().__init__(*args, **kwargs)
        embeddings = self.frozen_decoder_embeddings()
        self.embedding_norm = float(embeddings.weight[: embeddings.weight.shape[0] - 8].norm(dim=-1).mean())
        if lab.state_scale == "learned":
            # A scalar on the encoder side (saved with it): log of the factor, started at embedding norm / 50.
            self.model.register_parameter(
                "lab_log_state_scale", nn.Parameter(torch.tensor(math.log(self.embedding_norm / 50.0)))
            )

    def validate(self, dataset: Any, name: str) -> None:
        """Also accept a dict of evaluation sets (the package's validate takes one Dataset)."""
        for key, part in dataset.items() if isinstance(dataset, dict) else [(name, dataset)]:
            super().validate(part, key)

    def frozen_decoder_embeddings(self) -> nn.Module:
        with self.frozen_decoder() as decoder:
            return decoder.get_input_embeddings()

    def decoder_prefix(self, states: torch.Tensor) -> torch.Tensor:
        """The vectors the decoder reads in place of the states (inside ``decoder_template``): optionally a soft
        token or rescaled."""
        if self.lab.prefix_map == "vocab_softmax":
            # A soft token: the decoder's input embedding of the mixture the state predicts through the LM head.
            with self.frozen_decoder() as decoder:
                head = decoder.get_output_embeddings().weight.detach()
                table = decoder.get_input_embeddings().weight.detach()
            mixture = (states @ head.T.to(states.dtype) / self.lab.prefix_temperature).float().softmax(dim=-1)
            states = (mixture @ table.float()).to(states.dtype)
        if self.lab.state_scale == "fixed":
            states = states * (self.embedding_norm / states.float().norm(dim=-1, keepdim=True).to(states.dtype))
        elif self.lab.state_scale == "learned":
            states = states * self.model.lab_log_state_scale.exp().to(states.dtype)
        return states

    def contrastive_active(self) -> bool:
        return self.lab.contrastive_weight > 0 or self.state.global_step < self.lab.contrastive_only_steps

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        encoded = self.encode_batch(model, inputs)
        states = encoded.compress_states
        if self.lab.center_state_grad and model.training:
            states = CenteredGradient.apply(states)
        prefix = self.decoder_prefix(states)
        ids, mask = inputs["target_ids"], inputs["target_mask"]
        batch = ids.shape[0]
        with self.frozen_decoder() as decoder:
            own = conditional_log_probs(decoder, prefix, ids, mask, prompt=self.decoder_prompt)
            ce = -own.token_log_probs.sum() / mask.sum()
            metrics: dict[str, Any] = {"target_log_prob_per_token": own.mean.mean(), "ce": ce}
            negatives = min(self.lab.contrastive_negatives, batch - 1)
            contrastive_only = model.training and self.state.global_step < self.lab.contrastive_only_steps
            use_contrastive = model.training and (self.lab.contrastive_weight > 0 or contrastive_only) and negatives > 0
            if use_contrastive:
                others = [
                    conditional_log_probs(
                        decoder, prefix.roll(shift, dims=0), ids, mask, prompt=self.decoder_prompt
                    ).mean
                    for shift in range(1, negatives + 1)
                ]
                scores = torch.stack([own.mean, *others], dim=1)  # (B, 1 + m) nats per token
                info = F.cross_entropy(scores / self.lab.contrastive_tau, scores.new_zeros(batch, dtype=torch.long))
                metrics["infonce"] = info
                metrics["train_gain"] = (own.mean - others[0]).mean()
                weight = 1.0 if contrastive_only else self.lab.contrastive_weight
                loss = (0.0 if contrastive_only else self.lab.ce_weight) * ce + weight * info
            else:
                loss = self.lab.ce_weight * ce
        self.check_finite(loss)
        if not model.training and batch > 1:
            with torch.no_grad(), self.frozen_decoder() as decoder:
                other = conditional_log_probs(decoder, prefix.roll(1, dims=0), ids, mask, prompt=self.decoder_prompt)
            metrics["readout_gain"] = (own.mean - other.mean).mean()
        if self.lab.state_scale == "learned":
            metrics["state_scale"] = self.model.lab_log_state_scale.exp()
        metrics["state_norm"] = encoded.compress_states.float().norm(dim=-1).mean()
        self.record_metrics(metrics)
        self.record_embedding_spread(encoded.embedding)
        if return_outputs:
            return loss, {"embedding": encoded.embedding}
        return loss


class CurveWriter(TrainerCallback):
    """Append every log (train and eval) with wall-clock seconds to ``curve.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.perf_counter()
        self.eval_seconds = 0.0
        self.eval_start: float | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        logs = dict(logs or {})
        names = [key[len("eval_") : -len("_loss")] for key in logs if key.startswith("eval_") and key.endswith("_loss")]
        if names:  # one evaluation set: name its metrics (the trainer prefixes them with eval_ only)
            own_prefix = f"eval_{names[0]}_"
            logs = {
                f"{names[0]}/{key.removeprefix(own_prefix).removeprefix('eval_')}": value
                for key, value in logs.items()
                if key.startswith("eval_")
            } | {key: value for key, value in logs.items() if not key.startswith("eval_")}
        self.eval_seconds += sum(value for key, value in logs.items() if key.endswith("/runtime"))
        elapsed = time.perf_counter() - self.start
        entry = {
            "step": state.global_step,
            "seconds": round(elapsed, 1),
            "train_seconds": round(elapsed - self.eval_seconds, 1),
        }
        entry |= logs
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        shown = ("readout_gain", "mean_cosine", "loss", "ce", "infonce", "train_gain", "state_scale", "state_norm")
        keys = [k for k in entry if k.split("/")[-1] in shown]
        print(" ".join(f"{k}={entry[k]:.4g}" for k in ["step", "train_seconds", *keys]), flush=True)


def build_datasets(args: argparse.Namespace, tokenizer: Any) -> tuple[Dataset, dict[str, Dataset]]:
    instruction = PROMPTEOL_INSTRUCTION if args.layout == "prompteol" else PAPER_INSTRUCTION
    train_sentences, held_sentences = nli_sentences()
    parts = []
    if "ae" in args.data:
        parts.append(autoencoding_rows(train_sentences[: args.ae_rows], instruction))
    if "qa" in args.data:
        parts.append(qa_rows(args.qa_rows).select_columns(["context", "instruction", "target"]))
    if "cont" in args.data:
        parts.append(continuation_rows(train_sentences[: args.ae_rows], instruction, tokenizer))
    train = concatenate_datasets(parts).shuffle(seed=args.seed)
    evals = {
        "ae": autoencoding_rows(held_sentences, instruction),
        "qa": qa_rows(48, skip=QA_HELD_OUT_SKIP).select_columns(["context", "instruction", "target"]),
    }
    return train, {name: evals[name] for name in args.eval_sets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out_root", default="runs/issue14")
    parser.add_argument("--data", default="ae", help="ae, qa, cont or combinations like ae+qa")
    parser.add_argument("--ae_rows", type=int, default=100000)
    parser.add_argument("--qa_rows", type=int, default=1800)
    parser.add_argument("--eval_sets", nargs="+", default=["ae", "qa"])
    parser.add_argument("--layout", choices=["prompteol", "paper"], default="prompteol")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup_steps", type=int, default=20)
    parser.add_argument("--scheduler", default="constant_with_warmup")
    parser.add_argument("--max_steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval_steps", type=int, default=25)
    parser.add_argument("--max_length", type=int, default=96)
    parser.add_argument("--max_target_length", type=int, default=64)
    parser.add_argument("--lora_r", type=int, default=0, help="0: full fine-tuning")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--decoder_bos", action="store_true")
    parser.add_argument("--state_scale", choices=["none", "fixed", "learned"], default="none")
    parser.add_argument(
        "--decoder_template",
        default=None,
        help="text around the states in the decoder input, with {states}; e.g. CHAT_WORDS (see CHAT_TEMPLATES)",
    )
    parser.add_argument("--prefix_map", choices=["identity", "vocab_softmax"], default="identity")
    parser.add_argument("--prefix_temperature", type=float, default=1.0)
    parser.add_argument("--ce_weight", type=float, default=1.0)
    parser.add_argument("--contrastive_weight", type=float, default=0.0)
    parser.add_argument("--contrastive_tau", type=float, default=0.2)
    parser.add_argument("--contrastive_negatives", type=int, default=3)
    parser.add_argument("--contrastive_only_steps", type=int, default=0)
    parser.add_argument("--center_state_grad", action="store_true", help="remove the batch mean of dL/dstates")
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", action="store_true", help="save the final encoder to <out>/model")
    args = parser.parse_args()
    args.decoder_template = CHAT_TEMPLATES.get(args.decoder_template, args.decoder_template)

    out = Path(args.out_root) / args.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.jsonl").unlink(missing_ok=True)
    (out / "config.json").write_text(json.dumps(vars(args), indent=2))
    layout = dict(PROMPTEOL_LAYOUT) if args.layout == "prompteol" else {}
    config = CompressionConfig(
        output_dir=str(out),
        num_compress_tokens=args.k,
        **layout,
        decoder_template=args.decoder_template or ("<|im_start|>{states}" if args.decoder_bos else None),
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type=args.scheduler,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=16,
        max_text_length=args.max_length,
        max_instruction_length=args.max_length,
        max_target_length=args.max_target_length,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        eval_on_start=True,
        logging_steps=args.eval_steps,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        bf16=args.bf16,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        disable_tqdm=True,
        dataloader_drop_last=True,
    )
    peft_config = None
    if args.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            lora_dropout=0.0,
        )
    from autoreg_embed.modeling.checkpoint import load_tokenizer

    train, evals = build_datasets(args, load_tokenizer(None))
    print(f"train rows {len(train)}; eval sets { {k: len(v) for k, v in evals.items()} }", flush=True)
    trainer = LabCompressionTrainer(
        model=None,
        args=config,
        train_dataset=train,
        eval_dataset=evals,
        peft_config=peft_config,
        lab=args,
        callbacks=[CurveWriter(out / "curve.jsonl")],
    )
    trainer.train()
    if args.save:
        trainer.save_model(str(out / "model"))


if __name__ == "__main__":
    main()
