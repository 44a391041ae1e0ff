"""Value-training rows: targets, de-duplication, problem split and resume (collect-values).

The target rules are checked twice: on a hand-built trace with hand-computed numbers, and as
invariants of traces the real search engine (`search.run_search` + `TestEvaluator`) grows from a
scripted policy, with a deterministic stand-in for the sandbox's verdicts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from search import TestEvaluator, load_trace, run_search
from tasks import Problem, TestCase
from tests.search.doubles import ScriptedPolicy, make_problem, random_script
from training.value_data import (
    CollectConfig,
    collect,
    dedupe_rows,
    read_rows,
    rows_from_trace,
    search_config,
    select_problems,
    trace_path,
)
from training.value_train import split_by_problem


def _node(i, parent, state, *, expanded, terminal=False, initial=None, n_sub=0, mean=None):
    return {"id": i, "parent": parent, "state": state, "line": "", "depth": 0, "value": 0.0, "initial_value": initial,
            "visits": 1, "terminal": terminal, "expanded": expanded, "exhausted": False,
            "subtree_rollouts": n_sub, "subtree_mean": mean}


def _sample(text):
    return {"text": text, "tokens": 1, "finish_reason": "stop", "prompt_tokens": 1, "cached_prompt_tokens": 0}


def hand_trace() -> dict:
    """Root "" expanded into A ("a\\n", 2 rollouts 1.0 and 0.5) and B ("b\\n", 1 rollout 0.0);
    A expanded into a terminal "a\\nx\\n" (rollout 1.0) and a child "a\\ny\\n" (rollout 0.0)."""
    return {
        "problem": {"id": "p"},
        "nodes": [
            _node(0, None, "", expanded=True, n_sub=5, mean=(1.0 + 0.5 + 0.0 + 1.0 + 0.0) / 5),
            _node(1, 0, "a\n", expanded=True, initial=0.75, n_sub=2, mean=0.5),
            _node(2, 0, "b\n", expanded=False, initial=0.0),
            _node(3, 1, "a\nx\n", expanded=False, terminal=True, initial=1.0),
            _node(4, 1, "a\ny\n", expanded=False, initial=0.0),
        ],
        "expansions": [
            {"seq": 0, "node": 0, "complete": True, "children": [1, 2],
             "samples": [_sample("a\nret1"), _sample("a\nret2"), _sample("b\nret3")],
             "rollouts": [{"sample": 0, "value": 1.0}, {"sample": 1, "value": 0.5}, {"sample": 2, "value": 0.0}]},
            {"seq": 1, "node": 1, "complete": True, "children": [3, 4],
             "samples": [_sample("\nx"), _sample("\ny\nz")],
             "rollouts": [{"sample": 0, "value": 1.0}, {"sample": 1, "value": 0.0}]},
        ],
    }


def test_targets_on_a_hand_built_tree() -> None:
    rows = {(r["kind"], r["state"]): r for r in rows_from_trace(hand_trace())}
    assert rows[("expanded", "")]["target"] == pytest.approx(0.5) and rows[("expanded", "")]["visits"] == 5
    assert rows[("expanded", "a\n")]["target"] == pytest.approx(0.5) and rows[("expanded", "a\n")]["visits"] == 2
    assert rows[("child", "b\n")]["target"] == 0.0 and rows[("child", "b\n")]["visits"] == 1
    assert rows[("child", "a\ny\n")]["target"] == 0.0
    assert ("child", "a\nx\n") not in rows  # a terminal child is a program, not a state to extend
    programs = {s: r["target"] for (k, s), r in rows.items() if k == "program"}
    # finished programs are canonical (`search.tree.rollout_code`): one trailing newline
    assert programs == {"a\nret1\n": 1.0, "a\nret2\n": 0.5, "b\nret3\n": 0.0, "a\nx\n": 1.0, "a\ny\nz\n": 0.0}
    assert all(r["problem_id"] == "p" for r in rows.values())
    # `solved`: the share of the same rollouts that pass every test (0.5 is a partial pass, not solved)
    assert rows[("expanded", "")]["solved"] == pytest.approx(2 / 5)
    assert rows[("expanded", "a\n")]["solved"] == pytest.approx(1 / 2)
    assert rows[("child", "b\n")]["solved"] == 0.0
    assert {s: r["solved"] for (k, s), r in rows.items() if k == "program"} == {
        "a\nret1\n": 1.0, "a\nret2\n": 0.0, "b\nret3\n": 0.0, "a\nx\n": 1.0, "a\ny\nz\n": 0.0}
    without = rows_from_trace(hand_trace(), include_children=False)
    assert {r["kind"] for r in without} == {"expanded", "program"}


def test_dedupe_merges_same_kind_by_visits_and_prefers_programs() -> None:
    rows = [
        {"problem_id": "p", "state": "s\n", "target": 1.0, "kind": "expanded", "visits": 3, "solved": 1.0},
        {"problem_id": "p", "state": "s\n", "target": 0.0, "kind": "expanded", "visits": 1, "solved": 0.0},
        {"problem_id": "q", "state": "s\n", "target": 0.2, "kind": "expanded", "visits": 1},  # other problem: kept apart
        {"problem_id": "p", "state": "c", "target": 0.5, "kind": "child", "visits": 2},
        {"problem_id": "p", "state": "c", "target": 1.0, "kind": "program", "visits": 1},
        {"problem_id": "p", "state": "c", "target": 0.0, "kind": "child", "visits": 5},  # a child never overrides a program
    ]
    out = {(r["problem_id"], r["state"]): r for r in dedupe_rows(rows)}
    assert len(out) == 3
    assert out[("p", "s\n")]["target"] == pytest.approx(0.75) and out[("p", "s\n")]["visits"] == 4
    assert out[("p", "s\n")]["solved"] == pytest.approx(0.75)
    assert out[("q", "s\n")]["target"] == 0.2
    assert out[("p", "c")]["kind"] == "program" and out[("p", "c")]["target"] == 1.0


def test_split_by_problem_is_disjoint_complete_and_seeded() -> None:
    rows = [{"problem_id": f"p{i % 10}", "state": str(i), "target": 0.0, "kind": "program", "visits": 1} for i in range(50)]
    train, held = split_by_problem(rows, holdout_fraction=0.2, seed=3)
    assert len(train) + len(held) == 50
    assert not {r["problem_id"] for r in train} & {r["problem_id"] for r in held}
    assert len({r["problem_id"] for r in held}) == 2
    assert split_by_problem(rows, holdout_fraction=0.2, seed=3) == (train, held)
    assert split_by_problem(rows, holdout_fraction=0.2, seed=4)[1] != held
    one, none = split_by_problem(rows[:1], holdout_fraction=0.5, seed=0)
    assert len(one) + len(none) == 1
    # problems an earlier model trained on are never held out; the held-out share stays that of all problems
    never = {"p0", "p1", "p2", "p3", "p4"}
    train2, held2 = split_by_problem(rows, holdout_fraction=0.2, seed=3, never=never)
    assert len({r["problem_id"] for r in held2}) == 2 and not {r["problem_id"] for r in held2} & never
    assert len(train2) + len(held2) == 50 and never <= {r["problem_id"] for r in train2}
    assert split_by_problem(rows, holdout_fraction=0.2, seed=3, never=()) == (train, held)  # nothing excluded: the same draw


# ---------------------------------------------------------------- the real search engine


class SeededPolicy(ScriptedPolicy):
    """A scripted policy whose continuations depend on (state, n, request seed) only, like a
    seeded engine: the same search issues the same requests and gets the same answers whatever
    else runs beside it."""

    def __init__(self) -> None:
        super().__init__(script=lambda state, n, i: random_script(state, n, 0, seed=self._seeds[i]))
        self._seeds: dict[int, int] = {}

    async def sample(self, prompt, *, n=1, max_tokens=512, stop=(), temperature=0.7, top_p=1.0, seed=None):
        self._seeds[len(self.calls)] = -1 if seed is None else seed
        return await super().sample(prompt, n=n, max_tokens=max_tokens, stop=stop, temperature=temperature, top_p=top_p, seed=seed)


@dataclass
class _Verdict:
    status: str
    pass_fraction: float


class HashSandbox:
    """Stands in for `sandbox.Sandbox` in these invariants: a program's pass fraction is a fixed
    function of its text (0, 0.5 or 1). Counts programs run."""

    def __init__(self) -> None:
        self.runs = 0

    async def run_many(self, jobs, limits=None):
        self.runs += len(jobs)
        out = []
        for program, _tests, _entry in jobs:
            frac = hashlib.sha256(program.encode()).digest()[0] % 3 / 2
            out.append(_Verdict("passed" if frac == 1.0 else "failed", frac))
        return out


def _problem(pid: str) -> Problem:
    return make_problem(pid, tests=[TestCase(kind="call", args=[], expected=0, fn_name="f")])


async def test_search_trace_targets_are_subtree_means_of_executed_rollouts() -> None:
    cfg = CollectConfig(search={"budget": {"samples": 30}, "k": 5, "max_tokens": 200})
    problem = _problem("p")
    box = HashSandbox()
    result = await run_search(problem, ScriptedPolicy(), None, search_config(cfg, 0), evaluator=TestEvaluator(box))
    assert result.trace is not None and result.trace["config"]["c_uct"] == 0.2
    trace = result.trace
    rows = rows_from_trace(trace)
    programs = {r["state"]: r["target"] for r in rows if r["kind"] == "program"}
    assert len(programs) >= 5 and set(programs.values()) <= {0.0, 0.5, 1.0}
    # every rollout sampled at or below a node counts towards that node's target, each once
    nodes = {n["id"]: n for n in trace["nodes"]}

    def ancestors(nid):
        while nid is not None:
            yield nid
            nid = nodes[nid]["parent"]

    sums: dict[int, list[float]] = {}
    for exp in trace["expansions"]:
        for ro in exp["rollouts"]:
            for a in ancestors(exp["node"]):
                sums.setdefault(a, []).append(ro["value"])
    expanded = [r for r in rows if r["kind"] == "expanded"]
    assert len(expanded) == len(trace["expansions"]) >= 2
    by_state = {n["state"]: n["id"] for n in trace["nodes"] if n["expanded"]}
    for r in expanded:
        vals = sums[by_state[r["state"]]]
        assert r["target"] == pytest.approx(sum(vals) / len(vals)) and r["visits"] == len(vals)
    root = next(r for r in expanded if r["state"] == nodes[0]["state"])
    assert root["visits"] == result.usage.samples


async def test_collect_writes_traces_and_rows_and_resumes(tmp_path: Path) -> None:
    cfg = CollectConfig(output_dir=str(tmp_path / "vd"), search={"budget": {"samples": 10}, "k": 5, "max_tokens": 200}, concurrency=2)
    problems = [_problem(f"p{i}") for i in range(3)]
    policy = SeededPolicy()
    summary = await collect(problems, policy, HashSandbox(), cfg)
    assert summary["problems_searched"] == 3 and summary["rows"] == len(read_rows(tmp_path / "vd" / "rows.jsonl"))
    rows_before = read_rows(tmp_path / "vd" / "rows.jsonl")
    assert {r["problem_id"] for r in rows_before} == {"p0", "p1", "p2"}
    assert len({(r["problem_id"], r["state"]) for r in rows_before}) == len(rows_before)
    calls = len(policy.calls)
    trace_path(tmp_path / "vd", "p1").unlink()
    again = SeededPolicy()
    summary2 = await collect(problems, again, HashSandbox(), cfg, resume=True)
    assert len(again.calls) == calls // 3  # only p1 was searched again
    assert summary2["problems_searched"] == 3
    assert read_rows(tmp_path / "vd" / "rows.jsonl") == rows_before  # same seed, same search
    json.loads((tmp_path / "vd" / "summary.json").read_text())


async def test_collection_sharded_over_two_engines_writes_what_one_engine_writes(tmp_path: Path) -> None:
    """Data-parallel collect-values (one engine per GPU): searches dealt across the engines, each
    search the same as on one engine (seeded per problem), the rows merged identical."""
    search = {"budget": {"samples": 10}, "k": 5, "max_tokens": 200}
    problems = [_problem(f"p{i}") for i in range(5)]
    one = CollectConfig(output_dir=str(tmp_path / "one"), search=search, concurrency=2)
    await collect(problems, SeededPolicy(), HashSandbox(), one)
    two = CollectConfig(output_dir=str(tmp_path / "two"), search=search, concurrency=2)
    first, second = SeededPolicy(), SeededPolicy()
    summary = await collect(problems, first, HashSandbox(), two, replicas=[(second, None)])
    assert summary["problems_searched"] == 5
    assert first.calls and second.calls  # both engines searched
    assert read_rows(tmp_path / "two" / "rows.jsonl") == read_rows(tmp_path / "one" / "rows.jsonl")


async def test_guided_collection_values_the_tree_with_the_value_model_and_targets_executed_rewards(tmp_path: Path) -> None:
    """guided=true: every problem is also searched as VM-MCTS decodes (the value model values the
    tree, decoding C), and the rows' targets are still the executed rewards, with each row's depth."""
    from tests.search.doubles import HashValue

    cfg = CollectConfig(output_dir=str(tmp_path / "vd"), search={"budget": {"samples": 15}, "k": 5, "max_tokens": 200}, concurrency=2,
                        guided=True)
    problems = [_problem(f"p{i}") for i in range(2)]
    box = HashSandbox()
    summary = await collect(problems, SeededPolicy(), box, cfg, value=HashValue())
    assert summary["searches_by_mode"] == {"tests": 2, "guided": 2}
    guided = load_trace(trace_path(tmp_path / "vd", "p0", "guided"))
    assert guided["config"]["c_uct"] == 0.1 and load_trace(trace_path(tmp_path / "vd", "p0"))["config"]["c_uct"] == 0.2
    ros = [ro for e in guided["expansions"] for ro in e["rollouts"]]
    assert ros and all(ro["reward"] in (0.0, 0.5, 1.0) for ro in ros)
    assert any(ro["value"] not in (0.0, 0.5, 1.0) for ro in ros)  # the tree's values came from the value model
    rows = rows_from_trace(guided)
    assert {r["target"] for r in rows if r["kind"] == "program"} <= {0.0, 0.5, 1.0}
    assert all(isinstance(r["depth"], int) and r["depth"] >= 0 for r in rows) and max(r["depth"] for r in rows) >= 1
    assert sum(summary["target_histogram"]) == summary["rows"]
    with pytest.raises(ValueError, match="needs a value model"):
        await collect(problems, SeededPolicy(), box, cfg.model_copy(update={"output_dir": str(tmp_path / "x")}))


async def test_a_rest_iteration_collects_guided_searches_of_its_own_and_trains_on_the_union(tmp_path: Path) -> None:
    """A ReST iteration (issue 20): ``tests_mode: false`` runs only the guided searches, with
    ``guided_seed_offset`` their samples differ from the first collection's, and value training on
    both rows files takes the union, a state found by both merged by its rollouts."""
    from tasks import write_jsonl
    from tests.search.doubles import HashValue
    from training.value_train import ValueTrainConfig, _split_rows, load_problems, trained_policy

    search = {"budget": {"samples": 10}, "k": 5, "max_tokens": 200}
    problems = [_problem(f"p{i}") for i in range(3)]
    first = CollectConfig(output_dir=str(tmp_path / "v1"), search=search, concurrency=2, guided=True)
    await collect(problems, SeededPolicy(), HashSandbox(), first, value=HashValue())
    again = CollectConfig(output_dir=str(tmp_path / "v2"), search=search, concurrency=2, guided=True, tests_mode=False,
                          guided_seed_offset=1000)
    summary = await collect(problems, SeededPolicy(), HashSandbox(), again, value=HashValue())
    assert summary["searches_by_mode"] == {"guided": 3} and summary["problems_searched"] == 3
    assert not trace_path(tmp_path / "v2", "p0").exists()
    seeds = [load_trace(trace_path(tmp_path / d, "p1", "guided"))["expansions"][0]["seed"] for d in ("v1", "v2")]
    assert seeds[0] != seeds[1]
    with pytest.raises(ValueError, match="needs guided"):
        CollectConfig(tests_mode=False)

    for d in ("v1", "v2"):
        write_jsonl(tmp_path / d / "problems.jsonl", problems)
        (tmp_path / d / "config.json").write_text(json.dumps({"policy": {"model": None}}))
    rows1, rows2 = read_rows(tmp_path / "v1" / "rows.jsonl"), read_rows(tmp_path / "v2" / "rows.jsonl")
    cfg = ValueTrainConfig(rows_file=[str(tmp_path / "v1" / "rows.jsonl"), str(tmp_path / "v2" / "rows.jsonl")],
                           problems_file=[str(tmp_path / "v1" / "problems.jsonl"), str(tmp_path / "v2" / "problems.jsonl")])
    union = load_problems(*cfg.problems_files())
    train, held = _split_rows(cfg, union)  # type: ignore[arg-type]
    assert sorted((r["problem_id"], r["state"]) for r in train + held) == sorted(
        {(r["problem_id"], r["state"]) for r in rows1 + rows2})
    root = [r for r in train + held if r["problem_id"] == "p0" and r["depth"] == 0 and r["kind"] == "expanded"]
    v1_root = next(r for r in rows1 if r["problem_id"] == "p0" and r["depth"] == 0 and r["kind"] == "expanded")
    assert len(root) == 1 and root[0]["visits"] == v1_root["visits"] + 10  # both collections' rollouts behind it
    assert trained_policy(cfg).model is None
    (tmp_path / "v2" / "config.json").write_text(json.dumps({"policy": {"model": None, "kv_cache_gib": 2.0}}))
    assert trained_policy(cfg).model is None  # how the engine ran is not which policy it was
    (tmp_path / "v2" / "config.json").write_text(json.dumps({"policy": {"model": "HuggingFaceTB/another"}}))
    with pytest.raises(ValueError, match="another policy"):
        trained_policy(cfg)
    write_jsonl(tmp_path / "v2" / "problems.jsonl", [make_problem("p0", tests=[TestCase(kind="call", args=[], expected=1, fn_name="f")])] + problems[1:])
    with pytest.raises(ValueError, match="defines p0 otherwise"):
        load_problems(*cfg.problems_files())


def test_humaneval_is_refused_as_training_data(tmp_path: Path) -> None:
    from tasks import load_humaneval, write_jsonl

    path = tmp_path / "he.jsonl"
    write_jsonl(path, load_humaneval(limit=2))
    with pytest.raises(ValueError):
        select_problems(CollectConfig(problems_file=str(path)))


def test_gym_selection_takes_an_even_share_of_train_problems_per_tier() -> None:
    problems = select_problems(CollectConfig(max_problems=7, gym_tiers=(1, 2), gym_n_per_tier=20))
    tiers = [p.metadata["tier"] for p in problems]
    assert tiers.count(1) == 4 and tiers.count(2) == 3
    assert all(p.metadata["split"] == "train" for p in problems)
    # a tier with fewer problems than its share gives the rest to the others
    big = select_problems(CollectConfig(max_problems=600, gym_tiers=(1, 2), gym_n_per_tier=2000))
    tiers = [p.metadata["tier"] for p in big]
    assert len(big) == 600 and tiers.count(1) == 154 and tiers.count(2) == 446 and len({p.id for p in big}) == 600


def test_flat_keys_of_earlier_releases_still_configure_collection(caplog: pytest.LogCaptureFixture) -> None:
    """`--set samples=10` and the other flat keys keep working (configs and commands of running
    jobs), each with a warning naming the nested key; nested keys keep the job's own defaults."""
    with caplog.at_level("WARNING"):
        old = CollectConfig.model_validate({"samples": 12, "k": 4, "c_uct": 0.3, "seed": 2, "kv_cache_gib": 0.5,
                                            "policy_adapter": "/a", "sandbox_workers": 3, "value_dtype": "float32"})
    new = CollectConfig(search={"budget": {"samples": 12}, "k": 4, "c_uct": 0.3, "seed": 2},
                        policy={"kv_cache_gib": 0.5, "adapter": "/a", "seed": 2}, sandbox={"workers": 3}, value={"dtype": "float32"})
    assert old == new
    assert "'samples' is a deprecated name: use search.budget.samples" in caplog.text
    assert (new.search.max_tokens, new.policy.max_model_len, new.sandbox.timeout_s) == (192, 2048, 4.0)  # the job's defaults


