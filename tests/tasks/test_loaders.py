"""Loaders on small fixtures (tests/fixtures/) and the packaged HumanEval: our schema round trip,
APPS- and BigCodeBench-style mapping, format sniffing, and errors that name file, line and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tasks import (
    LOADERS,
    DatasetError,
    Problem,
    TestCase,
    check_trainable,
    load_jsonl,
    load_problems,
    write_jsonl,
)
from tasks.apps import load_apps
from tasks.bigcodebench import load_bigcodebench
from tasks.humaneval import (
    _SAME,
    WRONG_EXAMPLES,
    docstring_examples,
    humaneval_canonical_program,
    is_eval_only,
    load_humaneval,
)
from tasks.loaders import sniff_format

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def test_restrl_fixture_loads_with_all_kinds_of_tests():
    problems = load_jsonl(FIX / "restrl_small.jsonl")
    assert [p.id for p in problems] == ["add-two", "echo-upper", "is-even"]
    add = problems[0]
    assert add.entry_point == "add" and add.starter_code.startswith("def add(")
    assert add.tests == [TestCase(kind="call", args=[1, 2], expected=3), TestCase(kind="call", args=[-4, 4], expected=0)]
    assert add.public_tests[0].expected == 4
    assert problems[1].tests[0].kind == "stdio" and problems[1].tests[0].stdin == "abc\n"
    assert problems[2].tests[0].kind == "assert"


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_write_then_load_round_trips(tmp_path, suffix):
    problems = load_jsonl(FIX / "restrl_small.jsonl")
    out = tmp_path / f"copy{suffix}"
    assert write_jsonl(out, problems) == 3
    assert load_jsonl(out) == problems
    opener = gzip.open if suffix.endswith(".gz") else open
    with opener(out, "rt") as fh:
        first = json.loads(fh.readline())
    assert first["schema_version"] == 1 and first["id"] == "add-two"


@pytest.mark.parametrize(
    ("name", "line", "field", "words"),
    [
        ("restrl_bad_json.jsonl", 2, None, "invalid JSON"),
        ("restrl_missing_field.jsonl", 2, "prompt", "Field required"),
        ("restrl_wrong_type.jsonl", 3, "tests.1.args", "list"),
        ("restrl_bad_version.jsonl", 1, "schema_version", "unsupported schema version 7"),
    ],
)
def test_malformed_restrl_files_name_file_line_and_field(name, line, field, words):
    with pytest.raises(DatasetError) as info:
        load_jsonl(FIX / name)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.line, err.field) == (line, field)
    assert err.path.endswith(name)
    assert f"{name}:{line}" in str(err) and words in str(err)
    if field:
        assert f"'{field}'" in str(err)


def test_duplicate_ids_and_missing_file_are_errors(tmp_path):
    dup = tmp_path / "dup.jsonl"
    p = Problem(id="a", prompt="x")
    write_jsonl(dup, [p, p])
    with pytest.raises(DatasetError, match=r"dup.jsonl:2: field 'id': duplicate id 'a' \(first on line 1\)"):
        load_jsonl(dup)
    with pytest.raises(DatasetError, match="nothing.jsonl: no such file"):
        load_problems(tmp_path / "nothing.jsonl")


def test_apps_stdio_and_call_based_tests():
    stdio, call, klass, lines = load_apps(FIX / "apps_small.jsonl")
    assert stdio.id == "apps/4001" and stdio.entry_point is None
    assert stdio.tests == [TestCase(kind="stdio", stdin="1 2\n", expected="3\n"), TestCase(kind="stdio", stdin="10 -3\n", expected="7\n")]
    assert stdio.metadata == {"source": "apps", "difficulty": "introductory", "url": "https://example.org/a"}
    # call-based: each input is the argument list; APPS's one-element output wrapping is removed
    assert call.entry_point == "largest"
    assert [(t.args, t.expected, t.fn_name) for t in call.tests] == [([[1, 5, 2]], 5, "largest"), ([[-3, -1]], -1, "largest")]
    assert klass.tests[0].expected == [1, 4, 9] and klass.metadata["call_style"] == "class"
    assert lines.tests[0].stdin == "a\nb\n" and lines.tests[0].expected == "b\na\n"
    raw = load_apps(FIX / "apps_small.jsonl", unwrap_call_outputs=False)[1]
    assert raw.tests[0].expected == [5]


@pytest.mark.parametrize(
    ("name", "line", "field"),
    [
        ("apps_missing_outputs.jsonl", 2, "input_output.outputs"),
        ("apps_bad_io_json.jsonl", 1, "input_output"),
        ("apps_missing_question.jsonl", 3, "question"),
    ],
)
def test_malformed_apps_files(name, line, field):
    with pytest.raises(DatasetError) as info:
        load_problems(FIX / name)
    assert (info.value.line, info.value.field) == (line, field)
    assert f"{name}:{line}: field '{field}'" in str(info.value)


def test_bigcodebench_variants_and_errors():
    complete, instruct_only = load_bigcodebench(FIX / "bigcodebench_small.jsonl")
    assert complete.id == "BigCodeBench/9001" and complete.entry_point == "task_func"
    assert complete.starter_code.startswith("def task_func(values):\n    \"\"\"Return the values sorted")
    assert complete.prompt == "Complete the function `task_func` described below."
    assert complete.tests[0].kind == "unittest" and "class TestCases(unittest.TestCase)" in complete.tests[0].code
    assert complete.metadata["canonical_solution"] == "    return sorted(values)\n"
    # no complete_prompt: falls back to the instruct variant
    assert instruct_only.prompt == "Return the number of words in text." and instruct_only.starter_code.startswith("import re")
    inst = load_bigcodebench(FIX / "bigcodebench_small.jsonl", variant="instruct")[0]
    assert inst.prompt.startswith("Sort a list of numbers") and inst.starter_code == "def task_func(values):\n"
    with pytest.raises(DatasetError, match=r"bigcodebench_wrong_type.jsonl:2: field 'entry_point': expected str, got int"):
        load_problems(FIX / "bigcodebench_wrong_type.jsonl")


def test_format_sniffing_and_registry(tmp_path):
    assert set(LOADERS) == {"restrl", "apps", "bigcodebench", "humaneval"}
    assert sniff_format(FIX / "restrl_small.jsonl") == "restrl"
    assert sniff_format(FIX / "apps_small.jsonl") == "apps"
    assert sniff_format(FIX / "bigcodebench_small.jsonl") == "bigcodebench"
    assert [p.id for p in load_problems(FIX / "apps_small.jsonl")] == ["apps/4001", "apps/4002", "apps/4003", "apps/4004"]
    assert load_problems(FIX / "apps_small.jsonl", "apps", limit=2)[1].id == "apps/4002"
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"foo": 1}\n')
    with pytest.raises(DatasetError, match=r"odd.jsonl:1: cannot tell the format .* pass format="):
        load_problems(odd)
    with pytest.raises(DatasetError, match="unknown format 'mbpp'"):
        load_problems(odd, "mbpp")  # type: ignore[arg-type]
    # an explicit format reads the file with that loader, and its errors still name the field
    with pytest.raises(DatasetError, match=r"restrl_small.jsonl:1: field 'question': field required"):
        load_problems(FIX / "restrl_small.jsonl", "apps")


def test_humaneval_packaged_offline():
    problems = load_humaneval()
    assert len(problems) == 164
    first = problems[0]
    assert first.id == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert first.prompt == "Complete the function `has_close_elements` described below."
    assert first.starter_code.startswith("from typing import List") and '"""' in first.starter_code
    (test,) = first.tests
    assert test.kind == "assert" and test.fn_name == "has_close_elements"
    assert "def check(candidate)" in test.code and test.code.rstrip().endswith("check(has_close_elements)")
    assert first.metadata["task_id"] == "HumanEval/0" and is_eval_only(first)
    program = humaneval_canonical_program(first)
    assert program.startswith(first.starter_code) and "return False" in program
    assert [p.id for p in load_problems("humaneval", limit=3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(is_eval_only(p) for p in problems)
    assert not is_eval_only(load_jsonl(FIX / "restrl_small.jsonl")[0])


DOC = '''def f(xs, k=1):
    """Examples:
    >>> f([1, 2], k=2)  # two of them
    [2, 4]
    >>> f([])
    []
    >>> print(f([3]))
    [3]
    >>> f(undefined_name)
    0
    >>> f([1.5])
    hello world
    """
'''


def test_docstring_examples_keep_literal_calls_with_literal_outputs():
    tests = docstring_examples(DOC, "f")
    assert [t.kind for t in tests] == ["assert", "assert"]
    assert tests[0].code.rstrip().endswith("assert __restrl_same(f([1, 2], k=2), [2, 4]), 'f([1, 2], k=2) should be [2, 4]'")
    assert "f([])" in tests[1].code  # print(...) output, undefined names and prose outputs are skipped
    arrows = '''def g(s, n):
    """For example:
    g("ab", 2) ➞ 'abab'
    g("", 5) => ''
    g("x", 1) -> 1 + 0 = 1
    g(s, 3) == 'sss'
    h("x", 1) == 'x'
    """
'''
    calls = [t.code.splitlines()[-1] for t in docstring_examples(arrows, "g")]
    assert calls == [
        "assert __restrl_same(g('ab', 2), 'abab'), \"g('ab', 2) should be 'abab'\"",
        "assert __restrl_same(g('', 5), ''), \"g('', 5) should be ''\"",
        "assert __restrl_same(g('x', 1), 1), \"g('x', 1) should be 1\"",
    ]
    assert docstring_examples("def k():\n    pass\n", "k") == []


def test_the_last_example_before_the_closing_quotes_is_kept():
    """HumanEval's layout: the closing quotes follow the last output on the next line, which doctest
    reads as part of that output. A docstring with one example used to give no public test."""
    one = 'def f(x):\n    """Double it.\n    >>> f(1)\n    2\n    """\n'
    assert [t.code.splitlines()[-1] for t in docstring_examples(one, "f")] == ["assert __restrl_same(f(1), 2), 'f(1) should be 2'"]
    two = "def f(x):\n    \'\'\'\n    >>> f(1)\n    2\n    >>> f(2)\n    [4, 'a']\n    \'\'\'\n"
    assert [t.code.splitlines()[-1] for t in docstring_examples(two, "f")] == [
        "assert __restrl_same(f(1), 2), 'f(1) should be 2'",
        "assert __restrl_same(f(2), [4, 'a']), \"f(2) should be [4, 'a']\"",
    ]
    same_line = 'def f(x):\n    """\n    >>> f(3)\n    6"""\n'
    assert len(docstring_examples(same_line, "f")) == 1
    # HumanEval/0's second example is its last one
    he0 = load_humaneval(limit=1)[0]
    assert [t.code.splitlines()[-1] for t in he0.public_tests] == [
        "assert __restrl_same(has_close_elements([1.0, 2.0, 3.0], 0.5), False), 'has_close_elements([1.0, 2.0, 3.0], 0.5) should be False'",
        "assert __restrl_same(has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3), True), 'has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) should be True'",
    ]


async def test_humaneval_public_tests_are_docstring_examples_the_reference_passes():
    """Every example extracted from HumanEval's docstrings passes the canonical solution in the
    sandbox (a wrong example would penalise correct programs when re-ranking), and wrong programs
    fail them."""
    from sandbox.pool import Sandbox

    problems = [p for p in load_humaneval() if p.public_tests]
    assert len(problems) == 109 and sum(len(p.public_tests) for p in problems) == 302  # counted 2026-12-04
    assert all(t.kind == "assert" and t.fn_name is None for p in problems for t in p.public_tests)
    by_id = {p.id: p for p in load_humaneval()}
    dropped = [(tid, TestCase(kind="assert", code=f"{_SAME}{line}\n")) for tid, line in sorted(WRONG_EXAMPLES)]
    with Sandbox(workers=2) as sandbox:
        good = await sandbox.run_many([(humaneval_canonical_program(p), list(p.public_tests), p.entry_point) for p in problems])
        wrong = await sandbox.run_many([(p.starter_code + "    return None\n", list(p.public_tests), p.entry_point) for p in problems[:20]])
        bad = await sandbox.run_many([(humaneval_canonical_program(by_id[tid]), [t], by_id[tid].entry_point) for tid, t in dropped])
    assert [p.id for p, v in zip(problems, good, strict=True) if v.status != "passed"] == []
    assert all(v.status == "failed" for v in wrong)
    assert [v.status for v in bad] == ["failed"] * len(WRONG_EXAMPLES)  # HumanEval's own wrong examples stay out


def test_training_refuses_eval_only_problems():
    mine = load_jsonl(FIX / "restrl_small.jsonl")
    assert check_trainable(mine) == mine
    with pytest.raises(ValueError, match="'HumanEval/1' is evaluation-only"):
        check_trainable([*mine, *load_humaneval(limit=2)[1:]])
