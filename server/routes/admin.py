"""Admin API (bearer token): hot-swap checkpoints, list versions, roll back.

A checkpoint path in a request must name an existing directory holding a ``restrl.json``
manifest: absolute, or relative to ``RESTRL_CHECKPOINT_ROOT``; when that root is set no path may
lead outside it (``..`` and symbolic links are resolved first). Anything else is a 400
``invalid_request`` naming the field, before anything is listed or read
(`models.locate_checkpoint`). Inside the directory only the files its manifest lists are read, and a
symbolic link leading outside it is refused (`models.verify_checkpoint`). Error messages name the
path as the client sent it, never where it resolved to.
"""

from __future__ import annotations

from fastapi import APIRouter

from models.base import CheckpointError
from models.checkpoints import locate_checkpoint
from server.deps import Admin, ServicesDep
from server.errors import InvalidRequest, SwapFailed, openapi_responses
from server.protocol import ModelsStatus, SwapRequest

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Admin])

ERRORS = openapi_responses(400, 401, 403, 422, 503)


def _located(services: ServicesDep, field: str, sent: str | None) -> str | None:
    if sent is None:
        return None
    try:
        return str(locate_checkpoint(sent, root=services.settings.checkpoint_root))
    except CheckpointError as exc:
        raise InvalidRequest(str(exc), field=field) from None


@router.get("/models", response_model=ModelsStatus, summary="Active pair, pairs still draining, swap history")
async def models_status(services: ServicesDep) -> ModelsStatus:
    return services.registry.status()


@router.post("/models", response_model=ModelsStatus, responses=ERRORS,
             summary="Load a policy and/or value checkpoint, probe it, swap atomically")
async def swap_models(body: SwapRequest, services: ServicesDep) -> ModelsStatus:
    policy = _located(services, "policy", body.policy)
    value = _located(services, "value", body.value)
    try:
        await services.registry.swap(policy=policy, value=value)
    except SwapFailed as exc:  # name the paths as the client sent them
        message = exc.message
        for real, sent in ((policy, body.policy), (value, body.value)):
            if real is not None and sent is not None and real != sent:
                message = message.replace(real, sent.rstrip("/") or sent)
        raise SwapFailed(message, field=exc.field) from exc.__cause__
    services.ready_cache = None
    return services.registry.status()


@router.post("/models/rollback", response_model=ModelsStatus, responses=ERRORS,
             summary="Reload the pair that was active before the last swap")
async def rollback_models(services: ServicesDep) -> ModelsStatus:
    await services.registry.rollback()
    services.ready_cache = None
    return services.registry.status()
