"""Policy training at real step counts (issue 21): base vs GRPO vs DAPO vs ReST-DPO vs ReST-GRPO
from the default model on the gym's train split at equal optimizer steps, evaluated greedily on
`restrl eval`'s gym test split (configs/eval.yaml) and all 164 HumanEval problems, with paired
intervals against the base model and against GRPO.

    python -m bench.training gym                                   # runs/training/gym/{train,validation,test}.jsonl
    python -m bench.training lr [--lrs 1e-4 3e-4 1e-3] [--steps 60] # GRPO at each rate, greedy pass@1 on validation
    python -m bench.training train [ARMS] [--steps 300] [--lr LR] [--resume]
    python -m bench.training eval [MODELS] [--split test|validation]
    python -m bench.training snapshot [ARMS]                       # commit what --resume needs on a fresh checkout
    python -m bench.training report                                # bench/results/training.json, plots, table

Every arm is the command ``restrl train policy --config configs/training_runs.yaml --set
algorithm=ARM ...`` in a subprocess: the arms share the template and differ only in their algorithm
(DAPO: clip-higher 0.28 and no KL term, its paper's setting). The learning rate is chosen on the
validation split with vanilla GRPO (the reference arm) and used for every arm; never on the test
split or HumanEval.

Hours of CPU: run a phase in the background (``nohup ... --resume``), alone on the cores. A stopped
run continues from its last saved trainer step; ``snapshot`` packs each run's resumable state (the
last trainer checkpoint: adapter, optimizer, scheduler, RNG; the sampled and curated sets; the step
metrics) into ``bench/results/training_runs/ARM.tar.gz``, which ``train --resume`` unpacks when
``runs/`` does not hold the run. Evaluations land in ``bench/results/training_eval/`` (per-problem
outcomes, so that the report's paired intervals rebuild without a model).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import tarfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "training"
GYM = RUNS / "gym"
TEMPLATE = "configs/training_runs.yaml"
EVAL_CONFIG = "configs/eval.yaml"
SNAPSHOTS = ROOT / "bench" / "results" / "training_runs"
EVALS = ROOT / "bench" / "results" / "training_eval"
RESULTS = ROOT / "bench" / "results" / "training.json"
PLOTS = ROOT / "bench" / "plots"
EVAL_MAX_TOKENS = 256  # restrl eval's search.max_tokens: the base model's greedy pass@1 matches its greedy phase

ARMS: dict[str, tuple[str, ...]] = {
    "grpo": ("algorithm=grpo",),
    "dapo": ("algorithm=dapo", "grpo.epsilon_high=0.28", "grpo.beta=0.0"),
    "rest_dpo": ("algorithm=rest_dpo",),
    "rest_grpo": ("algorithm=rest_grpo",),
}
REFERENCES = ("base", "grpo")  # every model is compared with these, paired per problem
SPLITS = {"test": ("gym_test", "humaneval"), "validation": ("gym_validation",)}

logger = logging.getLogger("bench.training")


# --------------------------------------------------------------------------------------- problems


def eval_config() -> Any:
    from training.cli import load_job_config
    from training.search_eval import EvalConfig

    return load_job_config(EvalConfig, str(ROOT / EVAL_CONFIG), None)


def write_gym() -> dict[str, Path]:
    """The splits of configs/eval.yaml's gym: training draws from its train split, the test split
    is `restrl eval`'s held-out set, validation chooses the learning rate."""
    from tasks.gym import make_gym

    cfg = eval_config()
    return make_gym(cfg.gym_seed, cfg.gym_n_per_tier, tiers=cfg.gym_tiers).write(GYM)


def problems_of(dataset: str) -> list[Any]:
    from tasks.humaneval import load_humaneval
    from training.search_eval import eval_problems

    return load_humaneval() if dataset == "humaneval" else eval_problems(eval_config(), dataset)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------- training


def run_dir(arm: str, lr: float | None = None) -> Path:
    """runs/training/ARM for the main runs, runs/training/lr/LR/ARM for the learning-rate runs."""
    return RUNS / arm if lr is None else RUNS / "lr" / f"{lr:g}" / arm


def model_dir(name: str) -> Path | None:
    """The adapter a model name stands for: base (None), ARM, or lr/LR/ARM."""
    return None if name == "base" else RUNS / name / "final"


def train_command(arm: str, *, steps: int, lr: float, out: Path, resume: bool) -> list[str]:
    if arm not in ARMS:
        raise SystemExit(f"unknown arm {arm!r}: one of {', '.join(ARMS)}")
    cmd = [sys.executable, "restrl.py", "train", "policy", "--config", TEMPLATE]
    for item in (*ARMS[arm], f"output_dir={out.relative_to(ROOT)}", f"grpo.max_steps={steps}", f"grpo.learning_rate={lr:g}"):
        cmd += ["--set", item]
    return [*cmd, "--resume"] if resume else cmd


