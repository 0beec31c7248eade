"""Training losses."""

from autoreg_embed.losses.cda import (
    BOUNDS,
    DIVERGENCES,
    LOG_PROB_MEANINGS,
    REFERENCE_SIGNS,
    STRATEGY_LOG_PROBS,
    CDALossOutput,
    alignment_score,
    bounded_score,
    cda_loss,
    divergence_alignment_score,
    info_nce_from_scores,
    preference_scores,
    sequence_log_probs,
    strategy_loss,
)

__all__ = [
    "BOUNDS",
    "DIVERGENCES",
    "LOG_PROB_MEANINGS",
    "REFERENCE_SIGNS",
    "STRATEGY_LOG_PROBS",
    "CDALossOutput",
    "alignment_score",
    "bounded_score",
    "cda_loss",
    "divergence_alignment_score",
    "info_nce_from_scores",
    "preference_scores",
    "sequence_log_probs",
    "strategy_loss",
]
