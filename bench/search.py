"""Search benchmark (issue 4 item 8) on the real engine: vLLM CPU + SmolLM2-135M-Instruct + the
default value model (untrained head unless a trained adapter is shipped: the JSON says which).

(a) throughput: policy tokens/s generated inside C concurrent VM-MCTS searches (one engine, one
    `ValueBatcher`) vs raw batched sampling of the same request shape (n=k, T, max_tokens) at the
    same concurrency on the same engine; and the reference pattern (one search at a time, one
    expansion at a time, value batch size 1). Also sweeps ``parallel_expansions``; with
    ``--constant-value-baseline`` the same searches also run with a free constant value model
    (what the search machinery alone feeds the engine, no value compute on the cores).
(b) quality: HumanEval pass@1 of the returned program per strategy and sample budget, scored
    in the sandbox on the problem's tests (`--limit` problems: the first N of HumanEval).

    python -m bench.search [--limit 20] [--budgets 1,5,10,20] [--skip-quality] [--skip-throughput]
    python -m bench.search --engine hf --policy DIR --value DIR --skip-quality   # e.g. on a GPU without vLLM

Prints both tables and writes bench/results/search.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models import EngineConfig, ValueConfig
from models.base import PausablePolicy
from models.prompting import STOP, render_prompt, root_state
from models.value import HFValueModel
from sandbox import ProgramRunner, SandboxConfig
from search import Budget, SearchConfig, ValueBatcher, open_stack, run_search
from tasks.humaneval import load_humaneval

RESULTS = Path(__file__).parent / "results" / "search.json"


def _cpu_s() -> float:
    """CPU seconds of this process and its children (the vLLM engine core, the sandbox workers):
    a throughput denominator that other jobs on a shared machine do not distort."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - vLLM brings psutil
        return float("nan")
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def _rates(tokens: int, wall: float, cpu: float) -> dict[str, float]:
    return {"tokens": tokens, "wall_s": wall, "cpu_s": cpu, "tok_s": tokens / wall, "tok_per_cpu_s": tokens / cpu if cpu else 0.0}


class ConstantValue:
    """A value "model" that costs nothing (every state 0.5): ``--constant-value-baseline`` runs the
    same searches with it to measure what the search machinery alone (tree, batcher, engine
    requests) feeds the engine when no value model competes for the cores. A diagnostic: its
    trees differ (UCT ties fall to the seeded RNG), and it is no search anyone would serve."""

    version = "constant-0.5"

    async def score(self, problem: Any, states: Any) -> list[float]:
        return [0.5] * len(states)

    async def close(self) -> None:
        return None


