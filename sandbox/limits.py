"""Per-run resource limits (`Limits`) and the verdict models a run produces (`Verdict`, `TestOutcome`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

VerdictStatus = Literal["passed", "failed", "timeout", "error", "infra_error"]
OutcomeStatus = Literal["passed", "failed", "timeout", "error"]


class Limits(BaseModel):
    """What one program run may use. Every limit applies to the whole run (program + all its tests),
    except ``cpu_s``, an RLIMIT_CPU that applies to each process of the run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wall_s: float = Field(default=10.0, gt=0, le=3600, description="wall-clock limit of the run, seconds")
    cpu_s: float = Field(
        default=10.0, gt=0, le=3600, description="CPU-time limit per process (RLIMIT_CPU), seconds"
    )
    memory_mb: int = Field(
        default=1024, ge=64, le=1 << 20, description="address-space limit (RLIMIT_AS), MiB"
    )
    max_procs: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="processes and threads a run may hold (RLIMIT_NPROC, pids cgroup)",
    )
    max_file_mb: int = Field(
        default=16, ge=0, le=1 << 16, description="largest file a program may write (RLIMIT_FSIZE), MiB"
    )
    max_open_files: int = Field(
        default=64, ge=16, le=1 << 16, description="open file descriptors (RLIMIT_NOFILE)"
    )
    max_output_bytes: int = Field(
        default=1 << 20, ge=1024, le=1 << 30, description="stdout kept per stdio test; more fails the test"
    )
    max_stderr_bytes: int = Field(
        default=8192, ge=0, le=1 << 24, description="stderr kept in the verdict (the head)"
    )


class TestOutcome(BaseModel):
    """One outcome: a call/stdio/assert test, or one test method of a unittest test."""

    model_config = ConfigDict(frozen=True)
    __test__ = False  # not a pytest class

    index: int = Field(description="position of the TestCase in the run's test list")
    name: str | None = Field(default=None, description="e.g. 'call[3]', 'stdio[0]', 'TestX.test_y'")
    status: OutcomeStatus
    message: str = Field(default="", description="why it did not pass (truncated)")

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class Verdict(BaseModel):
    """The result of one run.

    ``status``: ``passed`` iff every outcome passed (with no tests: the program ran to completion);
    ``timeout`` if the wall-clock or CPU limit stopped it; ``error`` if the program itself failed to
    load (syntax error, exception or crash at import) or broke the result protocol (a malformed,
    duplicated, misplaced or oversized result event: every outcome ``error``, pass fraction 0; the
    issue-23 "runtime error"); ``failed`` otherwise; ``infra_error`` when the
    sandbox's own machinery failed (a worker died, a process could not be created): never a pass,
    never a plain failure, and callers should retry or report it rather than score it.
    """

    model_config = ConfigDict(frozen=True)

    status: VerdictStatus
    tests: list[TestOutcome] = Field(default_factory=list)
    pass_fraction: float = Field(
        ge=0.0, le=1.0, description="passed outcomes / outcomes (no tests: 1.0 iff passed)"
    )
    stderr: str = Field(default="", description="the program's stderr, truncated to Limits.max_stderr_bytes")
    wall_s: float = Field(default=0.0, ge=0.0)
    cpu_s: float = Field(default=0.0, ge=0.0)
    detail: str = Field(default="", description="why the run ended as it did")
    memory_peak_mb: float | None = Field(
        default=None,
        description="peak memory of all the run's processes together (where a memory cgroup exists)",
    )

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @classmethod
    def infra_error(cls, detail: str, *, wall_s: float = 0.0) -> Verdict:
        return cls(status="infra_error", pass_fraction=0.0, detail=detail, wall_s=wall_s)
