"""Configuration of stage 2, conditional distribution alignment (CDA)."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoreg_embed.losses.cda import BOUNDS, DIVERGENCES, REFERENCE_SIGNS, STRATEGY_LOG_PROBS
from autoreg_embed.trainers.base_config import InstructionTrainingConfig

SIMILARITIES = ("log_prob", *DIVERGENCES)


@dataclass
class CDAConfig(InstructionTrainingConfig):
    """Options of :class:`~autoreg_embed.CDATrainer` (paper defaults: beta 0.1, tau 0.05, lr 5e-6, 4 epochs).

    Equations and the meaning of every option: ``docs/cda.md``.
    """

    beta: float = field(default=0.1, metadata={"help": "beta, scale of the log-prob differences (paper: 0.1)."})
    temperature: float = field(default=0.05, metadata={"help": "tau, the InfoNCE temperature (paper: 0.05)."})
    bound: str = field(default="sigmoid", metadata={"help": f"Bounding function g of the scores: {BOUNDS}."})
    similarity: str = field(
        default="log_prob",
        metadata={"help": f"S1 from log-prob differences (paper) or a per-token divergence: {SIMILARITIES}."},
    )
    strategy: int = field(
        default=0, metadata={"help": f"Alignment strategy of the paper's appendix E: {sorted(STRATEGY_LOG_PROBS)}."}
    )
    length_normalize: bool = field(
        default=False, metadata={"help": "Use per-token mean log-probs instead of sums (paper: sums)."}
    )
    reference_sign: str = field(
        default="paper",
        metadata={"help": f"{REFERENCE_SIGNS}: 'official' adds the reference log-ratio as the reference code does."},
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
        choices = {
            "bound": (self.bound, BOUNDS),
            "similarity": (self.similarity, SIMILARITIES),
            "reference_sign": (self.reference_sign, REFERENCE_SIGNS),
            "strategy": (self.strategy, tuple(STRATEGY_LOG_PROBS)),
        }
        for option, (value, valid) in choices.items():
            if value not in valid:
                raise ValueError(f"{option} must be one of {list(valid)}, got {value!r}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}.")
        if self.similarity != "log_prob" and self.strategy in (1, 2):
            raise ValueError(f"similarity={self.similarity!r} replaces the d+ alignment term; strategy 1/2 lack it.")
        if self.max_target_length < 1:
            raise ValueError(f"max_target_length must be >= 1, got {self.max_target_length}.")
        super().__post_init__()
