"""The indexer's error for bundles, shared by the modules that read and publish them."""

from __future__ import annotations

from tandem.bundle.variants import VariantError

from tandem.errors import DataError


class BundleError(DataError):
    """A bundle is missing, corrupt or does not match what is asked; the message says what to do."""


class UnknownVariantError(BundleError, VariantError):
    """The variant asked for is not in the bundle (a client error, not a broken bundle)."""
