"""Greedy pass@1 of a policy on a problem set: the number the training experiments report.

In: a running `Policy` (any engine; a LoRA view of a shared vLLM engine works), problems, a
sandbox. Out: pass@1 (a problem counts when every test passes), mean pass fraction, and the count
of sandbox infrastructure errors (excluded from nothing: they count as failures and are reported).
All problems' requests are in flight at once so the engine batches them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from models.prompting import STOP, PromptMode, join_code, render_prompt, root_state
from tasks import Problem
from training.rewards import TestRewarder


@dataclass(frozen=True)
class PassAtOne:
    problems: int
    passed: int
    mean_pass_fraction: float
    infra_errors: int
    outcomes: tuple[bool, ...] = ()  # per problem, in the problems' order: every test passed
    rewards: tuple[float, ...] = ()  # per problem: the fraction of its tests passed

    @property
    def pass1(self) -> float:
        return self.passed / self.problems if self.problems else 0.0


async def greedy_completions(
    policy: Any, problems: Sequence[Problem], *, mode: PromptMode, max_tokens: int, desc: str = "greedy"
) -> list[str]:
    bar = tqdm(total=len(problems), desc=desc, unit="problem")

    async def one(problem: Problem) -> str:
        prompt = render_prompt(policy.tokenizer, problem, root_state(problem, mode), mode)
        samples = await policy.sample(prompt, n=1, max_tokens=max_tokens, stop=STOP, temperature=0.0)
        bar.update(1)
        return samples[0].text

    try:
        return list(await asyncio.gather(*(one(p) for p in problems)))
    finally:
        bar.close()


def score_pass1(problems: Sequence[Problem], completions: Sequence[str], rewarder: TestRewarder, mode: PromptMode) -> PassAtOne:
    """Run each problem's completion (after its root state) against its tests."""
    items = [(p, join_code(root_state(p, mode), c)) for p, c in zip(problems, completions, strict=True)]
    scored = rewarder.score(items)
    return PassAtOne(
        problems=len(items),
        passed=sum(s.status == "passed" for s in scored),
        mean_pass_fraction=sum(s.reward for s in scored) / max(1, len(scored)),
        infra_errors=sum(s.infra_error for s in scored),
        outcomes=tuple(s.status == "passed" for s in scored),
        rewards=tuple(float(s.reward) for s in scored),
    )
