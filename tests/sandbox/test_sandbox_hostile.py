"""Hostile-program battery (issue 3, item 4): each program is contained with the right verdict and
the host is unharmed (no process of the run left, no file outside the run's scratch space, the
workers alive, the network and the parent's environment out of reach)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sandbox_support import processes_of_uid, run_uids, worker_pids

from sandbox import Limits, Sandbox
from tasks import TestCase

# Programs expected to time out get a short wall; the others a long one, so that a loaded machine
# cannot turn their verdict into a timeout.
LIMITS = Limits(wall_s=20.0, cpu_s=5.0, max_procs=16, memory_mb=256)
SHORT = LIMITS.model_copy(update={"wall_s": 1.0, "cpu_s": 1.0})
REPO = Path(__file__).resolve().parents[2]
DOUBLE = "def double(x):\n    return x * 2\n"
CALL = [TestCase(kind="call", args=[2], expected=4, fn_name="double")]


@dataclass
class Case:
    program: str
    expected: str
    tests: list[TestCase] = field(default_factory=lambda: list(CALL))


TOKEN = secrets.token_hex(6)
OUTSIDE = [
    REPO / f"pwned-{TOKEN}",
    Path(f"/tmp/pwned-{TOKEN}"),
    Path(f"/var/tmp/pwned-{TOKEN}"),
    Path(f"/dev/shm/pwned-{TOKEN}"),
    Path(f"/root/pwned-{TOKEN}"),
    Path(f"/pwned-{TOKEN}"),
]

BATTERY = {
    "infinite_loop": Case("while True:\n    pass\n", "timeout"),
    "fork_bomb": Case(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", "timeout"
    ),
    "memory_bomb_at_once": Case("x = bytearray(64 << 30)\n" + DOUBLE, "error"),
    "memory_bomb_growing": Case(
        "xs = []\nwhile True:\n    xs.append(bytearray(64 << 20))\n" + DOUBLE, "error"
    ),
    "huge_stdout": Case("while True:\n    print('x' * 65536)\n", "timeout"),
    "huge_stderr": Case("import sys\nwhile True:\n    sys.stderr.write('x' * 65536)\n", "error"),
    "huge_file": Case("with open('big', 'wb') as f:\n    f.write(b'x' * (256 << 20))\n" + DOUBLE, "error"),
    "deep_recursion_segv": Case(
        # through a C call (map) so each level uses C stack: overflows it, SIGSEGV
        "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return next(map(f, [n + 1]))\nf(0)\n"
        + DOUBLE,
        "error",
    ),
    "deep_recursion_in_test": Case("def double(x):\n    return double(x + 1)\n", "failed"),
    "os_exit_at_import": Case("import os\nos._exit(0)\n" + DOUBLE, "error"),
    "os_exit_in_test": Case("import os\ndef double(x):\n    os._exit(0)\n", "failed"),
    "system_exit_at_import": Case("raise SystemExit(0)\n" + DOUBLE, "error"),
    "system_exit_in_test": Case("import sys\ndef double(x):\n    sys.exit(0)\n", "failed"),
    "keyboard_interrupt": Case("raise KeyboardInterrupt\n" + DOUBLE, "error"),
    "keyboard_interrupt_in_test": Case("def double(x):\n    raise KeyboardInterrupt\n", "failed"),
    "sigterm_ignored": Case(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n" + DOUBLE,
        "timeout",
    ),
    "sleep_past_deadline": Case("import time\ntime.sleep(60)\n" + DOUBLE, "timeout"),
    "segfault_ctypes": Case("import ctypes\nctypes.string_at(0)\n" + DOUBLE, "error"),
    "segfault_in_test": Case("import ctypes\ndef double(x):\n    return ctypes.string_at(0)\n", "failed"),
    "detached_daemon": Case(
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        for i in range(600):\n"
        "            time.sleep(0.1)\n"
        f"            open('/tmp/daemon-{TOKEN}', 'a').write('alive')\n"
        "    os._exit(0)\n"
        "os.wait()\n" + DOUBLE,
        "passed",
    ),
    "write_outside_workdir": Case(
        "import os\n"
        f"for p in {[str(p) for p in OUTSIDE]!r}:\n"
        "    try:\n"
        "        open(p, 'w').write('pwned')\n"
        "    except OSError:\n"
        "        pass\n" + DOUBLE,
        "passed",
    ),
}


def _host_clean(sb: Sandbox, workers_before: list[int]) -> None:
    for uid in run_uids(sb):
        assert processes_of_uid(uid) == [], f"processes of run uid {uid} left behind"
    assert worker_pids(sb) == workers_before, "a worker died"
    for path in OUTSIDE + [Path(f"/tmp/daemon-{TOKEN}")]:
        assert not path.exists(), f"{path} written on the host"
    subprocess.run([sys.executable, "-c", "pass"], check=True)  # the host can still start processes


@pytest.mark.parametrize("name", sorted(BATTERY))
def test_hostile_program_is_contained(sb: Sandbox, name: str):
    case = BATTERY[name]
    before = worker_pids(sb)
    verdict = sb.run(case.program, case.tests, SHORT if case.expected == "timeout" else LIMITS)
    assert verdict.status == case.expected, (verdict.status, verdict.detail, verdict.stderr[-300:])
    assert not verdict.passed or case.expected == "passed"
    assert len(verdict.stderr) <= LIMITS.max_stderr_bytes
    _host_clean(sb, before)
    assert sb.run(DOUBLE, CALL).status == "passed"  # and the same worker pool still works


def test_reading_the_parents_environment_finds_no_secret(monkeypatch: pytest.MonkeyPatch):
    canary = f"restrl-canary-{secrets.token_hex(8)}"
    monkeypatch.setenv("RESTRL_TEST_SECRET", canary)
    host = subprocess.Popen(["sleep", "30"], env={"RESTRL_TEST_SECRET": canary, "PATH": "/usr/bin:/bin"})
    program = (
        "import os\n"
        "def leaked(canary):\n"
        "    found = [k for k, v in os.environ.items() if canary in v]\n"
        "    for pid in os.listdir('/proc'):\n"
        "        for name in ('environ', 'cmdline'):\n"
        "            try:\n"
        "                with open(f'/proc/{pid}/{name}', 'rb') as f:\n"
        "                    if canary.encode() in f.read():\n"
        "                        found.append(f'{pid}/{name}')\n"
        "            except OSError:\n"
        "                pass\n"
        "    return found\n"
    )
    try:
        with Sandbox(workers=1, limits=LIMITS) as sandbox:  # started after the secret was set
            verdict = sandbox.run(
                program, [TestCase(kind="call", args=[canary], expected=[], fn_name="leaked")]
            )
        assert verdict.status == "passed", verdict.tests[0].message
        # the check itself works: the same scan in a normal process finds the host's copy
        scan = program + f"print(leaked({canary!r}))\n"
        out = subprocess.run([sys.executable, "-c", scan], capture_output=True, text=True, check=True).stdout
        assert str(host.pid) in out
    finally:
        host.kill()
        host.wait()


def test_socket_to_localhost_is_blocked(sb: Sandbox):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        program = (
            "import socket\n"
            "def probe(port):\n"
            "    try:\n"
            "        s = socket.create_connection(('127.0.0.1', port), timeout=1)\n"
            "        s.sendall(b'pwned')\n"
            "        return 'connected'\n"
            "    except OSError:\n"
            "        return 'blocked'\n"
        )
        verdict = sb.run(
            program, [TestCase(kind="call", args=[port], expected="blocked", fn_name="probe")], LIMITS
        )
        assert verdict.status == "passed", verdict.tests[0].message
        with pytest.raises(TimeoutError):
            server.accept()
    if not sb.capabilities()["netns"]:
        pytest.fail("no network namespace on this machine: the sandbox cannot block the network")


def test_killing_the_parent_fails(sb: Sandbox):
    before = worker_pids(sb)
    targets = [os.getpid(), *before]
    program = (
        "import os, signal\n"
        "def attack(targets):\n"
        "    hit = []\n"
        "    for pid in [os.getppid(), 1, *targets]:\n"
        "        try:\n"
        "            os.kill(pid, signal.SIGKILL)\n"
        "            hit.append(pid)\n"
        "        except OSError:\n"
        "            pass\n"
        "    for pid in os.listdir('/proc'):\n"
        "        if pid.isdigit() and int(pid) != os.getpid():\n"
        "            try:\n"
        "                os.kill(int(pid), signal.SIGTERM)\n"
        "                hit.append(int(pid))\n"
        "            except OSError:\n"
        "                pass\n"
        "    return hit\n"
    )
    verdict = sb.run(program, [TestCase(kind="call", args=[targets], expected=[], fn_name="attack")], LIMITS)
    assert verdict.status == "passed", verdict.tests[0].message
    _host_clean(sb, before)


async def test_two_programs_at_once_cannot_see_each_others_files(sb: Sandbox):
    secret = secrets.token_hex(8)
    writer = (
        "import os, time\n"
        f"open('mine-{secret}', 'w').write('{secret}')\n"
        f"open('/tmp/also-{secret}', 'w').write('{secret}')\n"
        "time.sleep(3)\n"
        f"assert open('mine-{secret}').read() == '{secret}'\n"
    )
    reader = (
        "import os, time\n"
        "def find(secret):\n"
        "    time.sleep(0.5)\n"
        "    hits = []\n"
        "    roots = ['/tmp', '/var/tmp', '/dev/shm', os.path.dirname(os.getcwd())]\n"
        "    for pid in os.listdir('/proc'):\n"
        "        if pid.isdigit():\n"
        "            roots += [f'/proc/{pid}/cwd', f'/proc/{pid}/root/tmp']\n"
        "    for root in roots:\n"
        "        for dirpath, dirs, files in os.walk(root, onerror=lambda e: None):\n"
        "            hits += [os.path.join(dirpath, f) for f in files if secret in f]\n"
        "            if dirpath.count('/') > 8:\n"
        "                dirs[:] = []\n"
        "    return hits\n"
    )
    w, r = await sb.run_many(
        [(writer, []), (reader, [TestCase(kind="call", args=[secret], expected=[], fn_name="find")])],
        Limits(wall_s=30.0, cpu_s=5.0),
    )
    assert w.status == "passed", w.stderr
    assert r.status == "passed", r.tests[0].message


def test_hidden_directories_are_out_of_reach():
    # under a system directory: every non-system top-level directory (the repository's included)
    # is hidden anyway, so only there does ``hide`` make a difference a probe can see
    secret_dir = Path(tempfile.mkdtemp(dir="/var/lib", prefix=".restrl-hidden-"))
    try:
        secret_dir.chmod(0o755)
        secret = secret_dir / "hidden_tests.jsonl"
        secret.write_text("expected answers\n")
        secret.chmod(0o644)
        program = (
            "def peek(path):\n"
            "    try:\n"
            "        return open(path).read()\n"
            "    except OSError as exc:\n"
            "        return type(exc).__name__\n"
        )
        test = [TestCase(kind="call", args=[str(secret)], expected="FileNotFoundError", fn_name="peek")]
        with Sandbox(workers=1, limits=LIMITS, hide=[secret_dir]) as hidden:
            verdict = hidden.run(program, test)
        assert verdict.status == "passed", verdict.tests[0].message
        with Sandbox(workers=1, limits=LIMITS, hide=[]) as visible:  # the probe can see it otherwise
            verdict = visible.run(program, test)
        assert verdict.status == "failed" and "expected answers" in verdict.tests[0].message
    finally:
        shutil.rmtree(secret_dir)


def test_memory_bomb_spread_over_processes_is_bounded_in_total(sb: Sandbox):
    """RLIMIT_AS is per process; the run's memory cgroup bounds the sum (6 x 100 MiB > 256 MiB)."""
    if "memory" not in sb.capabilities().get("cgroups", []):
        pytest.skip("no memory cgroup on this machine: only the per-process RLIMIT_AS applies")
    program = (
        "import os, time\n"
        "kids = []\n"
        "for _ in range(6):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        x = bytearray(100 << 20)\n"
        "        time.sleep(0.5)\n"
        "        os._exit(0)\n"
        "    kids.append(pid)\n"
        "codes = [os.waitpid(k, 0)[1] for k in kids]\n"
        "def exit_codes():\n"
        "    return codes\n"
    )
    before = worker_pids(sb)
    test = [TestCase(kind="call", args=[], expected=[0] * 6, fn_name="exit_codes")]
    verdict = sb.run(program, test, LIMITS)
    assert verdict.status in ("failed", "error"), verdict  # some processes were killed, or the parent
    assert verdict.memory_peak_mb is not None and verdict.memory_peak_mb <= LIMITS.memory_mb
    _host_clean(sb, before)


