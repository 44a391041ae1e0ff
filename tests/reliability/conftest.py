"""Reliability harness: one real `restrl serve` subprocess (the default model on vLLM's CPU build,
an admin token and an API key configured) shared by the tests of this folder, via `bench.load`.

The engine-death test kills that server's EngineCore, so it lives in the file that sorts last
(`test_reliability_z_engine_death.py`); the `served` fixture starts a fresh server if an earlier
test left it dead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
