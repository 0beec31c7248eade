"""Command-line options: the model / data / evaluation dataclasses and the parser that reads them.

Options come from flags, from a YAML/JSON file given as ``--config FILE`` (flags override the file), or both; the
parsing is trl's :class:`~trl.TrlParser`. ``--help`` lists the package's own options first, grouped by the class
that declares them, and the inherited ``transformers.TrainingArguments`` options last.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

from trl import TrlParser

from autoreg_embed.cli.checks import require_readable_file
from autoreg_embed.cli.errors import OneLineErrorParser, UserError
from autoreg_embed.default_model import DEFAULT_MODEL
from autoreg_embed.options import declared_options


@dataclass
class ModelArguments:
    """The model to train, and LoRA (the names of trl's ModelConfig)."""

    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "Hub name or local folder of a causal LM, or an autoreg-embed checkpoint to continue from "
            f"({DEFAULT_MODEL}: the small model shipped with the package)."
        },
    )
    use_peft: bool = field(
        default=False,
        metadata={"help": "Train LoRA adapters instead of all weights (the compress-token embeddings train too)."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank r."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout probability on the LoRA inputs."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Module names to adapt (e.g. q_proj v_proj), or all-linear."},
    )
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA: scale by alpha / sqrt(r)."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})

    def peft_config(self) -> Any | None:
        """The ``peft.LoraConfig`` these options describe (built by trl's ``get_peft_config``), or ``None``."""
        if not self.use_peft:
            return None
        from trl import ModelConfig, get_peft_config

        return get_peft_config(
            ModelConfig(
                model_name_or_path=self.model_name_or_path,
                use_peft=True,
                lora_r=self.lora_r,
                lora_alpha=self.lora_alpha,
                lora_dropout=self.lora_dropout,
                lora_target_modules=list(self.lora_target_modules),
                use_rslora=self.use_rslora,
                use_dora=self.use_dora,
            )
        )


@dataclass
class DataArguments:
    """Training and evaluation data: a JSONL / JSON / CSV / Parquet file, a dataset folder, or a hub dataset name."""

    train_file: str = field(
        default="quickstart",
        metadata={"help": "Training data; 'quickstart' is the small example set shipped with the package."},
    )
    eval_file: str | None = field(
        default=None, metadata={"help": "Evaluation data with the same columns (used when eval_strategy is set)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training rows (rows, not tokens)."}
    )


@dataclass
class EvaluateArguments:
    """What to evaluate (a checkpoint, or with --baseline any causal LM untrained) and on which data."""

    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "Checkpoint folder (also accepted as the first positional argument)."},
    )
    sts: str | None = field(default=None, metadata={"help": "STS JSONL file (sentence1, sentence2, score per line)."})
    sts_limit: int | None = field(default=None, metadata={"help": "Use only the first N STS pairs."})
    retrieval: str | None = field(
        default=None, metadata={"help": "BEIR-style folder (corpus.jsonl, queries.jsonl, qrels.tsv)."}
    )
    mteb: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated mteb task names, or paper-sts: the paper's 10 STS tasks (English, test split), "
            "printed next to the paper's averages (downloads their data from the hub)."
        },
    )
    baseline: Literal["last", "mean", "eos"] | None = field(
        default=None,
        metadata={"help": "Evaluate the model untrained, pooling the last token, all tokens, or an appended EOS."},
    )
    template: str = field(default="{text}", metadata={"help": "Baseline input template with {text}, e.g. PromptEOL's."})
    batch_size: int = field(default=32, metadata={"help": "Texts per encoding batch."})
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder whose eval/ subfolder gets the results JSON. Default: the checkpoint folder; a "
            "--baseline run writes nothing unless this is given."
        },
    )


