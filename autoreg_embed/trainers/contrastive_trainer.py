"""The same-data InfoNCE baseline: cosine contrastive training of the pooled embedding."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from autoreg_embed.data.collators import ContrastiveCollator
from autoreg_embed.losses.contrastive import info_nce_loss
from autoreg_embed.modeling.inputs import EncoderInputBuilder
from autoreg_embed.trainers.base_trainer import AutoRegTrainer
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

    text_columns = ("query", "pos")
    optional_list_columns = ("neg",)
    config_class = ContrastiveConfig
    default_output_dir = "contrastive-output"

    def default_collator(self, tokenizer: PreTrainedTokenizerBase, args: ContrastiveConfig) -> ContrastiveCollator:
        return ContrastiveCollator(
            EncoderInputBuilder(tokenizer, self.encoder_settings),
            self.instruction_texts["next"],
            self.instruction_texts["self"],
        )

    def loss_items(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss averages over queries."""
        return torch.tensor(inputs["input_ids"].shape[0] // (2 + int(inputs["num_negatives"])))

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """InfoNCE of each query against its positive, its hard negatives and (optionally) the batch's, averaged
        over the queries of the optimisation step."""
        embeddings = self.encode_batch(model, inputs).embedding
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
            reduction="sum",
        )
        loss = self.average_over_items(loss, self.loss_items(inputs), num_items_in_batch)
        self.check_finite(loss)
        similarity = (queries.float() * positives[:batch].float()).sum(-1)
        metrics = {"cosine/positive": similarity.mean()}
        if negatives is not None:
            metrics["cosine/negative"] = torch.einsum("bh,bnh->bn", queries.float(), negatives[:batch].float()).mean()
        self.record_metrics(metrics)
        self.record_embedding_spread(queries)
        return (loss, {"embedding": embeddings}) if return_outputs else loss
