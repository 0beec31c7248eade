"""The training subcommands (``compress``, ``align``, ``contrastive``): one :class:`TrainingStage` each.

A stage is a trainer class plus its built-in example data; adding a trainer to the command line is one more entry
in :data:`TRAINING_STAGES`. Every stage parses ``ModelArguments`` + ``DataArguments`` + the trainer's config,
checks the output folder, the model and every data row, and only then loads the model and trains.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoreg_embed.cli.checks import check_model_source, check_output_dir, looks_like_local_path, validate_data_file
from autoreg_embed.cli.errors import UserError
from autoreg_embed.resources import resolve_data_path


@dataclass(frozen=True)
class TrainingStage:
    """One training subcommand of ``autoreg-embed``.

    Attributes:
        name: the subcommand.
        summary: one line for ``autoreg-embed --help``.
        trainer: ``"module:Class"`` of the trainer (imported only when the subcommand runs).
        quickstart: the built-in data set used when ``--train_file`` is ``quickstart`` (a key of
            :data:`autoreg_embed.resources.QUICKSTART_FILES`; ``None``: none).
        title: title of the loss plot.
    """

    name: str
    summary: str
    trainer: str
    quickstart: str | None
    title: str

    def trainer_class(self) -> Any:
        """The trainer class (imports torch and transformers)."""
        module, _, name = self.trainer.partition(":")
        return getattr(importlib.import_module(module), name)


TRAINING_STAGES: dict[str, TrainingStage] = {
    stage.name: stage
    for stage in (
        TrainingStage(
            "compress",
            "AutoRegEmbed stage 1, information compression (rows: context, instruction, target)",
            "autoreg_embed.trainers:CompressionTrainer",
            "compression",
            "information compression",
        ),
        TrainingStage(
            "align",
            "AutoRegEmbed stage 2, conditional distribution alignment (rows: query, pos, neg), from a stage-1 "
            "checkpoint",
            "autoreg_embed.trainers:CDATrainer",
            "cda",
            "conditional distribution alignment",
        ),
        TrainingStage(
            "contrastive",
            "the InfoNCE baseline (rows: query, pos, optional neg)",
            "autoreg_embed.trainers:ContrastiveTrainer",
            "cda",
            "InfoNCE",
        ),
    )
}
"""The training subcommands by name."""


def load_checked_data(source: str, trainer_class: Any, limit: int | None = None) -> Any:
    """Check every row of ``source`` against the trainer's columns, then load it as a ``datasets.Dataset``.

    A data file is checked record by record first, so errors name the file and line; a folder or hub dataset is
    loaded first and checked by row index.

    Raises:
        UserError: a missing file or folder, a row with a missing column or a wrong type, a file ``datasets``
            cannot read as one table.
    """
    from autoreg_embed.data.files import DATA_FILE_SUFFIXES
    from autoreg_embed.data.loading import load_rows

    columns = {
        "text_columns": trainer_class.text_columns,
        "optional_columns": trainer_class.optional_columns,
        "list_columns": trainer_class.list_columns,
        "optional_list_columns": trainer_class.optional_list_columns,
    }
    is_file = Path(source).suffix.lower() in DATA_FILE_SUFFIXES
    if is_file:
        validate_data_file(source, **columns, limit=limit)
    elif looks_like_local_path(source) and not Path(source).expanduser().exists():
        raise UserError(f"Data folder {source!r} does not exist.")
    try:
        dataset = load_rows(source)
    except Exception as error:  # datasets / pyarrow errors, e.g. a column holding strings in some rows, lists in others
        reason = " ".join(str(error).split())[:300]
        raise UserError(
            f"{source!r} could not be loaded as a table ({type(error).__name__}: {reason}). A column must hold the "
            "same type in every row (e.g. neg always a string, or always a list)."
        ) from error
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if not is_file:
        trainer_class.validate(dataset, source)
    return dataset


def train_and_report(trainer: Any, title: str) -> None:
    """Train (resuming if asked), save, print the loss curve and truncation counts, and plot the curve."""
    from autoreg_embed.reporting import format_loss_curve, plot_loss_curve

    config = trainer.args
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    print(format_loss_curve(trainer.state.log_history))
    plot = plot_loss_curve(trainer.state.log_history, Path(config.output_dir) / "loss_curve.png", title)
    print(f"Saved the encoder to {config.output_dir}" + (f"; loss plot: {plot}" if plot else ""))
    truncated = dict(trainer.data_collator.truncations)
    if truncated:
        print(f"Truncated during training (counts): {truncated}")


def run_training_stage(stage: TrainingStage, argv: Sequence[str]) -> None:
    """Parse the options of ``stage``, check output folder, model and data, then train and save."""
    from autoreg_embed.cli.arguments import DataArguments, ModelArguments, parse_stage_arguments

    trainer_class = stage.trainer_class()
    model_args, data_args, config = parse_stage_arguments(
        (ModelArguments, DataArguments, trainer_class.config_class), argv, f"autoreg-embed {stage.name}"
    )
    check_output_dir(config.output_dir)
    check_model_source(model_args.model_name_or_path)
    train_source = resolve_data_path(data_args.train_file, stage.quickstart or stage.name)
    train_dataset = load_checked_data(train_source, trainer_class, data_args.max_train_samples)
    eval_dataset = load_checked_data(data_args.eval_file, trainer_class) if data_args.eval_file else None
    trainer = trainer_class(
        model=model_args.model_name_or_path,
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=model_args.peft_config(),
    )
    train_and_report(trainer, stage.title)
