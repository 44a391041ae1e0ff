"""FastAPI dependencies: the app's services, and authentication.

Admin routes need ``Authorization: Bearer <RESTRL_ADMIN_TOKEN>`` (401 without credentials, 403 with
wrong ones or when no admin token is configured). Public ``/v1`` routes need one of
``RESTRL_API_KEYS`` (as a bearer token or ``X-API-Key``) when any is configured. Comparisons are
constant-time (`hmac.compare_digest`) over every configured key; tokens are never logged.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from server.errors import Forbidden, Unauthorized
from server.services import Services

STRATEGY_KEY = "restrl.strategy"  # handlers put the request's strategy in the ASGI scope for the metrics


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def _presented_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


def _matches(presented: str, secrets: list[str]) -> bool:
    matched = False
    for secret in secrets:  # no early exit: the time taken does not depend on which key matched
        matched |= hmac.compare_digest(presented.encode(), secret.encode())
    return matched


def require_api_key(request: Request, services: ServicesDep) -> None:
    keys = [k.get_secret_value() for k in services.settings.api_keys]
    if not keys:
        return
    presented = _presented_token(request)
    if presented is None or not _matches(presented, keys):
        raise Unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'")


def require_admin(request: Request, services: ServicesDep) -> None:
    token = services.settings.admin_token
    if token is None:
        raise Forbidden("the admin API is disabled: set RESTRL_ADMIN_TOKEN")
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized()
    if not _matches(presented.strip(), [token.get_secret_value()]):
        raise Forbidden("invalid admin token")


ApiKey = Depends(require_api_key)
Admin = Depends(require_admin)
