"""bench.expansion_yield: the class of each expansion is what the search knew before it."""

from __future__ import annotations

import copy
import json

import pytest

from bench.expansion_yield import (
    compare_guided,
    expansion_yield,
    guided_outcome,
    order_yield,
    paired_yield,
    phase_pair,
    sample_yield,
    summarize,
    tree_shape,
)
from tests.training.test_value_data import hand_trace


def _with_root_rewards(rewards: list[float]) -> dict:
    trace = copy.deepcopy(hand_trace())
    for ro, r in zip(trace["expansions"][0]["rollouts"], rewards, strict=True):
        ro["value"] = r
    return trace


def test_an_expansion_is_classed_by_the_earlier_rollouts_through_its_state() -> None:
    # root "" -> rollouts "a\nret1" 1.0, "a\nret2" 0.5, "b\nret3" 0.0; then "a\n" is expanded: x passes, y fails
    assert expansion_yield(hand_trace()) == [("root", 0, True), ("root", 0, False), ("root", 0, False),
                                             ("below_passing", 0, True), ("below_passing", 0, False)]
    # the same tree when what went through "a\n" before passed some tests (0.5) or none
    assert [c for c, _, _ in expansion_yield(_with_root_rewards([0.5, 0.25, 1.0]))][3:] == ["below_partial"] * 2
    assert [c for c, _, _ in expansion_yield(_with_root_rewards([0.0, 0.0, 1.0]))][3:] == ["below_zero"] * 2


def test_every_sample_knows_its_expansion_and_whether_it_finished_within_one_step() -> None:
    # root "": "a\nret1", "a\nret2", "b\nret3" take two lines; below "a\n": "x" finishes in one, "y\nz" in two
    samples = sample_yield(hand_trace())
    assert [(s["seq"], s["one_step"], s["passed"]) for s in samples] == [
        (0, False, True), (0, False, False), (0, False, False), (1, True, True), (1, False, False)]


def test_paired_yield_splits_by_the_tree_s_first_expansion() -> None:
    def phase(results: dict[str, list[tuple[int, bool]]]) -> dict:
        return {"results": [{"problem_id": p, "candidates": [{"step": s, "passed": ok} for s, ok in cands]}
                            for p, cands in results.items()]}

    tree = phase({"p": [(0, True), (1, True), (1, False)], "q": [(0, False), (1, False), (2, False), (3, True)]})
    bon = phase({"p": [(0, True), (0, False)], "q": [(0, False), (0, False), (0, False), (0, False)]})
    got = paired_yield(tree, bon)
    assert got["root_passed"]["problems"] == 1 and got["root_passed"]["tree_after_first"]["pass_rate"] == 0.5
    assert got["root_passed"]["best_of_n"]["pass_rate"] == 0.5
    assert got["root_failed"]["tree_after_first"] == {"samples": 3, "passed": 1, "pass_rate": 1 / 3}
    assert got["root_failed"]["best_of_n"] == {"samples": 4, "passed": 0, "pass_rate": 0.0}
    assert got["all"]["problems"] == 2 and got["all"]["tree_after_first"]["samples"] == 5


def test_tree_shape_counts_the_root_s_children_and_pairs_a_state_s_value_with_its_expansion() -> None:
    shape = tree_shape(hand_trace())
    assert shape["root_children"] == 2  # "a\n" and "b\n"
    # the root has no value of its own; "a\n" (0.75) was expanded into one pass and one failure
    assert shape["value_and_pass_rate"] == [(0.75, 0.5)]


def test_summarize_reports_single_child_roots_and_the_value_pass_rate_correlation(tmp_path) -> None:
    for i, (value, rewards) in enumerate(((0.2, [0.0, 0.0]), (0.5, [1.0, 0.0]), (0.9, [1.0, 1.0]))):
        trace = copy.deepcopy(hand_trace())
        trace["nodes"][1]["initial_value"] = value
        for ro, r in zip(trace["expansions"][1]["rollouts"], rewards, strict=True):
            ro["value"] = r
        if i == 0:  # a root with one child: drop "b\n" and its sample
            trace["nodes"] = [n for n in trace["nodes"] if n["id"] != 2]
            trace["expansions"][0]["samples"] = trace["expansions"][0]["samples"][:2]
            trace["expansions"][0]["rollouts"] = trace["expansions"][0]["rollouts"][:2]
        (tmp_path / f"p{i}.guided.json").write_text(json.dumps(trace))
    got = summarize(tmp_path)["guided"]
    assert got["problems"]["searches"] == 3 and got["problems"]["single_child_roots"] == 1
    # values 0.2, 0.5, 0.9 against pass rates 0, 0.5, 1: nearly a line
    assert got["value_vs_pass_rate"]["expansions"] == 3
    assert got["value_vs_pass_rate"]["pearson_r"] == pytest.approx(0.9966, abs=1e-4)


