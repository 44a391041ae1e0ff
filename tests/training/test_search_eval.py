"""`restrl eval`: anytime snapshots equal separate runs; run planning; paired summaries."""

from __future__ import annotations

import pytest

from search import Budget, SearchConfig, run_search
from tests.search.doubles import HashValue, make_problem
from tests.training.test_value_data import SeededPolicy
from training.search_eval import EvalConfig, eval_problems, plan_runs, snapshot, summarize


def _config(strategy: str, samples: int, seed: int) -> SearchConfig:
    return SearchConfig(strategy=strategy, budget=Budget(samples=samples), k=5, parallel_expansions=1, seed=seed,
                        record_trace=True, max_tokens=200)


@pytest.mark.parametrize("strategy", ["vm_mcts", "orm_mcts", "beam"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
async def test_snapshot_after_b_samples_is_what_a_budget_b_run_returns(strategy: str, seed: int) -> None:
    """The claim `restrl eval` relies on to read budgets 5 and 10 from the budget-20 run."""
    problem = make_problem(f"p{seed}")
    full = await run_search(problem, SeededPolicy(), HashValue(), _config(strategy, 20, seed))
    assert full.trace is not None
    code20, cands20 = snapshot(full.trace, full.usage.samples)
    assert code20 == full.code
    for b in (5, 10, 15):
        alone = await run_search(problem, SeededPolicy(), HashValue(), _config(strategy, b, seed))
        code_b, cands_b = snapshot(full.trace, b)
        assert code_b == alone.code, (strategy, seed, b)
        assert alone.trace is not None
        assert set(cands_b) == set(snapshot(alone.trace, alone.usage.samples)[1])
        assert set(cands_b) <= set(cands20)


async def test_a_budget_one_run_differs_from_the_first_expansion_so_it_runs_alone() -> None:
    plan = plan_runs(EvalConfig(budgets=(1, 5, 10, 20)), "vm_mcts")
    assert plan == {20: [5, 10, 20], 1: [1]}
    assert plan_runs(EvalConfig(budgets=(1, 5, 10, 20)), "best_of_n") == {1: [1], 5: [5], 10: [10], 20: [20]}
    assert plan_runs(EvalConfig(budgets=(1, 5, 10, 20)), "greedy") == {1: [1, 5, 10, 20]}
    assert plan_runs(EvalConfig(budgets=(1, 5, 10, 20), snapshots=False), "beam") == {1: [1], 5: [5], 10: [10], 20: [20]}


def _phase(dataset, strategy, answers, passed: dict[str, list[bool]]):
    ids = sorted(passed)
    return {
        "dataset": dataset, "strategy": strategy, "answers": answers,
        "results": [
            {"problem_id": i, "budgets": {str(b): {"passed": passed[i][j], "oracle": True} for j, b in enumerate(answers)}}
            for i in ids
        ],
    }


def test_summary_tables_and_paired_counts() -> None:
    cfg = EvalConfig(datasets=("humaneval",), budgets=(5, 20))
    phases = {
        "vm": _phase("humaneval", "vm_mcts", [5, 20], {"a": [False, True], "b": [True, True], "c": [False, False], "d": [False, False]}),
        "bon20": _phase("humaneval", "best_of_n", [20], {"a": [False], "b": [True], "c": [True], "d": [False]}),
        "g": _phase("humaneval", "greedy", [5, 20], {"a": [False, False], "b": [False, False], "c": [False, False], "d": [False, False]}),
    }
    s = summarize(phases, cfg)
    assert s["pass1"]["humaneval"]["vm_mcts"] == {"5": 0.25, "20": 0.5}
    assert s["pass1"]["humaneval"]["best_of_n"] == {"20": 0.5}
    p = s["paired"]["humaneval"]["vm_mcts@20 vs best_of_n@20"]
    assert (p["problems"], p["won"], p["lost"], p["margin"]) == (4, 1, 1, 0.0)
    g = s["paired"]["humaneval"]["vm_mcts@20 vs greedy@20"]
    assert (g["won"], g["lost"], g["margin"]) == (2, 0, 0.5)


def test_problem_sets_are_fixed_and_held_out() -> None:
    cfg = EvalConfig(humaneval_n=12, gym_n=9)
    he = eval_problems(cfg, "humaneval")
    assert [p.id for p in he] == [p.id for p in eval_problems(cfg, "humaneval")] and len(he) == 12
    gym = eval_problems(cfg, "gym_test")
    assert len(gym) == 9 and {p.metadata["split"] for p in gym} == {"test"}
    assert sorted(p.metadata["tier"] for p in gym) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    val = eval_problems(cfg, "gym_validation")  # where search settings are chosen
    assert len(val) == 9 and {p.metadata["split"] for p in val} == {"validation"}
    assert not {p.id for p in val} & {p.id for p in gym}


def test_report_only_rebuilds_json_and_plot_from_phase_files(tmp_path) -> None:
    import json

    from training.search_eval import run_eval

    cfg = EvalConfig(datasets=("humaneval",), budgets=(5, 20), output_dir=str(tmp_path / "phases"),
                     results_file=str(tmp_path / "eval.json"), plot_file=str(tmp_path / "eval.png"), report_only=True)
    (tmp_path / "phases").mkdir()
    for name, ph in {
        "humaneval.vm_mcts.b20": _phase("humaneval", "vm_mcts", [5, 20], {"a": [False, True], "b": [True, True]}),
        "humaneval.best_of_n.b20": _phase("humaneval", "best_of_n", [20], {"a": [False], "b": [True]}),
        "gym_test.greedy.b1": _phase("gym_test", "greedy", [5, 20], {"a": [True, True]}),  # not a configured dataset
    }.items():
        for r in ph["results"]:
            r["snapshot_matches_result"] = True
        (tmp_path / "phases" / f"{name}.json").write_text(json.dumps({**ph, "wall_s": 1.0, "policy_version": "p", "value_version": "v"}))
    run_eval(cfg)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["humaneval"] == {"vm_mcts": {"5": 0.5, "20": 1.0}, "best_of_n": {"20": 0.5}}
    assert report["oracle"]["humaneval"]["vm_mcts"] == {"5": 1.0, "20": 1.0}
    assert "gym_test" not in report and report["meta"]["value_version"] == "v"
    assert report["paired"]["humaneval"]["vm_mcts@20 vs best_of_n@20"]["won"] == 1
    assert (tmp_path / "eval.png").stat().st_size > 0
