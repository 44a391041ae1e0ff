"""The problem and test-case models every other package speaks.

A `Problem` is what a user (or a dataset loader, or the training gym) hands to the system: a
statement, optional starter code and entry point, hidden `tests` used for scoring, optional
`public_tests` a request may expose to execution re-ranking, and free-form metadata.

A `TestCase` is one of four kinds, each executed only inside `sandbox/`:

* ``call``     - call ``fn_name`` (default: the problem's entry point) with ``args`` (a JSON list)
                 and compare the return value with ``expected`` (floats with tolerance).
* ``stdio``    - run the program as a script with ``stdin`` and compare its stdout with
                 ``expected`` (APPS-style; whitespace normalised as the sandbox documents).
* ``assert``   - an assertion script run after the program (HumanEval: it defines
                 ``check(candidate)``; ``fn_name`` names the candidate to pass it).
* ``unittest`` - a module of ``unittest.TestCase`` classes run against the program
                 (BigCodeBench-style); every test method counts as one outcome.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TestKind = Literal["call", "stdio", "assert", "unittest"]


class TestCase(BaseModel):
    """One test of a program. Which fields matter depends on ``kind`` (see the module doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    __test__ = False  # not a pytest class

    kind: TestKind
    args: list[Any] | None = Field(default=None, description="call: positional arguments")
    expected: Any = Field(default=None, description="call: return value; stdio: expected stdout")
    stdin: str | None = Field(default=None, description="stdio: the program's standard input")
    code: str | None = Field(default=None, description="assert/unittest: the test source")
    fn_name: str | None = Field(default=None, description="call/assert: the function under test")

    @model_validator(mode="after")
    def _fields_for_kind(self) -> TestCase:
        if self.kind == "call" and self.args is None:
            raise ValueError("a 'call' test needs 'args' (a list of positional arguments)")
        if self.kind == "stdio" and (self.stdin is None or not isinstance(self.expected, str)):
            raise ValueError("a 'stdio' test needs 'stdin' and a string 'expected' output")
        if self.kind in ("assert", "unittest") and not self.code:
            raise ValueError(f"an '{self.kind}' test needs 'code' (the test source)")
        return self


class Problem(BaseModel):
    """A coding problem. ``prompt`` is the natural-language statement shown to the policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    prompt: str = Field(description="the statement: what the program must do")
    starter_code: str = Field(default="", description="code the solution starts from (signature, imports, helpers)")
    entry_point: str | None = Field(default=None, description="the function tests call, if any")
    tests: list[TestCase] = Field(default_factory=list, description="hidden tests used for scoring")
    public_tests: list[TestCase] = Field(default_factory=list, description="tests a request may expose")
    metadata: dict[str, Any] = Field(default_factory=dict)

    def with_tests(self, tests: list[TestCase]) -> Problem:
        return self.model_copy(update={"tests": tests})
