"""The four test kinds, verdict rules, comparison semantics, the async API and the worker pool."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from sandbox_support import processes_of_uid, run_uids, worker_pids

from sandbox import Limits, Sandbox, Verdict
from sandbox._harness import outputs_match, values_equal
from tasks import TestCase

DOUBLE = "def double(x):\n    return x * 2\n"


def call(args, expected, fn="double"):
    return TestCase(kind="call", args=args, expected=expected, fn_name=fn)


# ---- comparison semantics (trusted helper code, no program execution) ----------------------------
@pytest.mark.parametrize(
    ("got", "expected", "equal"),
    [
        (0.1 + 0.2, 0.3, True),
        (1.0000001, 1.0, True),
        (1.001, 1.0, False),
        (1e-12, 0.0, True),
        ((1, 2), [1, 2], True),
        ({"a": [1.0, 2]}, {"a": [1, 2]}, True),
        (True, 1, False),
        (1, True, False),
        (None, 0, False),
        ("1", 1, False),
        ([1, 2], [1, 2, 3], False),
        (float("nan"), float("nan"), True),
    ],
)
def test_values_equal(got, expected, equal):
    assert values_equal(got, expected) is equal


def test_values_equal_numpy_as_python_values():
    np = pytest.importorskip("numpy")
    assert values_equal(np.bool_(True), True)
    assert values_equal(np.int64(3), 3)
    assert values_equal(np.float32(0.5), 0.5)
    assert values_equal(np.array([1, 2]), [1, 2])
    assert not values_equal(np.bool_(False), True)


def test_values_equal_refuses_objects_with_their_own_eq():
    class AlwaysEqual:
        def __eq__(self, other):
            return True

    with pytest.raises(TypeError):
        values_equal(AlwaysEqual(), 3)


@pytest.mark.parametrize(
    ("got", "expected", "match"),
    [
        ("1 2\n3\n", "1 2\n3", True),
        ("1 2  \r\n3\n\n\n", "1 2\n3\n", True),
        ("0.3000000001\n", "0.3\n", True),
        ("1 2 3\n", "1\n2\n3\n", True),
        ("1 2\n", "1 3\n", False),
        ("", "0\n", False),
        ("yes\n", "Yes\n", False),
    ],
)
def test_outputs_match(got, expected, match):
    assert outputs_match(got, expected) is match


# ---- call tests ------------------------------------------------------------------------------------
def test_call_tests_pass_fraction_and_messages(sb: Sandbox):
    v = sb.run(DOUBLE, [call([2], 4), call([3], 7), call([0.1], 0.2), call(["ab"], "abab")])
    assert v.status == "failed"
    assert [o.status for o in v.tests] == ["passed", "failed", "passed", "passed"]
    assert v.pass_fraction == pytest.approx(0.75)
    assert "returned 6, expected 7" in v.tests[1].message
    assert v.wall_s > 0 and v.cpu_s >= 0


def test_call_uses_entry_point_when_fn_name_missing(sb: Sandbox):
    tests = [TestCase(kind="call", args=[5], expected=10)]
    assert sb.run(DOUBLE, tests, entry_point="double").status == "passed"
    v = sb.run(DOUBLE, tests)
    assert v.status == "failed" and "no function" in v.tests[0].message


def test_call_numpy_results_count_as_python_values(sb: Sandbox):
    pytest.importorskip("numpy")
    program = "import numpy as np\ndef f(x):\n    return np.bool_(x > 0), np.int64(x), np.float64(x) / 3\n"
    v = sb.run(program, [call([3], [True, 3, 1.0], fn="f")], Limits(wall_s=30, cpu_s=20))
    assert v.status == "passed", v


def test_call_object_with_permissive_eq_fails(sb: Sandbox):
    program = "class Eq:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return Eq()\n"
    v = sb.run(program, [call([1], 2, fn="f")])
    assert v.status == "failed" and "cannot compare" in v.tests[0].message


def test_call_exception_in_function_fails_only_that_test(sb: Sandbox):
    program = "def f(x):\n    return 10 // x\n"
    v = sb.run(program, [call([0], 0, fn="f"), call([5], 2, fn="f")])
    assert [o.status for o in v.tests] == ["failed", "passed"]
    assert "ZeroDivisionError" in v.tests[0].message


# ---- stdio tests -----------------------------------------------------------------------------------
def stdio(stdin, expected):
    return TestCase(kind="stdio", stdin=stdin, expected=expected)


def test_stdio_tests(sb: Sandbox):
    program = "a, b = map(int, input().split())\nprint(a + b)\n"
    v = sb.run(program, [stdio("1 2\n", "3\n"), stdio("5 5", "10"), stdio("1 1\n", "3\n")])
    assert [o.status for o in v.tests] == ["passed", "passed", "failed"]
    assert v.status == "failed"


def test_stdio_reads_fd0_and_exits_cleanly(sb: Sandbox):
    program = "import sys\ndata = open(0).read().split()\nprint(sum(map(int, data)))\nsys.exit(0)\n"
    assert sb.run(program, [stdio("1 2 3\n4\n", "10\n")]).status == "passed"


def test_stdio_nonzero_exit_is_an_error_outcome(sb: Sandbox):
    program = "print('partial')\nraise SystemExit(3)\n"
    v = sb.run(program, [stdio("", "partial\n")])
    assert v.tests[0].status == "error" and "exit status 3" in v.tests[0].message
    assert v.status == "failed"


def test_stdio_each_test_gets_a_fresh_process(sb: Sandbox):
    program = "import builtins\nbuiltins.COUNT = getattr(builtins, 'COUNT', 0) + 1\nprint(builtins.COUNT)\n"
    assert sb.run(program, [stdio("", "1\n"), stdio("", "1\n")]).status == "passed"


def test_stdio_output_cap(sb: Sandbox):
    program = "while True:\n    print('x' * 1000)\n"
    v = sb.run(program, [stdio("", "x\n")], Limits(max_output_bytes=64 * 1024))
    assert v.status == "failed" and "output over" in v.tests[0].message


# ---- assert and unittest tests -----------------------------------------------------------------------
def test_assert_scripts_are_one_outcome_each(sb: Sandbox):
    good = (
        "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(0) == 0\ncheck(double)\n"
    )
    bad = "def check(candidate):\n    assert candidate(1) == 3, 'one'\ncheck(double)\n"
    v = sb.run(DOUBLE, [TestCase(kind="assert", code=good), TestCase(kind="assert", code=bad)])
    assert [o.status for o in v.tests] == ["passed", "failed"]
    assert v.pass_fraction == 0.5 and "AssertionError: one" in v.tests[1].message


UNITTEST = """
import unittest

