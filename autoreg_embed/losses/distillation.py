"""InstEmb's losses (METHOD.md §2): representation distillation into the soft prompts, and multi-view InfoNCE on
the last-token anchor. Pure tensor functions; the equations are written out in ``docs/distill.md``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from autoreg_embed.losses.contrastive import info_nce_loss

DISTILLATION_METRICS = ("cosine", "mse")
"""How a soft-prompt state is compared with its teacher target: ``1 - cos`` or the mean squared difference."""
DISTILLATION_TARGETS = ("mean", "position")
"""The teacher's representation of the output: its mean output-span state (matched by the mean soft-prompt state),
or its states at the first m output tokens (matched by soft prompt j = output token j)."""
POSITIVE_VIEWS = ("dropout", "teacher", "output", "pos")
"""Positive views of the contrastive loss: the query encoded again with dropout (SimCSE), the teacher's
representation of the gold output, the student's embedding of the output text, and of the ``pos`` column."""
TEACHER_VIEW = "teacher"
"""The one view that lives in the teacher's space (student anchors pass through the projection, if any)."""


@dataclass
class OutputSpanTargets:
    """The teacher's representation of the gold output (what :func:`output_span_targets` returns)."""

    mean: Tensor
    """(B, H) mean last-layer state over each row's output tokens."""
    positions: Tensor
    """(B, m, H) states at the first m output tokens (zeros where the output is shorter than m)."""
    position_mask: Tensor
    """(B, m) 1 where the output has a j-th token."""


def output_span_targets(hidden: Tensor, output_mask: Tensor, num_positions: int) -> OutputSpanTargets:
    """Reduce the teacher's (B, L, H) last-layer states to its representation of the output span.

    Args:
        hidden: the teacher's states over ``text + instruction + output``.
        output_mask: (B, L) 1 at the output tokens (one contiguous span per row, at least one token).
        num_positions: m, the number of soft prompts (for the position-matched targets).

    Raises:
        ValueError: a row without output tokens.
    """
    counts = output_mask.sum(dim=1)
    if bool((counts < 1).any()):
        raise ValueError("Every teacher row needs at least one output token; got a row with none.")
    weights = output_mask.to(hidden.dtype)[..., None]
    mean = (hidden * weights).sum(dim=1) / counts.to(hidden.dtype)[:, None]
    offsets = torch.arange(num_positions, device=hidden.device)
    start = output_mask.long().argmax(dim=1)  # the first output token of each row
    position_mask = (offsets[None] < counts[:, None]).long()
    index = (start[:, None] + offsets[None]).clamp(max=hidden.shape[1] - 1)
    positions = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
    positions = positions * position_mask[..., None].to(hidden.dtype)
    return OutputSpanTargets(mean=mean, positions=positions, position_mask=position_mask)


def representation_distillation_loss(
    student: Tensor, teacher: Tensor, mask: Tensor | None = None, metric: str = "cosine"
) -> Tensor:
    """Mean distance between student states and their (detached) teacher targets.

    Args:
        student: (B, H) or (B, m, H) student states (the mean soft-prompt state, or one state per soft prompt).
        teacher: the targets, same shape as ``student``.
        mask: (B, m) 1 for the (row, position) pairs that count (position-matched targets); ``None``: all.
        metric: ``"cosine"``: ``1 - cos(s, t)``; ``"mse"``: ``mean_h (s_h - t_h)^2`` (per state, over H).

    Returns:
        The mean over the counted states (a scalar, float32 at least).
    """
    if metric not in DISTILLATION_METRICS:
        raise ValueError(f"metric must be one of {DISTILLATION_METRICS}, got {metric!r}.")
    if student.shape != teacher.shape:
        raise ValueError(f"student states {tuple(student.shape)} and teacher targets {tuple(teacher.shape)} differ.")
    dtype = torch.promote_types(student.dtype, torch.float32)
    student, teacher = student.to(dtype), teacher.detach().to(dtype)
    if metric == "cosine":
        distance = 1.0 - F.cosine_similarity(student, teacher, dim=-1)
    else:
        distance = (student - teacher).square().mean(dim=-1)
    if mask is None:
        return distance.mean()
    weights = mask.to(dtype)
    return (distance * weights).sum() / weights.sum().clamp(min=1.0)


