"""Admin API (bearer token): hot-swap checkpoints, list versions, roll back."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from server.deps import Admin, ServicesDep
from server.protocol import ModelsStatus, SwapRequest

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Admin])

ERRORS: dict[int | str, dict[str, Any]] = {code: {"description": text} for code, text in (
    (400, "swap failed (the message names the file); the previous pair keeps serving"),
    (401, "no bearer token"), (403, "wrong token, or admin API disabled"), (503, "no models loaded yet"))}


@router.get("/models", response_model=ModelsStatus, summary="Active pair, pairs still draining, swap history")
async def models_status(services: ServicesDep) -> ModelsStatus:
    return services.registry.status()


@router.post("/models", response_model=ModelsStatus, responses=ERRORS,
             summary="Load a policy and/or value checkpoint, probe it, swap atomically")
async def swap_models(body: SwapRequest, services: ServicesDep) -> ModelsStatus:
    await services.registry.swap(policy=body.policy, value=body.value)
    services.ready_cache = None
    return services.registry.status()


@router.post("/models/rollback", response_model=ModelsStatus, responses=ERRORS,
             summary="Reload the pair that was active before the last swap")
async def rollback_models(services: ServicesDep) -> ModelsStatus:
    await services.registry.rollback()
    services.ready_cache = None
    return services.registry.status()
