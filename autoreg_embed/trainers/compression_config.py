"""Configuration of stage 1, information compression."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoreg_embed.trainers.base_config import EncoderTrainingConfig


@dataclass
class CompressionConfig(EncoderTrainingConfig):
    """Options of :class:`~autoreg_embed.CompressionTrainer` (paper defaults: lr 2e-5, batch 32, 2 epochs).

    The encoder reads ``context`` + ``instruction`` + k compress tokens; the frozen original LLM must regenerate
    ``target`` from the k compress states. Lengths are in tokens; longer texts are truncated (head kept) and
    counted, and the compress tokens are never truncated.
    """

    max_target_length: int = field(default=512, metadata={"help": "Max tokens of target (EOS is added after)."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate (paper: 2e-5)."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs (paper: 2)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimisation steps."})

    def __post_init__(self) -> None:
        if self.max_target_length < 1:
            raise ValueError(f"max_target_length must be >= 1, got {self.max_target_length}.")
        super().__post_init__()
