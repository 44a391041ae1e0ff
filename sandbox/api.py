"""What a caller of the sandbox holds: `SandboxConfig` (how to open a pool, declared once and nested
by the server's settings and every job config) and `ProgramRunner` (what an open pool does: the
interface `sandbox.Sandbox` implements and the server's metered wrapper and test doubles follow).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from sandbox.limits import Limits, Verdict
from tasks.problem import TestCase

SandboxMode = Literal["forkserver", "spawn"]
Job = tuple[str, Sequence[TestCase]] | tuple[str, Sequence[TestCase], str | None]


class SandboxConfig(BaseModel):
    """A sandbox pool: how many workers, and the limits of each program run."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(default=2, ge=1, le=256, description="sandbox worker processes (programs run at once)")
    timeout_s: float = Field(default=10.0, gt=0, le=3600, description="wall-clock and CPU seconds per program run (all its tests)")
    memory_mb: int = Field(default=1024, ge=64, le=1 << 20, description="address-space limit of a program run, MiB")
    mode: SandboxMode = Field(default="forkserver", description="forkserver (a fork per run) or spawn (a fresh interpreter per run, ~10x the CPU)")

    def limits(self) -> Limits:
        """The `Limits` of one run."""
        return Limits(wall_s=self.timeout_s, cpu_s=self.timeout_s, memory_mb=self.memory_mb)


@runtime_checkable
class ProgramRunner(Protocol):
    """Runs programs against tests and returns verdicts (`sandbox.Sandbox`)."""

    async def arun(self, program: str, tests: Sequence[TestCase], limits: Limits | None = None, *,
                   entry_point: str | None = None) -> Verdict: ...

    async def run_many(self, jobs: Sequence[Job], limits: Limits | None = None, *,
                       entry_point: str | None = None) -> list[Verdict]: ...

    def capabilities(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
