"""Conditional distribution alignment (CDA), AutoRegEmbed's stage-2 loss, as pure tensor functions.

The trainer scores target texts under the frozen decoder, conditioned on compress vectors from the trained
encoder ("policy") and from the frozen stage-1 encoder ("reference"), and passes the log-probabilities here.
Notation: ``lp(x | e_{s,I})`` is the log-probability of text x given the embedding of text s under
instruction I (``I_next``, ``I_self`` or ``I_prev``). Equations, options and the interpretation of each
alignment strategy: ``docs/cda_loss.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

BOUNDS = ("sigmoid", "tanh", "log_sigmoid")
REFERENCE_SIGNS = ("paper", "official")
DIVERGENCES = ("kl", "js")

LOG_PROB_MEANINGS: dict[str, str] = {
    "policy_pos_next": "lp(d+ | e_{q,I_next})",
    "policy_pos_self": "lp(d+ | e_{d+,I_self})",
    "policy_neg_next": "lp(d-_i | e_{q,I_next})",
    "ref_pos_next": "lp_ref(d+ | e_{q,I_next})",
    "ref_neg_next": "lp_ref(d-_i | e_{q,I_next})",
    "policy_query_prev_pos": "lp(q | e_{d+,I_prev})",
    "policy_query_self": "lp(q | e_{q,I_self})",
    "policy_query_prev_neg": "lp(q | e_{d-_i,I_prev})",
    "ref_query_prev_pos": "lp_ref(q | e_{d+,I_prev})",
    "ref_query_prev_neg": "lp_ref(q | e_{d-_i,I_prev})",
    "ref_pos_self": "lp_ref(d+ | e_{d+,I_self})",
    "policy_neg_self_pos": "lp(d-_i | e_{d+,I_self})",
    "ref_neg_self_pos": "lp_ref(d-_i | e_{d+,I_self})",
    "policy_neg_self": "lp(d-_i | e_{d-_i,I_self})",
    "ref_neg_self": "lp_ref(d-_i | e_{d-_i,I_self})",
    "policy_pos_self_neg": "lp(d+ | e_{d-_i,I_self})",
    "ref_pos_self_neg": "lp_ref(d+ | e_{d-_i,I_self})",
}
"""Every log-probability name a strategy can ask for. Names containing ``neg`` are (B, n), one per
negative (or (B,) when n = 1); the others are (B,)."""

_DEFAULT = ("policy_pos_next", "policy_pos_self", "policy_neg_next", "ref_pos_next", "ref_neg_next")
_QUERY = (
    "policy_query_prev_pos",
    "policy_query_self",
    "policy_query_prev_neg",
    "ref_query_prev_pos",
    "ref_query_prev_neg",
)
_EXTRA_PREFERENCE = {
    3: ("policy_pos_self", "policy_neg_self_pos", "ref_pos_self", "ref_neg_self_pos"),
    4: ("policy_neg_self", "policy_pos_self_neg", "ref_neg_self", "ref_pos_self_neg"),
}
"""Strategies 3 and 4: (chosen, rejected, reference chosen, reference rejected) of the extra scores."""
STRATEGY_LOG_PROBS: dict[int, tuple[str, ...]] = {
    0: _DEFAULT,
    1: _QUERY,
    2: _DEFAULT + _QUERY,
    3: tuple(dict.fromkeys(_DEFAULT + _EXTRA_PREFERENCE[3])),
    4: _DEFAULT + _EXTRA_PREFERENCE[4],
}
"""Alignment strategy (paper, Appendix E) -> the log-probabilities the trainer must compute for it."""


Named = tuple[str, Tensor]
"""An argument and its name, for error messages that say which argument is wrong."""


def _check_choice(what: str, value: object, valid: tuple[object, ...]) -> None:
    if value not in valid:
        raise ValueError(f"Unknown {what} {value!r}; valid: {', '.join(map(repr, valid))}.")


def _checked(name: str, t: Tensor) -> Tensor:
    """``t`` as a float tensor (at least float32) after checking that it is finite."""
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf).")
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _columns(name: str, t: Tensor, like: Named | None = None) -> Tensor:
    """Finite ``t`` as (B, m), (B,) becoming (B, 1). With ``like``, both must have the same (B, m) shape."""
    as_2d = _checked(name, t)
    as_2d = as_2d.unsqueeze(1) if as_2d.dim() == 1 else as_2d
    if as_2d.dim() != 2:
        raise ValueError(f"{name} must have shape (B,) or (B, n), got {tuple(t.shape)}.")
    if like is not None and as_2d.shape != (like[1].unsqueeze(1) if like[1].dim() == 1 else like[1]).shape:
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


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}.")


def alignment_score(lp_cond_a: Tensor, lp_cond_b: Tensor, beta: float, bound: str = "sigmoid") -> Tensor:
    """``S1 = -g(beta * |a - b|)`` (B,): high when the two conditionings give the target the same log-prob."""
    _check_beta(beta)
    a = _columns("lp_cond_a", lp_cond_a)
    b = _columns("lp_cond_b", lp_cond_b, like=("lp_cond_a", lp_cond_a))
    return bounded_score(beta * (a - b).abs(), bound).squeeze(1)


def _preference_margin(
    pos: Named, neg: Named, ref_pos: Named, ref_neg: Named, reference_sign: str
) -> tuple[Tensor, Tensor]:
    """(x, DPO margin), both (B, n). x is the argument of S2 before beta, per ``reference_sign``."""
    _check_choice("reference_sign", reference_sign, REFERENCE_SIGNS)
    n = _columns(*neg)
    rn = _columns(*ref_neg, like=neg)
    p = _columns(*pos)
    rp = _columns(*ref_pos, like=pos)
    if p.shape[0] != n.shape[0] or p.shape[1] not in (1, n.shape[1]):
        raise ValueError(f"{pos[0]} has shape {tuple(p.shape)}, incompatible with {neg[0]} {tuple(n.shape)}.")
    dpo = (p - rp) - (n - rn)
    return (dpo if reference_sign == "paper" else (p - n) + (rp - rn)), dpo


def preference_scores(
    policy_pos: Tensor,
    policy_neg: Tensor,
    ref_pos: Tensor,
    ref_neg: Tensor,
    beta: float,
    bound: str = "sigmoid",
    reference_sign: str = "paper",
) -> Tensor:
    """``S2_i = -g(beta * x_i)`` (B, n), one per negative. ``policy_pos``/``ref_pos``: (B,) or (B, n);
    ``policy_neg``/``ref_neg``: (B, n) or (B,) for n = 1.

    - ``paper`` (DPO): ``x_i = (pos - ref_pos) - (neg_i - ref_neg_i)``
    - ``official`` (reference code): ``x_i = (pos - neg_i) + (ref_pos - ref_neg_i)``
    """
    _check_beta(beta)
    pos, neg = ("policy_pos", policy_pos), ("policy_neg", policy_neg)
    x, _ = _preference_margin(pos, neg, ("ref_pos", ref_pos), ("ref_neg", ref_neg), reference_sign)
    return bounded_score(beta * x, bound)


def info_nce_from_scores(s1: Tensor, s2: Tensor, temperature: float) -> Tensor:
    """Per-example ``-log(exp(S1/t) / (exp(S1/t) + sum_i exp(S2_i/t)))`` (B,), computed as
    ``logsumexp([S1, S2_1..S2_n] / t) - S1/t``. ``s1``: (B,), ``s2``: (B, n) or (B,) for n = 1."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    first = _columns("s1", s1)
    if first.shape[1] != 1:
        raise ValueError(f"s1 must have shape (B,), got {tuple(s1.shape)}.")
    rest = _columns("s2", s2)
    if rest.shape[0] != first.shape[0]:
        raise ValueError(f"s2 has shape {tuple(rest.shape)} but s1 has shape {tuple(s1.shape)}.")
    logits = torch.cat([first, rest], dim=1) / temperature
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


