"""Configuration of the InfoNCE baseline trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoreg_embed.trainers.base_config import InstructionTrainingConfig


@dataclass
class ContrastiveConfig(InstructionTrainingConfig):
    """Options of :class:`~autoreg_embed.ContrastiveTrainer`: cosine InfoNCE on pooled embeddings.

    With ``num_compress_tokens=5`` and ``pooling="compress_mean"`` it trains the same embedding as AutoRegEmbed
    (the paper's fair baseline); with ``num_compress_tokens=0`` and ``pooling="last"`` or ``"mean"`` it is a
    plain last-token / mean-pooling contrastive model. Queries use I_next, documents I_self.
    """

    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature."})
    in_batch_negatives: bool = field(
        default=True, metadata={"help": "Use the other rows' positives and negatives as negatives too."}
    )
    gather_across_processes: bool = field(
        default=False,
        metadata={"help": "With in-batch negatives, gather documents from all processes (with gradient)."},
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimisation steps."})

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        super().__post_init__()
