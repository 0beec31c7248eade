"""Configuration of stage 2, conditional distribution alignment (CDA)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from autoreg_embed.data.cda_collator import PositivesUse
from autoreg_embed.losses.cda import (
    BOUNDS,
    MULTI_NEGATIVE_LOSSES,
    REFERENCE_SIGNS,
    STRATEGIES,
    Bound,
    MultiNegative,
    ReferenceSign,
)
from autoreg_embed.trainers.base_config import InstructionTrainingConfig
from autoreg_embed.trainers.recipes import CDA_RECIPE_OPTIONS

Similarity = Literal["log_prob", "kl", "js"]
SIMILARITIES: tuple[str, ...] = get_args(Similarity)
StrategyNumber = Literal[0, 1, 2, 3, 4]


@dataclass
class CDAConfig(InstructionTrainingConfig):
    """Options of :class:`~autoreg_embed.CDATrainer` (paper defaults: beta 0.1, tau 0.05, lr 5e-6, 4 epochs).

    ``temperature``, ``reference_sign``, ``multi_negative`` and ``positives`` left unset (None) take the values of
    ``recipe`` (``paper`` by default; ``official``: the official code's) when the config is created. Equations and
    the meaning of every option: ``docs/cda_loss.md``.
    """

    beta: float = field(
        default=0.1, metadata={"help": "beta, scale of the log-prob differences (paper: 0.1; unused by kl / js)."}
    )
    temperature: float | None = field(
        default=None, metadata={"help": "tau, the InfoNCE temperature (unset: paper 0.05; recipe official 0.1)."}
    )
    bound: Bound = field(default="sigmoid", metadata={"help": "Bounding function g of the scores."})
    similarity: Similarity = field(
        default="log_prob",
        metadata={
            "help": "log_prob: scores from log-prob differences (paper); kl / js: both scores from per-token "
            "divergences of the next-token distributions (paper appendix B; strategy 0 only)."
        },
    )
    strategy: StrategyNumber = field(
        default=0, metadata={"help": "Alignment strategy: 0 (paper eqs. 1-2) or 1-4 (paper appendix E, eqs. 3-6)."}
    )
    length_normalize: bool = field(
        default=False, metadata={"help": "Use per-token mean log-probs instead of sums (paper: sums)."}
    )
    reference_sign: ReferenceSign | None = field(
        default=None,
        metadata={"help": "paper: S2 subtracts the reference log-ratio (DPO); official: adds it. Unset: the recipe's."},
    )
    multi_negative: MultiNegative | None = field(
        default=None,
        metadata={
            "help": "With n > 1 negatives: one_denominator (paper, one InfoNCE) or mean_of_binary (official, n "
            "binary losses averaged). Unset: the recipe's."
        },
    )
    positives: PositivesUse | None = field(
        default=None,
        metadata={
            "help": "A row whose pos is a list: each positive becomes its own row (each), or only the first is "
            "used (first, as the official code). Unset: the recipe's (paper: each)."
        },
    )
    max_target_length: int = field(default=512, metadata={"help": "Max tokens of each decoded text (+ EOS)."})
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={"help": "Compute reference log-probs in one pass before training and cache them on disk."},
    )
    ref_log_probs_cache_dir: str | None = field(
        default=None, metadata={"help": "Folder of cached reference log-probs (default: the autoreg-embed cache)."}
    )
    learning_rate: float = field(default=5e-6, metadata={"help": "Peak learning rate (paper: 5e-6)."})
    num_train_epochs: float = field(default=4.0, metadata={"help": "Epochs (paper: 4)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimisation steps."})

    def __post_init__(self) -> None:
        super().__post_init__()  # checks the recipe
        for option, value in CDA_RECIPE_OPTIONS[self.recipe].items():
            if getattr(self, option) is None:
                setattr(self, option, value)
        choices = {
            "bound": (self.bound, BOUNDS),
            "similarity": (self.similarity, SIMILARITIES),
            "reference_sign": (self.reference_sign, REFERENCE_SIGNS),
            "multi_negative": (self.multi_negative, MULTI_NEGATIVE_LOSSES),
            "positives": (self.positives, get_args(PositivesUse)),
            "strategy": (self.strategy, tuple(STRATEGIES)),
        }
        for option, (value, valid) in choices.items():
            if value not in valid:
                raise ValueError(f"{option} must be one of {list(valid)}, got {value!r}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}.")
        if self.similarity != "log_prob" and self.strategy != 0:
            raise ValueError(
                f"similarity={self.similarity!r} is the paper's variant of the default loss (appendix B); "
                f"it has no strategy {self.strategy}. Use strategy=0 or similarity='log_prob'."
            )
        if self.max_target_length < 1:
            raise ValueError(f"max_target_length must be >= 1, got {self.max_target_length}.")
