"""`restrl eval`: pass@1 of every search strategy at every sample budget, plus the oracle.

In: a fixed, documented problem set per dataset - a seeded sample of HumanEval (evaluation only)
and the gym's test split (compositions never seen in training) - the policy (vLLM), the value
model (the shipped adapter unless ``value_model`` names another), a sandbox. For each dataset,
strategy and budget (sampled programs) the returned program is executed on the problem's hidden
tests; pass@1 is the share of problems whose program passes every test. The *oracle* at a budget
is the share of problems where any sampled candidate passes (the ceiling a perfect ranker reaches).

Runs, dataset by dataset (``order``), strategy by strategy in ``phases`` order, largest budget first;
all problems of a phase are searched concurrently on one engine, value calls batched across
searches by `search.ValueBatcher`; with ``time_limit_s`` no phase starts after the limit:

* ``greedy`` runs once: it spends one sample at any budget, so its figure is the same for all.
* ``best_of_n`` runs once per budget (one request with n = budget).
* the tree strategies (``beam``, ``orm_mcts``, ``vm_mcts``) run once at the largest budget with
  ``parallel_expansions = 1``; a smaller budget that is a multiple of ``k`` is read from that run's
  trace (*anytime snapshot*: the best-valued candidate among the samples of the first b / k
  expansions). With one expansion in flight and seeds derived from the expansion's issue order, a
  budget-b run issues exactly those expansions and returns exactly that program -
  tests/training/test_search_eval.py checks this against separate runs. Other budgets (1) run
  separately.

Out: ``bench/results/eval.json`` (``{dataset: {strategy: {budget: pass1}}, "oracle": {dataset:
{strategy: {budget: oracle}}}, "paired": ..., "meta": ...}``), the budget-accuracy plot (the
paper's Figure 3b shape) and, in ``output_dir``, one JSON per finished phase (``--resume`` reuses
them) with every problem's outcome; ``report_only`` rebuilds the JSON and the plot from those files
without loading a model (what to do after stopping a run that outgrew its time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from models.prompting import PromptMode, assemble_program
from search.tree import rollout_code
from tasks import Problem

logger = logging.getLogger(__name__)

Dataset = Literal["humaneval", "gym_test", "gym_validation"]
Strategy = Literal["greedy", "best_of_n", "beam", "orm_mcts", "vm_mcts"]
TREE_STRATEGIES: tuple[str, ...] = ("beam", "orm_mcts", "vm_mcts")
ALL_STRATEGIES: tuple[Strategy, ...] = ("greedy", "best_of_n", "beam", "orm_mcts", "vm_mcts")


class EvalConfig(BaseModel):
    """What `restrl eval` runs. The defaults are the documented moderate run (``make eval``)."""

    model_config = ConfigDict(extra="forbid")

    output_dir: str = Field(default="runs/eval", description="per-phase results (resumable)")
    results_file: str = Field(default="bench/results/eval.json", description="the summary JSON")
    plot_file: str = Field(default="bench/plots/eval.png", description="budget-accuracy plot")
    datasets: tuple[Dataset, ...] = Field(default=("humaneval", "gym_test"))
    humaneval_n: int = Field(default=20, ge=1, le=164, description="HumanEval problems: a seeded sample of this size")
    humaneval_seed: int = Field(default=0, ge=0, description="seed of the HumanEval sample")
    gym_seed: int = Field(default=0, ge=0, description="gym seed (the one training used: its test split is held out)")
    gym_n_per_tier: int = Field(default=100, ge=3)
    gym_tiers: tuple[int, ...] = Field(default=(1, 2, 3))
    gym_n: int = Field(default=12, ge=1, description="gym test problems (an even share per tier)")
    strategies: tuple[Strategy, ...] = Field(default=ALL_STRATEGIES)
    budgets: tuple[int, ...] = Field(default=(1, 5, 10, 20), description="sampled programs per search")
    k: int = Field(default=5, ge=1, le=64)
    c_uct: float = Field(default=0.1, ge=0, description="UCT constant at decode time")
    step_lines: int = Field(default=1, ge=1, le=64, description="lines per step of the tree strategies")
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=256, ge=1, le=8192)
    beam_width: int = Field(default=2, ge=1)
    snapshots: bool = Field(default=True, description="tree strategies: read budgets that are multiples of k from the largest budget's trace")
    concurrency: int = Field(default=20, ge=1, description="searches in flight at once")
    seed: int = Field(default=0, ge=0, description="search seed (per problem: seed + its index)")
    value_model: str | None = Field(default=None, description="value checkpoint; None = the shipped default")
    value_dtype: Literal["float32", "bfloat16"] = Field(default="bfloat16", description="bfloat16 halves CPU scoring time")
    value_batch_size: int = Field(default=16, ge=1)
    value_max_length: int = Field(default=1024, ge=64)
    value_cpu_sharing: Literal["auto", "pause", "concurrent"] = Field(
        default="auto", description="value batches pause the policy engine and use all cores (pause), or both run at once; auto = pause on a CPU"
    )
    policy_adapter: str | None = Field(default=None)
    kv_cache_gib: float = Field(default=1.0, gt=0)
    max_model_len: int = Field(default=2048, ge=256)
    sandbox_workers: int = Field(default=2, ge=1)
    sandbox_timeout_s: float = Field(default=6.0, gt=0)
    time_limit_s: float | None = Field(default=None, gt=0, description="start no new phase after this many seconds")
    report_only: bool = Field(default=False, description="no searching: rebuild the JSON and plot from the phase files in output_dir")
    keep_traces: bool = Field(default=False, description="store every search's trace in its phase file (for `python -m bench.final_choice`)")
    order: Literal["dataset", "strategy"] = Field(
        default="dataset", description="dataset: every strategy of the first dataset before the next; strategy: each strategy on every dataset first"
    )
    phases: tuple[str, ...] = Field(
        default=("greedy", "vm_mcts", "best_of_n", "orm_mcts", "beam"),
        description="strategy order within each dataset (what runs first when time is short)",
    )


# ------------------------------------------------------------------------------------ problems


def eval_problems(cfg: EvalConfig, dataset: Dataset) -> list[Problem]:
    """The fixed problem set of ``dataset`` (deterministic from the config)."""
    if dataset == "humaneval":
        from tasks.humaneval import load_humaneval

        allp = load_humaneval()
        picked = sorted(random.Random(cfg.humaneval_seed).sample(range(len(allp)), min(cfg.humaneval_n, len(allp))))
        return [allp[i] for i in picked]
    from tasks.gym import make_gym

    # gym_validation: the split for choosing search settings (K, C, ...) - never HumanEval or test
    test = make_gym(cfg.gym_seed, cfg.gym_n_per_tier, tiers=cfg.gym_tiers).split("test" if dataset == "gym_test" else "validation")
    per = {t: [p for p in test if p.metadata.get("tier") == t] for t in cfg.gym_tiers}
    out: list[Problem] = []
    i = 0
    while len(out) < min(cfg.gym_n, len(test)):
        for t in cfg.gym_tiers:
            if i < len(per[t]) and len(out) < cfg.gym_n:
                out.append(per[t][i])
        i += 1
    return out


# ------------------------------------------------------------------------------------ snapshots


def trace_candidates(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sampled candidate of a search trace in sampling order: code, value, the expansion's
    issue order and sample index, and the samples spent up to and including its expansion."""
    nodes = {n["id"]: n for n in trace["nodes"]}
    out: list[dict[str, Any]] = []
    spent = 0
    for exp in sorted(trace["expansions"], key=lambda e: e["seq"]):
        spent += len(exp["samples"])
        state = nodes[exp["node"]]["state"]
        for ro in exp["rollouts"]:
            sample = exp["samples"][ro["sample"]]
            code = rollout_code(state, sample["text"], sample["finish_reason"])
            out.append({"code": code, "value": ro["value"], "seq": exp["seq"], "sample": ro["sample"], "spent": spent})
    return out


