"""InstEmb-style instruction-aware embeddings: look-ahead soft prompts, teacher distillation, multi-view InfoNCE."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations import is_deepspeed_zero3_enabled

from autoreg_embed.data.distill_collator import TEACHER_TARGET_COLUMNS, DistillCollator, TeacherInputBuilder
from autoreg_embed.default_model import cache_dir
from autoreg_embed.losses.distillation import TEACHER_VIEW, InstEmbLossOutput, OutputSpanTargets, instemb_loss
from autoreg_embed.losses.distillation import output_span_targets as span_targets
from autoreg_embed.modeling.encoder import backbone_of, last_hidden_states
from autoreg_embed.modeling.frozen import FrozenRole, original_decoder
from autoreg_embed.modeling.inputs import EncoderInputBuilder
from autoreg_embed.trainers.base_trainer import AutoRegTrainer, precomputed_cache_file, replace_columns
from autoreg_embed.trainers.contrastive_trainer import gather_with_gradient
from autoreg_embed.trainers.distill_config import DistillConfig

logger = logging.getLogger(__name__)

PROJECTION_FILE = "distill_projection.safetensors"
"""The student-to-teacher projection (only when their hidden sizes differ), saved with every checkpoint."""


@contextlib.contextmanager
def input_embedding_dropout(embeddings: nn.Module, rate: float) -> Iterator[None]:
    """Apply dropout with probability ``rate`` to the output of ``embeddings`` (the input embedding layer) inside."""
    handle = embeddings.register_forward_hook(lambda module, args, output: F.dropout(output, rate, training=True))
    try:
        yield
    finally:
        handle.remove()


class DistillTrainer(AutoRegTrainer):
    """Instruction-aware embeddings after InstEmb (METHOD.md §2): soft prompts, distillation, multi-view InfoNCE.

    The student reads ``text + instruction + m soft prompts`` (the compress tokens of the other trainers). Its
    primary anchor ``a`` is the last input token's state (``last_token_position``: by default the last
    text/instruction token, which under causal attention does not see the soft prompts; ``"final"``: the last soft
    prompt, which does); its soft-prompt states ``s_1..s_m`` are pulled
    towards a frozen teacher's representation of the gold ``output`` (the teacher reads ``text + instruction +
    output``), and ``a`` is trained with InfoNCE against the positive views (dropout view, the teacher's output
    representation, the student's embedding of the output, ``pos``)::

        L = contrastive_weight * mean_v InfoNCE(a, P_v) + distillation_weight * D(mean_j s_j, t)

    The saved embedding is DAAP pooling of ``a`` and ``mean_j s_j`` (see ``docs/distill.md``).

    Args:
        model: the student (a causal LM, a name or path, or ``None`` for the embedded SmolLM2).
        args: a :class:`DistillConfig`.
        train_dataset / eval_dataset: rows with ``text``, ``output`` (non-empty strings), optional ``instruction``
            (may be empty), optional ``pos`` (a string) and ``neg`` (a string or a list; the same count in every
            row). Every row is checked before training.
        teacher_model: the frozen teacher. If omitted, the original LLM from the cheapest correct source, as for the
            AutoRegEmbed decoder: the student with its adapters disabled (LoRA or ``freeze_backbone``: no copy), a
            frozen copy taken before training, or the original model a checkpoint records. With
            ``precompute_teacher_targets`` it runs once before training and a separate teacher is released.
        teacher_processing_class: the teacher's tokenizer, if it differs from the student's.
        peft_config: LoRA (or another PEFT config); the soft-prompt rows are trained with it.
    """

    text_columns = ("text", "output")
    optional_columns = ("instruction",)
    optional_list_columns = ("neg",)
    config_class = DistillConfig
    default_output_dir = "distill-output"

    args: DistillConfig

    def __init__(
        self,
        model: str | PreTrainedModel | nn.Module | None = None,
        args: DistillConfig | None = None,
        *trainer_args: Any,
        teacher_model: PreTrainedModel | None = None,
        teacher_processing_class: PreTrainedTokenizerBase | None = None,
        **kwargs: Any,
    ) -> None:
        args = args or DistillConfig(output_dir=self.default_output_dir)
        if args.freeze_backbone:
            if kwargs.get("peft_config") is not None:
                raise ValueError("freeze_backbone trains the soft prompts alone; drop it to train with peft_config.")
            from peft import TrainableTokensConfig

            kwargs["peft_config"] = TrainableTokensConfig(token_indices=[])  # filled with the soft-prompt ids
        self._teacher_model, self._teacher_processing_class = teacher_model, teacher_processing_class
        self.args = args  # read by check_views() and the collator before Trainer.__init__ sets it (the same object)
        given = inspect.signature(AutoRegTrainer.__init__).bind_partial(self, model, args, *trainer_args, **kwargs)
        for name in ("train_dataset", "eval_dataset"):
            self.check_views(given.arguments.get(name), name)  # before the model loads
        super().__init__(model, args, *trainer_args, **kwargs)

    # ---- construction ------------------------------------------------------------------------------------------

    @classmethod
    def validate(cls, dataset: Dataset | None, name: str) -> None:
        """Check the columns and every row up front; ``pos`` (when present) must hold non-empty strings.

        Raises:
            DataValidationError: a missing ``text`` / ``output`` column, or an empty or non-string value (named by
                column and row).
        """
        super().validate(dataset, name)
        if dataset is not None and "pos" in dataset.column_names:
            from autoreg_embed.data.schema import check_text

            for row, value in enumerate(dataset["pos"]):
                check_text(value, "pos", row)

    def check_views(self, dataset: Dataset | None, name: str) -> None:
        """Check that ``dataset`` has the columns the configured positive views and negatives need.

        Raises:
            ValueError: ``positive_views`` has ``pos`` but the data has no ``pos`` column, or
                ``in_batch_negatives=False`` without a ``neg`` column.
        """
        if dataset is None:
            return
        has_pos = "pos" in dataset.column_names
        wants_pos = "pos" in self.args.positive_views and self.args.contrastive_weight > 0
        if wants_pos and not has_pos:
            raise ValueError(f"positive_views has 'pos' but {name} has no 'pos' column; add it or drop the view.")
        if has_pos and not wants_pos:
            logger.warning("%s has a 'pos' column but positive_views has no 'pos': the column is not used.", name)
        if not self.args.in_batch_negatives and "neg" not in dataset.column_names:
            raise ValueError(
                f"in_batch_negatives=False leaves each query only its own positive: give {name} a 'neg' column."
            )

    @property
    def views(self) -> list[str]:
        """The positive views in use (none when the contrastive weight is 0)."""
        return list(self.args.positive_views) if self.args.contrastive_weight > 0 else []

    def prepare_components(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, args: DistillConfig) -> None:
        args.check_layout(self.encoder_settings)  # a checkpoint's settings (k, anchor) must suit the losses too
        self.instruction_texts = {"next": "", "self": args.output_instruction}  # saved as query / document prompts
        self.input_embeddings = model.get_input_embeddings()
        self.teacher_inputs = TeacherInputBuilder(
            self._teacher_processing_class or tokenizer,
            self.encoder_settings,
            args.teacher_output_prefix,
            args.max_output_length,
        )

    def create_frozen_roles(self, model: nn.Module, args: DistillConfig) -> None:
        """The teacher (see :meth:`build_teacher`), the projection when the widths differ, and, with
        ``precompute_teacher_targets``, the targets of the datasets (a separate teacher is then released)."""
        self.teacher = self.build_teacher(model) if args.needs_teacher else None
        self.projection = None
        if self.teacher is None:
            return
        self.teacher.prepare(self.prepare_frozen_model)
        student_size = backbone_of(model).config.hidden_size
        teacher_size = backbone_of(self.teacher.model or model).config.hidden_size
        if teacher_size != student_size:
            if self.is_deepspeed_enabled:
                raise ValueError(
                    f"The teacher's hidden size {teacher_size} differs from the student's {student_size}; the "
                    "projection between them is not supported under DeepSpeed. Use a teacher of the same width."
                )
            self.projection = nn.Linear(student_size, teacher_size, bias=False).to(self.args.device)
        if args.precompute_teacher_targets:
            self.train_dataset = self.with_teacher_targets(self.train_dataset, "train")
            if self.eval_dataset is not None:
                self.eval_dataset = self.with_teacher_targets(self.eval_dataset, "eval")
            if not self.teacher.shares_policy_weights:
                self.teacher = None  # targets cached: release the separate teacher model

    def build_teacher(self, model: nn.Module) -> FrozenRole:
        """The frozen teacher: ``teacher_model`` if given, else the original LLM from the cheapest correct source
        (:func:`~autoreg_embed.modeling.frozen.original_decoder`: the student with its adapters off, a frozen copy,
        or the original a checkpoint records)."""
        return original_decoder(model, self.encoder_settings, self._teacher_model)

    def default_collator(self, tokenizer: PreTrainedTokenizerBase, args: DistillConfig) -> DistillCollator:
        live_teacher = args.needs_teacher and not args.precompute_teacher_targets
        return DistillCollator(
            EncoderInputBuilder(tokenizer, self.encoder_settings),
            args.output_instruction,
            teacher_inputs=self.teacher_inputs if live_teacher else None,
            encode_outputs="output" in self.views,
            encode_pos="pos" in self.views,
            precomputed_targets=args.needs_teacher and args.precompute_teacher_targets,
        )

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, plus the student-to-teacher projection when the hidden sizes differ."""
        optimizer = super().create_optimizer(model)
        if self.projection is not None:
            optimizer.add_param_group({"params": list(self.projection.parameters()), "weight_decay": 0.0})
        return optimizer

    # ---- the loss ----------------------------------------------------------------------------------------------

    def teacher_targets(self, inputs: dict[str, torch.Tensor], model: nn.Module | None = None) -> OutputSpanTargets:
        """The teacher's representation of the batch's outputs: precomputed columns, or one no-grad teacher pass.

        ``model``: the model ``compute_loss`` received (a teacher that shares the student's weights runs through
        it); ``None`` before training.
        """
        if "teacher_mean" in inputs:
            return OutputSpanTargets(
                inputs["teacher_mean"], inputs.get("teacher_positions"), inputs.get("teacher_position_mask")
            )
        if self.teacher is None:
            raise ValueError(
                "This batch has no precomputed teacher targets and the teacher was released after precomputing. "
                "Pass the dataset as eval_dataset when creating the trainer, or pass teacher_model."
            )
        with torch.no_grad(), self.teacher(model) as teacher:
            hidden = last_hidden_states(
                teacher, inputs["teacher_attention_mask"], input_ids=inputs["teacher_input_ids"]
            )
        return span_targets(hidden, inputs["teacher_output_mask"], self.encoder_settings.num_compress_tokens)

    def encode_positive_views(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], teacher: OutputSpanTargets | None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """View name -> (B', H) positives, and the (B', n, H) hard negatives (student views only)."""
        positives: dict[str, torch.Tensor] = {}
        negatives = None
        if "document_input_ids" in inputs:
            documents = self.encode_batch(
                model,
                {"input_ids": inputs["document_input_ids"], "attention_mask": inputs["document_attention_mask"]},
            ).last_state
            batch, offset = inputs["input_ids"].shape[0], 0
            for view in ("output", "pos"):
                if view in self.views:
                    positives[view] = documents[offset : offset + batch]
                    offset += batch
            num_negatives = int(inputs["num_negatives"])
            negatives = documents[offset:].view(batch, num_negatives, -1) if num_negatives else None
        if "dropout" in self.views:
            with input_embedding_dropout(self.input_embeddings, self.args.dropout_view_rate):
                positives["dropout"] = self.encode_batch(model, inputs).last_state
        if TEACHER_VIEW in self.views:
            positives[TEACHER_VIEW] = teacher.mean
        if self.args.in_batch_negatives and self.args.gather_across_processes:
            positives = {view: gather_with_gradient(value) for view, value in positives.items()}
            negatives = gather_with_gradient(negatives) if negatives is not None else None
        return {view: positives[view] for view in self.views}, negatives

    def compute_distill_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> InstEmbLossOutput:
        """Encode queries and views, run the teacher, and combine them with :func:`instemb_loss`."""
        args = self.args
        queries = self.encode_batch(model, inputs)
        teacher = self.teacher_targets(inputs, model) if args.needs_teacher else None
        positives, negatives = self.encode_positive_views(model, inputs, teacher)
        target, mask = None, None
        if teacher is not None and args.distillation_weight > 0:
            position = args.distillation_target == "position"
            target, mask = (teacher.positions, teacher.position_mask) if position else (teacher.mean, None)
        output = instemb_loss(
            queries.last_state,
            positives,
            queries.compress_states,
            target,
            mask,
            negatives,
            temperature=args.temperature,
            in_batch_negatives=args.in_batch_negatives,
            contrastive_weight=args.contrastive_weight,
            distillation_weight=args.distillation_weight,
            distillation_metric=args.distillation_metric,
            projection=self.projection,
        )
        self.record_loss_metrics(output, queries.last_state, queries.compress_states, negatives)
        self.record_embedding_spread(queries.embedding)
        return output

    def record_loss_metrics(
        self,
        output: InstEmbLossOutput,
        anchors: torch.Tensor,
        soft_states: torch.Tensor | None,
        negatives: torch.Tensor | None,
    ) -> None:
        """Log every loss component, the positive / negative cosines and the two anchors' agreement."""
        metrics: dict[str, torch.Tensor] = {}
        if output.contrastive:
            metrics["loss/contrastive"] = torch.stack(list(output.contrastive.values())).mean()
        for view, value in output.contrastive.items():
            metrics[f"loss/contrastive_{view}"] = value
            metrics[f"cosine/positive_{view}"] = output.positive_cosine[view].mean()
        if negatives is not None:
            batch = anchors.shape[0]
            metrics["cosine/negative"] = F.cosine_similarity(
                anchors.float()[:, None], negatives[:batch].float(), dim=-1
            ).mean()
        if output.distillation is not None:
            metrics["loss/distillation"] = output.distillation
            metrics["distillation/cosine"] = output.distillation_cosine
        if soft_states is not None:
            metrics["anchors/cosine"] = F.cosine_similarity(anchors.float(), soft_states.float().mean(dim=1)).mean()
        self.record_metrics(metrics)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, InstEmbLossOutput]:
        """The InstEmb loss, averaged over the queries of the optimisation step (each micro-batch's loss is a mean
        over its queries; it counts with its number of queries)."""
        output = self.compute_distill_loss(model, inputs)
        items = self.loss_items(inputs)
        loss = self.average_over_items(output.loss * items, items, num_items_in_batch)
        self.check_finite(loss)
        return (loss, output) if return_outputs else loss

    def loss_items(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss averages over queries (rows)."""
        return torch.tensor(inputs["input_ids"].shape[0])

    # ---- precomputed teacher targets ---------------------------------------------------------------------------

    def _teacher_cache_file(self, dataset: Dataset) -> Path | None:
        """Where the teacher targets of ``dataset`` are cached: keyed by the dataset, the teacher's frozen weights
        and what the teacher's input depends on, as decided by the main process. ``None`` (no cache) under
        DeepSpeed ZeRO-3 (sharded weights)."""
        if is_deepspeed_zero3_enabled():
            return None
        if self.teacher.shares_policy_weights:  # the student's frozen (base) weights
            weights = [(name, p) for name, p in self.model.named_parameters() if not p.requires_grad]
        else:
            weights = list(self.teacher.model.named_parameters())
        tokenizer = self.teacher_inputs.encoder_inputs.tokenizer
        layout = self.encoder_settings
        positions = self.args.distillation_target == "position"
        settings = {  # what the teacher's input and targets depend on (not the student's soft prompts or pooling)
            "layout": [layout.template, layout.add_bos, layout.max_text_length, layout.max_instruction_length],
            "output": [self.args.teacher_output_prefix, self.args.max_output_length],
            "positions": layout.num_compress_tokens if positions else 0,
            "tokenizer": [tokenizer.name_or_path, len(tokenizer)],
        }
        folder = Path(self.args.teacher_targets_cache_dir or cache_dir() / "teacher_targets")
        return precomputed_cache_file(folder, dataset, weights, settings, ".safetensors")

    def compute_teacher_targets(self, dataset: Dataset, split: str) -> dict[str, torch.Tensor]:
        """The teacher targets of every row of ``dataset`` (see :meth:`with_teacher_targets`), in row order,
        computed across all processes (sharded by the accelerator, put back in order by ``gather_for_metrics``)."""

        def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            instructions = [f.get("instruction") or "" for f in features]
            return self.teacher_inputs([f["text"] for f in features], instructions, [f["output"] for f in features])

        loader = self.accelerator.prepare(
            DataLoader(dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=collate)
        )
        runner = None
        if self.is_deepspeed_enabled and self.teacher.shares_policy_weights:
            from trl.models.utils import prepare_deepspeed

            runner = prepare_deepspeed(self.model, self.accelerator)
        parts: dict[str, list[torch.Tensor]] = {column: [] for column in TEACHER_TARGET_COLUMNS}
        quiet = self.args.disable_tqdm or not self.is_local_process_zero()
        for batch in tqdm(loader, desc=f"Teacher targets ({split})", disable=quiet):
            targets = self.teacher_targets(batch, runner)
            gathered = self.accelerator.gather_for_metrics(
                {
                    "teacher_mean": targets.mean.float(),
                    "teacher_positions": targets.positions.float(),
                    "teacher_position_mask": targets.position_mask,
                }
            )
            for column, value in gathered.items():
                parts[column].append(value.cpu())
        if self.args.distillation_target != "position":
            del parts["teacher_positions"], parts["teacher_position_mask"]
        return {column: torch.cat(values) for column, values in parts.items()}

    def with_teacher_targets(self, dataset: Dataset, split: str) -> Dataset:
        """``dataset`` with the teacher's targets as columns: read from the disk cache, or computed in one pass.

        Columns: ``teacher_mean`` (H floats per row) and, for position-matched distillation,
        ``teacher_positions`` (m x H) and ``teacher_position_mask`` (m). The cache key covers the dataset
        fingerprint, the teacher's weights and every layout option that changes the teacher's input.
        """
        targets = self.load_or_precompute(
            self._teacher_cache_file(dataset),
            lambda: self.compute_teacher_targets(dataset, split),
            write=lambda values, path: save_file({name: value.contiguous() for name, value in values.items()}, path),
            read=load_file,
            what="teacher targets",
        )
        return replace_columns(dataset, targets)

    def get_eval_dataloader(self, eval_dataset: Dataset | str | None = None) -> DataLoader:
        """With precomputed teacher targets, a dataset passed to ``evaluate`` gets its target columns first."""
        precomputed = self.args.precompute_teacher_targets and self.args.needs_teacher
        if precomputed and isinstance(eval_dataset, Dataset) and "teacher_mean" not in eval_dataset.column_names:
            if self.teacher is None:
                raise ValueError(
                    "This dataset has no precomputed teacher targets and the teacher model was released after "
                    "precomputing. Pass it as eval_dataset when creating the trainer, or pass teacher_model."
                )
            eval_dataset = self.with_teacher_targets(eval_dataset, "eval")
        return super().get_eval_dataloader(eval_dataset)

    # ---- saving the projection ---------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save as the base trainer does, plus the student-to-teacher projection (if any) for resuming."""
        super()._save(output_dir, state_dict=state_dict)
        if self.projection is not None and self.args.should_save:
            directory = Path(output_dir or self.args.output_dir)
            weights = {name: value.detach().cpu().contiguous() for name, value in self.projection.state_dict().items()}
            save_file(weights, directory / PROJECTION_FILE)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / PROJECTION_FILE
        if self.projection is not None and path.is_file():
            self.projection.load_state_dict(load_file(path, device=str(self.args.device)))
