"""InfoNCE over embeddings: the cosine contrastive loss of the paper's same-data baselines."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce_loss(
    queries: Tensor,
    positives: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float = 0.05,
    in_batch_negatives: bool = True,
    reduction: str = "mean",
) -> Tensor:
    """Mean over queries of ``-log(exp(s(q,d+)/t) / sum_d exp(s(q,d)/t))`` with ``s`` the cosine similarity.

    The candidates d of query b are its positive, its own hard negatives ``negatives[b]`` (B, n, H), and, when
    ``in_batch_negatives``, every other query's positive and hard negatives (positives and negatives may come
    from other processes already gathered into the batch dimension: rows of ``positives`` beyond ``len(queries)``
    are extra candidates).

    Args:
        queries: (B, H). positives: (B', H) with B' >= B, row b the positive of query b.
        negatives: (B', n, H) hard negatives or ``None``.
        reduction: ``"mean"`` (a scalar), ``"sum"`` (a scalar) or ``"none"`` (B,), over queries.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if positives.shape[0] < queries.shape[0]:
        raise ValueError(f"Got {queries.shape[0]} queries but only {positives.shape[0]} positives.")
    queries, positives = F.normalize(queries.float(), dim=-1), F.normalize(positives.float(), dim=-1)
    batch = queries.shape[0]
    own = torch.arange(batch, device=queries.device)
    if in_batch_negatives:
        candidates = positives
        if negatives is not None:
            candidates = torch.cat([positives, F.normalize(negatives.float(), dim=-1).flatten(0, 1)])
        logits = queries @ candidates.T
    else:
        logits = (queries * positives[:batch]).sum(-1, keepdim=True)
        if negatives is not None:
            hard = F.normalize(negatives[:batch].float(), dim=-1)
            logits = torch.cat([logits, torch.einsum("bh,bnh->bn", queries, hard)], dim=1)
        own = torch.zeros_like(own)
    return F.cross_entropy(logits / temperature, own, reduction=reduction)
