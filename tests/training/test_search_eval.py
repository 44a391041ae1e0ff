"""`restrl eval`: anytime snapshots equal separate runs; run planning; paired summaries."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest

from search import Budget, SearchConfig, run_search
from tests.search.doubles import HashValue, make_problem
from tests.training.test_value_data import SeededPolicy
from training.paired import Bootstrap, mcnemar_exact
from training.search_eval import (
    EvalConfig,
    _phase_config,
    choose,
    eval_problems,
    phase_path,
    plan_runs,
    run_eval,
    search_record,
    selector_key,
    snapshot_of,
    summarize,
    write_phase,
)


def snapshot(trace: dict, budget: int) -> tuple[str | None, list[str]]:
    """(the program the search would return after ``budget`` samples, every candidate by then)."""
    _, cands = snapshot_of(search_record(trace, per_sample=False), unit="samples", limit=budget)
    return (min(cands, key=selector_key("value"))["code"] if cands else None), [c["code"] for c in cands]


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
    plan = plan_runs(EvalConfig(budgets=(1, 5, 10, 20), max_budget={}), "vm_mcts")
    assert plan == {20: [5, 10, 20], 1: [1]}
    # best-of-N's first b samples are a budget-b run (seeded per sample), so one run answers all
    assert plan_runs(EvalConfig(budgets=(1, 5, 10, 20)), "best_of_n") == {20: [1, 5, 10, 20]}
    assert plan_runs(EvalConfig(budgets=(1, 5, 10, 20)), "greedy") == {1: [1, 5, 10, 20]}
    assert plan_runs(EvalConfig(budgets=(1, 5, 10, 20), snapshots=False), "best_of_n") == {1: [1], 5: [5], 10: [10], 20: [20]}
    # the grid: 40 only for best_of_n and vm_mcts
    cfg = EvalConfig()
    assert plan_runs(cfg, "vm_mcts") == {40: [5, 10, 20, 40]} and plan_runs(cfg, "best_of_n") == {40: [5, 10, 20, 40]}
    assert plan_runs(cfg, "orm_mcts") == {20: [5, 10, 20]} and plan_runs(cfg, "beam") == {20: [5, 10, 20]}


@pytest.mark.vllm
async def test_best_of_n_first_b_samples_are_a_budget_b_run_on_the_real_engine(vllm_policy) -> None:
    """vLLM seeds sample i of a request with seed + i: the first b of n programs are the b programs
    of a separate request, so best_of_n's smaller budgets are exact snapshots."""
    problem = make_problem("bon")
    cfg = SearchConfig(strategy="best_of_n", budget=Budget(samples=4), seed=7, max_tokens=32, record_trace=True, parallel_expansions=1)
    full = await run_search(problem, vllm_policy, HashValue(), cfg)
    record = search_record(full.trace, per_sample=True)
    for b in (2,):
        alone = await run_search(problem, vllm_policy, HashValue(), cfg.model_copy(update={"budget": Budget(samples=b)}))
        _, cands = snapshot_of(record, unit="samples", limit=b)
        assert {c["code"] for c in cands} == {c.code for c in alone.candidates} or alone.usage.samples == 0
        assert min(cands, key=selector_key("value"))["code"] == alone.code


async def test_search_record_steps_and_candidates() -> None:
    cfg = SearchConfig(strategy="vm_mcts", budget=Budget(samples=20), k=5, parallel_expansions=1, seed=3, record_trace=True)
    r = await run_search(make_problem(), SeededPolicy(), HashValue(), cfg)
    rec = search_record(r.trace, per_sample=False)
    assert [st[0] for st in rec["steps"]] == [5, 10, 15, 20]
    assert rec["steps"][-1][1:] == [r.usage.policy_tokens, r.usage.value_calls]
    assert all(a[1] <= b[1] and a[2] <= b[2] for a, b in itertools.pairwise(rec["steps"]))
    codes = [c["code"] for c in rec["candidates"]]
    assert len(codes) == len(set(codes)) and set(codes) == {c.code for c in r.candidates} | set(codes)
    assert min(rec["candidates"], key=selector_key("value"))["code"] == r.code
    # every rollout is counted on its program, at the step that sampled it; the search's candidates say the same
    rollouts = sum(len(e["rollouts"]) for e in r.trace["expansions"])
    assert sum(len(c["sampled_at"]) for c in rec["candidates"]) == rollouts
    assert all(c["sampled_at"][0] == c["step"] and c["sampled_at"] == sorted(c["sampled_at"]) for c in rec["candidates"])
    by_code = {c["code"]: len(c["sampled_at"]) for c in rec["candidates"]}
    assert r.candidates and all(c.samples == by_code[c.code] for c in r.candidates)
    bon = await run_search(make_problem(), SeededPolicy(), HashValue(), cfg.model_copy(update={"strategy": "best_of_n"}))
    per = search_record(bon.trace, per_sample=True)
    assert [st[0] for st in per["steps"]] == list(range(1, 21)) and per["steps"][-1][1] == bon.usage.policy_tokens
    assert per["steps"][-1][2] == bon.usage.value_calls == len(per["candidates"])
    assert sum(len(c["sampled_at"]) for c in per["candidates"]) == 20  # best_of_n: every sample is a rollout


