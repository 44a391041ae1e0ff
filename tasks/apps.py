"""APPS-style JSONL files (a local copy of APPS, or problems a user writes in its format).

Each line: ``question`` (statement), optional ``starter_code``, ``input_output`` (a JSON string
or an object) with ``inputs`` / ``outputs`` lists and an optional ``fn_name``, optional
``problem_id``, ``difficulty``, ``url``. With ``fn_name`` the tests are call-based: each input is
the positional-argument list. APPS wraps a call's expected return value in a one-element list
(its checker accepts either form), so such outputs are unwrapped unless
``unwrap_call_outputs=False``. Without ``fn_name`` the tests are stdin/stdout; an input or output
given as a list of lines is joined with newlines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tasks.jsonl import DatasetError, iter_jsonl, optional, require, validation_error
from tasks.problem import Problem, TestCase


def _lines(value: Any) -> Any:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value) + ("\n" if value and not value[-1].endswith("\n") else "")
    return value


def _io_spec(record: dict[str, Any], *, path: str | Path, line: int) -> dict[str, Any]:
    raw = require(record, "input_output", (str, dict), path=path, line=line)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"not valid JSON ({exc.msg})", path=path, line=line, field="input_output") from None
        if not isinstance(raw, dict):
            raise DatasetError("expected a JSON object", path=path, line=line, field="input_output")
    for key in ("inputs", "outputs"):
        if not isinstance(raw.get(key), list):
            raise DatasetError("field required (a list)", path=path, line=line, field=f"input_output.{key}")
    if len(raw["inputs"]) != len(raw["outputs"]):
        raise DatasetError(
            f"{len(raw['inputs'])} inputs but {len(raw['outputs'])} outputs", path=path, line=line, field="input_output"
        )
    if not raw["inputs"]:
        raise DatasetError("no tests", path=path, line=line, field="input_output.inputs")
    return raw


def apps_problem(record: dict[str, Any], *, path: str | Path, line: int, unwrap_call_outputs: bool = True) -> Problem:
    """One APPS-style record as a `Problem`."""
    question = require(record, "question", str, path=path, line=line)
    starter = optional(record, "starter_code", str, "", path=path, line=line)
    spec = _io_spec(record, path=path, line=line)
    fn_name = spec.get("fn_name")
    if fn_name is not None and not isinstance(fn_name, str):
        raise DatasetError("expected str", path=path, line=line, field="input_output.fn_name")
    tests: list[TestCase] = []
    for i, (inp, out) in enumerate(zip(spec["inputs"], spec["outputs"], strict=True)):
        try:
            if fn_name:
                args = inp if isinstance(inp, list) else [inp]
                if unwrap_call_outputs and isinstance(out, list) and len(out) == 1:
                    out = out[0]
                tests.append(TestCase(kind="call", args=args, expected=out, fn_name=fn_name))
            else:
                tests.append(TestCase(kind="stdio", stdin=_lines(inp), expected=_lines(out)))
        except ValidationError as exc:
            raise validation_error(exc, path=path, line=line, prefix=f"input_output.inputs.{i}") from None
    pid = record.get("problem_id", record.get("id"))
    metadata: dict[str, Any] = {"source": "apps"}
    for key in ("difficulty", "url"):
        if record.get(key) is not None:
            metadata[key] = record[key]
    if fn_name and "class Solution" in starter:
        metadata["call_style"] = "class"  # LeetCode-style: the function is a method of Solution
    return Problem(
        id=f"apps/{pid}" if pid is not None else f"apps/{Path(path).stem}:{line}",
        prompt=question,
        starter_code=starter,
        entry_point=fn_name or None,
        tests=tests,
        metadata=metadata,
    )


def load_apps(path: str | Path, *, limit: int | None = None, unwrap_call_outputs: bool = True) -> list[Problem]:
    """Read an APPS-style JSONL(.gz) file."""
    problems: list[Problem] = []
    for number, record in iter_jsonl(path):
        if limit is not None and len(problems) >= limit:
            break
        problems.append(apps_problem(record, path=path, line=number, unwrap_call_outputs=unwrap_call_outputs))
    return problems
