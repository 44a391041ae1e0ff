"""Host-inspection helpers for the sandbox tests."""

from __future__ import annotations

import os

from sandbox import Sandbox


def processes_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid and not fields.get("State", "").strip().startswith("Z"):
            found.append(int(entry))
    return found


def worker_pids(sandbox: Sandbox) -> list[int]:
    return [w.proc.pid for w in sandbox._all]


def run_uids(sandbox: Sandbox) -> list[int]:
    return [w.capabilities["run_uid"] for w in sandbox._all if w.capabilities.get("uid_drop")]
