"""The ``autoreg-embed`` command line: ``compress``, ``align``, ``contrastive`` (training) and ``evaluate``.

Modules: ``main`` (dispatch, errors, warnings), ``arguments`` (options and their parser), ``checks`` (what is
checked before a model loads), ``training`` (one entry per training stage) and ``evaluate``.
"""

from autoreg_embed.cli.main import main

__all__ = ["main"]
