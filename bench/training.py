"""The policy-training experiment of issue 6 (item 7): ReST-GRPO vs vanilla GRPO at equal steps.

    python -m bench.training [--n-per-tier 40] [--humaneval-limit 164] [--skip-train]

1. writes the gym (seed 0) to runs/training/gym/{train,validation,test}.jsonl;
2. trains one ReST-GRPO iteration and one vanilla-GRPO run from SmolLM2-135M-Instruct with
   configs/cpu_experiment_{rest_grpo,grpo}.yaml, each as the exact CLI command
   ``restrl train policy --config ...`` in a subprocess (wall time recorded);
3. evaluates base / GRPO / ReST-GRPO greedily (pass@1) on the gym test split and HumanEval with one
   vLLM engine (the adapters are LoRA views of it);
4. draws the plots (`restrl report training`) and writes bench/results/training.json; prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "training"
RESULTS = ROOT / "bench" / "results" / "training.json"
PLOTS = ROOT / "bench" / "plots"
ALGOS = ("grpo", "rest_grpo")

logger = logging.getLogger("bench.training")


def write_gym(n_per_tier: int) -> dict[str, Path]:
    from tasks.gym import make_gym

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
    from models.config import EngineConfig
    from models.loading import load_policy
    from sandbox.pool import Sandbox
    from training.evaluate import greedy_completions, score_pass1
    from training.rewards import TestRewarder

    results: dict[str, dict[str, Any]] = {}
    base = await load_policy(EngineConfig(kv_cache_gib=1.0, max_lora_rank=16))
    sandbox = Sandbox(workers=2)
    try:
        rewarder = TestRewarder(sandbox, mode=base.prompt_mode)  # type: ignore[attr-defined]
        for name, adapter in adapters.items():
            policy = base if adapter is None else await load_policy(EngineConfig(kv_cache_gib=1.0, max_lora_rank=16, adapter=adapter), reuse=base)
            row: dict[str, Any] = {}
            for split, probs in problems.items():
                t0 = time.perf_counter()
                texts = await greedy_completions(policy, probs, mode=base.prompt_mode, max_tokens=max_tokens, desc=f"{name} {split}")  # type: ignore[attr-defined]
                score = await asyncio.to_thread(score_pass1, probs, texts, rewarder, base.prompt_mode)  # type: ignore[attr-defined]
                row[f"{split}_pass1"] = round(score.pass1, 4)
                row[f"{split}_mean_pass_fraction"] = round(score.mean_pass_fraction, 4)
                row[f"{split}_problems"] = score.problems
                row[f"{split}_infra_errors"] = score.infra_errors
                row[f"{split}_eval_s"] = round(time.perf_counter() - t0, 1)
            results[name] = row
            if policy is not base:
                await policy.close()
    finally:
        await base.close()
        sandbox.close()
    return results


def run_stats(run: Path) -> dict[str, Any]:
    from training.report import group_stds

    summary = json.loads((run / "summary.json").read_text())
    stds = group_stds(run)
    return {
        "steps": summary["metrics"].get("steps"),
        "mean_group_reward_std": round(sum(stds) / len(stds), 4) if stds else None,
        "frac_zero_std_groups": round(sum(s == 0 for s in stds) / len(stds), 4) if stds else None,
        "mean_train_reward": summary["metrics"].get("mean_reward"),
        "curated_prompts": summary.get("curated_prompts"),
        "curated_kinds": summary.get("curated_kinds"),
        "curation": summary.get("curation"),
        "timings_s": summary.get("timings"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-tier", type=int, default=40)
    parser.add_argument("--humaneval-limit", type=int, default=164)
    parser.add_argument("--eval-max-tokens", type=int, default=256)
    parser.add_argument("--skip-train", action="store_true", help="evaluate existing runs only")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tasks.humaneval import load_humaneval
    from tasks.jsonl import load_jsonl
    from training.report import report_training

    t_all = time.perf_counter()
    paths = write_gym(args.n_per_tier)
    runs: dict[str, dict[str, Any]] = {}
    if not args.skip_train:
        for algo in ALGOS:
            runs[algo] = train(algo, resume=args.resume)
    problems = {"gym_test": load_jsonl(paths["test"]), "humaneval": load_humaneval(limit=args.humaneval_limit)}
    adapters = {"base": None, **{algo: str(RUNS / algo / "final") for algo in ALGOS}}
    evals = asyncio.run(evaluate_all(problems, adapters, max_tokens=args.eval_max_tokens))
    plots = report_training([RUNS / a for a in ALGOS], out_dir=PLOTS, labels=list(ALGOS))
    out: dict[str, Any] = {"runs": {}, "gym": {"seed": 0, "n_per_tier": args.n_per_tier, "test_problems": len(problems["gym_test"])}}
    out["humaneval_problems"] = len(problems["humaneval"])
    for name in adapters:
        row = {"gym_test_pass1": evals[name]["gym_test_pass1"], "humaneval_pass1": evals[name]["humaneval_pass1"], "eval": evals[name]}
        if name in ALGOS:
            row.update(run_stats(RUNS / name))
            row.update(runs.get(name, {}))
        else:
            row.update({"steps": 0, "mean_group_reward_std": None})
        out["runs"][name] = row
    out["plots"] = [str(p.relative_to(ROOT)) for p in plots]
    out["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"{'run':<10} {'steps':>5} {'gym_test_pass1':>15} {'humaneval_pass1':>16} {'mean_group_std':>15}")
    for name, row in out["runs"].items():
        std = row.get("mean_group_reward_std")
        print(f"{name:<10} {row['steps'] or 0:>5} {row['gym_test_pass1']:>15.3f} {row['humaneval_pass1']:>16.3f} {std if std is not None else '-':>15}")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