def _record(pid: str, cands: list[dict], *, per: int = 1, tokens: int = 10) -> dict:
    """A phase record: candidate i first sampled at step i // per; each step adds ``per`` samples."""
    steps = max((c["step"] for c in cands), default=-1) + 1
    return {"problem_id": pid, "run_budget": steps * per, "samples": steps * per, "tokens": steps * per * tokens,
            "value_calls": len(cands), "wall_s": 1.0, "stop_reason": "samples", "snapshot_matches_result": True,
            "steps": [[(i + 1) * per, (i + 1) * per * tokens, i + 1] for i in range(steps)], "candidates": cands}


def _c(step: int, value: float, passed: bool, public: float | None = None, prm: float | None = None) -> dict:
    c = {"step": step, "value": value, "passed": passed}
    if public is not None:
        c["public"] = public
    if prm is not None:
        c["prm"] = {"min": prm, "mean": prm, "last": value}
        c["prm_new"] = 2
    return c


def _phases() -> dict:
    """Four problems. vm_mcts (5 samples per step): a passes from 10 samples on, b always, c and d
    never. best_of_n (1 per step): b and c pass by value at 5; PRM picks a's passing program."""
    vm = {
        "a": [_c(0, 0.5, False, public=0.0), _c(1, 0.9, True, public=1.0)],
        "b": [_c(0, 0.9, True, public=1.0)],
        "c": [_c(0, 0.4, False, public=0.0)],
        "d": [_c(0, 0.3, False, public=0.0), _c(1, 0.2, True, public=1.0)],
    }
    bon = {
        "a": [_c(0, 0.8, False, public=0.0, prm=0.1), _c(2, 0.3, True, public=1.0, prm=0.6)],
        "b": [_c(0, 0.9, True, public=1.0, prm=0.5)],
        "c": [_c(1, 0.9, True, public=1.0, prm=0.5), _c(3, 0.2, False, public=0.0, prm=0.1)],
        "d": [_c(0, 0.1, False, public=0.0, prm=0.1)],
    }
    def phase(strategy, recs, answers, per, tokens):
        return {"format": 2, "dataset": "humaneval", "strategy": strategy, "run_budget": max(answers), "answers": answers,
                "wall_s": 1.0, "policy_version": "p", "value_version": "v",
                "results": [_record(pid, cands, per=per, tokens=tokens) for pid, cands in recs.items()]}
    return {
        "humaneval.vm_mcts.b10": phase("vm_mcts", vm, [5, 10], 5, 4),
        "humaneval.best_of_n.b10": phase("best_of_n", bon, [5, 10], 1, 10),
        "humaneval.greedy.b1": phase("greedy", {k: [_c(0, 0.5, k == "b")] for k in "abcd"}, [5, 10], 1, 10),
    }


def test_count_rule_counts_only_the_samples_its_snapshot_took() -> None:
    # a (value 0.5) is sampled at steps 0, 2 and 3; b (value 0.6) at step 1
    rec = _record("p", [{**_c(0, 0.5, True), "sampled_at": [0, 2, 3]}, {**_c(1, 0.6, False), "sampled_at": [1]}])
    rec["steps"] = [[i + 1, (i + 1) * 10, i + 1] for i in range(4)]  # one sample per step, 4 steps
    assert choose(rec, "value", unit="samples", limit=4)["passed"] is False
    assert choose(rec, "count:1", unit="samples", limit=2)["passed"] is False  # 2 samples taken: 0.5 x 1 < 0.6 x 1
    assert choose(rec, "count:0.5", unit="samples", limit=3)["passed"] is True  # 3 taken: 0.5 x 2^0.5 = 0.71 > 0.6
    assert choose(rec, "count:0.25", unit="samples", limit=3)["passed"] is False  # 0.5 x 2^0.25 = 0.59 < 0.6
    assert choose(rec, "count:0.25", unit="samples", limit=4)["passed"] is True  # 4 taken: 0.5 x 3^0.25 = 0.66
    assert choose(rec, "count:0", unit="samples", limit=4)["passed"] is False  # w = 0 is the value rule