def distinct_candidates(trace: dict[str, Any], budget: int | None = None) -> list[dict[str, Any]]:
    """`trace_candidates` sampled within ``budget`` samples, one per distinct code (the first sample
    keeps its place; a later sample's value fills a missing one)."""
    seen: dict[str, dict[str, Any]] = {}
    for c in trace_candidates(trace):
        if budget is not None and c["spent"] > budget:
            break
        if c["code"] not in seen:
            seen[c["code"]] = dict(c)
        elif seen[c["code"]]["value"] is None and c["value"] is not None:
            seen[c["code"]]["value"] = c["value"]
    return list(seen.values())


def by_value(c: dict[str, Any]) -> tuple[float, int, int]:
    """The search's ranking key (`search.context.SearchRun`): highest value, then first sampled."""
    return (-(c["value"] if c["value"] is not None else -1.0), c["seq"], c["sample"])


def snapshot(trace: dict[str, Any], budget: int) -> tuple[str | None, list[str]]:
    """(the code a search would return after ``budget`` samples, every distinct candidate code
    sampled by then), ranked as `search.context.SearchRun` ranks: highest value, then first sampled."""
    cands = distinct_candidates(trace, budget)
    if not cands:
        return None, []
    return min(cands, key=by_value)["code"], [c["code"] for c in cands]


