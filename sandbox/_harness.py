"""The test harness that runs INSIDE the isolated child process (stdlib only).

This is the only place where untrusted program text is compiled and executed. The worker
(`_worker.py`) forks the run's processes, applies the isolation and limits, and then either calls
`main()` directly (fork-server mode: this module and the usual stdlib are already imported) or execs
a fresh ``python -I -S _harness.py SYS_PATH`` (spawn mode). The job (program, tests without the
expected values of call and stdio tests) is on fd 4, read once and closed. Results go out as one
JSON line per event on fd 3, the write end of a pipe the worker reads: the program can append to
it (it runs in this process) but never read, rewind, truncate or rewrite what was written, and
the caller (`sandbox._verdict`) accepts only the events a test's kind allows, at most one per
test for call, stdio and assert tests, and takes no status from this process for call and stdio
tests:

* ``{"t": "loaded"}`` / ``{"t": "load_error", "msg": ...}`` - the program compiled and (for
  in-process tests) ran at import / it did not;
* call test ``i``: ``{"t": "value", "i": i, "value": ...}`` (what the function returned, as plain
  JSON data) or ``{"t": "call_failed", "i": i, "msg": ...}`` (it raised, or no such function);
* stdio test ``i``: ``{"t": "output", "i": i, "out": BASE64}`` (stdout of a clean exit) or
  ``{"t": "stdio_failed", "i": i, "why": "exit" | "signal" | "overflow", "code": n}``;
* assert test ``i``: ``{"t": "outcome", "i": i, "status": "passed" | "failed", "msg": ...}``;
* unittest test ``i``: one ``{"t": "outcome", "i": i, "name": ..., "status": ..., "msg": ...}``
  per test method;
* ``{"t": "done"}`` - every test ran.

Semantics (the `sandbox` package documents them for users):

* call: ``fn(*args)`` compared with ``expected`` by `values_equal` (floats rel 1e-6 / abs 1e-9,
  numpy scalars and arrays as their Python values, tuples as lists; only plain data compares, so an
  object with a permissive ``__eq__`` cannot pass).
* stdio: each test runs the program as ``__main__`` in its own forked process with the test's stdin;
  stdout is compared by `outputs_match` (line-wise after stripping trailing whitespace and trailing
  blank lines, else token-wise with the same float tolerance).
* For these two kinds the child only reports what the program returned or printed and the caller
  judges it (`sandbox._verdict.judge`): the expected values are never in the program's process,
  so a program can neither read them nor claim a pass; the most it can do by writing to fd 3
  itself is report a value its function could as well have returned.
* assert: the test source runs in the program's namespace; one outcome per script.
* unittest: the test source runs in the program's namespace; every test method of every
  ``unittest.TestCase`` class it defines is one outcome.
* Residual risk of these two kinds: the test code runs in the program's process, so a program
  can tamper with its own assert/unittest run (patch ``AssertionError``, call the emitter it can
  find on the stack, write ``outcome`` events to fd 3). It can never affect another run or a
  call/stdio test of its own run.
* no tests: the program runs as ``__main__``; it passes if it finishes without an uncaught exception.
"""

from __future__ import annotations

import base64
import builtins
import fcntl
import io
import json
import math
import os
import signal
import sys
import traceback
import types
import unittest
from typing import Any

RESULT_FD = 3  # write end of the result pipe
JOB_FD = 4  # the job (JSON: program, tests, entry_point, max_output_bytes), read once and closed
MSG_CHARS = 600
REL_TOL = 1e-6
ABS_TOL = 1e-9
_PLAIN = (type(None), bool, int, float, str)


class _Emitter:
    """Appends one JSON line per event to the result pipe (nothing here is a secret: the program
    can find this object and call it; `sandbox._verdict` decides what an event may claim)."""

    def __init__(self, fd: int = RESULT_FD) -> None:
        self.fd = fd

    def __call__(self, event: dict) -> None:
        self.write_line(json.dumps(event))

    def write_line(self, line: str) -> None:
        data = (line + "\n").encode()
        while data:
            try:
                written = os.write(self.fd, data)
            except OSError:
                return
            data = data[written:]


def _short(text: str) -> str:
    return text if len(text) <= MSG_CHARS else text[: MSG_CHARS - 3] + "..."


def _describe(exc: BaseException) -> str:
    return _short(f"{type(exc).__name__}: {exc}")