@dataclass
class InstEmbLossOutput:
    """The loss and its components (what :func:`instemb_loss` returns)."""

    loss: Tensor
    """Scalar: ``contrastive_weight * mean_v L_v + distillation_weight * L_distill``."""
    contrastive: dict[str, Tensor] = field(default_factory=dict)
    """View -> its InfoNCE loss L_v."""
    positive_cosine: dict[str, Tensor] = field(default_factory=dict)
    """View -> (B,) cosine of each anchor with its positive."""
    distillation: Tensor | None = None
    """L_distill (``None`` without a teacher target)."""
    distillation_cosine: Tensor | None = None
    """Mean cosine between the student's soft-prompt states and the teacher targets (also with ``mse``)."""


def instemb_loss(
    anchors: Tensor,
    positives: Mapping[str, Tensor],
    soft_states: Tensor | None = None,
    teacher_target: Tensor | None = None,
    teacher_mask: Tensor | None = None,
    negatives: Tensor | None = None,
    *,
    temperature: float = 0.05,
    in_batch_negatives: bool = True,
    contrastive_weight: float = 1.0,
    distillation_weight: float = 1.0,
    distillation_metric: str = "cosine",
    projection: Callable[[Tensor], Tensor] | None = None,
) -> InstEmbLossOutput:
    """InstEmb's training loss: multi-view InfoNCE on the anchor plus representation distillation.

    ``L = contrastive_weight * (1/|V|) sum_v InfoNCE(a, P_v, N_v) + distillation_weight * D(s, t)``, with

    - ``a`` the (B, H) ``anchors`` (the last-token states of text + instruction + soft prompts);
    - ``P_v`` the positives of view v (``positives[v]``, (B', H), row b the positive of query b; rows beyond B are
      extra candidates, e.g. gathered from other processes). The candidates of query b are P_v (with
      ``in_batch_negatives``; else its own positive only) plus the hard ``negatives`` (B', n, H) for every student
      view; the ``"teacher"`` view lives in the teacher's space, so its anchors go through ``projection`` and it
      takes no hard negatives;
    - ``D`` :func:`representation_distillation_loss` of the student's soft-prompt states (``soft_states`` (B, m,
      H)) against ``teacher_target``: with a (B, H) target the mean soft-prompt state is compared; with a
      (B, m, H) target soft prompt j is compared with output token j where ``teacher_mask`` (B, m) is 1. The
      soft states pass through ``projection`` first.

    Raises:
        ValueError: nothing to optimise (no views and no distillation), or a distillation weight without states.
    """
    project = projection or (lambda states: states)
    output = InstEmbLossOutput(loss=anchors.new_zeros((), dtype=torch.promote_types(anchors.dtype, torch.float32)))
    if contrastive_weight > 0 and positives:
        for view, candidates in positives.items():
            view_anchors = project(anchors) if view == TEACHER_VIEW else anchors
            hard = None if view == TEACHER_VIEW else negatives
            output.contrastive[view] = info_nce_loss(
                view_anchors, candidates, hard, temperature=temperature, in_batch_negatives=in_batch_negatives
            )
            output.positive_cosine[view] = F.cosine_similarity(
                view_anchors.float(), candidates[: anchors.shape[0]].float(), dim=-1
            ).detach()
        output.loss = output.loss + contrastive_weight * torch.stack(list(output.contrastive.values())).mean()
    if distillation_weight > 0 and teacher_target is not None:
        if soft_states is None:
            raise ValueError("Distillation needs the soft-prompt states (num_compress_tokens >= 1).")
        student = project(soft_states.mean(dim=1) if teacher_target.dim() == 2 else soft_states)
        mask = None if teacher_target.dim() == 2 else teacher_mask
        output.distillation = representation_distillation_loss(student, teacher_target, mask, distillation_metric)
        output.distillation_cosine = 1.0 - representation_distillation_loss(student, teacher_target, mask, "cosine")
        output.distillation_cosine = output.distillation_cosine.detach()
        output.loss = output.loss + distillation_weight * output.distillation
    if not output.contrastive and output.distillation is None:
        raise ValueError("instemb_loss has nothing to optimise: give positive views or a teacher target.")
    return output