def plan_runs(cfg: EvalConfig, strategy: str) -> dict[int, list[int]]:
    """run budget -> the budgets it answers, for one strategy."""
    budgets = sorted(set(cfg.budgets))
    if strategy == "greedy":
        return {1: budgets}
    if strategy in TREE_STRATEGIES and cfg.snapshots:
        top = budgets[-1]
        plan: dict[int, list[int]] = {top: [b for b in budgets if b == top or b % cfg.k == 0]}
        for b in budgets:
            if b not in plan[top]:
                plan[b] = [b]
        return plan
    return {b: [b] for b in budgets}


# ------------------------------------------------------------------------------------ running


class _Runner:
    def __init__(self, cfg: EvalConfig, policy: Any, value: Any, sandbox: Any, limits: Any) -> None:
        self.cfg = cfg
        self.policy = policy
        self.value = value
        self.sandbox = sandbox
        self.limits = limits
        self.verdicts: dict[tuple[str, str], bool] = {}

    async def passes(self, problem: Problem, programs: Sequence[str]) -> list[bool]:
        todo = list(dict.fromkeys(p for p in programs if (problem.id, p) not in self.verdicts))
        if todo:
            verdicts = await self.sandbox.run_many([(p, list(problem.tests), problem.entry_point) for p in todo], limits=self.limits)
            for p, v in zip(todo, verdicts, strict=True):
                self.verdicts[(problem.id, p)] = v.status == "passed"
        return [self.verdicts[(problem.id, p)] for p in programs]

    def search_config(self, strategy: str, budget: int, index: int) -> Any:
        from search import Budget, SearchConfig

        cfg = self.cfg
        return SearchConfig(
            strategy=strategy,  # type: ignore[arg-type]
            budget=Budget(samples=budget),
            k=cfg.k,
            c_uct=cfg.c_uct,
            step_lines=cfg.step_lines,
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
            beam_width=cfg.beam_width,
            parallel_expansions=1,
            seed=cfg.seed + index,
            record_trace=True,
            top_candidates=0,
        )

    async def one(self, problem: Problem, index: int, strategy: str, run_budget: int, answers: list[int], mode: PromptMode) -> dict[str, Any]:
        from search import run_search

        result = await run_search(problem, self.policy, self.value, self.search_config(strategy, run_budget, index))
        assert result.trace is not None
        out: dict[str, Any] = {"problem_id": problem.id, "run_budget": run_budget, "samples": result.usage.samples,
                               "value_calls": result.usage.value_calls, "tokens": result.usage.policy_tokens,
                               "wall_s": result.usage.wall_s, "stop_reason": result.stop_reason, "budgets": {}}
        full_code, _ = snapshot(result.trace, result.usage.samples)
        out["snapshot_matches_result"] = full_code == result.code
        for b in answers:
            code, codes = snapshot(result.trace, b)
            programs = [assemble_program(problem, c, mode) for c in codes]
            ok = await self.passes(problem, programs)
            chosen = assemble_program(problem, code, mode) if code is not None else None
            passed = bool(chosen is not None and ok[programs.index(chosen)])
            out["budgets"][str(b)] = {"passed": passed, "oracle": any(ok), "candidates": len(codes), "value": _value_of(result.trace, code)}
        if self.cfg.keep_traces:
            out["trace"] = result.trace
        return out


def _value_of(trace: dict[str, Any], code: str | None) -> float | None:
    if code is None:
        return None
    for c in trace_candidates(trace):
        if c["code"] == code and c["value"] is not None:
            return float(c["value"])
    return None


async def _run_phase(runner: _Runner, problems: list[Problem], strategy: str, run_budget: int, answers: list[int], desc: str) -> list[dict[str, Any]]:
    from search.context import resolve_mode

    mode = resolve_mode(runner.policy, runner.search_config(strategy, run_budget, 0))
    gate = asyncio.Semaphore(runner.cfg.concurrency)
    bar = tqdm(total=len(problems), desc=desc, unit="problem")

    async def go(i: int, p: Problem) -> dict[str, Any]:
        async with gate:
            r = await runner.one(p, i, strategy, run_budget, answers, mode)
        bar.update(1)
        return r

    try:
        return list(await asyncio.gather(*(go(i, p) for i, p in enumerate(problems))))
    finally:
        bar.close()


