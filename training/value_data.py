"""Value-model training data from MCTS with the tests as the evaluator (RESTRL_SPEC.md section 3).

In: training problems (the gym's train split by default, or a JSONL file; HumanEval and any
``eval_only`` problem are refused), the policy, a sandbox. Each problem gets one search of the
project's own MCTS (`search.run_search`, strategy ``vm_mcts``) whose evaluator is
`search.TestEvaluator`: an expansion executes its K rollouts on the hidden tests and backs their
pass fractions up the tree (C = 0.2, K = 5, the sample budget sets the iterations). Out, in
``output_dir``:

* ``traces/<problem id>.json`` - the full search trace (`search.trace`), one file per problem,
  written when its search finishes: a problem with a trace is done (this is what ``--resume``
  skips);
* ``rows.jsonl`` - the training rows, rebuilt from all traces at the end: ``{"problem_id",
  "state", "target", "kind", "visits"}`` with kind ``expanded`` (an expanded node's state ->
  the mean reward of all rollouts sampled in its subtree), ``program`` (a complete sampled program
  -> its own executed reward) and, our extension (``include_children``), ``child`` (a state the
  search created but never expanded -> the mean reward of the rollouts that passed through it:
  exactly the states VM-MCTS scores when it creates children). ``visits`` is the number of
  rollouts behind the target. Every row also carries ``solved``, our extension: the share of those
  rollouts that pass every test (a program's is 1 or 0), the target of ``restrl train value --set
  target=solved``. Rows are de-duplicated per (problem, state) (`dedupe_rows`);
* ``problems.jsonl`` (the problems, so training needs no gym regeneration), ``config.json`` and
  ``summary.json``.

Several problems are searched concurrently on one engine (``concurrency``) so that vLLM batches
their requests; a progress bar counts finished problems.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from models.base import Policy, ValueModel
from models.config import EngineConfig, ValueConfig, move_renamed_keys, over_job_defaults
from sandbox.api import ProgramRunner, SandboxConfig
from sandbox.limits import Limits
from search import (
    Budget,
    ExecutedRewards,
    SearchConfig,
    TestEvaluator,
    VMEvaluator,
    load_trace,
    open_replicas,
    run_search,
    run_sharded,
    save_trace,
)
from search.tree import rollout_code
from tasks import Problem
from tasks.gym import make_gym
from tasks.humaneval import check_trainable
from tasks.jsonl import load_jsonl, write_jsonl

logger = logging.getLogger(__name__)

RowKind = Literal["expanded", "program", "child"]
# Where two rows of one (problem, state) meet, the better-founded target wins: an executed program
# is exact, then an expanded state's subtree mean, then a child's mean of the rollouts through it.
KIND_RANK: dict[str, int] = {"program": 0, "expanded": 1, "child": 2}


def _collect_search() -> SearchConfig:
    return SearchConfig(strategy="vm_mcts", budget=Budget(samples=30), k=5, c_uct=0.2, max_tokens=192, parallel_expansions=1, seed=0)


# flat keys of earlier releases -> their nested place (`--set samples=10` still works, with a warning)
RENAMED: dict[str, tuple[str, ...]] = {
    "samples": ("search.budget.samples",),
    **{name: (f"search.{name}",) for name in ("k", "c_uct", "temperature", "max_tokens", "parallel_expansions")},
    "seed": ("search.seed", "policy.seed"),
    "engine": ("policy.engine",),
    "kv_cache_gib": ("policy.kv_cache_gib",),
    "max_model_len": ("policy.max_model_len",),
    "policy_adapter": ("policy.adapter",),
    "value_model": ("value.model",),
    "value_dtype": ("value.dtype",),
    "sandbox_workers": ("sandbox.workers",),
    "sandbox_timeout_s": ("sandbox.timeout_s",),
}


class CollectConfig(BaseModel):
    """`restrl train collect-values`: which problems, which policy, how much search per problem."""

    model_config = ConfigDict(extra="forbid")
    renamed_keys: ClassVar[dict[str, tuple[str, ...]]] = RENAMED  # flat keys of earlier releases -> their place now

    output_dir: str = Field(default="runs/value_data", description="folder for traces/, rows.jsonl, problems.jsonl")
    problems_file: str | None = Field(default=None, description="JSONL of training problems; None = the gym's split below")
    gym_seed: int = Field(default=0, ge=0, description="gym seed (the one the policy training used)")
    gym_n_per_tier: int = Field(default=100, ge=3, description="gym size per tier (ids are stable as it grows)")
    gym_tiers: tuple[int, ...] = Field(default=(1, 2), description="gym tiers to draw problems from")
    gym_split: Literal["train", "validation"] = Field(default="train", description="never the test split")
    max_problems: int | None = Field(default=80, ge=1, description="cap on problems (an even share per tier, in gym order)")
    policy: EngineConfig = Field(default_factory=lambda: EngineConfig(max_model_len=2048),
                                 description="the policy whose rollouts the value model will learn from (a folder, an adapter, a hub id)")
    search: SearchConfig = Field(
        default_factory=_collect_search,
        description="each problem's search: vm_mcts with the tests as evaluator, budget.samples programs (iterations ="
        " samples / k), C = 0.2; seed = search.seed + the problem's index",
    )
    concurrency: int = Field(default=12, ge=1, le=1024, description="problems searched at once on the engine")
    include_children: bool = Field(default=True, description="also emit unexpanded child states (kind 'child')")
    guided: bool = Field(
        default=False,
        description="also search every problem with the decoding settings: the value model (value) values the tree at guided_c_uct, rollouts are still executed for the targets; same sample budget",
    )
    guided_c_uct: float = Field(default=0.1, ge=0, le=10, description="UCT constant of the value-guided searches (the decoding C)")
    guided_seed_offset: int = Field(
        default=0, ge=0, description="added to a guided search's seed: 0 = the tests-mode search's seed (their first"
        " expansions sample the same programs); another value gives the guided searches samples of their own",
    )
    tests_mode: bool = Field(
        default=True, description="search every problem with the tests as evaluator; false = only the guided searches (a ReST"
        " iteration: the newest value model guides, the executed rollouts still give the targets)",
    )
    value: ValueConfig = Field(default_factory=lambda: ValueConfig(dtype="bfloat16"),
                               description="the value model guiding the guided searches (model None: the one shipped for the default policy)")
    sandbox: SandboxConfig = Field(default_factory=lambda: SandboxConfig(timeout_s=4.0), description="the sandbox that runs the rollouts")
    snapshot: str | None = Field(
        default=None,
        description="a .tar.gz of config.json and every finished search's trace, rewritten every snapshot_every searches and"
        " at the end: commit it, and --resume on a fresh checkout first unpacks the traces it holds that output_dir lacks",
    )
    snapshot_every: int = Field(default=25, ge=1, description="finished searches between two snapshot writes")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        return over_job_defaults(cls, move_renamed_keys(data, RENAMED, what="restrl train collect-values"))

    @model_validator(mode="after")
    def _some_search(self) -> CollectConfig:
        if not (self.tests_mode or self.guided):
            raise ValueError("tests_mode: false needs guided: true (else nothing is searched)")
        return self


# ------------------------------------------------------------------------------------ rows


def rollout_reward(ro: dict[str, Any]) -> float | None:
    """A rollout's executed reward: ``reward`` (recorded since value-guided collection), else its
    ``value`` (the same number under `search.TestEvaluator`)."""
    reward = ro.get("reward")
    return ro["value"] if reward is None else reward


def rows_from_trace(trace: dict[str, Any], *, include_children: bool = True) -> list[dict[str, Any]]:
    """Training rows of one executed search trace (see the module doc), not yet de-duplicated.

    Targets come from the rollouts' executed rewards, whatever valued the tree (the tests, or the
    value model in a value-guided collection): an expanded state gets the mean reward of every
    rollout sampled at or below it, an unexpanded child the mean reward of the samples that chose
    it, a program its own reward. Every row carries ``depth``: a state's depth in the tree (lines
    below the root), a program's the depth of the state it was sampled from, and ``solved``: the
    share of the same rollouts that pass every test (reward 1)."""
    problem_id = trace["problem"]["id"]
    nodes = {n["id"]: n for n in trace["nodes"]}
    below: dict[int, list[float]] = {}
    programs: list[dict[str, Any]] = []
    chose: dict[int, list[float]] = {}
    for exp in trace["expansions"]:
        if not exp.get("complete", True):
            continue
        node = nodes[exp["node"]]
        state = node["state"]
        kids = [nodes[c] for c in exp.get("children", [])]
        for ro in exp["rollouts"]:
            reward = rollout_reward(ro)
            if reward is None:
                continue
            sample = exp["samples"][ro["sample"]]
            code = rollout_code(state, sample["text"], sample["finish_reason"])
            programs.append(_row(problem_id, code, [reward], "program", node["depth"]))
            nid: int | None = node["id"]
            while nid is not None:
                below.setdefault(nid, []).append(reward)
                nid = nodes[nid]["parent"]
            for kid in kids:  # the child this sample chose (a step of its code), if any
                if not kid["terminal"] and code.startswith(kid["state"]) and code != kid["state"]:
                    chose.setdefault(kid["id"], []).append(reward)
                    break
    rows: list[dict[str, Any]] = []
    for n in trace["nodes"]:
        if n["expanded"] and below.get(n["id"]):
            got = below[n["id"]]
            rows.append(_row(problem_id, n["state"], got, "expanded", n["depth"]))
        elif include_children and not n["expanded"] and not n["terminal"] and chose.get(n["id"]):
            got = chose[n["id"]]
            rows.append(_row(problem_id, n["state"], got, "child", n["depth"]))
    return rows + programs


def _row(problem_id: str, state: str, rewards: Sequence[float], kind: RowKind, depth: int) -> dict[str, Any]:
    """The row of ``state`` from the executed rewards of the rollouts behind it."""
    n = len(rewards)
    return {"problem_id": problem_id, "state": state, "target": float(sum(rewards) / n), "kind": kind, "visits": n,
            "depth": int(depth), "solved": sum(r >= 1.0 for r in rewards) / n}


def dedupe_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (problem, state). Rows of the same kind merge into their visit-weighted mean
    target and ``solved`` (a program executed twice has one reward; a state reached by two searches
    pools their rollouts); across kinds the better-founded one wins (`KIND_RANK`). First-seen order is kept."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["problem_id"], row["state"])
        have = out.get(key)
        if have is None:
            out[key] = dict(row)
        elif KIND_RANK[row["kind"]] < KIND_RANK[have["kind"]]:
            out[key] = dict(row)
        elif row["kind"] == have["kind"]:
            total = have["visits"] + row["visits"]
            have["target"] = (have["target"] * have["visits"] + row["target"] * row["visits"]) / total
            if "solved" in have and "solved" in row:
                have["solved"] = (have["solved"] * have["visits"] + row["solved"] * row["visits"]) / total
            else:  # a row of an older release: no `solved` to merge
                have.pop("solved", None)
            have["visits"] = total
    return list(out.values())


# ------------------------------------------------------------------------------------ problems


def select_problems(cfg: CollectConfig) -> list[Problem]:
    """The configured training problems; evaluation-only problems are refused."""
    if cfg.problems_file:
        problems = list(load_jsonl(cfg.problems_file))
        if cfg.max_problems is not None:
            problems = problems[: cfg.max_problems]
        return check_trainable(problems)
    pool = make_gym(cfg.gym_seed, cfg.gym_n_per_tier, tiers=cfg.gym_tiers).split(cfg.gym_split)
    if cfg.max_problems is None:
        return check_trainable(pool)
    per_tier = {t: [p for p in pool if p.metadata.get("tier") == t] for t in cfg.gym_tiers}
    # an even share per tier, in gym order; what a small tier lacks goes to the others
    take = dict.fromkeys(cfg.gym_tiers, 0)
    while sum(take.values()) < cfg.max_problems and any(take[t] < len(per_tier[t]) for t in cfg.gym_tiers):
        for t in cfg.gym_tiers:
            if take[t] < len(per_tier[t]) and sum(take.values()) < cfg.max_problems:
                take[t] += 1
    return check_trainable([p for t in cfg.gym_tiers for p in per_tier[t][: take[t]]])


Mode = Literal["tests", "guided"]


def trace_path(output_dir: Path, problem_id: str, mode: Mode = "tests") -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in problem_id)
    return output_dir / "traces" / (f"{safe}.json" if mode == "tests" else f"{safe}.{mode}.json")


def modes(cfg: CollectConfig) -> tuple[Mode, ...]:
    chosen: list[Mode] = []
    if cfg.tests_mode:
        chosen.append("tests")
    if cfg.guided:
        chosen.append("guided")
    return tuple(chosen)


def search_config(cfg: CollectConfig, index: int, mode: Mode = "tests") -> SearchConfig:
    s = cfg.search
    return s.model_copy(update={"strategy": "vm_mcts", "c_uct": s.c_uct if mode == "tests" else cfg.guided_c_uct,
                                "seed": (s.seed or 0) + index + (cfg.guided_seed_offset if mode == "guided" else 0),
                                "record_trace": True, "top_candidates": 0})


# ------------------------------------------------------------------------------------ the job


async def collect(
    problems: Sequence[Problem], policy: Policy, sandbox: ProgramRunner, cfg: CollectConfig, *, resume: bool = False,
    limits: Limits | None = None, value: ValueModel | None = None,
    replicas: Sequence[tuple[Policy, ValueModel | None]] = (),
) -> dict[str, Any]:
    """Search every (problem, mode) without a trace in ``cfg.output_dir`` (all of them unless
    ``resume``; with ``cfg.snapshot`` its traces count as done), write traces as they finish (and
    the snapshot, `write_snapshot`), then rebuild ``rows.jsonl`` from every trace; return
    the summary. ``value`` (the value model) is needed for the guided mode. ``replicas``: more
    (policy, value) engines; the searches are sharded across all of them (`search.run_sharded`),
    each engine running ``cfg.concurrency`` at once."""
    out = Path(cfg.output_dir)
    (out / "traces").mkdir(parents=True, exist_ok=True)
    if resume and cfg.snapshot:
        restore_snapshot(cfg)
    jobs = [(i, p, m) for m in modes(cfg) for i, p in enumerate(problems)]
    todo = [(i, p, m) for i, p, m in jobs if not (resume and trace_path(out, p.id, m).exists())]
    if not resume:
        for _, p, m in jobs:
            trace_path(out, p.id, m).unlink(missing_ok=True)
    logger.info("collect-values: %d searches (%s), %d to run (%d done before)", len(jobs), "+".join(modes(cfg)), len(todo), len(jobs) - len(todo))
    tests = TestEvaluator(sandbox, which="tests", limits=limits)
    engines = [(policy, value), *replicas]
    if cfg.guided and any(v is None for _, v in engines):
        raise ValueError("collect-values with guided=true needs a value model")
    workers = [(p, asyncio.Semaphore(cfg.concurrency),
                {"tests": tests, "guided": ExecutedRewards(VMEvaluator(v), sandbox, limits=limits) if v is not None else tests})
               for p, v in engines]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="collect-values", unit="search")
    t0 = time.monotonic()
    finished = 0

    async def one(worker: tuple[Policy, asyncio.Semaphore, dict[str, Any]], _: int, job: tuple[int, Problem, Mode]) -> None:
        nonlocal finished
        engine, gate, evaluators = worker
        index, problem, mode = job
        async with gate:
            result = await run_search(problem, engine, None, search_config(cfg, index, mode), evaluator=evaluators[mode])
        assert result.trace is not None
        save_trace(result.trace, trace_path(out, problem.id, mode))
        bar.update(1)
        finished += 1
        if cfg.snapshot and finished % cfg.snapshot_every == 0:
            write_snapshot(cfg)

    try:
        await run_sharded(todo, workers, one)
    finally:
        bar.close()
        if cfg.snapshot and finished:
            write_snapshot(cfg)  # what finished, also when the run is stopped
    return write_rows(problems, cfg, wall_s=time.monotonic() - t0)


def write_snapshot(cfg: CollectConfig) -> Path:
    """``cfg.snapshot``: config.json and every trace in ``output_dir`` (written aside, then moved)."""
    import tarfile

    assert cfg.snapshot is not None
    out, path = Path(cfg.output_dir), Path(cfg.snapshot)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        if (out / "config.json").exists():
            tar.add(out / "config.json", arcname="config.json")
        for trace in sorted((out / "traces").glob("*.json")):
            tar.add(trace, arcname=f"traces/{trace.name}")
    tmp.replace(path)
    return path


def restore_snapshot(cfg: CollectConfig) -> int:
    """Unpack the snapshot's traces (and config.json) that ``output_dir`` lacks; returns how many.
    Only plain files under traces/ and config.json are taken (tarfile's ``data`` filter)."""
    import tarfile

    assert cfg.snapshot is not None
    out, path = Path(cfg.output_dir), Path(cfg.snapshot)
    if not path.exists():
        return 0
    with tarfile.open(path, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and (m.name == "config.json" or (
            m.name.startswith("traces/") and m.name.count("/") == 1 and m.name.endswith(".json")))]
        missing = [m for m in members if not (out / m.name).exists()]
        tar.extractall(out, members=missing, filter="data")
    logger.info("collect-values: %d files unpacked from %s", len(missing), path)
    return len(missing)


def write_rows(problems: Sequence[Problem], cfg: CollectConfig, *, wall_s: float | None = None) -> dict[str, Any]:
    """Rebuild ``rows.jsonl`` and ``summary.json`` from the traces of ``problems`` present on disk."""
    out = Path(cfg.output_dir)
    rows: list[dict[str, Any]] = []
    traced = 0
    searched: dict[str, int] = {}
    for p in problems:
        found = False
        for m in modes(cfg):
            path = trace_path(out, p.id, m)
            if path.exists():
                found = True
                searched[m] = searched.get(m, 0) + 1
                rows.extend(rows_from_trace(load_trace(path), include_children=cfg.include_children))
        traced += found
    raw = len(rows)
    rows = dedupe_rows(rows)
    tmp = out / "rows.jsonl.tmp"
    with tmp.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out / "rows.jsonl")
    by_kind: dict[str, dict[str, float]] = {}
    for kind in KIND_RANK:
        ts = [r["target"] for r in rows if r["kind"] == kind]
        if ts:
            by_kind[kind] = {"rows": len(ts), "mean_target": sum(ts) / len(ts), "share_zero": sum(t == 0 for t in ts) / len(ts),
                             "mean_solved": sum(r["solved"] for r in rows if r["kind"] == kind) / len(ts)}
    solved = {r["problem_id"] for r in rows if r["kind"] == "program" and r["target"] >= 1.0}
    failed = {r["problem_id"] for r in rows if r["kind"] == "program" and r["target"] < 1.0}
    depths: dict[str, dict[str, int]] = {}
    histogram = [0] * 10  # targets in [0, 0.1), ..., [0.9, 1.0]
    for r in rows:
        key = str(r.get("depth", 0)) if r.get("depth", 0) < 8 else "8+"
        by_depth = depths.setdefault(r["kind"], {})
        by_depth[key] = by_depth.get(key, 0) + 1
        histogram[min(int(r["target"] * 10), 9)] += 1
    summary = {
        "problems": len(problems),
        "problems_searched": traced,
        "searches_by_mode": searched,
        "problems_with_a_passing_program": len(solved),
        "problems_with_passing_and_failing_programs": len(solved & failed),
        "rows_by_kind_and_depth": {k: dict(sorted(v.items())) for k, v in depths.items()},
        "target_histogram": histogram,
        "rows_raw": raw,
        "rows": len(rows),
        "by_kind": by_kind,
        "wall_s": wall_s,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    with Path(path).open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


# how fast, and on which devices, not what is collected: a resumed run may change them (more GPUs, defaults of a later release)
RESOURCE_FIELDS: dict[str, Any] = {
    "policy": {"max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill", "hf_max_batch", "hf_device", "gpus",
               "data_parallel_size", "gpu_memory_utilization", "kv_cache_gib"},
    "value": {"batch_size", "batch_max", "batch_wait_ms", "gpu_memory_gib", "device", "threads"},
    "snapshot": True,
    "snapshot_every": True,
}


def _write_config(out: Path, cfg: CollectConfig, *, resume: bool) -> None:
    """``config.json`` of the run; with ``resume``, the one there must describe the same run (a
    config of an earlier release is read through its renamed keys; `RESOURCE_FIELDS` may differ)."""
    config_file = out / "config.json"
    if resume and config_file.exists():
        before = CollectConfig.model_validate(json.loads(config_file.read_text()))
        if before.model_dump(mode="json", exclude=RESOURCE_FIELDS) != cfg.model_dump(mode="json", exclude=RESOURCE_FIELDS):
            raise ValueError(f"{config_file}: --resume with a different configuration; use a new output_dir or the same settings")
    config_file.write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))


async def _run(cfg: CollectConfig, *, resume: bool) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if resume and cfg.snapshot:
        restore_snapshot(cfg)  # before the config check: a fresh checkout resumes the run the snapshot holds
    _write_config(out, cfg, resume=resume)
    problems = select_problems(cfg)
    write_jsonl(out / "problems.jsonl", problems)
    hide = [str(Path.cwd()), str(Path.home()), str(out.resolve())]  # the hidden tests live in out
    async with open_replicas(cfg.policy, cfg.value if cfg.guided else None, cfg.sandbox, sandbox_hide=hide) as stacks:
        stack = stacks[0]
        assert stack.sandbox is not None
        summary = await collect(problems, stack.policy, stack.sandbox, cfg, resume=resume, value=stack.value,
                                replicas=[(s.policy, s.value) for s in stacks[1:]])
        summary["policy_version"] = stack.policy.version
        summary["policy_base"] = stack.policy.base_model
        summary["value_version"] = stack.value.version if stack.value is not None else None
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_collect(cfg: CollectConfig, *, resume: bool = False) -> dict[str, Any]:
    """The ``restrl train collect-values`` job (blocking)."""
    return asyncio.run(_run(cfg, resume=resume))
