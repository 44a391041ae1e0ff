"""Final-answer rules of a search, compared offline on recorded searches (issue 7's investigation).

A search samples candidates and then picks one. The spec's rule (RESTRL_SPEC.md section 2) is the
complete program with the highest value-model score; the gym-validation study in bench/RESULTS.md
found that rule losing passing programs as the tree deepens. This tool re-picks the final answer of
recorded searches under other rules - without sampling again - and grades every pick on the
hidden tests in the sandbox:

* ``value``        - highest-valued candidate, first sampled on ties (the spec; what the search returned).
* ``visits``       - the classic MCTS final choice: from the root follow the most-visited child
                     (ties: higher backed-up mean) to a leaf, then the highest-valued candidate whose
                     code passes through that node (falls back to ``value`` when none does).
* ``node_mean``    - each candidate scored by the backed-up mean value of the deepest tree node its
                     code passes through (the rollout's own value breaks ties).
* ``public_tests`` - pass fraction on the problem's public tests, then value (`rerank_with_tests`).
* ``first_k``      - the highest-valued candidate of the first expansion only (the k-sample snapshot).

In: phase files of ``restrl eval --set keep_traces=true`` (one per strategy). Out: a table per
phase (problems solved per rule, and the oracle) and ``--out`` JSON.

    python -m bench.final_choice runs/study2/gym_validation.vm_mcts.b20.json.gz [more phase files] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from models.prompting import assemble_program
from sandbox import ProgramRunner, SandboxConfig
from search.stack import open_sandbox
from tasks import Problem
from training.search_eval import choose, read_phase, search_record, selector_key

RULES = ("value", "visits", "node_mean", "public_tests", "first_k")


def _value(c: dict[str, Any]) -> float:
    return float(c["value"]) if c["value"] is not None else -1.0


by_value = selector_key("value")  # the search's rule: highest value; min() keeps the first sampled on ties


def deepest_node(trace: dict[str, Any], code: str) -> dict[str, Any]:
    """The deepest tree node whose state the code starts with (the root always qualifies)."""
    best = trace["nodes"][0]
    for n in trace["nodes"]:
        if n["depth"] > best["depth"] and code.startswith(n["state"]):
            best = n
    return best


def pick(rule: str, trace: dict[str, Any], cands: list[dict[str, Any]], public: dict[str, float]) -> dict[str, Any] | None:
    """The candidate ``rule`` returns among ``cands`` (`training.search_eval.search_record`'s
    distinct candidates, in sampling order; ``step`` is the expansion that first sampled one)."""
    if not cands:
        return None
    if rule == "value":
        return min(cands, key=by_value)
    if rule == "first_k":
        first = min(c["step"] for c in cands)
        return min((c for c in cands if c["step"] == first), key=by_value)
    if rule == "public_tests":
        return min(cands, key=lambda c: (-public.get(c["code"], 0.0), by_value(c)))
    nodes = trace["nodes"]
    if rule == "node_mean":
        return min(cands, key=lambda c: (-deepest_node(trace, c["code"])["value"], by_value(c)))
    if rule == "visits":
        children: dict[int, list[dict[str, Any]]] = {}
        for n in nodes[1:]:
            children.setdefault(n["parent"], []).append(n)
        node = nodes[0]
        while True:
            under = [c for c in cands if c["code"].startswith(node["state"])]
            kids = [k for k in children.get(node["id"], []) if any(c["code"].startswith(k["state"]) for c in under)]
            if not kids:
                return min(under or cands, key=by_value)
            node = max(kids, key=lambda k: (k["visits"], k["value"], -k["id"]))
    raise ValueError(f"unknown rule {rule!r}; choose from {RULES}")


def pair_accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How often the value model puts a passing candidate above a failing one of the same problem,
    split by where the failing one was sampled: in the first expansion, or later (deeper in the
    tree). Ties count half."""
    out: dict[str, Any] = {}
    for name, want_first in (("failing_from_first_expansion", True), ("failing_from_later_expansions", False)):
        wins = pairs = 0.0
        for r in rows:
            good = [v for v, ok, _ in r["scored"] if ok]
            bad = [v for v, ok, first in r["scored"] if not ok and first == want_first]
            for g in good:
                for b in bad:
                    pairs += 1
                    wins += 1.0 if g > b else 0.5 if g == b else 0.0
        out[name] = {"pairs": int(pairs), "passing_ranked_higher": round(wins / pairs, 3) if pairs else None}
    return out


