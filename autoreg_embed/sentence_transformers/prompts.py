"""Prompts of sentence-transformers checkpoints: the trainers' instructions, defaults, and the PromptEOL layout."""

from __future__ import annotations

from collections.abc import Mapping

from autoreg_embed.data.instructions import INSTRUCTION_PRESETS
from autoreg_embed.modeling.settings import EncoderSettings


def prompts_from_instructions(instructions: Mapping[str, str]) -> dict[str, str]:
    """sentence-transformers prompts from CDA instructions: ``query`` = I_next, ``document`` = I_self."""
    return {"query": instructions["next"], "document": instructions["self"]}


DEFAULT_PROMPTS = prompts_from_instructions(INSTRUCTION_PRESETS["sts"])
"""Prompts saved when none are given: the paper's STS instruction 'This sentence means in one word: “' as both."""

DEFAULT_PROMPT_NAME = "document"
"""The prompt plain ``encode`` uses: I_self, "embed this text so that it can regenerate itself"."""

PROMPTEOL_TEMPLATE = 'This sentence : "{text}" means in one word:"'
"""The PromptEOL template (Jiang et al.), the usual training-free baseline with last-token pooling."""

PROMPTEOL_INSTRUCTION = "means in one word"
PROMPTEOL_LAYOUT = {"template": 'This sentence : "{text}" {instruction}', "compress_token_init": ':"'}
"""Trainer-config options that start the encoder from the PromptEOL prompt: with ``PROMPTEOL_INSTRUCTION`` as the
instruction(s) the input is PromptEOL's with its closing ``:"`` token replaced by compress tokens initialised from
it, so with ``num_compress_tokens=1`` the untrained encoder equals ``baseline(name, "last", PROMPTEOL_TEMPLATE)``."""


def check_prompts(
    settings: EncoderSettings, prompts: Mapping[str, str], default_prompt_name: str | None
) -> tuple[dict[str, str], str | None]:
    """Validate prompts against the template; return them as a dict with the default name (``None`` if no prompts).

    Raises:
        ValueError: a non-empty prompt for a template without ``{instruction}`` (it would be ignored), or a
            default prompt name that is not among the prompts.
    """
    prompts = dict(prompts)
    for prompt in prompts.values():
        settings.split_template(prompt)  # raises for a prompt the template has no {instruction} slot for
    if not prompts:
        return prompts, None
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise ValueError(f"default_prompt_name={default_prompt_name!r} is not one of the prompts {list(prompts)}.")
    return prompts, default_prompt_name
