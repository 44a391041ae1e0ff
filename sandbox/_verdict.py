"""The caller's side of a run: from what a worker observed to a `Verdict` (pure, no processes).

In: the worker's report of one run (how its processes ended, CPU and wall time, stderr, memory
peak: facts the worker measured itself) and the raw bytes the program's process appended to the
result pipe (see `_harness` for the events), plus the full tests, expected values included, which
never left this process. Out: a `Verdict`.

Everything in the result bytes is treated as written by the program. The rules:

* Every line must be one event of the documented schema (exact keys, types and, for test events,
  an index whose test kind allows that event). Call and stdio events carry no status at all: the
  outcome of a call test is `judge`'s comparison of the reported value with the expected one, and
  that of a stdio test the comparison of the reported output (or the way the test's process
  ended). A program that writes to the pipe itself can thus only report a value its function could
  have returned or an output it could have printed.
* At most one event per call, stdio or assert test, at most `MAX_UNITTEST_OUTCOMES` (with distinct
  names) per unittest test, one each of ``loaded``/``load_error``/``done``, nothing after ``done``.
* A violation (a malformed, unknown, duplicated or misplaced event, or more result bytes than the
  cap the worker enforces) makes the whole run an ``error`` verdict with pass fraction 0 (the
  program broke the result protocol; there is no partial credit), never an exception here.
* A trailing line without its newline (the program was killed while an event was being written)
  is ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import signal
from typing import Any

from sandbox._harness import _equal, _plain, outputs_match
from sandbox.limits import OutcomeStatus, TestOutcome, Verdict, VerdictStatus

MSG_CHARS = 600  # longest message kept from the program's side
NAME_CHARS = 200
MAX_UNITTEST_OUTCOMES = 1000  # test methods reported per unittest test
RESULT_BASE_BYTES = 4 << 20  # result pipe bytes allowed beyond the stdio outputs' share

_STDIO_WHY = ("exit", "signal", "overflow")
_SCHEMA: dict[str, tuple[str | None, dict[str, type | tuple[type, ...]]]] = {
    # event type -> (test kind it belongs to or None, required keys besides "t" and "i")
    "loaded": (None, {}),
    "done": (None, {}),
    "load_error": (None, {"msg": str}),
    "value": ("call", {"value": object}),
    "call_failed": ("call", {"msg": str}),
    "output": ("stdio", {"out": str}),
    "stdio_failed": ("stdio", {"why": str, "code": int}),
    "outcome": ("assert|unittest", {"status": str, "msg": str}),
}


class ProtocolViolation(ValueError):
    """The program wrote something to the result pipe that no honest run writes."""


def result_cap(tests: list[dict[str, Any]], max_output_bytes: int, max_file_mb: int) -> int:
    """Bytes the worker accepts on a run's result pipe: a base (the larger of 4 MiB and the largest
    file a program may write) plus each stdio test's largest honest output (base64: 4/3 of the
    bytes) and framing."""
    n_stdio = sum(t.get("kind") == "stdio" for t in tests)
    base = max(RESULT_BASE_BYTES, (max_file_mb + 1) << 20)
    return base + n_stdio * (math.ceil(max_output_bytes * 4 / 3) + 4096)


def _short(text: str, limit: int = MSG_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _label(index: int, kind: str) -> str:
    return f"{kind}[{index}]"


def parse_events(raw: bytes, tests: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[int, list[dict]]]:
    """(run-level events, events by test index), or ProtocolViolation."""
    lines = raw.split(b"\n")
    lines.pop()  # "" after the last newline, or an unterminated fragment of a killed write
    run: dict[str, Any] = {}
    by_test: dict[int, list[dict]] = {}
    for number, line in enumerate(lines, 1):
        if "done" in run:
            raise ProtocolViolation(f"event {number} after 'done'")
        try:
            event = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise ProtocolViolation(f"event {number} is not JSON ({type(exc).__name__})") from None
        if not isinstance(event, dict) or not isinstance(event.get("t"), str) or event["t"] not in _SCHEMA:
            raise ProtocolViolation(f"event {number} has no known type")
        kind, fields = _SCHEMA[event["t"]]
        allowed = {"t", *fields}
        if kind is not None:
            allowed.add("i")
            index = event.get("i")
            if type(index) is not int or not 0 <= index < len(tests):
                raise ProtocolViolation(f"event {number} names no test of this run")
            test_kind = tests[index]["kind"]
            if test_kind not in kind.split("|"):
                raise ProtocolViolation(f"event {number} ({event['t']}) for a {test_kind} test")
            if test_kind == "unittest":
                allowed.add("name")
        if set(event) != allowed:
            raise ProtocolViolation(f"event {number} ({event['t']}) has fields {sorted(event)}")
        for key, typ in fields.items():
            if typ is not object and (not isinstance(event[key], typ) or isinstance(event[key], bool)):
                raise ProtocolViolation(f"event {number}: '{key}' has the wrong type")
        if event["t"] == "outcome" and event["status"] not in ("passed", "failed"):
            raise ProtocolViolation(f"event {number}: status {_short(repr(event['status']), 40)}")
        if event["t"] == "stdio_failed" and event["why"] not in _STDIO_WHY:
            raise ProtocolViolation(f"event {number}: unknown stdio failure")
        if kind is None:
            if event["t"] in run:
                raise ProtocolViolation(f"event {number}: a second '{event['t']}'")
            run[event["t"]] = event
            continue
        seen = by_test.setdefault(event["i"], [])
        if tests[event["i"]]["kind"] == "unittest":
            if not isinstance(event.get("name"), str):
                raise ProtocolViolation(f"event {number}: a unittest outcome without a name")
            if len(seen) >= MAX_UNITTEST_OUTCOMES:
                raise ProtocolViolation(f"more than {MAX_UNITTEST_OUTCOMES} outcomes for test {event['i']}")
            if any(e["name"] == event["name"] for e in seen):
                raise ProtocolViolation(f"event {number}: a second outcome for {_short(event['name'], 80)}")
        elif seen:
            raise ProtocolViolation(f"event {number}: a second result for test {event['i']}")
        seen.append(event)
    return run, by_test


def judge(event: dict[str, Any], test: dict[str, Any], index: int) -> TestOutcome:
    """The outcome of one (schema-checked) test event, decided here: for call and stdio tests
    against the expected value this process alone holds."""
    kind = test["kind"]
    t = event["t"]
    label = _label(index, kind)
    if t == "value":
        try:
            ok = _equal(event["value"], json.loads(json.dumps(_plain(test.get("expected")))))
        except (TypeError, ValueError, RecursionError) as exc:
            return TestOutcome(index=index, name=label, status="failed", message=_short(f"{type(exc).__name__}: {exc}"))
        if ok:
            return TestOutcome(index=index, name=label, status="passed")
        try:
            shown = _short(repr(event["value"]), 300)
        except RecursionError:
            shown = "a deeply nested value"
        return TestOutcome(
            index=index, name=label, status="failed", message=_short(f"returned {shown}, expected {test.get('expected')!r}")
        )
    if t == "call_failed":
        return TestOutcome(index=index, name=label, status="failed", message=_short(event["msg"]))
    if t == "output":
        try:
            got = base64.b64decode(event["out"], validate=True).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            return TestOutcome(index=index, name=label, status="failed", message="output not decodable")
        if outputs_match(got, test.get("expected") or ""):
            return TestOutcome(index=index, name=label, status="passed")
        return TestOutcome(index=index, name=label, status="failed", message=_short(f"wrong output: {got!r}"))
    if t == "stdio_failed":
        why, code = event["why"], event["code"]
        if why == "overflow":
            return TestOutcome(index=index, name=label, status="failed", message=f"output over {code} bytes")
        if why == "signal":
            name = signal.Signals(code).name if code in signal.valid_signals() else f"signal {code}"
            killed: OutcomeStatus = "timeout" if code in (signal.SIGXCPU, signal.SIGKILL) else "error"
            return TestOutcome(index=index, name=label, status=killed, message=f"killed by {name}")
        return TestOutcome(index=index, name=label, status="error", message=f"exit status {code}")
    # "outcome": assert and unittest tests report their own status (the documented residual risk)
    name = _short(event["name"], NAME_CHARS) if kind == "unittest" else label
    status: OutcomeStatus = "passed" if event["status"] == "passed" else "failed"
    return TestOutcome(index=index, name=name, status=status, message=_short(event["msg"]))


def _ended(report: dict[str, Any], limits: dict[str, Any]) -> str:
    if report.get("wall_killed"):
        return f"killed at the wall-clock limit ({limits['wall_s']} s)"
    if report.get("cpu_killed"):
        return f"killed at the CPU-time limit ({limits['cpu_s']} s)"
    sig, code = report.get("signal"), report.get("exit_code")
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"
        return f"the program process died of {name}"
    if code is not None:
        return f"the program process exited with status {code}"
    return "the program process ended without a status"


def decide(
    report: dict[str, Any], raw: bytes, tests: list[dict[str, Any]], limits: dict[str, Any], *, wall_s: float
) -> Verdict:
    """The verdict of one run (see the module docstring); never raises on anything the program did."""
    stderr = str(report.get("stderr", ""))
    peak = report.get("memory_peak_mb")
    facts: dict[str, Any] = {
        "stderr": stderr,
        "wall_s": float(report.get("wall_s", wall_s)),
        "cpu_s": float(report.get("cpu_s", 0.0)),
        "memory_peak_mb": float(peak) if isinstance(peak, (int, float)) else None,
    }
    if report.get("infra"):
        return Verdict(status="infra_error", pass_fraction=0.0, detail=str(report["infra"]), stderr=stderr, wall_s=wall_s)
    ended = _ended(report, limits)
    timed_out = bool(report.get("wall_killed") or report.get("cpu_killed"))
    try:
        if report.get("overflow"):
            raise ProtocolViolation(f"more than {report['overflow']} bytes of results")
        run, by_test = parse_events(raw, tests)
    except ProtocolViolation as exc:
        outcomes = [
            TestOutcome(index=i, name=_label(i, t["kind"]), status="error", message="result protocol violated")
            for i, t in enumerate(tests)
        ]
        return Verdict(
            status="error", tests=outcomes, pass_fraction=0.0, detail=f"result protocol violated: {exc}", **facts
        )
    load_error = _short(run["load_error"]["msg"]) if "load_error" in run else None
    outcomes = []
    for index, test in enumerate(tests):
        reported = by_test.get(index)
        if reported:
            outcomes.extend(judge(event, test, index) for event in reported)
        elif load_error is not None:
            outcomes.append(TestOutcome(index=index, status="error", message=load_error))
        else:
            missing: OutcomeStatus = "timeout" if timed_out else "error"
            outcomes.append(TestOutcome(index=index, status=missing, message=f"no result: {ended}"))
    done = "done" in run
    status: VerdictStatus
    if timed_out or any(o.status == "timeout" for o in outcomes):
        status, detail = "timeout", ended if timed_out else "a test hit the time limit"
    elif load_error is not None:
        status, detail = "error", f"the program failed to load: {load_error}"
    elif "loaded" not in run:
        status, detail = "error", f"the program did not load: {ended}"
    elif done and outcomes and all(o.passed for o in outcomes):
        status, detail = "passed", ""
    elif done and not tests:
        status, detail = "passed", "the program ran to completion"
    else:
        status, detail = "failed", "" if done else f"the tests did not finish: {ended}"
    if outcomes:
        fraction = sum(o.passed for o in outcomes) / len(outcomes)
    else:
        fraction = 1.0 if status == "passed" else 0.0
    return Verdict(status=status, tests=outcomes, pass_fraction=fraction, detail=detail, **facts)
