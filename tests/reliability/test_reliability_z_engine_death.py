"""The engine dying under a real `restrl serve`: its EngineCore process is killed. Requests and
``/ready`` answer 503 at once, ``/health`` turns 503, and the process drains and exits with status
3 (`server.cli.ENGINE_DEAD_EXIT`) so that its supervisor (Docker ``restart:``, systemd, Kubernetes)
starts a fresh one; no child process outlives it. This file sorts last in the folder because it
kills the shared server (the `served` fixture starts a new one for any later test)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import httpx
import psutil

from bench.load import PROBLEMS, ServeProcess
from server.cli import ENGINE_DEAD_EXIT


async def test_engine_core_killed_503_then_exit_for_the_supervisor(served: ServeProcess) -> None:
    children = served.children()
    [core] = served.engine_core_pids()
    async with httpx.AsyncClient(base_url=served.url, timeout=60, headers=served.headers) as client:
        assert (await client.get("/health")).status_code == 200
        os.kill(core, signal.SIGKILL)
        solve = await client.post("/v1/solve", json={"problem": PROBLEMS[0], "strategy": "greedy",
                                                     "budget": {"samples": 1}, "max_tokens": 8})
        ready = await client.get("/ready")
        completion = await client.post("/v1/completions", json={"prompt": "def f():", "max_tokens": 4})
        for _ in range(200):  # the watchdog notices within ENGINE_WATCH_S and keeps serving 503s a moment
            health = await client.get("/health")
            if health.status_code != 200:
                break
            await asyncio.sleep(0.05)
    assert solve.status_code == 503 and solve.json()["error"]["type"] == "unavailable", solve.text
    assert "engine" in solve.json()["error"]["message"]
    assert ready.status_code == 503 and "EngineDeadError" in ready.json()["error"]["message"], ready.text
    assert completion.status_code == 503, completion.text
    assert health.status_code == 503 and health.json()["error"]["type"] == "engine_dead", health.text
    assert served.proc.wait(timeout=120) == ENGINE_DEAD_EXIT
    log = served.log()
    assert "the policy engine is dead" in log and "exiting with status 3" in log
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive


async def test_embedded_app_without_a_runner_marks_health_503() -> None:
    """The app embedded without `restrl serve` (no ``request_exit``): the watchdog only turns
    /health 503, which a liveness probe acts on."""
    from models.base import EngineDeadError
    from tests.server.test_api import serve

    services, server = await serve()
    policy: Any = services.registry.active.policy  # type: ignore[union-attr]
    dead: list[Exception] = []

    async def ping() -> dict[str, Any]:
        if dead:
            raise dead[0]
        return {"engine": "fake"}

    policy.ping = ping
    async with server as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        assert (await client.get("/health")).status_code == 200
        dead.append(EngineDeadError("engine core died"))
        for _ in range(100):
            health = await client.get("/health")
            if health.status_code == 503:
                break
            await asyncio.sleep(0.1)
        assert health.status_code == 503 and "engine core died" in health.json()["error"]["message"]
        assert services.engine_dead is not None
