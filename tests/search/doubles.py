"""Test doubles for the search invariants: a scripted policy with a trivial tokenizer and a
deterministic value function. Only for tests; the real engines are exercised in
tests/search/test_integration.py."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from models.base import Sample
from models.prompting import FENCE_OPEN
from tasks import Problem

LINES = ["    x = 1\n", "    y = x + 1\n", "    if x:\n", "        x -= 1\n", "    return x\n"]
ENDINGS = ["    return y", "    return 0", "", "    pass"]


class FakeTokenizer:
    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):  # noqa: ARG002
        return "".join(f"[{m['role']}] {m['content']}\n" for m in messages) + "[assistant] "


def state_of(prompt: str) -> str:
    """The code state a rendered prompt continues: the code after the last open fence plus the
    final newline the prompt holds back (`models.prompting.prompt_code`); expanded states are the
    empty root or end with a newline."""
    code = prompt.rsplit(FENCE_OPEN, 1)[1]
    return code + "\n" if code else ""


def random_script(state: str, n: int, call: int, seed: int = 0) -> list[str]:
    """Deterministic pseudo-random continuations: 0-3 lines from a small vocabulary (so first lines
    repeat and merge), then an ending line without a newline (a terminal)."""
    rng = random.Random(hashlib.sha256(f"{seed}|{call}|{state}".encode()).digest())
    out = []
    for _ in range(n):
        body = "".join(rng.choice(LINES) for _ in range(rng.randint(0, 3)))
        out.append(body + rng.choice(ENDINGS))
    return out


@dataclass
class Call:
    state: str
    n: int
    max_tokens: int
    temperature: float
    seed: int | None


@dataclass
class ScriptedPolicy:
    """``script(state, n, call_index) -> texts``. Tokens = characters; a text longer than
    ``max_tokens`` is cut with finish reason "length"."""

    script: Callable[[str, int, int], Sequence[str]] = random_script
    delay: float | Callable[[int], float] = 0.0
    version: str = "fake-policy@1"
    base_model: str = "fake-base"
    prompt_mode: str = "rewrite"
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    calls: list[Call] = field(default_factory=list)
    inflight: int = 0
    max_inflight: int = 0
    cancelled: int = 0
    completed: int = 0

    async def sample(self, prompt, *, n=1, max_tokens=512, stop=(), temperature=0.7, top_p=1.0, seed=None):
        index = len(self.calls)
        state = state_of(prompt)
        self.calls.append(Call(state, n, max_tokens, temperature, seed))
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            delay = self.delay(index) if callable(self.delay) else self.delay
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.inflight -= 1
        texts = list(self.script(state, n, index))
        assert len(texts) == n
        if state:  # like a real model, the sample first ends the line the prompt stopped on
            texts = ["\n" + t for t in texts]
        out = []
        for t in texts:
            reason = "stop"
            if len(t) > max_tokens:
                t, reason = t[:max_tokens], "length"
            out.append(Sample(text=t, tokens=len(t), finish_reason=reason, prompt_tokens=len(prompt)))
        self.completed += 1
        return out

    async def close(self):
        return None


def hash_value(state: str) -> float:
    return int.from_bytes(hashlib.sha256(state.encode()).digest()[:4], "big") / 2**32


@dataclass
class HashValue:
    """A deterministic value function in [0, 1); records every call's size."""

    fn: Callable[[str], float] = hash_value
    version: str = "fake-value@1"
    policy_base: str | None = "fake-base"
    batch_sizes: list[int] = field(default_factory=list)
    delay: float = 0.0

    async def score(self, problem: Problem, states: Sequence[str]) -> list[float]:
        self.batch_sizes.append(len(states))
        if self.delay:
            await asyncio.sleep(self.delay)
        return [self.fn(s) for s in states]

    async def close(self):
        return None


def make_problem(pid: str = "p0", **kw) -> Problem:
    return Problem(id=pid, prompt="Return one.", starter_code="def f():\n    pass\n", entry_point="f", **kw)
