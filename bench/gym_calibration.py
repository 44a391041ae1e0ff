"""Gym calibration: greedy pass@1 of the policy on the training gym, per tier and per family.

The target (issue 6): SmolLM2-135M-Instruct roughly 20-60 % on tier 1 and under 15 % on the
hardest tier. Problems are rendered with the one prompt format (`models.prompting`, the policy's
measured ``prompt_mode``), sampled greedily (temperature 0, stop at the closing fence) by the real
engine, assembled with `assemble_program` and scored in the sandbox on the hidden tests.

    python -m bench.gym_calibration [--seed 0] [--n-per-tier 100] [--engine vllm]

Prints a table and writes ``bench/results/gym.json``.
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
from pathlib import Path
from typing import Any

from models import EngineConfig, HFPolicy, VLLMPolicy
from models.prompting import STOP, assemble_program, join_code, render_prompt, root_state
from sandbox import SandboxConfig
from search import open_stack
from tasks.gym import make_gym

RESULTS = Path(__file__).resolve().parent / "results" / "gym.json"


def _rate(rows: list[dict[str, Any]], key: str = "passed") -> float:
    return sum(1 for r in rows if r[key]) / len(rows) if rows else 0.0


def _group(rows: list[dict[str, Any]], *keys: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups["/".join(str(r[k]) for k in keys)].append(r)
    return {
        name: {
            "n": len(g),
            "pass1": round(_rate(g), 4),
            "mean_pass_fraction": round(sum(r["pass_fraction"] for r in g) / len(g), 4),
        }
        for name, g in sorted(groups.items())
    }


async def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    gym = make_gym(args.seed, args.n_per_tier)
    problems = gym.all()
    rows: list[dict[str, Any]] = []
    partial = args.out.with_suffix(".rows.jsonl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    engine = EngineConfig(engine=args.engine, kv_cache_gib=args.kv_cache_gib)
    async with open_stack(engine, None, SandboxConfig(workers=args.sandbox_workers)) as stack:
        assert stack.sandbox is not None
        policy, box = stack.policy, stack.sandbox
        startup_s = time.monotonic() - started
        log = partial.open("w")
        mode = policy.prompt_mode

        async def solve(problem: Any) -> None:
            # sample, assemble and score one problem; scoring overlaps with other problems' decoding
            state = root_state(problem, mode)
            prompt = render_prompt(policy.tokenizer, problem, state, mode)
            (sample,) = await policy.sample(prompt, n=1, max_tokens=args.max_tokens, stop=list(STOP), temperature=0.0)
            program = assemble_program(problem, join_code(state, sample.text), mode)
            verdict = await box.arun(program, problem.tests, entry_point=problem.entry_point)
            row = {
                "id": problem.id,
                "tier": problem.metadata["tier"],
                "family": problem.metadata["family"],
                "split": problem.metadata["split"],
                "passed": verdict.passed,
                "pass_fraction": verdict.pass_fraction,
                "status": verdict.status,
                "tokens": sample.tokens,
                "finish_reason": sample.finish_reason,
            }
            rows.append(row)
            log.write(json.dumps({**row, "completion": sample.text}) + "\n")
            log.flush()

        t0 = time.monotonic()
        with log:
            await asyncio.gather(*(solve(p) for p in problems))
        gen_s = time.monotonic() - t0
        name = policy.model_name if isinstance(policy, (VLLMPolicy, HFPolicy)) else policy.version
    order = {p.id: i for i, p in enumerate(problems)}
    rows.sort(key=lambda r: order[r["id"]])
    infra = sum(1 for r in rows if r["status"] == "infra_error")
    return {
        "command": "python -m bench.gym_calibration " + " ".join(sys.argv[1:]),
        "model": name,
        "version": policy.version,
        "engine": args.engine,
        "prompt_mode": mode,
        "decoding": {"temperature": 0.0, "max_tokens": args.max_tokens, "stop": list(STOP)},
        "gym": {"seed": args.seed, "n_per_tier": args.n_per_tier, "problems": len(problems)},
        "pass1_overall": round(_rate(rows), 4),
        "pass1_per_tier": _group(rows, "tier"),
        "pass1_per_family": _group(rows, "family"),
        "pass1_per_tier_family": _group(rows, "tier", "family"),
        "pass1_per_split": _group(rows, "split"),
        "infra_errors": infra,
        "output_tokens": sum(r["tokens"] for r in rows),
        "hit_max_tokens": sum(1 for r in rows if r["finish_reason"] == "length"),
        "timing_s": {"engine_startup": round(startup_s, 1), "generate_and_score": round(gen_s, 1)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"model {result['model']} ({result['engine']}, prompt mode {result['prompt_mode']}), greedy, "
        f"gym seed {result['gym']['seed']}, {result['gym']['problems']} problems",
        f"{'group':<24}{'n':>6}{'pass@1':>9}{'mean tests passed':>20}",
    ]
    for title, key in (("tier", "pass1_per_tier"), ("family", "pass1_per_family")):
        for name, g in result[key].items():
            lines.append(f"{title + ' ' + name:<24}{g['n']:>6}{g['pass1']:>9.3f}{g['mean_pass_fraction']:>20.3f}")
    lines.append(f"{'overall':<24}{result['gym']['problems']:>6}{result['pass1_overall']:>9.3f}")
    t = result["timing_s"]
    lines.append(
        f"engine start {t['engine_startup']} s, generation + scoring {t['generate_and_score']} s "
        f"({result['output_tokens']} tokens), infra errors {result['infra_errors']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gym_calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="gym seed")
    parser.add_argument("--n-per-tier", type=int, default=100, help="problems per tier (all splits)")
    parser.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    parser.add_argument("--max-tokens", type=int, default=256, help="gym solutions are short; a runaway repetition stops here")
    parser.add_argument("--kv-cache-gib", type=float, default=2.0)
    parser.add_argument("--sandbox-workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    result = asyncio.run(calibrate(args))
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".rows.jsonl").unlink(missing_ok=True)  # the finished JSON holds the rows
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
