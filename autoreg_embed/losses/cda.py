"""Conditional distribution alignment (CDA), AutoRegEmbed's stage-2 loss, as pure tensor functions.

The trainer scores target texts under the frozen decoder, conditioned on compress vectors from the trained
encoder ("policy") and from the frozen stage-1 encoder ("reference"), and passes the log-probabilities here,
keyed by their typed definition :class:`~autoreg_embed.losses.cda_log_probs.LogProb`. Equations, options and
the reading of each of the paper's variants: ``docs/cda_loss.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from autoreg_embed.losses.cda_log_probs import (
    NEG_GIVEN_NEG,
    NEG_GIVEN_POS,
    NEG_GIVEN_QUERY,
    POS_GIVEN_NEG,
    POS_GIVEN_POS,
    POS_GIVEN_QUERY,
    QUERY_GIVEN_NEG,
    QUERY_GIVEN_POS,
    QUERY_GIVEN_QUERY,
    LogProb,
)

Bound = Literal["sigmoid", "tanh", "log_sigmoid"]
ReferenceSign = Literal["paper", "official"]
Divergence = Literal["kl", "js"]
MultiNegative = Literal["one_denominator", "mean_of_binary"]
BOUNDS: tuple[str, ...] = get_args(Bound)
REFERENCE_SIGNS: tuple[str, ...] = get_args(ReferenceSign)
DIVERGENCES: tuple[str, ...] = get_args(Divergence)
MULTI_NEGATIVE_LOSSES: tuple[str, ...] = get_args(MultiNegative)
"""``one_denominator`` (paper): every S2_i in one InfoNCE denominator; ``mean_of_binary`` (official code): n
two-term InfoNCE losses, one per negative, averaged. Identical for one negative."""


@dataclass(frozen=True)
class Alignment:
    """A term of S1: ``g(beta * |lp(a) - lp(b)|)``, small when the two conditionings give the target the same
    log-probability."""

    a: LogProb
    b: LogProb


@dataclass(frozen=True)
class Preference:
    """A term of S2_i: ``g(beta * x_i)``, the preference for ``chosen`` over ``rejected`` (negative i) relative to
    the reference encoder. ``reference_sign="paper"`` (DPO): ``x_i = (lp(chosen) - lp_ref(chosen)) -
    (lp(rejected) - lp_ref(rejected))``; ``"official"``: ``x_i = (lp(chosen) - lp(rejected)) + (lp_ref(chosen) -
    lp_ref(rejected))``."""

    chosen: LogProb
    rejected: LogProb

    @property
    def log_probs(self) -> tuple[LogProb, LogProb, LogProb, LogProb]:
        """(chosen, rejected, reference chosen, reference rejected)."""
        return self.chosen, self.rejected, self.chosen.reference, self.rejected.reference


@dataclass(frozen=True)
class Strategy:
    """An alignment strategy: ``S1 = -mean_j g(alignments_j)``, ``S2_i = -mean_j g(preferences_j, i)``.

    With two terms the means are the paper's ½-weighted sums inside S1 / S2 (appendix E, eqs. 4-6), all in one
    InfoNCE. The first term of each is the one the diagnostics (margins, gap, logged log-probs) report.
    """

    alignments: tuple[Alignment, ...]
    preferences: tuple[Preference, ...]

    @property
    def log_probs(self) -> tuple[LogProb, ...]:
        """Every log-probability the strategy reads (policy and reference), without repeats."""
        terms = [spec for term in self.alignments for spec in (term.a, term.b)]
        terms += [spec for term in self.preferences for spec in term.log_probs]
        return tuple(dict.fromkeys(terms))


DEFAULT_ALIGNMENT = Alignment(POS_GIVEN_QUERY, POS_GIVEN_POS)
"""Paper eq. 1: |lp(d+ | e_{q,I_next}) - lp(d+ | e_{d+,I_self})|."""
DEFAULT_PREFERENCE = Preference(POS_GIVEN_QUERY, NEG_GIVEN_QUERY)
"""Paper eq. 2: d+ over d-_i, both generated from e_{q,I_next}."""
QUERY_ALIGNMENT = Alignment(QUERY_GIVEN_POS, QUERY_GIVEN_QUERY)
"""Paper eq. 3 (strategy 1): |lp(q | e_{q,I_self}) - lp(q | e_{d+,I_prev})|."""
QUERY_PREFERENCE = Preference(QUERY_GIVEN_POS, QUERY_GIVEN_NEG)
"""Paper eq. 3 (strategy 1): q generated from e_{d+,I_prev} rather than from e_{d-_i,I_prev}."""

STRATEGIES: dict[int, Strategy] = {
    0: Strategy((DEFAULT_ALIGNMENT,), (DEFAULT_PREFERENCE,)),
    1: Strategy((QUERY_ALIGNMENT,), (QUERY_PREFERENCE,)),
    2: Strategy((DEFAULT_ALIGNMENT, QUERY_ALIGNMENT), (DEFAULT_PREFERENCE, QUERY_PREFERENCE)),
    3: Strategy((DEFAULT_ALIGNMENT,), (DEFAULT_PREFERENCE, Preference(POS_GIVEN_POS, NEG_GIVEN_POS))),
    4: Strategy((DEFAULT_ALIGNMENT,), (DEFAULT_PREFERENCE, Preference(NEG_GIVEN_NEG, POS_GIVEN_NEG))),
}
"""The paper's alignment strategies (0: the default, eqs. 1-2; 1-4: appendix E, eqs. 3-6)."""


