"""Reliability benchmark (issue 9): load, faults, hostile input and auth, measured in one run.

1. Load (`bench.load`): a fresh ``restrl serve`` on the default model; ``--clients`` (32) clients for
   ``--duration`` (60 s) mixing greedy / best_of_n / vm_mcts, twice in a row; RSS and open fds of
   the server and its EngineCore before and after each run; the active-searches gauge afterwards.
2. Faults, fuzzing, hostile programs, auth: the tests of ``tests/reliability`` (all but the load
   test, which step 1 replaces) run under pytest; each fault test that passes is a fault survived.
   The fuzz test writes its counts (cases, statuses, 5xx) where ``RESTRL_RELIABILITY_OUT`` says.

    python -m bench.reliability [--clients 32] [--duration 60] [--runs 2] [--slow] [--skip-load] [--skip-tests]

``--slow`` also runs the slow tests of the folder (the long fuzz). Prints the tables; writes
bench/results/reliability.json (``load_requests``, ``load_unexpected_errors``, ``faults_survived``,
``faults_total``, ``fuzz_cases``, ``fuzz_5xx``, latency percentiles, resources, machine, command).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from bench.load import ROOT, ServeProcess, load_runs

RESULTS = Path(__file__).parent / "results" / "reliability.json"
# test name (prefix) -> the fault it injects
FAULTS = {
    "test_corrupt_and_partial_checkpoints_roll_back_while_requests_run": "corrupt/partial/missing checkpoint during a hot swap (4 folders)",
    "test_value_model_failing_mid_search_fails_that_request_cleanly": "value model raising mid-search (plain and streamed)",
    "test_engine_core_killed_503_then_exit_for_the_supervisor": "EngineCore process killed (SIGKILL)",
    "test_worker_killed_mid_run_is_an_infra_error_and_the_pool_refills": "sandbox worker killed mid-run",
    "test_worker_killed_while_idle_is_replaced_before_the_next_run": "sandbox worker killed while idle",
    "test_client_disconnect_cancels_search_and_aborts_engine_requests": "client disconnect mid-search (plain and SSE)",
    "test_plain_streams_are_token_by_token_and_a_disconnect_aborts_the_engine_request":
        "client disconnect mid plain token stream (engine request aborted, 499)",
    "test_seed_outside_64_bits_is_422_and_no_error_path_leaves_an_engine_request":
        "seed beyond 64 bits, oversized prompt, disconnects of every kind (nothing left unfinished in the engine)",
}


def run_tests(out_dir: Path, *, slow: bool) -> dict[str, Any]:
    junit = out_dir / "junit.xml"
    env = {**os.environ, "RESTRL_RELIABILITY_OUT": str(out_dir), "RESTRL_SLOW": "1" if slow else "0"}
    command = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider", "-k",
               "not load", f"--junitxml={junit}"]
    started = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    print(proc.stdout[-3000:])
    cases: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        cases[name] = outcome
    faults = {desc: cases.get(name, "not run") for name, desc in FAULTS.items()}
    fuzz_path = out_dir / "fuzz.json"
    fuzz = json.loads(fuzz_path.read_text()) if fuzz_path.exists() else {}
    return {"tests": cases, "faults": faults, "fuzz": fuzz, "tests_wall_s": round(time.monotonic() - started, 1),
            "tests_command": " ".join(["python", *command[1:-1]]), "pytest_exit": proc.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--slow", action="store_true", help="also the slow tests (the long fuzz)")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                         "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}
    result["command"] = " ".join(["python -m bench.reliability", *sys.argv[1:]])
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())

    if not args.skip_load:
        served = ServeProcess.start(Path(tempfile.gettempdir()) / f"restrl-reliability-{os.getpid()}.log")
        try:
            load = asyncio.run(load_runs(served, clients=args.clients, duration_s=args.duration, runs=args.runs))
        finally:
            served.stop()
        runs = load["runs"]
        result["load"] = load | {"clients": args.clients, "duration_s": args.duration, "command": result["command"],
                                 "date": result["date"], "load_avg_before": result["machine"]["load_avg_at_start"],
                                 "load_avg_after": [round(x, 2) for x in os.getloadavg()]}
        result["load_requests"] = sum(r["requests"] for r in runs)
        result["load_ok"] = sum(r["ok"] for r in runs)
        result["load_429"] = sum(r["overloaded"] for r in runs)
        result["load_unexpected_errors"] = sum(r["unexpected"] for r in runs)
        result["load_abandoned"] = sum(r["abandoned"] for r in runs)
        result["load_latency_ok_s"] = [r["latency_ok_s"] for r in runs]
        result["load_active_searches_after"] = [r["active_searches_after"] for r in runs]
        result["resources"] = {"before_and_after_each_run": load["resources"], "growth_run1_to_run2": load["growth_run1_to_run2"],
                               "tolerance": {"rss_mib": 64, "fds": 8}}

    if not args.skip_tests:
        with tempfile.TemporaryDirectory() as tmp:
            tests = run_tests(Path(tmp), slow=args.slow)
        result["tests"] = tests | {"command": result["command"], "date": result["date"],
                                   "load_avg_before": result["machine"]["load_avg_at_start"]}
        faults = tests["faults"]
        result["faults_total"] = len(faults)
        result["faults_survived"] = sum(outcome == "passed" for outcome in faults.values())
        result["fuzz_cases"] = tests["fuzz"].get("fuzz_cases")
        result["fuzz_5xx"] = tests["fuzz"].get("fuzz_5xx")
        print("\nfaults:")
        for desc, outcome in faults.items():
            print(f"  {outcome:<8} {desc}")
        print(f"fuzz: {result['fuzz_cases']} cases, {result['fuzz_5xx']} 5xx, statuses {tests['fuzz'].get('statuses')}")
        print(f"tests: {sum(o == 'passed' for o in tests['tests'].values())}/{len(tests['tests'])} passed "
              f"in {tests['tests_wall_s']} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
