"""What every autoreg-embed trainer shares: model/tokenizer preparation, metrics, loss checks, saving."""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate.utils import broadcast_object_list, gather_object
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from autoreg_embed.data.schema import require_columns, validate_rows
from autoreg_embed.default_model import DEFAULT_MODEL
from autoreg_embed.modeling.checkpoint import (
    ensure_pad_token,
    load_causal_lm,
    load_encoder,
    load_tokenizer,
    partial_token_adapters,
)
from autoreg_embed.modeling.compress_tokens import add_compress_tokens
from autoreg_embed.modeling.decoder import DecoderPrompt
from autoreg_embed.modeling.encoder import EncoderOutput, encode
from autoreg_embed.modeling.frozen import is_peft_model, preserved_trainability
from autoreg_embed.modeling.original import parameters_fingerprint
from autoreg_embed.modeling.settings import EncoderSettings
from autoreg_embed.sentence_transformers import (
    embedding_dimension,
    export_sentence_transformer,
    prompts_from_instructions,
    recorded_training_stages,
    training_stage_record,
    write_sentence_transformers_files,
)
from autoreg_embed.trainers.base_config import EncoderTrainingConfig, InstructionTrainingConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")


def mean_pairwise_cosine(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between the different rows (at least 2) of (N, H) ``embeddings``."""
    count = embeddings.shape[0]
    if count < 2:
        raise ValueError(f"mean_pairwise_cosine needs at least 2 rows, got {count}.")
    unit = torch.nn.functional.normalize(embeddings.detach().double(), dim=-1)
    total = unit.sum(dim=0).square().sum() - count  # sum over all ordered pairs i != j of cos(i, j)
    return total / (count * (count - 1))


def prepare_encoder(
    model: str | PreTrainedModel | None,
    processing_class: PreTrainedTokenizerBase | None,
    args: EncoderTrainingConfig,
    peft_config: Any | None = None,
) -> tuple[nn.Module, PreTrainedTokenizerBase, EncoderSettings]:
    """Load (if a name was given) the model and tokenizer, add the compress tokens, and apply ``peft_config``.

    One loading path for every folder the package writes: an autoreg-embed checkpoint (a final save or a
    ``checkpoint-N``, full weights or a PEFT adapter) loads with :func:`~autoreg_embed.load_encoder` and keeps
    its settings, except for the lengths ``args`` sets; a k, template, BOS or pooling in ``args`` that differs from
    the saved one is an error (see :meth:`EncoderTrainingConfig.encoder_settings`). An adapter checkpoint stays
    trainable unless ``peft_config`` adds a new adapter on top. Anything else loads as a causal LM with
    ``args.model_init_kwargs``. A tokenizer without a pad token gets one (``args.pad_token``).
    """
    name = model if isinstance(model, str) or model is None else getattr(model, "name_or_path", None) or None
    base_name = DEFAULT_MODEL if model is None else name
    model_kwargs = args.model_init_kwargs or {}
    saved = EncoderSettings.load(name) if name is not None and EncoderSettings.exists_in(name) else None
    settings = args.encoder_settings(base_model_name_or_path=base_name, saved=saved, checkpoint=name)
    if saved is not None and isinstance(model, str):
        loaded = load_encoder(name, args.model_dtype, is_trainable=peft_config is None, **model_kwargs)
        model, processing_class = loaded.model, processing_class or loaded.tokenizer
    if model is None or isinstance(model, str):
        model = load_causal_lm(model, args.model_dtype, **model_kwargs)
    if processing_class is None:
        processing_class = load_tokenizer(name)
    ensure_pad_token(processing_class, args.pad_token)
    compress_ids = add_compress_tokens(model, processing_class, settings, init_from=args.compress_token_init)
    freeze_untied_lm_head(model)
    if peft_config is not None:
        model = _apply_peft(model, peft_config, compress_ids)
    return model, processing_class, settings


def freeze_untied_lm_head(model: nn.Module) -> None:
    """Freeze the encoder's LM head when it is not tied to the input embeddings.

    No loss reads it (the embedding is a last hidden state; the decoder is the original LLM), so training it would
    only cost optimizer memory, and under DDP a trainable parameter without gradients stalls the gradient
    synchronisation. A tied head is the input embedding matrix and stays as it is.
    """
    head, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight.data_ptr() != inputs.weight.data_ptr():
        head.requires_grad_(False)


STAGE2_ADAPTER = "align"
"""Name of the adapter added to a PEFT model that already holds a (stage-1) adapter."""


def _apply_peft(model: nn.Module, peft_config: Any, compress_ids: list[int]) -> nn.Module:
    """Wrap ``model`` with ``peft_config``; on a PEFT model, add it as a second, trainable adapter.

    The existing adapters stay active but frozen, so the base weights serve three roles: base + all adapters =
    the encoder, base + frozen adapters = the reference, base alone = the decoder.
    """
    if not is_peft_model(model):
        from peft import get_peft_model

        if compress_ids and getattr(peft_config, "trainable_token_indices", "absent") is None:
            # The new compress-token rows must learn too; PEFT trains just those rows of the embedding matrix.
            peft_config.trainable_token_indices = compress_ids
        if compress_ids and getattr(peft_config, "token_indices", None) == []:
            # A TrainableTokensConfig without indices: train the compress-token rows alone (the LLM stays frozen).
            peft_config.token_indices = compress_ids
        return get_peft_model(model, peft_config)
    existing = list(model.peft_config)
    model.add_adapter(STAGE2_ADAPTER, peft_config)
    model.base_model.set_adapter([*existing, STAGE2_ADAPTER])
    for name, parameter in model.named_parameters():  # set_adapter marks every active adapter trainable
        parameter.requires_grad_(f".{STAGE2_ADAPTER}." in name)
    return model


def precomputed_cache_file(
    folder: Path, dataset: Dataset, weights: Sequence[tuple[str, torch.Tensor]], settings: Any, suffix: str
) -> Path:
    """The cache file of values precomputed once for ``dataset`` by frozen ``weights`` under ``settings``.

    The name is 24 hex digits of a SHA-256 over the dataset's fingerprint, the weights' fingerprint and ``settings``
    (JSON-serialisable), computed by the main process and broadcast, so that every process uses the same file.
    """
    payload = json.dumps([dataset._fingerprint, parameters_fingerprint(weights), settings], sort_keys=True)
    key = [hashlib.sha256(payload.encode()).hexdigest()[:24]]
    broadcast_object_list(key, from_process=0)
    return folder / f"{key[0]}{suffix}"


def replace_columns(dataset: Dataset, columns: dict[str, list | torch.Tensor]) -> Dataset:
    """``dataset`` with ``columns`` (one value per row, in row order) added, replacing columns of the same name."""
    for name, values in columns.items():
        if name in dataset.column_names:
            dataset = dataset.remove_columns(name)
        dataset = dataset.add_column(name, values.tolist() if isinstance(values, torch.Tensor) else values)
    return dataset


def validate_dataset(
    dataset: Dataset,
    name: str,
    text_columns: Sequence[str],
    list_columns: Sequence[str] = (),
    optional_columns: Sequence[str] = (),
) -> None:
    """Check columns and every row of ``dataset`` before training starts (see :func:`validate_rows`)."""
    require_columns(dataset.column_names, [*text_columns, *list_columns], name)
    present_optional = [column for column in optional_columns if column in dataset.column_names]
    validate_rows(dataset, text_columns, name, optional_columns=present_optional, list_columns=list_columns)


class AutoRegTrainer(Trainer, abc.ABC):
    """Base of the autoreg-embed trainers; not for direct use (abstract: it has no loss and no collator).

    Use :class:`~autoreg_embed.CompressionTrainer`, :class:`~autoreg_embed.CDATrainer` or
    :class:`~autoreg_embed.ContrastiveTrainer`, or subclass this to write a new stage.

    The constructor loads the model and tokenizer when names are given, adds the compress tokens, applies
    ``peft_config``, checks every row of the datasets, and builds the default collator; subclasses say what differs
    through :attr:`text_columns` / :attr:`list_columns` / :attr:`optional_columns`, :meth:`default_collator`,
    :meth:`prepare_components` (before ``Trainer.__init__``) and :meth:`create_frozen_roles` (after it, so that
    separate frozen models are prepared by the training engine with :meth:`prepare_frozen_model`).

    Subclasses implement ``compute_loss`` on the model the Trainer hands them (wrapped by DDP / DeepSpeed / FSDP
    when several processes train: run it, never the unwrapped module, so gradients are synchronised) and
    :meth:`loss_items`; they return :meth:`average_over_items` of their summed loss, so that gradient
    accumulation and several processes weigh every item (token, query) alike. They call :meth:`record_metrics`
    with per-step values; this class averages them over steps and processes and logs them like trl (``eval_``
    prefixed during evaluation), stops on a non-finite loss, saves checkpoints atomically, and saves the encoder
    settings next to the weights the Trainer hands to ``_save``.
    """

    text_columns: tuple[str, ...] = ()
    """Columns that must hold a non-empty string in every row."""
    list_columns: tuple[str, ...] = ()
    """Columns that must hold a string or a non-empty list of strings."""
    optional_list_columns: tuple[str, ...] = ()
    """Like :attr:`list_columns`, but the column may be absent."""
    optional_columns: tuple[str, ...] = ()
    """Columns that may be absent or empty."""
    config_class: type[EncoderTrainingConfig]
    """The config dataclass of this trainer (used with ``default_output_dir`` when no ``args`` are given)."""
    default_output_dir: str = "autoreg-embed-output"

    encoder_settings: EncoderSettings

    def __init__(
        self,
        model: str | PreTrainedModel | nn.Module | None = None,
        args: EncoderTrainingConfig | None = None,
        data_collator: Any | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: Any | None = None,
        callbacks: list[Any] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        **kwargs: Any,
    ) -> None:
        args = args or self.config_class(output_dir=self.default_output_dir)
        model, processing_class, self.encoder_settings = prepare_encoder(model, processing_class, args, peft_config)
        for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            self.validate(dataset, name)
        train_dataset, eval_dataset = (
            self.prepare_dataset(train_dataset, args),
            self.prepare_dataset(eval_dataset, args),
        )
        self.instruction_texts = None
        if isinstance(args, InstructionTrainingConfig):
            args.check_instructions(self.encoder_settings)  # a checkpoint's template may lack an instruction slot
            self.instruction_texts = args.instruction_texts()
        self.prepare_components(model, processing_class, args)
        self._metrics: dict[str, defaultdict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator or self.default_collator(processing_class, args),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            **kwargs,
        )
        self.loss_is_scaled_for_ga = True  # training losses are divided by the step's items (num_items_in_batch)
        self._frozen_engines: list[nn.Module] = []
        self.create_frozen_roles(model, args)

    @classmethod
    def validate(cls, dataset: Dataset | None, name: str) -> None:
        """Check the columns and every row of ``dataset`` (before training starts, or before a model is loaded)."""
        if dataset is None:
            return
        present = set(dataset.column_names)
        list_columns = [*cls.list_columns, *(column for column in cls.optional_list_columns if column in present)]
        validate_dataset(
            dataset, name, cls.text_columns, list_columns=list_columns, optional_columns=cls.optional_columns
        )

    def prepare_dataset(self, dataset: Any, args: EncoderTrainingConfig) -> Any:
        """Reshape a validated dataset (or ``None``) before training, e.g. one row per positive; default: as is."""
        return dataset

    def prepare_components(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, args: EncoderTrainingConfig
    ) -> None:
        """Create what the collator needs (input builders, names) before ``Trainer.__init__``."""

    def create_frozen_roles(self, model: nn.Module, args: EncoderTrainingConfig) -> None:
        """Create the frozen roles (decoder, reference, teacher) after ``Trainer.__init__``, before training.

        Separate frozen models go through :meth:`prepare_frozen_model` (``FrozenRole.prepare``).
        """

    def prepare_frozen_model(self, model: nn.Module) -> nn.Module:
        """Prepare a separate frozen model for the training engine, in evaluation mode, as trl does for its reference.

        DeepSpeed ZeRO-3: sharded like the policy by an inference engine (trl's ``prepare_deepspeed``) whose module
        is returned, to be called directly: its parameter-gathering hooks run, while the engine's own forward
        would refuse the backward pass that flows through the decoder into the encoder. Other DeepSpeed stages:
        one plain copy per process, as trl does. FSDP: sharded like the policy (trl's ``prepare_fsdp``).
        Otherwise: moved to the device (no DDP wrapper: it has no gradients of its own).
        """
        if self.is_deepspeed_enabled and is_deepspeed_zero3_enabled():
            from trl.models.utils import prepare_deepspeed

            engine = prepare_deepspeed(model, self.accelerator)
            self._frozen_engines.append(engine)  # keeps the engine (and its hooks' state) alive
            return engine.module
        if self.is_fsdp_enabled:
            from trl.models.utils import prepare_fsdp

            return prepare_fsdp(model, self.accelerator)
        if self.is_deepspeed_enabled:
            return model.to(self.accelerator.device)
        return self.accelerator.prepare_model(model, evaluation_mode=True)

    @abc.abstractmethod
    def default_collator(self, tokenizer: PreTrainedTokenizerBase, args: EncoderTrainingConfig) -> Any:
        """The collator used when none is given."""

    @cached_property
    def decoder_prompt(self) -> DecoderPrompt:
        """What the frozen decoder reads around the compress states (option ``decoder_template``; default none)."""
        return DecoderPrompt.from_template(self.encoder_settings.decoder_template, self.processing_class)

    def encode_batch(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        """Run the encoder on a collated batch's ``input_ids`` / ``attention_mask``.

        ``model`` is the one ``compute_loss`` received (engine-wrapped when several processes train); it runs
        through its own forward so that the engine synchronises gradients and gathers sharded parameters.
        """
        return encode(model, inputs["input_ids"], inputs["attention_mask"], self.encoder_settings)

    def loss_items(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """How many items the loss of a collated batch averages over (e.g. target tokens, or queries)."""
        raise NotImplementedError

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """The items (:meth:`loss_items`) of one optimisation step: every accumulated micro-batch, every process."""
        if not batch_samples:
            return None
        count = torch.stack([torch.as_tensor(self.loss_items(batch)).sum() for batch in batch_samples]).sum()
        count = count.to(device=device, dtype=torch.float32)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        return count

    def average_over_items(
        self, total: torch.Tensor, items: torch.Tensor, num_items_in_batch: torch.Tensor | None
    ) -> torch.Tensor:
        """The loss to return from ``compute_loss``: a summed loss ``total`` over ``items``, made step-consistent.

        In training, ``num_items_in_batch`` is the step's item count over all accumulated micro-batches and all
        processes, so ``total * processes / num_items_in_batch`` makes the synchronised gradient that of the mean
        over every item of the step (DDP and DeepSpeed average gradients over processes), however the step is
        split: batch 4 = 2 x GA 2 = 2 processes x 2. In evaluation (no count given) it is ``total / items``.
        """
        if num_items_in_batch is None:
            return total / items
        return total * self.accelerator.num_processes / num_items_in_batch

    def load_or_precompute(
        self,
        cache_file: Path | None,
        compute: Callable[[], T],
        write: Callable[[T, Path], None],
        read: Callable[[Path], T],
        what: str,
    ) -> T:
        """Values precomputed once by a frozen model: read from ``cache_file`` if it exists, else ``compute()``d
        (by every process together) and written by the main process of each machine, atomically (a staging file
        renamed into place), while the others wait. ``cache_file=None``: computed, never cached."""
        if cache_file is not None and cache_file.is_file():
            logger.info("Reusing %s from %s.", what, cache_file)
            return read(cache_file)
        values = compute()
        if cache_file is not None:
            if self.accelerator.is_local_main_process:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                staging = cache_file.with_suffix(f".tmp{os.getpid()}")
                write(values, staging)
                os.replace(staging, cache_file)
            self.accelerator.wait_for_everyone()
        return values

    def record_metrics(self, values: dict[str, torch.Tensor | float]) -> None:
        """Store per-step metric values (averaged over the steps between two logs)."""
        mode = "train" if self.model.training else "eval"
        for key, value in values.items():
            self._metrics[mode][key].append(float(value.detach().float().mean()) if torch.is_tensor(value) else value)

    def record_embedding_spread(self, embeddings: torch.Tensor) -> None:
        """Log ``embeddings/mean_cosine``, the :func:`mean_pairwise_cosine` of a batch's embeddings.

        A collapse alarm: a loss can keep falling while every text gets nearly the same embedding (values near 1
        where step 0 was lower), which ruins retrieval and STS. Batches of one text are skipped.
        """
        if embeddings.shape[0] > 1:
            self.record_metrics({"embeddings/mean_cosine": mean_pairwise_cosine(embeddings)})

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop training with a clear message instead of continuing on a NaN/inf loss."""
        if not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(
                f"Non-finite loss ({loss.detach().float().item()}) at optimisation step {self.state.global_step + 1}. "
                "Lower the learning rate, use bf16 instead of fp16, or check that the batch at this step has "
                "non-empty targets."
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the recorded metrics, averaged over the steps since the last log and over all processes."""
        mode = "train" if self.model.training else "eval"
        totals = {key: (sum(values), len(values)) for key, values in self._metrics[mode].items() if values}
        if self.accelerator.num_processes > 1:
            merged: dict[str, tuple[float, int]] = {}
            for process_totals in gather_object([totals]):
                for key, (total, count) in process_totals.items():
                    previous_total, previous_count = merged.get(key, (0.0, 0))
                    merged[key] = (previous_total + total, previous_count + count)
            totals = merged
        averaged = {key: total / count for key, (total, count) in totals.items()}
        if mode == "eval":
            averaged = {f"eval_{key}": value for key, value in averaged.items()}
        logs.update(averaged)  # in place: evaluate() returns this dict
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, None, None]:
        """Evaluation computes the training loss (there are no labels to predict)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _sentence_transformer_metadata(self) -> dict[str, Any]:
        """Prompts (I_next / I_self when the trainer has instructions) and the stage history for the model card."""
        model = self.accelerator.unwrap_model(self.model)
        instructions = self.instruction_texts
        return {
            "prompts": prompts_from_instructions(instructions) if instructions else None,
            "training_stages": [*recorded_training_stages(model.name_or_path), training_stage_record(self)],
        }

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save what the Trainer hands over (so sharded ZeRO-3 states are gathered), plus the encoder settings.

        The folder also gets the sentence-transformers files and a model card, so that it loads with
        ``SentenceTransformer(path, trust_remote_code=True)`` or ``autoreg_embed.load(path)``. Prompts are the
        trainer's I_next / I_self instructions when it has them (CDA), else the paper's STS instruction.
        """
        with partial_token_adapters(self.accelerator.unwrap_model(self.model)):
            super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            directory = Path(output_dir or self.args.output_dir)
            self.encoder_settings.save(directory)
            model = self.accelerator.unwrap_model(self.model)
            write_sentence_transformers_files(
                directory,
                self.encoder_settings,
                embedding_dimension(model, self.encoder_settings),
                **self._sentence_transformer_metadata(),
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Resume every PEFT adapter from the checkpoint into its own slot, keeping which adapters are active and
        which train (the Trainer's own loader keeps only the first active adapter, which breaks two-adapter CDA)."""
        unwrapped = self.accelerator.unwrap_model(model or self.model)
        if not is_peft_model(unwrapped):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        active = list(unwrapped.base_model.active_adapters)
        with preserved_trainability(unwrapped):
            for name in unwrapped.peft_config:
                folder = Path(resume_from_checkpoint) / ("" if name == "default" else name)
                weights = load_peft_weights(str(folder), device=str(self.args.device))
                result = set_peft_model_state_dict(unwrapped, weights, adapter_name=name)
                if getattr(result, "unexpected_keys", None):
                    raise ValueError(
                        f"{folder} does not hold the adapter {name!r} of this model: {result.unexpected_keys[:3]}"
                    )
            unwrapped.base_model.set_adapter(active)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Write ``checkpoint-N`` atomically: into a staging folder first, renamed once every process is done.

        A crash during the save leaves only the staging folder (``.staging-checkpoint-N``), which neither
        ``resume_from_checkpoint=True`` nor ``model=`` mistakes for a checkpoint; older checkpoints are rotated
        out (``save_total_limit``) only after the new one is complete.
        """
        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = run_dir / f".staging-{name}"
        save_total_limit, self.args.save_total_limit = self.args.save_total_limit, None
        self._get_output_dir = lambda trial=None: str(staging_root)  # the Trainer writes staging_root/name
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
            self.args.save_total_limit = save_total_limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = run_dir / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging_root / name, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            best = self.state.best_model_checkpoint
            if best and Path(best).parent == staging_root:
                self.state.best_model_checkpoint = str(run_dir / Path(best).name)
                self.state.save_to_json(str(final / TRAINER_STATE_NAME))
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
            )
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model; a user's (final) save of a PEFT model writes merged weights by default.

        Checkpoints saved during training keep the adapter (so training can resume). With
        ``merge_adapter_on_save=False``, or under DeepSpeed ZeRO-3 (sharded weights cannot be merged in place),
        the adapter is kept and loading merges it (``autoreg_embed.load``).
        """
        super().save_model(output_dir, _internal_call=_internal_call)
        model = self.accelerator.unwrap_model(self.model)
        merge = self.args.merge_adapter_on_save and not self.is_deepspeed_enabled
        if _internal_call or not merge or not is_peft_model(model) or not self.args.should_save:
            return
        directory = Path(output_dir or self.args.output_dir)
        for adapter_file in directory.glob("adapter_*"):
            adapter_file.unlink()
        export_sentence_transformer(
            model, self.processing_class, self.encoder_settings, directory, **self._sentence_transformer_metadata()
        )