def test_count_arms_read_phases_with_counts_and_name_those_without() -> None:
    phases = _phases()
    for rec in phases["humaneval.best_of_n.b10"]["results"]:  # one sample per distinct program
        for c in rec["candidates"]:
            c["sampled_at"] = [c["step"]]
    cfg = EvalConfig(datasets=("humaneval",), budgets=(5, 10), max_budget={}, bootstrap=200, count_weights=(0.5,))
    s = summarize(phases, cfg)
    p1 = s["pass1"]["humaneval"]
    assert p1["best_of_n+count^0.5"] == p1["best_of_n"]  # every count is 1: the value rule's picks
    assert "vm_mcts+count^0.5" not in p1 and "greedy+count^0.5" not in p1
    assert s["count_arms_missing"] == ["humaneval.vm_mcts.b10"]  # said, not silently read as counts of 1
    assert "count_arms_missing" not in summarize(_phases(), EvalConfig(datasets=("humaneval",), budgets=(5, 10), max_budget={}, bootstrap=200))


def test_summary_arms_intervals_pairs_and_token_budgets() -> None:
    cfg = EvalConfig(datasets=("humaneval",), budgets=(5, 10), max_budget={}, bootstrap=2000, token_budgets=(20, 40))
    s = summarize(_phases(), cfg)
    p1 = s["pass1"]["humaneval"]
    assert p1["vm_mcts"] == {"5": 0.25, "10": 0.5}
    assert p1["vm_mcts+public"] == {"5": 0.25, "10": 0.75}  # d's passing program wins on its public test
    assert p1["best_of_n"] == {"5": 0.5, "10": 0.5} and p1["prm_best_of_n"] == {"5": 0.75, "10": 0.75}
    assert p1["greedy"] == {"5": 0.25, "10": 0.25} and "greedy+public" not in p1
    assert list(p1)[:2] == ["vm_mcts", "vm_mcts+public"]  # arms listed in the documented order
    assert s["oracle"]["humaneval"]["vm_mcts"] == {"5": 0.25, "10": 0.75}
    lo, hi = s["intervals"]["humaneval"]["vm_mcts"]["10"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    pair = s["paired"]["humaneval"]["vm_mcts@10 vs best_of_n@10"]
    assert (pair["won"], pair["lost"], pair["difference"], pair["mcnemar_p"]) == (1, 1, 0.0, 1.0)
    assert pair["ci95"][0] <= 0.0 <= pair["ci95"][1]
    g = s["paired"]["humaneval"]["prm_best_of_n@5 vs greedy@5"]
    assert (g["won"], g["lost"]) == (2, 0) and g["mcnemar_p"] == 0.5
    cost = s["cost"]["humaneval"]
    assert cost["vm_mcts"]["10"]["samples"] == 7.5 and cost["best_of_n"]["5"]["policy_tokens"] == 22.5
    assert cost["prm_best_of_n"]["5"]["value_calls"] == 3.0  # line prefixes, not programs
    # equal policy tokens: 20 tokens buy vm_mcts one step (5 samples), best_of_n two samples
    tok = s["tokens"]["humaneval"]
    assert tok["pass1"]["vm_mcts"]["20"] == 0.25 and tok["pass1"]["best_of_n"]["20"] == 0.5
    assert tok["samples"]["vm_mcts"]["40"] == 7.5 and tok["samples"]["best_of_n"]["40"] == 2.25
    assert "vm_mcts@40 vs best_of_n@40" in tok["paired"]
    assert s["power"]["humaneval"]["problems"] == 4


def test_paired_statistics() -> None:
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32) and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(10, 2) == pytest.approx(0.0385742, abs=1e-6)
    boot = Bootstrap(200, reps=4000, seed=1)
    a = [i < 60 for i in range(200)]
    b = [i < 40 for i in range(200)]  # a wins 20, loses 0
    r = boot.compare(a, b)
    assert (r["won"], r["lost"], r["difference"]) == (20, 0, 0.1)
    assert 0.05 < r["ci95"][0] < 0.1 < r["ci95"][1] < 0.15
    assert r["detectable_95"] == pytest.approx(1.959964 * (20 / 200) ** 0.5 / 200**0.5, rel=1e-5)
    assert r["mde_80"] > r["detectable_95"]
    assert boot.compare(a, a)["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError):
        boot.compare(a[:10], b[:10])


def test_problem_sets_are_fixed_and_held_out() -> None:
    cfg = EvalConfig(humaneval_n=12, gym_n=9, gym_n_per_tier=100, gym_tiers=(1, 2, 3))
    he = eval_problems(cfg, "humaneval")
    assert [p.id for p in he] == [p.id for p in eval_problems(cfg, "humaneval")] and len(he) == 12
    gym = eval_problems(cfg, "gym_test")
    assert len(gym) == 9 and {p.metadata["split"] for p in gym} == {"test"}
    assert sorted(p.metadata["tier"] for p in gym) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    val = eval_problems(cfg, "gym_validation")  # where search settings are chosen
    assert len(val) == 9 and {p.metadata["split"] for p in val} == {"validation"}
    assert not {p.id for p in val} & {p.id for p in gym}
    assert len(eval_problems(EvalConfig(), "humaneval")) == 164


def test_the_default_gym_test_set_is_large_enough() -> None:
    gym = eval_problems(EvalConfig(), "gym_test")
    assert len(gym) >= 200 and len({p.id for p in gym}) == len(gym) and {p.metadata["split"] for p in gym} == {"test"}


def test_report_only_rebuilds_json_and_plot_from_phase_files(tmp_path) -> None:
    cfg = EvalConfig(datasets=("humaneval",), budgets=(5, 10), max_budget={}, output_dir=str(tmp_path / "phases"),
                     results_file=str(tmp_path / "eval.json"), plot_file=str(tmp_path / "eval.png"), report_only=True, bootstrap=500)
    for name, ph in _phases().items():
        write_phase(phase_path(cfg, name), {**ph, "config": _phase_config(cfg)})
    other = {**_phases()["humaneval.greedy.b1"], "dataset": "gym_test", "config": _phase_config(cfg)}
    write_phase(phase_path(cfg, "gym_test.greedy.b1"), other)  # not a configured dataset
    run_eval(cfg)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["humaneval"]["vm_mcts"] == {"5": 0.25, "10": 0.5} and "gym_test" not in report
    assert report["oracle"]["humaneval"]["vm_mcts"] == {"5": 0.25, "10": 0.75} and report["meta"]["value_version"] == "v"
    assert report["paired"]["humaneval"]["vm_mcts@10 vs best_of_n@10"]["won"] == 1
    assert report["intervals"]["humaneval"]["best_of_n"]["10"][1] <= 1.0
    assert (tmp_path / "eval.png").stat().st_size > 0
    # a phase made with other settings is refused, not mixed in
    write_phase(phase_path(cfg, "humaneval.beam.b10"), {**_phases()["humaneval.vm_mcts.b10"], "strategy": "beam",
                                                         "config": {**_phase_config(cfg), "c_uct": 0.5}})
    with pytest.raises(ValueError, match="c_uct"):
        run_eval(cfg)


async def test_a_phase_killed_midway_resumes_at_its_first_unfinished_problem(tmp_path) -> None:
    """A phase longer than one sitting: the problems finished before the kill are read back from the
    partial file, only the others run again, and the records equal one uninterrupted run's."""
    import gzip

    from tests.search.doubles import HashValue
    from tests.training.test_value_data import HashSandbox, _problem
    from training.search_eval import PartialPhase, _run_phase, _Runner

    cfg = EvalConfig(concurrency=1, search={"k": 5, "max_tokens": 200}, prm_aggregates=[], output_dir=str(tmp_path))
    problems = [_problem(f"p{i}") for i in range(5)]
    header = {"config": _phase_config(cfg), "problems": [p.id for p in problems], "run_budget": 10}
    whole, _ = await _run_phase([_Runner(cfg, SeededPolicy(), HashValue(), HashSandbox())], problems, "vm_mcts", 10, "whole")

    class Killed(Exception):
        pass

    runner = _Runner(cfg, SeededPolicy(), HashValue(), HashSandbox())
    real_one, ran = runner.one, []

    async def one(p, i, *args):
        if i == 3:
            raise Killed
        ran.append(i)
        return await real_one(p, i, *args)

    runner.one = one  # type: ignore[method-assign]
    path = tmp_path / "gym_test.vm_mcts.b10.partial.jsonl.gz"
    with pytest.raises(Killed):
        await _run_phase([runner], problems, "vm_mcts", 10, "first sitting", PartialPhase(path, header))
    with gzip.open(path, "at") as fh:  # the kill came while a line was being written
        fh.write('{"i": 4, "elapsed')
    resumed = PartialPhase(path, header)
    assert sorted(resumed.done) == [0, 1, 2] and resumed.elapsed_s > 0

    runner2 = _Runner(cfg, SeededPolicy(), HashValue(), HashSandbox())
    real_one2, ran2 = runner2.one, []

    async def one2(p, i, *args):
        ran2.append(i)
        return await real_one2(p, i, *args)

    runner2.one = one2  # type: ignore[method-assign]
    records, wall = await _run_phase([runner2], problems, "vm_mcts", 10, "second sitting", resumed)
    assert ran[:3] == [0, 1, 2] and sorted(ran2) == [3, 4] and wall >= resumed.elapsed_s  # 4 may have started, then been cancelled
    strip = lambda r: {k: v for k, v in r.items() if k not in ("wall_s",)}  # noqa: E731
    assert [strip(r) for r in records] == [strip(r) for r in whole]

    other = {**header, "config": {**header["config"], "k": 4}}
    with pytest.raises(ValueError, match="other settings"):
        PartialPhase(path, other)


async def test_rescoring_a_phase_equals_sampling_it_again_with_the_other_value_model(tmp_path) -> None:
    """greedy's and best_of_n's samples do not depend on the value model: `rescore_from` reads them from
    a run with value model A and scores them with B, and the phase equals a fresh run with B (values,
    PRM scores and everything else); a source that cannot be reused is refused before a model loads."""
    from tests.search.doubles import hash_value
    from tests.training.test_value_data import HashSandbox, _problem
    from training.search_eval import _rescore_and_write, _run_and_write, _Runner, read_phase, rescore_sources

    problems = [_problem(f"p{i}") for i in range(4)]
    sets = {"humaneval": problems}
    common = {"datasets": ("humaneval",), "strategies": ("greedy", "best_of_n", "vm_mcts"), "budgets": (5, 10), "concurrency": 2,
              "search": {"k": 5, "max_tokens": 200}, "prm_aggregates": ("min", "last")}
    cfg_a = EvalConfig(**common, output_dir=str(tmp_path / "a"), value={"model": "value-a"})
    cfg_b = EvalConfig(**common, output_dir=str(tmp_path / "b"), value={"model": "value-b"}, rescore_from=str(tmp_path / "a"))

    def value_b(state: str) -> float:
        return hash_value("b:" + state)

    def runner(cfg: EvalConfig, fn=hash_value) -> _Runner:
        return _Runner(cfg, SeededPolicy(), HashValue(fn=fn), HashSandbox())

    with pytest.raises(ValueError, match="does not exist"):
        rescore_sources(cfg_b, sets, resume=False)
    for strategy, budget in (("greedy", 1), ("best_of_n", 10)):
        await _run_and_write([runner(cfg_a)], problems, "humaneval", strategy, budget, [5, 10],
                             phase_path(cfg_a, f"humaneval.{strategy}.b{budget}"), resume=False)
    sources = rescore_sources(cfg_b, sets, resume=False)
    assert sorted(sources) == ["humaneval.best_of_n.b10", "humaneval.greedy.b1"]  # vm_mcts's samples follow the value model

    def same(phase: dict) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("wall_s", "snapshot_matches_result")} for r in phase["results"]]

    for name, source in sources.items():
        strategy, budget = source[1]["strategy"], source[1]["run_budget"]
        rescored = await _rescore_and_write(runner(cfg_b, value_b), problems, source, phase_path(cfg_b, name))
        fresh = await _run_and_write([runner(cfg_b, value_b)], problems, "humaneval", strategy, budget, [5, 10],
                                     tmp_path / "fresh" / f"{name}.json.gz", resume=False)
        assert same(rescored) == same(fresh) != same(source[1])
        assert rescored["config"] == fresh["config"] and rescored["rescored_from"]["config"]["value_model"] == "value-a"
        assert read_phase(phase_path(cfg_b, name)) == json.loads(json.dumps(rescored))
        assert all(r["snapshot_matches_result"] is None for r in rescored["results"])
        same_model = await _rescore_and_write(runner(cfg_a), problems, source, tmp_path / "same" / f"{name}.json.gz")
        assert same(same_model) == same(source[1])
    bon = read_phase(phase_path(cfg_b, "humaneval.best_of_n.b10"))
    assert any(c["prm"]["min"] < c["prm"]["last"] for r in bon["results"] for c in r["candidates"])  # prefixes scored too

    # refused: another search setting, a file without the programs, the output folder itself
    with pytest.raises(ValueError, match="other settings \\(k\\)"):
        rescore_sources(cfg_b.model_copy(update={"search": cfg_b.search.model_copy(update={"k": 4})}), sets, resume=False)
    path = phase_path(cfg_a, "humaneval.greedy.b1")
    old = read_phase(path)
    for r in old["results"]:
        for c in r["candidates"]:
            c.pop("code")
    write_phase(path, old)
    with pytest.raises(ValueError, match="predates"):
        rescore_sources(cfg_b, sets, resume=False)
    phase_path(cfg_b, "humaneval.best_of_n.b10").unlink()
    assert list(rescore_sources(cfg_b, sets, resume=True)) == ["humaneval.best_of_n.b10"]  # greedy is done in b: not read again
    with pytest.raises(ValueError, match="output_dir"):
        rescore_sources(cfg_b.model_copy(update={"output_dir": str(tmp_path / "a")}), sets, resume=False)
    with pytest.raises(ValueError, match="other problems"):
        rescore_sources(cfg_b, {"humaneval": problems[:3]}, resume=True)


