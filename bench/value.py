"""Value-model scoring benchmark (issue 4): what `HFValueModel` costs per state, with and without
prefix sharing, per thread count and dtype, alone and with the cores contended.

The input is what VM-MCTS sends: per HumanEval problem, ``--expansions`` expansions of ``k``
continuations each, every one scored as a first-line child state and as its full rollout, all in
one call (as `search.ValueBatcher` delivers them). Modes: ``full`` scores every input in full in
right-padded batches (``prefix_cache_mb=0, pack_tokens=0``: the reference code's way);
``shared_padded`` caches the problem head, reads a child off its own rollout's pass and computes
an expansion's shared state once, still in padded batches (``pack_tokens=0``: the default on a
GPU); ``shared`` is the default on a CPU: the same sharing with the states packed as a prefix
tree (no padding). "positions" counts the decoder positions computed, padding included. The head
cache is cleared before every timed call, so the shared modes pay for each head once per call.
``--contend`` runs one busy process per core during the timings (a stand-in for the policy engine
that shares the cores in `restrl serve`).

``--agreement DIR`` instead asks whether bfloat16 scores can stand in for float32 ones: it scores
the held-out rows of a ``collect-values`` output (the split `restrl train value` holds out, from
``configs/value.yaml``) with the shipped adapter in both dtypes on the serving path, and reports
each dtype's MSE / Pearson r against the targets, the largest and mean score differences, and the
share of same-problem state pairs both dtypes put in the same order (what a search acts on).

    python -m bench.value [--problems 3] [--expansions 3] [--k 5] [--threads 1,2] [--dtypes float32,bfloat16] [--contend]
    python -m bench.value --agreement runs/value_data2 [--agreement-rows 400]

Prints a table and writes ``bench/results/value_scoring.json`` (key ``quiet``, ``contended`` or
``agreement``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from models.config import ValueConfig
from models.value import HFValueModel
from tasks.humaneval import load_humaneval
from training.cli import load_job_config
from training.value_train import ValueTrainConfig, load_problems, regression_metrics, split_by_problem

RESULTS = Path(__file__).parent / "results" / "value_scoring.json"


def expansion_states(problem: Any, expansions: int, k: int) -> list[str]:
    """Child and rollout states of ``expansions`` expansions below the problem's starter code."""
    states = []
    for e in range(expansions):
        parent = problem.starter_code.rstrip("\n") + "\n" + "".join(f"    v{e}_{i} = len(str({i})) + {e}\n" for i in range(1 + e))
        for c in range(k):
            line = f"    result_{c} = v{e}_0 * {c + 1}"
            rollout = line + "\n" + "".join(f"    result_{c} += {j} * v{e}_0\n" for j in range(3 + c)) + f"    return result_{c}\n"
            states += [parent + line, parent + rollout]
    return states


def _spin() -> None:  # pragma: no cover - a busy child process
    while True:
        pass


def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    problems = load_humaneval()[: args.problems]
    inputs = [(p, expansion_states(p, args.expansions, args.k)) for p in problems]
    states = sum(len(s) for _, s in inputs)
    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(len(os.sched_getaffinity(0)) if args.contend else 0)]
    rows: list[dict[str, Any]] = []
    for sp in spinners:
        sp.start()
    try:
        for dtype in args.dtypes:
            shared = HFValueModel.load(ValueConfig(dtype=dtype, batch_size=16, max_length=1024))
            modes = (("full", shared.sharing_weights(prefix_cache_mb=0, pack_tokens=0)),
                     ("shared_padded", shared.sharing_weights(pack_tokens=0)), ("shared", shared))
            for threads in args.threads:
                torch.set_num_threads(threads)
                reference: list[list[float]] = []
                for mode, model in modes:
                    model.score_sync(*inputs[0])  # warm-up
                    model.tokens_computed = model.tokens_padding = 0
                    times: list[float] = []
                    scores: list[list[float]] = []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        scores = []
                        for problem, batch in inputs:
                            model.clear_prefix_cache()
                            scores.append(model.score_sync(problem, batch))
                        times.append(time.perf_counter() - t0)
                    if mode == "full":
                        reference = scores
                    diff = max(abs(a - b) for s, r in zip(scores, reference, strict=True) for a, b in zip(s, r, strict=True))
                    wall = statistics.median(times)
                    positions = (model.tokens_computed + model.tokens_padding) // args.repeats
                    rows.append({"dtype": dtype, "threads": threads, "mode": mode, "wall_s": wall,
                                 "states_per_s": states / wall, "max_abs_diff_vs_full": diff, "positions": positions})
                    print(f"{dtype:9s} threads={threads} {mode:13s} {wall:7.2f} s  {states / wall:7.1f} states/s  "
                          f"{positions:6d} positions  max|diff| {diff:.1e}", flush=True)
    finally:
        for sp in spinners:
            if sp.is_alive():
                sp.terminate()
    for r in rows:
        base = next(x for x in rows if x["dtype"] == r["dtype"] and x["threads"] == r["threads"] and x["mode"] == "full")
        r["speedup_vs_full"] = base["wall_s"] / r["wall_s"]
    return {
        "command": "python -m bench.value " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_at_start": os.getloadavg(),
        "machine": f"{platform.machine()} {len(os.sched_getaffinity(0))} CPUs",
        "value_version": shared.version,
        "problems": [p.id for p in problems],
        "states_per_problem": len(inputs[0][1]),
        "contended": args.contend,
        "rows": rows,
    }


