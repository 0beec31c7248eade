"""Stage 1 of AutoRegEmbed: information compression."""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from autoreg_embed.data.collators import CompressionCollator
from autoreg_embed.modeling.decoder import conditional_log_probs, original_decoder
from autoreg_embed.modeling.encoder import encode
from autoreg_embed.modeling.inputs import EncoderInputBuilder
from autoreg_embed.trainers.base_trainer import AutoRegTrainer, prepare_encoder, validate_dataset
from autoreg_embed.trainers.compression_config import CompressionConfig


class CompressionTrainer(AutoRegTrainer):
    """Train an LLM to compress ``context`` + ``instruction`` into k vectors that regenerate ``target``.

    The encoder is ``model`` (trained); the decoder is the frozen original LLM. It reads the k compress states
    followed by the target tokens, and the loss is the cross-entropy of the target tokens (+ EOS), averaged over
    the batch's target tokens. Gradients reach the encoder only.

    Args:
        model: a causal LM, a hub name or path, or ``None`` for the embedded SmolLM2-135M-Instruct.
        args: a :class:`CompressionConfig`.
        train_dataset / eval_dataset: rows with ``context``, ``instruction``, ``target`` (strings; instruction may
            be empty). Every row is checked before training.
        processing_class: the tokenizer (loaded from ``model`` when omitted); compress tokens are added to it.
        decoder: the frozen decoder. By default the original LLM from the cheapest correct source (see
            :func:`~autoreg_embed.modeling.decoder.original_decoder`): the same weights with adapters disabled
            for a PEFT model, a frozen copy of ``model`` taken before training, or, when continuing from a saved
            checkpoint, the original model it records.
        peft_config: a PEFT config (e.g. ``LoraConfig``); the compress-token embedding rows are made trainable
            too unless the config sets ``trainable_token_indices`` itself.
    """

    def __init__(
        self,
        model: str | PreTrainedModel | nn.Module | None = None,
        args: CompressionConfig | None = None,
        data_collator: Any | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        decoder: PreTrainedModel | None = None,
        peft_config: Any | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        **kwargs: Any,
    ) -> None:
        args = args or CompressionConfig(output_dir="compression-output")
        model, processing_class, settings = prepare_encoder(model, processing_class, args, peft_config)
        for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            validate_dataset(dataset, name, ("context", "target"), optional_columns=("instruction",))
        self.frozen_decoder = original_decoder(model, settings, decoder)
        if data_collator is None:
            data_collator = CompressionCollator(EncoderInputBuilder(processing_class, settings), args.max_target_length)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            encoder_settings=settings,
            **kwargs,
        )
        if self.frozen_decoder.decoder is not None:
            self.frozen_decoder.decoder.to(self.args.device)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean negative log-likelihood of the target tokens given the k compress states."""
        encoded = encode(
            self.accelerator.unwrap_model(model), inputs["input_ids"], inputs["attention_mask"], self.encoder_settings
        )
        with self.frozen_decoder() as decoder:
            log_probs = conditional_log_probs(
                decoder, encoded.compress_states, inputs["target_ids"], inputs["target_mask"]
            )
        num_tokens = inputs["target_mask"].sum()
        loss = -log_probs.token_log_probs.sum() / num_tokens
        self.check_finite(loss)
        self.record_metrics(
            {
                "target_log_prob_per_token": log_probs.mean.mean(),
                "target_tokens": num_tokens.float() / inputs["target_mask"].shape[0],
            }
        )
        if return_outputs:
            return loss, {"embedding": encoded.embedding}
        return loss