@dataclass(frozen=True)
class DivergenceTerm:
    """``D = mean_t div(p(. | x_<t, e_{x,I_self}) || p(. | x_<t, e_{q,I_next}))`` over the real tokens t of the
    target x, for the KL / JS similarity (paper appendix B)."""

    self_conditioned: LogProb
    query_conditioned: LogProb


DIVERGENCE_S1 = DivergenceTerm(POS_GIVEN_POS, POS_GIVEN_QUERY)
"""S1 = -g(D) along d+'s tokens: d+'s own embedding against the query's."""
DIVERGENCE_S2 = DivergenceTerm(NEG_GIVEN_NEG, NEG_GIVEN_QUERY)
"""S2_i = -g(D) along d-_i's tokens: d-_i's own embedding against the query's (our reading of the paper's S2)."""
DIVERGENCE_LOG_PROBS: tuple[LogProb, ...] = (POS_GIVEN_QUERY, POS_GIVEN_POS, NEG_GIVEN_QUERY, NEG_GIVEN_NEG)
"""The (policy) log-probabilities whose full next-token distributions the KL / JS similarity reads."""

Named = tuple[str, Tensor]
"""An argument and its name, for error messages that say which argument is wrong."""


def _check_choice(what: str, value: object, valid: tuple[object, ...]) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {what} {value!r}; valid: {', '.join(map(repr, valid))}.")


def _check_positive(what: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{what} must be > 0, got {value}.")


def _checked(name: str, t: Tensor) -> Tensor:
    """``t`` as a float tensor (at least float32) after checking that it is finite."""
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf).")
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _as_2d(t: Tensor) -> Tensor:
    return t.unsqueeze(1) if t.dim() == 1 else t


def _columns(name: str, t: Tensor, like: Named | None = None) -> Tensor:
    """Finite ``t`` as (B, m), (B,) becoming (B, 1). With ``like``, both must have the same (B, m) shape."""
    as_2d = _as_2d(_checked(name, t))
    if as_2d.dim() != 2:
        raise ValueError(f"{name} must have shape (B,) or (B, n), got {tuple(t.shape)}.")
    if like is not None and as_2d.shape != _as_2d(like[1]).shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)} but {like[0]} has shape {tuple(like[1].shape)}.")
    return as_2d


