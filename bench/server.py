"""Server benchmark (issue 5 item 9): the HTTP service on the real engine (vLLM CPU +
SmolLM2-135M-Instruct + the default value model), served by uvicorn on loopback in this process.

(a) latency p50/p95 and throughput (requests/s, policy tokens/s) of ``POST /v1/solve`` at
    concurrency 1/4/16 for ``greedy`` and ``vm_mcts`` with sample budgets 5 and 20, on HumanEval
    prompts;
(b) server overhead = HTTP greedy latency / direct ``run_search`` greedy latency on the same
    engine and problems (goal <= 1.1), alternating the two paths problem by problem.

    python -m bench.server [--problems 16] [--max-tokens 192] [--concurrency 1,4,16] [--quick]

Prints both tables and writes bench/results/server.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from models import EngineConfig
from models.value import HFValueModel
from search import run_search
from search.stack import value_pauses_engine
from server import Settings, build_app
from server.loading import EngineLoader
from server.protocol import SolveRequest
from server.services import Services, assemble_services
from tasks.humaneval import load_humaneval

RESULTS = Path(__file__).parent / "results" / "server.json"
CONFIGS = (("greedy", 1), ("vm_mcts", 5), ("vm_mcts", 20))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def solve_body(problem: Any, strategy: str, samples: int, max_tokens: int) -> dict[str, Any]:
    return {"problem": {"id": problem.id, "statement": problem.prompt, "starter_code": problem.starter_code,
                        "entry_point": problem.entry_point},
            "strategy": strategy, "budget": {"samples": samples}, "max_tokens": max_tokens, "seed": 0}


async def level(client: Any, problems: list[Any], *, strategy: str, samples: int, concurrency: int, requests: int,
                max_tokens: int) -> dict[str, Any]:
    """``requests`` solves, at most ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0
    errors = 0

    async def one(i: int) -> None:
        nonlocal tokens, errors
        async with gate:
            t0 = time.perf_counter()
            r = await client.post("/v1/solve", json=solve_body(problems[i % len(problems)], strategy, samples, max_tokens))
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1
                return
            tokens += r.json()["usage"]["policy_tokens"]

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    wall = time.perf_counter() - t0
    return {"strategy": strategy, "budget": samples, "concurrency": concurrency, "requests": requests, "errors": errors,
            "p50_s": percentile(latencies, 0.5), "p95_s": percentile(latencies, 0.95), "wall_s": wall,
            "throughput_rps": requests / wall, "policy_tok_s": tokens / wall}


async def overhead(client: Any, services: Any, problems: list[Any], *, rounds: int, max_tokens: int) -> dict[str, Any]:
    """Greedy latency through HTTP vs calling `run_search` directly, alternating per problem."""
    direct, http = [], []
    for r in range(rounds):
        for i, p in enumerate(problems):
            body = solve_body(p, "greedy", 1, max_tokens)
            config, _ = SolveRequest.model_validate(body).to_config(services.limits)
            order = ("direct", "http") if (i + r) % 2 == 0 else ("http", "direct")
            for path in order:
                t0 = time.perf_counter()
                if path == "direct":
                    async with services.registry.acquire() as pair:
                        await run_search(p, pair.policy, pair.value, config)
                    direct.append(time.perf_counter() - t0)
                else:
                    resp = await client.post("/v1/solve", json=body)
                    resp.raise_for_status()
                    http.append(time.perf_counter() - t0)
    ratios = [h / d for h, d in zip(http, direct, strict=True)]
    return {"pairs": len(ratios), "direct_p50_s": statistics.median(direct), "http_p50_s": statistics.median(http),
            "overhead_ratio": statistics.median(http) / statistics.median(direct),
            "overhead_ratio_paired_median": statistics.median(ratios),
            "overhead_abs_ms_p50": 1000 * (statistics.median(http) - statistics.median(direct))}


