"""`restrl eval`: pass@1 of every search strategy and final-answer rule at equal budgets, paired.

In: a fixed, documented problem set per dataset - all 164 HumanEval problems (evaluation only;
``humaneval_n`` < 164 takes a seeded sample) and the gym's test split (compositions never seen in
training; tiers where the default model's oracle is well above its greedy pass@1) - the policy
(vLLM), the value model (the shipped adapter unless ``value_model`` names another), a sandbox.

What runs, dataset by dataset (``order``), strategy by strategy in ``phases`` order; all problems
of a phase are searched concurrently on one engine, value calls batched across searches by
`search.ValueBatcher`. Without ``time_limit_s`` the phases overlap at their edges (every phase is
queued at once on one gate per engine, in order, so the next phase's searches fill the engine while
a phase's last ones finish; ``interleave`` makes them take turns problem by problem instead, so a run
stopped early leaves every phase over the same first problems); with it, phases run one after the
other and none starts after the limit:

* ``greedy`` runs once: it spends one sample at any budget.
* every other strategy runs once at its largest budget (``budgets``, capped per strategy by
  ``max_budget``, e.g. beam and orm_mcts at 20) with ``parallel_expansions = 1``; each smaller
  budget is read from that run (*anytime snapshot*: the candidates sampled within the first b
  samples). For the tree strategies a budget-b run issues exactly the first b / k expansions
  (seeds derive from the issue order) and returns exactly that snapshot's program
  (tests/training/test_search_eval.py); for best-of-N the first b programs of one seeded request
  are the programs a request for b samples returns (vLLM seeds sample i with seed + i; checked on
  the real engine in the same test file). Budgets that are not snapshots run separately.

Final-answer rules (*arms*), all on the SAME samples of a phase:

* ``<strategy>`` - the highest value (the spec's rule; for best_of_n the ORM score);
* ``<strategy>+public`` - pass fraction on the problem's public tests, then value
  (`SearchConfig.rerank_with_tests`; problems without public tests fall back to value);
* ``prm_best_of_n`` (``:mean``, ``:last``) - best_of_n's samples ranked as PRM-BoN ranks them: every
  line prefix scored by the value model (`search.step_prefixes`), aggregated by min (mean, last).

Per arm and budget: pass@1 on the hidden tests with a bootstrap 95 % interval, the cost (mean
samples, policy tokens and value calls per problem at that snapshot; walls per phase), the oracle
(any sampled candidate passes) per strategy, and for every pair of arms at the same budget the paired
comparison of `training.paired` (wins, losses, difference with a paired-bootstrap 95 % interval,
exact McNemar p, the set's detectable difference). The same at equal *policy-token* budgets: the
snapshot of each arm at the last expansion (best-of-N: sample) whose cumulative tokens fit (token
budgets: ``token_budgets``, or the tokens best_of_n spends per problem at each sample budget).

Out: ``results_file`` (``{dataset: {arm: {budget: pass1}}, "oracle", "intervals", "cost",
"paired", "tokens", "power", "meta"}``), the budget-accuracy plot (samples and tokens), and in
``output_dir`` one gzipped JSON per finished phase with every problem's candidates (first sampled
at which step, value, PRM scores, public pass fraction, hidden verdict) - small enough to commit,
what ``--resume`` skips and ``report_only`` rebuilds the report from without loading a model.
Every phase also appends each finished problem to ``<phase>.partial.jsonl.gz`` (`PartialPhase`), so
with ``--resume`` a phase longer than one sitting continues where it stopped.

Another value model, same samples (``rescore_from``): greedy's and best_of_n's samples do not
depend on the value model, so a run that changes only the value model reads those phases from an
earlier run's folder and scores their stored programs (values, PRM prefixes) with the new model:
value calls only, minutes instead of hours, and the comparison between two value models is paired
on identical samples. The tree strategies, whose samples the value model steers, run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gzip
import heapq
import itertools
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from models.base import Policy
from models.config import EngineConfig, ValueConfig, move_renamed_keys, over_job_defaults
from models.prompting import PromptMode, assemble_program, root_state
from sandbox.api import ProgramRunner, SandboxConfig
from search import Budget, SearchConfig, ValueBatcher, open_replicas, run_search
from search.context import resolve_mode
from search.evaluators import aggregate_steps, step_prefixes
from search.tree import rollout_code
from search.types import MCTS_STRATEGIES, count_weighted
from tasks import Problem
from tasks.gym import make_gym
from tasks.humaneval import load_humaneval
from training.paired import Bootstrap

logger = logging.getLogger(__name__)

Dataset = Literal["humaneval", "gym_test", "gym_validation"]
Strategy = Literal["greedy", "best_of_n", "beam", "orm_mcts", "vm_mcts"]
TREE_STRATEGIES: tuple[str, ...] = ("beam", "orm_mcts", "vm_mcts")
# strategies whose samples do not depend on the value model: `rescore_from` reuses them
RESCORABLE: tuple[str, ...] = ("greedy", "best_of_n")
# the phase settings a rescored phase may differ in from its source (the value model's)
VALUE_KEYS: tuple[str, ...] = ("value_model", "value_dtype", "prm_aggregates")
ALL_STRATEGIES: tuple[Strategy, ...] = ("greedy", "best_of_n", "beam", "orm_mcts", "vm_mcts")
PHASE_FORMAT = 2
# the order arms are listed and paired in (the first of a pair is the "a" arm)
ARM_ORDER = ("vm_mcts", "vm_mcts+public", "best_of_n", "best_of_n+public", "prm_best_of_n", "prm_best_of_n:mean",
             "prm_best_of_n:last", "orm_mcts", "orm_mcts+public", "beam", "beam+public", "greedy")


def _eval_search() -> SearchConfig:
    return SearchConfig(k=5, c_uct=0.1, step_lines=1, merged_visits="one", temperature=0.7, max_tokens=256, beam_width=2,
                        parallel_expansions=1, seed=0)


# flat keys of earlier releases -> their nested place (`--set k=5` still works, with a warning)
RENAMED: dict[str, tuple[str, ...]] = {
    **{name: (f"search.{name}",) for name in ("k", "c_uct", "step_lines", "merged_visits", "temperature", "max_tokens", "beam_width")},
    "seed": ("search.seed", "policy.seed"),
    "value_model": ("value.model",),
    "value_dtype": ("value.dtype",),
    "value_batch_size": ("value.batch_size",),
    "value_max_length": ("value.max_length",),
    "value_cpu_sharing": ("value.cpu_sharing",),
    "policy_adapter": ("policy.adapter",),
    "kv_cache_gib": ("policy.kv_cache_gib",),
    "max_model_len": ("policy.max_model_len",),
    "sandbox_workers": ("sandbox.workers",),
    "sandbox_timeout_s": ("sandbox.timeout_s",),
}


class EvalConfig(BaseModel):
    """What `restrl eval` runs. The defaults are the powered evaluation committed in
    bench/results/eval.json (hours of CPU; run it in the background with ``--resume``)."""

    model_config = ConfigDict(extra="forbid")
    renamed_keys: ClassVar[dict[str, tuple[str, ...]]] = RENAMED  # flat keys of earlier releases -> their place now

    output_dir: str = Field(default="bench/results/eval_phases", description="per-phase results, gzipped JSON (resumable; committed)")
    results_file: str = Field(default="bench/results/eval.json", description="the summary JSON")
    plot_file: str = Field(default="bench/plots/eval.png", description="budget-accuracy plot")
    datasets: tuple[Dataset, ...] = Field(default=("gym_test", "humaneval"))
    humaneval_n: int = Field(default=164, ge=1, le=164, description="HumanEval problems: all 164, or a seeded sample of this size")
    humaneval_seed: int = Field(default=0, ge=0, description="seed of the HumanEval sample")
    gym_seed: int = Field(default=0, ge=0, description="gym seed (the one training used: its test split is held out)")
    gym_n_per_tier: int = Field(default=2000, ge=3, description="gym size per tier (the test split grows with it; ids are stable)")
    gym_tiers: tuple[int, ...] = Field(default=(1, 2))
    gym_n: int = Field(default=218, ge=1, description="gym test problems (an even share per tier, as many as a tier has)")
    strategies: tuple[Strategy, ...] = Field(default=ALL_STRATEGIES)
    budgets: tuple[int, ...] = Field(default=(5, 10, 20, 40), description="sampled programs per search")
    max_budget: dict[str, int] = Field(default={"beam": 20, "orm_mcts": 20}, description="largest budget per strategy (the others run all budgets)")
    token_budgets: tuple[int, ...] | None = Field(default=None, description="policy-token budgets to compare at; None = best_of_n's mean tokens at each sample budget")
    prm_aggregates: tuple[Literal["min", "mean", "last"], ...] = Field(default=("min", "mean", "last"), description="PRM-BoN rules read from best_of_n's samples")
    public_selector: bool = Field(default=True, description="also rank every strategy's candidates by public tests, then value (the +public arms)")
    count_weights: tuple[float, ...] = Field(
        default=(), description="also rank every strategy's candidates by value x (times the search sampled the program)^w, one"
        " `+count^w` arm per w (self-consistency: bench.choice_rules); read from the phases, no model runs. Phases sampled"
        " before candidates kept their counts have no such arms (the report lists them under count_arms_missing)")
    bootstrap: int = Field(default=10_000, ge=100, description="bootstrap resamples for the intervals")
    snapshots: bool = Field(default=True, description="read smaller budgets from the largest budget's run (see the module doc)")
    concurrency: int = Field(default=32, ge=1, description="searches in flight at once")
    policy: EngineConfig = Field(default_factory=lambda: EngineConfig(max_model_len=2048), description="the policy evaluated")
    value: ValueConfig = Field(default_factory=lambda: ValueConfig(dtype="bfloat16"),
                               description="the value model (model None: the one shipped for the default policy; bfloat16 halves CPU scoring time)")
    sandbox: SandboxConfig = Field(default_factory=lambda: SandboxConfig(timeout_s=6.0), description="the sandbox that grades the programs")
    search: SearchConfig = Field(
        default_factory=_eval_search,
        description="every phase's search settings; each phase sets strategy and budget, parallel_expansions = 1 (snapshots"
        " need the issue order), record_trace, and seed = search.seed + the problem's index",
    )
    time_limit_s: float | None = Field(default=None, gt=0, description="start no new phase after this many seconds")
    rescore_from: str | None = Field(
        default=None,
        description="a folder of phase files made with the same settings but another value model: the greedy and best_of_n"
        " phases (whose samples do not depend on the value model) are read from there and their candidates scored by this"
        " value model instead of sampled again; the other strategies run as usual",
    )
    report_only: bool = Field(default=False, description="no searching: rebuild the JSON and plot from the phase files in output_dir")
    keep_traces: bool = Field(default=False, description="store every search's trace in its phase file (for `python -m bench.final_choice`; large, not for committing)")
    order: Literal["dataset", "strategy"] = Field(
        default="dataset", description="dataset: every strategy of the first dataset before the next; strategy: each strategy on every dataset first"
    )
    phases: tuple[str, ...] = Field(
        default=("greedy", "vm_mcts", "best_of_n", "orm_mcts", "beam"),
        description="strategy order within each dataset (what runs first when time is short)",
    )
    interleave: bool = Field(
        default=False,
        description="the queued phases take turns problem by problem (problem 0 of every phase, then problem 1, ...) instead of"
        " phase by phase: a run stopped early leaves partial files of every phase over about the same first problems, so"
        " they pair; each phase's wall_s then spans the others' searches too (without time_limit_s only)",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return over_job_defaults(cls, move_renamed_keys(data, RENAMED, what="restrl eval"))

    @model_validator(mode="after")
    def _interleave_needs_overlap(self) -> EvalConfig:
        if self.interleave and self.time_limit_s is not None:
            raise ValueError("interleave: phases take turns only when they are queued at once, and time_limit_s runs them one"
                             " after the other: set one of the two")
        return self

    @property
    def seed(self) -> int:
        """The search seed (per problem: seed + its index; also the bootstrap's)."""
        return self.search.seed or 0


# ------------------------------------------------------------------------------------ problems


def eval_problems(cfg: EvalConfig, dataset: Dataset) -> list[Problem]:
    """The fixed problem set of ``dataset`` (deterministic from the config)."""
    if dataset == "humaneval":
        allp = load_humaneval()
        picked = sorted(random.Random(cfg.humaneval_seed).sample(range(len(allp)), min(cfg.humaneval_n, len(allp))))
        return [allp[i] for i in picked]
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


def plan_runs(cfg: EvalConfig, strategy: str) -> dict[int, list[int]]:
    """run budget -> the budgets it answers, for one strategy."""
    cap = cfg.max_budget.get(strategy)
    budgets = sorted(b for b in set(cfg.budgets) if cap is None or b <= cap)
    if not budgets:
        return {}
    if strategy == "greedy":
        return {1: budgets}
    if cfg.snapshots and (strategy == "best_of_n" or strategy in TREE_STRATEGIES):
        top = budgets[-1]
        exact = [b for b in budgets if b == top or strategy == "best_of_n" or b % cfg.search.k == 0]
        plan: dict[int, list[int]] = {top: exact}
        for b in budgets:
            if b not in exact:
                plan[b] = [b]
        return plan
    return {b: [b] for b in budgets}


# ------------------------------------------------------------------------------------ records


def search_record(trace: dict[str, Any], *, per_sample: bool) -> dict[str, Any]:
    """What a phase keeps of one search: its *steps* (cumulative [samples, policy tokens, value
    calls] after each expansion, or after each sample of a one-request strategy with
    ``per_sample``) and its distinct candidates in first-sampled order, each with the step that
    first sampled it, its code, value and the step of every sample that ended in it (``sampled_at``:
    a snapshot at a smaller budget counts the ones before it)."""
    nodes = {n["id"]: n for n in trace["nodes"]}
    steps: list[list[int]] = []
    cands: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    samples = tokens = calls = 0
    for exp in sorted(trace["expansions"], key=lambda e: e["seq"]):
        state = nodes[exp["node"]]["state"]
        values = {ro["sample"]: ro["value"] for ro in exp["rollouts"]}
        exp_calls = int(exp.get("value_calls", 0))
        for i, smp in enumerate(exp["samples"]):
            tokens += int(smp["tokens"])
            samples += 1
            if i in values:
                code = rollout_code(state, smp["text"], smp["finish_reason"])
                if code not in seen:
                    seen[code] = {"code": code, "step": len(steps), "value": values[i], "sampled_at": []}
                    cands.append(seen[code])
                    if per_sample:
                        calls += 1  # one-request strategies score each distinct program once
                elif seen[code]["value"] is None and values[i] is not None:
                    seen[code]["value"] = values[i]
                seen[code]["sampled_at"].append(len(steps))
            if per_sample:
                steps.append([samples, tokens, calls])
        if not per_sample:
            calls += exp_calls
            steps.append([samples, tokens, calls])
    return {"steps": steps, "candidates": cands}


def _value_key(c: dict[str, Any]) -> float:
    return c["value"] if c["value"] is not None else -1.0


def selector_key(selector: str) -> Any:
    """Ranking key of a final-answer rule over candidate records (lower is better); candidates are
    in first-sampled order, so ``min`` keeps the first sampled on ties, as `search.SearchRun` does."""
    if selector == "value":
        return lambda c: -_value_key(c)
    if selector == "public":
        return lambda c: (-(c.get("public") or 0.0), -_value_key(c))
    if selector.startswith("prm:"):
        how = selector.split(":", 1)[1]
        return lambda c: -(c["prm"][how] if c.get("prm") else -1.0)
    if selector.startswith("count:"):  # value x count^w; a candidate the search gave no value ranks last
        w = float(selector.split(":", 1)[1])
        return lambda c: (c["value"] is None, -count_weighted(c["value"] or 0.0, c["count"], w))
    raise ValueError(f"unknown final-answer rule {selector!r}")


def has_counts(phase: dict[str, Any]) -> bool:
    """Whether a phase's candidates keep the step of each sample (``sampled_at``: phases since the counts)."""
    return all("sampled_at" in c for r in phase["results"] for c in r["candidates"])


def snapshot_of(record: dict[str, Any], *, unit: Literal["samples", "tokens"], limit: float) -> tuple[int, list[dict[str, Any]]]:
    """(steps taken, candidates sampled by then) of a search stopped at ``limit`` samples or tokens."""
    col = 0 if unit == "samples" else 1
    taken = sum(1 for st in record["steps"] if st[col] <= limit)
    return taken, [c for c in record["candidates"] if c["step"] < taken]


def choose(record: dict[str, Any], selector: str, *, unit: Literal["samples", "tokens"], limit: float) -> dict[str, Any] | None:
    """The candidate an arm returns at that limit (None when nothing was sampled by then)."""
    taken, cands = snapshot_of(record, unit=unit, limit=limit)
    if selector.startswith("count:"):  # the samples the snapshot had taken, not the whole search's
        cands = [{**c, "count": sum(1 for st in c["sampled_at"] if st < taken)} for c in cands]
    return min(cands, key=selector_key(selector)) if cands else None


# ------------------------------------------------------------------------------------ running


class _Runner:
    def __init__(self, cfg: EvalConfig, policy: Policy, value: ValueBatcher, sandbox: ProgramRunner) -> None:
        self.cfg = cfg
        self.policy = policy
        self.value = value
        self.sandbox = sandbox
        self.verdicts: dict[tuple[str, str, str], float] = {}

    async def fractions(self, problem: Problem, programs: Sequence[str], which: Literal["tests", "public_tests"]) -> list[float]:
        """Per program: 1.0 when it passes every hidden test (``tests``: the score), or its pass
        fraction on the public tests (the +public rule's key). An infra error counts as 0, logged."""
        tests = list(problem.tests if which == "tests" else problem.public_tests)
        todo = list(dict.fromkeys(p for p in programs if (which, problem.id, p) not in self.verdicts))
        if todo:
            verdicts = await self.sandbox.run_many([(p, tests, problem.entry_point) for p in todo])
            for p, v in zip(todo, verdicts, strict=True):
                if v.status == "infra_error":
                    logger.warning("eval problem=%s: infra error on %s (counted as not passed)", problem.id, which)
                    frac = 0.0
                elif which == "tests":
                    frac = 1.0 if v.status == "passed" else 0.0
                else:
                    frac = float(v.pass_fraction)
                self.verdicts[(which, problem.id, p)] = frac
        return [self.verdicts[(which, problem.id, p)] for p in programs]

    async def prm_scores(self, problem: Problem, codes: Sequence[str], mode: PromptMode) -> tuple[list[dict[str, float]], list[int]]:
        """Every candidate's PRM scores (`search.evaluators.aggregate_steps` of its line prefixes,
        one batched value call) and how many new prefixes each adds (PRM-BoN's value calls)."""
        root = root_state(problem, mode)
        prefixes = [step_prefixes(c, root) for c in codes]
        distinct = list(dict.fromkeys(p for ps in prefixes for p in ps))
        values = dict(zip(distinct, await self.value.score(problem, distinct), strict=True)) if distinct else {}
        seen: set[str] = set()
        new: list[int] = []
        for ps in prefixes:
            new.append(len(set(ps) - seen))
            seen.update(ps)
        scores: list[dict[str, float]] = [
            {str(how): aggregate_steps([values[p] for p in ps], how) for how in self.cfg.prm_aggregates} for ps in prefixes
        ]
        return scores, new

    def search_config(self, strategy: str, budget: int, index: int) -> SearchConfig:
        # a setting of some strategies only (`_PHASE_OPTIONAL_KEYS`: widen) runs at its default in the others' phases
        not_theirs = {key: SearchConfig.model_fields[key].default for key, strategies in _PHASE_OPTIONAL_KEYS.items()
                      if strategy not in strategies}
        return self.cfg.search.model_copy(update={
            "strategy": strategy, "budget": Budget(samples=budget), "parallel_expansions": 1, "seed": self.cfg.seed + index,
            "record_trace": True, "top_candidates": 0, **not_theirs,
        })

    async def one(self, problem: Problem, index: int, strategy: str, run_budget: int, mode: PromptMode) -> dict[str, Any]:
        result = await run_search(problem, self.policy, self.value, self.search_config(strategy, run_budget, index))
        assert result.trace is not None
        record = search_record(result.trace, per_sample=strategy in ("best_of_n", "greedy"))
        cands = record["candidates"]
        codes = [c["code"] for c in cands]  # kept in the phase file: what was sampled, and what `rescore` reads
        returned = min(range(len(cands)), key=lambda i: selector_key("value")(cands[i])) if cands else None
        programs = [assemble_program(problem, c, mode) for c in codes]
        for c, passed in zip(cands, await self.fractions(problem, programs, "tests"), strict=True):
            c["passed"] = passed >= 1.0
        if self.cfg.public_selector and problem.public_tests and strategy != "greedy":
            for c, frac in zip(cands, await self.fractions(problem, programs, "public_tests"), strict=True):
                c["public"] = frac
        out: dict[str, Any] = {
            "problem_id": problem.id, "run_budget": run_budget, "samples": result.usage.samples,
            "value_calls": result.usage.value_calls, "tokens": result.usage.policy_tokens, "wall_s": result.usage.wall_s,
            "stop_reason": result.stop_reason, "steps": record["steps"], "candidates": cands,
            "snapshot_matches_result": (codes[returned] if returned is not None else None) == result.code,
        }
        if strategy == "best_of_n" and self.cfg.prm_aggregates and cands:
            scores, new = await self.prm_scores(problem, codes, mode)
            for c, sc, n in zip(cands, scores, new, strict=True):
                c["prm"], c["prm_new"] = sc, n
            out["prm_value_calls"] = sum(new)
        if self.cfg.keep_traces:
            out["trace"] = result.trace
        return out

    async def rescore(self, problem: Problem, strategy: str, record: dict[str, Any], mode: PromptMode) -> dict[str, Any]:
        """``record`` (a problem's search in another phase file) with its candidates' values and PRM
        scores given by this runner's value model instead: the samples, verdicts and costs stay
        (they do not depend on the value model for the strategies in `RESCORABLE`)."""
        out = copy.deepcopy(record)
        cands = out["candidates"]
        scored = [c for c in cands if c["value"] is not None]  # a candidate the search gave no value keeps none
        if scored:
            for c, v in zip(scored, await self.value.score(problem, [c["code"] for c in scored]), strict=True):
                c["value"] = v
        if strategy == "best_of_n" and self.cfg.prm_aggregates and cands:
            scores, new = await self.prm_scores(problem, [c["code"] for c in cands], mode)
            for c, sc, n in zip(cands, scores, new, strict=True):
                c["prm"], c["prm_new"] = sc, n
            out["prm_value_calls"] = sum(new)
        out["snapshot_matches_result"] = None  # no search ran: nothing to check the snapshot against
        return out


class PartialPhase:
    """A phase's problems as they finish, appended to ``<name>.partial.jsonl.gz`` (one gzip member per
    line, so a run killed mid-write loses at most that line): a phase longer than a session resumes at
    the first unfinished problem instead of starting over. The first line is a header (settings,
    problem ids, model versions); a partial file made with other settings is refused like a phase
    file. Each search's seed derives from the problem's index, so the problems run later are the
    searches they would have been in one run (value calls are batched across whatever searches are in
    flight, which can move a bf16 score in its last bits)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.header = path, header
        self.done: dict[int, dict[str, Any]] = {}
        self.elapsed_s = 0.0
        if path.exists():
            lines = self._lines()
            if lines and lines[0].get("header") is not None:
                made = lines[0]["header"]
                config, made_config = header.get("config", {}), made.get("config", {})
                differ = sorted([k for k in header if k != "config" and made.get(k) != header[k]]
                                + settings_differ(made_config, config))
                if differ:
                    raise ValueError(f"{path} was made with other settings ({', '.join(differ)}): "
                                     "use another output_dir, or remove the file to run that phase again")
                for line in lines[1:]:
                    self.done[line["i"]] = line["record"]
                    self.elapsed_s = max(self.elapsed_s, line["elapsed_s"])
                return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._append({"header": header})

    def _lines(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            with gzip.open(self.path, "rt", encoding="utf-8") as fh:
                for raw in fh:
                    out.append(json.loads(raw))
        except (EOFError, OSError, json.JSONDecodeError):  # the line being written when the run was killed
            logger.warning("%s: a truncated last line (%d read): that problem runs again", self.path, len(out))
        return out

    def _append(self, obj: dict[str, Any]) -> None:
        with gzip.open(self.path, "at", encoding="utf-8") as fh:
            fh.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def add(self, i: int, record: dict[str, Any], elapsed_s: float) -> None:
        self.done[i] = record
        self._append({"i": i, "elapsed_s": round(elapsed_s, 3), "record": record})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class Gate:
    """At most ``slots`` holders at once; waiters get in by lowest key, ties first come. The eval gives
    every search the same key (first come: phase by phase, as queued) or (problem, phase) to interleave."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        self._waiting: list[tuple[tuple[int, int], int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, key: tuple[int, int]) -> AsyncIterator[None]:
        if self.free > 0 and not self._waiting:
            self.free -= 1
        else:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (key, next(self._arrivals), waiter))
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # handed the slot, then cancelled: pass it on
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, waiter = heapq.heappop(self._waiting)
            if not waiter.done():  # a cancelled waiter is skipped
                waiter.set_result(None)
                return
        self.free += 1


