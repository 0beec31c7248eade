"""Trainers: one config + trainer pair per stage, on a small shared base."""

from autoreg_embed.trainers.base_config import EncoderTrainingConfig
from autoreg_embed.trainers.base_trainer import AutoRegTrainer
from autoreg_embed.trainers.cda_config import CDAConfig
from autoreg_embed.trainers.cda_trainer import CDATrainer
from autoreg_embed.trainers.compression_config import CompressionConfig
from autoreg_embed.trainers.compression_trainer import CompressionTrainer
from autoreg_embed.trainers.contrastive_config import ContrastiveConfig
from autoreg_embed.trainers.contrastive_trainer import ContrastiveTrainer
from autoreg_embed.trainers.distill_config import DistillConfig
from autoreg_embed.trainers.distill_trainer import DistillTrainer

__all__ = [
    "AutoRegTrainer",
    "CDAConfig",
    "CDATrainer",
    "CompressionConfig",
    "CompressionTrainer",
    "ContrastiveConfig",
    "ContrastiveTrainer",
    "DistillConfig",
    "DistillTrainer",
    "EncoderTrainingConfig",
]
