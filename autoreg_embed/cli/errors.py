"""How the command line reports bad input: one line on stderr, no traceback (unless ``--debug``)."""

from __future__ import annotations

import argparse
from typing import NoReturn


class UserError(Exception):
    """A problem with the command's input; the command prints the message as one line and exits with status 1."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, OSError, ImportError, FloatingPointError)
"""Exceptions that mean bad input or environment: printed as one line (a traceback with ``--debug``).

``ValueError`` covers invalid option values and data rows, ``OSError`` missing files and unreachable models,
``ImportError`` a missing optional dependency (the message names the extra to install), ``FloatingPointError`` a
diverged training run."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (library messages often span several)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line that points to ``--help`` (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