def engine_gates(runners: Sequence[_Runner]) -> dict[int, Gate]:
    """One gate of ``concurrency`` searches per engine; phases that share them queue in order (or take
    turns by problem: ``interleave``)."""
    return {id(r): Gate(r.cfg.concurrency) for r in runners}


async def _run_phase(runners: Sequence[_Runner], problems: list[Problem], strategy: str, run_budget: int, desc: str,
                     partial: PartialPhase | None = None, gates: dict[int, Gate] | None = None, rank: int = 0,
                     ) -> tuple[list[dict[str, Any]], float]:
    """Every problem's record, in problem order, and the phase's wall seconds: from its first search's
    start to its last one's end (summed over the runs that contributed to ``partial``). Problem ``i``
    runs on runner (engine) ``i mod len(runners)`` (`search.replicas.shard`), each engine running
    ``concurrency`` searches at once; with shared ``gates`` (`engine_gates`) phases started one after
    the other queue behind each other (first come), so the next phase's searches fill the engine while
    this one's last searches finish; with ``interleave`` they take turns problem by problem instead
    (``rank``: the phase's place in the queue)."""
    mode = resolve_mode(runners[0].policy, runners[0].search_config(strategy, run_budget, 0))
    gates = gates if gates is not None else engine_gates(runners)
    done = dict(partial.done) if partial is not None else {}
    before = partial.elapsed_s if partial is not None else 0.0
    started: list[float] = []
    bar = tqdm(total=len(problems), initial=len(done), desc=desc, unit="problem")
    if done:
        logger.info("eval phase %s: %d of %d problems already done (%.0f s), resuming", desc, len(done), len(problems), before)

    def elapsed() -> float:
        return before + (time.monotonic() - started[0] if started else 0.0)

    async def go(runner: _Runner, i: int, p: Problem) -> None:
        async with gates[id(runner)].slot((i, rank) if runner.cfg.interleave else (0, 0)):  # (0, 0): first come
            if not started:
                started.append(time.monotonic())
            r = await runner.one(p, i, strategy, run_budget, mode)
        done[i] = r
        if partial is not None:
            partial.add(i, r, elapsed())
        bar.update(1)

    tasks = [asyncio.ensure_future(go(runners[i % len(runners)], i, p)) for i, p in enumerate(problems) if i not in done]
    try:
        await asyncio.gather(*tasks)
    finally:  # one search failing fails the phase: the others stop rather than run on unattended
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()
    return [done[i] for i in range(len(problems))], elapsed()


