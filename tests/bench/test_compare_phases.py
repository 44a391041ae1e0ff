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
