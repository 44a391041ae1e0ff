"""Search features that execute candidates, on the real sandbox: public-test re-ranking,
stop-when-solved, and the test-based evaluator used to collect value-training data."""

from __future__ import annotations

import pytest

from search import Budget, SearchConfig, TestEvaluator, run_search
from tasks import Problem, TestCase
from tests.search.doubles import HashValue, ScriptedPolicy

BODIES = ["    return 2", "    return 1", "    return 3", "    return None"]


@pytest.fixture(scope="module")
def sandbox():
    try:
        from sandbox import Sandbox
    except ImportError:
        pytest.skip("sandbox package not available")
    sb = Sandbox(workers=2)
    yield sb
    sb.close()


def _problem(public: bool = True) -> Problem:
    call = TestCase(kind="call", args=[], expected=1)
    return Problem(
        id="one",
        prompt="Return 1.",
        starter_code="def f():\n    pass\n",
        entry_point="f",
        tests=[call, TestCase(kind="call", args=[], expected=1, fn_name="f")],
        public_tests=[call] if public else [],
    )


def _policy() -> ScriptedPolicy:
    # every continuation is "def f():\n" followed by one of the bodies (a terminal second line)
    def script(state, n, i):
        if state == "":
            return [f"def f():\n{BODIES[(i + j) % len(BODIES)]}" for j in range(n)]
        return [BODIES[(i + j) % len(BODIES)] for j in range(n)]

    return ScriptedPolicy(script=script)


def _value() -> HashValue:  # the value model prefers the wrong answer
    return HashValue(fn=lambda s: 0.9 if s.rstrip().endswith("return 2") else 0.5 if s.rstrip().endswith("return 1") else 0.1)


@pytest.mark.parametrize("strategy", ["best_of_n", "vm_mcts"])
async def test_rerank_with_public_tests_prefers_passing_program(sandbox, strategy):
    cfg = SearchConfig(strategy=strategy, budget=Budget(samples=8), k=4, rerank_with_tests=True)
    r = await run_search(_problem(), _policy(), _value(), cfg, sandbox=sandbox)
    assert r.reranked
    assert r.code.rstrip().endswith("return 1") and r.candidates[0].pass_fraction == 1.0
    assert all(c.pass_fraction is not None for c in r.candidates)
    assert [c.pass_fraction for c in r.candidates] == sorted((c.pass_fraction for c in r.candidates), reverse=True)
    plain = await run_search(_problem(), _policy(), _value(), cfg.model_copy(update={"rerank_with_tests": False}), sandbox=sandbox)
    assert not plain.reranked and plain.code.rstrip().endswith("return 2")  # the value ranking alone


async def test_no_rerank_without_public_tests_or_sandbox(sandbox):
    cfg = SearchConfig(strategy="best_of_n", budget=Budget(samples=4), rerank_with_tests=True)
    r = await run_search(_problem(public=False), _policy(), _value(), cfg, sandbox=sandbox)
    assert not r.reranked and r.candidates[0].pass_fraction is None
    r = await run_search(_problem(), _policy(), _value(), cfg, sandbox=None)
    assert not r.reranked


async def test_stop_when_solved(sandbox):
    cfg = SearchConfig(strategy="vm_mcts", budget=Budget(samples=40), k=2, stop_when_solved=True)
    r = await run_search(_problem(), _policy(), _value(), cfg, sandbox=sandbox)
    assert r.stop_reason == "solved" and r.usage.samples < 40
    assert r.code.rstrip().endswith("return 1") and r.candidates[0].pass_fraction == 1.0


async def test_test_evaluator_backs_up_pass_fractions(sandbox):
    cfg = SearchConfig(strategy="vm_mcts", budget=Budget(samples=4), k=4, c_uct=0.2, record_trace=True)
    r = await run_search(_problem(), _policy(), None, cfg, evaluator=TestEvaluator(sandbox))
    t = r.trace
    assert r.usage.value_calls == 0 and r.value_version == "tests:tests"
    rollouts = t["expansions"][0]["rollouts"]
    assert [ro["value"] for ro in rollouts] == [0.0, 1.0, 0.0, 0.0]  # return 2, 1, 3, None
    assert all(ro["status"] in ("passed", "failed") for ro in rollouts)
    child = t["nodes"][1]  # "def f():\n" carries all four rollouts: its value is their mean
    assert child["line"] == "def f():\n" and child["initial_value"] == pytest.approx(0.25)
    assert t["nodes"][0]["subtree_mean"] == pytest.approx(0.25) and t["nodes"][0]["subtree_rollouts"] == 4
    assert r.code.rstrip().endswith("return 1") and r.value == 1.0
