"""Every strategy on the real vLLM engine with SmolLM2-135M-Instruct and the real value model
(small budgets: the default suite shares two cores). Longer runs are marked slow."""

from __future__ import annotations

import asyncio

import pytest

from search import (
    STRATEGIES,
    Budget,
    ReplayPolicy,
    ReplayValue,
    SearchConfig,
    ValueBatcher,
    replay_inputs,
    run_search,
)

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def problem(humaneval_problems):
    return next(p for p in humaneval_problems if p.id == "HumanEval/23")  # strlen: short prompt


@pytest.fixture(scope="module")
async def batched_value(value_model):
    vb = ValueBatcher(value_model, max_batch=32, max_wait_ms=2.0)
    yield vb
    await vb.close()


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
async def test_every_strategy_on_the_real_engine(strategy, problem, vllm_policy, batched_value):
    events = []
    cfg = SearchConfig(strategy=strategy, budget=Budget(samples=4), k=2, max_tokens=96, seed=1, record_trace=True)
    r = await run_search(problem, vllm_policy, batched_value, cfg, on_progress=events.append)
    assert r.program is not None and r.code is not None
    assert 0.0 <= r.value <= 1.0
    assert r.usage.samples <= 4 and r.usage.policy_tokens > 0 and r.usage.value_calls > 0
    assert r.usage.samples == sum(e["n"] for e in r.trace["expansions"])
    assert r.policy_version == vllm_policy.version and r.value_version == batched_value.version
    assert r.program.startswith(problem.starter_code.rstrip())  # rewrite mode: starter code first
    assert len(events) == r.usage.policy_requests
    if strategy in ("beam", "orm_mcts", "vm_mcts"):
        assert r.nodes > 1 and r.max_depth >= 1
    if strategy == "greedy":
        assert r.usage.samples == 1 and r.stop_reason == "done"


async def test_real_trace_replays_to_the_same_tree(problem, vllm_policy, value_model):
    cfg = SearchConfig(strategy="vm_mcts", budget=Budget(samples=6), k=3, max_tokens=64, seed=2,
                       parallel_expansions=2, record_trace=True)
    r = await run_search(problem, vllm_policy, value_model, cfg)
    p2, cfg2 = replay_inputs(r.trace)
    r2 = await run_search(p2, ReplayPolicy(r.trace, tokenizer=vllm_policy.tokenizer), ReplayValue(r.trace), cfg2)
    assert r2.trace["nodes"] == r.trace["nodes"] and r2.code == r.code


async def test_cancelling_a_search_aborts_engine_requests(problem, vllm_policy, value_model):
    cfg = SearchConfig(strategy="vm_mcts", budget=Budget(samples=40), k=4, max_tokens=256, parallel_expansions=2)
    task = asyncio.create_task(run_search(problem, vllm_policy, value_model, cfg))
    engine = vllm_policy.engine
    for _ in range(3000):  # generous: the suite shares two cores with other jobs
        await asyncio.sleep(0.01)
        if engine.get_num_unfinished_requests() > 0:
            break
    assert engine.get_num_unfinished_requests() > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _drained(engine)


async def _drained(engine, tries: int = 3000) -> bool:
    for _ in range(tries):
        if engine.get_num_unfinished_requests() == 0:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_value_batches_pause_the_engine_when_they_share_its_cpu(problem, vllm_policy, value_model):
    """CPU time-sharing (`ValueBatcher` ``hold=policy.paused``): every value batch of a search runs
    with the engine paused; the search spends its budget and leaves the engine running."""
    import torch

    assert vllm_policy.on_cpu == (not torch.cuda.is_available())
    shared = vllm_policy._shared
    before = shared.paused_s
    vb = ValueBatcher(value_model, max_batch=32, max_wait_ms=2.0, hold=vllm_policy.paused)
    cfg = SearchConfig(strategy="vm_mcts", budget=Budget(samples=6), k=3, max_tokens=64, seed=4, parallel_expansions=2)
    r = await run_search(problem, vllm_policy, vb, cfg)
    await vb.close()
    assert r.usage.samples == 6 and r.usage.value_calls > 0 and r.program is not None
    assert vb.batches > 0 and shared.paused_s > before and vb.hold_wait_s > 0
    assert shared.pausers == 0 and not await vllm_policy.engine.is_paused()


async def test_deadline_on_the_real_engine(problem, vllm_policy, value_model):
    cfg = SearchConfig(strategy="vm_mcts", budget=Budget(samples=200, deadline_s=2.0), k=4, max_tokens=128)
    r = await run_search(problem, vllm_policy, value_model, cfg)
    assert r.stop_reason == "deadline" and r.usage.samples < 200
    assert await _drained(vllm_policy.engine)


@pytest.mark.slow
async def test_vm_mcts_budget_20_on_humaneval_subset(humaneval_problems, vllm_policy, value_model):
    cfg = SearchConfig(strategy="vm_mcts", budget=Budget(samples=20), max_tokens=256, seed=0)
    for p in humaneval_problems[:3]:
        r = await run_search(p, vllm_policy, value_model, cfg)
        assert r.usage.samples == 20 or r.stop_reason == "exhausted"
