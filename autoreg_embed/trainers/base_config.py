"""Settings shared by every autoreg-embed trainer: how texts become encoder inputs and embeddings."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, make_dataclass, replace
from typing import Any, Literal, get_type_hints

from transformers import TrainingArguments

from autoreg_embed.data.instructions import INSTRUCTION_PRESETS, InstructionPreset
from autoreg_embed.modeling.checkpoint import PadTokenChoice
from autoreg_embed.modeling.settings import FIXED, EncoderSettings, training_options
from autoreg_embed.options import check_choices
from autoreg_embed.trainers.recipes import OFFICIAL_WARMUP, InstructionPosition, Recipe, recipe_template

logger = logging.getLogger(__name__)

ModelDtype = Literal["float32", "bfloat16", "float16", "auto"]
"""dtypes a model can be loaded in (``auto``: the dtype stored in the checkpoint)."""


def _layout_option_fields() -> list[tuple[str, Any, Any]]:
    """One config field per :func:`~autoreg_embed.modeling.settings.training_options` entry: the settings' own
    type (or None) and help, default None (= not set: the checkpoint's saved value, else the settings' default)."""
    hints = get_type_hints(EncoderSettings)
    generated = []
    for name, option in training_options().items():
        rule = (
            "a different value is an error (the encoder was trained with it)"
            if option.metadata["training_option"] == FIXED
            else "a value set here replaces it"
        )
        help_text = (
            f"{option.metadata['help']} Unset: {option.default!r}, or the saved value when the model is an "
            f"autoreg-embed checkpoint; for a checkpoint {rule}."
        )
        generated.append((name, hints[name] | None, field(default=None, metadata={"help": help_text})))
    return generated


EncoderLayoutOptions = make_dataclass("EncoderLayoutOptions", _layout_option_fields())
EncoderLayoutOptions.__module__ = __name__
EncoderLayoutOptions.__doc__ = """The encoder layout options of every trainer config, generated from the
:class:`~autoreg_embed.modeling.settings.EncoderSettings` fields marked as training options (declared once, there).
Each defaults to None, meaning "not set"; see :meth:`EncoderTrainingConfig.encoder_settings`."""


@dataclass
class EncoderTrainingConfig(EncoderLayoutOptions, TrainingArguments):
    """:class:`~transformers.TrainingArguments` plus the encoder layout shared by all autoreg-embed trainers.

    The layout options (``num_compress_tokens``, ``template``, ``add_bos``, ``pooling``, ``max_text_length``,
    ``max_instruction_length``) come from :class:`EncoderSettings` and default to None (not set). Starting from a
    saved checkpoint, unset ones take the checkpoint's values, set lengths replace them, and a different k,
    template, BOS or pooling is an error naming the option and the saved value.
    """

    recipe: Recipe = field(
        default="paper",
        metadata={
            "help": "paper: the paper's settings; official: the official code's where they differ (training layout "
            "with a newline before the compress tokens, 5 percent warm-up, and in stage 2 tau 0.1, the added reference "
            "term, per-negative averaged loss). Options you set yourself win. See docs/cda_loss.md."
        },
    )
    model_dtype: ModelDtype | None = field(
        default=None,
        metadata={"help": "dtype of the weights when the model is given by name; unset: float32."},
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for from_pretrained when a model name or path is given, as in trl (a dict, or "
            'a JSON string on the command line), e.g. \'{"attn_implementation": "flash_attention_2"}\' (falls back '
            "to sdpa when flash-attn is absent). The dtype is model_dtype."
        },
    )
    pad_token: PadTokenChoice = field(
        default="auto",
        metadata={
            "help": "Pad token for a tokenizer without one (LLaMA-2, Mistral): 'auto' (UNK if it exists, else EOS), "
            "'unk' or 'eos'. Padding is masked out, so it never changes a loss; targets keep their EOS."
        },
    )
    instruction_position: InstructionPosition | None = field(
        default=None,
        metadata={"help": "Where the instruction goes: after_text (paper) or before_text; sets the template."},
    )
    merge_adapter_on_save: bool = field(
        default=True,
        metadata={"help": "A final save_model of a PEFT model writes merged weights (False: keep the adapter)."},
    )
    compress_token_init: str = field(
        default="mean",
        metadata={
            "help": "Initial embedding of new compress tokens: 'mean' (vocabulary mean) or a string whose last "
            "token's embedding is copied (e.g. '\"')."
        },
    )

    def __post_init__(self) -> None:
        check_choices(self)  # recipe, instruction_position, pooling, model_dtype, pad_token, ...
        if self.template is not None and self.instruction_position is not None:
            raise ValueError(
                "Set either template or instruction_position (a template already places the instruction), not both."
            )
        if self.recipe == "official" and not self.warmup_steps:
            self.warmup_steps = OFFICIAL_WARMUP
        if isinstance(self.model_init_kwargs, str):
            self.model_init_kwargs = json.loads(self.model_init_kwargs)
        if "dtype" in (self.model_init_kwargs or {}) or "torch_dtype" in (self.model_init_kwargs or {}):
            raise ValueError("Set the model's dtype with model_dtype, not inside model_init_kwargs.")
        self.remove_unused_columns = False  # the collators read the raw text columns
        if self.label_names is None:
            self.label_names = []
        self.encoder_settings()  # validate the layout options early, with their own messages
        super().__post_init__()

    def layout_choices(self) -> dict[str, Any]:
        """The layout options set in this config (not None), ``template`` resolved from ``instruction_position``
        or the recipe when not set itself."""
        chosen = {name: getattr(self, name) for name in training_options() if getattr(self, name) is not None}
        if "template" not in chosen and (self.instruction_position is not None or self.recipe == "official"):
            chosen["template"] = recipe_template(self.instruction_position or "after_text", self.recipe)
        return chosen

    def _origin(self, name: str) -> str:
        """Where a chosen layout value came from, for error messages."""
        if name != "template" or self.template is not None:
            return ""
        if self.instruction_position is not None:
            return f" (from instruction_position={self.instruction_position!r}, recipe={self.recipe!r})"
        return f" (from recipe={self.recipe!r})"

    def encoder_settings(
        self,
        base_model_name_or_path: str | None = None,
        saved: EncoderSettings | None = None,
        checkpoint: str | None = None,
    ) -> EncoderSettings:
        """The :class:`EncoderSettings` these options describe, on top of a checkpoint's ``saved`` settings.

        Without ``saved``: the options set here, the settings' defaults for the rest. With ``saved`` (training
        continues from the checkpoint ``checkpoint``): the saved settings, with the lengths set here applied
        (logged) and ``base_model_name_or_path`` kept.

        Raises:
            ValueError: a fixed option (k, template, BOS, pooling) set here differs from the saved one; the
                message names the option, both values, and what to do.
        """
        chosen = self.layout_choices()
        if saved is None:
            return EncoderSettings(**chosen, base_model_name_or_path=base_model_name_or_path)
        options = training_options()
        changed = {name: value for name, value in chosen.items() if value != getattr(saved, name)}
        for name, value in changed.items():
            if options[name].metadata["training_option"] == FIXED:
                saved_value = getattr(saved, name)
                raise ValueError(
                    f"{name}={value!r}{self._origin(name)} differs from the checkpoint {checkpoint or ''}, which was "
                    f"trained with {name}={saved_value!r}; the encoder cannot change it. Set {name}={saved_value!r} "
                    "or leave it unset to continue from this checkpoint."
                )
        for name, value in changed.items():
            logger.info("%s: using %r instead of the checkpoint's %r.", name, value, getattr(saved, name))
        return replace(saved, **changed)


@dataclass
class InstructionTrainingConfig(EncoderTrainingConfig):
    """Adds the task instructions (a preset, single entries overridable) of trainers that embed text pairs."""

    instructions: InstructionPreset = field(
        default="sts",
        metadata={"help": "Instruction preset (the paper's); instruction_next / _self / _prev override entries."},
    )
    instruction_next: str | None = field(default=None, metadata={"help": "Custom I_next (query -> relevant text)."})
    instruction_self: str | None = field(default=None, metadata={"help": "Custom I_self (text -> itself)."})
    instruction_prev: str | None = field(default=None, metadata={"help": "Custom I_prev (text -> its query)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_instructions(self.encoder_settings())

    def instruction_texts(self) -> dict[str, str]:
        """The ``next`` / ``self`` / ``prev`` instructions: the preset, overridden by the custom strings."""
        texts = dict(INSTRUCTION_PRESETS[self.instructions])
        for key in texts:
            custom = getattr(self, f"instruction_{key}")
            if custom is not None:
                texts[key] = custom
        return texts

    def check_instructions(self, settings: EncoderSettings) -> None:
        """Raise ``ValueError`` naming ``instruction_<key>`` if ``settings``' template cannot hold it."""
        for key, text in self.instruction_texts().items():
            try:
                settings.split_template(text)
            except ValueError as error:
                raise ValueError(f"instruction_{key}: {error} (set instruction_{key}='' to embed without it)") from None