async def _two_phases_on_one_gate(cfg: EvalConfig, delay) -> tuple[list, list, float, float]:
    """vm_mcts and then best_of_n queued on one engine's gate (as `restrl eval` queues them, ranks 0
    and 1), each search held ``delay(i)`` s first: the (start|end, strategy, problem) events, both
    phases' records - checked equal to the same phase run alone - and the second phase's wall and
    the total wall."""
    import asyncio

    from tests.training.test_value_data import HashSandbox, _problem
    from training.search_eval import _run_phase, _Runner, engine_gates

    problems = [_problem(f"p{i}") for i in range(5)]
    alone = {s: (await _run_phase([_Runner(cfg, SeededPolicy(), HashValue(), HashSandbox())], problems, s, 10, s))[0]
             for s in ("vm_mcts", "best_of_n")}
    runner = _Runner(cfg, SeededPolicy(), HashValue(), HashSandbox())
    real_one, events = runner.one, []

    async def one(p, i, strategy, *args):
        events.append(("start", strategy, i))
        await asyncio.sleep(delay(i))
        out = await real_one(p, i, strategy, *args)
        events.append(("end", strategy, i))
        return out

    runner.one = one  # type: ignore[method-assign]
    gates = engine_gates([runner])
    t0 = asyncio.get_running_loop().time()
    first = asyncio.ensure_future(_run_phase([runner], problems, "vm_mcts", 10, "first", gates=gates, rank=0))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(_run_phase([runner], problems, "best_of_n", 10, "second", gates=gates, rank=1))
    (a, _), (b, wall_b) = await first, await second
    total = asyncio.get_running_loop().time() - t0
    strip = lambda recs: [{k: v for k, v in r.items() if k != "wall_s"} for r in recs]  # noqa: E731
    assert strip(a) == strip(alone["vm_mcts"]) and strip(b) == strip(alone["best_of_n"])  # as if each ran alone
    return events, [(s, i) for kind, s, i in events if kind == "start"], wall_b, total