# ------------------------------------------------------------------------------------ summary


def arms_of(strategy: str, cfg: EvalConfig) -> list[tuple[str, str]]:
    """(arm, final-answer rule) pairs read from one strategy's phase."""
    arms = [(strategy, "value")]
    if cfg.public_selector and strategy != "greedy":
        arms.append((f"{strategy}+public", "public"))
    if strategy == "best_of_n":
        arms += [("prm_best_of_n" if how == "min" else f"prm_best_of_n:{how}", f"prm:{how}") for how in cfg.prm_aggregates]
    if strategy != "greedy":
        arms += [(f"{strategy}+count^{w:g}", f"count:{w:g}") for w in cfg.count_weights]
    return arms


def _readable_arms(phase: dict[str, Any], cfg: EvalConfig, missing: list[str]) -> list[tuple[str, str]]:
    """`arms_of` the phase's strategy, less the count arms of a phase without counts (named in ``missing``)."""
    arms = arms_of(phase["strategy"], cfg)
    if any(sel.startswith("count:") for _, sel in arms) and not has_counts(phase):
        missing.append(f"{phase['dataset']}.{phase['strategy']}.b{phase['run_budget']}")
        logger.warning("eval: phase %s predates candidate counts: no +count arms for it", missing[-1])
        arms = [(a, sel) for a, sel in arms if not sel.startswith("count:")]
    return arms