def sequence_log_probs(token_logps: Tensor, mask: Tensor, average: bool) -> Tensor:
    """Per-sequence log-probability (B,) from per-token ones (B, T): ``sum_t m_t lp_t``, or that sum divided
    by ``sum_t m_t`` when ``average`` (length-normalised). Padding (mask 0) is ignored even if not finite."""
    if token_logps.shape != mask.shape or token_logps.dim() != 2:
        shapes = f"token_logps {tuple(token_logps.shape)} and mask {tuple(mask.shape)}"
        raise ValueError(f"{shapes} must both be (B, T).")
    keep = mask.bool()
    total = torch.where(keep, token_logps, torch.zeros_like(token_logps)).sum(dim=1)
    return total / keep.sum(dim=1).clamp(min=1) if average else total


def bounded_score(x: Tensor, bound: str = "sigmoid") -> Tensor:
    """``S = -g(x)`` with g increasing: ``sigmoid`` g = sigma(x), ``tanh`` g = tanh(x), ``log_sigmoid``
    g = log sigma(x), so S = -log sigma(x) = softplus(-x) (bounded only for x >= 0).
    Every S decreases in x."""
    _check_choice("bound", bound, BOUNDS)
    if bound == "sigmoid":
        return -torch.sigmoid(x)
    if bound == "tanh":
        return -torch.tanh(x)
    return -F.logsigmoid(x)


def _alignment_gap(a: Named, b: Named) -> Tensor:
    """``|a - b|`` (B,) of two (B,) log-probs."""
    first = _columns(*a)
    if first.shape[1] != 1:
        raise ValueError(f"{a[0]} must have shape (B,), got {tuple(a[1].shape)}.")
    return (first - _columns(*b, like=a)).abs().squeeze(1)


def alignment_score(lp_cond_a: Tensor, lp_cond_b: Tensor, beta: float, bound: str = "sigmoid") -> Tensor:
    """``S1 = -g(beta * |a - b|)`` (B,) of two (B,) log-probs of one target under two conditionings (paper
    eq. 1): high when both give the target the same log-prob."""
    _check_positive("beta", beta)
    return bounded_score(beta * _alignment_gap(("lp_cond_a", lp_cond_a), ("lp_cond_b", lp_cond_b)), bound)


def _preference_margin(
    chosen: Named, rejected: Named, ref_chosen: Named, ref_rejected: Named, reference_sign: str
) -> tuple[Tensor, Tensor]:
    """(x, DPO margin), both (B, n). x is the argument of S2 before beta, per ``reference_sign``."""
    _check_choice("reference_sign", reference_sign, REFERENCE_SIGNS)
    c, r = _columns(*chosen), _columns(*rejected)
    rc, rr = _columns(*ref_chosen, like=chosen), _columns(*ref_rejected, like=rejected)
    if c.shape[0] != r.shape[0] or (1 not in (c.shape[1], r.shape[1]) and c.shape[1] != r.shape[1]):
        shapes = f"{chosen[0]} has shape {tuple(chosen[1].shape)}, {rejected[0]} {tuple(rejected[1].shape)}"
        raise ValueError(f"{shapes}: they must be (B,) or (B, n) with the same B and n.")
    dpo = (c - rc) - (r - rr)
    return (dpo if reference_sign == "paper" else (c - r) + (rc - rr)), dpo


def preference_scores(
    policy_pos: Tensor,
    policy_neg: Tensor,
    ref_pos: Tensor,
    ref_neg: Tensor,
    beta: float,
    bound: str = "sigmoid",
    reference_sign: str = "paper",
) -> Tensor:
    """``S2_i = -g(beta * x_i)`` (B, n), one per negative (paper eq. 2). ``policy_pos``/``ref_pos``: (B,) or
    (B, n); ``policy_neg``/``ref_neg``: (B, n) or (B,) for n = 1.

    - ``paper`` (DPO): ``x_i = (pos - ref_pos) - (neg_i - ref_neg_i)``
    - ``official`` (reference code): ``x_i = (pos - neg_i) + (ref_pos - ref_neg_i)``
    """
    _check_positive("beta", beta)
    named = (("policy_pos", policy_pos), ("policy_neg", policy_neg), ("ref_pos", ref_pos), ("ref_neg", ref_neg))
    x, _ = _preference_margin(*named, reference_sign)
    return bounded_score(beta * x, bound)