def test_pair_accuracy_by_depth_of_the_failing_program() -> None:
    from training.value_train import pair_accuracy_by_depth

    rows = [
        {"problem_id": "p", "kind": "program", "target": 1.0, "depth": 0},
        {"problem_id": "p", "kind": "program", "target": 0.0, "depth": 0},
        {"problem_id": "p", "kind": "program", "target": 0.5, "depth": 3},
        {"problem_id": "p", "kind": "child", "target": 0.0, "depth": 1},  # states are not programs
        {"problem_id": "q", "kind": "program", "target": 0.0, "depth": 6},  # no passing program: no pair
    ]
    acc = pair_accuracy_by_depth(rows, [0.8, 0.2, 0.8, 0.9, 0.1])
    assert acc["0"] == {"pairs": 1, "accuracy": 1.0}
    assert acc["3"] == {"pairs": 1, "accuracy": 0.5}  # a tie counts half
    assert acc["2+"] == acc["3"] and acc["all"] == {"pairs": 2, "accuracy": 0.75} and "4+" not in acc


def test_pair_accuracy_by_how_much_the_failing_program_passes() -> None:
    """The near-misses (most tests pass) are tallied apart; on `solved` rows the pass fraction is
    ``reward`` (the target is then 0 for every failing program)."""
    from training.value_train import pair_accuracy_by_failing_reward

    rows = [
        {"problem_id": "p", "kind": "program", "target": 1.0},
        {"problem_id": "p", "kind": "program", "target": 0.0},
        {"problem_id": "p", "kind": "program", "target": 0.25},
        {"problem_id": "p", "kind": "program", "target": 0.75},
    ]
    acc = pair_accuracy_by_failing_reward(rows, [0.6, 0.1, 0.2, 0.7])
    assert acc == {"zero": {"pairs": 1, "accuracy": 1.0}, "some": {"pairs": 1, "accuracy": 1.0}, "most": {"pairs": 1, "accuracy": 0.0}}
    solved = [{**r, "target": float(r["target"] >= 1), "reward": r["target"]} for r in rows]
    assert pair_accuracy_by_failing_reward(solved, [0.6, 0.1, 0.2, 0.7]) == acc