def _arm_rank(arm: str) -> tuple[int, str]:
    return (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), arm)


def _cost(record: dict[str, Any], selector: str, *, unit: Literal["samples", "tokens"], limit: float) -> list[float]:
    """[samples, policy tokens, value calls] an arm had spent at that limit."""
    taken, cands = snapshot_of(record, unit=unit, limit=limit)
    samples, tokens, calls = record["steps"][taken - 1] if taken else (0, 0, 0)
    if selector.startswith("prm:"):  # PRM-BoN scores line prefixes instead of whole programs
        calls = sum(c.get("prm_new", 0) for c in cands)
    return [float(samples), float(tokens), float(calls)]


def _token_budgets(cfg: EvalConfig, phases: list[dict[str, Any]]) -> list[int]:
    if cfg.token_budgets:
        return sorted(set(cfg.token_budgets))
    bon = [ph for ph in phases if ph["strategy"] == "best_of_n"]
    records = [r for ph in bon for r in ph["results"]] or [r for ph in phases for r in ph["results"]]
    per_sample = sum(r["tokens"] for r in records) / max(1, sum(r["samples"] for r in records))
    return sorted({int(round(b * per_sample, -1)) for b in cfg.budgets if b * per_sample >= 1})


def summarize(phases: dict[str, dict[str, Any]], cfg: EvalConfig) -> dict[str, Any]:
    """Every table of the report from the finished phases (see the module doc)."""
    pass1: dict[str, Any] = {}
    oracle: dict[str, Any] = {}
    intervals: dict[str, Any] = {}
    cost: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    tokens: dict[str, Any] = {}
    power: dict[str, Any] = {}
    count_missing: list[str] = []
    for d in cfg.datasets:
        mine = [ph for ph in phases.values() if ph["dataset"] == d]
        if not mine:
            continue
        ids = sorted({r["problem_id"] for ph in mine for r in ph["results"]})
        boot = Bootstrap(len(ids), reps=cfg.bootstrap, seed=cfg.seed)
        by_budget: dict[int, dict[str, list[bool]]] = {}
        by_tokens: dict[int, dict[str, list[bool]]] = {}
        token_grid = _token_budgets(cfg, mine)
        tok_samples: dict[str, dict[str, float]] = {}
        for ph in mine:
            s = ph["strategy"]
            recs = {r["problem_id"]: r for r in ph["results"]}
            if set(recs) != set(ids):
                logger.warning("eval %s: phase %s.b%s covers %d of %d problems: left out", d, s, ph["run_budget"], len(recs), len(ids))
                continue
            rows = [recs[i] for i in ids]
            arms = _readable_arms(ph, cfg, count_missing)
            top = ph["run_budget"] == max(plan_runs(cfg, s) or [0])
            for b in ph["answers"]:
                oracle.setdefault(d, {}).setdefault(s, {})[str(b)] = sum(
                    any(c["passed"] for c in snapshot_of(r, unit="samples", limit=b)[1]) for r in rows) / len(rows)
                for arm, sel in arms:
                    picks = [choose(r, sel, unit="samples", limit=b) for r in rows]
                    ok = [bool(p is not None and p["passed"]) for p in picks]
                    by_budget.setdefault(b, {})[arm] = ok
                    pass1.setdefault(d, {}).setdefault(arm, {})[str(b)] = sum(ok) / len(ok)
                    intervals.setdefault(d, {}).setdefault(arm, {})[str(b)] = boot.interval(ok)
                    spent = [_cost(r, sel, unit="samples", limit=b) for r in rows]
                    cost.setdefault(d, {}).setdefault(arm, {})[str(b)] = {
                        "samples": sum(x[0] for x in spent) / len(spent), "policy_tokens": sum(x[1] for x in spent) / len(spent),
                        "value_calls": sum(x[2] for x in spent) / len(spent),
                        "phase_wall_s": ph["wall_s"], "phase_run_budget": ph["run_budget"],
                    }
            if top or s == "greedy":
                for t in token_grid:
                    for arm, sel in arms:
                        picks = [choose(r, sel, unit="tokens", limit=t) for r in rows]
                        by_tokens.setdefault(t, {})[arm] = [bool(p is not None and p["passed"]) for p in picks]
                        tok_samples.setdefault(arm, {})[str(t)] = sum(_cost(r, sel, unit="tokens", limit=t)[0] for r in rows) / len(rows)
        paired[d] = _pairs(by_budget, boot)
        tokens[d] = {
            "budgets": token_grid,
            "pass1": {arm: {str(t): sum(v[arm]) / len(ids) for t, v in by_tokens.items() if arm in v}
                      for arm in sorted({a for v in by_tokens.values() for a in v}, key=_arm_rank)},
            "samples": tok_samples,
            "paired": _pairs(by_tokens, boot),
            "note": "anytime snapshots at the last expansion (best-of-N: sample) whose cumulative policy tokens fit the budget",
        }
        power[d] = {"problems": len(ids), **{
            f"vm_mcts@{b} vs best_of_n@{b}": {k: paired[d][f"vm_mcts@{b} vs best_of_n@{b}"][k] for k in ("detectable_95", "mde_80", "won", "lost")}
            for b in sorted(by_budget) if f"vm_mcts@{b} vs best_of_n@{b}" in paired[d]
        }}
    ordered = {d: {a: v[a] for a in sorted(v, key=_arm_rank)} for d, v in pass1.items()}
    out = {"pass1": ordered, "oracle": oracle, "intervals": intervals, "cost": cost, "paired": paired, "tokens": tokens, "power": power}
    return {**out, "count_arms_missing": count_missing} if count_missing else out