def train(arm: str, *, steps: int, lr: float, resume: bool, lr_run: bool = False) -> dict[str, Any]:
    out = run_dir(arm, lr if lr_run else None)
    name = str(out.relative_to(RUNS))
    if resume and not (out / "config.json").exists():
        restore(name)
    if not (GYM / "train.jsonl").exists():
        write_gym()
    cmd = train_command(arm, steps=steps, lr=lr, out=out, resume=resume and (out / "config.json").exists())
    logger.info("running: %s", " ".join(cmd[1:]))
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    record = {"command": "python " + " ".join(cmd[1:]), "wall_s": round(time.perf_counter() - t0, 1), "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    log = out / "commands.jsonl"
    with log.open("a") as fh:  # one line per invocation: a run resumed across sessions has several
        fh.write(json.dumps(record) + "\n")
    snapshot(name)
    return record


def snapshot_path(name: str) -> Path:
    return SNAPSHOTS / f"{name.replace('/', '_')}.tar.gz"


def snapshot(name: str) -> Path:
    """Pack what ``--resume`` and the report need from runs/training/NAME (an arm, or lr/LR/ARM):
    the run's files, its exported adapter and its last trainer checkpoint (adapter, optimizer,
    scheduler, RNG, trainer state)."""
    from training.rest_grpo import last_checkpoint

    run = RUNS / name
    if not (run / "config.json").exists():
        raise SystemExit(f"{run}: no run to snapshot")
    checkpoint = last_checkpoint(run / "trainer")
    SNAPSHOTS.mkdir(parents=True, exist_ok=True)
    dest = snapshot_path(name)
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(run.iterdir()):
            if path.is_file():
                tar.add(path, arcname=path.name)
        if (run / "final").is_dir():
            tar.add(run / "final", arcname="final")
        if checkpoint is not None:
            tar.add(checkpoint, arcname=f"trainer/{checkpoint.name}")
    tmp.replace(dest)
    size = dest.stat().st_size / 2**20
    logger.info("%s: %.1f MiB (%s)", dest.relative_to(ROOT), size, checkpoint.name if checkpoint else "no trainer step yet")
    return dest


def restore(name: str) -> bool:
    """Unpack NAME's committed snapshot into runs/training/NAME (a fresh checkout resuming); False
    if none is committed."""
    src, out = snapshot_path(name), RUNS / name
    if not src.exists():
        return False
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src) as tar:
        tar.extractall(out, filter="data")
    logger.info("restored %s from %s", out.relative_to(ROOT), src.relative_to(ROOT))
    return True


def choose_lr(lrs: list[float], *, steps: int, resume: bool) -> dict[str, Any]:
    """Vanilla GRPO for ``steps`` at each rate; the rate whose adapter has the best greedy pass@1 on
    the validation split (ties: the higher mean pass fraction, then the smaller rate)."""
    for lr in lrs:
        train("grpo", steps=steps, lr=lr, resume=resume, lr_run=True)
    names = [f"lr/{lr:g}/grpo" for lr in lrs]
    evaluate(["base", *names], "validation")
    rows = {name: load_eval(name, "gym_validation") for name in ["base", *names]}
    best = max(zip(lrs, names, strict=True), key=lambda x: (rows[x[1]]["pass1"], rows[x[1]]["mean_pass_fraction"], -x[0]))
    out = {"steps": steps, "candidates": {f"{lr:g}": {k: rows[n][k] for k in ("pass1", "passed", "mean_pass_fraction")}
                                           for lr, n in zip(lrs, names, strict=True)},
           "base": {k: rows["base"][k] for k in ("pass1", "passed", "mean_pass_fraction")}, "chosen": best[0]}
    (EVALS / "lr_selection.json").write_text(json.dumps(out, indent=2))
    logger.info("learning rate chosen on validation: %g", best[0])
    return out


# -------------------------------------------------------------------------------------- evaluation


def eval_path(name: str, dataset: str) -> Path:
    return EVALS / f"{name.replace('/', '_')}.{dataset}.json"


def load_eval(name: str, dataset: str) -> dict[str, Any]:
    return json.loads(eval_path(name, dataset).read_text())


