"""Auth on the real `restrl serve` with RESTRL_API_KEYS and RESTRL_ADMIN_TOKEN set: every operation
of the OpenAPI schema is tried without credentials, with a wrong one and with the other kind; only
/health, /ready and /metrics (and the static pages: playground, docs, schema) answer without a key.
No token, right or wrong, appears in the server's log output or its metrics."""

from __future__ import annotations

import httpx

from bench.load import ServeProcess

OPEN = {"/health", "/ready", "/metrics"}
STATIC = ("/", "/docs", "/redoc", "/openapi.json")  # pages without model access (the playground asks for a key)
WRONG = "wrong-token-5d1e0c9a"


async def test_every_route_needs_its_credential_and_tokens_never_leak(served: ServeProcess) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
        schema = (await client.get("/openapi.json")).json()
        operations = [(method.upper(), path) for path, item in schema["paths"].items() for method in item]
        assert len(operations) >= 10
        for method, path in operations:
            bodies = {"json": {}} if method == "POST" else {}
            anonymous = await client.request(method, path, **bodies)
            wrong = await client.request(method, path, headers={"Authorization": f"Bearer {WRONG}"}, **bodies)
            wrong_header = await client.request(method, path, headers={"X-API-Key": WRONG}, **bodies)
            if path in OPEN:
                assert anonymous.status_code == 200, (path, anonymous.text)
            elif path.startswith("/admin"):
                assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer", path
                assert wrong.status_code == 403 and wrong_header.status_code == 401, path
                with_api_key = await client.request(method, path, headers=served.headers, **bodies)
                assert with_api_key.status_code == 403, (path, with_api_key.text)  # an API key is no admin token
            else:
                assert path.startswith("/v1/"), path
                for r in (anonymous, wrong, wrong_header):
                    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized", (path, r.text)
                with_admin = await client.request(method, path, headers=served.admin_headers, **bodies)
                assert with_admin.status_code == 401, path  # nor is the admin token an API key
        for page in STATIC:
            assert (await client.get(page)).status_code == 200, page
        models = await client.get("/v1/models", headers=served.headers)
        by_header = await client.get("/v1/models", headers={"X-API-Key": served.api_key})
        status = await client.get("/admin/models", headers=served.admin_headers)
        assert models.status_code == 200 and by_header.status_code == 200 and status.status_code == 200
        metrics = (await client.get("/metrics")).text
    exposed = served.log() + metrics + status.text + models.text
    for secret in (served.admin_token, served.api_key, WRONG):
        assert secret not in exposed
    assert 'status="401"' in metrics and 'status="403"' in metrics  # the refusals are counted, not their tokens
