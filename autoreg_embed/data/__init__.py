"""Data: collators, instruction presets, schema validation, data files and loading.

The names load their modules on first use, so that ``autoreg_embed.data.instructions`` (needed to load a saved
model) does not import the collators' and loaders' dependencies (``datasets``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoreg_embed._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "autoreg_embed.data.cda_collator": ("CDACollator", "one_positive_per_row"),
        "autoreg_embed.data.collators": ("CompressionCollator", "ContrastiveCollator", "TargetBuilder"),
        "autoreg_embed.data.instructions": ("INSTRUCTION_PRESETS",),
        "autoreg_embed.data.loading": ("load_rows",),
        "autoreg_embed.data.schema": ("DataValidationError", "validate_rows"),
    },
)

if TYPE_CHECKING:  # the names as type checkers and documentation tools see them
    from autoreg_embed.data.cda_collator import CDACollator as CDACollator
    from autoreg_embed.data.cda_collator import one_positive_per_row as one_positive_per_row
    from autoreg_embed.data.collators import CompressionCollator as CompressionCollator
    from autoreg_embed.data.collators import ContrastiveCollator as ContrastiveCollator
    from autoreg_embed.data.collators import TargetBuilder as TargetBuilder
    from autoreg_embed.data.instructions import INSTRUCTION_PRESETS as INSTRUCTION_PRESETS
    from autoreg_embed.data.loading import load_rows as load_rows
    from autoreg_embed.data.schema import DataValidationError as DataValidationError
    from autoreg_embed.data.schema import validate_rows as validate_rows
