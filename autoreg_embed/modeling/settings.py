"""The settings that define how an encoder turns text into embeddings; saved with every checkpoint."""

from __future__ import annotations

import json
import os
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal, get_args

SETTINGS_FILE = "autoreg_embed_config.json"
"""File name of the encoder settings inside a saved checkpoint."""

Pooling = Literal["compress_mean", "compress_last", "last", "mean", "eos", "daap"]
POOLING_METHODS: tuple[str, ...] = get_args(Pooling)
"""``compress_*`` reduce the k compress-token states; ``last``/``mean``/``eos`` pool an untrained prompt; ``daap``
combines the last-token state with the mean compress-token (soft-prompt) state (InstEmb's dual-anchor pooling)."""

LastTokenPosition = Literal["final", "before_compress"]
LAST_TOKEN_POSITIONS: tuple[str, ...] = get_args(LastTokenPosition)
"""Which state ``last`` pooling and the DAAP anchor take when k >= 1: the sequence's final position (the last
compress token, which attends to text, instruction and every compress token) or the last text/instruction token
just before the compress tokens (which, under causal attention, cannot see them)."""

DaapCombination = Literal["concat", "sum"]
DAAP_COMBINATIONS: tuple[str, ...] = get_args(DaapCombination)
"""How DAAP joins its two normalised anchors: concatenation (2H dimensions) or a weighted sum (H dimensions)."""

FIXED, ADJUSTABLE = "fixed", "adjustable"
"""How a training option (field metadata ``"training_option"``) behaves when training continues from a saved
checkpoint: a ``fixed`` one is what the encoder was trained with and may not change; an ``adjustable`` one may."""

TEXT_PLACEHOLDER = "{text}"
STATES_PLACEHOLDER = "{states}"
"""Where the k compress states go in a ``decoder_template``."""


