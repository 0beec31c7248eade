"""Stage 2 of AutoRegEmbed: conditional distribution alignment (CDA)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from autoreg_embed.data.cda_collator import CDACollator, one_positive_per_row
from autoreg_embed.data.collators import TargetBuilder
from autoreg_embed.default_model import cache_dir
from autoreg_embed.losses.cda import (
    DIVERGENCE_LOG_PROBS,
    STRATEGIES,
    CDALossOutput,
    divergence_loss,
    strategy_loss,
)
from autoreg_embed.losses.cda_log_probs import NEG_GIVEN_QUERY, POS_GIVEN_QUERY, LogProb
from autoreg_embed.modeling.decoder import conditional_log_probs, original_decoder
from autoreg_embed.modeling.encoder import encode
from autoreg_embed.modeling.inputs import EncoderInputBuilder
from autoreg_embed.modeling.reference import ReferenceEncoder
from autoreg_embed.trainers.base_trainer import AutoRegTrainer
from autoreg_embed.trainers.cda_config import CDAConfig

logger = logging.getLogger(__name__)


def weights_fingerprint(modules: Sequence[nn.Module]) -> str:
    """A hash of the frozen parameters (names, shapes, sums and sums of squares) of ``modules``."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for module in modules:
            for name, parameter in module.named_parameters():
                if parameter.requires_grad:
                    continue
                values = parameter.detach().double()
                digest.update(f"{name}{tuple(parameter.shape)}{values.sum().item():.12e}".encode())
                digest.update(f"{values.square().sum().item():.12e}".encode())
    return digest.hexdigest()


class RoleLogProbs(NamedTuple):
    """What :meth:`CDATrainer.role_log_probs` returns."""

    values: dict[LogProb, torch.Tensor]
    """Log-probs, (B,) or (B, n)."""
    distributions_of: Callable[[LogProb], tuple[torch.Tensor, torch.Tensor]]
    """Log-prob -> its next-token log-distributions (B, T, V) or (B, n, T, V), and target mask (B[, n], T);
    only when asked for."""
    embeddings: torch.Tensor
    """(R, H) pooled embeddings of the batch's distinct encoded rows."""


