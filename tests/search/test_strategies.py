"""Search invariants with test doubles (scripted policy, deterministic value function)."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from search import (
    STRATEGIES,
    Budget,
    ReplayPolicy,
    ReplayValue,
    SearchConfig,
    load_trace,
    replay_inputs,
    run_search,
    save_trace,
)
from search.evaluators import step_prefixes
from search.tree import rollout_code
from search.types import MCTS_STRATEGIES
from tests.search.doubles import HashValue, ScriptedPolicy, hash_value, make_problem, random_script

ALL = sorted(STRATEGIES)
TREE_STRATEGIES = ["beam", "orm_mcts", "vm_mcts"]


def config(strategy="vm_mcts", samples=20, **kw) -> SearchConfig:
    budget = kw.pop("budget", None) or Budget(samples=samples)
    return SearchConfig(strategy=strategy, budget=budget, **kw)


def subtree(node):
    out = [node]
    for ch in node.children:
        out.extend(subtree(ch))
    return out


@pytest.mark.parametrize("strategy", ALL)
async def test_zero_budget_samples_nothing(strategy):
    policy = ScriptedPolicy()
    r = await run_search(make_problem(), policy, HashValue(), config(strategy, samples=0))
    assert r.program is None and r.code is None and r.value is None
    assert r.stop_reason == "samples" and r.usage.samples == 0 and policy.calls == []


async def test_greedy_is_one_sample_at_temperature_zero():
    policy = ScriptedPolicy()
    r = await run_search(make_problem(), policy, HashValue(), config("greedy", samples=7))
    assert [(c.n, c.temperature) for c in policy.calls] == [(1, 0.0)]
    assert r.stop_reason == "done" and r.usage.samples == 1 and r.usage.value_calls == 1
    assert r.value == pytest.approx(hash_value(r.code))
    assert r.program.startswith("def f():\n    pass\n")  # rewrite mode: starter code prepended


async def test_best_of_n_one_request_picks_highest_value():
    texts = [f"def f():\n    return {i}" for i in range(6)]
    policy = ScriptedPolicy(script=lambda s, n, i: texts[:n])
    value = HashValue(fn=lambda s: 0.9 if s.rstrip().endswith("return 3") else 0.1)
    r = await run_search(make_problem(), policy, value, config("best_of_n", samples=6, top_candidates=3))
    assert [c.n for c in policy.calls] == [6]
    assert r.code.rstrip().endswith("return 3") and r.value == 0.9 and r.stop_reason == "samples"
    assert len(r.candidates) == 3 and r.candidates[0].code == r.code
    assert all(c.samples == 1 for c in r.candidates)


async def test_a_program_sampled_again_is_one_candidate_that_counts_its_samples():
    texts = ["def f():\n    return 1", "def f():\n    return 2", "def f():\n    return 1", "def f():\n    return 1"]
    policy = ScriptedPolicy(script=lambda s, n, i: texts[:n])
    r = await run_search(make_problem(), policy, HashValue(), config("best_of_n", samples=4, top_candidates=5))
    assert sorted((c.code.rstrip()[-1], c.samples) for c in r.candidates) == [("1", 3), ("2", 1)]


@pytest.mark.parametrize(("weight", "chosen"), [(0.0, "2"), (0.5, "2"), (1.0, "1")])
async def test_count_weight_chooses_by_value_times_samples_to_the_weight(weight, chosen):
    """`SearchConfig.count_weight` = w ranks by value x samples^w (the rule of `restrl eval`'s
    count:w arms): "1" is sampled 3 times at 0.4, "2" once at 0.9; 0.4 x 3^0.5 = 0.69 < 0.9 < 1.2."""
    texts = ["def f():\n    return 1", "def f():\n    return 2", "def f():\n    return 1", "def f():\n    return 1"]
    policy = ScriptedPolicy(script=lambda s, n, i: texts[:n])
    value = HashValue(fn=lambda s: 0.9 if s.rstrip().endswith("return 2") else 0.4)
    r = await run_search(make_problem(), policy, value, config("best_of_n", samples=4, count_weight=weight))
    assert r.code.rstrip()[-1] == chosen and r.candidates[0].code == r.code
    assert r.value == (0.9 if chosen == "2" else 0.4)  # the reported value stays the model's


def test_step_prefixes_cut_after_each_generated_non_blank_line():
    code = "def f():\n    x = 1\n\n    return x\n"
    assert step_prefixes(code, "") == ["def f():\n", "def f():\n    x = 1\n", code]  # the blank line is no step
    assert step_prefixes(code, "def f():\n") == ["def f():\n    x = 1\n", code]  # the root's lines are given
    assert step_prefixes("def f():\n    return (1 +", "") == ["def f():\n", "def f():\n    return (1 +"]  # truncated
    assert step_prefixes("", "") == [""]


@pytest.mark.parametrize("aggregate", ["min", "mean", "last"])
async def test_prm_best_of_n_scores_every_line_prefix_in_one_call(aggregate):
    texts = ["def f():\n    x = 1\n    return x", "def f():\n    return 2", "def f():\n    y = 1\n    return y"]
    policy = ScriptedPolicy(script=lambda s, n, i: texts[:n])
    value = HashValue()
    r = await run_search(make_problem(), policy, value, config("prm_best_of_n", samples=3, prm_aggregate=aggregate, top_candidates=3))
    assert [c.n for c in policy.calls] == [3] and value.batch_sizes == [6]  # one batched call, shared prefix once
    assert r.usage.value_calls == 6  # every distinct prefix counts
    how = {"min": min, "mean": lambda v: sum(v) / len(v), "last": lambda v: v[-1]}[aggregate]
    for cand in r.candidates:
        assert cand.value == pytest.approx(how([hash_value(p) for p in step_prefixes(cand.code, "")]))
    assert r.value == max(c.value for c in r.candidates)
    if aggregate == "last":  # the whole program's value: the ORM score best_of_n ranks by
        orm = await run_search(make_problem(), ScriptedPolicy(script=lambda s, n, i: texts[:n]), HashValue(), config("best_of_n", samples=3))
        assert orm.code == r.code and orm.value == pytest.approx(r.value)


async def test_prm_value_call_budget_reserves_every_prefix():
    # a value_calls budget below one program's worst case (max_tokens + 1 prefixes) samples nothing
    policy = ScriptedPolicy()
    r = await run_search(make_problem(), policy, HashValue(), config("prm_best_of_n", budget=Budget(samples=4, value_calls=20), max_tokens=32))
    assert r.stop_reason == "value_calls" and policy.calls == []
    r = await run_search(make_problem(), policy, HashValue(), config("prm_best_of_n", budget=Budget(samples=4, value_calls=70), max_tokens=32))
    assert policy.calls[0].n == 2 and r.usage.value_calls <= 70  # 70 // 33: two programs at a time


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    strategy=st.sampled_from(ALL),
    samples=st.integers(0, 25),
    k=st.integers(1, 6),
    tokens=st.one_of(st.none(), st.integers(0, 400)),
    value_calls=st.one_of(st.none(), st.integers(0, 40)),
    parallel=st.integers(1, 4),
    max_tokens=st.integers(5, 60),
    seed=st.integers(0, 3),
    widen=st.booleans(),
)
def test_budget_is_never_exceeded(strategy, samples, k, tokens, value_calls, parallel, max_tokens, seed, widen):
    budget = Budget(samples=samples, tokens=tokens, value_calls=value_calls)
    cfg = SearchConfig(strategy=strategy, budget=budget, k=k, parallel_expansions=parallel, max_tokens=max_tokens, seed=seed,
                       widen=widen and strategy in MCTS_STRATEGIES)
    policy = ScriptedPolicy()
    r = asyncio.run(run_search(make_problem(), policy, HashValue(), cfg))
    u = r.usage
    assert u.samples <= samples
    assert tokens is None or u.policy_tokens <= tokens
    assert value_calls is None or u.value_calls <= value_calls
    assert sum(c.n for c in policy.calls) == u.samples
    assert all(c.max_tokens <= max_tokens for c in policy.calls)
    if strategy in TREE_STRATEGIES:
        assert all(c.n <= k for c in policy.calls)
    if r.stop_reason == "samples":  # no budget is left unused when samples stop the search
        assert u.samples == samples
    assert r.stop_reason in {"samples", "tokens", "value_calls", "exhausted", "done"}
    assert (r.program is None) == (u.samples == 0)


def test_widen_is_refused_where_nothing_selects_by_uct() -> None:
    """`widen` changes only UCT selection: asked of another strategy it is an error, not ignored."""
    for strategy in ("greedy", "best_of_n", "prm_best_of_n", "beam"):
        with pytest.raises(ValidationError, match=f"widen applies to the MCTS strategies .*; {strategy} has no UCT selection"):
            SearchConfig(strategy=strategy, widen=True)
        assert SearchConfig(strategy=strategy).widen is False
    assert all(SearchConfig(strategy=s, widen=True).widen for s in MCTS_STRATEGIES)


@pytest.mark.parametrize("widen", [False, True])
@pytest.mark.parametrize("parallel", [1, 3])
async def test_vm_mcts_visit_counts_and_values(parallel, widen):
    policy = ScriptedPolicy()
    value = HashValue()
    from search.context import SearchRun
    from search.evaluators import VMEvaluator
    from search.strategies import VMMCTS

    cfg = config("vm_mcts", samples=40, parallel_expansions=parallel, seed=1, widen=widen)
    run = SearchRun(make_problem(), policy, VMEvaluator(value), cfg)
    await VMMCTS().run(run)
    tree = run.tree
    assert run.usage.samples <= 40 and len(tree.nodes) > 5
    for node in tree.nodes:
        below = subtree(node)[1:]
        if node.parent is None:
            assert node.visits == len(below)
            assert node.value_sum == pytest.approx(sum(n.initial_value for n in below))
        else:
            assert node.visits == 1 + len(below)
            assert node.initial_value == pytest.approx(hash_value(node.state))  # VM(child state)
            assert node.value_sum == pytest.approx(node.initial_value + sum(n.initial_value for n in below))
        assert node.pending == 0 and not node.busy
        steps = [(ch.line, ch.terminal) for ch in node.children]
        assert len(steps) == len(set(steps))  # duplicate first lines merged (finished or not)
    for cand in run.candidates.values():
        assert cand.value == pytest.approx(hash_value(cand.code))


async def test_duplicate_first_lines_merge_into_one_child():
    policy = ScriptedPolicy(script=lambda s, n, i: ["    x = 1\n    return x"] * n if s == "" else ["    return x"] * n)
    r = await run_search(make_problem(), policy, HashValue(), config("vm_mcts", samples=10, k=4, record_trace=True))
    nodes = r.trace["nodes"]
    root_children = [n for n in nodes if n["parent"] == 0]
    assert len(root_children) == 1 and root_children[0]["line"] == "    x = 1\n"
    assert r.trace["expansions"][0]["children"] == [1]
    assert len(r.candidates) == 1  # four identical rollouts are one candidate


async def test_terminal_children_exhaust_without_spending_budget():
    policy = ScriptedPolicy(script=lambda s, n, i: [f"return {j}" for j in range(n)])
    r = await run_search(make_problem(), policy, HashValue(), config("vm_mcts", samples=20, k=3))
    assert r.stop_reason == "exhausted"
    assert r.usage.samples == 3 and len(policy.calls) == 1
    assert r.nodes == 4 and r.max_depth == 1


@pytest.mark.parametrize("strategy", ["vm_mcts", "orm_mcts"])
async def test_a_widened_search_samples_again_where_the_spec_tree_stops_exhausted(strategy):
    """Every root sample a finished program: the spec's tree stops after one expansion (above); with
    `widen` the root is sampled again until the budget is spent, new programs become new children."""
    policy = ScriptedPolicy(script=lambda s, n, i: [f"return {3 * i + j}" for j in range(n)])
    r = await run_search(make_problem(), policy, HashValue(), config(strategy, samples=20, k=3, widen=True, record_trace=True))
    assert r.stop_reason == "samples" and r.usage.samples == 20
    assert [c.n for c in policy.calls] == [3] * 6 + [2] and {c.state for c in policy.calls} == {""}
    assert {e["node"] for e in r.trace["expansions"]} == {0} and r.nodes == 21 and r.max_depth == 1
    programs = [c["code"] for c in r.trace["candidates"]]
    assert len(set(programs)) == 20 and r.value == pytest.approx(max(hash_value(code) for code in programs))


async def test_widen_samples_the_parent_of_a_good_terminal_rather_than_a_worse_branch():
    """The mechanism the gym traces showed (bench/RESULTS.md): the best child a finished program, the
    other a worse unfinished one. The spec's tree spends its next expansion in the worse branch; the
    widened tree samples the root again."""
    def script(state, n, i):
        return ["return 1", "    x = 0\n    return x"][:n] if state == "" else ["    return x"] * n

    def value(s):
        return 0.9 if s.rstrip().endswith("return 1") else 0.1

    spec = ScriptedPolicy(script=script)
    await run_search(make_problem(), spec, HashValue(fn=value), config("vm_mcts", samples=4, k=2))
    assert [c.state for c in spec.calls] == ["", "    x = 0\n"]
    widened = ScriptedPolicy(script=script)
    await run_search(make_problem(), widened, HashValue(fn=value), config("vm_mcts", samples=4, k=2, widen=True))
    assert [c.state for c in widened.calls] == ["", ""]


async def test_orm_mcts_values_come_from_rollouts_only():
    value = HashValue()
    r = await run_search(make_problem(), ScriptedPolicy(), value, config("orm_mcts", samples=15, k=5, record_trace=True))
    t = r.trace
    codes = {s for s, _ in t["values"]}
    assert codes == {c["code"] for c in t["candidates"]}  # only full programs were scored
    for e in t["expansions"]:
        state = t["nodes"][e["node"]]["state"]
        for cid in e["children"]:
            child = t["nodes"][cid]
            codes = [(ro, rollout_code(state, e["samples"][ro["sample"]]["text"], "stop")) for ro in e["rollouts"]]
            through = [
                ro["value"] for ro, code in codes
                if (child["terminal"] and code == child["state"])
                or (not child["terminal"] and code != child["state"] and code.startswith(child["state"]))
            ]
            assert child["initial_value"] == pytest.approx(sum(through) / len(through))
    assert r.usage.value_calls == len(t["values"]) == len({c["code"] for c in t["candidates"]})


async def test_beam_keeps_beam_width_states_per_depth():
    policy = ScriptedPolicy()
    r = await run_search(make_problem(), policy, HashValue(), config("beam", samples=40, k=4, beam_width=2, record_trace=True))
    t = r.trace
    expanded = [n for n in t["nodes"] if n["expanded"]]
    by_depth: dict[int, int] = {}
    for n in expanded:
        by_depth[n["depth"]] = by_depth.get(n["depth"], 0) + 1
    assert by_depth[0] == 1 and all(v <= 2 for v in by_depth.values())
    for d in range(1, max(by_depth) + 1):  # the expanded states are the best non-terminal children
        level = [n for n in t["nodes"] if n["depth"] == d and not n["terminal"]]
        chosen = [n for n in level if n["expanded"]]
        if chosen and len(level) > 2:
            worst_chosen = min(n["initial_value"] for n in chosen)
            assert sum(n["initial_value"] > worst_chosen for n in level if not n["expanded"]) == 0


async def _tree_of(seed: int, delay_seed: int, parallel: int, strategy: str = "vm_mcts"):
    rng = random.Random(delay_seed)
    delays = [rng.uniform(0, 0.004) for _ in range(200)]
    policy = ScriptedPolicy(delay=lambda i: delays[i % 200])
    cfg = config(strategy, samples=30, parallel_expansions=parallel, seed=seed, record_trace=True)
    r = await run_search(make_problem(), policy, HashValue(), cfg)
    return [(n["parent"], n["line"], n["visits"], round(n["value"], 9)) for n in r.trace["nodes"]], r


@pytest.mark.parametrize("parallel", [1, 3])
async def test_same_seed_same_tree_whatever_the_timing(parallel):
    a, ra = await _tree_of(seed=5, delay_seed=1, parallel=parallel)
    b, rb = await _tree_of(seed=5, delay_seed=2, parallel=parallel)
    assert a == b and ra.code == rb.code and len(a) > 5
    seeds = [e["seed"] for e in ra.trace["expansions"]]
    assert len(set(seeds)) == len(seeds)  # per-request seeds derive from the search seed


async def test_parallel_expansions_are_in_flight_together():
    policy = ScriptedPolicy(delay=0.01)
    await run_search(make_problem(), policy, HashValue(), config("vm_mcts", samples=40, parallel_expansions=3))
    assert policy.max_inflight == 3


async def test_cancelling_the_search_cancels_inflight_requests():
    policy = ScriptedPolicy(delay=lambda i: 0.0 if i == 0 else 30.0)
    task = asyncio.create_task(run_search(make_problem(), policy, HashValue(), config("vm_mcts", samples=40, parallel_expansions=3)))
    for _ in range(200):
        await asyncio.sleep(0.005)
        if policy.inflight >= 2:
            break
    assert policy.inflight >= 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert policy.inflight == 0 and policy.cancelled >= 2


async def test_deadline_returns_best_so_far_and_cancels_requests():
    policy = ScriptedPolicy(delay=lambda i: 0.0 if i < 3 else 30.0)
    cfg = config("vm_mcts", budget=Budget(samples=500, deadline_s=1.5), parallel_expansions=2)
    r = await run_search(make_problem(), policy, HashValue(), cfg)
    assert r.stop_reason == "deadline"
    assert r.program is not None and r.usage.samples == 15
    assert policy.inflight == 0 and policy.cancelled == 2


async def test_deadline_during_value_call_keeps_the_unscored_sample():
    policy = ScriptedPolicy()
    value = HashValue(delay=30.0)
    r = await run_search(make_problem(), policy, value, config("greedy", budget=Budget(samples=1, deadline_s=1.0)))
    assert r.stop_reason == "deadline" and r.usage.samples == 1
    assert r.program is not None and r.value is None


@pytest.mark.parametrize(("strategy", "widen"), [(s, False) for s in ALL] + [("vm_mcts", True)])
async def test_trace_replay_reproduces_the_search(strategy, widen, tmp_path):
    cfg = config(strategy, samples=25, parallel_expansions=2, seed=3, record_trace=True, widen=widen)
    r = await run_search(make_problem(), ScriptedPolicy(delay=0.001), HashValue(), cfg)
    path = save_trace(r.trace, tmp_path / "t.json")
    trace = load_trace(path)
    problem, cfg2 = replay_inputs(trace)
    policy = ReplayPolicy(trace)
    r2 = await run_search(problem, policy, ReplayValue(trace), cfg2)
    assert r2.trace["nodes"] == r.trace["nodes"]
    assert (r2.code, r2.value, r2.stop_reason, r2.usage.samples) == (r.code, r.value, r.stop_reason, r.usage.samples)
    assert policy.calls == len(trace["expansions"])


def test_load_trace_rejects_other_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"format": "something"}')
    with pytest.raises(ValueError, match="not a search trace"):
        load_trace(p)


async def test_progress_streams_every_node_once():
    events = []

    async def on_progress(p):
        events.append(p)

    cfg = config("vm_mcts", samples=20, parallel_expansions=2, record_trace=True)
    r = await run_search(make_problem(), ScriptedPolicy(), HashValue(), cfg, on_progress=on_progress)
    assert len(events) == len(r.trace["expansions"])
    streamed = [n for e in events for n in e.new_nodes]
    assert sorted(n["id"] for n in streamed) == list(range(1, r.nodes))
    seen = {0}
    for n in streamed:
        assert n["parent"] in seen
        seen.add(n["id"])
    assert events[-1].usage.samples == r.usage.samples
    assert events[-1].best_value == r.value


async def test_sync_progress_callback_and_usage_reporting():
    events = []
    r = await run_search(make_problem(), ScriptedPolicy(), HashValue(), config("beam", samples=8), on_progress=events.append)
    assert events and r.usage.policy_requests == len(events)
    assert r.usage.prompt_tokens > 0 and r.policy_version == "fake-policy@1" and r.value_version == "fake-value@1"


@pytest.mark.parametrize("strategy", ["vm_mcts", "beam"])
async def test_multi_line_steps(strategy):
    """step_lines=2: every non-terminal step below the root is 2 complete lines (the scripted
    samples are never truncated at this max_tokens), a terminal step is the rest of the program: at
    most 2 lines, ending with the newline of a finished sample."""
    cfg = config(strategy, samples=40, seed=5, step_lines=2, max_tokens=4096, record_trace=True)
    r = await run_search(make_problem(), ScriptedPolicy(), HashValue(), cfg)
    steps = r.trace["nodes"][1:]
    assert any(not n["terminal"] for n in steps) and any(n["terminal"] for n in steps)
    for node in steps:
        if not node["terminal"]:
            assert node["line"].count("\n") == 2 and node["line"].endswith("\n")
        else:
            assert node["line"].count("\n") <= 2 and (node["line"] == "" or node["line"].endswith("\n"))
    assert r.trace["config"]["step_lines"] == 2


def engine_like_script(state: str, n: int, call: int) -> list[str]:
    """`random_script` as the engine returns it when it stops at the closing fence: the finished
    program's last line keeps its newline, sometimes followed by blank lines or CRLF."""
    tails = ["\n", "\n\n", "\n    \n", "\r\n"]
    return [t + tails[(call + i) % len(tails)] if t else t for i, t in enumerate(random_script(state, n, call))]