def info_nce_from_scores(s1: Tensor, s2: Tensor, temperature: float, multi_negative: str = "one_denominator") -> Tensor:
    """Per-example InfoNCE loss (B,) of ``s1`` (B,) against ``s2`` (B, n) (or (B,) for n = 1).

    - ``one_denominator`` (paper): ``-log(exp(S1/t) / (exp(S1/t) + sum_i exp(S2_i/t)))``, computed as
      ``logsumexp([S1, S2_1..S2_n] / t) - S1/t``.
    - ``mean_of_binary`` (official code): ``mean_i -log(exp(S1/t) / (exp(S1/t) + exp(S2_i/t)))``.
    """
    _check_positive("temperature", temperature)
    _check_choice("multi_negative", multi_negative, MULTI_NEGATIVE_LOSSES)
    first = _columns("s1", s1)
    if first.shape[1] != 1:
        raise ValueError(f"s1 must have shape (B,), got {tuple(s1.shape)}.")
    rest = _columns("s2", s2)
    if rest.shape[0] != first.shape[0]:
        raise ValueError(f"s2 has shape {tuple(rest.shape)} but s1 has shape {tuple(s1.shape)}.")
    if multi_negative == "mean_of_binary":
        return F.softplus((rest - first) / temperature).mean(dim=1)
    logits = torch.cat([first, rest], dim=1) / temperature
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


def mean_divergence(log_p: Tensor, log_q: Tensor, target_mask: Tensor, kind: str) -> Tensor:
    """Mean over the real target positions t (``target_mask`` 1) of a divergence between two next-token
    distributions, shape ``(...)`` for inputs ``(..., T, V)`` and a ``(..., T)`` mask (paper appendix B).

    ``kl``: ``KL(p || q) = sum_v p_v (log p_v - log q_v)``; ``js``: ``(KL(p || m) + KL(q || m)) / 2`` with
    ``m = (p + q) / 2``. ``log_p`` / ``log_q`` are log-softmax outputs and must be finite.
    """
    _check_choice("divergence", kind, DIVERGENCES)
    if log_p.dim() < 2 or log_p.shape != log_q.shape or target_mask.shape != log_p.shape[:-1]:
        raise ValueError(
            f"log_p {tuple(log_p.shape)} and log_q {tuple(log_q.shape)} must be equal (..., T, V) and "
            f"target_mask {tuple(target_mask.shape)} must be (..., T)."
        )
    log_p, log_q = _checked("log_p", log_p), _checked("log_q", log_q)

    def kl(log_a: Tensor, log_b: Tensor) -> Tensor:
        return (log_a.exp() * (log_a - log_b)).sum(dim=-1)

    if kind == "kl":
        per_token = kl(log_p, log_q)
    else:
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        per_token = 0.5 * (kl(log_p, log_m) + kl(log_q, log_m))
    keep = target_mask.bool()
    total = torch.where(keep, per_token, torch.zeros_like(per_token)).sum(dim=-1)
    return total / keep.sum(dim=-1).clamp(min=1)


@dataclass
class CDALossOutput:
    """The CDA loss and what to log."""

    loss: Tensor
    """() mean of ``per_example``."""
    per_example: Tensor
    """(B,) InfoNCE loss of each query."""
    s1: Tensor
    """(B,) alignment score S1 (the numerator)."""
    s2: Tensor
    """(B, n) the denominator scores S2_i, one per negative."""
    reward_margins: Tensor | None
    """(B, n) ``beta * ((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected))`` of the first preference term,
    whatever ``reference_sign`` (log ``(reward_margins > 0).float().mean()`` as preference accuracy); None for
    the KL / JS similarity, which has no reference term."""
    alignment_gap: Tensor
    """(B,) the first S1 term before beta and the bound: ``|lp(a) - lp(b)|``, or the mean divergence D."""


