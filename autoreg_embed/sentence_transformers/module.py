"""The sentence-transformers input module that runs an autoreg-embed encoder (or an untrained prompt baseline)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import torch
from sentence_transformers.base.modules import InputModule
from torch import nn
from transformers import PreTrainedTokenizerBase

from autoreg_embed.modeling.checkpoint import load_encoder, partial_token_adapters
from autoreg_embed.modeling.encoder import backbone_of, encode
from autoreg_embed.modeling.frozen import is_peft_model
from autoreg_embed.modeling.inputs import EncoderInputBuilder
from autoreg_embed.modeling.settings import EncoderSettings

MODULE_CONFIG_FILE = "sentence_bert_config.json"
"""File name of the module's own options (the layout lives in ``autoreg_embed_config.json``)."""


def embedding_dimension(model: nn.Module) -> int:
    """Size of the embeddings ``model`` produces: the hidden size of its transformer body."""
    return backbone_of(model).config.hidden_size


def split_dtype(model_kwargs: dict[str, Any] | None) -> tuple[str | torch.dtype | None, dict[str, Any]]:
    """Separate the dtype (``dtype`` or its older name ``torch_dtype``) from the other ``from_pretrained`` kwargs."""
    rest = dict(model_kwargs or {})
    dtype = rest.pop("dtype", None)
    torch_dtype = rest.pop("torch_dtype", None)
    return dtype or torch_dtype, rest


class AutoRegEmbedModule(InputModule):
    """A causal LM body + tokenizer + :class:`~autoreg_embed.EncoderSettings` as one sentence-transformers module.

    :meth:`preprocess` lays out ``[BOS] + prefix + text + suffix + compress tokens`` with
    :class:`~autoreg_embed.EncoderInputBuilder`, and the sentence-transformers prompt fills the template's
    ``{instruction}`` slot (with the paper's template: after the text, before the compress tokens), instead of
    being prepended to the text. :meth:`forward` runs :func:`~autoreg_embed.encode` and returns
    ``sentence_embedding`` (normalised when the settings say so) and, for k >= 1, the ``(B, k, H)``
    ``compress_states``.

    :attr:`max_seq_length` is the *text* budget (``settings.max_text_length``): longer texts lose their tail, while
    BOS, instruction and compress tokens are always kept on top of it. The instruction has its own budget,
    ``settings.max_instruction_length``.

    Args:
        model: a causal LM (or a PEFT model wrapping one) whose embedding matrix holds the compress tokens.
        tokenizer: its tokenizer, with the compress tokens and a pad token.
        settings: the encoder layout and pooling.
        training_stages: the training stages the weights went through, oldest first: trainer names or stage records
            (:func:`~autoreg_embed.sentence_transformers.model_card.training_stage_record`; for the model card).
    """

    config_file_name = MODULE_CONFIG_FILE
    config_keys: ClassVar[list[str]] = ["training_stages"]
    save_in_root = True

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        settings: EncoderSettings,
        training_stages: Sequence[str | Mapping[str, Any]] = (),
    ) -> None:
        super().__init__()
        self.model = model
        self.training_stages = list(training_stages)
        self._tokenizer = tokenizer
        self._settings = settings
        self._builder = EncoderInputBuilder(tokenizer, settings)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer; setting it rebuilds the input builder."""
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._builder = EncoderInputBuilder(tokenizer, self._settings)
        self._tokenizer = tokenizer

    @property
    def settings(self) -> EncoderSettings:
        """The encoder settings; setting them rebuilds the input builder."""
        return self._settings

    @settings.setter
    def settings(self, settings: EncoderSettings) -> None:
        self._builder = EncoderInputBuilder(self._tokenizer, settings)
        self._settings = settings

    @property
    def max_seq_length(self) -> int:
        """Tokens of text kept per input (``settings.max_text_length``); instruction and special tokens come on top."""
        return self._settings.max_text_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.settings = replace(self._settings, max_text_length=value)

    @property
    def builder(self) -> EncoderInputBuilder:
        """The input builder (its ``truncations`` counter shows how many texts were cut)."""
        return self._builder

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Token ids and attention mask for ``inputs``, with ``prompt`` as the instruction.

        Padding follows ``tokenizer.padding_side``; embeddings do not depend on it. Other keyword arguments that
        sentence-transformers passes (such as ``task``) do not change the layout.
        """
        texts = list(inputs)
        wrong = sorted({type(text).__name__ for text in texts if not isinstance(text, str)})
        if wrong:  # not a TypeError: on one, sentence-transformers retries with the prompt prepended to the text
            raise ValueError(f"AutoRegEmbedModule embeds strings only, got {wrong}.")
        return self._builder(  # a prompt for a template without {instruction} is a ValueError there
            texts, prompt or "", padding_side=self._tokenizer.padding_side
        )

    def forward(self, features: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        """Add ``sentence_embedding`` (and ``compress_states`` when k >= 1) to the preprocessed features."""
        output = encode(self.model, features["input_ids"], features["attention_mask"], self._settings)
        features["sentence_embedding"] = output.embedding
        if output.compress_states is not None:
            features["compress_states"] = output.compress_states
        return features

    def __repr__(self) -> str:
        settings = self._settings
        return (
            f"AutoRegEmbedModule(model={type(self.model).__name__}, k={settings.num_compress_tokens}, "
            f"template={settings.template!r}, pooling={settings.pooling!r}, max_seq_length={self.max_seq_length})"
        )

    def get_embedding_dimension(self) -> int:
        """Size of the sentence embedding (the model's hidden size)."""
        return embedding_dimension(self.model)

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write the weights (safetensors; an unmerged PEFT model writes its adapter), tokenizer, settings, config."""
        with partial_token_adapters(self.model):
            self.model.save_pretrained(output_path)
        self.save_tokenizer(output_path)
        self._settings.save(output_path)
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        backend: str = "torch",
        **kwargs: Any,
    ) -> AutoRegEmbedModule:
        """Load a saved checkpoint (full weights, or a PEFT adapter that is merged into its base model).

        ``model_kwargs`` go to ``from_pretrained``; ``dtype`` (or ``torch_dtype``) picks the weights' dtype
        (default float32). Other sentence-transformers loading arguments (``trust_remote_code``,
        ``processor_kwargs``, ``config_kwargs``) have no effect: the tokenizer and layout come from the checkpoint.
        """
        if backend != "torch":
            raise ValueError(f"AutoRegEmbedModule runs on the torch backend only, got backend={backend!r}.")
        hub_kwargs = {
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        directory = cls.load_dir_path(model_name_or_path, subfolder=subfolder, **hub_kwargs)
        if directory is None:
            raise FileNotFoundError(f"No checkpoint folder {subfolder!r} in {model_name_or_path!r}.")
        dtype, model_kwargs = split_dtype(model_kwargs)
        loaded = load_encoder(directory, dtype, **model_kwargs)
        model = loaded.model.merge_and_unload() if is_peft_model(loaded.model) else loaded.model
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **hub_kwargs)
        return cls(model.eval(), loaded.tokenizer, loaded.settings, **config)
