"""`build_app(settings, *, services=None) -> FastAPI`: the HTTP service.

The lifespan builds the services (`server.loading.build_services`, unless a test passes its own),
loads the initial model pair in the background (``/health`` answers at once, ``/ready`` and the
model routes say 503 until the pair is loaded and probed), and on shutdown refuses new requests,
drains the admitted ones up to ``drain_timeout_s`` and closes every model. Handlers live in
`server.routes` and receive the services through `Annotated` dependencies (`server.deps`).

An engine watchdog pings the active policy every ``ENGINE_WATCH_S`` seconds; when its engine is
dead (the vLLM EngineCore process was killed or crashed) it records why in
``services.engine_dead`` (``/health`` then answers 503) and calls ``app.state.request_exit`` if the
runner set one: `restrl serve` then drains, exits with status 3, and its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.base import EngineDeadError, PingablePolicy
from server import playground
from server.deps import STRATEGY_KEY
from server.errors import APIError, ClientDisconnected, error_body, install_error_handlers
from server.loading import build_services
from server.metrics import Metrics
from server.routes import admin, openai, ops, solve
from server.services import REQUEST_STATE_KEY, RequestState, Services
from server.settings import Settings

logger = logging.getLogger(__name__)

ENGINE_WATCH_S = 2.0  # how often the watchdog pings the active policy's engine
ENGINE_EXIT_DELAY_S = 2.0  # after a death is seen: /health and /ready answer 503 this long before the exit


def build_app(settings: Settings | None = None, *, services: Services | None = None,
              load_models: bool = True) -> FastAPI:
    """The app. ``services``: prebuilt services (tests); ``load_models=False`` skips the initial
    load (the services' registry already holds a pair)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = services
        if svc is None:
            svc = build_services(settings)
        app.state.services = svc
        if load_models and svc.registry.active is None:
            task = asyncio.create_task(_load_initial(svc, settings))
            svc.background.add(task)
            task.add_done_callback(svc.background.discard)
        watchdog = asyncio.create_task(_watch_engine(app, svc))
        svc.background.add(watchdog)
        watchdog.add_done_callback(svc.background.discard)
        try:
            yield
        finally:
            drained = await svc.admission.drain(settings.drain_timeout_s)
            if not drained:
                logger.warning("drain timeout (%.0fs): %d requests still running are cancelled",
                               settings.drain_timeout_s, svc.admission.active + svc.admission.queued)
            for task in list(svc.background):
                task.cancel()
            if services is None:  # we built them: we close them
                await svc.registry.close()
                if svc.sandbox is not None:
                    svc.sandbox.close()

    app = FastAPI(
        title="restrl",
        version="0.1.0",
        summary="Code generation with value-model-guided tree search (VM-MCTS) over a policy LLM.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    for module in (solve, openai, admin, ops, playground):
        app.include_router(module.router)
    # the last added is the outermost: the metrics see every answer, a 413 by Content-Length too
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, app_ref=app)
    return app


async def _load_initial(services: Services, settings: Settings) -> None:
    try:
        await services.registry.load_initial(settings.policy.model, settings.value.model)
    except Exception:
        logger.exception("loading the initial models failed; /ready reports why")


async def _watch_engine(app: FastAPI, services: Services) -> None:
    """Ping the active policy (a `PingablePolicy`); on `EngineDeadError`, record it and ask the
    runner to exit so that the supervisor restarts the process (the engine cannot be revived)."""
    while True:
        await asyncio.sleep(ENGINE_WATCH_S)
        try:
            async with services.registry.acquire() as pair:  # held: a swap cannot close it mid-ping
                if not isinstance(pair.policy, PingablePolicy) or pair.retired:
                    continue
                await asyncio.wait_for(pair.policy.ping(), 30)
        except EngineDeadError as exc:
            services.engine_dead = str(exc)
            request_exit = getattr(app.state, "request_exit", None)
            logger.error("the policy engine is dead (%s): %s", exc, "stopping the server (exit status 3) so that its "
                         "supervisor restarts it" if request_exit else "/health answers 503 from now on")
            if request_exit is not None:
                await asyncio.sleep(ENGINE_EXIT_DELAY_S)  # probes and in-flight requests see the 503 first
                request_exit()
            return
        except (APIError, asyncio.TimeoutError):  # no pair yet / loading; a slow ping is /ready's business
            continue
        except Exception:
            logger.exception("engine watchdog: ping failed")


class BodySizeLimitMiddleware:
    """413 for a body over ``max_bytes`` (by Content-Length, or counted while it streams in)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # an HTTPException: FastAPI turns other errors raised while reading a body into 400s
                    raise StarletteHTTPException(413, f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)

    async def _reject(self, send: Send) -> None:
        import json

        body = json.dumps(error_body("payload_too_large", f"request body over {self.max_bytes} bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class RequestMetricsMiddleware:
    """The outermost middleware: puts the request's `RequestState` (arrival time, whether the client
    left) in its scope, and counts every answer in ``restrl:requests_total`` and
    ``restrl:request_latency_seconds`` (SSE streams until their last event). Route = the matched
    path template (for a request refused before routing, e.g. a 413 by Content-Length, the route its
    path and method would match). Status = the status sent, or 499 when the client left before its
    answer was complete (a stream it closed, a search it abandoned)."""

    def __init__(self, app: ASGIApp, *, app_ref: FastAPI):
        self.app = app
        self._app_ref = app_ref

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = RequestState()
        scope[REQUEST_STATE_KEY] = state
        status = 500
        complete = False

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not complete:
                state.disconnected = True
            return message

        async def watched_send(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
            try:
                await send(message)
            except OSError:  # an ASGI 2.4 server reports a closed connection here
                state.disconnected = True
                raise
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True

        try:
            await self.app(scope, watched_receive, watched_send)
        finally:
            services: Services | None = getattr(self._app_ref.state, "services", None)
            if services is not None:
                answered = ClientDisconnected.status if state.disconnected and not complete else status
                self._observe(services.metrics, scope, answered, time.monotonic() - state.arrived)

    def _route(self, scope: Scope) -> str:
        route = getattr(scope.get("route"), "path", None)
        if route is not None:
            return str(route)
        for candidate in self._app_ref.router.routes:
            if candidate.matches(scope)[0] == Match.FULL:
                return str(getattr(candidate, "path", "unmatched"))
        return "unmatched"

    def _observe(self, metrics: Metrics, scope: Scope, status: int, seconds: float) -> None:
        route = self._route(scope)
        strategy = scope.get(STRATEGY_KEY, "none")
        metrics.requests.labels(route, strategy, str(status)).inc()
        metrics.request_latency.labels(route, strategy).observe(seconds)
