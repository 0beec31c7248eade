"""Data: collators, schema validation and loading."""

from autoreg_embed.data.collators import CompressionCollator, TargetBuilder
from autoreg_embed.data.loading import load_rows
from autoreg_embed.data.schema import DataValidationError, validate_rows

__all__ = ["CompressionCollator", "DataValidationError", "TargetBuilder", "load_rows", "validate_rows"]
