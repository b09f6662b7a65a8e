"""The root of tandem's error tree.

Every error tandem raises on purpose derives from :class:`TandemError`, so an
entry point (the CLI, the server's exception handler) can tell a failure it
can explain from a bug. Subsystems define their specific errors under it.
"""

from __future__ import annotations


class TandemError(Exception):
    """A failure tandem can explain: bad input, a missing artifact, a broken bundle."""