def save(out: dict[str, Any], path: Path) -> None:
    """Write what is measured so far (a long run interrupted still leaves its finished levels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    problems = load_humaneval()[: args.problems]
    t0 = time.perf_counter()
    # the server's own stack: the settings' policy and value model through its loader
    settings = Settings(policy=EngineConfig(kv_cache_gib=args.kv_cache_gib, max_model_len=2048),
                        max_concurrent_searches=max(args.concurrency), max_queued=1024, max_new_tokens=args.max_tokens)
    services = assemble_services(settings, loader=EngineLoader(settings), search_fn=run_search)
    pair = await services.registry.load_initial(None, None)
    startup_s = time.perf_counter() - t0
    server = uvicorn.Server(uvicorn.Config(build_app(settings, services=services, load_models=False),
                                           host="127.0.0.1", port=0, log_level="warning"))
    serve_task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    value = pair.raw_value
    out: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "policy_version": pair.policy.version, "value_version": pair.value_version, "engine_startup_s": startup_s,
        "max_tokens": args.max_tokens, "problems": len(problems), "k": 5,
        "value_cpu_sharing": settings.value.cpu_sharing, "value_pauses_engine": value_pauses_engine(settings.policy, settings.value),
        "value_threads": value.threads if isinstance(value, HFValueModel) else None,
        "load_average_start": os.getloadavg(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    try:
        await _measure(url, services, problems, args, out)
    finally:
        server.should_exit = True
        await serve_task
        await services.registry.close()
    out["load_average_end"] = os.getloadavg()
    save(out, args.out)
    return out


async def _measure(url: str, services: Services, problems: list[Any], args: argparse.Namespace, out: dict[str, Any]) -> None:
    """The overhead pairs, then the latency table, each saved as it finishes."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        for p in problems[:2]:  # warm-up: first engine and value calls
            (await client.post("/v1/solve", json=solve_body(p, "vm_mcts", 5, args.max_tokens))).raise_for_status()
        out["overhead"] = await overhead(client, services, problems[: args.overhead_problems],
                                         rounds=args.overhead_rounds, max_tokens=args.max_tokens)
        out["overhead_ratio"] = out["overhead"]["overhead_ratio"]
        save(out, args.out)
        o = out["overhead"]
        print(f"overhead: direct p50 {o['direct_p50_s']:.3f}s, HTTP p50 {o['http_p50_s']:.3f}s, ratio "
              f"{o['overhead_ratio']:.3f} (paired median {o['overhead_ratio_paired_median']:.3f}, {o['pairs']} pairs)",
              flush=True)
        table: list[dict[str, Any]] = []
        out["latency"] = table
        for strategy, samples in CONFIGS:
            for c in args.concurrency:
                requests = max(args.min_requests, c * args.waves)
                row = await level(client, problems, strategy=strategy, samples=samples, concurrency=c,
                                  requests=requests, max_tokens=args.max_tokens)
                table.append(row)
                save(out, args.out)
                print(f"{strategy:8s} budget {samples:3d} c={c:3d} n={requests:3d}: p50 {row['p50_s']:7.2f}s"
                      f" p95 {row['p95_s']:7.2f}s  {row['throughput_rps']:6.2f} req/s"
                      f" {row['policy_tok_s']:7.1f} tok/s errors={row['errors']}", flush=True)
        metrics = (await client.get("/metrics")).text
        out["metrics_value_batch"] = [line for line in metrics.splitlines() if line.startswith("restrl:value_batch_size_")]

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=16, help="HumanEval problems cycled through")
    parser.add_argument("--max-tokens", type=int, default=192, help="max new tokens per policy request")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    parser.add_argument("--waves", type=int, default=1, help="requests per level = max(min_requests, concurrency * waves)")
    parser.add_argument("--min-requests", type=int, default=4)
    parser.add_argument("--overhead-problems", type=int, default=8)
    parser.add_argument("--overhead-rounds", type=int, default=2)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 problems, concurrency 1,4, 2 overhead pairs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.problems, args.concurrency, args.overhead_problems, args.overhead_rounds = 4, [1, 4], 2, 1
    return args


if __name__ == "__main__":
    arguments = parse_args()
    asyncio.run(main(arguments))
    print(f"wrote {arguments.out}")
