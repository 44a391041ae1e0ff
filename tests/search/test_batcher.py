"""ValueBatcher: grouping across concurrent callers, splitting, cancellation, errors."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from models.base import ModelError
from search import ValueBatcher
from tests.search.doubles import HashValue, hash_value, make_problem


class PairValue(HashValue):
    """A value model that also scores (problem, state) pairs of several problems in one pass."""

    async def score_pairs(self, pairs):
        self.batch_sizes.append(len(pairs))
        if self.delay:
            await asyncio.sleep(self.delay)
        return [self.fn(s) for _, s in pairs]


async def test_concurrent_callers_share_forward_passes():
    inner = PairValue()
    sizes = []
    vb = ValueBatcher(inner, max_batch=64, max_wait_ms=5.0, on_batch=sizes.append)
    problems = [make_problem(f"p{i}") for i in range(4)]
    calls = [vb.score(p, [f"s{i}-{j}" for j in range(3)]) for i, p in enumerate(problems)]
    out = await asyncio.gather(*calls)
    assert out == [[hash_value(f"s{i}-{j}") for j in range(3)] for i in range(4)]
    assert inner.batch_sizes == [12] and sizes == [12] and vb.batches == 1
    assert vb.version == inner.version
    await vb.close()


async def test_without_score_pairs_batches_split_per_problem():
    inner = HashValue()
    vb = ValueBatcher(inner, max_batch=64, max_wait_ms=5.0)
    p, q = make_problem("p"), make_problem("q")
    out = await asyncio.gather(vb.score(p, ["a", "b"]), vb.score(q, ["c"]), vb.score(p, ["d"]))
    assert out == [[hash_value("a"), hash_value("b")], [hash_value("c")], [hash_value("d")]]
    assert sorted(inner.batch_sizes) == [1, 3] and vb.batches == 1
    await vb.close()


async def test_max_batch_one_is_the_reference_pattern():
    inner = HashValue()
    vb = ValueBatcher(inner, max_batch=1, max_wait_ms=0.0)
    assert await vb.score(make_problem(), ["a", "b", "c"]) == [hash_value(s) for s in "abc"]
    assert inner.batch_sizes == [1, 1, 1]
    await vb.close()


async def test_large_requests_are_split_at_max_batch():
    inner = PairValue()
    vb = ValueBatcher(inner, max_batch=4, max_wait_ms=1.0)
    states = [f"s{i}" for i in range(10)]
    assert await vb.score(make_problem(), states) == [hash_value(s) for s in states]
    assert inner.batch_sizes == [4, 4, 2]
    await vb.close()


async def test_cancelled_caller_is_not_scored():
    inner = PairValue(delay=0.05)
    vb = ValueBatcher(inner, max_batch=2, max_wait_ms=0.0)
    first = asyncio.create_task(vb.score(make_problem(), ["a", "b"]))  # occupies the model
    await asyncio.sleep(0.01)
    second = asyncio.create_task(vb.score(make_problem(), ["c", "d"]))
    await asyncio.sleep(0.01)
    second.cancel()
    assert await first == [hash_value("a"), hash_value("b")]
    with pytest.raises(asyncio.CancelledError):
        await second
    await asyncio.sleep(0.1)
    assert inner.batch_sizes == [2]  # "c", "d" never reached the model
    await vb.close()


async def test_model_errors_reach_every_waiter_of_the_batch():
    class Broken(HashValue):
        async def score(self, problem, states):
            raise ModelError("boom")

    vb = ValueBatcher(Broken(), max_wait_ms=2.0)
    results = await asyncio.gather(vb.score(make_problem(), ["a"]), vb.score(make_problem(), ["b"]), return_exceptions=True)
    assert all(isinstance(r, ModelError) for r in results)
    assert await ValueBatcher(HashValue()).score(make_problem(), []) == []
    await vb.close()
    with pytest.raises(ModelError):
        await vb.score(make_problem(), ["a"])


async def test_hold_encloses_the_scoring_and_its_failures_do_not_lose_scores(caplog):
    """``hold`` (the engine pause of CPU time-sharing) encloses the scoring of the queue, one hold
    for consecutive batches; a hold that cannot be taken or released is logged and the batch is
    scored all the same."""
    events: list[str] = []
    inner = PairValue()
    inner_score_pairs = inner.score_pairs

    async def recording_score_pairs(pairs):
        events.append(f"score {len(pairs)}")
        return await inner_score_pairs(pairs)

    inner.score_pairs = recording_score_pairs  # type: ignore[method-assign]

    @contextlib.asynccontextmanager
    async def hold():
        events.append("take")
        try:
            yield
        finally:
            events.append("release")

    vb = ValueBatcher(inner, max_batch=2, max_wait_ms=2.0, hold=hold)
    assert await vb.score(make_problem(), ["a", "b", "c"]) == [hash_value(s) for s in "abc"]
    assert events == ["take", "score 2", "score 1", "release"]
    assert await vb.score(make_problem(), ["d"]) == [hash_value("d")]
    assert events[4:] == ["take", "score 1", "release"]
    await vb.close()

    @contextlib.asynccontextmanager
    async def unavailable():
        raise RuntimeError("engine gone")
        yield  # pragma: no cover

    @contextlib.asynccontextmanager
    async def release_fails():
        yield
        raise RuntimeError("resume failed")

    for broken in (unavailable, release_fails):
        vb = ValueBatcher(PairValue(), hold=broken)
        with caplog.at_level("WARNING", logger="search.batcher"):
            assert await vb.score(make_problem(), ["x"]) == [hash_value("x")]
            assert await vb.score(make_problem(), ["y"]) == [hash_value("y")]  # the worker lives on
        await vb.close()
    assert "could not take the hold" in caplog.text and "releasing the hold failed" in caplog.text


def test_cpu_sharing_mode_resolution():
    from search.batcher import pauses_engine

    assert pauses_engine("auto", engine_on_cpu=True, value_device="cpu")
    assert not pauses_engine("auto", engine_on_cpu=True, value_device="cuda:0")
    assert not pauses_engine("auto", engine_on_cpu=False, value_device="cpu")
    assert pauses_engine("pause", engine_on_cpu=False, value_device="cuda")
    assert not pauses_engine("concurrent", engine_on_cpu=True, value_device="cpu")


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        ValueBatcher(HashValue(), max_batch=0)


async def test_concurrent_searches_share_value_batches():
    from search import Budget, SearchConfig, run_search
    from tests.search.doubles import ScriptedPolicy

    inner = PairValue(delay=0.002)
    vb = ValueBatcher(inner, max_batch=64, max_wait_ms=2.0)
    cfg = SearchConfig(strategy="vm_mcts", budget=Budget(samples=15), parallel_expansions=2, seed=0)
    problems = [make_problem(f"p{i}") for i in range(4)]
    alone = [await run_search(p, ScriptedPolicy(delay=0.002), HashValue(), cfg) for p in problems]
    together = await asyncio.gather(*(run_search(p, ScriptedPolicy(delay=0.002), vb, cfg) for p in problems))
    assert [r.code for r in together] == [r.code for r in alone]  # batching changes nothing but speed
    expansions = sum(r.usage.policy_requests for r in together)
    assert vb.batches < expansions and max(inner.batch_sizes) > 10
    await vb.close()


class PreparedValue(PairValue):
    """Records the problems a search announced (``prepare``) and when, relative to scoring."""

    def __init__(self, fail: bool = False, **kw):
        super().__init__(**kw)
        self.events: list[str] = []
        self.fail = fail

    async def prepare(self, problem):
        self.events.append(f"prepare {problem.id}")
        if self.fail:
            raise RuntimeError("cache full")

    async def score_pairs(self, pairs):
        self.events.append("score")
        return await super().score_pairs(pairs)


async def test_searches_announce_their_problem_to_the_value_model_first():
    from search import Budget, SearchConfig, run_search
    from tests.search.doubles import ScriptedPolicy

    cfg = SearchConfig(strategy="vm_mcts", budget=Budget(samples=10), seed=0)
    inner = PreparedValue()
    vb = ValueBatcher(inner, max_batch=64, max_wait_ms=1.0)
    result = await run_search(make_problem("p7"), ScriptedPolicy(delay=0.01), vb, cfg)
    assert inner.events[0] == "prepare p7" and inner.events.count("prepare p7") == 1 and "score" in inner.events[1:]
    failing = PreparedValue(fail=True)  # a failed prepare is only a lost optimisation
    again = await run_search(make_problem("p7"), ScriptedPolicy(delay=0.01), ValueBatcher(failing), cfg)
    assert failing.events[0] == "prepare p7" and again.code == result.code
    await vb.close()
    closed = ValueBatcher(PreparedValue())
    await closed.close()
    await closed.prepare(make_problem("p8"))  # a closed batcher ignores it
    assert closed.value.events == []