async def _raw_sampling(
    policy: Any, problems: list[Any], *, requests: int, lanes: int, n: int, max_tokens: int, temperature: float
) -> dict[str, float]:
    """Raw batched sampling with the request shape of the searches: per problem ``lanes`` workers
    send ``requests`` root requests between them, so the engine sees as many requests in flight
    as C searches with ``parallel_expansions = lanes``."""
    async def worker(p: Any, count: int) -> int:
        prompt = render_prompt(policy.tokenizer, p, root_state(p, policy.prompt_mode), policy.prompt_mode)
        tokens = 0
        for _ in range(count):
            out = await policy.sample(prompt, n=n, max_tokens=max_tokens, stop=STOP, temperature=temperature)
            tokens += sum(s.tokens for s in out)
        return tokens

    counts = [requests // lanes + (1 if i < requests % lanes else 0) for i in range(lanes)]
    t0, c0 = time.perf_counter(), _cpu_s()
    tokens = sum(await asyncio.gather(*(worker(p, c) for p in problems for c in counts if c)))
    return _rates(tokens, time.perf_counter() - t0, _cpu_s() - c0)


async def _searches(policy: Any, value: Any, problems: list[Any], cfg: Any, *, concurrent: bool) -> dict[str, float]:
    t0, c0 = time.perf_counter(), _cpu_s()
    if concurrent:
        results = await asyncio.gather(*(run_search(p, policy, value, cfg) for p in problems))
    else:
        results = [await run_search(p, policy, value, cfg) for p in problems]
    out = _rates(sum(r.usage.policy_tokens for r in results), time.perf_counter() - t0, _cpu_s() - c0)
    out.update(
        samples=sum(r.usage.samples for r in results),
        value_calls=sum(r.usage.value_calls for r in results),
        cached_prompt_tokens=sum(r.usage.cached_prompt_tokens for r in results),
        prompt_tokens=sum(r.usage.prompt_tokens for r in results),
    )
    return out


async def _batched_searches(policy: Any, vb: Any, problems: list[Any], cfg: Any) -> dict[str, float]:
    """Concurrent searches through the `ValueBatcher` ``vb`` (closed after), with its busy and
    hold-taking seconds."""
    try:
        out = await _searches(policy, vb, problems, cfg, concurrent=True)
    finally:
        await vb.close()
    out.update(value_busy_s=vb.busy_s, hold_wait_s=vb.hold_wait_s)
    return out


def _pooled(runs: list[dict[str, float]]) -> dict[str, float]:
    tokens = int(sum(r["tokens"] for r in runs))
    return _rates(tokens, sum(r["wall_s"] for r in runs), sum(r["cpu_s"] for r in runs))


@dataclass
class _Runs:
    """What the throughput rounds measured, per ``parallel_expansions``."""

    raw: dict[int, list[dict[str, float]]] = field(default_factory=lambda: defaultdict(list))
    mcts: dict[int, list[dict[str, float]]] = field(default_factory=lambda: defaultdict(list))
    batch_sizes: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    baselines: dict[str, dict[int, list[dict[str, float]]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))


def _baselines(value_model: HFValueModel, hold: Any, args: argparse.Namespace) -> list[tuple[str, str, Any, Any]]:
    """The same searches with one thing changed, as asked: (key, what differs, value model, hold)."""
    asked = [
        (args.no_prefix_cache_baseline, "no_prefix_cache", "without the value prefix cache (every input in full)",
         lambda: value_model.sharing_weights(prefix_cache_mb=0, pack_tokens=0), hold),
        (args.concurrent_value_baseline, "value_beside_engine", "with the value model beside the running engine (no pause, half the CPUs)",
         lambda: value_model.sharing_weights(threads=0), None),
        (args.constant_value_baseline, "constant_value", "with a constant value (no value compute)", ConstantValue, None),
    ]
    return [(key, what, make(), model_hold) for on, key, what, make, model_hold in asked if on]


async def _round(policy: Any, value_model: HFValueModel, problems: list[Any], args: argparse.Namespace, runs: _Runs,
                 baselines: list[tuple[str, str, Any, Any]], hold: Any, rnd: int, par: int) -> None:
    """One raw run and one VM-MCTS run (and the asked baselines) at ``parallel_expansions = par``."""
    k, budget = args.k, args.throughput_budget
    raw = await _raw_sampling(policy, problems, requests=budget // k, lanes=par, n=k, max_tokens=args.max_tokens,
                              temperature=args.temperature)
    runs.raw[par].append(raw)
    vb = ValueBatcher(value_model, max_batch=64, max_wait_ms=2.0, on_batch=runs.batch_sizes[par].append, hold=hold)
    cfg = SearchConfig(strategy="vm_mcts", budget=Budget(samples=budget), k=k, max_tokens=args.max_tokens,
                       temperature=args.temperature, parallel_expansions=par, seed=rnd)
    res = await _batched_searches(policy, vb, problems, cfg)
    runs.mcts[par].append(res)
    print(f"round {rnd} parallel={par}: raw {raw['tok_s']:6.1f} tok/s, vm_mcts {res['tok_s']:6.1f} tok/s "
          f"(ratio {res['tok_s'] / raw['tok_s']:.2f}; per CPU-s {res['tok_per_cpu_s'] / raw['tok_per_cpu_s']:.2f})", flush=True)
    for key, what, model, model_hold in baselines:  # the same searches, one thing changed
        other = await _batched_searches(policy, ValueBatcher(model, max_batch=64, max_wait_ms=2.0, hold=model_hold), problems, cfg)
        runs.baselines[key][par].append(other)
        print(f"round {rnd} parallel={par}: vm_mcts {what} {other['tok_s']:6.1f} tok/s (ratio {other['tok_s'] / raw['tok_s']:.2f})",
              flush=True)


def _sweep_row(runs: _Runs, par: int) -> dict[str, Any]:
    """Pooled figures of one ``parallel_expansions`` value."""
    raw, res = _pooled(runs.raw[par]), _pooled(runs.mcts[par])
    sizes = runs.batch_sizes[par]
    row: dict[str, Any] = {
        "raw": raw,
        "vm_mcts": res,
        "ratio_vs_raw": res["tok_s"] / raw["tok_s"],
        "cpu_ratio_vs_raw": res["tok_per_cpu_s"] / raw["tok_per_cpu_s"],
        "round_ratios": [m["tok_s"] / r["tok_s"] for m, r in zip(runs.mcts[par], runs.raw[par], strict=True)],
        "mean_value_batch": sum(sizes) / max(len(sizes), 1),
        # share of the searches' wall time with a value batch running (the rest: policy only)
        "value_busy_share": sum(m["value_busy_s"] for m in runs.mcts[par]) / res["wall_s"],
        "hold_wait_share": sum(m["hold_wait_s"] for m in runs.mcts[par]) / res["wall_s"],  # pausing the engine
        "cached_prompt_fraction": sum(m["cached_prompt_tokens"] for m in runs.mcts[par])
        / max(sum(m["prompt_tokens"] for m in runs.mcts[par]), 1),
    }
    for key, by_par in runs.baselines.items():
        if by_par[par]:
            other = _pooled(by_par[par])
            row[f"vm_mcts_{key}"] = other
            row[f"{key}_ratio_vs_raw"] = other["tok_s"] / raw["tok_s"]
            if key != "constant_value":
                busy = "no_prefix_cache_value_busy_share" if key == "no_prefix_cache" else f"{key}_busy_share"
                row[busy] = sum(m["value_busy_s"] for m in by_par[par]) / other["wall_s"]
    return row


async def _reference(policy: Any, value_model: HFValueModel, problems: list[Any], args: argparse.Namespace,
                     base: dict[str, float]) -> dict[str, Any]:
    """The reference pattern: searches one after another, one expansion at a time, value batch 1,
    every value input scored in full (the reference code has no prefix cache)."""
    k, budget, n_ref = args.k, args.throughput_budget, args.reference_problems
    raw1 = await _raw_sampling(policy, problems[:n_ref], requests=budget // k, lanes=1, n=k, max_tokens=args.max_tokens,
                               temperature=args.temperature)
    vb1 = ValueBatcher(value_model.sharing_weights(prefix_cache_mb=0, pack_tokens=0, threads=0), max_batch=1, max_wait_ms=0.0)
    ref_cfg = SearchConfig(strategy="vm_mcts", budget=Budget(samples=budget), k=k, max_tokens=args.max_tokens,
                           temperature=args.temperature, parallel_expansions=1, seed=0)
    ref = await _searches(policy, vb1, problems[:n_ref], ref_cfg, concurrent=False)
    await vb1.close()
    out = {**ref, "problems": n_ref, "ratio_vs_raw": ref["tok_s"] / base["tok_s"],
           "cpu_ratio_vs_raw": ref["tok_per_cpu_s"] / base["tok_per_cpu_s"], "raw_same_problems_concurrent": raw1}
    print(f"reference style: {ref['tok_s']:6.1f} tok/s, ratio vs raw {out['ratio_vs_raw']:.2f}", flush=True)
    return out


async def throughput(policy: Any, value_model: HFValueModel, problems: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """Raw and VM-MCTS runs alternate for ``rounds`` rounds (the machine is shared: alternating
    spreads other jobs' load over both); ratios use the pooled tokens / wall seconds."""
    out: dict[str, Any] = {"concurrency": len(problems), "k": args.k, "budget_samples": args.throughput_budget,
                           "max_tokens": args.max_tokens, "rounds": args.rounds}
    await _raw_sampling(policy, problems[:2], requests=1, lanes=1, n=args.k, max_tokens=16, temperature=args.temperature)  # warm-up
    await value_model.score(problems[0], ["x = 1\n"])
    hold = policy.paused if args.pause and isinstance(policy, PausablePolicy) else None
    runs = _Runs()
    baselines = _baselines(value_model, hold, args)
    for rnd in range(args.rounds):
        for par in args.parallel:
            await _round(policy, value_model, problems, args, runs, baselines, hold, rnd, par)
    sweep = {str(par): _sweep_row(runs, par) for par in args.parallel}
    out["parallel_sweep"] = sweep
    out["best_parallel_expansions"] = int(max(sweep, key=lambda p: sweep[p]["ratio_vs_raw"]))
    # against raw batched sampling at the searches' concurrency
    out["reference_style"] = await _reference(policy, value_model, problems, args, _pooled(runs.raw[args.parallel[0]]))
    return out


async def quality(
    policy: Any, value_model: Any, sandbox: Any, problems: list[Any], args: argparse.Namespace, on_cell: Any = None
) -> dict[str, Any]:
    vb = ValueBatcher(value_model, max_batch=64, max_wait_ms=2.0)
    sem = asyncio.Semaphore(args.concurrency)
    pass1: dict[str, dict[str, float]] = {}
    detail: dict[str, dict[str, Any]] = {}

    async def one(p: Any, cfg: Any) -> tuple[bool, Any]:
        async with sem:
            r = await run_search(p, policy, vb, cfg)
        if r.program is None:
            return False, r
        verdict = await sandbox.arun(r.program, p.tests, entry_point=p.entry_point)
        return verdict.status == "passed", r

    for strategy in args.strategies:
        pass1[strategy] = {}
    for budget in args.budgets:  # budget-major: a run cut short still covers every strategy
        for strategy in args.strategies:
            if strategy == "greedy" and budget != args.budgets[0]:  # one sample whatever the budget
                pass1[strategy][str(budget)] = pass1[strategy][str(args.budgets[0])]
                continue
            cfg = SearchConfig(strategy=strategy, budget=Budget(samples=budget), k=args.k, max_tokens=args.quality_max_tokens,
                               temperature=args.temperature, parallel_expansions=args.quality_parallel, seed=0)
            t0 = time.perf_counter()
            outs = await asyncio.gather(*(one(p, cfg) for p in problems))
            wall = time.perf_counter() - t0
            rate = sum(ok for ok, _ in outs) / len(outs)
            pass1[strategy][str(budget)] = rate
            detail[f"{strategy}@{budget}"] = {
                "wall_s": wall,
                "solved": [p.id for p, (ok, _) in zip(problems, outs, strict=True) if ok],
                "mean_samples": sum(r.usage.samples for _, r in outs) / len(outs),
                "stop_reasons": sorted({r.stop_reason for _, r in outs}),
            }
            print(f"{strategy:10s} budget {budget:3d}: pass@1 {rate:.3f}  ({wall:.0f}s)", flush=True)
            if on_cell is not None:
                on_cell({"pass1": pass1, "detail": detail})
    await vb.close()
    return {"pass1": pass1, "detail": detail}


def _save(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Merge into the JSON file (a run of one half keeps the other half's numbers)."""
    previous: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    merged = {**previous, **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2, default=str))
    return merged


def _tables(result: dict[str, Any]) -> str:
    lines = []
    tp = result.get("throughput")
    if tp:
        lines += [
            f"Throughput: {tp['concurrency']} concurrent searches, k={tp['k']}, {tp['budget_samples']} samples each, "
            f"max_tokens={tp['max_tokens']}, {tp['rounds']} alternating round(s)",
            "",
            "| pattern | raw tok/s (same in-flight requests) | vm_mcts tok/s | ratio (wall) | ratio (per CPU-s) | mean value batch | cached prompt share |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        mode = ", value batches pause the engine" if result.get("value_pauses_engine") else ""
        for par, r in tp["parallel_sweep"].items():
            lines.append(
                f"| vm_mcts, parallel_expansions={par}{mode} | {r['raw']['tok_s']:.1f} | {r['vm_mcts']['tok_s']:.1f} | "
                f"{r['ratio_vs_raw']:.2f} | {r['cpu_ratio_vs_raw']:.2f} | {r['mean_value_batch']:.1f} | {r['cached_prompt_fraction']:.2f} |"
            )
            if "vm_mcts_no_prefix_cache" in r:
                full = r["vm_mcts_no_prefix_cache"]
                lines.append(
                    f"| same, value prefix cache off | {r['raw']['tok_s']:.1f} | {full['tok_s']:.1f} | "
                    f"{r['no_prefix_cache_ratio_vs_raw']:.2f} | {full['tok_per_cpu_s'] / r['raw']['tok_per_cpu_s']:.2f} | - | - |"
                )
            if "vm_mcts_value_beside_engine" in r:
                side = r["vm_mcts_value_beside_engine"]
                lines.append(
                    f"| same, value model beside the running engine (no pause, half the CPUs) | {r['raw']['tok_s']:.1f} | "
                    f"{side['tok_s']:.1f} | {r['value_beside_engine_ratio_vs_raw']:.2f} | "
                    f"{side['tok_per_cpu_s'] / r['raw']['tok_per_cpu_s']:.2f} | - | - |"
                )
            if "vm_mcts_constant_value" in r:
                free = r["vm_mcts_constant_value"]
                lines.append(
                    f"| same searches, constant value (no value compute: the machinery's ceiling) | {r['raw']['tok_s']:.1f} | "
                    f"{free['tok_s']:.1f} | {r['constant_value_ratio_vs_raw']:.2f} | "
                    f"{free['tok_per_cpu_s'] / r['raw']['tok_per_cpu_s']:.2f} | - | - |"
                )
        ref = tp["reference_style"]
        lines.append(
            f"| reference style ({ref['problems']} searches in sequence, 1 expansion at a time, value batch 1, no prefix cache) | "
            f"{tp['parallel_sweep'][next(iter(tp['parallel_sweep']))]['raw']['tok_s']:.1f} | {ref['tok_s']:.1f} | "
            f"{ref['ratio_vs_raw']:.2f} | {ref['cpu_ratio_vs_raw']:.2f} | 1.0 | - |"
        )
        lines.append("")
    q = result.get("quality")
    if q:
        budgets = list(dict.fromkeys(b for row in q["pass1"].values() for b in row))
        lines += [
            f"HumanEval pass@1 of the returned program ({result['quality_problems']} problems), value model "
            f"`{result['value_version']}`",
            "",
            "| strategy | " + " | ".join(f"budget {b}" for b in budgets) + " |",
            "|---|" + "---:|" * len(budgets),
        ]
        for strategy, row in q["pass1"].items():
            lines.append(f"| {strategy} | " + " | ".join(f"{row[b]:.3f}" if b in row else "not reached" for b in budgets) + " |")
    return "\n".join(lines)


def stack_configs(args: argparse.Namespace) -> tuple[EngineConfig, ValueConfig, SandboxConfig | None]:
    """The stack the bench runs on: the serving defaults, with the bench's own flags (on a CPU the
    value batches measured so far: 16 per pass, 64 per call; on a GPU the scaled defaults)."""
    policy = EngineConfig(engine=args.engine, model=args.policy, kv_cache_gib=args.kv_cache_gib, max_model_len=2048)
    on_gpu = policy.device().startswith("cuda")
    value = ValueConfig(model=args.value, batch_size=None if on_gpu else 16, max_length=768, dtype=args.value_dtype,
                        prefix_cache_mb=args.value_prefix_cache_mb, threads=args.value_threads,
                        cpu_sharing=args.value_cpu_sharing, batch_max=None if on_gpu else 64, any_policy=args.value is not None)
    return policy, value, None if args.skip_quality else SandboxConfig(workers=2)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    problems = load_humaneval()
    t0 = time.perf_counter()
    async with open_stack(*stack_configs(args)) as stack:
        assert stack.value is not None
        policy, value_model = stack.policy, stack.value.value
        assert isinstance(value_model, HFValueModel)
        args.pause = stack.pauses_engine
        print(f"engines ready in {time.perf_counter() - t0:.1f}s: {policy.version} / {value_model.version}", flush=True)
        result = _provenance(args, policy, value_model)
        # each half records its own provenance: `_save` merges, so a file can hold two runs' halves
        run = {"command": "python -m bench.search " + " ".join(sys.argv[1:]), "loadavg_at_start": os.getloadavg(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if not args.skip_throughput:
            result.update(await _throughput_half(policy, value_model, problems, args, run))
        if stack.sandbox is not None:
            result.update(await _quality_half(policy, value_model, stack.sandbox, problems, args, run, result))
    return result


def _provenance(args: argparse.Namespace, policy: Any, value_model: HFValueModel) -> dict[str, Any]:
    import torch

    return {
        "policy_version": policy.version,
        "value_version": value_model.version,
        "value_model_trained": "untrained" not in value_model.version,
        "value_torch_threads": value_model.threads or torch.get_num_threads(),
        "value_pauses_engine": args.pause,
        "value_dtype": value_model.config.resolved_dtype(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "args": {k: v for k, v in vars(args).items()},
    }


async def _throughput_half(policy: Any, value_model: HFValueModel, problems: list[Any], args: argparse.Namespace,
                           run: dict[str, Any]) -> dict[str, Any]:
    tp = await throughput(policy, value_model, problems[: args.throughput_concurrency], args)
    best = tp["parallel_sweep"][str(tp["best_parallel_expansions"])]
    return {"throughput": tp, "throughput_run": run, "throughput_ratio_vs_raw": best["ratio_vs_raw"],
            "throughput_cpu_ratio_vs_raw": best["cpu_ratio_vs_raw"],
            "reference_style_ratio_vs_raw": tp["reference_style"]["ratio_vs_raw"]}


async def _quality_half(policy: Any, value_model: HFValueModel, sandbox: ProgramRunner, problems: list[Any],
                        args: argparse.Namespace, run: dict[str, Any], so_far: dict[str, Any]) -> dict[str, Any]:
    def save_partial(q: dict[str, Any]) -> None:
        _save(args.out, {**so_far, "quality": q, "quality_problems": args.limit, "pass1": q["pass1"],
                         "quality_complete": False, "quality_run": run})

    q = await quality(policy, value_model, sandbox, problems[: args.limit], args, on_cell=save_partial)
    return {"quality_complete": True, "quality_run": run, "quality": q, "quality_problems": args.limit, "pass1": q["pass1"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=20, help="HumanEval problems for the quality table (first N)")
    ap.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[1, 5, 10, 20])
    ap.add_argument("--strategies", type=lambda s: s.split(","), default=["greedy", "best_of_n", "beam", "orm_mcts", "vm_mcts"])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=256, help="throughput: max new tokens per request")
    ap.add_argument("--quality-max-tokens", type=int, default=256, help="quality: max new tokens per request")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--concurrency", type=int, default=8, help="quality: searches in flight at once")
    ap.add_argument("--quality-parallel", type=int, default=2, help="quality: parallel_expansions")
    ap.add_argument("--throughput-concurrency", type=int, default=8)
    ap.add_argument("--throughput-budget", type=int, default=20)
    ap.add_argument("--parallel", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    ap.add_argument("--rounds", type=int, default=2, help="throughput: alternating raw / search rounds")
    ap.add_argument("--reference-problems", type=int, default=4, help="searches run one after another in the reference pattern")
    ap.add_argument("--engine", choices=["vllm", "hf"], default="vllm",
                    help="policy engine: vllm, or hf (transformers; the GPU hosts available for checks have no vLLM)")
    ap.add_argument("--policy", default=None, help="policy model folder (default: the embedded SmolLM2)")
    ap.add_argument("--value", default=None, help="value model folder (default: the shipped value model)")
    ap.add_argument("--kv-cache-gib", type=float, default=2.0)
    ap.add_argument("--value-dtype", choices=["auto", "float32", "bfloat16"], default="auto", help="value model dtype (auto: the serving default)")
    ap.add_argument("--value-prefix-cache-mb", type=int, default=256, help="value model: cache of problem-head keys/values (0 = off)")
    ap.add_argument("--value-threads", type=int, default=0,
                    help="value model torch threads (0 = the serving default: all CPUs when value batches pause the engine, else half)")
    ap.add_argument("--value-cpu-sharing", choices=["auto", "pause", "concurrent"], default="auto",
                    help="value batches pause the policy engine and use all cores, or both run at once (auto: the serving default)")
    ap.add_argument("--concurrent-value-baseline", action="store_true",
                    help="throughput: also run each search round with the value model running beside the engine (no pause, half the CPUs)")
    ap.add_argument("--no-prefix-cache-baseline", action="store_true",
                    help="throughput: also run each search round with the value prefix cache off (same raw baseline)")
    ap.add_argument("--constant-value-baseline", action="store_true",
                    help="also run the searches with a constant, free value model (what the machinery alone feeds the engine)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args(argv)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    args = parse_args()
    result = asyncio.run(main(args))
    merged = _save(args.out, result)
    print()
    print(_tables(merged))
    print(f"\nwrote {args.out}")
