"""Moved to ``tandem.schemas`` (shared with ``tandem.client``); re-exported for existing imports."""

from tandem.schemas import *  # noqa: F403
from tandem.schemas import __all__ as __all__