def agreement(args: argparse.Namespace) -> dict[str, Any]:
    """float32 vs bfloat16 scores of held-out value rows (see the module docstring)."""
    import random

    train_cfg = load_job_config(ValueTrainConfig, "configs/value.yaml", [])
    data = Path(args.agreement)
    rows = [json.loads(line) for line in (data / "rows.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("kind") in train_cfg.kinds]
    problems = load_problems(data / "problems.jsonl")
    _, held = split_by_problem(rows, holdout_fraction=train_cfg.holdout_fraction, seed=train_cfg.split_seed)
    if args.agreement_rows and len(held) > args.agreement_rows:
        held = random.Random(0).sample(held, args.agreement_rows)
    held.sort(key=lambda r: r["problem_id"])
    pairs = [(problems[r["problem_id"]], r["state"]) for r in held]
    targets = [float(r["target"]) for r in held]
    scores: dict[str, list[float]] = {}
    walls: dict[str, float] = {}
    version = ""
    for dtype in ("float32", "bfloat16"):
        model = HFValueModel.load(ValueConfig(dtype=dtype))
        version = model.version
        t0 = time.perf_counter()
        scores[dtype] = [v for i in range(0, len(pairs), 32) for v in model.score_pairs_sync(pairs[i : i + 32])]
        walls[dtype] = time.perf_counter() - t0
        print(f"{dtype:9s} {len(pairs)} states in {walls[dtype]:.1f} s", flush=True)
    f32, b16 = scores["float32"], scores["bfloat16"]
    diffs = [abs(a - b) for a, b in zip(f32, b16, strict=True)]
    same = total = 0
    for i in range(len(held)):
        for j in range(i + 1, len(held)):
            if held[i]["problem_id"] != held[j]["problem_id"]:
                break
            if abs(f32[i] - f32[j]) < 1e-6:
                continue
            total += 1
            same += (f32[i] > f32[j]) == (b16[i] > b16[j])
    return {
        "command": "python -m bench.value " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()} {len(os.sched_getaffinity(0))} CPUs",
        "value_version": version,
        "rows": len(held),
        "problems": len({r["problem_id"] for r in held}),
        "metrics": {d: regression_metrics(scores[d], targets) for d in scores},
        "wall_s": walls,
        "max_abs_diff": max(diffs),
        "mean_abs_diff": statistics.fmean(diffs),
        "same_problem_pairs": total,
        "same_order_share": same / total if total else None,
    }


def agreement_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['rows']} held-out rows of {result['problems']} problems, value {result['value_version']}",
        "",
        "| dtype | wall s | MSE vs target | Pearson r |",
        "|---|---:|---:|---:|",
    ]
    for d, m in result["metrics"].items():
        lines.append(f"| {d} | {result['wall_s'][d]:.1f} | {m['mse']:.4f} | {m['pearson_r']:.3f} |")
    lines += [
        "",
        f"bf16 vs fp32: max |diff| {result['max_abs_diff']:.3f}, mean |diff| {result['mean_abs_diff']:.4f}, "
        f"same order for {100 * (result['same_order_share'] or 0):.1f} % of {result['same_problem_pairs']} same-problem pairs",
    ]
    return "\n".join(lines)


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{len(result['problems'])} problems x {result['states_per_problem']} states, contended={result['contended']}",
        "",
        "| dtype | threads | mode | wall s | states/s | positions computed | speedup vs full | max abs diff vs full |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['dtype']} | {r['threads']} | {r['mode']} | {r['wall_s']:.2f} | {r['states_per_s']:.1f} | "
                     f"{r.get('positions', '-')} | {r['speedup_vs_full']:.2f} | {r['max_abs_diff_vs_full']:.1e} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=3)
    ap.add_argument("--expansions", type=int, default=3)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    ap.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32", "bfloat16"])
    ap.add_argument("--contend", action="store_true", help="one busy process per core during the timings")
    ap.add_argument("--agreement", metavar="DIR", help="float32 vs bfloat16 on the held-out rows of this collect-values output")
    ap.add_argument("--agreement-rows", type=int, default=400, help="a seeded sample of this many held-out rows (0 = all)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    result = agreement(args) if args.agreement else main(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    key = "agreement" if args.agreement else "contended" if args.contend else "quiet"
    previous[key] = result
    args.out.write_text(json.dumps(previous, indent=2))
    print(agreement_table(result) if args.agreement else table(result))
