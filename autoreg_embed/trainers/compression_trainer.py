"""Stage 1 of AutoRegEmbed: information compression."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from autoreg_embed.data.collators import CompressionCollator
from autoreg_embed.modeling.decoder import conditional_log_probs
from autoreg_embed.modeling.frozen import original_decoder
from autoreg_embed.modeling.inputs import EncoderInputBuilder
from autoreg_embed.trainers.base_trainer import AutoRegTrainer
from autoreg_embed.trainers.compression_config import CompressionConfig


class CompressionTrainer(AutoRegTrainer):
    """Train an LLM to compress ``context`` + ``instruction`` into k vectors that regenerate ``target``.

    The encoder is ``model`` (trained); the decoder is the frozen original LLM. It reads the k compress states
    (inside ``decoder_template`` when set) followed by the target tokens, and the loss is the cross-entropy of the
    target tokens (+ EOS), averaged over the target tokens of the optimisation step (all accumulated micro-batches
    and processes: every token weighs the same, however long its row). Gradients reach the encoder only.

    Args:
        model: a causal LM, a hub name or path, or ``None`` for the embedded SmolLM2-135M-Instruct.
        args: a :class:`CompressionConfig`.
        train_dataset / eval_dataset: rows with ``context``, ``instruction``, ``target`` (strings; instruction may
            be empty). Every row is checked before training.
        processing_class: the tokenizer (loaded from ``model`` when omitted); compress tokens are added to it.
        decoder: the frozen decoder. By default the original LLM from the cheapest correct source (see
            :func:`~autoreg_embed.modeling.frozen.original_decoder`): the same weights with adapters disabled
            for a PEFT model, a frozen copy of ``model`` taken before training, or, when the model's weights were
            already trained (in memory or a saved checkpoint), the original model it records.
        peft_config: a PEFT config (e.g. ``LoraConfig``); the compress-token embedding rows are made trainable
            too unless the config sets ``trainable_token_indices`` itself.
    """

    text_columns = ("context", "target")
    optional_columns = ("instruction",)
    config_class = CompressionConfig
    default_output_dir = "compression-output"

    def create_frozen_roles(self, model: nn.Module, args: CompressionConfig) -> None:
        self.frozen_decoder = original_decoder(model, self.encoder_settings, self._decoder)
        self.frozen_decoder.prepare(self.prepare_frozen_model)

    def default_collator(self, tokenizer: PreTrainedTokenizerBase, args: CompressionConfig) -> CompressionCollator:
        return CompressionCollator(EncoderInputBuilder(tokenizer, self.encoder_settings), args.max_target_length)

    def __init__(
        self,
        model: str | PreTrainedModel | nn.Module | None = None,
        args: CompressionConfig | None = None,
        *trainer_args: Any,
        decoder: PreTrainedModel | None = None,
        **kwargs: Any,
    ) -> None:
        self._decoder = decoder
        super().__init__(model, args, *trainer_args, **kwargs)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean negative log-likelihood of the target tokens given the k compress states (per target token)."""
        encoded = self.encode_batch(model, inputs)
        with self.frozen_decoder(model) as decoder:
            log_probs = conditional_log_probs(
                decoder,
                encoded.compress_states,
                inputs["target_ids"],
                inputs["target_mask"],
                prompt=self.decoder_prompt,
            )
        num_tokens = self.loss_items(inputs)
        loss = self.average_over_items(-log_probs.token_log_probs.sum(), num_tokens, num_items_in_batch)
        self.check_finite(loss)
        metrics = {
            "target_log_prob_per_token": log_probs.mean.mean(),
            "target_tokens": num_tokens.float() / inputs["target_mask"].shape[0],
        }
        if not model.training and inputs["target_ids"].shape[0] > 1:
            metrics["readout_gain"] = self.readout_gain(model, encoded.compress_states, inputs, log_probs.mean)
        self.record_metrics(metrics)
        self.record_embedding_spread(encoded.embedding)
        if return_outputs:
            return loss, {"embedding": encoded.embedding}
        return loss

    def loss_items(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss averages over target tokens (EOS included)."""
        return inputs["target_mask"].sum()

    def readout_gain(
        self,
        model: nn.Module,
        compress_states: torch.Tensor,
        inputs: dict[str, torch.Tensor],
        own_log_probs: torch.Tensor,
    ) -> torch.Tensor:
        """Nats per target token that the decoder gains from a row's own compress states over another row's.

        Each target is scored once more with the states of the previous row in the batch (``own_log_probs`` are
        the per-token means with its own states). Near 0, the decoder does not read the states: a falling loss
        then only reflects a better constant prefix, and stage 2 (CDA) has no signal to align.
        """
        with torch.no_grad(), self.frozen_decoder(model) as decoder:
            other = conditional_log_probs(
                decoder,
                compress_states.roll(1, dims=0),
                inputs["target_ids"],
                inputs["target_mask"],
                prompt=self.decoder_prompt,
            )
        return (own_log_probs - other.mean).mean()