def _scores_of_strategy(
    strategy: Strategy, values: Mapping[LogProb, Named], beta: float, bound: str, reference_sign: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(S1 (B,), S2 (B, n), beta * DPO margin of the first preference (B, n), gap of the first alignment (B,))."""
    gaps = [_alignment_gap(values[term.a], values[term.b]) for term in strategy.alignments]
    s1 = torch.stack([bounded_score(beta * gap, bound) for gap in gaps]).mean(dim=0)
    terms = [[values[spec] for spec in term.log_probs] for term in strategy.preferences]
    arguments, margins = zip(*(_preference_margin(*named, reference_sign) for named in terms), strict=True)
    shapes = {tuple(x.shape) for x in arguments}
    if len(shapes) > 1:
        raise ValueError(f"The preference terms have different shapes {sorted(shapes)}; give every (B, n) the same n.")
    s2 = torch.stack([bounded_score(beta * x, bound) for x in arguments]).mean(dim=0)
    if s2.shape[0] != s1.shape[0]:
        raise ValueError(f"The alignment terms have batch size {s1.shape[0]}, the preference terms {s2.shape[0]}.")
    return s1, s2, beta * margins[0], gaps[0]


def _loss_output(
    s1: Tensor,
    s2: Tensor,
    margins: Tensor | None,
    gap: Tensor,
    temperature: float,
    multi_negative: str,
) -> CDALossOutput:
    per_example = info_nce_from_scores(s1, s2, temperature, multi_negative)
    return CDALossOutput(per_example.mean(), per_example, s1, s2, margins, gap)


def strategy_loss(
    strategy: int,
    log_probs: Mapping[LogProb, Tensor],
    *,
    beta: float = 0.1,
    temperature: float = 0.05,
    bound: str = "sigmoid",
    reference_sign: str = "paper",
    multi_negative: str = "one_denominator",
    labels: Mapping[LogProb, str] | None = None,
) -> CDALossOutput:
    """The CDA loss under an alignment strategy of the paper (0: eqs. 1-2; 1-4: appendix E, eqs. 3-6).

    ``L = mean_b InfoNCE(S1, S2)`` (see :func:`info_nce_from_scores`) with ``S1 = -mean_j g(beta * gap_j)``
    and ``S2_i = -mean_j g(beta * x_ij)`` over the terms of ``STRATEGIES[strategy]`` (one term, or two with
    weights ½ each). ``log_probs`` holds at least ``STRATEGIES[strategy].log_probs``: per-query ones (B,),
    per-negative ones (B, n) (or (B,) for n = 1). ``labels`` name the tensors in error messages (default:
    ``LogProb.name``).

    Raises:
        ValueError: an unknown option, ``beta`` or ``temperature`` <= 0, a missing log-prob, a shape mismatch
            or a non-finite input (naming the log-prob).
    """
    _check_choice("strategy", strategy, tuple(STRATEGIES))
    _check_positive("beta", beta)
    definition = STRATEGIES[strategy]
    missing = [f"{spec.name} = {spec}" for spec in definition.log_probs if spec not in log_probs]
    if missing:
        raise ValueError(f"Strategy {strategy} needs the log-probs {missing}.")
    values = {spec: ((labels or {}).get(spec, spec.name), log_probs[spec]) for spec in definition.log_probs}
    s1, s2, margins, gap = _scores_of_strategy(definition, values, beta, bound, reference_sign)
    return _loss_output(s1, s2, margins, gap, temperature, multi_negative)


def cda_loss(
    policy_pos_next: Tensor,
    policy_pos_self: Tensor,
    policy_neg_next: Tensor,
    ref_pos_next: Tensor,
    ref_neg_next: Tensor,
    *,
    beta: float = 0.1,
    temperature: float = 0.05,
    bound: str = "sigmoid",
    reference_sign: str = "paper",
    multi_negative: str = "one_denominator",
) -> CDALossOutput:
    """The default CDA loss (paper eqs. 1-2, :func:`strategy_loss` with strategy 0) from five tensors:

    ``S1 = -g(beta * |policy_pos_next - policy_pos_self|)``, ``S2_i`` from ``preference_scores(policy_pos_next,
    policy_neg_next, ref_pos_next, ref_neg_next)``, ``L = mean_b -log(exp(S1/t) / (exp(S1/t) + sum_i
    exp(S2_i/t)))``. Per-query arguments are (B,), negatives (B, n) or (B,) for n = 1. Sum or length-averaged
    log-probs: the caller's choice (``sequence_log_probs``).
    """
    tensors = {
        POS_GIVEN_QUERY: ("policy_pos_next", policy_pos_next),
        POS_GIVEN_POS: ("policy_pos_self", policy_pos_self),
        NEG_GIVEN_QUERY: ("policy_neg_next", policy_neg_next),
        POS_GIVEN_QUERY.reference: ("ref_pos_next", ref_pos_next),
        NEG_GIVEN_QUERY.reference: ("ref_neg_next", ref_neg_next),
    }
    return strategy_loss(
        0,
        {spec: tensor for spec, (_, tensor) in tensors.items()},
        beta=beta,
        temperature=temperature,
        bound=bound,
        reference_sign=reference_sign,
        multi_negative=multi_negative,
        labels={spec: label for spec, (label, _) in tensors.items()},
    )


def divergence_loss(
    kind: str,
    distributions: Mapping[LogProb, tuple[Tensor, Tensor]],
    *,
    temperature: float = 0.05,
    bound: str = "sigmoid",
    multi_negative: str = "one_denominator",
) -> CDALossOutput:
    """The paper's KL / JS variant (appendix B): both scores become divergences of next-token distributions, with
    no beta and no reference term.

    ``S1 = -g(D(d+))``, ``S2_i = -g(D(d-_i))``, ``D(x) = mean_t div(p(. | x_<t, e_{x,I_self}) ||
    p(. | x_<t, e_{q,I_next}))`` over x's real tokens (:func:`mean_divergence`; KL in this direction, JS is
    symmetric). S2 is our reading of the paper's loosely indexed S2: the same divergence as S1 with d-_i in place of
    d+, so that both distributions are over d-_i's own tokens (``docs/cda_loss.md``).

    ``distributions`` maps each of :data:`DIVERGENCE_LOG_PROBS` to (log-distributions, target mask): for d+
    ``(B, T, V)`` and ``(B, T)``; for the negatives ``(B, n, T, V)`` and ``(B, n, T)`` (or the d+ shapes for
    n = 1). ``alignment_gap`` of the output is D(d+); it has no reward margins.
    """
    missing = [f"{spec.name} = {spec}" for spec in DIVERGENCE_LOG_PROBS if spec not in distributions]
    if missing:
        raise ValueError(f"The {kind} similarity needs the distributions of {missing}.")

    def divergence(term: DivergenceTerm) -> Tensor:
        (log_p, mask), (log_q, query_mask) = distributions[term.self_conditioned], distributions[term.query_conditioned]
        if not torch.equal(mask.bool(), query_mask.bool()):
            raise ValueError(f"{term.self_conditioned.name} and {term.query_conditioned.name} have different masks.")
        return mean_divergence(log_p, log_q, mask, kind)

    positive = divergence(DIVERGENCE_S1)
    if positive.dim() != 1:
        raise ValueError(f"The d+ distributions must be (B, T, V), got {tuple(positive.shape)} divergences.")
    negatives = _as_2d(divergence(DIVERGENCE_S2))
    if negatives.shape[0] != positive.shape[0]:
        raise ValueError(f"The negatives have batch size {negatives.shape[0]}, d+ has {positive.shape[0]}.")
    s1, s2 = bounded_score(positive, bound), bounded_score(negatives, bound)
    return _loss_output(s1, s2, None, positive, temperature, multi_negative)
