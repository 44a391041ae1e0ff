"""Samples a tree search spent on states that were already complete programs (issue 18's terminal bug).

Before the fix, a finished program's continuation ended with a newline, so its last line became a
non-terminal child whose state was the whole program; expanding it later spent K samples that could
only close the block (empty continuations) or append trailing code. This reads recorded searches
(`restrl eval --set keep_traces=true` phase files, old or new format) and counts, per phase:

* ``wasted_samples``: samples whose continuation added nothing (only whitespace) - the block was
  closed at once, so the expanded state itself was the program;
* ``expansions_of_finished``: expansions where every sample did that;
* ``trailing_candidates``: returned programs with top-level code after the last definition
  (``print(...)``, example calls, a second copy), the near-copies the bug produced;
* the phase's pass@1, mean policy tokens, value calls, tree nodes and depth.

    python -m bench.search_waste runs/study_before/gym_validation.vm_mcts.b20.json runs/study_one/*.json.gz --out FILE
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import Any

from models.prompting import continuation
from training.search_eval import read_phase


def trailing_code(code: str) -> bool:
    """True when ``code`` parses and has top-level statements after its last function or class."""
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False
    last_def = max((i for i, node in enumerate(body) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)), default=None)
    return last_def is not None and any(not isinstance(node, ast.Import | ast.ImportFrom) for node in body[last_def + 1:])


def waste(phase: dict[str, Any]) -> dict[str, Any]:
    wasted = samples = finished = expansions = trailing = nodes = depth = tokens = calls = passed = 0
    for result in phase["results"]:
        trace = result.get("trace")
        if trace is None:
            raise SystemExit(f"{phase['dataset']}.{phase['strategy']}: no traces; run restrl eval with --set keep_traces=true")
        states = {n["id"]: n["state"] for n in trace["nodes"]}
        for exp in trace["expansions"]:
            expansions += 1
            empty = 0
            for s in exp["samples"]:
                samples += 1
                rest = continuation(states[exp["node"]], s["text"])
                if s["finish_reason"] == "stop" and rest is not None and not rest.strip():
                    empty += 1
            wasted += empty
            finished += empty == len(exp["samples"]) and exp["node"] != 0
        best = min(trace["candidates"], key=lambda c: -(c["value"] if c["value"] is not None else -1.0), default=None)
        trailing += bool(best is not None and trailing_code(best["code"]))
        nodes += len(trace["nodes"])
        depth += max(n["depth"] for n in trace["nodes"])
        tokens += trace["usage"]["policy_tokens"]
        calls += trace["usage"]["value_calls"]
        if "budgets" in result:  # phase format 1
            passed += bool(result["budgets"][str(result["run_budget"])]["passed"])
        else:
            picks = [c for c in result["candidates"]]
            passed += bool(picks and min(picks, key=lambda c: -(c["value"] if c["value"] is not None else -1.0))["passed"])
    n = len(phase["results"])
    return {
        "dataset": phase["dataset"], "strategy": phase["strategy"], "problems": n, "passed": passed,
        "samples": samples, "wasted_samples": wasted, "wasted_share": wasted / max(1, samples),
        "expansions": expansions, "expansions_of_finished": finished, "trailing_returned": trailing,
        "mean_policy_tokens": tokens / n, "mean_value_calls": calls / n, "mean_nodes": nodes / n, "mean_max_depth": depth / n,
        "config": {k: phase.get("config", {}).get(k) for k in ("merged_visits", "c_uct", "k")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("phases", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = [dict(waste(read_phase(p)), file=str(p)) for p in args.phases]
    cols = ("passed", "samples", "wasted_samples", "expansions_of_finished", "trailing_returned", "mean_policy_tokens", "mean_value_calls", "mean_nodes", "mean_max_depth")
    print(f"{'phase file':<60} " + " ".join(f"{c[:14]:>14}" for c in cols))
    for r in rows:
        print(f"{r['file'][-60:]:<60} " + " ".join(f"{r[c]:>14.1f}" if isinstance(r[c], float) else f"{r[c]:>14}" for c in cols))
    if args.out:
        args.out.write_text(json.dumps({"command": "python -m bench.search_waste " + " ".join(map(str, args.phases)), "phases": rows}, indent=1))


if __name__ == "__main__":
    main()