async def test_phases_on_shared_gates_queue_in_order_and_overlap_at_their_edges() -> None:
    """`restrl eval` queues every phase at once on one gate per engine: the second phase's searches
    start only after all of the first phase's have started, and fill the engine while the first
    phase's last searches run; each phase's records equal those of a phase run alone."""
    cfg = EvalConfig(concurrency=2, search={"k": 5, "max_tokens": 200}, prm_aggregates=[])
    events, starts, wall_b, total = await _two_phases_on_one_gate(cfg, lambda i: 0.05 if i < 4 else 0.3)  # each phase's last is slow
    assert [s for s, _ in starts] == ["vm_mcts"] * 5 + ["best_of_n"] * 5 and [i for _, i in starts[:5]] == list(range(5))
    assert events.index(("start", "best_of_n", 0)) < events.index(("end", "vm_mcts", 4))  # overlap at the edge
    assert 0 < wall_b <= total - 0.05  # a phase's wall runs from its first search's start, not from when it was queued


async def test_gate_admits_by_lowest_key_then_first_come_and_survives_cancelled_waiters() -> None:
    import asyncio

    from training.search_eval import Gate

    gate, order = Gate(1), []
    release = asyncio.Event()

    async def hold(name, key, wait=None):
        async with gate.slot(key):
            order.append(name)
            if wait is not None:
                await wait.wait()

    first = asyncio.ensure_future(hold("first", (9, 9), release))
    await asyncio.sleep(0)
    tasks = {n: asyncio.ensure_future(hold(n, k)) for n, k in [("b", (1, 0)), ("a", (0, 5)), ("c", (1, 0)), ("gone", (0, 0))]}
    await asyncio.sleep(0)
    tasks["gone"].cancel()  # cancelled while waiting: skipped, its place not lost
    release.set()
    await asyncio.gather(first, *tasks.values(), return_exceptions=True)
    assert order == ["first", "a", "b", "c"] and gate.free == 1