class CDATrainer(AutoRegTrainer):
    """Align the conditional distributions that embeddings induce under the frozen decoder (paper §3.2).

    For a query q, a positive d+ and negatives d-_i, with ``lp(x | e)`` the log-probability of text x under the
    frozen original LLM conditioned on the k compress states e, and ``lp_ref`` the same with the encoder as
    it was at the start of stage 2::

        S1   = -g(beta * |lp(d+ | e_{q,I_next}) - lp(d+ | e_{d+,I_self})|)
        S2_i = -g(beta * [(lp(d+ | e_q) - lp_ref(d+ | e_q)) - (lp(d-_i | e_q) - lp_ref(d-_i | e_q))])
        L    = -log(exp(S1/tau) / (exp(S1/tau) + sum_i exp(S2_i/tau)))

    ``args.strategy`` selects the paper's appendix-E variants, ``args.similarity`` its KL / JS variant and
    ``args.recipe="official"`` the official code's settings (``docs/cda_loss.md``).
    Per batch the encoder runs once over every distinct (text, instruction) it must embed, and the decoder
    once over every (embedding, target) pair; the reference likewise, without gradients.

    Args:
        model: the encoder: a stage-1 checkpoint path, a model, or any causal LM (``None``: embedded SmolLM2).
        ref_model: the reference encoder. If omitted: the PEFT policy with its trainable adapter off, else a
            frozen copy of ``model`` taken before training; with ``precompute_ref_log_probs`` the reference runs
            once before training and is then released.
        decoder: the frozen original LLM (default: chosen by :func:`original_decoder`).
        train_dataset / eval_dataset: rows with ``query``, ``pos`` (a string or a list of positives: see
            ``args.positives``), ``neg`` (a string or a list; the same count in every row); optional
            ``instruction_next`` / ``instruction_self`` / ``instruction_prev``.
        peft_config: a PEFT config for stage 2; on a PEFT stage-1 model it becomes a second adapter ``align``
            (stage-1 adapter frozen, used by the reference; both off for the decoder: one set of base weights).
    """

    text_columns = ("query",)
    list_columns = ("pos", "neg")
    optional_columns = ("instruction_next", "instruction_self", "instruction_prev")
    config_class = CDAConfig
    default_output_dir = "cda-output"

    def __init__(
        self,
        model: str | PreTrainedModel | nn.Module | None = None,
        ref_model: nn.Module | None = None,
        args: CDAConfig | None = None,
        *trainer_args: Any,
        decoder: PreTrainedModel | None = None,
        **kwargs: Any,
    ) -> None:
        self._ref_model, self._decoder = ref_model, decoder
        super().__init__(model, args, *trainer_args, **kwargs)
        self.train_dataset = self.one_positive_per_row(self.train_dataset)
        self.eval_dataset = self.one_positive_per_row(self.eval_dataset)
        for separate in (self.frozen_decoder.decoder, self.reference.model):
            if separate is not None:
                separate.to(self.args.device)
        if self.args.precompute_ref_log_probs and self.reference_specs:
            self.train_dataset = self.with_reference_log_probs(self.train_dataset, "train")
            if self.eval_dataset is not None:
                self.eval_dataset = self.with_reference_log_probs(self.eval_dataset, "eval")
            if self.reference.kind == "model":
                self.reference = None  # no longer needed: release the separate reference model

    def prepare_components(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, args: CDAConfig) -> None:
        needed = STRATEGIES[args.strategy].log_probs if args.similarity == "log_prob" else DIVERGENCE_LOG_PROBS
        self.policy_specs: tuple[LogProb, ...] = tuple(spec for spec in needed if spec.role == "policy")
        """The log-probs the policy computes per batch."""
        self.reference_specs: tuple[LogProb, ...] = tuple(spec for spec in needed if spec.role == "reference")
        """The log-probs of the reference (none for the KL / JS similarity)."""
        self.frozen_decoder = original_decoder(model, self.encoder_settings, self._decoder)
        self.reference = ReferenceEncoder(model, self._ref_model)
        self.encoder_inputs = EncoderInputBuilder(tokenizer, self.encoder_settings)
        self.target_builder = TargetBuilder(tokenizer, args.max_target_length)

    def default_collator(self, tokenizer: PreTrainedTokenizerBase, args: CDAConfig) -> CDACollator:
        return self._collator(
            self.policy_specs + self.reference_specs, self.reference_specs if args.precompute_ref_log_probs else ()
        )

    def one_positive_per_row(self, dataset: Dataset | None) -> Dataset | None:
        """``dataset`` with one positive per row, per ``args.positives`` (see :func:`one_positive_per_row`)."""
        return dataset if not isinstance(dataset, Dataset) else one_positive_per_row(dataset, self.args.positives)

    def get_eval_dataloader(self, eval_dataset: Dataset | str | None = None) -> DataLoader:
        """A dataset passed to ``evaluate`` gets one positive per row and, with precomputed reference log-probs,
        its reference columns first."""
        eval_dataset = self.one_positive_per_row(eval_dataset) if isinstance(eval_dataset, Dataset) else eval_dataset
        if (
            self.args.precompute_ref_log_probs
            and isinstance(eval_dataset, Dataset)
            and not {spec.name for spec in self.reference_specs} <= set(eval_dataset.column_names)
        ):
            if self.reference is None:
                raise ValueError(
                    "This dataset has no precomputed reference log-probs and the reference model was released "
                    "after precomputing. Pass it as eval_dataset when creating the trainer, or pass ref_model."
                )
            eval_dataset = self.with_reference_log_probs(eval_dataset, "eval")
        return super().get_eval_dataloader(eval_dataset)

    def _collator(self, specs: Sequence[LogProb], precomputed: Sequence[LogProb] = ()) -> CDACollator:
        return CDACollator(self.encoder_inputs, self.target_builder, specs, self.instruction_texts, precomputed)

    # ---- log-probabilities -------------------------------------------------------------------------------

    def role_log_probs(
        self, encoder: nn.Module, specs: Sequence[LogProb], inputs: dict[str, torch.Tensor], distributions: bool = False
    ) -> RoleLogProbs:
        """Log-probs ``specs`` with one encoder pass (distinct rows) and one decoder pass (distinct pairs).

        ``distributions``: also keep the full next-token log-distributions (KL / JS similarities).
        """
        prefix = torch.cat([inputs[f"{spec.key}.prefix_index"].flatten() for spec in specs])
        target = torch.cat([inputs[f"{spec.key}.target_index"].flatten() for spec in specs])
        rows, row_of = prefix.unique(return_inverse=True)
        encoded = encode(encoder, inputs["input_ids"][rows], inputs["attention_mask"][rows], self.encoder_settings)
        states = encoded.compress_states
        pairs, pair_of = torch.stack([row_of, target]).unique(dim=1, return_inverse=True)
        target_ids, target_mask = inputs["target_ids"][pairs[1]], inputs["target_mask"][pairs[1]]
        with self.frozen_decoder() as decoder:
            scored = conditional_log_probs(decoder, states[pairs[0]], target_ids, target_mask, distributions)
        per_pair = scored.mean if self.args.length_normalize else scored.sum
        values, indices, offset = {}, {}, 0
        for spec in specs:
            shape = inputs[f"{spec.key}.prefix_index"].shape
            index = pair_of[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
            indices[spec] = index if spec.per_negative else index.squeeze(1)
            values[spec] = per_pair[indices[spec]]

        def distributions_of(spec: LogProb) -> tuple[torch.Tensor, torch.Tensor]:
            return scored.log_probs[indices[spec]], target_mask[indices[spec]]

        return RoleLogProbs(values, distributions_of, encoded.embedding)

    def reference_log_probs(self, inputs: dict[str, torch.Tensor]) -> dict[LogProb, torch.Tensor]:
        """The reference log-probs of a batch: precomputed columns, or one no-grad pass of the reference."""
        if self.args.precompute_ref_log_probs:
            return {spec: inputs[spec.name] for spec in self.reference_specs}
        if not self.reference_specs:
            return {}
        with torch.no_grad(), self.reference() as reference:
            return self.role_log_probs(reference, self.reference_specs, inputs).values

    def compute_cda_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> CDALossOutput:
        """Run policy and reference on a batch and combine them with :func:`strategy_loss` (or
        :func:`divergence_loss` for the KL / JS similarity)."""
        args = self.args
        options = {"temperature": args.temperature, "bound": args.bound, "multi_negative": args.multi_negative}
        if args.similarity == "log_prob":
            log_probs, _, embeddings = self.role_log_probs(model, self.policy_specs, inputs)
            log_probs.update(self.reference_log_probs(inputs))
            output = strategy_loss(
                args.strategy, log_probs, beta=args.beta, reference_sign=args.reference_sign, **options
            )
            shown = STRATEGIES[args.strategy].preferences[0]  # the first terms are the ones the diagnostics show
            positive, negative, gap = shown.chosen, shown.rejected, "logps/alignment_gap"
        else:
            log_probs, distributions_of, embeddings = self.role_log_probs(model, self.policy_specs, inputs, True)
            distributions = {spec: distributions_of(spec) for spec in self.policy_specs}
            output = divergence_loss(args.similarity, distributions, **options)
            positive, negative, gap = POS_GIVEN_QUERY, NEG_GIVEN_QUERY, "divergence/positive"
        metrics = {
            "s1": output.s1.mean(),
            "s2": output.s2.mean(),
            "logps/positive": log_probs[positive].mean(),
            "logps/negative": log_probs[negative].mean(),
            gap: output.alignment_gap.mean(),
        }
        if output.reward_margins is not None:
            metrics["rewards/margins"] = output.reward_margins.mean()
            metrics["rewards/accuracies"] = (output.reward_margins > 0).float().mean()
        self.record_metrics(metrics)
        self.record_embedding_spread(embeddings)
        return output

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, CDALossOutput]:
        """The CDA loss of the batch (mean over queries)."""
        output = self.compute_cda_loss(self.accelerator.unwrap_model(model), inputs)
        self.check_finite(output.loss)
        return (output.loss, output) if return_outputs else output.loss

    # ---- precomputed reference log-probs -------------------------------------------------------------------

    def _reference_cache_file(self, dataset: Dataset) -> Path:
        modules = [self.model] if self.reference.model is None else [self.reference.model]
        if self.frozen_decoder.decoder is not None:
            modules.append(self.frozen_decoder.decoder)
        settings = {
            "log_probs": [spec.name for spec in self.reference_specs],
            "instructions": self.instruction_texts,
            "length_normalize": self.args.length_normalize,
            "max_target_length": self.args.max_target_length,
            "encoder": self.encoder_settings.__dict__,
        }
        key = hashlib.sha256(
            json.dumps([dataset._fingerprint, weights_fingerprint(modules), settings], sort_keys=True).encode()
        ).hexdigest()[:24]
        folder = Path(self.args.ref_log_probs_cache_dir or cache_dir() / "ref_log_probs")
        return folder / f"{key}.json"

    def with_reference_log_probs(self, dataset: Dataset, split: str) -> Dataset:
        """``dataset`` with one column per ``ref_*`` name: read from the disk cache, or computed in one pass."""
        cache_file = self._reference_cache_file(dataset)
        if cache_file.is_file():
            logger.info("Reusing reference log-probs from %s.", cache_file)
            columns = json.loads(cache_file.read_text())
        else:
            columns = {spec.name: [] for spec in self.reference_specs}
            loader = DataLoader(
                dataset,
                batch_size=self.args.per_device_eval_batch_size,
                collate_fn=self._collator(self.reference_specs),
                shuffle=False,
            )
            quiet = self.args.disable_tqdm or not self.is_local_process_zero()
            for batch in tqdm(loader, desc=f"Reference log-probs ({split})", disable=quiet):
                batch = self._prepare_inputs(batch)
                with torch.no_grad(), self.reference() as reference:
                    values = self.role_log_probs(reference, self.reference_specs, batch).values
                for spec, value in values.items():
                    columns[spec.name].extend(value.float().cpu().tolist())
            if self.args.should_save:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                staging = cache_file.with_suffix(".tmp")
                staging.write_text(json.dumps(columns))
                os.replace(staging, cache_file)
        for name, values in columns.items():
            if name in dataset.column_names:
                dataset = dataset.remove_columns(name)
            dataset = dataset.add_column(name, values)
        return dataset
