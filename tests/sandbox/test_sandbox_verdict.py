"""The caller's verdict rules (`sandbox._verdict`) on result bytes written by hand: no processes."""

from __future__ import annotations

import base64
import json
import random

import pytest

from sandbox import Limits
from sandbox._verdict import MAX_UNITTEST_OUTCOMES, decide, result_cap

LIMITS = Limits().model_dump()
CALL = {"kind": "call", "args": [2], "expected": 4, "fn_name": "double"}
STDIO = {"kind": "stdio", "stdin": "", "expected": "42\n"}
ASSERT = {"kind": "assert", "code": "assert True"}
UNITTEST = {"kind": "unittest", "code": "..."}
EXITED = {"exit_code": 0, "wall_s": 0.01, "cpu_s": 0.01, "stderr": ""}


def lines(*events: object) -> bytes:
    return b"".join((e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n" for e in events)


def verdict(raw: bytes, tests: list[dict], report: dict | None = None):
    return decide(report or EXITED, raw, tests, LIMITS, wall_s=0.02)


def test_honest_events_are_judged_here():
    out = base64.b64encode(b"42\n").decode()
    raw = lines({"t": "output", "i": 1, "out": out}, {"t": "loaded"}, {"t": "value", "i": 0, "value": 4}, {"t": "done"})
    v = verdict(raw, [CALL, STDIO])
    assert v.status == "passed" and v.pass_fraction == 1.0
    wrong = lines({"t": "loaded"}, {"t": "value", "i": 0, "value": 3}, {"t": "done"})
    v = verdict(wrong, [CALL])
    assert v.status == "failed" and "returned 3, expected 4" in v.tests[0].message


@pytest.mark.parametrize(
    "events",
    [
        [{"t": "outcome", "i": 0, "status": "passed", "msg": ""}],  # a status for a call test
        [{"t": "value", "i": 0, "value": 4, "status": "passed"}],  # an extra field
        [{"t": "value", "i": 0, "value": 4, "judge": {"t": "value"}}],
        [{"t": "value", "i": 0, "value": 4}, {"t": "value", "i": 0, "value": 4}],  # duplicate
        [{"t": "value", "i": 1, "value": 4}],  # no such test
        [{"t": "value", "i": True, "value": 4}],
        [{"t": "value", "i": "0", "value": 4}],
        [{"t": "output", "i": 0, "out": "NDIK"}],  # stdio event for a call test
        [{"t": "done"}, {"t": "value", "i": 0, "value": 4}],  # after done
        [{"t": "loaded"}, {"t": "loaded"}],
        [{"t": "bogus"}],
        [[1, 2]],
        [b"not json"],
        [b""],
        [b"[" * 50000],
    ],
)
def test_protocol_violations_are_an_error_verdict(events):
    v = verdict(lines({"t": "loaded"}, *events, {"t": "done"}) if events[0] != {"t": "loaded"} else lines(*events), [CALL])
    assert v.status == "error" and v.pass_fraction == 0.0 and "result protocol violated" in v.detail
    assert [o.status for o in v.tests] == ["error"]


def test_assert_and_unittest_rules():
    good = lines({"t": "loaded"}, {"t": "outcome", "i": 0, "status": "passed", "msg": ""}, {"t": "done"})
    assert verdict(good, [ASSERT]).status == "passed"
    bogus = lines({"t": "loaded"}, {"t": "outcome", "i": 0, "status": "bogus", "msg": ""})
    assert verdict(bogus, [ASSERT]).status == "error"
    named = lines({"t": "loaded"}, {"t": "outcome", "i": 0, "name": "T.test_a", "status": "passed", "msg": ""})
    assert verdict(named, [ASSERT]).status == "error"  # assert outcomes carry no name
    same = {"t": "outcome", "i": 0, "name": "T.test_a", "status": "passed", "msg": ""}
    assert verdict(lines({"t": "loaded"}, same, same), [UNITTEST]).status == "error"
    many = [{**same, "name": f"T.test_{k}"} for k in range(MAX_UNITTEST_OUTCOMES + 1)]
    v = verdict(lines({"t": "loaded"}, *many, {"t": "done"}), [UNITTEST])
    assert v.status == "error" and len(v.tests) == 1
    long = lines({"t": "loaded"}, {"t": "outcome", "i": 0, "status": "failed", "msg": "x" * (8 << 20)}, {"t": "done"})
    v = verdict(long, [ASSERT])
    assert v.status == "failed" and len(v.tests[0].message) <= 600


def test_an_unterminated_last_line_is_ignored():
    raw = lines({"t": "loaded"}, {"t": "value", "i": 0, "value": 4}) + b'{"t": "do'
    v = verdict(raw, [CALL], {**EXITED, "wall_killed": True})
    assert v.status == "timeout" and v.tests[0].passed


def test_overflow_and_infra_reports():
    v = verdict(b"", [CALL], {**EXITED, "overflow": 1 << 22})
    assert v.status == "error" and "bytes of results" in v.detail
    v = verdict(b"", [CALL], {"infra": "sandbox setup failed: x"})
    assert v.status == "infra_error" and not v.passed


def test_stdio_failures():
    for why, code, status in (("signal", 9, "timeout"), ("signal", 11, "error"), ("exit", 3, "error"), ("overflow", 10, "failed")):
        raw = lines({"t": "stdio_failed", "i": 0, "why": why, "code": code}, {"t": "loaded"}, {"t": "done"})
        assert verdict(raw, [STDIO]).tests[0].status == status
    assert verdict(lines({"t": "output", "i": 0, "out": "%%%"}, {"t": "loaded"}, {"t": "done"}), [STDIO]).status == "failed"


def test_result_cap_grows_with_stdio_tests():
    assert result_cap([CALL], 1 << 20, 16) == 17 << 20
    assert result_cap([CALL, STDIO, STDIO], 1 << 20, 0) > (4 << 20) + 2 * (1 << 20)


def test_random_bytes_never_raise():
    rng = random.Random(23)
    tests = [CALL, STDIO, ASSERT, UNITTEST]
    pieces = [b'{"t": "value", "i": 0, "value": 4}', b'{"t": "loaded"}', b'{"t": "outcome"', b"\n", b"\x00", b"[", b"}"]
    for _ in range(500):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        v = verdict(raw, tests)
        assert v.status in ("passed", "failed", "error", "timeout") and 0.0 <= v.pass_fraction <= 1.0
