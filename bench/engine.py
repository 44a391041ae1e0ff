"""Engine benchmark: HumanEval prompts through the vLLM and transformers policy engines.

``python -m bench.engine [--engines vllm,hf] [--limit N] [--hf-limit N] [--sequential-limit N]``

For each engine, in its own subprocess (so that startup time and peak RSS belong to that engine
alone; the RSS sums the process and its children, e.g. vLLM's EngineCore):

* startup: `models.load_policy` until the first request can be served;
* greedy: every prompt at once, n=1, T=0, stop at the closing fence -> output tok/s and
  HumanEval greedy pass@1;
* batched: every prompt at once with n=5, T=0.7 (seeded per problem) -> tok/s (``batched_tok_s``)
  and the unbiased pass@1 / pass@5 of those samples;
* sequential: the same n=5 requests one at a time, as the reference implementation sends them
  (``sequential_tok_s``; on the first ``--sequential-limit`` problems, since it is slow).

Prompts are `models.prompting.render_prompt` in the model's measured mode; programs are
`assemble_program` and are scored by `sandbox.Sandbox` against the `tasks.humaneval` tests.
Prints a table and writes ``bench/results/engine.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from models import EngineConfig
from models.prompting import STOP, PromptMode, assemble_program, render_prompt
from sandbox import SandboxConfig
from search import open_stack
from search.stack import open_sandbox
from tasks.humaneval import load_humaneval

RESULTS = Path(__file__).resolve().parent / "results" / "engine.json"
MAX_TOKENS = 512  # default; --max-tokens


class PeakRSS:
    """Samples the RSS of this process and its children every 0.2 s."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                total = self._proc.memory_info().rss
                for child in self._proc.children(recursive=True):
                    try:
                        total += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**30


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of Chen et al. (2021)."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


async def _score(problems: list[Any], codes: list[list[str]], mode: PromptMode) -> list[list[bool]]:
    jobs = [
        (assemble_program(p, code, mode), p.tests, p.entry_point) for p, group in zip(problems, codes, strict=True) for code in group
    ]
    sandbox = open_sandbox(SandboxConfig(workers=2))
    try:
        verdicts = await sandbox.run_many(jobs)
    finally:
        sandbox.close()
    flat = [v.status == "passed" for v in verdicts]
    out, i = [], 0
    for group in codes:
        out.append(flat[i : i + len(group)])
        i += len(group)
    return out