async def test_a_snapshot_carries_finished_searches_to_a_fresh_checkout(tmp_path: Path) -> None:
    """The committed snapshot holds every finished trace: a resume with an empty output folder
    searches only what it lacks, and the rows equal an uninterrupted collection's."""
    import tarfile

    from training.value_data import restore_snapshot, write_snapshot

    search = {"budget": {"samples": 10}, "k": 5, "max_tokens": 200}
    problems = [_problem(f"p{i}") for i in range(5)]
    whole = CollectConfig(output_dir=str(tmp_path / "whole"), search=search, concurrency=2)
    all_five = SeededPolicy()
    await collect(problems, all_five, HashSandbox(), whole)

    cfg = CollectConfig(output_dir=str(tmp_path / "first"), search=search, concurrency=2, snapshot=str(tmp_path / "vd.tar.gz"),
                        snapshot_every=2)
    await collect(problems[:3], SeededPolicy(), HashSandbox(), cfg)  # a session that got through three problems
    with tarfile.open(tmp_path / "vd.tar.gz") as tar:
        assert sorted(tar.getnames()) == [f"traces/p{i}.json" for i in range(3)]

    fresh = cfg.model_copy(update={"output_dir": str(tmp_path / "fresh")})  # a fresh checkout: only the snapshot
    policy = SeededPolicy()
    await collect(problems, policy, HashSandbox(), fresh, resume=True)
    assert len(policy.calls) == len(all_five.calls) * 2 // 5  # only p3 and p4 were searched
    assert read_rows(tmp_path / "fresh" / "rows.jsonl") == read_rows(tmp_path / "whole" / "rows.jsonl")
    with tarfile.open(tmp_path / "vd.tar.gz") as tar:
        assert len(tar.getnames()) == 5  # rewritten at the end with all five
    assert restore_snapshot(fresh) == 0  # nothing missing
    trace_path(tmp_path / "fresh", "p4").unlink()
    assert restore_snapshot(fresh) == 1 and write_snapshot(fresh).exists()