@dataclass
class EncoderSettings:
    """How text, instruction and compress tokens are laid out, and how hidden states become an embedding.

    The encoder input is ``[BOS] + prefix + text + suffix + <EMBED0> ... <EMBED{k-1}>`` where prefix and suffix
    come from splitting ``template`` (with the instruction filled in) at ``{text}``. The paper's layout is the
    default template ``"{text}\\n{instruction}"``: instruction after the text, compress tokens last.
    """

    num_compress_tokens: int = field(
        default=5, metadata={"help": "k, the number of compress tokens (paper: 5).", "training_option": FIXED}
    )
    compress_token_format: str = field(
        default="<EMBED{index}>", metadata={"help": "Format of the compress-token strings ({index} = 0..k-1)."}
    )
    template: str = field(
        default="{text}\n{instruction}",
        metadata={
            "help": "Layout of text and instruction: {text} once and optionally {instruction}, e.g. "
            "'This sentence : \"{text}\" {instruction}' (PromptEOL's prompt around the text).",
            "training_option": FIXED,
        },
    )
    add_bos: bool = field(
        default=True,
        metadata={
            "help": "Start every encoder input with the BOS token (turn off for tokenizers without BOS).",
            "training_option": FIXED,
        },
    )
    pooling: Pooling = field(
        default="compress_mean",
        metadata={
            "help": "How hidden states become the embedding: compress_mean / compress_last, the mean / last of the k "
            "compress states (paper: compress_mean); last, mean, eos: the last token, all tokens, or an appended EOS "
            "token of an untrained prompt (k = 0).",
            "training_option": FIXED,
        },
    )
    normalize: bool = field(default=True, metadata={"help": "L2-normalise embeddings (inner product = cosine)."})
    last_token_position: LastTokenPosition = field(
        default="final",
        metadata={
            "help": f"State of 'last' pooling and the DAAP anchor when k >= 1: {', '.join(LAST_TOKEN_POSITIONS)} "
            "(final: the last compress token, which sees everything; before_compress: the last text/instruction "
            "token, which does not see the compress tokens).",
            "training_option": FIXED,
            "written_when_set": True,
        },
    )
    daap_combination: DaapCombination = field(
        default="concat",
        metadata={
            "help": f"How 'daap' pooling joins its two anchors: {', '.join(DAAP_COMBINATIONS)}.",
            "training_option": FIXED,
            "written_when_set": True,
        },
    )
    daap_weight: float = field(
        default=0.5,
        metadata={
            "help": "Weight w of the last-token anchor in 'daap' pooling (the soft prompts get 1 - w).",
            "training_option": FIXED,
            "written_when_set": True,
        },
    )
    max_text_length: int = field(
        default=512,
        metadata={
            "help": "Tokens of context / query / document text kept (the head; truncations are counted).",
            "training_option": ADJUSTABLE,
        },
    )
    max_instruction_length: int = field(
        default=512, metadata={"help": "Tokens of instruction kept (the head).", "training_option": ADJUSTABLE}
    )
    decoder_template: str | None = field(
        default=None,
        metadata={
            "help": "Text the frozen decoder of both training stages reads around the compress states, with {states} "
            "once, e.g. '<|im_start|>user\\nWrite one sentence using these words: {states}<|im_end|>\\n"
            "<|im_start|>assistant\\n' (the states as a user turn of a chat model, the target as its answer). "
            "Not in the paper (None: the states then the target). Does not change how embeddings are computed.",
            "training_option": FIXED,
            "written_when_set": True,
        },
    )
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The original LLM (the frozen decoder of both training stages)."}
    )

    def __post_init__(self) -> None:
        if self.num_compress_tokens < 0:
            raise ValueError(f"num_compress_tokens must be >= 0, got {self.num_compress_tokens}.")
        if self.pooling not in POOLING_METHODS:
            raise ValueError(f"pooling must be one of {POOLING_METHODS}, got {self.pooling!r}.")
        if self.pooling.startswith("compress_") and self.num_compress_tokens == 0:
            raise ValueError(f"pooling={self.pooling!r} needs num_compress_tokens >= 1.")
        if self.pooling == "daap" and self.num_compress_tokens == 0:
            raise ValueError("pooling='daap' needs num_compress_tokens >= 1 (the soft prompts are its second anchor).")
        if self.last_token_position not in LAST_TOKEN_POSITIONS:
            raise ValueError(
                f"last_token_position must be one of {LAST_TOKEN_POSITIONS}, got {self.last_token_position!r}."
            )
        if self.daap_combination not in DAAP_COMBINATIONS:
            raise ValueError(f"daap_combination must be one of {DAAP_COMBINATIONS}, got {self.daap_combination!r}.")
        if not 0.0 < self.daap_weight < 1.0:
            raise ValueError(f"daap_weight must be in (0, 1), got {self.daap_weight}.")
        if self.pooling == "eos" and self.num_compress_tokens:
            raise ValueError("pooling='eos' appends an EOS token for prompt baselines; use num_compress_tokens=0.")
        if self.template.count(TEXT_PLACEHOLDER) != 1:
            raise ValueError(f"template must contain {TEXT_PLACEHOLDER} exactly once, got {self.template!r}.")
        if "{index}" not in self.compress_token_format:
            raise ValueError(f"compress_token_format must contain {{index}}, got {self.compress_token_format!r}.")
        if self.decoder_template is not None:
            check_decoder_template(self.decoder_template)
        for name in ("max_text_length", "max_instruction_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")

    @property
    def compress_tokens(self) -> list[str]:
        """The k compress-token strings, in order."""
        return [self.compress_token_format.format(index=i) for i in range(self.num_compress_tokens)]

    def embedding_size(self, hidden_size: int) -> int:
        """Dimension of the embeddings for a model of ``hidden_size``: 2H for concatenating DAAP, else H."""
        return 2 * hidden_size if self.pooling == "daap" and self.daap_combination == "concat" else hidden_size

    def split_template(self, instruction: str) -> tuple[str, str]:
        """Return the (prefix, suffix) around the text once ``instruction`` is filled in.

        An empty instruction also drops the separator written next to ``{instruction}`` in the default
        template, so that a text without instruction is just the text.

        Raises:
            ValueError: a non-empty instruction for a template without ``{instruction}`` (it would be lost).
        """
        template = self.template
        if instruction and "{instruction}" not in template:
            raise ValueError(
                f"The template {template!r} has no {{instruction}} slot, but the instruction {instruction!r} was "
                "given: add {instruction} to the template, or pass no instruction."
            )
        if not instruction:
            template = template.replace("\n{instruction}", "").replace("{instruction}\n", "")
        prefix, suffix = template.split(TEXT_PLACEHOLDER)
        return prefix.replace("{instruction}", instruction), suffix.replace("{instruction}", instruction)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the settings as JSON into ``directory`` (atomically) and return the file path.

        Options added after the first release (field metadata ``"written_when_set"``) are written only when they
        differ from their default, so a checkpoint that does not use them loads in releases that predate them.
        """
        path = Path(directory) / SETTINGS_FILE
        tmp = path.with_suffix(".json.tmp")
        values = asdict(self)
        for option in fields(self):  # newer options at their default are left out: older releases load the file
            if option.metadata.get("written_when_set") and values[option.name] == option.default:
                del values[option.name]
        tmp.write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> EncoderSettings:
        """Read settings saved by :meth:`save`; unknown keys (from newer versions) are an error."""
        path = Path(directory) / SETTINGS_FILE
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path} has unknown settings {unknown}; upgrade autoreg-embed to read it.")
        return cls(**data)

    @classmethod
    def exists_in(cls, directory: str | os.PathLike) -> bool:
        """Whether ``directory`` holds saved encoder settings."""
        return (Path(directory) / SETTINGS_FILE).is_file()


def check_decoder_template(template: str) -> None:
    """Raise ``ValueError`` unless ``template`` holds ``{states}`` exactly once."""
    if template.count(STATES_PLACEHOLDER) != 1:
        raise ValueError(
            f"decoder_template must contain {STATES_PLACEHOLDER} exactly once (where the compress states go), "
            f"got {template!r}."
        )


def training_options() -> dict[str, Field]:
    """The :class:`EncoderSettings` fields a trainer config exposes as options, by name (metadata
    ``"training_option"``: :data:`FIXED` or :data:`ADJUSTABLE`)."""
    return {option.name: option for option in fields(EncoderSettings) if "training_option" in option.metadata}
