"""The one prompt format used by serving, search, training and evaluation.

Two modes (RESTRL_SPEC.md section 2), chosen per model by measurement (`DEFAULT_MODE_BY_MODEL`):

* ``continue`` - the reference's format: the question holds the statement; the assistant turn is
  pre-filled with an open code block that already contains the starter code. The root state is
  the starter code.
* ``rewrite``  - the question holds the statement and the starter code; the model writes the whole
  program in a fenced block. The root state is the empty block. SmolLM2-135M-Instruct scores
  0.055 greedy pass@1 on HumanEval this way vs 0.000 in ``continue`` mode (measured 2026-11-26).

A *state* is the code inside the open block so far: with line steps it is empty or ends with a
newline. The prompt holds the state back by its final newline (`prompt_code`): a prompt ending in
a bare newline splits the model's usual newline+indent token, and SmolLM2-135M then closes the
block (p=0.94 measured on HumanEval/0 at depth 1), so a tree never grew past its first line. The
continuation therefore usually starts with that newline, and `join_code(state, completion)` is the
complete generated code (`continuation` gives the part after ``state``, or None when the model
rewrote the state's last line instead of ending it). `assemble_program` turns that into the program the sandbox runs
such that the problem's imports and helpers exist in either mode.

The value model reads `value_input(problem, state)`: raw text, no chat template (as in the
reference), fixed here so training and serving agree.
"""

from __future__ import annotations

import ast
from typing import Any, Literal

from tasks import Problem

PromptMode = Literal["continue", "rewrite"]

FENCE_OPEN = "```python\n"
FENCE_CLOSE = "```"
STOP = (FENCE_CLOSE,)
SYSTEM_PROMPT = "You are a helpful programming assistant. Answer with Python code in one fenced code block."

# Measured HumanEval greedy pass@1 decides the default (ENVIRONMENT.md, 2026-11-26):
# SmolLM2-135M-Instruct continue 0.000 vs rewrite 0.055.
DEFAULT_MODE_BY_MODEL: dict[str, PromptMode] = {"smollm2-135m-instruct": "rewrite"}
FALLBACK_MODE: PromptMode = "continue"  # the reference's format for models we have not measured


def default_mode(model_name: str) -> PromptMode:
    """The measured prompt mode for a model (matched on the lower-cased folder or hub name)."""
    key = model_name.rstrip("/").split("/")[-1].lower()
    for name, mode in DEFAULT_MODE_BY_MODEL.items():
        if name in key:
            return mode
    return FALLBACK_MODE


def _ensure_newline(code: str) -> str:
    return code if not code or code.endswith("\n") else code + "\n"


def root_state(problem: Problem, mode: PromptMode) -> str:
    """The search tree's root: the starter code (continue) or the empty block (rewrite)."""
    return _ensure_newline(problem.starter_code) if mode == "continue" else ""


def question(problem: Problem, mode: PromptMode) -> str:
    """The user turn."""
    text = problem.prompt.strip()
    if mode == "rewrite" and problem.starter_code.strip():
        text += (
            "\n\nComplete the following Python code. Write the whole program, including the"
            f" function signature, in one code block:\n{FENCE_OPEN}{_ensure_newline(problem.starter_code)}{FENCE_CLOSE}"
        )
    elif mode == "continue" and problem.starter_code.strip():
        text += "\n\nComplete the following Python code."
    return text


def render_prompt(tokenizer: Any, problem: Problem, state: str, mode: PromptMode) -> str:
    """The full text sent to the policy for continuing ``state``: chat template applied to the
    question, then the open code block holding the state. Sibling states share this prefix, which
    is what the engine's prefix cache reuses."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question(problem, mode)},
    ]
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{head}{FENCE_OPEN}{prompt_code(state)}"


def prompt_code(state: str) -> str:
    """The code the prompt ends with: ``state`` without its final newline (see the module doc)."""
    return state[:-1] if state.endswith("\n") else state


def join_code(state: str, completion: str) -> str:
    """The generated code: the prompt's code followed by what the policy sampled from it."""
    return prompt_code(state) + completion


def continuation(state: str, completion: str) -> str | None:
    """What ``completion`` adds after ``state`` (``join_code(state, c) == state + result``), or
    None when it does not begin with the held-back newline (it extended the state's last line)."""
    if not state.endswith("\n"):
        return completion
    return completion[1:] if completion.startswith("\n") else None


def render_chat_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """OpenAI-style chat messages rendered with the model's template (plain decoding and chat API)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def assemble_program(problem: Problem, code: str, mode: PromptMode) -> str:
    """The program to execute for generated ``code`` (= `join_code(state, completion)`).

    continue: the code already starts with the starter code. rewrite: the starter code (imports,
    helpers, the stub with its docstring) is prepended so that what the model omitted still
    exists; the model's definitions come later and win.
    """
    code = code.split(FENCE_CLOSE, 1)[0]
    if mode == "continue" or not problem.starter_code.strip():
        return code
    preamble = runnable_starter(problem.starter_code)
    return f"{preamble}\n{code}" if preamble else code


def runnable_starter(starter: str) -> str:
    """The starter code as a valid module to put before a rewritten program: as is when it parses
    (a stub with a docstring does), with ``pass`` added when it ends in a bodyless ``def``, else
    only its leading import lines (never text that would turn a correct program into a
    SyntaxError)."""
    starter = _ensure_newline(starter)
    candidates = [starter]
    last = next((line for line in reversed(starter.splitlines()) if line.strip()), "")
    if last.rstrip().endswith(":"):
        indent = last[: len(last) - len(last.lstrip())]
        candidates.append(f"{starter}{indent}    pass\n")
    for text in candidates:
        try:
            ast.parse(text)
        except SyntaxError:
            continue
        return text
    imports = [line for line in starter.splitlines() if line.startswith(("import ", "from "))]
    return "".join(f"{line}\n" for line in imports)


def value_input(problem: Problem, state: str) -> str:
    """The value model's input text for a state (no chat template, fixed format)."""
    return f"Problem:\n{problem.prompt.strip()}\n\n{problem.starter_code.rstrip()}\n\nSolution so far:\n{state}"
