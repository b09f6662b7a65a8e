"""``python -m indexer`` runs the same commands as ``tandem index``."""

from indexer.cli import main

main()
