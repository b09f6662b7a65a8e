"""One error tree: every package error is a TandemError, mapped to HTTP and exit codes by table."""

from __future__ import annotations

import pytest
from tandem.bundle.docstore import DuplicateIdError
from tandem.bundle.errors import BundleError, UnknownVariantError
from tandem.indexer.build import BuildError
from tandem.models.artifacts import ArtifactError
from tandem.models.encoder import EncoderError
from tandem.models.pairing import PairingError
from tandem.models.sources import ModelSourceError
from tandem.server import errors as server_errors
from tandem.server.errors import http_headers, http_status
from tandem.server.state import StartupCheckError

from tandem.data.beir import DatasetError
from tandem.data.corpus import CorpusError
from tandem.errors import (
    ConfigError,
    DataError,
    InvalidInput,
    ModelError,
    Overloaded,
    TandemError,
    Unavailable,
    exit_code,
)

PACKAGE_ERRORS: list[tuple[type[TandemError], type[TandemError]]] = [
    (BundleError, DataError),
    (UnknownVariantError, DataError),
    (DatasetError, DataError),
    (CorpusError, DataError),
    (BuildError, DataError),
    (DuplicateIdError, InvalidInput),
    (EncoderError, ModelError),
    (ArtifactError, ModelError),
    (ModelSourceError, ModelError),
    (PairingError, ConfigError),
    (StartupCheckError, ConfigError),
]


@pytest.mark.parametrize(("error", "category"), PACKAGE_ERRORS)
def test_package_errors_derive_from_a_category(
    error: type[TandemError], category: type[TandemError]
) -> None:
    assert issubclass(error, category) and issubclass(error, TandemError)


def test_value_errors_stay_value_errors() -> None:
    """Callers that caught ValueError before the tree existed still do."""
    assert issubclass(CorpusError, ValueError) and issubclass(DuplicateIdError, ValueError)
    assert DuplicateIdError("x").message == "duplicate id 'x'"


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (server_errors.EmptyQuery("query is empty"), 422, "empty_query"),
        (server_errors.QueryTooLong("long"), 422, "query_too_long"),
        (server_errors.UnknownVariant("no"), 422, "unknown_variant"),
        (server_errors.PayloadTooLarge("big"), 413, "payload_too_large"),
        (server_errors.ModelNotFound("no"), 404, "model_not_found"),
        (server_errors.Unauthorized("key"), 401, "unauthorized"),
        (server_errors.AdminDisabled("off"), 403, "admin_disabled"),
        (server_errors.ReloadFailed("bad"), 409, "reload_failed"),
        (server_errors.Overloaded("full", retry_after_s=3), 429, "overloaded"),
        (server_errors.DeadlineExceeded("late"), 503, "deadline_exceeded"),
        (server_errors.NotReady("loading"), 503, "not_ready"),
        (server_errors.EncoderFailure("onnx"), 500, "encoder_error"),
        (server_errors.BundleFailure("disk"), 500, "bundle_error"),
        (BundleError("corrupt"), 500, "bundle_error"),
        (DuplicateIdError("x"), 422, "duplicate_id_error"),
        (StartupCheckError("pairing"), 500, "startup_check_error"),
    ],
)
def test_http_status_and_type_come_from_the_table(
    error: TandemError, status: int, code: str
) -> None:
    assert http_status(error) == status
    assert error.code == code


def test_retry_after_and_www_authenticate_follow_the_category() -> None:
    assert http_headers(Overloaded("full", retry_after_s=3)) == {"Retry-After": "3"}
    assert http_headers(Unavailable("late", retry_after_s=1)) == {"Retry-After": "1"}
    assert http_headers(Unavailable("loading")) == {}
    assert http_headers(server_errors.Unauthorized("no")) == {"WWW-Authenticate": "Bearer"}


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (StartupCheckError("fix the pairing"), 2),
        (CorpusError("bad row"), 1),
        (DuplicateIdError("x"), 2),
        (EncoderError("broken graph"), 1),
        (Overloaded("full"), 75),
        (TandemError("anything"), 1),
    ],
)
def test_one_exit_code_rule(error: TandemError, code: int) -> None:
    assert exit_code(error) == code


def test_client_errors_take_the_category_of_their_status() -> None:
    """A failed ``tandem search`` exits by the same rule as any other command."""
    from tandem.client import errors as client

    assert exit_code(client.AuthenticationError(401, "unauthorized", "no key")) == 2
    assert exit_code(client.InvalidRequestError(422, "unknown_variant", "no such")) == 2
    assert exit_code(client.NotFoundError(404, "model_not_found", "no")) == 2
    assert exit_code(client.RateLimitError(429, "overloaded", "busy", retry_after=1.0)) == 75
    assert exit_code(client.ServiceUnavailableError(503, "not_ready", "loading")) == 75
    assert exit_code(client.TandemConnectionError("http://x: refused")) == 75
    assert exit_code(client.InternalServerError(500, "bundle_error", "disk")) == 1
    error = client.RateLimitError(429, "overloaded", "busy", retry_after=2.0)
    assert error.message == "busy" and error.retry_after == 2.0 and error.status_code == 429
