"""Operations: ``/health`` (the process answers), ``/ready`` (a real expansion and value call on
the active pair within ``ready_timeout_s``, cached ``ready_cache_s``), ``/metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from models.base import PingablePolicy
from sandbox.api import ProgramRunner
from server.deps import ServicesDep
from server.errors import error_body
from server.metrics import CONTENT_TYPE
from server.registry import probe

router = APIRouter(tags=["ops"])


@router.get("/health", summary="Liveness: the process is up (503 once the policy engine has died)")
async def health(services: ServicesDep) -> Any:
    if services.engine_dead is not None:
        return JSONResponse(error_body("engine_dead", f"the policy engine died: {services.engine_dead}"), status_code=503)
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: a real one-step expansion and one value call succeed")
async def ready(services: ServicesDep) -> JSONResponse:
    settings = services.settings
    now = time.monotonic()
    if services.admission.draining:
        return _not_ready("the server is shutting down")
    pair = services.registry.active
    if pair is None:
        error = services.registry.load_error
        return _not_ready(f"model load failed: {error}" if error else "models are loading")
    cached = services.ready_cache
    if cached is not None and cached[1] == pair.pair_id and now - cached[0] < settings.ready_cache_s:
        return JSONResponse(cached[2])
    engine: Any = None
    try:
        async with services.registry.acquire() as held:
            value = held.value if held.match.allowed else None
            result = await asyncio.wait_for(probe(held.policy, value, metrics=services.metrics), settings.ready_timeout_s)
            if isinstance(held.policy, PingablePolicy):  # the engine's own view: requests it still holds (none once idle)
                engine = await asyncio.wait_for(held.policy.ping(), settings.ready_timeout_s)
    except asyncio.TimeoutError:
        return _not_ready(f"probe took longer than {settings.ready_timeout_s:.0f}s")
    except Exception as exc:
        return _not_ready(f"probe failed: {type(exc).__name__}: {exc}")
    report: dict[str, Any] = {
        "status": "ready",
        "policy_version": pair.policy.version,
        "value_version": pair.value_version,
        "value_match": pair.match.summary(),
        "probe": result,
        "sandbox": _capabilities(services.sandbox),
        "engine": engine,
        "active_searches": services.admission.active,
        "queued": services.admission.queued,
    }
    services.ready_cache = (now, pair.pair_id, report)
    return JSONResponse(report)


def _capabilities(sandbox: ProgramRunner | None) -> dict[str, Any] | None:
    return sandbox.capabilities() if sandbox is not None else None


def _not_ready(reason: str) -> JSONResponse:
    return JSONResponse(error_body("not_ready", reason), status_code=503)


@router.get("/metrics", summary="Prometheus metrics (text format)")
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)