def divergence_alignment_score(
    logp_a: Tensor, logp_b: Tensor, target_mask: Tensor, kind: str, beta: float, bound: str = "sigmoid"
) -> Tensor:
    """The paper's KL / JS variant of S1 (B,): ``S1 = -g(beta * D)``, with D the mean over real target
    positions t of a divergence between the next-token distributions p_a(.|t) and p_b(.|t).

    ``logp_a``/``logp_b``: (B, T, V) log-distributions of the target's next tokens given ``a`` = e_{q,I_next}
    and ``b`` = e_{d+,I_self}; ``target_mask``: (B, T).
    ``kl``: ``KL(p_a || p_b) = sum_v p_a (log p_a - log p_b)``; ``js``: ``(KL(p_a||m) + KL(p_b||m)) / 2``,
    ``m = (p_a + p_b) / 2``. Log-probs must be finite (a log-softmax of finite logits is).
    """
    _check_choice("divergence", kind, DIVERGENCES)
    _check_beta(beta)
    if logp_a.dim() != 3 or logp_a.shape != logp_b.shape or target_mask.shape != logp_a.shape[:2]:
        raise ValueError(
            f"logp_a {tuple(logp_a.shape)} and logp_b {tuple(logp_b.shape)} must be equal (B, T, V) and "
            f"target_mask {tuple(target_mask.shape)} must be (B, T)."
        )
    log_pa, log_pb = _checked("logp_a", logp_a), _checked("logp_b", logp_b)

    def kl(log_p: Tensor, log_q: Tensor) -> Tensor:
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1)

    if kind == "kl":
        per_token = kl(log_pa, log_pb)
    else:
        log_m = torch.logaddexp(log_pa, log_pb) - math.log(2.0)
        per_token = 0.5 * (kl(log_pa, log_m) + kl(log_pb, log_m))
    return bounded_score(beta * sequence_log_probs(per_token, target_mask, average=True), bound)


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
    """(B, m) every denominator score: the n S2_i, then any extra strategy scores."""
    reward_margins: Tensor
    """(B, n) ``beta * ((pi_pos - ref_pos) - (pi_neg - ref_neg))``, whatever ``reference_sign``: log
    ``(reward_margins > 0).float().mean()`` as preference accuracy."""
    alignment_gap: Tensor
    """(B,) ``|lp(d+ | e_q) - lp(d+ | e_{d+})|`` (before beta)."""


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
    s1_override: Tensor | None = None,
    extra_scores: Tensor | None = None,
) -> CDALossOutput:
    """``L = mean_b -log(exp(S1/t) / (exp(S1/t) + sum_i exp(S2_i/t)))`` with
    ``S1 = -g(beta * |policy_pos_next - policy_pos_self|)`` (see ``alignment_score``) and
    ``S2_i`` = ``preference_scores(policy_pos_next, policy_neg_next, ref_pos_next, ref_neg_next)``.

    Per-query arguments are (B,); negatives (B, n), or (B,) for n = 1. ``s1_override`` (B,) replaces S1
    (e.g. ``divergence_alignment_score``); ``extra_scores`` (B, m) are more denominator terms (strategies
    3 and 4). Sum or length-averaged log-probs: the caller's choice (``sequence_log_probs``).
    """
    return _cda(
        ("policy_pos_next", policy_pos_next),
        ("policy_pos_self", policy_pos_self),
        ("policy_neg_next", policy_neg_next),
        ("ref_pos_next", ref_pos_next),
        ("ref_neg_next", ref_neg_next),
        beta=beta,
        temperature=temperature,
        bound=bound,
        reference_sign=reference_sign,
        s1_override=s1_override,
        extra_scores=extra_scores,
    )