def test_top1_choice_needs_the_passing_program_above_every_failing_one() -> None:
    from training.value_train import top1_choice

    rows = [
        *({"problem_id": "p", "kind": "program", "target": t} for t in (1.0, 0.0, 0.0, 0.0)),  # passing scored 2nd of 4
        *({"problem_id": "q", "kind": "program", "target": t} for t in (1.0, 0.0)),  # passing tied with the failing one
        {"problem_id": "q", "kind": "child", "target": 0.0},  # states are not candidates
        *({"problem_id": "r", "kind": "program", "target": t} for t in (1.0, 1.0)),  # nothing to choose between
    ]
    preds = [0.6, 0.7, 0.1, 0.1, 0.5, 0.5, 0.99, 0.3, 0.2]
    out = top1_choice(rows, preds)
    assert out["problems"] == 2 and out["accuracy"] == (0.0 + 0.5) / 2 and out["expected"] == (0.25 + 0.5) / 2
    from training.value_train import pair_accuracy_by_depth

    assert pair_accuracy_by_depth(rows, preds)["all"]["accuracy"] == 0.625  # p: 2 of 3 pairs won, q: a tie; neither choice passes
    assert top1_choice([], [])["accuracy"] is None


def test_target_solved_trains_on_the_solved_share_and_refuses_rows_without_it(tmp_path: Path) -> None:
    """``target: solved`` swaps each row's target for its ``solved`` share; rows of an older release
    (no ``solved``) are refused with the command that rebuilds them, not trained on a missing field."""
    from training.value_train import ValueTrainConfig, _split_rows

    rows = [{"problem_id": f"p{i % 5}", "state": f"s{i}", "target": 0.5, "solved": float(i % 2), "kind": "program",
             "visits": 1, "depth": 0} for i in range(20)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = {f"p{i}": None for i in range(5)}
    for target, want in (("reward", [0.5] * 20), ("solved", [float(i % 2) for i in range(20)])):
        train, held = _split_rows(ValueTrainConfig(rows_file=str(path), target=target), problems)  # type: ignore[arg-type]
        got = {r["state"]: r["target"] for r in train + held}
        assert [got[f"s{i}"] for i in range(20)] == want
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "solved"}) + "\n" for r in rows))
    assert len(_split_rows(ValueTrainConfig(rows_file=str(path)), problems)[0]) > 0  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="collect-values"):
        _split_rows(ValueTrainConfig(rows_file=str(path), target="solved"), problems)  # type: ignore[arg-type]
