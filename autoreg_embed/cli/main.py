"""``autoreg-embed [--version] [--debug] COMMAND [options]``: dispatch, one-line errors, quiet library output.

Only the standard library and this package's light modules are imported here, so ``autoreg-embed --help`` and
``--version`` answer at once (no torch import).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from collections.abc import Callable, Sequence

from autoreg_embed import __version__
from autoreg_embed.cli.errors import USER_ERRORS, OneLineErrorParser, one_line
from autoreg_embed.cli.evaluate import SUMMARY as EVALUATE_SUMMARY
from autoreg_embed.cli.evaluate import run_evaluate
from autoreg_embed.cli.quickstart import SUMMARY as QUICKSTART_SUMMARY
from autoreg_embed.cli.quickstart import run_quickstart_command
from autoreg_embed.cli.training import TRAINING_STAGES, run_training_stage

PROG = "autoreg-embed"

HARMLESS_WARNINGS: tuple[tuple[str, str], ...] = (
    ("'pin_memory' argument is set as true but no accelerator is found", "torch"),
    ("The `get_sentence_embedding_dimension` method has been renamed", "mteb"),
)
"""(message start, module) of library warnings a user cannot act on: torch's DataLoader on a CPU-only machine, and
mteb calling a renamed sentence-transformers method. Hidden unless ``--debug``."""

HARMLESS_LOG_RECORDS: tuple[tuple[str, str], ...] = (
    ("DeepSpeed", "Setting accelerator to CPU"),
    ("transformers.trainer_utils", "The tokenizer has new PAD/BOS/EOS tokens"),
    ("sentence_transformers.base.model", "Default prompt name is set to"),
)
"""(logger, message start) of library log lines a user cannot act on: deepspeed's accelerator probe on a CPU
machine, the Trainer copying the tokenizer's special-token ids into the model config, and sentence-transformers
noting the default prompt our checkpoints set on purpose. Hidden unless ``--debug``."""

NOISY_LOGGERS = ("mteb", "datasets", "sentence_transformers", "httpx", "huggingface_hub")
"""Library loggers shown from WARNING up only (their INFO lines repeat what the command prints)."""


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def commands() -> dict[str, tuple[str, Callable[[Sequence[str]], None]]]:
    """The subcommands: name -> (one-line summary, function running it on the command's arguments)."""
    commands: dict[str, tuple[str, Callable[[Sequence[str]], None]]] = {
        name: (stage.summary, lambda argv, stage=stage: run_training_stage(stage, argv))
        for name, stage in TRAINING_STAGES.items()
    }
    commands["evaluate"] = (EVALUATE_SUMMARY, run_evaluate)
    commands["quickstart"] = (QUICKSTART_SUMMARY, run_quickstart_command)
    return commands


def _top_level_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=PROG,
        description="Train decoder LLMs into text-embedding models (AutoRegEmbed), and evaluate them.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and all library warnings")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, (summary, _) in commands().items():
        subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def quiet_libraries() -> None:
    """Hide the known-harmless warnings and the libraries' INFO chatter (the command's own INFO lines stay)."""
    for message, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), module=module)
    for logger, message in HARMLESS_LOG_RECORDS:
        logging.getLogger(logger).addFilter(_DropMessages(message))
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``autoreg-embed`` console script.

    Exits with status 1 and one line on stderr for a user error (bad option value, missing file, unknown model,
    bad data row), 2 for a usage error, 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _top_level_parser()
    debug = False
    while argv and argv[0].startswith("-"):
        option = argv.pop(0)
        if option == "--debug":
            debug = True
        elif option in ("-h", "--help", "--version"):
            parser.parse_args([option])  # prints and exits
        else:
            parser.error(f"unknown option {option!r} (options of a command go after it)")
    if not argv:
        parser.print_help()
        return
    command, *options = argv
    available = commands()
    if command not in available:
        parser.error(f"unknown command {command!r}; choose from {', '.join(available)}")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("autoreg_embed").setLevel(logging.INFO)
    if not debug:
        quiet_libraries()
    try:
        available[command][1](options)
    except KeyboardInterrupt:
        print(f"{PROG} {command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"{PROG} {command}: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(1) from None
