"""One error tree for the server, mapped to HTTP in exactly one place.

Following TEI's ``ErrorType -> StatusCode``: code below the routes raises a
``ServerError`` subclass that knows its status and a stable ``type`` string;
``install_error_handlers`` turns it (and FastAPI's own validation and routing
errors) into ``{"error": ..., "type": ...}``. Bad input is always a 4xx; only
our own failures are 5xx.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from tandem.server.schemas import ErrorBody

logger = logging.getLogger(__name__)


class ServerError(Exception):
    """Base of every error the server answers with; carries its HTTP mapping."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequest(ServerError):
    """The request is well-formed JSON but asks for something we will not do."""

    status_code = 422
    error_type = "invalid_request"


class EmptyQuery(InvalidRequest):
    error_type = "empty_query"


class QueryTooLong(InvalidRequest):
    error_type = "query_too_long"


class UnknownVariant(InvalidRequest):
    error_type = "unknown_variant"


class ModeUnavailable(InvalidRequest):
    """A search mode this bundle cannot serve (fused without a student view)."""

    error_type = "mode_unavailable"


class ModelNotFound(ServerError):
    status_code = 404
    error_type = "model_not_found"


class PayloadTooLarge(ServerError):
    status_code = 413
    error_type = "payload_too_large"


class Unauthorized(ServerError):
    status_code = 401
    error_type = "unauthorized"

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class AdminDisabled(ServerError):
    """Admin routes exist only when an API key protects them."""

    status_code = 403
    error_type = "admin_disabled"


class Overloaded(ServerError):
    """The admission bound is reached; the client should back off and retry."""

    status_code = 429
    error_type = "overloaded"


class DeadlineExceeded(ServerError):
    """The request could not be answered within the per-request deadline."""

    status_code = 503
    error_type = "deadline_exceeded"


class NotReady(ServerError):
    status_code = 503
    error_type = "not_ready"


class EncoderFailure(ServerError):
    """The student failed on a batch; every request of that batch gets this."""

    status_code = 500
    error_type = "encoder_error"


class BundleFailure(ServerError):
    status_code = 500
    error_type = "bundle_error"


class ReloadFailed(ServerError):
    """A reload was refused or failed; the previous bundle keeps serving."""

    status_code = 409
    error_type = "reload_failed"


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


def install_error_handlers(app: FastAPI) -> None:
    """Map every error the app can raise onto a JSON body and a status code."""

    async def on_server_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, ServerError):  # pragma: no cover - registration guarantees it
            raise exc
        if exc.status_code >= 500:
            logger.warning(
                "%s %s -> %s: %s", request.method, request.url.path, exc.status_code, exc
            )
        return JSONResponse(
            error_body(exc.message, exc.error_type),
            status_code=exc.status_code,
            headers=exc.headers,
        )

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

    app.add_exception_handler(ServerError, on_server_error)
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
