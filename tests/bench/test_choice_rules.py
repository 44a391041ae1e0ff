"""bench.choice_rules: programs are counted per distinct code, and the value rule is the search's."""

from __future__ import annotations

import copy

from bench.choice_rules import RULES, choice, programs
from bench.expansion_yield import guided_outcome
from tests.training.test_value_data import hand_trace


def _trace(texts: list[str], values: list[float], rewards: list[float]) -> dict:
    trace = copy.deepcopy(hand_trace())
    exp = trace["expansions"][0]
    trace["expansions"] = [exp]
    exp["samples"] = [{**exp["samples"][0], "text": t} for t in texts]
    exp["rollouts"] = [{"sample": i, "value": v, "reward": r} for i, (v, r) in enumerate(zip(values, rewards, strict=True))]
    return trace


def test_a_program_sampled_twice_counts_twice_and_can_win_on_count() -> None:
    # "a" is sampled twice (passes), "b" once with a slightly higher value (fails)
    trace = _trace(["a\nok", "b\nbad", "a\nok"], [0.50, 0.55, 0.50], [1.0, 0.0, 1.0])
    progs = programs(trace)
    assert [(p["count"], p["reward"]) for p in progs] == [(2, 1.0), (1, 0.0)]
    assert choice(progs, "value")["reward"] == 0.0  # the value rule takes "b", as the search does
    assert guided_outcome(trace)["chosen"] is False
    assert choice(progs, "value*count^0.5")["reward"] == 1.0 and choice(progs, "count,value")["reward"] == 1.0


def test_ties_go_to_the_first_sampled_program_under_every_rule() -> None:
    progs = programs(_trace(["a\nx", "b\ny"], [0.5, 0.5], [1.0, 0.0]))
    assert all(choice(progs, rule)["reward"] == 1.0 for rule in RULES)


def test_a_program_without_a_value_ranks_last_under_every_rule_as_in_the_search() -> None:
    # "a" got no value (sampled first, three times); "b" is valued 0.0: the search returns "b"
    trace = _trace(["a\nx", "a\nx", "a\nx", "b\ny"], [None, None, None, 0.0], [1.0, 1.0, 1.0, 0.0])
    progs = programs(trace)
    assert guided_outcome(trace)["chosen"] is False
    assert all(choice(progs, rule)["reward"] == 0.0 for rule in RULES)
    # with nothing valued, the first sampled program is still returned
    assert choice(programs(_trace(["a\nx", "b\ny"], [None, None], [1.0, 0.0])), "value")["reward"] == 1.0
