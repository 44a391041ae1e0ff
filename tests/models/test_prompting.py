"""The one prompt format: held-back newline, joining samples, runnable programs in both modes."""

from __future__ import annotations

import ast

import pytest

from models.prompting import (
    FENCE_OPEN,
    assemble_program,
    continuation,
    join_code,
    prompt_code,
    render_prompt,
    root_state,
    runnable_starter,
)
from tasks import Problem, TestCase


class _Template:
    """The chat template's contract as render_prompt uses it (the real one is exercised by the
    engine tests): it must end where the assistant's text starts."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def _problem(starter: str) -> Problem:
    return Problem(id="p", prompt="Add two numbers.", starter_code=starter, entry_point="add",
                   tests=[TestCase(kind="assert", code="assert add(1, 2) == 3")])


@pytest.mark.parametrize("state", ["", "def f(x):\n", "def f(x):\n    y = x\n\n"])
def test_prompt_holds_back_exactly_one_final_newline(state: str) -> None:
    prompt = render_prompt(_Template(), _problem(""), state, "rewrite")
    assert prompt.endswith(FENCE_OPEN + prompt_code(state))
    assert state == "" or prompt_code(state) + "\n" == state


@pytest.mark.parametrize(
    ("state", "sample", "code", "rest"),
    [
        ("", "def f():\n    return 1\n", "def f():\n    return 1\n", "def f():\n    return 1\n"),
        ("def f():\n", "\n    return 1\n", "def f():\n    return 1\n", "    return 1\n"),
        ("def f():\n", "\n", "def f():\n", ""),  # closed the block right after the state
        ("x = (1\n", " + 2)\n", "x = (1 + 2)\n", None),  # extended the last line
    ],
)
def test_join_and_continuation_agree(state: str, sample: str, code: str, rest: str | None) -> None:
    assert join_code(state, sample) == code
    assert continuation(state, sample) == rest
    if rest is not None:
        assert state + rest == code


def test_rewrite_program_with_a_bodyless_stub_starter_is_valid_python() -> None:
    problem = _problem("import math\ndef add(a, b):\n")
    program = assemble_program(problem, "def add(a, b):\n    return a + b\n", "rewrite")
    module = ast.parse(program)
    assert isinstance(module.body[0], ast.Import)
    defs = [node for node in module.body if isinstance(node, ast.FunctionDef)]
    assert [d.name for d in defs] == ["add", "add"]  # the stub, then the model's (which wins)
    assert isinstance(defs[-1].body[0], ast.Return)


def test_runnable_starter_cases() -> None:
    assert runnable_starter('def add(a, b):\n    """Doc."""\n') == 'def add(a, b):\n    """Doc."""\n'
    assert runnable_starter("class A:\n    def m(self):") == "class A:\n    def m(self):\n        pass\n"
    assert runnable_starter("from x import y\nif (:\n") == "from x import y\n"


def test_continue_mode_program_is_the_code_and_root_is_the_starter() -> None:
    problem = _problem("def add(a, b):\n")
    assert root_state(problem, "continue") == "def add(a, b):\n"
    assert assemble_program(problem, "def add(a, b):\n    return a + b\n```\nextra", "continue") == (
        "def add(a, b):\n    return a + b\n"
    )
