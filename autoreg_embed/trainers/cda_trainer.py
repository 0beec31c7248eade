"""Stage 2 of AutoRegEmbed: conditional distribution alignment (CDA)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations import is_deepspeed_zero3_enabled

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
from autoreg_embed.modeling.decoder import conditional_log_probs
from autoreg_embed.modeling.encoder import encode
from autoreg_embed.modeling.frozen import FrozenRole, original_decoder, reference_role
from autoreg_embed.modeling.inputs import EncoderInputBuilder
from autoreg_embed.trainers.base_trainer import AutoRegTrainer, precomputed_cache_file, replace_columns
from autoreg_embed.trainers.cda_config import CDAConfig

logger = logging.getLogger(__name__)


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
            frozen copy of ``model`` taken before training (see
            :func:`~autoreg_embed.modeling.frozen.reference_role`); with ``precompute_ref_log_probs`` the
            reference runs once before training (split across processes) and a separate one is then released.
        decoder: the frozen original LLM (default: chosen by
            :func:`~autoreg_embed.modeling.frozen.original_decoder`).
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

    def prepare_components(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, args: CDAConfig) -> None:
        needed = STRATEGIES[args.strategy].log_probs if args.similarity == "log_prob" else DIVERGENCE_LOG_PROBS
        self.policy_specs: tuple[LogProb, ...] = tuple(spec for spec in needed if spec.role == "policy")
        """The log-probs the policy computes per batch."""
        self.reference_specs: tuple[LogProb, ...] = tuple(spec for spec in needed if spec.role == "reference")
        """The log-probs of the reference (none for the KL / JS similarity)."""
        self.encoder_inputs = EncoderInputBuilder(tokenizer, self.encoder_settings)
        self.target_builder = TargetBuilder(tokenizer, args.max_target_length)

    def create_frozen_roles(self, model: nn.Module, args: CDAConfig) -> None:
        """The decoder (original LLM) and the reference (the encoder now); with precomputed reference log-probs,
        compute them now, and release a separate reference model afterwards."""
        self.frozen_decoder = original_decoder(model, self.encoder_settings, self._decoder)
        self.reference = (  # none for KL / JS
            reference_role(model, self._ref_model, precompute=args.precompute_ref_log_probs)
            if self.reference_specs
            else None
        )
        for role in (self.frozen_decoder, self.reference):
            if role is not None:
                role.prepare(self.prepare_frozen_model)
        if args.precompute_ref_log_probs and self.reference_specs:
            self.train_dataset = self.with_reference_log_probs(self.train_dataset, "train")
            if self.eval_dataset is not None:
                self.eval_dataset = self.with_reference_log_probs(self.eval_dataset, "eval")
            if not self.reference.shares_policy_weights or self.reference.adapters is None:
                self.reference = None  # a separate model, or the policy before training: release it

    def default_collator(self, tokenizer: PreTrainedTokenizerBase, args: CDAConfig) -> CDACollator:
        return self._collator(
            self.policy_specs + self.reference_specs, self.reference_specs if args.precompute_ref_log_probs else ()
        )

    def prepare_dataset(self, dataset: Any, args: CDAConfig) -> Any:
        """One positive per row, per ``args.positives`` (see :func:`one_positive_per_row`)."""
        return one_positive_per_row(dataset, args.positives) if isinstance(dataset, Dataset) else dataset

    def get_eval_dataloader(self, eval_dataset: Dataset | str | None = None) -> DataLoader:
        """A dataset passed to ``evaluate`` gets one positive per row and, with precomputed reference log-probs,
        its reference columns first."""
        eval_dataset = self.prepare_dataset(eval_dataset, self.args)
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
        self,
        model: nn.Module,
        specs: Sequence[LogProb],
        inputs: dict[str, torch.Tensor],
        distributions: bool = False,
        encoder_role: FrozenRole | None = None,
    ) -> RoleLogProbs:
        """Log-probs ``specs`` with one encoder pass (distinct rows) and one decoder pass (distinct pairs).

        ``model``: the model ``compute_loss`` received (engine-wrapped when several processes train). The encoder
        is that model (the policy) or ``encoder_role`` (e.g. :attr:`reference`; call under ``torch.no_grad()``);
        the decoder is :attr:`frozen_decoder`, the original LLM. ``distributions``: also keep the full
        next-token log-distributions (KL / JS similarities).
        """
        prefix = torch.cat([inputs[f"{spec.key}.prefix_index"].flatten() for spec in specs])
        target = torch.cat([inputs[f"{spec.key}.target_index"].flatten() for spec in specs])
        rows, row_of = prefix.unique(return_inverse=True)
        with encoder_role(model) if encoder_role else contextlib.nullcontext(model) as encoder:
            encoded = encode(encoder, inputs["input_ids"][rows], inputs["attention_mask"][rows], self.encoder_settings)
        states = encoded.compress_states
        pairs, pair_of = torch.stack([row_of, target]).unique(dim=1, return_inverse=True)
        target_ids, target_mask = inputs["target_ids"][pairs[1]], inputs["target_mask"][pairs[1]]
        with self.frozen_decoder(model) as decoder:
            scored = conditional_log_probs(
                decoder, states[pairs[0]], target_ids, target_mask, distributions, self.decoder_prompt
            )
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

    def reference_log_probs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[LogProb, torch.Tensor]:
        """The reference log-probs of a batch: precomputed columns, or one no-grad pass of the reference."""
        if self.args.precompute_ref_log_probs:
            return {spec: inputs[spec.name] for spec in self.reference_specs}
        if not self.reference_specs:
            return {}
        with torch.no_grad():
            return self.role_log_probs(model, self.reference_specs, inputs, encoder_role=self.reference).values

    def compute_cda_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> CDALossOutput:
        """Run policy and reference on a batch and combine them with :func:`strategy_loss` (or
        :func:`divergence_loss` for the KL / JS similarity)."""
        args = self.args
        options = {"temperature": args.temperature, "bound": args.bound, "multi_negative": args.multi_negative}
        if args.similarity == "log_prob":
            log_probs, _, embeddings = self.role_log_probs(model, self.policy_specs, inputs)
            log_probs.update(self.reference_log_probs(model, inputs))
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
        """The CDA loss, averaged over the queries of the optimisation step."""
        output = self.compute_cda_loss(model, inputs)
        loss = self.average_over_items(output.per_example.sum(), self.loss_items(inputs), num_items_in_batch)
        self.check_finite(loss)
        return (loss, output) if return_outputs else loss

    def loss_items(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss averages over queries (rows)."""
        return torch.tensor(inputs[f"{self.policy_specs[0].key}.prefix_index"].shape[0])

    # ---- precomputed reference log-probs -------------------------------------------------------------------

    def _reference_cache_file(self, dataset: Dataset) -> Path | None:
        """Where the reference log-probs of ``dataset`` are cached: keyed by the dataset, the frozen weights and the
        settings, as decided by the main process. ``None`` (no cache) when DeepSpeed ZeRO-3 shards the weights."""
        if is_deepspeed_zero3_enabled():
            return None
        reference = self.reference
        if reference.shares_policy_weights and reference.adapters is not None:  # base + frozen adapters of the policy
            weights = [(n, p) for n, p in self.model.named_parameters() if not p.requires_grad]
        else:  # a separate model, or the whole policy before training
            weights = list((reference.model or self.model).named_parameters())
        if not self.frozen_decoder.shares_policy_weights:
            weights += [(f"decoder.{n}", p) for n, p in self.frozen_decoder.model.named_parameters()]
        settings = {
            "log_probs": [spec.name for spec in self.reference_specs],
            "instructions": self.instruction_texts,
            "length_normalize": self.args.length_normalize,
            "max_target_length": self.args.max_target_length,
            "encoder": self.encoder_settings.__dict__,
        }
        folder = Path(self.args.ref_log_probs_cache_dir or cache_dir() / "ref_log_probs")
        return precomputed_cache_file(folder, dataset, weights, settings, ".json")

    def with_reference_log_probs(self, dataset: Dataset, split: str) -> Dataset:
        """``dataset`` with one column per reference log-prob (``LogProb.name``): read from the disk cache, or
        computed in one pass.

        The pass is split across processes and gathered; the main process of each machine writes the cache
        (atomically) and the others wait for it and read it.
        """
        columns = self.load_or_precompute(
            self._reference_cache_file(dataset),
            lambda: self.compute_reference_log_probs(dataset, split),
            write=lambda values, path: path.write_text(json.dumps(values)),
            read=lambda path: json.loads(path.read_text()),
            what="reference log-probs",
        )
        return replace_columns(dataset, columns)

    def compute_reference_log_probs(self, dataset: Dataset, split: str) -> dict[str, list]:
        """The reference log-probs of every row of ``dataset`` by ``LogProb.name``, in row order, computed across
        all processes.

        As trl's DPO precompute: the accelerator shards the batches over processes and ``gather_for_metrics``
        puts them back in order (dropping the padding of the last step). Under DeepSpeed the reference runs in an
        inference engine (the policy is not wrapped yet).
        """
        loader = DataLoader(
            dataset,
            batch_size=self.args.per_device_eval_batch_size,
            collate_fn=self._collator(self.reference_specs),
            shuffle=False,
        )
        loader = self.accelerator.prepare(loader)
        runner = self.model
        if self.is_deepspeed_enabled and self.reference.shares_policy_weights:
            from trl.models.utils import prepare_deepspeed

            runner = prepare_deepspeed(self.model, self.accelerator)
        columns: dict[str, list] = {spec.name: [] for spec in self.reference_specs}
        quiet = self.args.disable_tqdm or not self.is_local_process_zero()
        for batch in tqdm(loader, desc=f"Reference log-probs ({split})", disable=quiet):
            with torch.no_grad():
                values = self.role_log_probs(runner, self.reference_specs, batch, encoder_role=self.reference).values
            gathered = self.accelerator.gather_for_metrics({spec.name: value for spec, value in values.items()})
            for name, value in gathered.items():
                columns[name].extend(value.float().cpu().tolist())
        return columns
