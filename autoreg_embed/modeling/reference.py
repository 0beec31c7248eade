"""The frozen reference encoder of CDA (the encoder as it was at the start of stage 2), as trl's DPO handles it.

Sources, in the order :func:`reference_encoder` chooses them:

- an explicit ``ref_model``: used as is, frozen;
- a PEFT policy: the same weights with the trainable (stage-2) adapter switched off, so the reference is the
  base plus any frozen stage-1 adapter, with nothing copied;
- otherwise: a frozen deep copy of the policy taken before training.

A reference is never re-read from a model name: that would lose the compress tokens and the stage-1 weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from autoreg_embed.modeling.decoder import eval_mode, frozen_copy, is_peft_model, preserved_trainability


def trainable_adapters(model: nn.Module) -> list[str]:
    """Names of the PEFT adapters of ``model`` with at least one trainable parameter."""
    names = set()
    for parameter_name, parameter in model.named_parameters():
        if parameter.requires_grad:
            names.update(name for name in model.peft_config if f".{name}." in parameter_name)
    return sorted(names)


class ReferenceEncoder:
    """Use as ``with reference() as encoder: ...`` to run the reference encoder (always without gradients)."""

    def __init__(self, policy: nn.Module, ref_model: nn.Module | None = None) -> None:
        self.policy = policy
        self.frozen_adapters: list[str] = []
        if ref_model is not None:
            ref_model.requires_grad_(False)
            ref_model.eval()
        elif is_peft_model(policy):
            trainable = trainable_adapters(policy)
            self.frozen_adapters = [name for name in policy.peft_config if name not in trainable]
        else:
            ref_model = frozen_copy(policy)
        self.model = ref_model

    @property
    def kind(self) -> str:
        """``"model"`` (a separate frozen model: explicit or a copy), or ``"adapter"`` (the policy, adapter off)."""
        return "adapter" if self.model is None else "model"

    @contextlib.contextmanager
    def __call__(self) -> Iterator[nn.Module]:
        if self.model is not None:
            yield self.model
            return
        if not self.frozen_adapters:
            with preserved_trainability(self.policy), self.policy.disable_adapter(), eval_mode(self.policy):
                yield self.policy
            return
        # base + frozen stage-1 adapter(s): switch the active set, then restore it and its trainability
        base = self.policy.base_model
        active = list(base.active_adapters)
        with preserved_trainability(self.policy):
            base.set_adapter(self.frozen_adapters)
            try:
                with eval_mode(self.policy):
                    yield self.policy
            finally:
                base.set_adapter(active)
