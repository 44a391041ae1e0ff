"""The hostile-program battery of tests/sandbox (fork bombs, memory bombs, floods, segfaults,
daemons, writes outside the scratch space, ...) sent where untrusted code reaches the sandbox from
outside: ``POST /v1/solve`` with public tests and ``rerank_with_tests`` (the program is the
request's starter code, which every candidate runs first), and the training reward
(`training.rewards.TestRewarder`). Everything is contained: the verdicts come back, nothing is
written on the host, no process of a run survives, the worker pool still works."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import Limits, Sandbox
from tasks import Problem, TestCase

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
from sandbox_support import processes_of_uid, run_uids  # noqa: E402
from test_sandbox_hostile import BATTERY, OUTSIDE, TOKEN  # noqa: E402

from tests.reliability.conftest import AUTH, inproc_server  # noqa: E402

DOUBLE = "def double(x):\n    return x * 2\n"
PUBLIC = [{"kind": "call", "args": [2], "expected": 4, "fn_name": "double"}]
LIMITS = Limits(wall_s=3.0, cpu_s=2.0, max_procs=16, memory_mb=256)  # short: five of them run to the wall


def _host_clean(sb: Sandbox, uids: list[int]) -> None:
    for uid in uids:
        assert processes_of_uid(uid) == [], f"processes of run uid {uid} left behind"
    for path in OUTSIDE + [Path(f"/tmp/daemon-{TOKEN}")]:
        assert not path.exists(), f"{path} written on the host"
    assert sb._all and all(w.alive() for w in sb._all)


def _verdict_counts(metrics: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^restrl:sandbox_verdicts_total\{status="(\w+)"\} ([0-9.e+-]+)$', metrics, re.MULTILINE)}


@pytest.mark.vllm
async def test_hostile_battery_through_solve_is_contained(vllm_policy: Any, value_model: Any) -> None:
    with Sandbox(workers=2, limits=LIMITS) as sb:
        uids = run_uids(sb)
        async with inproc_server(vllm_policy, value_model, sandbox=sb, max_queued=64, max_new_tokens=16) as (_, url), \
                httpx.AsyncClient(base_url=url, timeout=600, headers=AUTH) as client:
            before = _verdict_counts((await client.get("/metrics")).text)

            async def submit(name: str) -> httpx.Response:
                problem = {"id": name, "statement": "Complete the function double(x): return twice x.",
                           "starter_code": BATTERY[name].program, "entry_point": "double", "public_tests": PUBLIC}
                return await client.post("/v1/solve", json={
                    "problem": problem, "strategy": "greedy", "budget": {"samples": 1, "deadline_s": 120},
                    "max_tokens": 8, "rerank_with_tests": True})

            responses = await asyncio.gather(*(submit(name) for name in sorted(BATTERY)))
            for name, r in zip(sorted(BATTERY), responses, strict=True):
                assert r.status_code == 200, (name, r.text)
                body = r.json()
                assert body["reranked"] and body["candidates"], (name, body)  # the program did run
                assert all(0.0 <= c["pass_fraction"] <= 1.0 for c in body["candidates"])
            after = _verdict_counts((await client.get("/metrics")).text)
            ran = sum(after.values()) - sum(before.values())
            assert ran >= len(BATTERY), (before, after)
            assert after.get("infra_error", 0) == before.get("infra_error", 0), after
            _host_clean(sb, uids)
            assert (await client.get("/health")).status_code == 200
            ok = await client.post("/v1/solve", json={
                "problem": {"statement": "Double x.", "starter_code": DOUBLE, "entry_point": "double",
                            "public_tests": PUBLIC}, "strategy": "greedy", "budget": {"samples": 1},
                "max_tokens": 8, "rerank_with_tests": True})
            assert ok.status_code == 200 and ok.json()["reranked"], ok.text


def test_hostile_battery_through_training_rewards_is_contained() -> None:
    from training.rewards import TestRewarder

    names = sorted(BATTERY)
    with Sandbox(workers=2, limits=LIMITS) as sb:
        uids = run_uids(sb)
        rewarder = TestRewarder(sb, mode="continue", limits=LIMITS)
        items = [(Problem(id=name, prompt="double", entry_point="double", tests=BATTERY[name].tests),
                  BATTERY[name].program) for name in names]
        scored = rewarder.score(items)
        assert len(scored) == len(names)
        for name, s in zip(names, scored, strict=True):
            expected = BATTERY[name].expected
            # under a loaded machine a short wall may turn a crash into a timeout; never anything else
            assert s.status in (expected, "timeout"), (name, s)
            assert s.status != "infra_error"
            assert 0.0 <= s.reward <= 1.0 and (s.reward == 1.0) == (s.status == "passed"), (name, s)
        _host_clean(sb, uids)
        assert rewarder.score([(Problem(id="ok", prompt="double", entry_point="double",
                                        tests=[TestCase(kind="call", args=[2], expected=4, fn_name="double")]),
                                DOUBLE)])[0].reward == 1.0
