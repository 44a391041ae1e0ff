"""BigCodeBench-style JSONL files (a local copy; the benchmark is not available offline here).

Each line: ``task_id``, ``complete_prompt`` (imports, signature and docstring) and/or
``instruct_prompt`` (natural language) with ``code_prompt`` (imports and signature), ``test``
(a module of ``unittest.TestCase`` classes), ``entry_point`` (usually ``task_func``), optional
``canonical_solution`` and ``libs``. Two variants, as in the benchmark: ``complete`` (the
starter code is the complete prompt, the statement a short instruction) and ``instruct`` (the
statement is the instruct prompt, the starter code the code prompt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from tasks.jsonl import DatasetError, iter_jsonl, optional, require
from tasks.problem import Problem, TestCase

BigCodeBenchVariant = Literal["complete", "instruct"]


def bigcodebench_problem(
    record: dict[str, Any], *, path: str | Path, line: int, variant: BigCodeBenchVariant = "complete"
) -> Problem:
    """One BigCodeBench-style record as a `Problem` with one ``unittest`` test."""
    task_id = require(record, "task_id", str, path=path, line=line)
    entry = require(record, "entry_point", str, path=path, line=line)
    test_src = require(record, "test", str, path=path, line=line)
    complete = optional(record, "complete_prompt", str, None, path=path, line=line)
    instruct = optional(record, "instruct_prompt", str, None, path=path, line=line)
    code_prompt = optional(record, "code_prompt", str, "", path=path, line=line)
    if variant == "instruct" and instruct is not None:
        prompt, starter = instruct, code_prompt
    elif complete is not None:
        prompt, starter = f"Complete the function `{entry}` described below.", complete
    elif instruct is not None:
        prompt, starter = instruct, code_prompt
    else:
        raise DatasetError("field required (or 'instruct_prompt')", path=path, line=line, field="complete_prompt")
    metadata: dict[str, Any] = {"task_id": task_id, "source": "bigcodebench", "variant": variant}
    for key in ("canonical_solution", "libs"):
        if record.get(key) is not None:
            metadata[key] = record[key]
    return Problem(
        id=task_id,
        prompt=prompt,
        starter_code=starter,
        entry_point=entry,
        tests=[TestCase(kind="unittest", code=test_src)],
        metadata=metadata,
    )


def load_bigcodebench(
    path: str | Path, *, limit: int | None = None, variant: BigCodeBenchVariant = "complete"
) -> list[Problem]:
    """Read a BigCodeBench-style JSONL(.gz) file."""
    problems: list[Problem] = []
    for number, record in iter_jsonl(path):
        if limit is not None and len(problems) >= limit:
            break
        problems.append(bigcodebench_problem(record, path=path, line=number, variant=variant))
    return problems