def _cda(
    pos: Named,
    pos_self: Named,
    neg: Named,
    ref_pos: Named,
    ref_neg: Named,
    *,
    beta: float,
    temperature: float,
    bound: str,
    reference_sign: str,
    s1_override: Tensor | None = None,
    extra_scores: Tensor | None = None,
) -> CDALossOutput:
    """``cda_loss`` on named arguments, so that errors name the caller's arguments."""
    _check_beta(beta)
    p = _columns(*pos)
    if p.shape[1] != 1:
        raise ValueError(f"{pos[0]} must have shape (B,), got {tuple(pos[1].shape)}.")
    p_self = _columns(*pos_self, like=pos)
    x, margin = _preference_margin(pos, neg, ref_pos, ref_neg, reference_sign)
    s2 = bounded_score(beta * x, bound)
    if extra_scores is not None:
        extra = _columns("extra_scores", extra_scores)
        if extra.shape[0] != s2.shape[0]:
            raise ValueError(f"extra_scores has shape {tuple(extra.shape)}; the batch size is {s2.shape[0]}.")
        s2 = torch.cat([s2, extra.to(s2.dtype)], dim=1)
    if s1_override is None:
        s1 = bounded_score(beta * (p - p_self).abs(), bound).squeeze(1)
    else:
        s1 = _columns("s1_override", s1_override, like=pos).squeeze(1)
    per_example = info_nce_from_scores(s1, s2, temperature)
    return CDALossOutput(
        loss=per_example.mean(),
        per_example=per_example,
        s1=s1,
        s2=s2,
        reward_margins=beta * margin,
        alignment_gap=(p - p_self).abs().squeeze(1),
    )


