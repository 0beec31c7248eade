"""Settings shared by every autoreg-embed trainer: how texts become encoder inputs and embeddings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import TrainingArguments

from autoreg_embed.data.instructions import INSTRUCTION_PRESETS, InstructionPreset
from autoreg_embed.modeling.checkpoint import PadTokenChoice
from autoreg_embed.modeling.settings import EncoderSettings, PoolingMethod
from autoreg_embed.options import check_choices

InstructionPosition = Literal["after_text", "before_text"]
"""Where the instruction goes relative to the text."""

INSTRUCTION_TEMPLATES: dict[InstructionPosition, str] = {
    "after_text": "{text}\n{instruction}",
    "before_text": "{instruction}\n{text}",
}
"""The template of each instruction position; the paper puts the instruction after the text."""

ModelDtype = Literal["float32", "bfloat16", "float16", "auto"]
"""dtypes a model can be loaded in (``auto``: the dtype stored in the checkpoint)."""


@dataclass
class EncoderTrainingConfig(TrainingArguments):
    """:class:`~transformers.TrainingArguments` plus the encoder layout shared by all autoreg-embed trainers."""

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
    num_compress_tokens: int = field(default=5, metadata={"help": "k, the number of compress tokens (paper: 5)."})
    instruction_position: InstructionPosition = field(
        default="after_text",
        metadata={"help": "Where the instruction goes relative to the text (paper: after_text)."},
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "A custom layout with {text} once and optionally {instruction}, overriding instruction_position; "
            "e.g. 'This sentence : \"{text}\" {instruction}' reproduces the PromptEOL prompt around the text."
        },
    )
    add_bos: bool = field(
        default=True,
        metadata={"help": "Start every encoder input with the BOS token (turn off for tokenizers without BOS)."},
    )
    pooling: PoolingMethod = field(
        default="compress_mean",
        metadata={
            "help": "How hidden states become the embedding (saved with the model); compress_mean: the mean of "
            "the k compress states (paper)."
        },
    )
    max_text_length: int = field(
        default=512, metadata={"help": "Tokens of context / query / document text kept (longer: head kept)."}
    )
    max_instruction_length: int = field(default=512, metadata={"help": "Tokens of instruction kept."})
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
        check_choices(self)
        if isinstance(self.model_init_kwargs, str):
            self.model_init_kwargs = json.loads(self.model_init_kwargs)
        if "dtype" in (self.model_init_kwargs or {}) or "torch_dtype" in (self.model_init_kwargs or {}):
            raise ValueError("Set the model's dtype with model_dtype, not inside model_init_kwargs.")
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

    instructions: InstructionPreset = field(
        default="sts",
        metadata={"help": "Instruction preset (the paper's); instruction_next / _self / _prev override entries."},
    )
    instruction_next: str | None = field(default=None, metadata={"help": "Custom I_next (query -> relevant text)."})
    instruction_self: str | None = field(default=None, metadata={"help": "Custom I_self (text -> itself)."})
    instruction_prev: str | None = field(default=None, metadata={"help": "Custom I_prev (text -> its query)."})

    def __post_init__(self) -> None:
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
