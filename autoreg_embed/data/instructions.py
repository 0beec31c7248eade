"""The paper's instructions, by task preset."""

from __future__ import annotations

from typing import Literal

InstructionPreset = Literal["sts", "retrieval"]
"""The names of :data:`INSTRUCTION_PRESETS` (a type, so that the command line lists them as choices)."""

INSTRUCTION_PRESETS: dict[InstructionPreset, dict[str, str]] = {
    "sts": {
        "next": "This sentence means in one word: “",
        "self": "This sentence means in one word: “",
        "prev": "This sentence means in one word: “",
    },
    "retrieval": {
        "next": 'Use one word to represent the query in a retrieval task. The word is: "',
        "self": 'Use one word to represent the passage in a retrieval task. The word is: "',
        "prev": 'Use one word to represent the passage in a retrieval task. The word is: "',
    },
}
"""The paper's instructions: ``next`` (I_next, embed a query to generate its relevant text), ``self``
(I_self, embed a text to regenerate itself), ``prev`` (I_prev, embed a text to generate its query)."""
