"""``python -m tandem.indexer`` runs the same commands as ``tandem index``."""

from tandem.indexer.cli import main

main()