# Scans every readable anonymous mapping of its own process (heap, arenas, freed buffers, stacks).
STEAL = (
    "import ctypes, re\n"
    "def steal():\n"
    "    pattern = re.compile(rb'answer-[0-9a-f]{16}')\n"
    "    for line in open('/proc/self/maps'):\n"
    "        fields = line.split()\n"
    "        anonymous = fields[4] == '0' and (len(fields) < 6 or fields[5] in ('[heap]', '[stack]'))\n"
    "        if 'r' not in fields[1] or not anonymous:\n"
    "            continue\n"
    "        start, end = (int(x, 16) for x in fields[0].split('-'))\n"
    "        found = pattern.search(ctypes.string_at(start, end - start))\n"
    "        if found:\n"
    "            return found.group().decode()\n"
    "    return 'not found'\n"
)


def test_memory_scan_finds_what_is_there(sb: Sandbox):
    """The probe works: a token the program's process does hold (its argument) is found."""
    token = f"probe-{secrets.token_hex(8)}"
    verdict = sb.run(
        STEAL.replace("def steal():", "def steal(x):").replace("rb'answer-", "rb'probe-"),
        [TestCase(kind="call", args=[token], expected=token, fn_name="steal")],
        LIMITS,
    )
    assert verdict.status == "passed", verdict.tests[0].message


