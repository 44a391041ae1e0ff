"""The server's exception hierarchy, its one JSON error shape, and the list of every error it answers.

Every 4xx/5xx body is ``{"error": {"type": ..., "message": ..., "field": ...}}`` (``field`` only when
one input is at fault). `ERROR_KINDS` lists every (status, type) the server answers with, in one
place: docs/api.md's error table is that list (tests/test_docs.py checks both ways) and the routes'
OpenAPI ``responses`` are built from it (`openapi_responses`). `install_error_handlers` maps our
errors, request validation errors, Starlette's HTTP errors and the model errors of `models.base`
to that shape in one place: `ModelError` (the engine is alive, this request failed) is a 500;
`EngineDeadError` is a 503; a body that is not JSON is a 400 ``invalid_json``; a field that fails
validation is a 422 ``invalid_request`` naming it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.base import CheckpointError, EngineDeadError, ModelError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorKind:
    status: int
    type: str
    when: str


ERROR_KINDS: tuple[ErrorKind, ...] = (
    ErrorKind(400, "invalid_request", "the schema accepts the request but this server cannot serve it: an OpenAI field it does not "
              "implement (`logprobs`, `echo`, `best_of`, `tools`, ...: `field` names it), `rerank_with_tests` without public "
              "tests or sandbox, an admin checkpoint path that is not a checkpoint directory"),
    ErrorKind(400, "invalid_json", "the body is not JSON: a syntax error, not UTF-8, or nested too deep (`field` is `body`)"),
    ErrorKind(400, "swap_failed", "admin swap or rollback failed loading or probing the checkpoint (the message names the file); "
              "the previous pair keeps serving"),
    ErrorKind(401, "unauthorized", "no credential, or a wrong API key (see Auth)"),
    ErrorKind(403, "forbidden", "a wrong admin token, or the admin API is disabled"),
    ErrorKind(404, "not_found", "no such route"),
    ErrorKind(405, "method_not_allowed", "the route exists, not with this method"),
    ErrorKind(413, "payload_too_large", "body over `max_body_bytes` (by Content-Length or while streaming in)"),
    ErrorKind(422, "invalid_request", "a field fails validation (type, range, a server limit: `seed` outside 64 bits, `max_tokens` "
              "above `max_new_tokens`, ...); `field` names the first bad field"),
    ErrorKind(429, "overloaded", "`max_concurrent_searches` running and `max_queued` waiting, or no slot freed within the "
              "request's share of its deadline for waiting (`queue_wait_share`; nothing ran); `Retry-After` header (seconds)"),
    ErrorKind(499, "client_disconnected", "the client left before its answer was complete (the search and its engine requests "
              "are cancelled); seen only in metrics and access logs"),
    ErrorKind(500, "model_error", "the engine failed this request (it is still alive)"),
    ErrorKind(500, "internal_error", "any other failure of this request (the server log has the traceback)"),
    ErrorKind(503, "unavailable", "models loading, load failed, engine dead, or the server is draining (`Retry-After` when a "
              "retry can help)"),
    ErrorKind(503, "not_ready", "`/ready`: no models yet, the probe failed or timed out, or the server is draining"),
    ErrorKind(503, "engine_dead", "`/health`: the policy engine died; `restrl serve` exits for its supervisor"),
    ErrorKind(504, "timeout", "a search overran its deadline by the grace period and was cancelled (a search normally stops "
              "at its deadline with a result)"),
)


class ErrorDetail(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """The one error shape."""

    error: ErrorDetail


def openapi_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route that may answer ``statuses`` (from `ERROR_KINDS`)."""
    return {status: {"model": ErrorBody, "description": "; ".join(f"`{k.type}`: {k.when}" for k in ERROR_KINDS
                                                                    if k.status == status)}
            for status in statuses}


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
    """The schema accepts the request, this server cannot serve it (400)."""

    status = 400
    type = "invalid_request"


class InvalidField(InvalidRequest):
    """A field fails a check the schema cannot express (a server limit): 422, like schema validation."""

    status = 422


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


class ModelFailed(APIError):
    """The engine failed this request and is still alive (`models.base.ModelError`)."""

    status = 500
    type = "model_error"


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
        return ModelFailed(f"model error: {exc}")
    if isinstance(exc, CheckpointError):
        return SwapFailed(str(exc))
    if isinstance(exc, asyncio.TimeoutError):
        return Timeout(f"the search overran its deadline: {exc}")
    return APIError("internal server error")


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _not_json(reason: str) -> JSONResponse:
    return JSONResponse(error_body("invalid_json", f"the request body is not valid JSON: {reason}", "body"), status_code=400)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # FastAPI's json.loads failed: loc is (body, character offset)
            loc = tuple(first.get("loc", ()))
            where = f" at character {loc[1]}" if len(loc) > 1 else ""
            ctx = first.get("ctx")
            reason = ctx.get("error", "syntax error") if isinstance(ctx, dict) else "syntax error"
            return _not_json(f"{reason}{where}")
        field = _field_of(tuple(first.get("loc", ())))
        message = "; ".join(f"{_field_of(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errors[:5])
        return JSONResponse(error_body("invalid_request", message, field), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI: "There was an error parsing the body" (json.loads raised, not a syntax error)
            cause = exc.__cause__
            if isinstance(cause, RecursionError):
                return _not_json("nested too deep")
            if isinstance(cause, UnicodeError):
                return _not_json("not UTF-8 text")
            return _not_json(str(exc.detail))
        type_ = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code)
        if type_ is None:  # not an error this app raises: answer it as a generic failure rather than invent a type
            logger.warning("unexpected HTTP error %d: %s", exc.status_code, exc.detail)
            return error_response(APIError("internal server error"))
        return JSONResponse(error_body(type_, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ModelError)
    async def _model(_: Request, exc: ModelError) -> JSONResponse:
        logger.warning("model error: %s", exc)
        return error_response(to_api_error(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return error_response(to_api_error(exc))
