"""Sandbox workers killed from outside: mid-run (that run is an ``infra_error``, the pool refills,
the run's processes die with their worker) and while idle (replaced before the next run, which then
succeeds instead of failing)."""

from __future__ import annotations

import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from sandbox import Limits, Sandbox
from tasks import TestCase

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
from sandbox_support import processes_of_uid, run_uids  # noqa: E402

DOUBLE = "def double(x):\n    return x * 2\n"
CALL = [TestCase(kind="call", args=[2], expected=4, fn_name="double")]


def _wait(predicate, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_worker_killed_mid_run_is_an_infra_error_and_the_pool_refills() -> None:
    with Sandbox(workers=1, limits=Limits(wall_s=120.0, cpu_s=120.0)) as sb:
        uids = run_uids(sb)
        pid = sb._all[0].proc.pid
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(sb.run, "import time\ntime.sleep(120)\n" + DOUBLE, CALL)
            _wait(lambda: bool(psutil.Process(pid).children()))  # the run's process exists
            run_children = psutil.Process(pid).children(recursive=True)
            os.kill(pid, signal.SIGKILL)
            verdict = future.result(timeout=60)
        assert verdict.status == "infra_error" and "worker" in verdict.detail, verdict
        assert verdict.pass_fraction == 0.0
        assert len(sb._all) == 1 and sb._all[0].proc.pid != pid and sb._all[0].alive()  # refilled
        psutil.wait_procs(run_children, timeout=10)
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in run_children)
        for uid in uids:
            assert processes_of_uid(uid) == []
        assert sb.run(DOUBLE, CALL).status == "passed"


def test_worker_killed_while_idle_is_replaced_before_the_next_run() -> None:
    with Sandbox(workers=2) as sb:
        dead = sb._all[-1]  # the last started is on top of the LIFO idle queue
        os.kill(dead.proc.pid, signal.SIGKILL)
        _wait(lambda: not dead.alive())
        verdicts = [sb.run(DOUBLE, CALL) for _ in range(3)]  # the idle queue hands the dead worker out first
        assert [v.status for v in verdicts] == ["passed"] * 3, [v.detail for v in verdicts]
        assert len(sb._all) == 2 and dead not in sb._all and all(w.alive() for w in sb._all)
