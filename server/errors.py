"""The server's errors, and the one table that maps the error tree onto HTTP.

Following TEI's ``ErrorType -> StatusCode``: code below the routes raises a
``tandem.errors.TandemError`` (the server's own subclasses live here; package
errors such as ``BundleError`` arrive with their category), and
``install_error_handlers`` turns it (and FastAPI's own validation and routing
errors) into ``{"error": ..., "type": ...}`` with the status of the first
class of its MRO found in ``HTTP_STATUS``. Bad input is always a 4xx; only
our own failures are 5xx.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from tandem.server.schemas import ErrorBody

from tandem.errors import (
    ConfigError,
    Conflict,
    DataError,
    Forbidden,
    InvalidInput,
    ModelError,
    NotFound,
    Overloaded,
    TandemError,
    Unauthorized,
    Unavailable,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AdminDisabled",
    "BundleFailure",
    "DeadlineExceeded",
    "EmptyQuery",
    "EncoderFailure",
    "IndexUnavailable",
    "InvalidRequest",
    "ModeUnavailable",
    "ModelNotFound",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "QueryTooLong",
    "ReloadFailed",
    "Unauthorized",
    "UnknownVariant",
]


class InvalidRequest(InvalidInput):
    """The request is well-formed JSON but asks for something we will not do."""


class EmptyQuery(InvalidRequest):
    pass


class QueryTooLong(InvalidRequest):
    pass


class UnknownVariant(InvalidRequest):
    pass


class ModeUnavailable(InvalidRequest):
    """A search mode this bundle cannot serve (fused without a student view)."""

    code = "mode_unavailable"


class ModelNotFound(NotFound):
    pass


class PayloadTooLarge(InvalidInput):
    pass


class AdminDisabled(Forbidden):
    """Admin routes exist only when an API key protects them."""


class DeadlineExceeded(Unavailable):
    """The request could not be answered within the per-request deadline."""


class NotReady(Unavailable):
    pass


class IndexUnavailable(Unavailable):
    """The remote index tier (Milvus) did not answer; retry after Retry-After."""

    code = "index_unavailable"


class EncoderFailure(ModelError):
    """The student failed on a batch; every request of that batch gets this."""

    code = "encoder_error"


class BundleFailure(DataError):
    code = "bundle_error"


class ReloadFailed(Conflict):
    """A reload was refused or failed; the previous bundle keeps serving."""


# The one mapping from the error tree to HTTP: the first class of an error's
# MRO found here gives its status.
HTTP_STATUS: dict[type[TandemError], int] = {
    PayloadTooLarge: 413,
    InvalidInput: 422,
    NotFound: 404,
    Unauthorized: 401,
    Forbidden: 403,
    Conflict: 409,
    Overloaded: 429,
    Unavailable: 503,
    ConfigError: 500,
    DataError: 500,
    ModelError: 500,
    TandemError: 500,
}


def http_status(error: TandemError) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def http_headers(error: TandemError) -> dict[str, str]:
    """Headers an error's category implies: Retry-After, WWW-Authenticate."""
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    retry = getattr(error, "retry_after_s", None)
    return {"Retry-After": str(retry)} if retry is not None else {}


# What each error status means, for the OpenAPI schema (routes list the ones they can answer).
ERROR_STATUSES = {
    400: "the request body could not be decoded (not UTF-8)",
    401: "missing or invalid API key (only when the server has one)",
    403: "admin routes are disabled: the server has no API key",
    404: "the requested model is not served here",
    409: "the reload failed; the previous bundle keeps serving",
    413: "the request body is larger than max_body_bytes",
    422: "invalid request; the message says what to fix",
    429: "overloaded; retry after Retry-After seconds",
    503: "not ready, shutting down, or the request's deadline passed",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, all with the ``ErrorBody`` shape."""
    return {
        status: {"model": ErrorBody, "description": ERROR_STATUSES[status]} for status in statuses
    }


def error_body(message: str, error_type: str) -> dict[str, str]:
    return {"error": message, "type": error_type}


def error_response(exc: TandemError, method: str, path: str) -> JSONResponse:
    """The answer to a ``TandemError``, for FastAPI's handler and the hot routes alike."""
    status = http_status(exc)
    if status >= 500:
        logger.warning("%s %s -> %s: %s", method, path, status, exc)
    return JSONResponse(
        error_body(exc.message, exc.code), status_code=status, headers=http_headers(exc)
    )


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the app can raise onto a JSON body and a status code."""

    async def on_tandem_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, TandemError):  # pragma: no cover - registration guarantees it
            raise exc
        return error_response(exc, request.method, request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        errors = list(exc.errors()) if isinstance(exc, RequestValidationError) else []
        message = _describe(errors)
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type and any(tuple(e.get("loc", ())) == ("body",) for e in errors):
            # FastAPI parses JSON only when declared (a CSRF guard); say so instead of
            # "Input should be a valid dictionary".
            message = f"send the body as JSON with Content-Type: application/json ({message})"
        return JSONResponse(
            {**error_body(message, "validation_error"), "details": _details(errors)},
            status_code=422,
        )

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
            raise exc
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        cause = exc.__cause__
        if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError):
            # FastAPI's "There was an error parsing the body": say what was wrong with it.
            kind = "invalid_body"
            message = (
                f"the request body is not valid UTF-8 (byte {cause.start}: {cause.reason}); "
                "send JSON encoded as UTF-8"
            )
        return JSONResponse(
            error_body(message, kind),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The one place allowed to see arbitrary exceptions: log them with the
        # traceback and answer a 500 instead of dropping the connection.
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal server error", "internal_error"), status_code=500)

    app.add_exception_handler(TandemError, on_tandem_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors[:5]:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            loc = err.get("loc", ())
            pos = loc[-1] if len(loc) > 1 else "?"
            parts.append(f"invalid JSON body at position {pos}: {ctx.get('error', 'decode error')}")
            continue
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more if parts else "invalid request"


def _details(errors: list[Any]) -> list[dict[str, Any]]:
    return [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": e.get("type")}
        for e in errors[:20]
    ]
