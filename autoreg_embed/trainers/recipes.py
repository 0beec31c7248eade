"""Recipes: ``recipe="paper"`` (the default) follows the paper's text, ``recipe="official"`` the official
research code (github TrustedLLM/AutoRegEmbed) where the two differ. Options you set yourself always win.

What ``recipe="official"`` sets (table and sources: ``docs/cda_loss.md``):

- every stage: the official training layout, a newline after the instruction, before the compress tokens
  (``"{text}\\n{instruction}\\n"``), and a 5 % linear warm-up (``warmup_steps=0.05``);
- stage 2 (CDA) in addition: tau 0.1, the added reference term (``reference_sign="official"``), n binary losses
  averaged for n > 1 negatives (``multi_negative="mean_of_binary"``), and only the first of several positives
  (``positives="first"``).
"""

from __future__ import annotations

from typing import Literal, get_args

Recipe = Literal["paper", "official"]
RECIPES: tuple[str, ...] = get_args(Recipe)

INSTRUCTION_TEMPLATES = {
    "after_text": "{text}\n{instruction}",
    "before_text": "{instruction}\n{text}",
}
"""Where the instruction goes relative to the text; the paper puts it after the text."""
InstructionPosition = Literal["after_text", "before_text"]

OFFICIAL_LAYOUT_SUFFIX = "\n"
"""The official training scripts tokenize ``instruction + "\\n"``: a newline right before the compress tokens
(their evaluation script has none, like the paper)."""
OFFICIAL_WARMUP = 0.05
"""The official scripts' ``--warmup_ratio 0.05`` (a ratio of the total steps: ``warmup_steps=0.05`` here)."""

CDA_RECIPE_OPTIONS: dict[str, dict[str, object]] = {
    "paper": {"temperature": 0.05, "reference_sign": "paper", "multi_negative": "one_denominator", "positives": "each"},
    "official": {
        "temperature": 0.1,
        "reference_sign": "official",
        "multi_negative": "mean_of_binary",
        "positives": "first",
    },
}
"""The stage-2 options each recipe sets when they are left unset (None)."""


def recipe_template(instruction_position: str, recipe: str) -> str:
    """The layout template of ``instruction_position`` under ``recipe`` (official: a newline after it)."""
    template = INSTRUCTION_TEMPLATES[instruction_position]
    return template + OFFICIAL_LAYOUT_SUFFIX if recipe == "official" else template


CHATML_WORDS_DECODER_TEMPLATE = (
    "<|im_start|>user\nWrite one sentence using these words: {states}<|im_end|>\n<|im_start|>assistant\n"
)
"""A ``decoder_template`` for ChatML instruction-tuned decoders (SmolLM2-Instruct, Qwen2-Instruct): the frozen
decoder reads the k states as a user turn asking for a sentence and the target as its answer. Not in the paper.
With it, stage 1 on the embedded SmolLM2-135M-Instruct (autoencoding of short sentences, k = 5, lr 1e-4) makes
the decoder read the states (held-out readout gain > 1 nat/token within 150 steps; without it, <= 0.1:
``docs/reproduce.md``)."""
