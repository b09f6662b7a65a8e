"""One error tree for the whole package.

Every error tandem raises on purpose derives from ``TandemError`` through one
of a few categories that say who has to act: the caller (``InvalidInput``,
``NotFound``), the operator (``ConfigError``, ``DataError``, ``ModelError``),
or nobody but time (``Overloaded``, ``Unavailable``). Package errors
(``BundleError``, ``EncoderError``, ...) derive from a category, so the two
places that turn errors into answers each hold one table keyed by category:
``tandem.server.errors`` (HTTP status) and ``exit_code`` below (CLI).

This module sits at the bottom of the layers: it imports nothing from tandem.
"""

from __future__ import annotations

import re
from typing import ClassVar


class TandemError(Exception):
    """Root of every error tandem raises on purpose; the message says what to do.

    ``code`` is a stable snake_case name (the HTTP body's ``type``), derived
    from the class name unless a class sets it.
    """

    code: ClassVar[str] = "tandem_error"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            cls.code = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        # What an entry point shows; subclasses may set their own words.
        self.message: str = str(args[0]) if args else self.code.replace("_", " ")


class InvalidInput(TandemError):
    """The caller asked for something that cannot be done as asked (fix the input)."""


class NotFound(TandemError):
    """The caller named something (a model, a variant, a file) that does not exist."""


class Unauthorized(TandemError):
    """Missing or wrong credentials."""


class Forbidden(TandemError):
    """The operation is disabled in this configuration."""


class Conflict(TandemError):
    """The operation clashes with the current state (e.g. a reload that failed)."""


class Overloaded(TandemError):
    """Too much work admitted right now; retry after ``retry_after_s``."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(TandemError):
    """Not ready, shutting down, or out of time for this request; retry later."""

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConfigError(TandemError):
    """The configuration cannot work (wrong pairing, missing file, bad setting)."""


class DataError(TandemError):
    """A bundle, corpus or dataset is missing, corrupt or inconsistent."""


class ModelError(TandemError):
    """An encoder artifact is missing or broken, or a model failed to run."""


# The CLI's one rule: 2 when the user must change the command, its inputs or
# its configuration; 75 (EX_TEMPFAIL) when retrying later may work; 1 otherwise.
EXIT_USAGE = 2
EXIT_RETRY = 75
EXIT_FAILURE = 1
EXIT_CODES: dict[type[TandemError], int] = {
    InvalidInput: EXIT_USAGE,
    NotFound: EXIT_USAGE,
    ConfigError: EXIT_USAGE,
    Unauthorized: EXIT_USAGE,
    Forbidden: EXIT_USAGE,
    Overloaded: EXIT_RETRY,
    Unavailable: EXIT_RETRY,
}


def exit_code(error: TandemError) -> int:
    """The process exit status for an error that ends a command (first category in the MRO)."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_FAILURE