@pytest.mark.parametrize("strategy", ["vm_mcts", "orm_mcts", "beam"])
async def test_no_sample_is_spent_re_expanding_a_finished_program(strategy):
    """Issue reproducer at the strategy level: with engine-like endings, a node is only expanded
    when it is not a finished program, so no expansion yields nothing but the empty terminal."""
    cfg = config(strategy, samples=60, k=4, seed=3, record_trace=True)
    r = await run_search(make_problem(), ScriptedPolicy(script=engine_like_script), HashValue(), cfg)
    nodes = r.trace["nodes"]
    assert any(n["terminal"] for n in nodes[1:]) and len(r.trace["expansions"]) > 3
    for exp in r.trace["expansions"]:
        node = nodes[exp["node"]]
        assert not node["terminal"]
        kids = [nodes[c] for c in exp["children"]]
        assert not (kids and all(k["terminal"] and k["line"] == "" for k in kids)), node["state"]
        codes = [rollout_code(node["state"], s["text"], s["finish_reason"]) for s in exp["samples"]]
        for kid in kids:
            if not kid["terminal"]:  # some sample that chose it went on past it
                assert any(c.startswith(kid["state"]) and c != kid["state"] for c in codes), kid["state"]
    # every terminal child is exactly one of the search's candidate programs (scored once)
    programs = {c["code"] for c in r.trace["candidates"]}
    assert all(n["state"] in programs for n in nodes[1:] if n["terminal"])