async def _evaluate(names: list[str], datasets: dict[str, list[Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every (model, dataset) request in flight at once on one engine: adapters are LoRA views of
    the base engine, so the engine batches all of them together."""
    from models import EngineConfig, Policy, load_policy
    from sandbox import SandboxConfig
    from search import open_stack
    from training.evaluate import greedy_completions, score_pass1
    from training.rewards import TestRewarder

    # every adapter resident at once: with fewer slots than adapters in flight the views take turns
    # (2026-12-06: three adapters with max_loras=2 were 20 minutes in and one had 15 of 207 problems)
    engine = EngineConfig(kv_cache_gib=1.0, max_lora_rank=16, max_loras=max(1, sum(model_dir(n) is not None for n in names)))
    async with open_stack(engine, None, SandboxConfig(workers=2)) as stack, AsyncExitStack() as views:
        assert stack.sandbox is not None
        base, mode = stack.policy, stack.policy.prompt_mode
        policies: dict[str, Policy] = {}
        for name in names:
            adapter = model_dir(name)
            if adapter is not None and not adapter.is_dir():
                raise SystemExit(f"{name}: no exported adapter at {adapter} (train it, or `restrl train policy --export-step`)")
            policies[name] = base if adapter is None else await load_policy(engine.model_copy(update={"adapter": str(adapter)}), reuse=base)
            if policies[name] is not base:
                views.push_async_callback(policies[name].close)
        rewarder = TestRewarder(stack.sandbox, mode=mode)
        jobs = [(n, d) for n in policies for d in datasets]
        t0 = time.perf_counter()
        texts = await asyncio.gather(*(greedy_completions(policies[n], datasets[d], mode=mode, max_tokens=EVAL_MAX_TOKENS,
                                                          desc=f"{n} {d}") for n, d in jobs))
        gen_s = time.perf_counter() - t0
        out = {}
        for (name, dataset), completions in zip(jobs, texts, strict=True):
            score = await asyncio.to_thread(score_pass1, datasets[dataset], completions, rewarder, mode)
            out[(name, dataset)] = {
                "model": name, "dataset": dataset, "problems": score.problems, "passed": score.passed,
                "pass1": round(score.pass1, 4), "mean_pass_fraction": round(score.mean_pass_fraction, 4),
                "infra_errors": score.infra_errors, "max_tokens": EVAL_MAX_TOKENS, "generation_s_all_models": round(gen_s, 1),
                "ids": [p.id for p in datasets[dataset]], "outcomes": list(score.outcomes),
                "rewards": [round(r, 4) for r in score.rewards],
                "adapter_version": getattr(policies[name], "version", None),
            }
        return out


def evaluate(names: list[str], split: str) -> None:
    """Greedy pass@1 of the named models on the split's datasets; one JSON per (model, dataset)."""
    datasets = {d: problems_of(d) for d in SPLITS[split]}
    results = asyncio.run(_evaluate(names, datasets))
    EVALS.mkdir(parents=True, exist_ok=True)
    for (name, dataset), row in results.items():
        eval_path(name, dataset).write_text(json.dumps(row))
        logger.info("%s on %s: %d/%d", name, dataset, row["passed"], row["problems"])


# ----------------------------------------------------------------------------------------- report


def run_stats(run: Path) -> dict[str, Any]:
    """Steps, step time and its parts, rewards and the reward-variance figures of a run."""
    from training.curation import population_std

    def rows(name: str) -> list[dict[str, Any]]:
        path = run / name
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []

    manifest = json.loads((run / "final" / "restrl.json").read_text()) if (run / "final" / "restrl.json").exists() else {}
    logged = rows("metrics.jsonl")
    steps = int((manifest.get("metrics") or {}).get("steps") or max((int(r.get("step") or 0) for r in logged), default=0))
    stds = [population_std(g["rewards"]) for g in rows("groups.jsonl") if (g.get("step") or 0) < steps]
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    return {
        "steps": steps,
        "exported": bool(manifest),
        "job": manifest.get("job"),
        "mean_step_s": (summary.get("step_time") or {}).get("step_s"),
        "step_time_parts_s": summary.get("step_time"),
        "timings_s": summary.get("timings"),
        "rollouts": summary.get("rollouts"),
        "curated_prompts": summary.get("curated_prompts"),
        "curation": summary.get("curation"),
        "mean_train_reward": (manifest.get("metrics") or {}).get("mean_reward"),
        "mean_group_reward_std": round(sum(stds) / len(stds), 4) if stds else None,
        "frac_zero_std_groups": round(sum(s == 0 for s in stds) / len(stds), 4) if stds else None,
        "commands": rows("commands.jsonl"),
    }


def paired(name: str, reference: str, dataset: str) -> dict[str, Any] | None:
    """``name`` vs ``reference`` on ``dataset``, paired per problem (None until both are evaluated)."""
    from training.paired import Bootstrap

    if not (eval_path(name, dataset).exists() and eval_path(reference, dataset).exists()):
        return None
    a, b = load_eval(name, dataset), load_eval(reference, dataset)
    if a["ids"] != b["ids"]:
        raise SystemExit(f"{name} and {reference} were evaluated on different {dataset} problems: re-run `eval`")
    out = Bootstrap(len(a["ids"])).compare(a["outcomes"], b["outcomes"])
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def report() -> dict[str, Any]:
    from training.report import report_training

    present = [arm for arm in ARMS if (run_dir(arm) / "config.json").exists()]
    plots = report_training([run_dir(a) for a in present], out_dir=PLOTS, labels=present) if present else []
    datasets = SPLITS["test"]
    out: dict[str, Any] = {"template": TEMPLATE, "eval_config": EVAL_CONFIG, "eval_max_tokens": EVAL_MAX_TOKENS, "runs": {}}
    lr_file = EVALS / "lr_selection.json"
    if lr_file.exists():
        out["lr_selection"] = json.loads(lr_file.read_text())
    for name in ("base", *ARMS):
        row: dict[str, Any] = run_stats(run_dir(name)) if name in present else {"steps": 0} if name == "base" else {}
        evals = {d: load_eval(name, d) for d in datasets if eval_path(name, d).exists()}
        if not row and not evals:
            continue
        row["eval"] = {d: {k: e[k] for k in ("problems", "passed", "pass1", "mean_pass_fraction", "infra_errors")}
                       for d, e in evals.items()}
        for ref in REFERENCES[: REFERENCES.index(name)] if name in REFERENCES else REFERENCES:  # base: none; grpo: base
            row[f"vs_{ref}"] = {d: c for d in datasets if (c := paired(name, ref, d)) is not None}
        out["runs"][name] = row
    out["plots"] = [str(p.relative_to(ROOT)) for p in plots]
    RESULTS.write_text(json.dumps(out, indent=2))
    print(table(out))
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return out


def table(result: dict[str, Any]) -> str:
    def cell(row: dict[str, Any], d: str) -> str:
        e = row.get("eval", {}).get(d)
        return "-" if e is None else f"{e['passed']}/{e['problems']}"

    def diff(row: dict[str, Any], ref: str, d: str) -> str:
        c = row.get(f"vs_{ref}", {}).get(d)
        return "-" if c is None else f"{c['difference']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] p={c['mcnemar_p']:.2f}"

    lines = ["| model | steps | s/step | gym test | HumanEval | gym test vs base | gym test vs grpo | HumanEval vs base | group std | zero-std |",
             "|---|---:|---:|---:|---:|---|---|---|---:|---:|"]
    for name, row in result["runs"].items():
        step_s = row.get("mean_step_s")
        lines.append(" | ".join([
            f"| {name}", str(row.get("steps", "-")), "-" if step_s is None else f"{step_s:.1f}",
            cell(row, "gym_test"), cell(row, "humaneval"), diff(row, "base", "gym_test"), diff(row, "grpo", "gym_test"),
            diff(row, "base", "humaneval"), str(row.get("mean_group_reward_std") or "-"), str(row.get("frac_zero_std_groups") or "-"),
        ]) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("phase", choices=["gym", "lr", "train", "eval", "snapshot", "report"])
    parser.add_argument("names", nargs="*", help="train: arms (default: all); snapshot: runs (ARM or lr/LR/ARM); eval: models (base, ARM, lr/LR/ARM)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (train: 300; lr: 60)")
    parser.add_argument("--lr", type=float, default=None, help="train: the rate (default: the one `lr` chose, else 1e-4)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3],
                        help="lr: the candidates (20 LoRA steps at 1e-4 moved no greedy pass: nothing below it)")
    parser.add_argument("--split", choices=list(SPLITS), default="test", help="eval: test (gym test + HumanEval) or validation")
    parser.add_argument("--resume", action="store_true", help="continue stopped runs (from the committed snapshot on a fresh checkout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    arms = args.names or list(ARMS)
    if args.phase == "gym":
        for split, path in write_gym().items():
            print(f"{split}: {path.relative_to(ROOT)}")
    elif args.phase == "lr":
        choose_lr(args.lrs, steps=args.steps or 60, resume=args.resume)
    elif args.phase == "train":
        lr_file = EVALS / "lr_selection.json"
        lr = args.lr if args.lr is not None else json.loads(lr_file.read_text())["chosen"] if lr_file.exists() else 1e-4
        for arm in arms:
            train(arm, steps=args.steps or 300, lr=lr, resume=args.resume)
    elif args.phase == "eval":
        evaluate(args.names or ["base", *[a for a in ARMS if (model_dir(a) or Path()).is_dir()]], args.split)
    elif args.phase == "snapshot":
        for arm in arms:
            snapshot(arm)
    else:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