def _pairs(by_limit: dict[int, dict[str, list[bool]]], boot: Bootstrap) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for limit in sorted(by_limit):
        arms = sorted(by_limit[limit], key=_arm_rank)
        for a, b in itertools.combinations(arms, 2):
            out[f"{a}@{limit} vs {b}@{limit}"] = boot.compare(by_limit[limit][a], by_limit[limit][b])
    return out


def plot_eval(summary: dict[str, Any], path: str | Path, *, title: str) -> Path | None:
    """pass@1 with 95 % intervals against the sample budget, and against policy tokens, per dataset."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    datasets = list(summary["pass1"])
    if not datasets:
        return None
    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 4.4 * len(datasets)), squeeze=False)
    colors = plt.get_cmap("tab20")  # 12+ arms: the default cycle's 10 colours would repeat
    for row, d in zip(axes, datasets, strict=True):
        ax, tax = row
        arms = list(summary["pass1"][d])
        for i, arm in enumerate(arms):
            by_b = summary["pass1"][d][arm]
            bs = sorted(int(b) for b in by_b)
            ys = [by_b[str(b)] for b in bs]
            lo = [ys[j] - summary["intervals"][d][arm][str(b)][0] for j, b in enumerate(bs)]
            hi = [summary["intervals"][d][arm][str(b)][1] - ys[j] for j, b in enumerate(bs)]
            style = "--" if "+public" in arm else ":" if arm.startswith("prm_best_of_n:") else "-"
            shift = [b * (1 + 0.012 * (i - len(arms) / 2)) for b in bs]  # keep the error bars apart
            ax.errorbar(shift, ys, yerr=[lo, hi], fmt="o" + style, color=colors(i % 20), ms=3, lw=1, capsize=2, label=arm)
            tok = summary["tokens"].get(d, {}).get("pass1", {}).get(arm)
            if tok:
                ts = sorted(int(t) for t in tok)
                tax.plot(ts, [tok[str(t)] for t in ts], "o" + style, color=colors(i % 20), ms=3, lw=1, label=arm)
        orc = summary["oracle"][d].get("best_of_n") or next(iter(summary["oracle"][d].values()))
        bs = sorted(int(b) for b in orc)
        ax.plot(bs, [orc[str(b)] for b in bs], "k--", lw=1, label="oracle (best_of_n samples)")
        for a, label in ((ax, "budget (sampled programs)"), (tax, "budget (policy tokens per problem)")):
            a.set_xscale("log")
            a.set_xlabel(label)
            a.set_ylabel("pass@1 of the returned program")
            a.set_title(d)
        ax.set_xticks(bs)
        ax.set_xticklabels([str(b) for b in bs])
        ax.set_xticks([], minor=True)  # a log axis also labels minor ticks ("6x10^0"): the budgets are the ticks
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title + "  (bars: paired-bootstrap 95 % intervals)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ the job


def phase_path(cfg: EvalConfig, name: str) -> Path:
    return Path(cfg.output_dir) / f"{name}.json.gz"


def write_phase(path: Path, phase: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        json.dump(phase, fh, separators=(",", ":"))
    tmp.replace(path)


def read_phase(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        return json.load(fh)  # type: ignore[no-any-return]


def rescore_sources(cfg: EvalConfig, problem_sets: dict[Dataset, list[Problem]], *, resume: bool) -> dict[str, tuple[Path, dict[str, Any]]]:
    """With ``rescore_from``: phase name -> (file, phase) whose samples the phase reuses, for every
    planned greedy / best_of_n phase not already done; a ValueError, before any model loads, when
    one is missing, was made with other settings than the value model's or on other problems, or
    predates stored programs."""
    if cfg.rescore_from is None:
        return {}
    folder = Path(cfg.rescore_from)
    if folder.resolve() == Path(cfg.output_dir).resolve():
        raise ValueError(f"rescore_from {folder} is output_dir: give the rescored phases another output_dir")
    out: dict[str, tuple[Path, dict[str, Any]]] = {}
    for dataset, strategy, _, _, name in _planned_phases(cfg):
        if strategy not in RESCORABLE or (resume and phase_path(cfg, name).exists()):
            continue
        path = folder / f"{name}.json.gz"
        if not path.exists():
            raise ValueError(f"rescore_from: {path} does not exist (run that phase there first, or drop rescore_from)")
        source = read_phase(path)
        made, now = source.get("config", {}), _phase_config(cfg, strategy)
        differ = settings_differ(made, now, skip=VALUE_KEYS)
        if source.get("format") != PHASE_FORMAT or differ:
            raise ValueError(f"rescore_from: {path} was made with other settings "
                             f"({', '.join(differ) or 'phase format'}): only the value model may differ")
        if source["problems"] != [p.id for p in problem_sets[dataset]]:
            raise ValueError(f"rescore_from: {path} holds other problems than this configuration's {dataset} set")
        if any("code" not in c for r in source["results"] for c in r["candidates"]):
            raise ValueError(f"rescore_from: {path} predates phase files that keep the sampled programs: run that phase again")
        out[name] = (path, source)
    return out


async def _run(cfg: EvalConfig, *, resume: bool) -> dict[str, Any]:
    t0 = time.monotonic()
    loads: list[tuple[float, float, float]] = [os.getloadavg()]
    phases: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    problem_sets = {d: eval_problems(cfg, d) for d in cfg.datasets}
    sources = rescore_sources(cfg, problem_sets, resume=resume)
    async with open_replicas(cfg.policy, cfg.value, cfg.sandbox) as stacks:
        runners = []
        for stack in stacks:
            assert stack.value is not None and stack.sandbox is not None
            runners.append(_Runner(cfg, stack.policy, stack.value, stack.sandbox))
        if len(runners) > 1:
            logger.info("eval: %d engines, problems sharded across them", len(runners))
        # without a time limit the phases overlap at their edges: all are queued at once on shared
        # gates, in order, so the engine never idles while a phase's last searches finish
        overlap = cfg.time_limit_s is None
        gates = engine_gates(runners)
        running: dict[str, asyncio.Future[dict[str, Any]]] = {}
        planned = _planned_phases(cfg)
        try:
            # rescoring first, alone: it shares the value batcher (and pauses the engine), so a search
            # phase beside it would wait behind it and count that wait in its wall time
            for dataset, _, _, _, name in planned:  # `rescore_sources` leaves out phases already done
                if name in sources:
                    phases[name] = await _rescore_and_write(runners[0], problem_sets[dataset], sources[name], phase_path(cfg, name))
                    loads.append(os.getloadavg())
            for dataset, strategy, run_budget, answers, name in planned:
                path = phase_path(cfg, name)
                if name in phases:
                    continue
                if resume and path.exists():
                    phases[name] = _checked(read_phase(path), cfg, path, value_version=str(runners[0].value.version))
                elif cfg.time_limit_s is not None and time.monotonic() - t0 > cfg.time_limit_s:
                    skipped.append(name)
                else:
                    job = _run_and_write(runners, problem_sets[dataset], dataset, strategy, run_budget, answers, path,
                                         resume=resume, gates=gates, rank=len(running))
                    if overlap:
                        running[name] = asyncio.ensure_future(job)
                        await asyncio.sleep(0)  # its searches take their places in the queue before the next phase's
                    else:
                        phases[name] = await job
                        loads.append(os.getloadavg())
            finished = await asyncio.gather(*running.values())  # the first failure raises at once
            phases.update(zip(running, finished, strict=True))
            if running:
                loads.append(os.getloadavg())
        finally:  # one phase failing stops the others rather than leave them running unattended
            for future in running.values():
                future.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)
    return write_report(cfg, phases, skipped=skipped, wall_s=time.monotonic() - t0, loads=loads)


async def _run_and_write(runners: Sequence[_Runner], problems: list[Problem], dataset: str, strategy: str, run_budget: int,
                         answers: list[int], path: Path, *, resume: bool,
                         gates: dict[int, Gate] | None = None, rank: int = 0) -> dict[str, Any]:
    """Run one phase and write its file; its finished problems go to a partial file on the way, which
    ``resume`` continues (`PartialPhase`) and a fresh run starts over."""
    name = path.name.removesuffix(".json.gz")
    runner = runners[0]
    header = {"config": _phase_config(runner.cfg, strategy), "problems": [p.id for p in problems], "run_budget": run_budget,
              "policy_version": str(runner.policy.version), "value_version": str(runner.value.version)}
    partial_path = path.with_name(f"{name}.partial.jsonl.gz")
    if not resume:  # a fresh run starts the phase over, and can itself be resumed
        partial_path.unlink(missing_ok=True)
    partial = PartialPhase(partial_path, header)
    results, wall_s = await _run_phase(runners, problems, strategy, run_budget, name, partial, gates, rank)
    phase = {"format": PHASE_FORMAT, "dataset": dataset, "strategy": strategy, "run_budget": run_budget,
             "answers": answers, "problems": [p.id for p in problems], "wall_s": wall_s,
             "loadavg_after": os.getloadavg(), "policy_version": str(runner.policy.version),
             "value_version": str(runner.value.version), "config": _phase_config(runner.cfg, strategy), "results": results}
    write_phase(path, phase)
    partial.remove()
    logger.info("eval phase %s: %.0f s", name, phase["wall_s"])
    return phase


async def _rescore_and_write(runner: _Runner, problems: list[Problem], source: tuple[Path, dict[str, Any]], path: Path) -> dict[str, Any]:
    """A phase whose samples are ``source``'s, scored by ``runner``'s value model (`_Runner.rescore`);
    its ``wall_s`` stays the sampling run's, the scoring's is ``rescore_wall_s``."""
    src_path, src = source
    if src["policy_version"] != str(runner.policy.version):
        raise ValueError(f"rescore_from: {src_path} was sampled from policy {src['policy_version']}, this run loads "
                         f"{runner.policy.version}: rescoring it would mix two policies")
    strategy, name = src["strategy"], path.name.removesuffix(".json.gz")
    mode = resolve_mode(runner.policy, runner.search_config(strategy, src["run_budget"], 0))
    gate = asyncio.Semaphore(runner.cfg.concurrency)

    async def go(p: Problem, record: dict[str, Any]) -> dict[str, Any]:
        async with gate:
            return await runner.rescore(p, strategy, record, mode)

    t0 = time.monotonic()
    results = await asyncio.gather(*(go(p, r) for p, r in zip(problems, src["results"], strict=True)))
    phase = {**src, "results": list(results), "value_version": str(runner.value.version), "config": _phase_config(runner.cfg, strategy),
             "rescored_from": {"path": str(src_path), "value_version": src["value_version"], "config": src["config"]},
             "rescore_wall_s": time.monotonic() - t0, "loadavg_after": os.getloadavg()}
    write_phase(path, phase)
    logger.info("eval phase %s: %s's samples rescored in %.0f s", name, src_path, phase["rescore_wall_s"])
    return phase


def _planned_phases(cfg: EvalConfig) -> list[tuple[Dataset, str, int, list[int], str]]:
    """(dataset, strategy, run budget, answer budgets, phase name) of every phase, in run order (a
    strategy's largest run first)."""
    return [(dataset, strategy, run_budget, answers, f"{dataset}.{strategy}.b{run_budget}")
            for dataset, strategy in _phase_order(cfg)
            for run_budget, answers in sorted(plan_runs(cfg, strategy).items(), key=lambda kv: -kv[0])]


def _phase_order(cfg: EvalConfig) -> list[tuple[Dataset, str]]:
    order = [s for s in cfg.phases if s in cfg.strategies] + [s for s in cfg.strategies if s not in cfg.phases]
    if cfg.order == "dataset":
        return [(d, s) for d in cfg.datasets for s in order]
    return [(d, s) for s in order for d in cfg.datasets]


# settings a phase's results depend on: a phase file made with others is not reused. The keys are
# those of the flat config of earlier releases, so that committed phase files stay reusable.
_PHASE_KEYS = ("gym_seed", "gym_n_per_tier", "humaneval_seed", "k", "c_uct", "step_lines", "merged_visits", "temperature",
               "max_tokens", "beam_width", "seed", "value_model", "value_dtype", "policy_adapter", "prm_aggregates", "policy_model")
# settings added since, recorded only where they apply and differ from their default (so phases made
# before them, and phases of strategies they do not touch, stay reusable): name -> strategies
_PHASE_OPTIONAL_KEYS = {"widen": MCTS_STRATEGIES}


def _phase_config(cfg: EvalConfig, strategy: str | None = None) -> dict[str, Any]:
    s = cfg.search
    flat = {"gym_seed": cfg.gym_seed, "gym_n_per_tier": cfg.gym_n_per_tier, "humaneval_seed": cfg.humaneval_seed,
            "k": s.k, "c_uct": s.c_uct, "step_lines": s.step_lines, "merged_visits": s.merged_visits,
            "temperature": s.temperature, "max_tokens": s.max_tokens, "beam_width": s.beam_width, "seed": cfg.seed,
            "value_model": cfg.value.model, "value_dtype": cfg.value.dtype, "policy_adapter": cfg.policy.adapter,
            "prm_aggregates": list(cfg.prm_aggregates), "policy_model": cfg.policy.model}
    assert tuple(flat) == _PHASE_KEYS
    for key, strategies in _PHASE_OPTIONAL_KEYS.items():
        value = getattr(s, key)
        if strategy in strategies and value != SearchConfig.model_fields[key].default:
            flat[key] = value
    return flat


def setting(config: dict[str, Any], key: str) -> Any:
    """A phase setting as recorded (`_phase_config`): an optional key left out is at its default, a
    base key left out (a phase of an earlier release) is unset."""
    if key in _PHASE_OPTIONAL_KEYS:
        return config.get(key, SearchConfig.model_fields[key].default)
    return config.get(key)


def settings_differ(made: dict[str, Any], now: dict[str, Any], *, skip: tuple[str, ...] = ()) -> list[str]:
    """The phase settings (`_phase_config`) in which ``made`` and ``now`` differ."""
    keys = [*now, *(k for k in _PHASE_OPTIONAL_KEYS if k in made and k not in now)]
    return sorted(k for k in keys if k not in skip and setting(made, k) != setting(now, k))


def _checked(phase: dict[str, Any], cfg: EvalConfig, path: Path, *, value_version: str | None = None) -> dict[str, Any]:
    """``phase`` when it was made with this configuration's settings (and, given ``value_version``,
    the value model loaded now, unless the phase is greedy's, which never asks it); else a
    ValueError that says what differs (mixing them in one report would compare unlike runs)."""
    made, now = phase.get("config", {}), _phase_config(cfg, phase.get("strategy"))
    differ = settings_differ(made, now)
    if differ:
        raise ValueError(f"{path} was made with other settings ({', '.join(f'{k}={setting(made, k)!r}, now {setting(now, k)!r}' for k in differ)}): "
                         "use another output_dir, or remove the file to run that phase again")
    if value_version is not None and phase.get("strategy") != "greedy" and phase.get("value_version") != value_version:
        raise ValueError(f"{path} was made with the value model {phase.get('value_version')}, this run loads {value_version} (the"
                         " same value setting names another model now, e.g. a newly shipped adapter): use another output_dir"
                         " (rescore_from can reuse greedy's and best_of_n's samples), or remove the file to run that phase again")
    return phase


def phase_files(cfg: EvalConfig) -> dict[str, dict[str, Any]]:
    """The finished phases of this configuration's datasets and strategies in ``output_dir``."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(cfg.output_dir).glob("*.json.gz")):
        phase = read_phase(path)
        if phase.get("format") != PHASE_FORMAT:
            logger.warning("eval: %s is an older phase format: ignored", path)
            continue
        if phase.get("dataset") in cfg.datasets and phase.get("strategy") in cfg.strategies:
            out[path.name.removesuffix(".json.gz")] = _checked(phase, cfg, path)
    return out


def write_report(
    cfg: EvalConfig, phases: dict[str, dict[str, Any]], *, skipped: list[str], wall_s: float | None, loads: list[Any]
) -> dict[str, Any]:
    """Write ``results_file`` and ``plot_file`` from finished phases; return the tables."""
    summary = summarize(phases, cfg)
    versions = {(ph.get("policy_version"), ph.get("value_version")) for ph in phases.values()}
    mismatches = sum(r["snapshot_matches_result"] is False for ph in phases.values() for r in ph["results"])
    policy_version = " + ".join(sorted({str(v[0]) for v in versions}))
    value_version = " + ".join(sorted({str(v[1]) for v in versions}))
    report = {
        **summary["pass1"],
        "oracle": summary["oracle"],
        "intervals": summary["intervals"],
        "cost": summary["cost"],
        "paired": summary["paired"],
        "tokens": summary["tokens"],
        "power": summary["power"],
        "meta": {
            "command": "restrl eval",
            "config": cfg.model_dump(mode="json"),
            "problems": {d: [p.id for p in eval_problems(cfg, d)] for d in cfg.datasets},
            "policy_version": policy_version,
            "value_version": value_version,
            "phases_run": sorted(phases),
            "phases_not_run": skipped,  # planned, no file: past time_limit_s, or (report_only) not run yet
            "phase_wall_s": {k: round(v["wall_s"], 1) for k, v in phases.items()},
            "phases_rescored": {k: v["rescored_from"]["path"] for k, v in phases.items() if "rescored_from" in v},
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
    results_file.write_text(json.dumps(report, indent=1))
    plot_eval(summary, cfg.plot_file, title=f"policy {policy_version}, value {value_version}")
    return {k: summary[k] for k in ("pass1", "oracle", "paired", "power")} | {"skipped": skipped}


def run_eval(cfg: EvalConfig, *, resume: bool = False) -> dict[str, Any]:
    """The ``restrl eval`` job (blocking); with ``report_only`` only the report is rebuilt."""
    if cfg.report_only:
        found = phase_files(cfg)
        planned = [name for *_, name in _planned_phases(cfg)]
        return write_report(cfg, found, skipped=[n for n in planned if n not in found], wall_s=None, loads=[os.getloadavg()])
    return asyncio.run(_run(cfg, resume=resume))