async def run_engine(
    engine: Literal["vllm", "hf"], limit: int | None, sequential_limit: int, n: int, kv_cache_gib: float, max_tokens: int
) -> dict[str, Any]:
    problems = load_humaneval(limit)
    rss = PeakRSS()
    t0 = time.perf_counter()
    async with open_stack(EngineConfig(engine=engine, kv_cache_gib=kv_cache_gib)) as stack:
        startup_s = time.perf_counter() - t0
        print(f"[{engine}] started in {startup_s:.1f} s ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
        row, greedy, batched = await _generate(stack.policy, engine, problems, sequential_limit, n, max_tokens)
    row["startup_s"] = round(startup_s, 1)
    row["peak_rss_gib"] = round(rss.stop(), 2)
    mode = stack.policy.prompt_mode
    greedy_ok = await _score(problems, [[g[0].text] for g in greedy], mode)
    sample_ok = await _score(problems, [[s.text for s in g] for g in batched], mode)
    row["humaneval_greedy_pass1"] = round(sum(ok[0] for ok in greedy_ok) / len(problems), 4)
    row["humaneval_t07_pass1"] = round(sum(pass_at_k(n, sum(ok), 1) for ok in sample_ok) / len(problems), 4)
    row[f"humaneval_t07_pass{n}"] = round(sum(pass_at_k(n, sum(ok), n) for ok in sample_ok) / len(problems), 4)
    return row


async def _generate(policy: Any, engine: str, problems: list[Any], sequential_limit: int, n: int,
                    max_tokens: int) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """Greedy, batched and sequential generation: (row, greedy samples, batched samples)."""
    mode = policy.prompt_mode
    prompts = [render_prompt(policy.tokenizer, p, "", mode) for p in problems]
    row: dict[str, Any] = {"engine": engine, "version": policy.version, "prompt_mode": mode, "problems": len(problems)}
    t = time.perf_counter()
    greedy = await asyncio.gather(*[policy.sample(pr, n=1, max_tokens=max_tokens, stop=STOP, temperature=0) for pr in prompts])
    dt = time.perf_counter() - t
    tokens = sum(s.tokens for g in greedy for s in g)
    row.update(greedy_tokens=tokens, greedy_s=round(dt, 1), greedy_tok_s=round(tokens / dt, 1))
    print(f"[{engine}] greedy: {tokens} tokens in {dt:.1f} s", file=sys.stderr, flush=True)

    t = time.perf_counter()
    batched = await asyncio.gather(
        *[policy.sample(pr, n=n, max_tokens=max_tokens, stop=STOP, temperature=0.7, seed=i) for i, pr in enumerate(prompts)]
    )
    dt = time.perf_counter() - t
    tokens = sum(s.tokens for g in batched for s in g)
    row.update(batched_tokens=tokens, batched_s=round(dt, 1), batched_tok_s=round(tokens / dt, 1))
    print(f"[{engine}] batched n={n}: {tokens} tokens in {dt:.1f} s", file=sys.stderr, flush=True)

    seq_count = min(sequential_limit, len(prompts))
    t = time.perf_counter()
    tokens = 0
    for i, pr in enumerate(prompts[:seq_count]):
        tokens += sum(s.tokens for s in await policy.sample(pr, n=n, max_tokens=max_tokens, stop=STOP, temperature=0.7, seed=i))
    dt = time.perf_counter() - t
    row.update(sequential_problems=seq_count, sequential_tokens=tokens, sequential_s=round(dt, 1))
    row["sequential_tok_s"] = round(tokens / dt, 1) if dt > 0 else None
    print(f"[{engine}] sequential ({seq_count} problems): {tokens} tokens in {dt:.1f} s", file=sys.stderr, flush=True)
    return row, greedy, batched


def _child(args: argparse.Namespace) -> int:
    limit = args.hf_limit if args.engine == "hf" else args.limit
    row = asyncio.run(run_engine(args.engine, limit, args.sequential_limit, args.n, args.kv_cache_gib, args.max_tokens))
    print(json.dumps(row))
    return 0


def _table(rows: list[dict[str, Any]], n: int) -> str:
    cols = [
        ("engine", "engine"),
        ("problems", "problems"),
        ("startup_s", "startup s"),
        ("peak_rss_gib", "peak RSS GiB"),
        ("greedy_tok_s", "greedy tok/s"),
        ("batched_tok_s", f"n={n} all-at-once tok/s"),
        ("sequential_tok_s", f"n={n} one-at-a-time tok/s"),
        ("sequential_problems", "(one-at-a-time problems)"),
        ("humaneval_greedy_pass1", "greedy pass@1"),
        ("humaneval_t07_pass1", "T=0.7 pass@1"),
        (f"humaneval_t07_pass{n}", f"T=0.7 pass@{n}"),
    ]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k, _ in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HumanEval through the vLLM and transformers policy engines")
    parser.add_argument("--engines", default="vllm,hf", help="comma-separated: vllm, hf")
    parser.add_argument("--limit", type=int, default=None, help="first N HumanEval problems (default: all 164)")
    parser.add_argument("--hf-limit", type=int, default=None, help="first N problems for the hf engine (default: --limit)")
    parser.add_argument("--sequential-limit", type=int, default=164, help="problems sent one at a time (slow)")
    parser.add_argument("--n", type=int, default=5, help="samples per problem at T=0.7")
    parser.add_argument("--kv-cache-gib", type=float, default=2.0)
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="new tokens per sample")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--merge", action="store_true", help="keep the other engines' rows already in --out")
    parser.add_argument("--engine", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.hf_limit is None:
        args.hf_limit = args.limit
    if args.engine:
        return _child(args)

    load_start = os.getloadavg()
    rows = []
    for engine in args.engines.split(","):
        cmd = [sys.executable, "-m", "bench.engine", "--engine", engine, "--n", str(args.n), "--sequential-limit", str(args.sequential_limit), "--kv-cache-gib", str(args.kv_cache_gib), "--max-tokens", str(args.max_tokens)]
        if args.limit is not None:
            cmd += ["--limit", str(args.limit)]
        if args.hf_limit is not None:
            cmd += ["--hf-limit", str(args.hf_limit)]
        proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"engine {engine} failed (exit {proc.returncode})", file=sys.stderr)
            return proc.returncode
        # vLLM logs to stdout too: the result is the last JSON line
        rows.append(json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{"))))
    out = Path(args.out)
    previous = json.loads(out.read_text()) if args.merge and out.exists() else {}
    command = "python -m bench.engine " + " ".join(argv if argv is not None else sys.argv[1:])
    for r in rows:
        r["command"] = command
    result = {
        "command": command,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg()},
        "max_tokens": args.max_tokens,
        "n": args.n,
        "engines": {**previous.get("engines", {}), **{r["engine"]: r for r in rows}},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(_table(list(result["engines"].values()), args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
