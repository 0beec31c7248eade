"""The paper's instructions, by task preset."""

from __future__ import annotations

from typing import Literal

InstructionPreset = Literal["sts", "retrieval"]
"""The names of :data:`INSTRUCTION_PRESETS` (a type, so that the command line lists them as choices)."""

STS_INSTRUCTION = "This sentence means in one word: “"
"""The paper's STS instruction (Table 5), ending in the typographic opening quote “."""

INSTRUCTION_PRESETS: dict[InstructionPreset, dict[str, str]] = {
    "sts": {"next": STS_INSTRUCTION, "self": STS_INSTRUCTION, "prev": STS_INSTRUCTION},
    "retrieval": {
        "next": "Use one word to represent the query in a retrieval task. The word is: “",
        "self": "Use one word to represent the passage in a retrieval task. The word is: “",
        "prev": "Use a word to express the question that this article can answer:“",
    },
}
"""The paper's instructions (Table 5 and appendix E): ``next`` (I_next, embed a query to generate its relevant
text), ``self`` (I_self, embed a text to regenerate itself), ``prev`` (I_prev, embed a text to generate its query;
for retrieval the paper's own example, for STS the same as I_self). All end in the typographic quote “."""