def test_call_tests_expected_values_are_not_in_the_programs_memory(sb: Sandbox):
    expected = f"answer-{secrets.token_hex(8)}"
    verdict = sb.run(STEAL, [TestCase(kind="call", args=[], expected=expected, fn_name="steal")], LIMITS)
    assert verdict.status == "failed" and "not found" in verdict.tests[0].message


def test_stdio_tests_expected_output_is_not_in_the_programs_memory(sb: Sandbox):
    expected = f"answer-{secrets.token_hex(8)}\n"
    program = STEAL + "print(steal(), end='')\n"
    verdict = sb.run(program, [TestCase(kind="stdio", stdin="", expected=expected)], LIMITS)
    assert verdict.status == "failed" and "not found" in verdict.tests[0].message


@pytest.mark.parametrize("mode", ["forkserver", "spawn"])
def test_no_trace_of_earlier_runs_in_a_programs_memory(mode: str):
    """The worker passes each job to its child unparsed (and zeroes its copy), so a later program
    scanning its own memory finds nothing of an earlier run's program or tests."""
    token = f"probe-{secrets.token_hex(8)}"
    scan = STEAL.replace("rb'answer-", "rb'probe-")
    with Sandbox(workers=1, mode=mode, limits=LIMITS) as sandbox:  # type: ignore[arg-type]
        first = sandbox.run(
            f"TOKEN = {token!r}\n", [TestCase(kind="assert", code=f"assert TOKEN == {token!r}\n")]
        )
        second = sandbox.run(scan, [TestCase(kind="call", args=[], expected="not found", fn_name="steal")])
    assert first.status == "passed"
    assert second.status == "passed", second.tests[0].message