def summarize(phases: dict[str, dict[str, Any]], cfg: EvalConfig) -> dict[str, Any]:
    """pass@1 and oracle tables, and the paired comparisons of the goal (vm_mcts@top vs
    best_of_n@top and vs greedy) from the finished phases."""
    pass1: dict[str, dict[str, dict[str, float]]] = {}
    oracle: dict[str, dict[str, dict[str, float]]] = {}
    per_problem: dict[tuple[str, str, str], dict[str, bool]] = {}
    for ph in phases.values():
        d, s = ph["dataset"], ph["strategy"]
        for b in ph["answers"]:
            rows = [r["budgets"][str(b)] for r in ph["results"]]
            pass1.setdefault(d, {}).setdefault(s, {})[str(b)] = sum(r["passed"] for r in rows) / len(rows)
            oracle.setdefault(d, {}).setdefault(s, {})[str(b)] = sum(r["oracle"] for r in rows) / len(rows)
            per_problem[(d, s, str(b))] = {r["problem_id"]: r["budgets"][str(b)]["passed"] for r in ph["results"]}
    top = str(max(cfg.budgets))
    paired: dict[str, Any] = {}
    for d in cfg.datasets:
        vm = per_problem.get((d, "vm_mcts", top))
        if vm is None:
            continue
        for other, ob in (("best_of_n", top), ("greedy", top), ("orm_mcts", top), ("beam", top)):
            o = per_problem.get((d, other, ob))
            if o is None:
                continue
            ids = sorted(set(vm) & set(o))
            paired.setdefault(d, {})[f"vm_mcts@{top} vs {other}@{ob}"] = {
                "problems": len(ids),
                "vm_mcts_passed": sum(vm[i] for i in ids),
                "other_passed": sum(o[i] for i in ids),
                "won": sum(vm[i] and not o[i] for i in ids),
                "lost": sum(o[i] and not vm[i] for i in ids),
                "margin": (sum(vm[i] for i in ids) - sum(o[i] for i in ids)) / max(1, len(ids)),
            }
    return {"pass1": pass1, "oracle": oracle, "paired": paired}