def _plain(value: Any, depth: int = 0) -> Any:
    """Plain Python data for comparison; numpy values become Python values. Raises TypeError for
    anything else, so a custom object cannot claim equality through its own ``__eq__``."""
    if depth > 100:
        raise TypeError("value nested too deeply")
    if type(value) in _PLAIN:
        return value
    if type(value) in (list, tuple):
        return [_plain(v, depth + 1) for v in value]
    if type(value) is dict:
        return {_key(k): _plain(v, depth + 1) for k, v in value.items()}
    if type(value) in (set, frozenset):
        return {"__set__": sorted((_plain(v, depth + 1) for v in value), key=repr)}
    module = type(value).__module__ or ""
    if module.split(".")[0] == "numpy" and hasattr(value, "tolist"):
        return _plain(value.tolist(), depth + 1)
    raise TypeError(f"cannot compare a value of type {type(value).__name__}")


def _key(key: object) -> object:
    plain = _plain(key)
    return json.dumps(plain, sort_keys=True) if isinstance(plain, (list, dict)) else plain


def values_equal(got: object, expected: object) -> bool:
    """Equality of plain data with float tolerance; bools only equal bools."""
    return _equal(_plain(got), _plain(expected))


def _equal(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _token_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def outputs_match(got: str, expected: str) -> bool:
    """stdio comparison: line-wise after normalising line ends and trailing whitespace; failing
    that, whitespace-separated tokens with float tolerance."""

    def lines(text: str) -> list[str]:
        out = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    if lines(got) == lines(expected):
        return True
    a, b = got.split(), expected.split()
    return len(a) == len(b) and all(_token_equal(x, y) for x, y in zip(a, b, strict=True))


def _fresh_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__["__builtins__"] = builtins
    sys.modules[name] = module
    return module


def _run_script(code: types.CodeType) -> int:
    """Run compiled program text as ``__main__`` in this process; the exit status it asks for."""
    module = _fresh_module("__main__")
    try:
        exec(code, module.__dict__)
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            return 0
        if isinstance(exc.code, int):
            return exc.code & 0xFF or 1
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _stdio_test(code: types.CodeType, index: int, test: dict, max_output: int, emit: _Emitter) -> None:
    stdin_path = f".stdin-{index}"
    with open(stdin_path, "w", encoding="utf-8") as f:
        f.write(test.get("stdin") or "")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the program's own process for this test
        try:
            os.close(read_end)
            fd = os.open(stdin_path, os.O_RDONLY)
            os.dup2(fd, 0)
            os.dup2(write_end, 1)
            os.close(fd)
            os.close(write_end)
            os.close(RESULT_FD)
            sys.stdin = io.TextIOWrapper(
                io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8"
            )
            sys.stdout = io.TextIOWrapper(
                io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8"
            )
            status = _run_script(code)
            _flush_std()
        except BaseException:
            status = 1
        os._exit(status)
    os.close(write_end)
    chunks: list[bytes] = []
    size = 0
    overflow = False
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        size += len(chunk)
        if size > max_output:
            overflow = True
            os.kill(pid, signal.SIGKILL)
            break
        chunks.append(chunk)
    os.close(read_end)
    _, wait_status = os.waitpid(pid, 0)
    os.unlink(stdin_path)
    if overflow:
        emit({"t": "stdio_failed", "i": index, "why": "overflow", "code": max_output})
    elif os.WIFSIGNALED(wait_status):
        emit({"t": "stdio_failed", "i": index, "why": "signal", "code": os.WTERMSIG(wait_status)})
    elif os.WEXITSTATUS(wait_status) != 0:
        emit({"t": "stdio_failed", "i": index, "why": "exit", "code": os.WEXITSTATUS(wait_status)})
    else:  # judged by the caller: the expected output never enters this process
        emit({"t": "output", "i": index, "out": base64.b64encode(b"".join(chunks)).decode("ascii")})


def _call_test(namespace: dict, index: int, test: dict, entry_point: str | None, emit: _Emitter) -> None:
    name = test.get("fn_name") or entry_point
    fn = namespace.get(name) if name else None
    if not callable(fn):
        emit({"t": "call_failed", "i": index, "msg": f"no function {name!r} defined"})
        return
    try:
        got = fn(*json.loads(json.dumps(test.get("args") or [])))
    except BaseException as exc:
        emit({"t": "call_failed", "i": index, "msg": _describe(exc)})
        return
    try:  # judged by the caller: the expected value never enters this process
        line = json.dumps({"t": "value", "i": index, "value": _plain(got)})
    except BaseException as exc:
        emit({"t": "call_failed", "i": index, "msg": _describe(exc)})
        return
    emit.write_line(line)


def _assert_test(namespace: dict, index: int, test: dict, emit: _Emitter) -> None:
    try:
        exec(compile(test["code"], f"<test {index}>", "exec"), dict(namespace))
    except BaseException as exc:
        emit({"t": "outcome", "i": index, "status": "failed", "msg": _describe(exc)})
        return
    emit({"t": "outcome", "i": index, "status": "passed", "msg": ""})


class _OutcomeResult(unittest.TestResult):
    def __init__(self, index: int, emit: _Emitter) -> None:
        super().__init__()
        self.index = index
        self.emit = emit
        self._failed: dict[str, str] = {}

    def _fail(self, test: unittest.TestCase, err: object) -> None:
        exc = err[1] if isinstance(err, tuple) else None
        self._failed[test.id()] = _describe(exc) if isinstance(exc, BaseException) else "failed"

    def addError(self, test, err):  # noqa: N802 - unittest API
        self._fail(test, err)

    def addFailure(self, test, err):  # noqa: N802
        self._fail(test, err)

    def addSubTest(self, test, subtest, err):  # noqa: N802
        if err is not None:
            self._fail(test, err)

    def addUnexpectedSuccess(self, test):  # noqa: N802
        self._failed[test.id()] = "unexpected success"

    def stopTest(self, test):  # noqa: N802
        super().stopTest(test)
        msg = self._failed.get(test.id())
        name = test.id().split(".", 1)[-1]
        status = "passed" if msg is None else "failed"
        self.emit({"t": "outcome", "i": self.index, "name": name, "status": status, "msg": msg or ""})


def _unittest_test(namespace: dict, index: int, test: dict, emit: _Emitter) -> None:
    scope = dict(namespace)
    scope["__name__"] = "__sandbox_tests__"
    before = set(scope)
    try:
        exec(compile(test["code"], f"<test {index}>", "exec"), scope)
        loader = unittest.TestLoader()
        suite = unittest.TestSuite()
        for key, value in list(scope.items()):
            if key in before and scope.get(key) is namespace.get(key):
                continue
            if isinstance(value, type) and issubclass(value, unittest.TestCase):
                suite.addTests(loader.loadTestsFromTestCase(value))
        if suite.countTestCases() == 0:
            raise ValueError("the unittest source defines no test methods")
    except BaseException as exc:
        emit(
            {
                "t": "outcome",
                "i": index,
                "name": f"unittest[{index}]",
                "status": "failed",
                "msg": _describe(exc),
            }
        )
        return
    suite.run(_OutcomeResult(index, emit))


def execute(job: dict, emit: _Emitter) -> None:
    """Run the job's program against its tests, reporting through ``emit``."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over-size writes fail with EFBIG instead
    try:
        code = compile(job["program"], "<program>", "exec")
    except BaseException as exc:
        emit({"t": "load_error", "msg": _describe(exc)})
        return
    tests: list[dict] = job["tests"]
    if not tests:
        status = _run_script(code)
        _flush_std()
        if status == 0:
            emit({"t": "loaded"})
            emit({"t": "done"})
        else:
            emit({"t": "load_error", "msg": f"the program exited with status {status}"})
        return
    for index, test in enumerate(tests):  # each stdio test in its own fresh process, before loading
        if test["kind"] == "stdio":
            _stdio_test(code, index, test, int(job["max_output_bytes"]), emit)
    in_process = [(i, t) for i, t in enumerate(tests) if t["kind"] != "stdio"]
    if in_process:
        module = _fresh_module("__sandbox__")
        try:
            exec(code, module.__dict__)
        except BaseException as exc:
            emit({"t": "load_error", "msg": _describe(exc)})
            return
        emit({"t": "loaded"})
        namespace = module.__dict__
        for index, test in in_process:
            if test["kind"] == "call":
                _call_test(namespace, index, test, job.get("entry_point"), emit)
            elif test["kind"] == "assert":
                _assert_test(namespace, index, test, emit)
            else:
                _unittest_test(namespace, index, test, emit)
    else:
        emit({"t": "loaded"})
    _flush_std()
    emit({"t": "done"})


def read_job(fd: int = JOB_FD) -> dict:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    os.close(fd)
    return json.loads(b"".join(chunks))


def main(job: dict) -> None:
    # the result pipe is not passed on to programs the program execs (it can undo this: harmless)
    fcntl.fcntl(RESULT_FD, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    execute(job, _Emitter())


if __name__ == "__main__":  # spawn mode: python -I -S _harness.py SYS_PATH_JSON (job on fd 4)
    sys.path[:] = json.loads(sys.argv[1])
    sys.argv = ["<program>"]
    main(read_job())
    _flush_std()
    os._exit(0)