async def test_interleaved_phases_take_turns_problem_by_problem() -> None:
    """`interleave`: two phases queued on one gate run problem 0 of each, then problem 1, ... (after the
    slots the first phase filled at once), so a run stopped early leaves both phases' partial files
    over the same first problems; the records equal a phase run alone."""
    cfg = EvalConfig(concurrency=2, search={"k": 5, "max_tokens": 200}, prm_aggregates=[], interleave=True)
    _, starts, _, _ = await _two_phases_on_one_gate(cfg, lambda i: 0.01)
    # the first phase took both slots at once; from then on the lowest (problem, phase) goes next
    assert starts == [("vm_mcts", 0), ("vm_mcts", 1), ("best_of_n", 0), ("best_of_n", 1), ("vm_mcts", 2), ("best_of_n", 2),
                      ("vm_mcts", 3), ("best_of_n", 3), ("vm_mcts", 4), ("best_of_n", 4)]
    with pytest.raises(ValueError, match="interleave"):
        EvalConfig(interleave=True, time_limit_s=60)


@pytest.mark.vllm
def test_restrl_eval_end_to_end_then_rescored_with_another_value_model(tmp_path, default_model_dir, monkeypatch) -> None:
    """`restrl eval` on the real engine, value model and sandbox: the phases (queued at once, run in
    order) write files that keep every candidate's program, and the report; a second run naming
    another value model takes greedy's and best_of_n's samples from the first (`rescore_from`),
    before any search starts (they share the value batcher), and searches vm_mcts again."""
    from models.default import SHIPPED_VALUE_DIR
    from tests.conftest import TEST_ENGINE
    from training import search_eval
    from training.search_eval import read_phase

    common = {"datasets": ("humaneval",), "humaneval_n": 2, "strategies": ("greedy", "best_of_n", "vm_mcts"), "budgets": (5,),
              "concurrency": 4, "bootstrap": 200, "policy": dict(TEST_ENGINE), "search": {"max_tokens": 64}, "prm_aggregates": ("min",)}

    def config(name: str, **more) -> EvalConfig:
        out = tmp_path / name
        return EvalConfig(**common, output_dir=str(out), results_file=str(out / "eval.json"), plot_file=str(out / "eval.png"), **more)

    first = run_eval(config("a"))
    assert set(first["pass1"]["humaneval"]) >= {"greedy", "best_of_n", "prm_best_of_n", "vm_mcts"}
    names = ("humaneval.greedy.b1", "humaneval.best_of_n.b5", "humaneval.vm_mcts.b5")
    a = {n: read_phase(tmp_path / "a" / f"{n}.json.gz") for n in names}
    assert all("code" in c for ph in a.values() for r in ph["results"] for c in r["candidates"])
    assert json.loads((tmp_path / "a" / "eval.json").read_text())["meta"]["snapshot_self_check_mismatches"] == 0

    events: list[str] = []  # the real functions, recorded: rescorings end before the first search of run b
    rescore, one = search_eval._rescore_and_write, search_eval._Runner.one

    async def recorded_rescore(*args, **kwargs):
        phase = await rescore(*args, **kwargs)
        events.append("rescored")
        return phase

    async def recorded_one(self, *args, **kwargs):
        events.append("search")
        return await one(self, *args, **kwargs)

    monkeypatch.setattr(search_eval, "_rescore_and_write", recorded_rescore)
    monkeypatch.setattr(search_eval._Runner, "one", recorded_one)
    run_eval(config("b", value={"model": str(SHIPPED_VALUE_DIR), "dtype": "bfloat16"}, rescore_from=str(tmp_path / "a")))
    assert events[:2] == ["rescored", "rescored"] and set(events[2:]) == {"search"}
    b = {n: read_phase(tmp_path / "b" / f"{n}.json.gz") for n in names}
    for n in names[:2]:  # the same programs and verdicts, scored by the named model (here the same adapter: near-equal values)
        assert b[n]["rescored_from"]["path"].endswith(f"{n}.json.gz") and b[n]["config"]["value_model"] == str(SHIPPED_VALUE_DIR)
        pairs = [(x, y) for ra, rb in zip(a[n]["results"], b[n]["results"], strict=True)
                 for x, y in zip(ra["candidates"], rb["candidates"], strict=True)]
        assert pairs and all(x["code"] == y["code"] and x["passed"] == y["passed"] for x, y in pairs)
        assert all(abs(x["value"] - y["value"]) < 0.05 for x, y in pairs if x["value"] is not None)
    assert "rescored_from" not in b["humaneval.vm_mcts.b5"]  # the value model steers its samples: searched again


