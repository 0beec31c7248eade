"""``python -m autoreg_embed.cli`` (as ``accelerate launch -m autoreg_embed.cli`` runs it): the command line."""

from autoreg_embed.cli.main import main

main()
