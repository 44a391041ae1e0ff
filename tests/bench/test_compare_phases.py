"""bench.compare_phases: two runs of one strategy under two settings, compared paired per problem."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from bench.compare_phases import compare
from training.search_eval import write_phase


def record(passed_by_value: bool, tokens: int) -> dict:
    """Two expansions of 5 samples; the highest-valued candidate passes or not; a public-test winner
    that always passes, sampled second."""
    return {"steps": [[5, tokens // 2, 3], [10, tokens, 6]],
            "candidates": [{"step": 0, "value": 0.9, "passed": passed_by_value, "public": 0.0},
                           {"step": 1, "value": 0.1, "passed": True, "public": 1.0}]}


def test_wins_losses_and_costs_on_the_problems_both_finished(tmp_path: Path) -> None:
    ids = [f"p{i}" for i in range(4)]
    a = tmp_path / "a.json.gz"
    write_phase(a, {"config": {"merged_visits": "one"}, "problems": ids,
                    "results": [record(True, 100), record(True, 100), record(False, 100), record(False, 100)]})
    b = tmp_path / "b.partial.jsonl.gz"  # still running: p3 not finished
    with gzip.open(b, "wt") as fh:
        fh.write(json.dumps({"header": {"config": {"merged_visits": "samples"}, "problems": ids}}) + "\n")
        for i, passed in ((0, False), (1, True), (2, True)):
            fh.write(json.dumps({"i": i, "elapsed_s": 1.0, "record": record(passed, 300)}) + "\n")
        fh.write('{"i": 3, "elap')  # cut off mid-line
    out = compare(a, b, budget=10, names=("one", "samples"))
    assert out["problems"] == 3 and out["settings_that_differ"] == {"merged_visits": ["one", "samples"]}
    value = out["rules"]["value"]
    assert (value["a_passed"], value["b_passed"], value["won"], value["lost"]) == (2, 2, 1, 1)
    assert out["rules"]["public"]["a_passed"] == out["rules"]["public"]["b_passed"] == 3
    assert out["one"]["policy_tokens_mean"] == 100 and out["samples"]["policy_tokens_mean"] == 300
    at_five = compare(a, b, budget=5, names=("one", "samples"))  # the first expansion only
    assert at_five["one"]["candidates_mean"] == 1 and at_five["rules"]["public"]["a_passed"] == 2
    # the value rule's misses among the 3 shared problems: p2 sampled a passing program (step 1) and
    # chose the failing 0.9 (step 0); "samples" missed p0
    assert out["one"]["value_misses"] == {"problems": 1, "chosen_by_step": {0: 1}, "median_value_gap": pytest.approx(0.8)}
    assert out["samples"]["value_misses"]["problems"] == 1
    assert at_five["one"]["value_misses"]["problems"] == 0  # at 5 samples nothing passing was sampled there


def counted(repeated_passes: bool) -> dict:
    """One expansion of 5 samples: a 0.9-valued failing program sampled once, a 0.5-valued program
    sampled four times (passing or not): value x count^0.5 = 1.0 picks the repeated one."""
    return {"steps": [[5, 100, 5]],
            "candidates": [{"step": 0, "value": 0.9, "passed": False, "public": 0.0, "sampled_at": [0]},
                           {"step": 0, "value": 0.5, "passed": repeated_passes, "public": 0.0, "sampled_at": [0, 0, 0, 0]}]}


def test_count_rules_pair_against_the_value_rule_and_are_left_out_without_counts(tmp_path: Path) -> None:
    ids = [f"p{i}" for i in range(3)]
    a, b = tmp_path / "vm.json.gz", tmp_path / "bon.json.gz"
    write_phase(a, {"config": {}, "problems": ids, "results": [counted(True), counted(True), counted(False)]})
    write_phase(b, {"config": {}, "problems": ids, "results": [counted(False)] * 3})
    out = compare(a, b, budget=5, names=("vm", "bon"), rules=("value", "count:0.5", "count:0.25"))
    assert out["rules"]["value"]["a_passed"] == 0 and out["rules"]["count:0.5"]["a_passed"] == 2
    assert out["against_value"]["vm"]["count:0.5"]["won"] == 2 and out["against_value"]["bon"]["count:0.5"]["won"] == 0
    assert out["rules"]["count:0.25"]["a_passed"] == 0  # 0.5 x 4^0.25 = 0.71 < 0.9
    assert out["rules_without_counts"] == []
    old = tmp_path / "old.json.gz"  # a phase from before the counts: count rules are named, not read as 1
    write_phase(old, {"config": {}, "problems": ids, "results": [record(True, 100)] * 3})
    out = compare(old, old, budget=10, names=("x", "y"), rules=("value", "count:0.5"))
    assert list(out["rules"]) == ["value"] and out["rules_without_counts"] == ["count:0.5"]