def strategy_loss(
    strategy: int,
    log_probs: Mapping[str, Tensor],
    *,
    beta: float = 0.1,
    temperature: float = 0.05,
    bound: str = "sigmoid",
    reference_sign: str = "paper",
    s1_override: Tensor | None = None,
) -> CDALossOutput:
    """CDA loss under an alignment strategy (paper, Appendix E); ``log_probs`` holds at least
    ``STRATEGY_LOG_PROBS[strategy]`` (meanings in ``LOG_PROB_MEANINGS``).

    - 0: the default ``cda_loss``: align d+ regenerated from e_{q,I_next} and from e_{d+,I_self}.
    - 1: align on regenerating q: ``cda_loss`` with (policy_pos_next, policy_pos_self, policy_neg_next,
      refs) = lp(q | e_{d+,I_prev}), lp(q | e_{q,I_self}), lp(q | e_{d-_i,I_prev}) and their references.
    - 2: per-example mean of the losses of 0 and 1; diagnostics (s1, s2, margins, gap) are those of 0.
    - 3: 0 plus n denominator scores ``S3_i = -g(beta * x_i)``, x_i the preference of d+ over d-_i when
      both are regenerated from e_{d+,I_self} (d+ should regenerate itself rather than d-).
    - 4: 0 plus ``S4_i``: preference of d-_i over d+ when regenerated from e_{d-_i,I_self}.

    ``s1_override`` replaces the S1 of the d+ alignment term, so it is refused for strategies 1 and 2.
    """
    _check_choice("strategy", strategy, tuple(STRATEGY_LOG_PROBS))
    missing = [name for name in STRATEGY_LOG_PROBS[strategy] if name not in log_probs]
    if missing:
        raise ValueError(f"Strategy {strategy} needs log-probs {missing} (see LOG_PROB_MEANINGS).")
    if s1_override is not None and strategy in (1, 2):
        raise ValueError(f"s1_override applies to the d+ alignment term, which strategy {strategy} lacks.")
    options = {"beta": beta, "temperature": temperature, "bound": bound, "reference_sign": reference_sign}

    def named(*names: str) -> list[Named]:
        return [(name, log_probs[name]) for name in names]

    if strategy == 1:
        return _cda(*named(*_QUERY), **options)
    extra_scores = None
    if strategy in _EXTRA_PREFERENCE:
        x, _ = _preference_margin(*named(*_EXTRA_PREFERENCE[strategy]), reference_sign)
        extra_scores = bounded_score(beta * x, bound)
    out = _cda(*named(*_DEFAULT), **options, s1_override=s1_override, extra_scores=extra_scores)
    if strategy == 2:
        per_example = (out.per_example + _cda(*named(*_QUERY), **options).per_example) / 2
        return replace(out, loss=per_example.mean(), per_example=per_example)
    return out
