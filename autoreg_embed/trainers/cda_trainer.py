"""Stage 2 of AutoRegEmbed: conditional distribution alignment (CDA)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations import is_deepspeed_zero3_enabled

from autoreg_embed.data.cda_collator import CDACollator, log_prob_spec
from autoreg_embed.data.collators import TargetBuilder
from autoreg_embed.default_model import cache_dir
from autoreg_embed.losses.cda import STRATEGY_LOG_PROBS, CDALossOutput, divergence_alignment_score, strategy_loss
from autoreg_embed.modeling.decoder import conditional_log_probs
from autoreg_embed.modeling.encoder import encode
from autoreg_embed.modeling.frozen import FrozenRole, original_decoder, reference_role
from autoreg_embed.modeling.inputs import EncoderInputBuilder
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

    values: dict[str, torch.Tensor]
    """Log-probs by name, (B,) or (B, n)."""
    distributions_of: Callable[[str], tuple[torch.Tensor, torch.Tensor]]
    """Name -> its (B', T, V) next-token log-distributions and target mask (only when asked for)."""
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
        train_dataset / eval_dataset: rows with ``query``, ``pos``, ``neg`` (a string or a list; the same
            count in every row); optional ``instruction_next`` / ``instruction_self`` / ``instruction_prev``.
        peft_config: a PEFT config for stage 2; on a PEFT stage-1 model it becomes a second adapter ``align``
            (stage-1 adapter frozen, used by the reference; both off for the decoder: one set of base weights).
    """

    text_columns = ("query", "pos")
    list_columns = ("neg",)
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
        self.log_prob_names = STRATEGY_LOG_PROBS[args.strategy]
        self.ref_names = [name for name in self.log_prob_names if name.startswith("ref_")]
        self.encoder_inputs = EncoderInputBuilder(tokenizer, self.encoder_settings)
        self.target_builder = TargetBuilder(tokenizer, args.max_target_length)

    def create_frozen_roles(self, model: nn.Module, args: CDAConfig) -> None:
        """The decoder (original LLM) and the reference (the encoder now); with precomputed reference log-probs,
        compute them now, and release a separate reference model afterwards."""
        self.frozen_decoder = original_decoder(model, self.encoder_settings, self._decoder)
        self.reference = reference_role(model, self._ref_model)
        for role in (self.frozen_decoder, self.reference):
            role.prepare(self.prepare_frozen_model)
        if args.precompute_ref_log_probs:
            self.train_dataset = self.with_reference_log_probs(self.train_dataset, "train")
            if self.eval_dataset is not None:
                self.eval_dataset = self.with_reference_log_probs(self.eval_dataset, "eval")
            if not self.reference.shares_policy_weights:
                self.reference = None  # no longer needed: release the separate reference model

    def default_collator(self, tokenizer: PreTrainedTokenizerBase, args: CDAConfig) -> CDACollator:
        return self._collator(self.log_prob_names, self.ref_names if args.precompute_ref_log_probs else ())

    def get_eval_dataloader(self, eval_dataset: Dataset | str | None = None) -> DataLoader:
        """With precomputed reference log-probs, a dataset passed to ``evaluate`` gets its columns first."""
        if (
            self.args.precompute_ref_log_probs
            and isinstance(eval_dataset, Dataset)
            and not set(self.ref_names) <= set(eval_dataset.column_names)
        ):
            if self.reference is None:
                raise ValueError(
                    "This dataset has no precomputed reference log-probs and the reference model was released "
                    "after precomputing. Pass it as eval_dataset when creating the trainer, or pass ref_model."
                )
            eval_dataset = self.with_reference_log_probs(eval_dataset, "eval")
        return super().get_eval_dataloader(eval_dataset)

    def _collator(self, names: Sequence[str], precomputed: Sequence[str] = ()) -> CDACollator:
        return CDACollator(self.encoder_inputs, self.target_builder, names, self.instruction_texts, precomputed)

    # ---- log-probabilities -------------------------------------------------------------------------------

    def role_log_probs(
        self,
        model: nn.Module,
        names: Sequence[str],
        inputs: dict[str, torch.Tensor],
        distributions: bool = False,
        encoder_role: FrozenRole | None = None,
    ) -> RoleLogProbs:
        """Log-probs of ``names`` with one encoder pass (distinct rows) and one decoder pass (distinct pairs).

        ``model``: the model ``compute_loss`` received (engine-wrapped when several processes train). The encoder
        is that model (the policy) or ``encoder_role`` (e.g. :attr:`reference`; call under ``torch.no_grad()``);
        the decoder is :attr:`frozen_decoder`, the original LLM. ``distributions``: also keep the full
        next-token log-distributions (KL / JS similarities).
        """
        prefix = torch.cat([inputs[f"{name}.prefix_index"].flatten() for name in names])
        target = torch.cat([inputs[f"{name}.target_index"].flatten() for name in names])
        rows, row_of = prefix.unique(return_inverse=True)
        with encoder_role(model) if encoder_role else contextlib.nullcontext(model) as encoder:
            encoded = encode(encoder, inputs["input_ids"][rows], inputs["attention_mask"][rows], self.encoder_settings)
        states = encoded.compress_states
        pairs, pair_of = torch.stack([row_of, target]).unique(dim=1, return_inverse=True)
        target_ids, target_mask = inputs["target_ids"][pairs[1]], inputs["target_mask"][pairs[1]]
        with self.frozen_decoder(model) as decoder:
            scored = conditional_log_probs(decoder, states[pairs[0]], target_ids, target_mask, distributions)
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

    def reference_log_probs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The ``ref_*`` log-probs of a batch: precomputed columns, or one no-grad pass of the reference."""
        if self.args.precompute_ref_log_probs:
            return {name: inputs[name] for name in self.ref_names}
        with torch.no_grad():
            return self.role_log_probs(model, self.ref_names, inputs, encoder_role=self.reference).values

    def compute_cda_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> CDALossOutput:
        """Run policy and reference on a batch and combine them with :func:`strategy_loss`."""
        policy_names = [name for name in self.log_prob_names if not name.startswith("ref_")]
        divergence = self.args.similarity != "log_prob"
        log_probs, distributions_of, embeddings = self.role_log_probs(model, policy_names, inputs, divergence)
        log_probs.update(self.reference_log_probs(model, inputs))
        s1_override = None
        if divergence:
            query_conditioned, mask = distributions_of("policy_pos_next")
            self_conditioned, _ = distributions_of("policy_pos_self")
            s1_override = divergence_alignment_score(
                query_conditioned, self_conditioned, mask, self.args.similarity, self.args.beta, self.args.bound
            )
        output = strategy_loss(
            self.args.strategy,
            log_probs,
            beta=self.args.beta,
            temperature=self.args.temperature,
            bound=self.args.bound,
            reference_sign=self.args.reference_sign,
            s1_override=s1_override,
        )
        self.record_metrics(
            {
                "s1": output.s1.mean(),
                "s2": output.s2.mean(),
                "rewards/margins": output.reward_margins.mean(),
                "rewards/accuracies": (output.reward_margins > 0).float().mean(),
                "logps/positive": log_probs.get("policy_pos_next", log_probs.get("policy_query_prev_pos")).mean(),
                "logps/negative": log_probs.get("policy_neg_next", log_probs.get("policy_query_prev_neg")).mean(),
                "logps/alignment_gap": output.alignment_gap.mean(),
            }
        )
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
        return torch.tensor(inputs[f"{self.log_prob_names[0]}.prefix_index"].shape[0])

    # ---- precomputed reference log-probs -------------------------------------------------------------------

    def _reference_cache_file(self, dataset: Dataset) -> Path | None:
        """Where the reference log-probs of ``dataset`` are cached: keyed by the dataset, the frozen weights and the
        settings, as decided by the main process. ``None`` (no cache) when DeepSpeed ZeRO-3 shards the weights."""
        if is_deepspeed_zero3_enabled():
            return None
        modules = [self.model] if self.reference.shares_policy_weights else [self.reference.model]
        if not self.frozen_decoder.shares_policy_weights:
            modules.append(self.frozen_decoder.model)
        settings = {
            "names": self.ref_names,
            "instructions": self.instruction_texts,
            "length_normalize": self.args.length_normalize,
            "max_target_length": self.args.max_target_length,
            "encoder": self.encoder_settings.__dict__,
        }
        key = [
            hashlib.sha256(
                json.dumps([dataset._fingerprint, weights_fingerprint(modules), settings], sort_keys=True).encode()
            ).hexdigest()[:24]
        ]
        broadcast_object_list(key, from_process=0)
        folder = Path(self.args.ref_log_probs_cache_dir or cache_dir() / "ref_log_probs")
        return folder / f"{key[0]}.json"

    def with_reference_log_probs(self, dataset: Dataset, split: str) -> Dataset:
        """``dataset`` with one column per ``ref_*`` name: read from the disk cache, or computed in one pass.

        The pass is split across processes and gathered; the main process of each machine writes the cache
        (atomically) and the others wait for it and read it.
        """
        cache_file = self._reference_cache_file(dataset)
        if cache_file is not None and cache_file.is_file():
            logger.info("Reusing reference log-probs from %s.", cache_file)
            columns = json.loads(cache_file.read_text())
        else:
            columns = self.compute_reference_log_probs(dataset, split)
            if cache_file is not None:
                if self.accelerator.is_local_main_process:
                    cache_file.parent.mkdir(parents=True, exist_ok=True)
                    staging = cache_file.with_suffix(f".tmp{os.getpid()}")
                    staging.write_text(json.dumps(columns))
                    os.replace(staging, cache_file)
                self.accelerator.wait_for_everyone()
                columns = json.loads(cache_file.read_text())
        for name, values in columns.items():
            if name in dataset.column_names:
                dataset = dataset.remove_columns(name)
            dataset = dataset.add_column(name, values)
        return dataset

    def compute_reference_log_probs(self, dataset: Dataset, split: str) -> dict[str, list]:
        """The ``ref_*`` log-probs of every row of ``dataset``, in row order, computed across all processes.

        As trl's DPO precompute: the accelerator shards the batches over processes and ``gather_for_metrics``
        puts them back in order (dropping the padding of the last step). Under DeepSpeed the reference runs in an
        inference engine (the policy is not wrapped yet).
        """
        loader = DataLoader(
            dataset,
            batch_size=self.args.per_device_eval_batch_size,
            collate_fn=self._collator(self.ref_names),
            shuffle=False,
        )
        loader = self.accelerator.prepare(loader)
        runner = self.model
        if self.is_deepspeed_enabled and self.reference.shares_policy_weights:
            from trl.models.utils import prepare_deepspeed

            runner = prepare_deepspeed(self.model, self.accelerator)
        columns: dict[str, list] = {name: [] for name in self.ref_names}
        quiet = self.args.disable_tqdm or not self.is_local_process_zero()
        for batch in tqdm(loader, desc=f"Reference log-probs ({split})", disable=quiet):
            with torch.no_grad():
                values = self.role_log_probs(runner, self.ref_names, batch, encoder_role=self.reference).values
            for name, value in self.accelerator.gather_for_metrics(values).items():
                columns[name].extend(value.float().cpu().tolist())
        return columns
