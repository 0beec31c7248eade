"""``python -m autoreg_embed`` runs the ``autoreg-embed`` command line."""

from autoreg_embed.cli import main

main()
