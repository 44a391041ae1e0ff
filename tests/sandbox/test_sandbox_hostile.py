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
    secret_dir = Path(tempfile.mkdtemp(dir=REPO / "tests" / "sandbox", prefix=".hidden-"))
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
