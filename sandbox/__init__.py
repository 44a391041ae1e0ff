"""Safe, fast execution of untrusted programs against tests.

In: a program (source text), its `tasks.TestCase`s (call / stdio / assert / unittest) and optional
`Limits`. Out: a `Verdict` (passed / failed / timeout / error / infra_error, one `TestOutcome` per
test or unittest method, pass fraction, truncated stderr, wall and CPU time). `Sandbox` keeps a
bounded pool of separate worker processes; each program runs in its own forked child with its own
session, rlimits, scratch directory, scrubbed environment, no network, the caller's directories
hidden and (as root) its own unprivileged uid and memory/pids cgroup; generated code never runs in
the caller's process. `capabilities()` reports which protections the machine allowed, with a
``warnings`` list of the gaps. Imports only `tasks`.
"""

from sandbox.limits import Limits, OutcomeStatus, TestOutcome, Verdict, VerdictStatus
from sandbox.pool import Sandbox, SandboxMode, WorkerDied

__all__ = [
    "Limits",
    "OutcomeStatus",
    "Sandbox",
    "SandboxMode",
    "TestOutcome",
    "Verdict",
    "VerdictStatus",
    "WorkerDied",
]
