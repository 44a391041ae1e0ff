"""Safe, fast execution of untrusted programs against tests.

In: a program (source text), its `tasks.TestCase`s (call / stdio / assert / unittest) and optional
`Limits`. Out: a `Verdict` (passed / failed / timeout / error / infra_error, one `TestOutcome` per
test or unittest method, pass fraction, truncated stderr, wall and CPU time), decided in the
caller's process (`sandbox._verdict`) from what the program's side can only append to a pipe: the
outcome of call and stdio tests is always the caller's comparison with expected values that never
leave it. `Sandbox` keeps a bounded pool of separate worker processes; each program runs in its own
PID, mount and IPC namespaces (a private /proc, one fresh tmpfs for all its scratch places, a
read-only view of the host showing only the system directories and the Python installation), with
rlimits, a scrubbed environment, no network, a seccomp filter (no user namespaces) and, as root,
its own unprivileged uid and memory/pids cgroup; generated code never runs in the caller's
process. `capabilities()` reports which protections the machine allowed, with a ``warnings`` list
of the gaps. `SandboxConfig` says how to open a pool (`Sandbox.open`); `ProgramRunner` is the
interface an open pool offers. Imports only `tasks`.
"""

from sandbox.api import ProgramRunner, SandboxConfig, SandboxMode
from sandbox.limits import Limits, OutcomeStatus, TestOutcome, Verdict, VerdictStatus
from sandbox.pool import Sandbox, WorkerDied

__all__ = [
    "Limits",
    "OutcomeStatus",
    "ProgramRunner",
    "Sandbox",
    "SandboxConfig",
    "SandboxMode",
    "TestOutcome",
    "Verdict",
    "VerdictStatus",
    "WorkerDied",
]