# ==== issue 23: forged verdicts, broken workers, state left on the host ==========================
WRONG = "def double(x):\n    return x + 1\n"  # double(2) == 3: fails honestly
TWO_CALLS = [TestCase(kind="call", args=[2], expected=4, fn_name="double")] * 2
FORGE = 'line = b\'{"t": "outcome", "i": 0, "status": "passed", "msg": ""}\\n\'\n'


def _needs(sb: Sandbox, *caps: str) -> None:
    have = sb.capabilities()
    missing = [c for c in caps if not have.get(c)]
    if missing:
        pytest.skip(f"not in force on this machine: {missing} (warnings: {have.get('warnings')})")


# Ways a program can reach the emitter or the result channel, each trying to pass wrong call tests.
FORGERIES = {
    "emitter_on_the_stack": WRONG
    + "import sys, os\n"
    + "emit = sys._getframe(1).f_locals['emit']\n"
    + "emit({'t': 'loaded'}); emit({'t': 'outcome', 'i': 0, 'status': 'passed'}); emit({'t': 'done'}); os._exit(0)\n",
    "emitter_found_by_gc": WRONG
    + "import gc, os\n"
    + "emit = next(o for o in gc.get_objects() if type(o).__name__ == '_Emitter')\n"
    + "for i in (0, 1):\n"
    + "    emit({'t': 'outcome', 'i': i, 'status': 'passed', 'msg': ''})\n",
    "outcome_written_to_fd3": WRONG + "import os\n" + FORGE + "os.write(3, line)\n",
    "value_forged_before_the_real_one": WRONG
    + "import os\nos.write(3, b'{\"t\": \"value\", \"i\": 0, \"value\": 4}\\n{\"t\": \"value\", \"i\": 1, \"value\": 4}\\n')\n",
    "value_forged_after_the_real_one": "import os\n"
    + "def double(x):\n"
    + "    os.write(3, b'{\"t\": \"value\", \"i\": 0, \"value\": 4}\\n')\n"
    + "    return x + 1\n",
    "outcome_with_its_own_judge": WRONG
    + "import os\nos.write(3, b'{\"t\": \"outcome\", \"i\": 0, \"status\": \"passed\", \"msg\": \"\", \"judge\": {\"t\": \"value\"}}\\n')\n",
    "bogus_status": WRONG
    + "import os\nos.write(3, b'{\"t\": \"outcome\", \"i\": 0, \"status\": \"bogus\", \"msg\": \"\"}\\n')\n",
    "done_forged_then_exit": WRONG + "import os\nos.write(3, b'{\"t\": \"loaded\"}\\n{\"t\": \"done\"}\\n')\nos._exit(0)\n",
    "garbage_on_fd3": WRONG + "import os\nos.write(3, b'\\x00\\xff not json\\n')\n",
    "deeply_nested_event": WRONG + "import os\nos.write(3, b'[' * 100000 + b'\\n')\n",
    "index_out_of_range": WRONG + "import os\nos.write(3, b'{\"t\": \"value\", \"i\": 99, \"value\": 4}\\n')\n",
    "bool_index": WRONG + "import os\nos.write(3, b'{\"t\": \"value\", \"i\": true, \"value\": 4}\\n')\n",
    "reopened_fd3": WRONG
    + "import os\n"
    + FORGE
    + "for mode in (os.O_WRONLY, os.O_RDWR):\n"
    + "    try:\n"
    + "        fd = os.open('/proc/self/fd/3', mode)\n"
    + "        os.write(fd, line)\n"
    + "    except OSError:\n"
    + "        pass\n",
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
@pytest.mark.parametrize("mode", ["forkserver", "spawn"])
def test_a_wrong_program_cannot_report_its_call_tests_as_passed(name: str, mode: str, request):
    sandbox = request.getfixturevalue("sb") if mode == "forkserver" else request.getfixturevalue("spawn_sb")
    verdict = sandbox.run(FORGERIES[name], TWO_CALLS, LIMITS)
    assert verdict.status in ("failed", "error"), (verdict.status, verdict.detail)
    assert verdict.pass_fraction == 0.0 and not any(o.passed for o in verdict.tests), verdict
    assert sandbox.run(DOUBLE, TWO_CALLS).status == "passed"


@pytest.fixture(scope="module")
def spawn_sb():
    with Sandbox(workers=1, mode="spawn", limits=LIMITS) as sandbox:
        yield sandbox


def test_the_issue_reproducer_is_a_protocol_violation(sb: Sandbox):
    verdict = sb.run(FORGERIES["emitter_on_the_stack"], TWO_CALLS, LIMITS)
    assert verdict.status == "error" and "result protocol violated" in verdict.detail


def test_the_result_channel_cannot_be_rewritten(sb: Sandbox):
    """Finding 2: ftruncate + pwrite on fd 3 erased the real 'wrong answer' of a stdio test."""
    program = (
        "import os, sys\n"
        "def double(x):\n"
        "    attempts = []\n"
        "    for name, op in [('ftruncate', lambda: os.ftruncate(3, 0)), ('lseek', lambda: os.lseek(3, 0, 0)),\n"
        "                     ('pwrite', lambda: os.pwrite(3, b'{}', 0)), ('read', lambda: os.read(3, 10)),\n"
        "                     ('reopen_read', lambda: os.open('/proc/self/fd/3', os.O_RDONLY))]:\n"
        "        try:\n"
        "            op()\n"
        "            attempts.append(name)\n"
        "        except OSError:\n"
        "            pass\n"
        "    return attempts\n"
        "if __name__ == '__main__':\n"
        "    print('WRONG ANSWER')\n"
    )
    tests = [
        TestCase(kind="stdio", stdin="", expected="42\n"),
        TestCase(kind="call", args=[2], expected=[], fn_name="double"),
    ]
    verdict = sb.run(program, tests, LIMITS)
    assert [o.status for o in verdict.tests] == ["failed", "passed"], verdict.tests
    assert verdict.status == "failed" and "WRONG ANSWER" in verdict.tests[0].message


def test_a_stdio_process_cannot_reach_the_harness_channel(sb: Sandbox):
    """The stdio test's process has no fd 3; its parent's (the harness) is out of reach too."""
    _needs(sb, "uid_drop")
    program = (
        "import os\n"
        "line = b'{\"t\": \"output\", \"i\": 0, \"out\": \"NDIK\"}\\n'\n"  # base64 of "42\n"
        "for path in ('/proc/self/fd/3', f'/proc/{os.getppid()}/fd/3'):\n"
        "    try:\n"
        "        fd = os.open(path, os.O_WRONLY)\n"
        "        os.write(fd, line)\n"
        "    except OSError:\n"
        "        pass\n"
        "print('nope')\n"
    )
    verdict = sb.run(program, [TestCase(kind="stdio", stdin="", expected="42\n")], LIMITS)
    assert verdict.status == "failed" and "nope" in verdict.tests[0].message, verdict


def test_oversized_and_numerous_events_are_capped(sb: Sandbox):
    """Finding 7: 20,001 outcomes for one test and an 8 MiB message."""
    many = (
        "import unittest\n"
        "class T(unittest.TestCase):\n"
        "    pass\n"
        "for k in range(20001):\n"
        "    setattr(T, f'test_{k}', lambda self: None)\n"
    )
    verdict = sb.run(DOUBLE, [TestCase(kind="unittest", code=many)], LIMITS)
    assert verdict.status == "error" and "more than" in verdict.detail, verdict.detail
    assert len(verdict.tests) == 1 and verdict.pass_fraction == 0.0
    huge = "raise AssertionError('x' * (8 << 20))\n"
    verdict = sb.run(DOUBLE, [TestCase(kind="assert", code=huge)], LIMITS)
    assert verdict.status == "failed" and len(verdict.tests[0].message) <= 600
    flood = DOUBLE + "import os\nwhile True:\n    os.write(3, b'x' * (1 << 20))\n"
    verdict = sb.run(flood, CALL, LIMITS)
    assert verdict.status == "error" and "bytes of results" in verdict.detail, verdict.detail
    assert verdict.wall_s < LIMITS.wall_s


async def test_run_many_keeps_every_other_verdict(sb: Sandbox):
    """Finding 6: one malformed program took down the whole batch."""
    jobs = []
    for k in range(12):
        hostile = FORGERIES[sorted(FORGERIES)[k % len(FORGERIES)]]
        jobs.append((hostile, TWO_CALLS) if k % 3 == 0 else (DOUBLE, TWO_CALLS))
    verdicts = await sb.run_many(jobs, LIMITS)
    assert [v.status for k, v in enumerate(verdicts) if k % 3] == ["passed"] * 8
    assert all(v.status in ("failed", "error") for k, v in enumerate(verdicts) if k % 3 == 0)


def test_the_training_reward_survives_any_program(sb: Sandbox):
    from tasks.problem import Problem
    from training.rewards import TestRewarder

    problem = Problem(id="double", prompt="double x", entry_point="double", tests=TWO_CALLS)
    programs = [DOUBLE, *FORGERIES.values()]
    scored = TestRewarder(sb, mode="rewrite", limits=LIMITS).score([(problem, p) for p in programs])
    assert scored[0].reward == 1.0
    assert [s.reward for s in scored[1:]] == [0.0] * len(FORGERIES)
    assert not any(s.infra_error for s in scored)


# ---- cleanup that nothing breaks, no descriptor leak ------------------------------------------------
CLEANUP_BREAKERS = {
    "deep_chain_in_tmp": "import os\nos.chdir('/tmp')\nfor _ in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\n",
    "deep_chain_in_workdir": "import os\nfor _ in range(5000):\n    os.mkdir('d')\n    os.chdir('d')\n",
    "closed_modes": "import os\n"
    "for base in ('/tmp', '/dev/shm', '/var/tmp', '.'):\n"
    "    os.makedirs(f'{base}/a/b/c', exist_ok=True)\n"
    "    open(f'{base}/a/b/c/f', 'w').write('x')\n"
    "    for p in (f'{base}/a/b/c/f', f'{base}/a/b/c', f'{base}/a/b', f'{base}/a'):\n"
    "        os.chmod(p, 0)\n",
    "fifos_and_sockets": "import os, socket\n"
    "for base in ('/tmp', '/dev/shm', '.'):\n"
    "    os.mkfifo(f'{base}/fifo')\n"
    "    s = socket.socket(socket.AF_UNIX)\n"
    "    s.bind(f'{base}/sock')\n",
    "many_files": "import os\n"
    "made = 0\n"
    "try:\n"
    "    for k in range(40000):\n"
    "        open(f'/tmp/f{k}', 'w').close()\n"
    "        made += 1\n"
    "except OSError:\n"
    "    pass\n"
    "assert made < 40000, 'the file count is not bounded'\n",
    "sticky_and_immutable_attempts": "import os, subprocess\n"
    "os.mkdir('/tmp/s', 0o1777)\n"
    "subprocess.run(['chattr', '+i', '/tmp/s'], capture_output=True)\n",
}


def _fds(pid: int | str) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_no_directory_tree_mode_fifo_or_file_count_breaks_cleanup():
    """Finding 3: a 1,500-deep chain under /tmp broke a worker for good (and leaked 2 fds a run)."""
    with Sandbox(workers=1, limits=LIMITS) as sandbox:
        (worker,) = worker_pids(sandbox)
        fds_worker, fds_here = _fds(worker), _fds("self")
        for name, program in CLEANUP_BREAKERS.items():
            verdict = sandbox.run(program, [], LIMITS)
            assert verdict.status in ("passed", "error"), (name, verdict.detail, verdict.stderr[-300:])
            after = sandbox.run(
                "import os\ndef leftovers():\n"
                "    return sorted(os.listdir('/tmp')) + sorted(os.listdir('/dev/shm')) + sorted(os.listdir('/var/tmp'))\n",
                [TestCase(kind="call", args=[], expected=["restrl-run"], fn_name="leftovers")],
            )
            assert after.status == "passed", (name, after.tests[0].message)
            assert worker_pids(sandbox) == [worker], f"{name}: the worker was replaced"
        assert _fds(worker) == fds_worker and _fds("self") == fds_here


def test_no_descriptor_leak_over_many_runs(sb: Sandbox):
    before = {pid: _fds(pid) for pid in worker_pids(sb)}
    here = _fds("self")
    programs = [DOUBLE, WRONG, "raise SystemExit(3)\n", CLEANUP_BREAKERS["deep_chain_in_tmp"], FORGERIES["garbage_on_fd3"]]
    for k in range(60):
        sb.run(programs[k % len(programs)], CALL, LIMITS)
    assert {pid: _fds(pid) for pid in worker_pids(sb)} == before
    assert _fds("self") == here


def test_a_worker_that_fails_its_cleanup_is_replaced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The worker's health check (leftover process, descriptor, cgroup member) fails: the run keeps
    its verdict and the pool replaces the worker instead of reusing it."""
    import sandbox.pool as pool

    script = tmp_path / "unhealthy_worker.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'sandbox')!r})\n"
        "import _worker\n"
        "_worker.Worker.check_health = lambda self: False\n"
        "_worker.main()\n"
    )
    script.chmod(0o755)
    monkeypatch.setattr(pool, "WORKER_SCRIPT", script)
    with Sandbox(workers=1, limits=LIMITS, hide=[]) as sandbox:
        first = worker_pids(sandbox)
        assert sandbox.run(DOUBLE, CALL).status == "passed"
        second = worker_pids(sandbox)
        assert second != first and len(second) == 1
        assert sandbox.run(WRONG, CALL).status == "failed"
        assert worker_pids(sandbox) != second


def test_remove_tree_handles_what_breaks_rmtree(tmp_path: Path):
    """The fallback removal (no per-run file system): iterative, any depth, mode, FIFO."""
    sys.path.insert(0, str(REPO / "sandbox"))
    from _worker import remove_tree

    root = tmp_path / "run"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(3000):  # far beyond PATH_MAX and the recursion limit
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    os.mkfifo(root / "fifo")
    for k in range(2000):
        (root / f"f{k}").touch()
    (root / "closed").mkdir()
    (root / "closed" / "x").touch()
    (root / "closed").chmod(0)
    remove_tree(str(root))
    assert not root.exists()


# ---- nothing persists on the host, nothing shared between runs --------------------------------------
def _world_writable_host_paths() -> list[str]:
    """``find / -xdev -perm -0002`` over every mount but /proc and /sys (the host's view)."""
    found = []
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mount in sorted(set(mounts)):
        if mount.startswith(("/proc", "/sys")) or not os.path.isdir(mount):
            continue
        out = subprocess.run(
            ["find", mount, "-xdev", "-perm", "-0002", "-not", "-type", "l"],
            capture_output=True, text=True, timeout=300,
        ).stdout
        found += out.split()
    return sorted(set(found))


SCRATCH = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"]
AUDIT = (
    "import os, stat\n"
    "def audit(candidates):\n"
    "    ok_devices = {'/dev/null', '/dev/zero', '/dev/full', '/dev/random', '/dev/urandom', '/dev/tty'}\n"
    "    scratch = ('/tmp', '/var/tmp', '/dev/shm', '/run')\n"
    "    bad = [p for p in candidates if os.path.lexists(p) and os.access(p, os.W_OK)\n"
    "           and not p.startswith(scratch) and p not in ok_devices]\n"
    "    for root, dirs, files in os.walk('/', onerror=lambda e: None):\n"
    "        if root in ('/proc', '/sys') or root.startswith(scratch):\n"
    "            dirs[:] = []\n"
    "            continue\n"
    "        if os.access(root, os.W_OK):\n"
    "            bad.append(root)\n"
    "        for name in files:\n"
    "            path = os.path.join(root, name)\n"
    "            try:\n"
    "                mode = os.lstat(path).st_mode\n"
    "            except OSError:\n"
    "                continue\n"
    "            if not stat.S_ISREG(mode) and not stat.S_ISLNK(mode) and os.access(path, os.W_OK) and path not in ok_devices:\n"
    "                bad.append(path)\n"
    "    for line in open('/proc/self/mountinfo'):\n"
    "        point = line.split()[4]\n"
    "        if not point.startswith(scratch + ('/proc',)) and os.path.isdir(point) and not os.statvfs(point).f_flag & os.ST_RDONLY:\n"
    "            bad.append('rw mount ' + point)\n"
    "    return sorted(set(bad))\n"
)


def test_no_world_writable_host_path_is_writable(sb: Sandbox):
    """Finding 4 and its generalisation: every world-writable path on the host (the audit below)
    and everything a program can see (walked from inside) is read-only or the run's own scratch."""
    _needs(sb, "readonly_root", "private_tmp")
    host = _world_writable_host_paths()
    assert "/run/lock" in host or not os.path.isdir("/run/lock")  # the audit finds what the issue found
    verdict = sb.run(AUDIT, [TestCase(kind="call", args=[host], expected=[], fn_name="audit")],
                     LIMITS.model_copy(update={"wall_s": 120.0, "cpu_s": 100.0}))
    assert verdict.status == "passed", verdict.tests[0].message


def test_scratch_writes_do_not_persist_and_are_bounded_in_total(sb: Sandbox):
    """Finding 4: 5 x 16 MiB in /run/lock outlived the run; nothing bounded the total."""
    _needs(sb, "private_tmp")
    writer = (
        "import os\n"
        "def fill(places):\n"
        "    total = 0\n"
        "    for place in places:\n"
        "        for k in range(64):\n"
        "            try:\n"
        "                with open(f'{place}/big-{k}', 'wb') as f:\n"
        "                    f.write(b'x' * (16 << 20))\n"
        "            except OSError:\n"
        "                return total\n"
        "            total += 16\n"
        "    return total\n"
    )
    test = [TestCase(kind="call", args=[SCRATCH], expected=-1, fn_name="fill")]
    verdict = sb.run(writer, test, LIMITS.model_copy(update={"memory_mb": 1024}))
    written = int(verdict.tests[0].message.split("returned ")[1].split(",")[0])
    assert 0 < written <= 256, written  # one tmpfs of tmp_mb (256 MiB) for all four places together
    reader = "import os\ndef left(places):\n    return [p for p in places for n in os.listdir(p) if n.startswith('big-')]\n"
    for _ in range(2):  # both workers
        verdict = sb.run(reader, [TestCase(kind="call", args=[SCRATCH], expected=[], fn_name="left")], LIMITS)
        assert verdict.status == "passed", verdict.tests[0].message
    for place in SCRATCH:
        if os.path.isdir(place):
            assert not [n for n in os.listdir(place) if n.startswith("big-")], place


IPC = (
    "import ctypes, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "libc.mq_open.restype = ctypes.c_int\n"
    "KEY = 0x5E23\n"
    "def create():\n"
    "    shm = libc.shmget(KEY, 1 << 20, 0o1666)\n"  # IPC_CREAT | 0666
    "    mq = libc.mq_open(b'/restrl-issue-23', os.O_CREAT | os.O_RDWR, 0o666, None)\n"
    "    return [shm >= 0, mq >= 0]\n"
    "def find():\n"
    "    return [libc.shmget(KEY, 0, 0) >= 0, libc.mq_open(b'/restrl-issue-23', os.O_RDWR, 0, None) >= 0]\n"
)


def test_ipc_objects_do_not_outlive_the_run_or_cross_runs(sb: Sandbox):
    """Finding 5: SysV shared memory and POSIX message queues were read by later programs in
    other workers and pools, and held host memory after `close()`."""
    _needs(sb, "ipcns")
    made = sb.run(IPC, [TestCase(kind="call", args=[], expected=[True, True], fn_name="create")], LIMITS)
    assert made.status == "passed", made.tests[0].message  # creating them works
    for sandbox in (sb, sb):
        found = sandbox.run(IPC, [TestCase(kind="call", args=[], expected=[False, False], fn_name="find")], LIMITS)
        assert found.status == "passed", found.tests[0].message
    with Sandbox(workers=1, limits=LIMITS) as other:  # another pool, another uid
        found = other.run(IPC, [TestCase(kind="call", args=[], expected=[False, False], fn_name="find")])
        assert found.status == "passed", found.tests[0].message
    assert "5e23" not in Path("/proc/sysvipc/shm").read_text().lower()  # nothing on the host
    assert not os.path.exists("/dev/mqueue/restrl-issue-23")


def test_proc_shows_only_the_runs_own_processes(sb: Sandbox):
    """Finding 7: every host process's /proc/PID/cmdline was readable."""
    _needs(sb, "private_proc")
    canary = f"restrl-cmdline-{secrets.token_hex(8)}"
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", canary])
    program = (
        "import os\n"
        "def look(canary):\n"
        "    pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "    seen = []\n"
        "    for p in pids:\n"
        "        try:\n"
        "            if canary.encode() in open(f'/proc/{p}/cmdline', 'rb').read():\n"
        "                seen.append(p)\n"
        "        except OSError:\n"
        "            pass\n"
        "    return [len(pids) <= 3, os.getpid() < 10, seen]\n"
    )
    try:
        verdict = sb.run(program, [TestCase(kind="call", args=[canary], expected=[True, True, []], fn_name="look")], LIMITS)
        assert verdict.status == "passed", verdict.tests[0].message
        assert canary.encode() in Path(f"/proc/{host.pid}/cmdline").read_bytes()  # the probe would see it
    finally:
        host.kill()
        host.wait()


def test_sibling_folders_of_the_project_are_not_listable(sb: Sandbox):
    """Finding 7: outside the system directories a program sees only the way to the runtime."""
    parent = REPO.parent
    on_host = sorted(os.listdir(parent))
    program = (
        "import os\n"
        "def ls(paths):\n"
        "    out = []\n"
        "    for p in paths:\n"
        "        try:\n"
        "            out.append(sorted(os.listdir(p)))\n"
        "        except OSError:\n"
        "            out.append(None)\n"
        "    return out\n"
    )
    verdict = sb.run(program, [TestCase(kind="call", args=[[str(parent), str(REPO)]], expected=None, fn_name="ls")], LIMITS)
    seen_parent, seen_repo = eval(verdict.tests[0].message.split("returned ")[1].rsplit(", expected", 1)[0])
    runtime = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, REPO / "sandbox")} | {Path(sys.prefix)}
    needed = {part for r in runtime for part in r.parts}
    assert set(seen_parent or []) <= needed, (seen_parent, on_host)
    assert set(seen_repo or []) <= needed | {".venv"}, seen_repo
    assert "tests" not in (seen_repo or []) and "README.md" not in (seen_repo or [])