def test_order_yield_blocks_samples_by_their_number_for_both_kinds_of_step() -> None:
    # a tree phase: a step per expansion of 2 samples; best_of_n: a step per sample
    tree = {"results": [{"steps": [[2, 0, 0], [4, 0, 0]],
                         "candidates": [{"sampled_at": [0, 0], "passed": False}, {"sampled_at": [1], "passed": True},
                                        {"sampled_at": [1], "passed": False}]}]}
    bon = {"results": [{"steps": [[1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]],
                        "candidates": [{"sampled_at": [0, 3], "passed": True}, {"sampled_at": [1, 2], "passed": False}]}]}
    t, b = order_yield(tree, block=2), order_yield(bon, block=2)
    assert t["by_block"] == {"0": {"samples": 2, "passed": 0, "pass_rate": 0.0}, "1": {"samples": 2, "passed": 1, "pass_rate": 0.5}}
    assert b["by_block"] == {"0": {"samples": 2, "passed": 1, "pass_rate": 0.5}, "1": {"samples": 2, "passed": 1, "pass_rate": 0.5}}
    assert t["distinct_per_problem"] == 3 and b["distinct_per_problem"] == 2


def test_phase_pair_reads_the_problems_both_phases_finished(tmp_path) -> None:
    from training.search_eval import write_phase

    def cand(step: int, passed: bool, counts: bool) -> dict:
        return {"step": step, "passed": passed, **({"sampled_at": [step]} if counts else {})}

    tree = {"config": {}, "problems": ["p", "q"], "results": [
        {"problem_id": "p", "steps": [[2, 0, 0], [4, 0, 0]], "candidates": [cand(0, False, True), cand(1, True, True)]},
        {"problem_id": "q", "steps": [[2, 0, 0]], "candidates": [cand(0, True, True)]}]}
    bon = {"config": {}, "problems": ["p"], "results": [  # an older phase: no sampled_at, and only "p"
        {"problem_id": "p", "steps": [[1, 0, 0], [2, 0, 0]], "candidates": [cand(0, True, False), cand(1, False, False)]}]}
    write_phase(tmp_path / "t.json.gz", tree)
    write_phase(tmp_path / "b.json.gz", bon)
    got = phase_pair(tmp_path / "t.json.gz", tmp_path / "b.json.gz", block=2)
    assert got["finished"] == [2, 1] and got["all"]["problems"] == 1  # "q" is the tree's alone
    assert list(got["order"]) == ["tree"]  # best_of_n's phase predates sampled_at: no order table
    assert got["order"]["tree"]["by_block"]["1"] == {"samples": 1, "passed": 1, "pass_rate": 1.0}


def _guided(problem: str, values: list[float], rewards: list[float], version: str) -> dict:
    """hand_trace's root expansion only, its rollouts valued by a model (``value``) and executed (``reward``)."""
    trace = copy.deepcopy(hand_trace())
    trace["problem"] = {"id": problem}
    trace["value_version"] = version
    trace["expansions"] = trace["expansions"][:1]
    for ro, v, r in zip(trace["expansions"][0]["rollouts"], values, rewards, strict=True):
        ro["value"], ro["reward"] = v, r
    return trace


def test_guided_outcome_is_the_value_rule_s_choice_executed() -> None:
    # the model likes the failing "b" program best: the search returns it, though a passing one was sampled
    assert guided_outcome(_guided("p", [0.2, 0.3, 0.9], [1.0, 0.5, 0.0], "v")) == {"chosen": False, "any": True, "root": True}
    assert guided_outcome(_guided("p", [0.9, 0.3, 0.2], [1.0, 0.5, 0.0], "v")) == {"chosen": True, "any": True, "root": True}
    assert guided_outcome(_guided("p", [0.9, 0.3, 0.2], [0.5, 0.5, 0.0], "v"))["any"] is False


def test_compare_guided_pairs_two_collections_by_problem(tmp_path) -> None:
    for folder, version, picks in (("old", "vm0", {"p": False, "q": False, "r": True}), ("new", "vm1", {"p": True, "q": False, "s": True})):
        (tmp_path / folder).mkdir()
        for pid, good in picks.items():
            values = [0.9, 0.3, 0.2] if good else [0.2, 0.3, 0.9]
            (tmp_path / folder / f"{pid}.guided.json").write_text(json.dumps(_guided(pid, values, [1.0, 0.5, 0.0], version)))
        (tmp_path / folder / "p.json").write_text(json.dumps(_guided("p", [0.0] * 3, [0.0] * 3, "tests")))  # tests mode: not compared
    got = compare_guided(tmp_path / "new", tmp_path / "old")
    assert got["problems"] == 2 and got["value_versions"] == [["vm1"], ["vm0"]]  # p and q: in both
    assert (got["chosen"]["won"], got["chosen"]["lost"], got["chosen"]["a_passed"]) == (1, 0, 1)
    assert got["any"]["won"] == got["any"]["lost"] == 0
    assert compare_guided(tmp_path / "new", tmp_path / "old", problems={"q"})["problems"] == 1