def _summary(cls: type) -> str:
    """The first sentence of a class docstring as plain text (Sphinx roles and double backticks removed)."""
    paragraph = " ".join((cls.__doc__ or "").strip().split("\n\n", 1)[0].split())
    first = re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]
    first = re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"\1", first)
    return first.replace("``", "")


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default (except where there is none) and keeps the option lists readable."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=40, width=120)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        """The hyphenated aliases (``--name-with-hyphens``) of ``--name_with_underscores`` parse but are not listed."""
        shown = [option for option in action.option_strings if "-" not in option.lstrip("-")]
        if not shown or shown == action.option_strings:
            return super()._format_action_invocation(action)
        if action.nargs == 0:
            return ", ".join(shown)
        return f"{shown[0]} {self._format_args(action, self._get_default_metavar_for_optional(action))}"

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if (
            action.option_strings
            and action.default not in (None, argparse.SUPPRESS, "")
            and "%(default)" not in help_text
            and not action.option_strings[0].startswith("--no_")
        ):
            help_text += " (default: %(default)s)"
        return help_text


class StageParser(TrlParser, OneLineErrorParser):
    """trl's parser with grouped help: the package's options first, ``TrainingArguments`` options last.

    Each autoreg-embed class that declares options gets its own help group (most specific first); options it
    inherits unchanged from ``transformers.TrainingArguments`` are listed in one group at the end. The negated
    ``--no_X`` flags of options that default to true say that they turn ``--X`` off.
    """

    def __init__(self, dataclass_types: Sequence[type], prog: str, usage: str | None = None) -> None:
        self._inherited: list[dataclasses.Field] = []
        super().__init__(
            dataclass_types,
            prog=prog,
            usage=usage or "%(prog)s [--config FILE] [--OPTION VALUE ...]",
            formatter_class=HelpFormatter,
        )
        if self._inherited:
            group = self.add_argument_group(
                "transformers.TrainingArguments options",
                "The Trainer's own options (https://huggingface.co/docs/transformers/main_classes/trainer).",
            )
            for inherited in self._inherited:
                self._parse_dataclass_field(group, inherited)
        for action in self._actions:
            if action.option_strings and action.option_strings[0].startswith("--no_"):
                action.help = f"Turn {action.option_strings[0].removeprefix('--no_')} off."
        self.add_argument(
            "--config", default=None, metavar="FILE", help="YAML or JSON file of options (flags override it)."
        )

    def _add_dataclass_arguments(self, dtype: type) -> None:
        hints = get_type_hints(dtype)
        owners = declared_options(dtype)
        groups = {  # most specific class first
            cls: self.add_argument_group(f"{cls.__name__} options", _summary(cls))
            for cls in dict.fromkeys(owners.values())
        }
        for dataclass_field in dataclasses.fields(dtype):
            if not dataclass_field.init:
                continue
            dataclass_field.type = hints[dataclass_field.name]
            if dataclass_field.name in owners:
                self._parse_dataclass_field(groups[owners[dataclass_field.name]], dataclass_field)
            else:
                self._inherited.append(dataclass_field)


def parse_stage_arguments(
    dataclass_types: Sequence[type],
    argv: Sequence[str],
    prog: str,
    usage: str | None = None,
    positional: str | None = None,
) -> tuple[Any, ...]:
    """Parse ``argv`` into instances of ``dataclass_types``; ``--config FILE`` (YAML or JSON) supplies defaults.

    Args:
        positional: the option that one bare argument (anywhere on the line) sets, e.g. the checkpoint of
            ``evaluate``; ``None``: bare arguments are an error.

    Raises:
        SystemExit: ``--help``, or a usage error (printed as one line).
        UserError: a missing config file; unexpected arguments.
        ValueError: the config file is not a mapping or names unknown options; an option value is invalid.
    """
    parser = StageParser(dataclass_types, prog=prog, usage=usage)
    argv = list(argv)
    config_file = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    if config_file is not None:
        require_readable_file(config_file, "Config file")
    *parsed, unknown_in_file, remaining = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    if unknown_in_file:
        names = [item.removeprefix("--") for item in unknown_in_file[::2]]
        raise UserError(f"Unknown option(s) in {config_file}: {', '.join(names)} (see '{prog} --help').")
    parsed = [item for item in parsed if not isinstance(item, argparse.Namespace)]  # drop the --config value
    if positional is not None and len(remaining) == 1 and not remaining[0].startswith("-"):
        owner = next(item for item in parsed if hasattr(item, positional))
        if f"--{positional}" in argv:
            raise UserError(f"Both --{positional} and {remaining[0]!r} given; give one.")
        setattr(owner, positional, remaining.pop())
    if remaining:
        raise UserError(f"Unrecognized arguments: {' '.join(remaining)} (see '{prog} --help').")
    return tuple(parsed)