USERNS = (
    "import ctypes, errno, subprocess\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "def attempt(name, call):\n"
    "    ret = call()\n"
    "    return name if ret == 0 or (ret > 0 and name.startswith('clone')) else None\n"
    "def blocked():\n"
    "    tries = [\n"
    "        ('unshare_user', lambda: libc.unshare(0x10000000)),\n"
    "        ('unshare_mount', lambda: libc.unshare(0x00020000)),\n"
    "        ('clone_newuser', lambda: libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)),\n"
    "        ('clone3', lambda: libc.syscall(435, 0, 0)),\n"
    "        ('setns', lambda: libc.setns(0, 0)),\n"
    "        ('ptrace_traceme', lambda: libc.ptrace(0, 0, 0, 0)),\n"
    "        ('bpf', lambda: libc.syscall(321, 0, 0, 0)),\n"
    "        ('io_uring_setup', lambda: libc.syscall(425, 1, 0)),\n"
    "        ('keyctl', lambda: libc.syscall(250, 0, 0, 0, 0, 0)),\n"
    "        ('userfaultfd', lambda: libc.syscall(323, 0)),\n"
    "    ]\n"
    "    got = [n for n, c in tries if attempt(n, c)]\n"
    "    if subprocess.run(['unshare', '-U', 'true'], capture_output=True).returncode == 0:\n"
    "        got.append('unshare -U')\n"
    "    return got\n"
)


