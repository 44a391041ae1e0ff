"""Rewards come from executed tests in the real sandbox (never this process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.rewards import SandboxReward, TestRewarder


@pytest.fixture(scope="module")
def sandbox():
    from sandbox.pool import Sandbox

    box = Sandbox(workers=2)
    yield box
    box.close()


@pytest.fixture(scope="module")
def problem():
    from tasks.gym import make_gym

    return make_gym(0, 40, tiers=(1,)).train[0]


def test_reference_solution_scores_one_and_broken_code_less(sandbox, problem) -> None:
    rewarder = TestRewarder(sandbox, mode="rewrite")
    reference = problem.metadata["reference_solution"]
    wrong = f"def {problem.entry_point}(*args):\n    return None\n"
    scored = rewarder.score([(problem, reference), (problem, wrong), (problem, "def broken(:\n"), (problem, reference + "```\ntrailing prose")])
    assert [s.status for s in scored][0] == "passed" and scored[0].reward == 1.0
    assert scored[1].reward < 1.0 and scored[1].status != "passed"
    assert scored[2].reward == 0.0  # a syntax error after the starter code: nothing passes
    assert scored[3].reward == 1.0  # text after the closing fence is not part of the program


def test_trl_reward_function_scores_joined_state_and_completion_and_logs_groups(sandbox, problem, tmp_path: Path) -> None:
    reference = problem.metadata["reference_solution"]
    lines = reference.splitlines(keepends=True)
    state, rest = "".join(lines[:1]), "".join(lines[1:])
    log = tmp_path / "groups.jsonl"
    reward = SandboxReward(TestRewarder(sandbox, mode="rewrite"), {problem.id: problem}, groups_log=log)
    metrics: dict[str, float] = {}
    out = reward(
        prompts=["p"] * 4,
        # the prompt held back the state's final newline, so completions of a state start with it
        completions=["\n" + rest, "\n    return None\n", reference, "x = (\n"],
        problem_id=[problem.id] * 4,
        state=[state, state, "", ""],
        kind=["partial", "partial", "base", "base"],
        log_metric=lambda k, v: metrics.__setitem__(k, v),
    )
    assert out == [1.0, out[1], 1.0, 0.0] and out[1] < 1.0  # the state's line + the continuation pass
    assert metrics["sandbox/infra_error_frac"] == 0.0
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert sorted((r["kind"], len(r["rewards"])) for r in rows) == [("base", 2), ("partial", 2)]
