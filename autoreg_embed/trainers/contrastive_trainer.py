"""The same-data InfoNCE baseline: cosine contrastive training of the pooled embedding."""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from autoreg_embed.data.collators import ContrastiveCollator
from autoreg_embed.losses.contrastive import info_nce_loss
from autoreg_embed.modeling.encoder import encode
from autoreg_embed.modeling.inputs import EncoderInputBuilder
from autoreg_embed.trainers.base_trainer import AutoRegTrainer, prepare_encoder, validate_dataset
from autoreg_embed.trainers.contrastive_config import ContrastiveConfig


def gather_with_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """This process's rows first, then every other process's (gradients flow back to their owners)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    import torch.distributed.nn.functional as distributed

    gathered = list(distributed.all_gather(tensor))
    rank = torch.distributed.get_rank()
    return torch.cat([gathered[rank], *gathered[:rank], *gathered[rank + 1 :]])


class ContrastiveTrainer(AutoRegTrainer):
    """Cosine InfoNCE on the pooled embedding, with hard negatives from ``neg`` and optional in-batch negatives.

    The encoder input layout, saving and loading are those of the other trainers, so the result loads with
    sentence-transformers the same way. Rows: ``query``, ``pos``, optional ``neg`` (a string or a list).
    """

    def __init__(
        self,
        model: str | PreTrainedModel | nn.Module | None = None,
        args: ContrastiveConfig | None = None,
        data_collator: Any | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: Any | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        **kwargs: Any,
    ) -> None:
        args = args or ContrastiveConfig(output_dir="contrastive-output")
        model, processing_class, settings = prepare_encoder(model, processing_class, args, peft_config)
        for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            has_negatives = dataset is not None and "neg" in dataset.column_names
            validate_dataset(dataset, name, ("query", "pos"), list_columns=("neg",) if has_negatives else ())
        self.instruction_texts = args.instruction_texts()
        if data_collator is None:
            data_collator = ContrastiveCollator(
                EncoderInputBuilder(processing_class, settings),
                self.instruction_texts["next"],
                self.instruction_texts["self"],
            )
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

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """InfoNCE of each query against its positive, its hard negatives and (optionally) the batch's."""
        embeddings = encode(
            self.accelerator.unwrap_model(model), inputs["input_ids"], inputs["attention_mask"], self.encoder_settings
        ).embedding
        num_negatives = int(inputs["num_negatives"])
        batch = embeddings.shape[0] // (2 + num_negatives)
        queries, positives = embeddings[:batch], embeddings[batch : 2 * batch]
        negatives = embeddings[2 * batch :].view(batch, num_negatives, -1) if num_negatives else None
        if self.args.in_batch_negatives and self.args.gather_across_processes:
            positives = gather_with_gradient(positives)
            negatives = gather_with_gradient(negatives) if negatives is not None else None
        loss = info_nce_loss(
            queries,
            positives,
            negatives,
            temperature=self.args.temperature,
            in_batch_negatives=self.args.in_batch_negatives,
        )
        self.check_finite(loss)
        similarity = (queries.float() * positives[:batch].float()).sum(-1)
        metrics = {"cosine/positive": similarity.mean()}
        if negatives is not None:
            metrics["cosine/negative"] = torch.einsum("bh,bnh->bn", queries.float(), negatives[:batch].float()).mean()
        self.record_metrics(metrics)
        return (loss, {"embedding": embeddings}) if return_outputs else loss