def test_a_resumed_phase_made_with_another_value_model_is_refused(tmp_path) -> None:
    """`--resume` reuses a finished phase only when the value model loaded now made it: the config's
    value setting (None = the shipped adapter) names a newly shipped model without changing, so the
    phase's recorded value version decides. greedy never asks the value model: its phase is reused."""
    from training.search_eval import _checked, _phase_config

    cfg = EvalConfig(output_dir=str(tmp_path))
    path = tmp_path / "gym_test.best_of_n.b40.json.gz"
    phase = {"strategy": "best_of_n", "value_version": "value-value@a1c18840", "config": _phase_config(cfg)}
    assert _checked(phase, cfg, path, value_version="value-value@a1c18840") is phase
    assert _checked(phase, cfg, path) is phase  # the report alone loads no model
    with pytest.raises(ValueError, match="value model value-value@a1c18840, this run loads value-value@deadbeef"):
        _checked(phase, cfg, path, value_version="value-value@deadbeef")
    greedy = {**phase, "strategy": "greedy"}
    assert _checked(greedy, cfg, path, value_version="value-value@deadbeef") is greedy


def test_widen_is_a_phase_setting_of_the_mcts_phases_only(tmp_path) -> None:
    """`search.widen` changes what vm_mcts and orm_mcts sample, not greedy's or best_of_n's: their
    phases (and every phase made before the setting existed, widen off) stay reusable, a vm_mcts
    phase made without it is refused and one made with it is refused by a run without it."""
    from training.search_eval import _checked, _phase_config, _Runner

    spec, widened = EvalConfig(output_dir=str(tmp_path)), EvalConfig(output_dir=str(tmp_path), search={"widen": True})
    assert "widen" not in _phase_config(spec, "vm_mcts") and "widen" not in _phase_config(widened, "best_of_n")
    assert _phase_config(widened, "vm_mcts")["widen"] is True
    # and the phases run it so: the MCTS arms widened, best_of_n's and greedy's searches as asked of them
    runner = SimpleNamespace(cfg=widened)
    assert [_Runner.search_config(runner, s, 20, 0).widen for s in ("vm_mcts", "orm_mcts", "best_of_n", "greedy", "beam")] == \
        [True, True, False, False, False]
    path = tmp_path / "gym_test.vm_mcts.b40.json.gz"
    for strategy in ("greedy", "best_of_n"):
        phase = {"strategy": strategy, "config": _phase_config(spec, strategy)}
        assert _checked(phase, widened, path) is phase
    old_tree = {"strategy": "vm_mcts", "config": _phase_config(spec, "vm_mcts")}
    with pytest.raises(ValueError, match="widen=False, now True"):
        _checked(old_tree, widened, path)
    new_tree = {"strategy": "vm_mcts", "config": _phase_config(widened, "vm_mcts")}
    assert _checked(new_tree, widened, path) is new_tree
    with pytest.raises(ValueError, match="widen=True, now False"):
        _checked(new_tree, spec, path)