async def grade_phase(phase: dict[str, Any], sandbox: ProgramRunner) -> dict[str, Any]:
    """Every rule's pick on every problem of one phase, graded on the hidden tests."""
    rows = []
    for result in phase["results"]:
        trace = result.get("trace")
        if trace is None:
            raise SystemExit(f"{phase['dataset']}.{phase['strategy']}: no traces; rerun restrl eval with --set keep_traces=true")
        problem = Problem.model_validate(trace["problem"])
        mode = trace["prompt_mode"]
        cands = search_record(trace, per_sample=False)["candidates"]
        programs = [assemble_program(problem, c["code"], mode) for c in cands]
        hidden = await sandbox.run_many([(p, list(problem.tests), problem.entry_point) for p in programs])
        public: dict[str, float] = {}
        if problem.public_tests:
            verdicts = await sandbox.run_many([(p, list(problem.public_tests), problem.entry_point) for p in programs])
            public = {c["code"]: float(v.pass_fraction) for c, v in zip(cands, verdicts, strict=True)}
        passed = {c["code"]: v.status == "passed" for c, v in zip(cands, hidden, strict=True)}
        row: dict[str, Any] = {"problem_id": problem.id, "candidates": len(cands), "oracle": any(passed.values())}
        for rule in RULES:
            chosen = pick(rule, trace, cands, public)
            row[rule] = bool(chosen is not None and passed[chosen["code"]])
        returned = choose(result, "value", unit="samples", limit=result["run_budget"])
        row["returned_matches_value_rule"] = bool(returned is not None and returned["passed"]) == row["value"]
        first = min((c["step"] for c in cands), default=0)
        row["scored"] = [[_value(c), passed[c["code"]], c["step"] == first] for c in cands]
        rows.append(row)
    accuracy = pair_accuracy(rows)
    for r in rows:
        del r["scored"]  # (value, passed, first expansion) per candidate: only for the accuracy above
    n = len(rows)
    config = phase["results"][0]["trace"]["config"] if phase["results"] else {}
    return {
        "dataset": phase["dataset"],
        "strategy": phase["strategy"],
        "budget": phase["run_budget"],
        "search": {k: config.get(k) for k in ("k", "c_uct", "step_lines", "temperature", "max_tokens")},
        "problems": n,
        "solved": {rule: sum(r[rule] for r in rows) for rule in (*RULES, "oracle")},
        "pass1": {rule: round(sum(r[rule] for r in rows) / n, 4) for rule in (*RULES, "oracle")},
        "value_rule_reproduces_eval": all(r["returned_matches_value_rule"] for r in rows),
        "pair_accuracy": accuracy,
        "rows": rows,
    }


async def _main(paths: list[Path], timeout_s: float) -> list[dict[str, Any]]:
    sandbox = open_sandbox(SandboxConfig(workers=2, timeout_s=timeout_s))
    try:
        return [await grade_phase(read_phase(p), sandbox) for p in paths]
    finally:
        sandbox.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phases", nargs="+", type=Path, help="phase files written with keep_traces=true")
    ap.add_argument("--out", type=Path, default=Path("bench/results/final_choice.json"))
    ap.add_argument("--timeout-s", type=float, default=6.0, help="sandbox limit per program (restrl eval's default)")
    args = ap.parse_args(argv)
    reports = asyncio.run(_main(args.phases, args.timeout_s))
    print(f"{'phase':<44} {'n':>3} " + " ".join(f"{r:>12}" for r in (*RULES, "oracle")))
    for rep in reports:
        name = f"{rep['dataset']}.{rep['strategy']}@{rep['budget']}"
        if rep["strategy"] != "best_of_n":
            name += f" K{rep['search']['k']} C{rep['search']['c_uct']} s{rep['search'].get('step_lines') or 1}"
        print(f"{name:<44} {rep['problems']:>3} " + " ".join(f"{rep['solved'][r]:>12}" for r in (*RULES, "oracle")))
        acc = rep["pair_accuracy"]
        print(f"  {'':<42} passing above failing: failing from the first expansion "
              f"{acc['failing_from_first_expansion']['passing_ranked_higher']} ({acc['failing_from_first_expansion']['pairs']} pairs), "
              f"from later ones {acc['failing_from_later_expansions']['passing_ranked_higher']} ({acc['failing_from_later_expansions']['pairs']} pairs)")
        if not rep["value_rule_reproduces_eval"]:
            print(f"  note: the value rule differs from what {name} returned on some problem", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python -m bench.final_choice " + " ".join(map(str, args.phases)), "phases": reports}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