class TestDouble(unittest.TestCase):
    def test_two(self):
        self.assertEqual(double(2), 4)

    def test_neg(self):
        self.assertEqual(double(-1), -2)

    def test_wrong(self):
        self.assertEqual(double(1), 3)

class Helper:
    pass
"""


def test_unittest_methods_are_outcomes(sb: Sandbox):
    v = sb.run(DOUBLE, [TestCase(kind="unittest", code=UNITTEST)])
    names = {o.name: o.status for o in v.tests}
    assert names == {
        "TestDouble.test_two": "passed",
        "TestDouble.test_neg": "passed",
        "TestDouble.test_wrong": "failed",
    }
    assert v.pass_fraction == pytest.approx(2 / 3)
    assert v.status == "failed"


def test_unittest_source_that_breaks_is_one_failed_outcome(sb: Sandbox):
    v = sb.run(DOUBLE, [TestCase(kind="unittest", code="import no_such_module_xyz\n")])
    assert len(v.tests) == 1 and v.tests[0].status == "failed" and "ModuleNotFoundError" in v.tests[0].message


def test_mixed_kinds_in_one_run(sb: Sandbox):
    program = "import sys\ndef double(x):\n    return 2 * x\nif __name__ == '__main__':\n    print(double(int(input())))\n"
    tests = [
        call([4], 8),
        stdio("21\n", "42\n"),
        TestCase(kind="assert", code="assert double(1) == 2\n"),
        TestCase(kind="unittest", code=UNITTEST),
    ]
    v = sb.run(program, tests)
    assert [o.index for o in v.tests] == [0, 1, 2, 3, 3, 3]
    assert sum(o.passed for o in v.tests) == 5 and v.status == "failed"


# ---- verdict rules -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "program",
    ["def double(x) return x\n", "raise ValueError('at import')\n", "import no_such_module_xyz\n"],
    ids=["syntax", "exception", "import"],
)
def test_program_that_fails_to_load_is_an_error(sb: Sandbox, program: str):
    v = sb.run(program, [call([1], 2)])
    assert v.status == "error" and v.pass_fraction == 0.0
    assert v.tests[0].status == "error"


def test_no_tests_means_the_program_runs(sb: Sandbox):
    ok = sb.run("print('hi')\n", [])
    assert ok.status == "passed" and ok.pass_fraction == 1.0 and ok.tests == []
    bad = sb.run("raise RuntimeError('boom')\n", [])
    assert bad.status == "error" and bad.pass_fraction == 0.0 and "boom" in bad.stderr


def test_stderr_captured_and_truncated(sb: Sandbox):
    program = "import sys\nsys.stderr.write('E' * 100000)\ndef double(x):\n    return 2 * x\n"
    v = sb.run(program, [call([1], 2)], Limits(max_stderr_bytes=1000))
    assert v.status == "passed" and v.stderr == "E" * 1000


def test_timeout_keeps_outcomes_reported_before_it(sb: Sandbox):
    program = "import time\ndef f(x):\n    if x:\n        time.sleep(60)\n    return x\n"
    v = sb.run(program, [call([0], 0, fn="f"), call([1], 1, fn="f")], Limits(wall_s=3.0))
    assert v.status == "timeout"
    assert [o.status for o in v.tests] == ["passed", "timeout"] and v.pass_fraction == 0.5


# ---- async API and the pool --------------------------------------------------------------------------
async def test_run_many_keeps_order(sb: Sandbox):
    jobs = [(f"def double(x):\n    return x * {k}\n", [call([1], 2)]) for k in range(6)]
    verdicts = await sb.run_many(jobs)
    assert [v.status for v in verdicts] == ["failed", "failed", "passed", "failed", "failed", "failed"]
    v = await sb.arun(DOUBLE, [TestCase(kind="call", args=[1], expected=2)], entry_point="double")
    assert isinstance(v, Verdict) and v.passed


async def test_run_many_uses_the_workers_concurrently(sb: Sandbox):
    # observed from the host: both workers' run uids hold a live program at the same moment
    uids = run_uids(sb)
    if len(uids) < 2:
        pytest.skip("no dedicated run uids on this machine")
    task = asyncio.ensure_future(sb.run_many([("import time\ntime.sleep(2)\n", [])] * 2))
    both = False
    while not task.done() and not both:
        both = all(processes_of_uid(uid) for uid in uids)
        await asyncio.sleep(0.05)
    verdicts = await task
    assert all(v.passed for v in verdicts)
    assert both


def test_worker_death_is_infra_error_and_the_pool_recovers():
    with Sandbox(workers=1) as sandbox:
        (pid,) = worker_pids(sandbox)

        def kill_soon():
            time.sleep(0.5)
            os.kill(pid, signal.SIGKILL)

        import threading

        threading.Thread(target=kill_soon).start()
        v = sandbox.run("import time\ntime.sleep(5)\n", [])
        assert v.status == "infra_error" and not v.passed and v.pass_fraction == 0.0
        assert worker_pids(sandbox) != [pid]
        assert sandbox.run(DOUBLE, [call([1], 2)]).status == "passed"


def test_capabilities_report(sb: Sandbox):
    caps = sb.capabilities()
    for key in (
        "netns",
        "mountns",
        "private_tmp",
        "uid_drop",
        "rlimits",
        "fork_server",
        "notes",
        "warnings",
        "mode",
    ):
        assert key in caps
    assert caps["fork_server"] is True and caps["mode"] == "forkserver"
    assert set(caps["rlimits"]) == {"CPU", "AS", "NPROC", "FSIZE", "NOFILE", "CORE"}


def test_spawn_mode_gives_the_same_verdicts():
    tests = [call([2], 4), stdio("", "")]
    program = DOUBLE
    with Sandbox(workers=1, mode="spawn") as spawn:
        assert spawn.capabilities()["fork_server"] is False
        a = spawn.run(program, tests)
        b = spawn.run("def double(x) return\n", tests)
    assert a.status == "passed" and b.status == "error"


def test_closed_sandbox_refuses_runs():
    sandbox = Sandbox(workers=1)
    sandbox.close()
    with pytest.raises(RuntimeError):
        sandbox.run(DOUBLE, [])
    asyncio.run(asyncio.sleep(0))


def test_no_startable_worker_is_infra_error_until_one_starts(monkeypatch: pytest.MonkeyPatch):
    from sandbox.pool import WorkerDied

    with Sandbox(workers=1) as sandbox:
        (pid,) = worker_pids(sandbox)
        os.kill(pid, signal.SIGKILL)

        def refuse(self):
            raise WorkerDied("cannot start (test)")

        monkeypatch.setattr(Sandbox, "_start_worker", refuse)
        first = sandbox.run(DOUBLE, [call([1], 2)])  # the dead worker: infra_error, restart refused
        second = sandbox.run(DOUBLE, [call([1], 2)])  # no worker at all: infra_error, no hang
        assert first.status == "infra_error" and second.status == "infra_error"
        monkeypatch.undo()
        assert sandbox.run(DOUBLE, [call([1], 2)]).status == "passed"
