"""Data: collators, instruction presets, schema validation and loading."""

from autoreg_embed.data.cda_collator import CDACollator, one_positive_per_row
from autoreg_embed.data.collators import CompressionCollator, ContrastiveCollator, TargetBuilder
from autoreg_embed.data.instructions import INSTRUCTION_PRESETS
from autoreg_embed.data.loading import load_rows
from autoreg_embed.data.schema import DataValidationError, validate_rows

__all__ = [
    "INSTRUCTION_PRESETS",
    "CDACollator",
    "CompressionCollator",
    "ContrastiveCollator",
    "DataValidationError",
    "TargetBuilder",
    "load_rows",
    "one_positive_per_row",
    "validate_rows",
]
