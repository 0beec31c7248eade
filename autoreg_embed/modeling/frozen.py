"""Frozen roles (the decoder = the original LLM, the CDA reference, a distillation teacher), handled as trl does.

A role is either a separate frozen model, or the trained policy itself with some of its PEFT adapters switched
off, so that no second copy of the weights sits in memory (DESIGN.md, "one base model, three roles"). Trainers
build roles after ``Trainer.__init__`` and hand separate models to the training engine for evaluation-mode
preparation (:meth:`FrozenRole.prepare`, e.g. trl's ``prepare_deepspeed``), and run a role through the model the
Trainer passes to ``compute_loss`` (:meth:`FrozenRole.__call__`), so that DDP / DeepSpeed / FSDP hooks run.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable, Iterator, Sequence

from torch import nn

from autoreg_embed.default_model import resolve_model_name_or_path
from autoreg_embed.modeling.checkpoint import load_causal_lm
from autoreg_embed.modeling.original import holds_original_weights, is_partitioned, original_record
from autoreg_embed.modeling.settings import EncoderSettings

logger = logging.getLogger(__name__)


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a PEFT model whose adapters can be disabled."""
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every parameter frozen."""
    clone = copy.deepcopy(model)
    clone.requires_grad_(False)
    return clone.eval()


@contextlib.contextmanager
def preserved_trainability(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every parameter's ``requires_grad`` on exit.

    PEFT's ``disable_adapter()`` and ``set_adapter()`` mark all active adapters trainable again, which would
    un-freeze a frozen stage-1 adapter.
    """
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    try:
        yield model
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in trainable)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (no dropout: a frozen role must be deterministic), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def active_adapters(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Within the block only the PEFT adapters ``names`` of ``model`` are active (none: the base model)."""
    if not names:
        with model.disable_adapter():
            yield
        return
    base = model.base_model
    previous = list(base.active_adapters)
    base.set_adapter(list(names))
    try:
        yield
    finally:
        base.set_adapter(previous)


def trainable_adapters(model: nn.Module) -> list[str]:
    """Names of the PEFT adapters of ``model`` with at least one trainable parameter."""
    names = set()
    for parameter_name, parameter in model.named_parameters():
        if parameter.requires_grad:
            parts = parameter_name.split(".")
            names.update(name for name in model.peft_config if name in parts)
    return sorted(names)


class FrozenRole:
    """A model a trainer runs without training it. Use as ``with role(model) as module: module(...)``.

    Args:
        policy: the (unwrapped) model being trained.
        model: a separate model for the role (frozen and put in eval mode here). If ``None``, the role is
            ``policy`` itself with only ``adapters`` active.
        adapters: with no separate model, the PEFT adapters active in the role (empty: all disabled, i.e. the
            base weights); ``None``: the policy exactly as it is (valid only until training changes it, e.g. to
            precompute reference log-probs).
    """

    def __init__(self, policy: nn.Module, model: nn.Module | None = None, adapters: Sequence[str] | None = ()) -> None:
        if model is None and adapters is not None and not is_peft_model(policy):
            raise ValueError("A role that shares the policy's weights needs a PEFT policy (adapters to switch off).")
        if model is not None:
            model.requires_grad_(False)
            model.eval()
        self.policy = policy
        self.model = model
        self.adapters = None if adapters is None else list(adapters)

    @property
    def shares_policy_weights(self) -> bool:
        """True when the role is the policy with adapters switched (no separate model)."""
        return self.model is None

    def prepare(self, prepare_model: Callable[[nn.Module], nn.Module]) -> None:
        """Hand a separate model to the training engine (e.g. trl's ``prepare_deepspeed``); no-op when shared."""
        if self.model is not None:
            self.model = prepare_model(self.model)

    @contextlib.contextmanager
    def __call__(self, policy: nn.Module | None = None) -> Iterator[nn.Module]:
        """Yield the module to run for this role, in eval mode.

        ``policy``: the model the Trainer hands to ``compute_loss`` (possibly wrapped by DDP / DeepSpeed / FSDP);
        a role that shares the policy's weights runs through it, with its adapters switched. Default: the
        unwrapped policy (e.g. before training starts).
        """
        if self.model is not None:
            yield self.model
            return
        runner = self.policy if policy is None else policy
        switch = contextlib.nullcontext() if self.adapters is None else active_adapters(self.policy, self.adapters)
        with preserved_trainability(self.policy), eval_mode(self.policy), switch:
            yield runner


def original_decoder(model: nn.Module, settings: EncoderSettings, decoder: nn.Module | None = None) -> FrozenRole:
    """The frozen original LLM (the decoder of both stages) as a role, from the cheapest correct source.

    - an explicit ``decoder``: used as is;
    - else, when the base weights of ``model`` are still the original ones (checked against the record that
      :func:`~autoreg_embed.modeling.compress_tokens.add_compress_tokens` left in ``model.config``): a PEFT
      model with its adapters disabled, or a frozen copy (when DeepSpeed ZeRO-3 sharded the weights at loading,
      the original is loaded by name instead);
    - else (a fully fine-tuned stage-1 model, in memory or from a checkpoint): the original, loaded from
      ``settings.base_model_name_or_path`` (or the name recorded in ``model.config``).

    Raises:
        ValueError: the weights are not the original ones and no name to load the original from is known.
    """
    if decoder is not None:
        return FrozenRole(model, decoder)
    if _base_is_original(model, settings):
        if is_peft_model(model):
            return FrozenRole(model)
        if not is_partitioned(model):  # weights sharded by ZeRO-3 at loading cannot be copied: load them below
            return FrozenRole(model, frozen_copy(model))
    name = settings.base_model_name_or_path or (original_record(model) or {}).get("name_or_path")
    if not name:
        why = (
            "sharded by DeepSpeed ZeRO-3" if is_partitioned(model) else "no longer the original LLM's (it was trained)"
        )
        raise ValueError(
            f"The model's weights are {why}, and no name of the original is recorded to load it from. Pass the "
            "original model as decoder=..."
        )
    logger.info("Loading the original LLM %s as the frozen decoder.", name)
    parameter = next(model.parameters())
    return FrozenRole(model, load_causal_lm(name, parameter.dtype))


def _base_is_original(model: nn.Module, settings: EncoderSettings) -> bool:
    known = holds_original_weights(model)
    if known is not None:
        return known
    # No fingerprint (older checkpoints, ZeRO-3): the model is the original if it was loaded from the original's name.
    if not settings.base_model_name_or_path:
        return True
    own = (model.get_base_model() if is_peft_model(model) else model).name_or_path
    original = resolve_model_name_or_path(settings.base_model_name_or_path)
    return os.path.normpath(resolve_model_name_or_path(own)) == os.path.normpath(original)


def reference_role(policy: nn.Module, ref_model: nn.Module | None = None, precompute: bool = False) -> FrozenRole:
    """The CDA reference (the encoder as it was at the start of stage 2), as trl's DPO chooses it.

    - an explicit ``ref_model``: used as is, frozen;
    - a PEFT policy: the same weights with its trainable (stage-2) adapter off, i.e. the base plus any frozen
      stage-1 adapter, with nothing copied;
    - ``precompute`` (reference log-probs computed once before training): the policy as it is now, nothing copied
      (the role must be dropped before training starts);
    - otherwise: a frozen deep copy of the policy taken now (before training).

    A reference is never re-read from a model name: that would lose the compress tokens and the stage-1 weights.
    """
    if ref_model is not None:
        return FrozenRole(policy, ref_model)
    if is_peft_model(policy):
        trainable = trainable_adapters(policy)
        return FrozenRole(policy, adapters=[name for name in policy.peft_config if name not in trainable])
    if precompute:
        return FrozenRole(policy, adapters=None)
    if is_partitioned(policy):
        raise ValueError(
            "The policy's weights are sharded by DeepSpeed ZeRO-3, so a full fine-tuning reference cannot be copied "
            "from them: set precompute_ref_log_probs=True, pass ref_model=..., or train with LoRA (peft_config)."
        )
    return FrozenRole(policy, frozen_copy(policy))