def test_user_namespaces_and_risky_syscalls_are_blocked(sb: Sandbox):
    """Finding 7: user namespaces were available inside (a full capability set in them)."""
    _needs(sb, "seccomp")
    if os.uname().machine != "x86_64":
        pytest.skip("the probe uses x86_64 system call numbers")
    verdict = sb.run(USERNS, [TestCase(kind="call", args=[], expected=[], fn_name="blocked")], LIMITS)
    assert verdict.status == "passed", verdict.tests[0].message


def test_threads_forks_and_subprocesses_still_work_under_the_filter(sb: Sandbox):
    program = (
        "import threading, subprocess, os, multiprocessing\n"
        "def ok():\n"
        "    t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "    out = subprocess.run(['echo', 'hi'], capture_output=True, text=True).stdout\n"
        "    with multiprocessing.Pool(2) as pool:\n"
        "        squares = pool.map(abs, [-1, -2])\n"
        "    return [out, squares]\n"
    )
    verdict = sb.run(program, [TestCase(kind="call", args=[], expected=["hi\n", [1, 2]], fn_name="ok")], LIMITS)
    assert verdict.status == "passed", verdict.tests[0].message


def test_capabilities_report_what_is_in_force(sb: Sandbox):
    caps = sb.capabilities()
    for key in ("pidns", "ipcns", "private_proc", "readonly_root", "seccomp", "result_channel", "hidden_top_dirs"):
        assert key in caps
    if caps["root"]:  # as root on Linux every one of them should hold; a gap must be explained
        for key in ("pidns", "ipcns", "private_proc", "private_tmp", "readonly_root", "seccomp", "uid_drop"):
            assert caps[key] or caps["warnings"], key
