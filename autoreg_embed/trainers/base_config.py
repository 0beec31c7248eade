"""Settings shared by every autoreg-embed trainer: how texts become encoder inputs and embeddings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from autoreg_embed.data.instructions import INSTRUCTION_PRESETS
from autoreg_embed.modeling.checkpoint import PAD_TOKEN_CHOICES
from autoreg_embed.modeling.settings import POOLING_METHODS, EncoderSettings

INSTRUCTION_TEMPLATES = {
    "after_text": "{text}\n{instruction}",
    "before_text": "{instruction}\n{text}",
}
"""Where the instruction goes relative to the text; the paper puts it after the text."""


@dataclass
class EncoderTrainingConfig(TrainingArguments):
    """:class:`~transformers.TrainingArguments` plus the encoder layout shared by all autoreg-embed trainers."""

    model_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype to load the model in when a name is given (float32, bfloat16, auto). Default: float32."
        },
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for from_pretrained when a model name or path is given, as in trl (a dict, or "
            'a JSON string on the command line), e.g. \'{"attn_implementation": "flash_attention_2"}\' (falls back '
            "to sdpa when flash-attn is absent). The dtype is model_dtype."
        },
    )
    pad_token: str = field(
        default="auto",
        metadata={
            "help": "Pad token for a tokenizer without one (LLaMA-2, Mistral): 'auto' (UNK if it exists, else EOS), "
            "'unk' or 'eos'. Padding is masked out, so it never changes a loss; targets keep their EOS."
        },
    )
    num_compress_tokens: int = field(default=5, metadata={"help": "k, the number of compress tokens (paper: 5)."})
    instruction_position: str = field(
        default="after_text",
        metadata={"help": f"Where the instruction goes: {' or '.join(INSTRUCTION_TEMPLATES)} (paper: after_text)."},
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "A custom layout with {text} once and optionally {instruction}, overriding instruction_position; "
            "e.g. 'This sentence : \"{text}\" {instruction}' reproduces the PromptEOL prompt around the text."
        },
    )
    add_bos: bool = field(default=True, metadata={"help": "Start every encoder input with the BOS token."})
    pooling: str = field(
        default="compress_mean", metadata={"help": f"Embedding pooling saved with the model: {POOLING_METHODS}."}
    )
    max_text_length: int = field(default=512, metadata={"help": "Max tokens of context/query/document text."})
    max_instruction_length: int = field(default=512, metadata={"help": "Max tokens of instruction."})
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
        if self.instruction_position not in INSTRUCTION_TEMPLATES:
            raise ValueError(
                f"instruction_position must be one of {list(INSTRUCTION_TEMPLATES)}, got {self.instruction_position!r}."
            )
        if isinstance(self.model_init_kwargs, str):
            self.model_init_kwargs = json.loads(self.model_init_kwargs)
        if "dtype" in (self.model_init_kwargs or {}) or "torch_dtype" in (self.model_init_kwargs or {}):
            raise ValueError("Set the model's dtype with model_dtype, not inside model_init_kwargs.")
        if self.pad_token not in PAD_TOKEN_CHOICES:
            raise ValueError(f"pad_token must be one of {list(PAD_TOKEN_CHOICES)}, got {self.pad_token!r}.")
        self.remove_unused_columns = False  # the collators read the raw text columns
        if self.label_names is None:
            self.label_names = []
        self.encoder_settings()  # validate the layout options early, with their own messages
        super().__post_init__()

    def encoder_settings(self, base_model_name_or_path: str | None = None) -> EncoderSettings:
        """The :class:`EncoderSettings` these options describe."""
        return EncoderSettings(
            num_compress_tokens=self.num_compress_tokens,
            template=self.template or INSTRUCTION_TEMPLATES[self.instruction_position],
            add_bos=self.add_bos,
            pooling=self.pooling,
            max_text_length=self.max_text_length,
            max_instruction_length=self.max_instruction_length,
            base_model_name_or_path=base_model_name_or_path,
        )


@dataclass
class InstructionTrainingConfig(EncoderTrainingConfig):
    """Adds the task instructions (a preset, single entries overridable) of trainers that embed text pairs."""

    instructions: str = field(
        default="sts", metadata={"help": f"Instruction preset: {sorted(INSTRUCTION_PRESETS)}; custom ones override."}
    )
    instruction_next: str | None = field(default=None, metadata={"help": "Custom I_next (query -> relevant text)."})
    instruction_self: str | None = field(default=None, metadata={"help": "Custom I_self (text -> itself)."})
    instruction_prev: str | None = field(default=None, metadata={"help": "Custom I_prev (text -> its query)."})

    def __post_init__(self) -> None:
        if self.instructions not in INSTRUCTION_PRESETS:
            raise ValueError(f"instructions must be one of {list(INSTRUCTION_PRESETS)}, got {self.instructions!r}.")
        super().__post_init__()
        settings = self.encoder_settings()
        for key, text in self.instruction_texts().items():
            try:
                settings.split_template(text)
            except ValueError as error:
                raise ValueError(f"instruction_{key}: {error} (set instruction_{key}='' to embed without it)") from None

    def instruction_texts(self) -> dict[str, str]:
        """The ``next`` / ``self`` / ``prev`` instructions: the preset, overridden by the custom strings."""
        texts = dict(INSTRUCTION_PRESETS[self.instructions])
        for key in texts:
            custom = getattr(self, f"instruction_{key}")
            if custom is not None:
                texts[key] = custom
        return texts
