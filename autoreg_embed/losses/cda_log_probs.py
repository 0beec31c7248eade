"""The log-probabilities the CDA loss is built from: one typed definition that the collator, the loss and the
trainer's metrics all read.

A :class:`LogProb` is ``lp(target | e_{source, I_instruction})``: the summed (or length-averaged) log-probability
of the ``target`` text (+ EOS) under the frozen decoder, conditioned on the compress states the ``role`` encoder
(the trained "policy" or the frozen stage-1 "reference") produces for the ``source`` text under the instruction
``I_next``, ``I_self`` or ``I_prev`` (paper §3.2 and appendix E).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

Text = Literal["query", "pos", "neg"]
"""A text of a training row: the query q, the positive d+, or the negatives d-_1..d-_n."""
InstructionKey = Literal["next", "self", "prev"]
"""I_next (embed a query to generate its relevant text), I_self (embed a text to regenerate itself), I_prev
(embed a text to generate its query)."""
EncoderRole = Literal["policy", "reference"]
"""Which encoder produces the conditioning states: the one being trained, or the frozen stage-1 one."""

_SYMBOLS: dict[str, str] = {"query": "q", "pos": "d+", "neg": "d-_i"}


@dataclass(frozen=True)
class LogProb:
    """``lp(target | e_{source, I_instruction})`` under the ``role`` encoder (hashable: a dict key).

    Shape of its values: ``(B, n)``, one per negative, when ``target`` or ``source`` is ``"neg"``
    (:attr:`per_negative`), else ``(B,)``. When both are ``"neg"``, negative i is scored under its own
    embedding (n values, not n x n).
    """

    target: Text
    source: Text
    instruction: InstructionKey
    role: EncoderRole = "policy"

    def __post_init__(self) -> None:
        kinds = {"target": Text, "source": Text, "instruction": InstructionKey, "role": EncoderRole}
        for option, kind in kinds.items():
            valid = get_args(kind)
            if getattr(self, option) not in valid:
                raise ValueError(f"LogProb.{option} must be one of {list(valid)}, got {getattr(self, option)!r}.")

    @property
    def per_negative(self) -> bool:
        """Whether there is one value per negative, shape ``(B, n)``, rather than ``(B,)``."""
        return "neg" in (self.target, self.source)

    @property
    def key(self) -> str:
        """Role-free identifier of the (embedded text, instruction, target) pairs, e.g. ``pos_given_query_next``:
        policy and reference read the same planned pairs under this key."""
        return f"{self.target}_given_{self.source}_{self.instruction}"

    @property
    def name(self) -> str:
        """Identifier with the role, e.g. ``reference_pos_given_query_next`` (the column of precomputed values)."""
        return f"{self.role}_{self.key}"

    @property
    def reference(self) -> LogProb:
        """The same log-probability under the reference encoder."""
        return replace(self, role="reference")

    def __str__(self) -> str:
        lp = "lp" if self.role == "policy" else "lp_ref"
        return f"{lp}({_SYMBOLS[self.target]} | e_{{{_SYMBOLS[self.source]},I_{self.instruction}}})"


POS_GIVEN_QUERY = LogProb("pos", "query", "next")
"""lp(d+ | e_{q,I_next}): the query's embedding generating its positive."""
POS_GIVEN_POS = LogProb("pos", "pos", "self")
"""lp(d+ | e_{d+,I_self}): the positive regenerating itself."""
NEG_GIVEN_QUERY = LogProb("neg", "query", "next")
"""lp(d-_i | e_{q,I_next}): the query's embedding generating negative i."""
NEG_GIVEN_NEG = LogProb("neg", "neg", "self")
"""lp(d-_i | e_{d-_i,I_self}): negative i regenerating itself."""
NEG_GIVEN_POS = LogProb("neg", "pos", "self")
"""lp(d-_i | e_{d+,I_self}): the positive's self-embedding generating negative i (strategy 3)."""
POS_GIVEN_NEG = LogProb("pos", "neg", "self")
"""lp(d+ | e_{d-_i,I_self}): negative i's self-embedding generating the positive (strategy 4)."""
QUERY_GIVEN_QUERY = LogProb("query", "query", "self")
"""lp(q | e_{q,I_self}): the query regenerating itself (strategies 1, 2)."""
QUERY_GIVEN_POS = LogProb("query", "pos", "prev")
"""lp(q | e_{d+,I_prev}): the positive's embedding generating the query (strategies 1, 2)."""
QUERY_GIVEN_NEG = LogProb("query", "neg", "prev")
"""lp(q | e_{d-_i,I_prev}): negative i's embedding generating the query (strategies 1, 2)."""
