"""Fixtures of the sandbox tests: one shared pool (fork server) and helpers to inspect the host."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox import Limits, Sandbox


@pytest.fixture(scope="session")
def sb() -> Iterator[Sandbox]:
    with Sandbox(workers=2, limits=Limits(wall_s=20.0, cpu_s=10.0)) as sandbox:
        yield sandbox
