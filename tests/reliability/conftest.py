"""Reliability harness: one real `restrl serve` subprocess (the default model on vLLM's CPU build,
an admin token and an API key configured) shared by the tests of this folder, via `bench.load`.

The engine-death test kills that server's EngineCore, so it lives in the file that sorts last
(`test_reliability_z_engine_death.py`); the `served` fixture starts a fresh server if an earlier
test left it dead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bench.load import ServeProcess


class Shared:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.server: ServeProcess | None = None
        self.starts = 0

    def get(self) -> ServeProcess:
        if self.server is not None and self.server.proc.poll() is not None:
            self.server = None
        if self.server is None or not self.server.engine_core_pids():
            if self.server is not None:
                self.server.stop()
            self.starts += 1
            self.server = ServeProcess.start(self.log_dir / f"serve-{self.starts}.log")
        return self.server


@pytest.fixture(scope="session")
def _shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    shared = Shared(tmp_path_factory.mktemp("reliability"))
    yield shared
    if shared.server is not None:
        shared.server.stop()


@pytest.fixture
def served(_shared_server: Shared) -> ServeProcess:
    """The running server (restarted if a previous test killed its engine)."""
    return _shared_server.get()


@asynccontextmanager
async def inproc_server(vllm_policy: Any, value_model: Any, *, sandbox: Any = None,
                        **overrides: Any) -> AsyncIterator[tuple[Any, str]]:
    """The app on the session's real engine and value model, served by uvicorn on loopback in the
    test's event loop (for settings a test needs, e.g. tight caps for the fuzzer). Yields (services, url)."""
    from search import run_search
    from server import Settings, build_app
    from server.loading import EngineLoader
    from server.services import assemble_services
    from tests.server.conftest import running

    settings = Settings(**{"admin_token": ADMIN_TOKEN, "api_keys": API_KEY, "ready_cache_s": 0,
                           "policy": vllm_policy.config, "value": {"batch_wait_ms": 2}, **overrides})
    services = assemble_services(settings, loader=EngineLoader(settings),
                                 search_fn=run_search, sandbox=sandbox)
    await services.registry.install(vllm_policy.with_adapter(None, version=vllm_policy.version), value_model)
    try:
        async with running(build_app(settings, services=services, load_models=False)) as url:
            yield services, url
    finally:
        await services.registry.close()  # the views it holds (the session owns the engine)


ADMIN_TOKEN = "inproc-admin-token-7f3a"
API_KEY = "inproc-api-key-91c2"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
