"""`bench.final_choice`: the final-answer rules re-picked from a recorded search trace."""

from __future__ import annotations

from bench.final_choice import RULES, pick
from search import Budget, SearchConfig, run_search
from tests.search.doubles import HashValue, ScriptedPolicy, make_problem
from training.search_eval import search_record


async def _trace() -> tuple[dict, str]:
    cfg = SearchConfig(strategy="vm_mcts", budget=Budget(samples=30), seed=2, parallel_expansions=1, record_trace=True)
    r = await run_search(make_problem(), ScriptedPolicy(), HashValue(), cfg)
    assert r.trace is not None and r.code is not None
    return r.trace, r.code


async def test_value_rule_is_what_the_search_returned_and_rules_pick_candidates():
    trace, returned = await _trace()
    cands = search_record(trace, per_sample=False)["candidates"]
    codes = [c["code"] for c in cands]
    assert len(codes) == len(set(codes)) > 5
    assert pick("value", trace, cands, {})["code"] == returned
    for rule in RULES:
        assert pick(rule, trace, cands, {})["code"] in codes
    first = min(c["step"] for c in cands)
    assert pick("first_k", trace, cands, {})["step"] == first


async def test_visits_rule_follows_the_most_visited_path():
    trace, _ = await _trace()
    cands = search_record(trace, per_sample=False)["candidates"]
    chosen = pick("visits", trace, cands, {})["code"]
    nodes = trace["nodes"]
    top = max((n for n in nodes if n["parent"] == 0 and any(c["code"].startswith(n["state"]) for c in cands)),
              key=lambda n: (n["visits"], n["value"], -n["id"]))
    assert chosen.startswith(top["state"])


async def test_public_tests_rule_ranks_by_pass_fraction_first():
    trace, returned = await _trace()
    cands = search_record(trace, per_sample=False)["candidates"]
    low = min(cands, key=lambda c: c["value"])
    assert low["code"] != returned
    public = {c["code"]: 0.0 for c in cands} | {low["code"]: 1.0}
    assert pick("public_tests", trace, cands, public)["code"] == low["code"]
    assert pick("public_tests", trace, cands, {})["code"] == returned  # no tests: value decides
