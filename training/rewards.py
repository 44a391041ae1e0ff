"""Rewards from executed tests: the only reward the training jobs use.

In: (problem, generated code = state + completion) pairs. Out: the fraction of the problem's tests
passed, in [0, 1], computed by `sandbox/` in worker processes (never in this process). A verdict
with status ``infra_error`` (the sandbox itself failed) scores 0 and is counted separately so that
a broken sandbox shows up in the metrics instead of as a policy that got worse.

`SandboxReward` is the reward function handed to TRL's `GRPOTrainer`: TRL calls it with the
completions of a generation batch plus the dataset's extra columns (``problem_id``, ``state``), and
it records every group's rewards to ``groups.jsonl`` (the per-prompt reward std figure).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.prompting import PromptMode, assemble_program, join_code
from tasks import Problem

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Scored:
    reward: float
    status: str

    @property
    def infra_error(self) -> bool:
        return self.status == "infra_error"


def _resolve(result: Any) -> Any:
    """The value of a sync or async sandbox call, from inside or outside an event loop."""
    if inspect.isawaitable(result):
        return _run_in_thread(result) if _in_loop() else asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run_in_thread(awaitable: Any) -> Any:
    box: dict[str, Any] = {}

    async def _wrap() -> Any:
        return await awaitable

    def target() -> None:
        try:
            box["value"] = asyncio.run(_wrap())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class TestRewarder:
    """Scores generated code of problems with the sandbox."""

    __test__ = False  # not a pytest class

    def __init__(self, sandbox: Any, *, mode: PromptMode, limits: Any = None) -> None:
        self.sandbox = sandbox
        self.mode = mode
        self.limits = limits

    def score(self, items: Sequence[tuple[Problem, str]]) -> list[Scored]:
        """``items``: (problem, state + completion). One sandbox batch for all of them."""
        if not items:
            return []
        jobs = [(assemble_program(problem, code, self.mode), list(problem.tests), problem.entry_point) for problem, code in items]
        verdicts = _resolve(self.sandbox.run_many(jobs, self.limits))
        out = []
        for verdict in verdicts:
            status = str(verdict.status)
            reward = 0.0 if status == "infra_error" else float(verdict.pass_fraction)
            out.append(Scored(min(1.0, max(0.0, reward)), status))
        return out


class SandboxReward:
    """TRL reward function: tests passed by ``join_code(state, completion)`` of each row."""

    __name__ = "tests"  # TRL names the reward column after the function

    def __init__(self, rewarder: TestRewarder, problems: dict[str, Problem], *, groups_log: Path | None = None) -> None:
        self.rewarder = rewarder
        self.problems = problems
        self.groups_log = groups_log
        self.calls = 0
        self.infra_errors = 0

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        problem_id: list[str],
        state: list[str],
        kind: list[str] | None = None,
        trainer_state: Any = None,
        log_metric: Any = None,
        **_: Any,
    ) -> list[float]:
        items = [(self.problems[pid], join_code(st, comp)) for pid, st, comp in zip(problem_id, state, completions, strict=True)]
        scored = self.rewarder.score(items)
        rewards = [s.reward for s in scored]
        infra = sum(s.infra_error for s in scored)
        self.calls += 1
        self.infra_errors += infra
        if log_metric is not None:
            log_metric("sandbox/infra_error_frac", infra / max(1, len(scored)))
        if infra:
            logger.warning("%d of %d programs hit a sandbox infrastructure error (scored 0)", infra, len(scored))
        if self.groups_log is not None:
            self._log_groups(problem_id, state, kind, rewards, getattr(trainer_state, "global_step", None))
        return rewards

    def _log_groups(
        self, problem_id: list[str], state: list[str], kind: list[str] | None, rewards: list[float], step: int | None
    ) -> None:
        groups: dict[tuple[str, str], list[float]] = defaultdict(list)
        kinds: dict[tuple[str, str], str] = {}
        for i, (pid, st, r) in enumerate(zip(problem_id, state, rewards, strict=True)):
            groups[(pid, st)].append(r)
            kinds[(pid, st)] = kind[i] if kind else "base"
        assert self.groups_log is not None
        with self.groups_log.open("a") as fh:
            for (pid, st), rs in groups.items():
                fh.write(json.dumps({"step": step, "problem_id": pid, "kind": kinds[(pid, st)], "state_chars": len(st), "rewards": rs}) + "\n")
