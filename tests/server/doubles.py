"""Test doubles for the fast server tests (the real engine runs in test_real_engine.py).

`FakePolicy` answers with a fixed program after an optional delay; a `gate` (asyncio.Event) holds
every call until set, which is how the overload tests keep searches running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from models.base import Sample
from tasks import Problem

PROGRAM = "def add(a, b):\n    return a + b\n"


class FakeTokenizer:
    def apply_chat_template(self, messages: list[dict[str, str]], *, tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


class FakePolicy:
    prompt_mode = "rewrite"

    def __init__(self, version: str = "fake-policy@1", *, delay_s: float = 0.0, text: str = PROGRAM, base_model: str = "fake-base"):
        self.version = version
        self.base_model = base_model
        self.tokenizer = FakeTokenizer()
        self.delay_s = delay_s
        self.text = text
        self.gate: asyncio.Event | None = None
        self.calls = 0
        self.sampling: list[dict[str, float | int | None]] = []  # per call: max_tokens, temperature, top_p, seed
        self.closed = False
        self.fail: Exception | None = None

    async def sample(self, prompt: str, *, n: int = 1, max_tokens: int = 512, stop: Sequence[str] = (),
                     temperature: float = 0.7, top_p: float = 1.0, seed: int | None = None) -> list[Sample]:
        self.calls += 1
        self.sampling.append({"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed})
        if self.fail is not None:
            raise self.fail
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        words = self.text.split(" ")
        text = " ".join(words[:max_tokens])
        finish = "stop" if len(words) <= max_tokens else "length"
        return [Sample(text=text, tokens=min(len(words), max_tokens), finish_reason=finish,  # type: ignore[arg-type]
                       prompt_tokens=len(prompt.split()), cached_prompt_tokens=0) for _ in range(n)]

    async def close(self) -> None:
        self.closed = True


class FakeValue:
    def __init__(self, version: str = "fake-value@1", score: float = 0.5, policy_base: str | None = "fake-base"):
        self.version = version
        self.policy_base = policy_base
        self.value = score
        self.closed = False

    async def score(self, problem: Problem, states: Sequence[str]) -> list[float]:
        return [self.value for _ in states]

    async def close(self) -> None:
        self.closed = True


class FakeLoader:
    """Loads doubles by name: a source containing 'corrupt' fails like a bad checkpoint; a policy
    folder named 'other...' is of another base ('other-base'), and a value folder named 'other...'
    was trained for it. The value left to the settings (None) follows the pairing rule of
    `search.stack`: none for a policy of another base than the default."""

    def __init__(self, *, any_policy: bool = False) -> None:
        self.loaded: list[str] = []
        self.any_policy = any_policy

    async def load_policy(self, source: str | None, *, reuse: object = None) -> FakePolicy:
        from models.base import CheckpointError

        if source and "corrupt" in source:
            raise CheckpointError(f"{source}/restrl.json: invalid JSON at line 1 column 1")
        self.loaded.append(f"policy:{source}")
        return FakePolicy(f"policy@{source or 'default'}", base_model="other-base" if _other(source) else "fake-base")

    async def load_value(self, source: str | None, *, policy: FakePolicy) -> object:
        from search import NoValueModel

        if source is None and policy.base_model != "fake-base" and not self.any_policy:
            self.loaded.append("value:none")
            return NoValueModel(f"no value model for the policy {policy.base_model}")
        self.loaded.append(f"value:{source}")
        return FakeValue(f"value@{source or 'default'}", policy_base="other-base" if _other(source) else "fake-base")

    def match(self, policy: FakePolicy, value: object) -> object:
        from search import value_match

        return value_match(policy.base_model, value, any_policy=self.any_policy)  # type: ignore[arg-type]


def _other(source: str | None) -> bool:
    return source is not None and source.rstrip("/").rsplit("/", 1)[-1].startswith("other")
