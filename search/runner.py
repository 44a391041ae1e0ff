"""`run_search`: one search of one problem, start to finish.

In: a `Problem`, a `Policy`, a `ValueModel` (or an `Evaluator` replacing it), a `SearchConfig`,
optionally a sandbox (public-test re-ranking) and a progress callback. Out: a `SearchResult`.

Lifecycle: the strategy named by ``config.strategy`` grows a `SearchRun`; every request it has
in flight is a task tracked by the run and cancelled in ``finally`` - so cancelling the task
that awaits `run_search` aborts all its engine requests and produces no result, while reaching
``budget.deadline_s`` cancels them, keeps whatever completed, and returns the best so far with
stop reason "deadline". Re-ranking on public tests (``rerank_with_tests``) runs after the search,
inside what is left of the deadline; if it does not fit, the value ranking stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from models.base import Policy, PreparingValueModel, ValueModel
from sandbox.api import ProgramRunner
from search.context import ProgressCallback, SearchRun
from search.evaluators import Evaluator
from search.strategies import STRATEGIES
from search.trace import build_trace
from search.types import SearchConfig, SearchResult
from tasks import Problem

logger = logging.getLogger(__name__)


async def run_search(
    problem: Problem,
    policy: Policy,
    value: ValueModel | None,
    config: SearchConfig,
    *,
    sandbox: ProgramRunner | None = None,
    evaluator: Evaluator | None = None,
    on_progress: ProgressCallback | None = None,
) -> SearchResult:
    """Search for a program solving ``problem`` within ``config.budget`` (see the module doc)."""
    strategy = STRATEGIES[config.strategy]()
    if evaluator is not None:
        evaluator = evaluator.fork()
    elif value is not None:
        evaluator = strategy.default_evaluator(value, config)
    else:
        raise ValueError("run_search needs a value model or an evaluator")
    run = SearchRun(problem, policy, evaluator, config, sandbox=sandbox, on_progress=on_progress)
    # the value model may warm its cache for the problem while the first expansion samples
    prepare = value if isinstance(value, PreparingValueModel) else None
    warm = asyncio.get_running_loop().create_task(_warm(prepare, problem)) if prepare is not None else None
    deadline = config.budget.deadline_s
    timeout = asyncio.timeout(deadline) if deadline is not None else None
    try:
        async with timeout if timeout is not None else contextlib.nullcontext():
            try:
                await strategy.run(run)
            finally:
                await run.cancel_inflight()
                if warm is not None:
                    warm.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await warm
    except TimeoutError:
        if timeout is None or not timeout.expired():
            raise
        run.stop("deadline")
        run.salvage()
    if (config.rerank_with_tests or config.stop_when_solved) and run.test_public and run.candidates:
        await _rerank(run, deadline)
    result = run.result(config.strategy, trace=build_trace(run, config.strategy) if config.record_trace else None)
    logger.info(
        "search problem=%s strategy=%s stop=%s samples=%d tokens=%d cached=%d value_calls=%d nodes=%d depth=%d "
        "candidates=%d best_value=%s reranked=%s wall=%.2fs",
        problem.id, config.strategy, result.stop_reason, result.usage.samples, result.usage.policy_tokens,
        result.usage.cached_prompt_tokens, result.usage.value_calls, result.nodes, result.max_depth,
        len(run.candidates), None if result.value is None else round(result.value, 4), result.reranked,
        result.usage.wall_s,
    )
    return result


async def _warm(value: PreparingValueModel, problem: Problem) -> None:
    """A value model's ``prepare``: an optimisation, so a failure is logged and scoring (which
    reports errors) goes on."""
    try:
        await value.prepare(problem)
    except Exception as exc:
        logger.warning("value model prepare failed for problem %s: %s", problem.id, exc)


async def _rerank(run: SearchRun, deadline: float | None) -> None:
    if deadline is None:
        await run.rerank()
        return
    left = deadline - (time.monotonic() - run.t0)
    if left <= 0:
        logger.warning("search problem=%s: no time left for test re-ranking", run.problem.id)
        return
    try:
        async with asyncio.timeout(left):
            await run.rerank()
    except TimeoutError:
        logger.warning("search problem=%s: test re-ranking did not fit the deadline; value ranking kept", run.problem.id)
