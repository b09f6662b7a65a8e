"""Exceptions raised by ``tandem.client``, one class per kind of failure.

The server answers every error with ``{"error": ..., "type": ...}``
(``tandem.schemas.ErrorBody``); ``error_from_response`` turns that body into
the exception for its status code, carrying the server's ``type`` and message
so callers can branch on ``exc.type`` (``"unknown_variant"``,
``"validation_error"``, ...) instead of parsing text.
"""

from __future__ import annotations

import httpx
from pydantic import ValidationError

from tandem.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    Overloaded,
    Unauthorized,
    Unavailable,
)
from tandem.errors import TandemError as TandemError  # the one root of every client error
from tandem.schemas import ErrorBody, ErrorDetail


class TandemConnectionError(Unavailable):
    """The server could not be reached, or the connection broke or timed out."""


class TandemTimeoutError(TandemConnectionError):
    """The server did not answer within the client's timeout (not retried: it may be working)."""


class TandemAPIError(TandemError):
    """The server answered with an error status; ``type`` and ``message`` are its own words."""

    def __init__(
        self,
        status_code: int,
        type: str,
        message: str,
        details: list[ErrorDetail] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status_code} {type}: {message}")
        self.status_code = status_code
        self.type = type
        self.message = message
        self.details = details or []
        self.retry_after = retry_after


class BadRequestError(TandemAPIError, InvalidInput):
    """400: the body could not be decoded."""


class AuthenticationError(TandemAPIError, Unauthorized):
    """401: missing or wrong API key (argument ``api_key`` or ``TANDEM_API_KEY``)."""


class PermissionDeniedError(TandemAPIError, Forbidden):
    """403: the route is disabled on this server."""


class NotFoundError(TandemAPIError, NotFound):
    """404: no such route, or the requested model is not served."""


class PayloadTooLargeError(TandemAPIError, InvalidInput):
    """413: the request body is over the server's ``max_body_bytes``."""


class InvalidRequestError(TandemAPIError, InvalidInput):
    """422: the request asks for something the server will not do; the message says what."""


class RateLimitError(TandemAPIError, Overloaded):
    """429: the server is at its admission bound (raised once retries are used up)."""


class ServiceUnavailableError(TandemAPIError, Unavailable):
    """503: not ready, shutting down, or past the request deadline (after retries)."""


class InternalServerError(TandemAPIError):
    """Any other 5xx: a failure on the server's side."""


_BY_STATUS: dict[int, type[TandemAPIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_from_response(response: httpx.Response, retry_after: float | None) -> TandemAPIError:
    """The exception for an error response, from its ``ErrorBody`` (or its raw text)."""
    status = response.status_code
    kind = _BY_STATUS.get(status, InternalServerError if status >= 500 else TandemAPIError)
    try:
        body = ErrorBody.model_validate_json(response.content)
    except ValidationError:
        # Not ours (a proxy in between, say): keep what it said.
        text = response.text.strip()[:500] or response.reason_phrase
        return kind(status, "http_error", text, retry_after=retry_after)
    return kind(status, body.type, body.error, body.details, retry_after)