def plot_eval(summary: dict[str, Any], path: str | Path, *, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    datasets = list(summary["pass1"])
    if not datasets:
        return None
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    for ax, d in zip(axes[0], datasets, strict=True):
        for i, (s, by_b) in enumerate(sorted(summary["pass1"][d].items())):
            bs = sorted(int(b) for b in by_b)
            ax.plot(bs, [by_b[str(b)] for b in bs], "o-", color=f"C{i}", label=s)
        orc = summary["oracle"][d].get("best_of_n") or next(iter(summary["oracle"][d].values()))
        bs = sorted(int(b) for b in orc)
        ax.plot(bs, [orc[str(b)] for b in bs], "k--", lw=1, label="oracle (best_of_n samples)")
        ax.set_xscale("log")
        ax.set_xticks(bs)
        ax.set_xticklabels([str(b) for b in bs])
        ax.set_xlabel("budget (sampled programs)")
        ax.set_ylabel("pass@1 of the returned program")
        ax.set_title(d)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


async def _run(cfg: EvalConfig, *, resume: bool) -> dict[str, Any]:
    from models.config import EngineConfig, ValueConfig, resolve_device
    from models.loading import load_policy
    from models.value import cpu_threads, load_value_model
    from sandbox.limits import Limits
    from sandbox.pool import Sandbox
    from search import ValueBatcher
    from search.batcher import pauses_engine

    t0 = time.monotonic()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    policy = await load_policy(EngineConfig(engine="vllm", adapter=cfg.policy_adapter, kv_cache_gib=cfg.kv_cache_gib,
                                            max_model_len=cfg.max_model_len, seed=cfg.seed))
    pause = pauses_engine(cfg.value_cpu_sharing, engine_on_cpu=bool(getattr(policy, "on_cpu", False)), value_device=resolve_device("auto"))
    value = await load_value_model(ValueConfig(model=cfg.value_model, dtype=cfg.value_dtype, batch_size=cfg.value_batch_size,
                                               max_length=cfg.value_max_length, threads=cpu_threads(0, exclusive=pause)))
    batcher = ValueBatcher(value, max_batch=cfg.value_batch_size * 2, hold=getattr(policy, "paused", None) if pause else None)
    sandbox = Sandbox(workers=cfg.sandbox_workers)
    limits = Limits(wall_s=cfg.sandbox_timeout_s, cpu_s=cfg.sandbox_timeout_s)
    runner = _Runner(cfg, policy, batcher, sandbox, limits)
    phases: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    loads: list[tuple[float, float, float]] = [load0]
    try:
        problem_sets = {d: eval_problems(cfg, d) for d in cfg.datasets}
        order = [s for s in cfg.phases if s in cfg.strategies] + [s for s in cfg.strategies if s not in cfg.phases]
        pairs = [(d, s) for s in order for d in cfg.datasets]
        if cfg.order == "dataset":
            pairs = [(d, s) for d in cfg.datasets for s in order]
        for dataset, strategy in pairs:
            problems = problem_sets[dataset]
            for run_budget, answers in sorted(plan_runs(cfg, strategy).items(), key=lambda kv: -kv[0]):
                name = f"{dataset}.{strategy}.b{run_budget}"
                path = out / f"{name}.json"
                if resume and path.exists():
                    phases[name] = json.loads(path.read_text())
                    continue
                if cfg.time_limit_s is not None and time.monotonic() - t0 > cfg.time_limit_s:
                    skipped.append(name)
                    continue
                t_phase = time.monotonic()
                results = await _run_phase(runner, problems, strategy, run_budget, answers, name)
                phase = {"dataset": dataset, "strategy": strategy, "run_budget": run_budget, "answers": answers,
                         "problems": [p.id for p in problems], "wall_s": time.monotonic() - t_phase,
                         "loadavg_after": os.getloadavg(), "policy_version": str(policy.version),
                         "value_version": str(value.version), "results": results}
                path.write_text(json.dumps(phase, indent=1))
                phases[name] = phase
                loads.append(os.getloadavg())
                logger.info("eval phase %s: %.0f s", name, phase["wall_s"])
        return write_report(cfg, phases, skipped=skipped, wall_s=time.monotonic() - t0, loads=loads)
    finally:
        sandbox.close()
        await batcher.close()
        await value.close()
        await policy.close()


def phase_files(cfg: EvalConfig) -> dict[str, dict[str, Any]]:
    """The finished phases of this configuration's datasets and strategies in ``output_dir``."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(cfg.output_dir).glob("*.json")):
        phase = json.loads(path.read_text())
        if phase.get("dataset") in cfg.datasets and phase.get("strategy") in cfg.strategies:
            out[path.stem] = phase
    return out


def write_report(
    cfg: EvalConfig, phases: dict[str, dict[str, Any]], *, skipped: list[str], wall_s: float | None, loads: list[Any]
) -> dict[str, Any]:
    """Write ``results_file`` and ``plot_file`` from finished phases; return the tables."""
    summary = summarize(phases, cfg)
    versions = {(ph.get("policy_version"), ph.get("value_version")) for ph in phases.values()}
    mismatches = sum(not r["snapshot_matches_result"] for ph in phases.values() for r in ph["results"])
    policy_version = " + ".join(sorted({str(v[0]) for v in versions}))
    value_version = " + ".join(sorted({str(v[1]) for v in versions}))
    report = {
        **summary["pass1"],
        "oracle": summary["oracle"],
        "paired": summary["paired"],
        "meta": {
            "command": "restrl eval",
            "config": cfg.model_dump(mode="json"),
            "problems": {d: [p.id for p in eval_problems(cfg, d)] for d in cfg.datasets},
            "policy_version": policy_version,
            "value_version": value_version,
            "phases_run": sorted(phases),
            "phases_skipped_time_limit": skipped,
            "phase_wall_s": {k: round(v["wall_s"], 1) for k, v in phases.items()},
            "phase_loadavg_after": {k: v.get("loadavg_after") for k, v in phases.items()},
            "snapshot_self_check_mismatches": mismatches,
            "wall_s": wall_s,
            "loadavg_samples": loads,
            "cpu_count": os.cpu_count(),
            "greedy_note": "greedy spends one sample at every budget",
        },
    }
    results_file = Path(cfg.results_file)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(report, indent=2))
    plot_eval(summary, cfg.plot_file, title=f"policy {policy_version}, value {value_version}")
    return {"pass1": summary["pass1"], "oracle": summary["oracle"], "paired": summary["paired"], "skipped": skipped}


def run_eval(cfg: EvalConfig, *, resume: bool = False) -> dict[str, Any]:
    """The ``restrl eval`` job (blocking); with ``report_only`` only the report is rebuilt."""
    if cfg.report_only:
        found = phase_files(cfg)
        planned = [f"{d}.{s}.b{b}" for d in cfg.datasets for s in cfg.strategies for b in sorted(plan_runs(cfg, s), reverse=True)]
        return write_report(cfg, found, skipped=[n for n in planned if n not in found], wall_s=None, loads=[os.getloadavg()])
    return asyncio.run(_run(cfg, resume=resume))
