"""The ``autoreg-embed`` command line: ``compress``, ``align``, ``contrastive`` (training), ``evaluate`` and
``quickstart`` (both stages on shipped data, evaluated before and after).

Modules: ``main`` (dispatch, errors, warnings), ``arguments`` (options and their parser), ``checks`` (what is
checked before a model loads), ``training`` (one entry per training stage), ``evaluate`` and ``quickstart``.
"""

from autoreg_embed.cli.main import main

__all__ = ["main"]
