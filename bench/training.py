"""The policy-training experiment of issue 6 (item 7): ReST-GRPO vs vanilla GRPO at equal steps.

    python -m bench.training [all|gym|train|eval|report] [MODELS...] [--n-per-tier 60] [--humaneval-limit 20]

Phases (``all`` runs them in order; each can run alone, e.g. the base model's evaluation beside
the training runs):
1. ``gym``: writes the gym (seed 0) to runs/training/gym/{train,validation,test}.jsonl;
2. ``train``: one ReST-GRPO iteration and one vanilla-GRPO run from SmolLM2-135M-Instruct with
   configs/cpu_experiment_{rest_grpo,grpo}.yaml, each as the exact CLI command
   ``restrl train policy --config ...`` in a subprocess (wall time recorded);
3. ``eval``: greedy pass@1 of base / GRPO / ReST-GRPO on the gym test split and the first
   ``--humaneval-limit`` HumanEval problems with one vLLM engine (adapters are LoRA views of it);
4. ``report``: the plots (`restrl report training`) and bench/results/training.json; prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from models import EngineConfig, Policy, load_policy
from sandbox import SandboxConfig
from search import open_stack
from tasks.gym import make_gym
from tasks.humaneval import load_humaneval
from tasks.jsonl import load_jsonl
from training.curation import population_std
from training.evaluate import greedy_completions, score_pass1
from training.report import report_training, sample_stds
from training.rewards import TestRewarder

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "training"
RESULTS = ROOT / "bench" / "results" / "training.json"
PLOTS = ROOT / "bench" / "plots"
ALGOS = ("grpo", "rest_grpo")

logger = logging.getLogger("bench.training")


def write_gym(n_per_tier: int) -> dict[str, Path]:
    return make_gym(0, n_per_tier).write(RUNS / "gym")


def train(algo: str, *, resume: bool) -> dict[str, Any]:
    cmd = [sys.executable, "restrl.py", "train", "policy", "--config", f"configs/cpu_experiment_{algo}.yaml"]
    if resume:
        cmd.append("--resume")
    t0 = time.perf_counter()
    logger.info("running: %s", " ".join(cmd[1:]))
    subprocess.run(cmd, cwd=ROOT, check=True)
    return {"command": "python " + " ".join(cmd[1:]), "wall_s": round(time.perf_counter() - t0, 1)}


async def evaluate_all(problems: dict[str, list[Any]], adapters: dict[str, str | None], *, max_tokens: int) -> dict[str, dict[str, Any]]:
    """Every (model, split) request in flight at once on one engine: adapters are LoRA views of the
    base engine, so the engine batches all of them together."""
    engine = EngineConfig(kv_cache_gib=1.0, max_lora_rank=16)
    async with open_stack(engine, None, SandboxConfig(workers=2)) as stack, AsyncExitStack() as views:
        assert stack.sandbox is not None
        base, mode = stack.policy, stack.policy.prompt_mode
        policies: dict[str, Policy] = {}
        for name, adapter in adapters.items():
            policies[name] = base if adapter is None else await load_policy(engine.model_copy(update={"adapter": adapter}), reuse=base)
            if policies[name] is not base:
                views.push_async_callback(policies[name].close)
        rewarder = TestRewarder(stack.sandbox, mode=mode)
        t0 = time.perf_counter()
        jobs = [(name, split) for name in policies for split in problems]
        texts = await asyncio.gather(
            *(greedy_completions(policies[n], problems[s], mode=mode, max_tokens=max_tokens, desc=f"{n} {s}") for n, s in jobs)
        )
        gen_s = time.perf_counter() - t0
        results: dict[str, dict[str, Any]] = {name: {"generation_s_all_models": round(gen_s, 1)} for name in policies}
        for (name, split), completions in zip(jobs, texts, strict=True):
            score = await asyncio.to_thread(score_pass1, problems[split], completions, rewarder, mode)
            row = results[name]
            row[f"{split}_pass1"] = round(score.pass1, 4)
            row[f"{split}_mean_pass_fraction"] = round(score.mean_pass_fraction, 4)
            row[f"{split}_problems"] = score.problems
            row[f"{split}_infra_errors"] = score.infra_errors
    return results


def run_stats(run: Path) -> dict[str, Any]:
    """Statistics of a run up to the step its final/ checkpoint holds (a run may have been stopped
    and exported at an earlier step for an equal-step comparison)."""
    manifest_path = run / "final" / "restrl.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"job": None, "metrics": {}}
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()] if (run / "metrics.jsonl").exists() else []
    steps = int(manifest["metrics"].get("steps", max((int(r["step"]) for r in logged if "reward" in r), default=0)))
    groups = [json.loads(x) for x in (run / "groups.jsonl").read_text().splitlines() if x.strip()] if (run / "groups.jsonl").exists() else []
    stds = [population_std(g["rewards"]) for g in groups if (g.get("step") or 0) < steps]
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    curated = [json.loads(x) for x in (run / "curated.jsonl").read_text().splitlines() if x.strip()] if (run / "curated.jsonl").exists() else []
    out: dict[str, Any] = {
        "steps": steps,
        "job": manifest["job"],
        "mean_group_reward_std": round(sum(stds) / len(stds), 4) if stds else None,
        "frac_zero_std_groups": round(sum(s == 0 for s in stds) / len(stds), 4) if stds else None,
        "training_groups": len(stds),
        "all_logged_groups": {
            "groups": len(groups),
            "mean_reward_std": round(sum(population_std(g["rewards"]) for g in groups) / len(groups), 4) if groups else None,
            "frac_zero_std": round(sum(population_std(g["rewards"]) == 0 for g in groups) / len(groups), 4) if groups else None,
        },
        "checkpoint_exported": manifest_path.exists(),
        "mean_train_reward": manifest["metrics"].get("mean_reward"),
        "curated_prompts": len(curated),
        "curated_kinds": {k: sum(r["kind"] == k for r in curated) for k in ("base", "partial")},
        "timings_s": summary.get("timings"),
    }
    if (run / "samples.jsonl").exists():
        naive, kept = sample_stds(run)
        out["sampling_stage"] = {
            "problems": len(naive),
            "kept_after_filter": len(kept),
            "mean_std_naive": round(sum(naive) / len(naive), 4) if naive else None,
            "mean_std_kept": round(sum(kept) / len(kept), 4) if kept else None,
        }
    metrics_path = run / "metrics.jsonl"
    if metrics_path.exists():
        rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
        out["step_times_s"] = [round(r["step_time"], 1) for r in rows if "step_time" in r]
    return out


def eval_models(names: list[str], *, n_per_tier: int, humaneval_limit: int, max_tokens: int) -> None:
    """Greedy pass@1 of the named models (base and/or trained runs); one JSON per model in runs/training/."""
    test_path = RUNS / "gym" / "test.jsonl"
    if not test_path.exists():
        write_gym(n_per_tier)
    problems = {"gym_test": load_jsonl(test_path), "humaneval": load_humaneval(limit=humaneval_limit)}
    adapters = {name: None if name == "base" else str(RUNS / name / "final") for name in names}
    evals = asyncio.run(evaluate_all(problems, adapters, max_tokens=max_tokens))
    for name, row in evals.items():
        row["max_tokens"] = max_tokens
        (RUNS / f"eval_{name}.json").write_text(json.dumps(row, indent=2))


def report(*, n_per_tier: int, humaneval_limit: int) -> dict[str, Any]:
    """Merge the evaluations and run statistics into bench/results/training.json; draw the plots."""
    runs_present = [a for a in ALGOS if (RUNS / a / "config.json").exists()]
    plots = report_training([RUNS / a for a in runs_present], out_dir=PLOTS, labels=runs_present)
    out: dict[str, Any] = {"gym": {"seed": 0, "n_per_tier": n_per_tier}, "humaneval_limit": humaneval_limit, "runs": {}}
    for name in ("base", *ALGOS):
        path = RUNS / f"eval_{name}.json"
        ev = json.loads(path.read_text()) if path.exists() else {}
        row: dict[str, Any] = {"gym_test_pass1": ev.get("gym_test_pass1"), "humaneval_pass1": ev.get("humaneval_pass1"), "eval": ev}
        if name in runs_present:
            row.update(run_stats(RUNS / name))
            cmd = RUNS / f"command_{name}.json"
            if cmd.exists():
                row.update(json.loads(cmd.read_text()))
        elif name == "base":
            row.update({"steps": 0, "mean_group_reward_std": None})
        out["runs"][name] = row
    out["plots"] = [str(p.relative_to(ROOT)) for p in plots]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"{'run':<10} {'steps':>5} {'gym_test_pass1':>15} {'humaneval_pass1':>16} {'mean_group_std':>15}")
    for name, row in out["runs"].items():
        def fmt(v: Any) -> str:
            return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

        print(f"{name:<10} {fmt(row.get('steps')):>5} {fmt(row['gym_test_pass1']):>15} {fmt(row['humaneval_pass1']):>16} {fmt(row.get('mean_group_reward_std')):>15}")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("phase", nargs="?", default="all", choices=["all", "gym", "train", "eval", "report"])
    parser.add_argument("models", nargs="*", help="eval: base grpo rest_grpo (default: all three)")
    parser.add_argument("--n-per-tier", type=int, default=60)
    parser.add_argument("--humaneval-limit", type=int, default=20)
    parser.add_argument("--eval-max-tokens", type=int, default=192)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.phase in ("all", "gym"):
        write_gym(args.n_per_tier)
    if args.phase in ("all", "train"):
        for algo in (args.models or ALGOS):
            (RUNS / f"command_{algo}.json").write_text(json.dumps(train(algo, resume=args.resume)))
    if args.phase in ("all", "eval"):
        eval_models(args.models or ["base", *ALGOS], n_per_tier=args.n_per_tier, humaneval_limit=args.humaneval_limit, max_tokens=args.eval_max_tokens)
    if args.phase in ("all", "report"):
        report(n_per_tier=args.n_per_tier, humaneval_limit=args.humaneval_limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
