"""The server's exception hierarchy and its one JSON error shape.

Every 4xx/5xx body is ``{"error": {"type": ..., "message": ..., "field": ...}}`` (``field`` only when
one input is at fault). `install_error_handlers` maps our errors, request validation errors,
Starlette's HTTP errors and the model errors of `models.base` to that shape in one place:
`ModelError` (the engine is alive, this request failed) is a 500; `EngineDeadError` is a 503.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.base import CheckpointError, EngineDeadError, ModelError

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error with an HTTP status; ``type`` is a stable machine-readable name."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request"


class Unauthorized(APIError):
    status = 401
    type = "unauthorized"

    def __init__(self, message: str = "missing or invalid credentials: send 'Authorization: Bearer <token>'"):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(APIError):
    status = 403
    type = "forbidden"


class NotFound(APIError):
    status = 404
    type = "not_found"


class PayloadTooLarge(APIError):
    status = 413
    type = "payload_too_large"


class Overloaded(APIError):
    """Admission refused the request (too many searches running and queued)."""

    status = 429
    type = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class Unavailable(APIError):
    """The server cannot serve now (models loading, engine dead, draining); retry later."""

    status = 503
    type = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int | None = None):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)} if retry_after_s else None)


class Timeout(APIError):
    """The server gave up on a search that overran its deadline (the search's own deadline stops it
    with a result first; this is the safety net)."""

    status = 504
    type = "timeout"


class ClientDisconnected(APIError):
    """The client went away mid-search (the search is cancelled). Nobody reads this response; the
    status (nginx's 499) only shows in the request metrics and the access log."""

    status = 499
    type = "client_disconnected"


class SwapFailed(APIError):
    """A hot swap failed; the previous pair keeps serving. The message names the file at fault."""

    status = 400
    type = "swap_failed"


def error_body(type_: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type_, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(error_body(exc.type, exc.message, exc.field), status_code=exc.status, headers=exc.headers)


def to_api_error(exc: BaseException) -> APIError:
    """The `APIError` for any exception a handler or a search may raise."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineDeadError):
        return Unavailable(f"the model engine is dead: {exc}")
    if isinstance(exc, ModelError):
        err = APIError(f"model error: {exc}")
        err.type = "model_error"
        return err
    if isinstance(exc, CheckpointError):
        return SwapFailed(str(exc))
    if isinstance(exc, asyncio.TimeoutError):
        return Timeout(f"the search overran its deadline: {exc}")
    return APIError("internal server error")


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        message = "; ".join(f"{_field_of(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errors[:5])
        return JSONResponse(error_body("invalid_request", message, field), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(type_, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ModelError)
    async def _model(_: Request, exc: ModelError) -> JSONResponse:
        logger.warning("model error: %s", exc)
        return error_response(to_api_error(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return error_response(to_api_error(exc))
